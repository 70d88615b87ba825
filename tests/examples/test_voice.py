"""The voice example (seed 002): the seed's own client, its REST shapes and status codes, its WebSocket
messages and errors, its Redis channels and keys, its metric names, HS256 and RS256 — through the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import jwt
import pytest
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from examples.voice import run as voice
from tests.examples.seeds import SeedClient, wait_for_window_start
from tests.support import infra

SEED_CHUNK = b"..." * 1000
"""The seed client's audio: 3,000 bytes of 0x2E, i.e. 1,500 PCM16 samples of 0x2E2E = 11822."""
SEED_CHUNK_DBFS = round(20 * math.log10(0x2E2E / 32768), 1)
LIMITED_TENANT = f"tenant_rl_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stack() -> Iterator[voice.VoiceStack]:
    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    started = voice.start(redis_url, api_keys={"tenant_123": "secret", "tenant_456": "other", LIMITED_TENANT: "k"})
    yield started
    started.stop()


@pytest.fixture
async def bus() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(infra.REDIS_URL)
    yield client
    await client.aclose()


async def access_token(client: httpx.AsyncClient, tenant_id: str = "tenant_123", api_key: str = "secret") -> str:
    answer = await client.post("/auth/token", json={"tenant_id": tenant_id, "api_key": api_key})
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


async def start_call(client: httpx.AsyncClient, token: str, tenant_id: str = "tenant_123") -> dict:
    answer = await client.post("/call/start", json={"tenant_id": tenant_id, "language": "ar"}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def next_message(pubsub, timeout_s: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            return message
    raise AssertionError("nothing published")


async def recv_json(ws, timeout_s: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


def started_calls() -> tuple[redis.client.PubSub, Callable[[], str]]:
    """A subscription to ``call.started`` and a function returning the next started call's id."""
    pubsub = redis.Redis.from_url(infra.REDIS_URL).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("call.started")

    def next_call_id(timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                return json.loads(message["data"])["call_id"]
        raise AssertionError("no call.started")

    return pubsub, next_call_id


@pytest.mark.parametrize(("seed", "after_the_end"), [("002", []), ("002-js", ["closed: 1000 call ended"])], ids=["python", "javascript"])
def test_the_seeds_clients_get_every_server_message_of_a_call_and_end_with_the_call(stack, seed: str, after_the_end: list[str]) -> None:
    """The seed's Python client (``async for msg in ws`` until the socket closes) and its JavaScript client
    under Node.js (``seed_clients/page.mjs`` supplies its ``audioBuffer`` and holds its send until the socket
    opens): token, call, a socket without a token, audio, the three server message types; ending the call
    closes the socket (1000) and the client exits."""
    pubsub, next_call_id = started_calls()
    client = SeedClient(seed, stack.gateway.port)
    try:
        call_id = next_call_id()
        assert [client.next_line() for _ in range(3)] == [
            "Received: transcript_interim", "Received: transcript_final", "Received: response",
        ]
        token = httpx.post(f"{stack.gateway.url}/auth/token", json={"tenant_id": "tenant_123", "api_key": "secret"}).json()["access_token"]
        ended = httpx.post(f"{stack.gateway.url}/call/{call_id}/end", headers={"Authorization": f"Bearer {token}"})
        assert ended.status_code == 200 and ended.json()["status"] == "ended"
        assert client.rest() == after_the_end  # nothing but the close after the response
        assert client.popen.wait(15) == 0
    finally:
        client.stop()
        pubsub.close()


async def test_ending_a_call_closes_its_sockets_on_the_gateway_and_refuses_new_ones(stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        scrape = lambda: client.get("/metrics", headers={"X-Internal-Token": stack.internal_token})  # noqa: E731
        before = (await scrape()).text
        token = await access_token(client)
        call, other_call = await start_call(client, token), await start_call(client, token)
        call_id = call["call_id"]
        async with (
            connect(f"{stack.gateway.ws_url}/ws/{call_id}?token={call['session_token']}") as with_token,
            connect(f"{stack.gateway.ws_url}/ws/{call_id}") as without_token,
            connect(f"{stack.gateway.ws_url}/ws/{other_call['call_id']}") as other,
        ):
            for ws in (with_token, without_token, other):
                await ws.send(json.dumps({"type": "ping"}))
                assert (await recv_json(ws))["type"] == "pong"
            ended = await client.post(f"/call/{call_id}/end", headers={"Authorization": f"Bearer {token}"})
            assert ended.status_code == 200
            for ws in (with_token, without_token):
                with pytest.raises(ConnectionClosedOK):
                    await asyncio.wait_for(ws.recv(), 10)
                assert (ws.close_code, ws.close_reason) == (1000, "call ended")
            await other.send(json.dumps({"type": "ping"}))
            assert (await recv_json(other))["type"] == "pong"  # another call's socket stays open
            again = await client.post(f"/call/{call_id}/end", headers={"Authorization": f"Bearer {token}"})
            assert again.status_code == 200  # ending twice answers as the first time; nothing else to close
            await other.send(json.dumps({"type": "ping"}))
            assert (await recv_json(other))["type"] == "pong"
        after = (await scrape()).text
        assert metric(after, "gateway_disconnects_total", 'reason="ended"') - metric(before, "gateway_disconnects_total", 'reason="ended"') == 2
        for url in (f"/ws/{call_id}?token={call['session_token']}", f"/ws/{call_id}"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(stack.gateway.ws_url + url):
                    pass
            assert refused.value.response.status_code == 404
            assert "detail" in json.loads(refused.value.response.body)


async def test_token_and_call_endpoints_answer_the_seeds_shapes_and_status_codes(stack, bus) -> None:
    pubsub = bus.pubsub()
    await pubsub.subscribe("call.started", "call.ended", "handoff.requested", "ingest.queued")
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        assert (await client.post("/auth/token", json={"tenant_id": "tenant_123", "api_key": "wrong"})).status_code == 401
        missing = await client.post("/auth/token", json={"tenant_id": "tenant_123"})
        assert missing.status_code == 400 and "detail" in missing.json()
        issued = (await client.post("/auth/token", json={"tenant_id": "tenant_123", "api_key": "secret"})).json()
        claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
        assert (claims["tenant_id"], claims["sub"]) == ("tenant_123", "tenant_123")
        assert abs(claims["exp"] - (time.time() + 3600)) < 30  # 1 h expiry
        assert jwt.get_unverified_header(issued["access_token"])["alg"] == "HS256"
        bearer = {"Authorization": f"Bearer {issued['access_token']}"}

        assert (await client.post("/call/start", json={"tenant_id": "tenant_123"})).status_code == 401
        bad = await client.post("/call/start", json={"tenant_id": "tenant_123", "language": "fr"}, headers=bearer)
        assert bad.status_code == 400
        assert (await client.post("/call/start", json={"tenant_id": "tenant_456"}, headers=bearer)).status_code == 403
        call = await start_call(client, issued["access_token"])
        call_id = call["call_id"]
        assert re.fullmatch(r"call_[0-9a-f]{24}", call_id)
        assert call["ws_url"] == f"ws://localhost:{stack.gateway.port}/ws/{call_id}" and call["status"] == "ready"
        session = jwt.decode(call["session_token"], options={"verify_signature": False})
        assert (session["call_id"], session["tenant_id"], session["sub"]) == (call_id, "tenant_123", "tenant_123")
        session_bearer = {"Authorization": f"Bearer {call['session_token']}"}
        assert (await client.get(f"/call/{call_id}", headers=session_bearer)).status_code == 401  # not an access token
        started = await next_message(pubsub)
        assert started["channel"] == b"call.started" and json.loads(started["data"])["call_id"] == call_id
        assert 3590 <= await bus.ttl(f"call:{call_id}") <= 3600 and await bus.exists(f"call:{call_id}:active")

        status = (await client.get(f"/call/{call_id}", headers=bearer)).json()
        assert (status["status"], status["language"], status["voice_id"]) == ("active", "ar", "arabic_gulf_male")
        assert (await client.get("/call/call_000000000000000000000000", headers=bearer)).status_code == 404
        other = {"Authorization": f"Bearer {await access_token(client, 'tenant_456', 'other')}"}
        assert (await client.get(f"/call/{call_id}", headers=other)).status_code == 404  # another tenant's call

        await bus.rpush(f"call:{call_id}:transcript", "first words")
        handoff = await client.post("/handoff", json={"call_id": call_id, "reason": "customer_request"}, headers=bearer)
        assert handoff.status_code == 200
        body = handoff.json()
        assert (body["status"], body["queue"], body["estimated_wait_seconds"]) == ("queued", "general", 30)
        assert body["context"]["call_id"] == call_id and body["context"]["transcript"] == ["first words"]
        assert set(body["context"]) == {"call_id", "reason", "duration_seconds", "transcript", "intents", "sentiment"}
        assert (await client.post("/handoff", json={"call_id": "call_x", "reason": "r"}, headers=bearer)).status_code == 404
        assert (await next_message(pubsub))["channel"] == b"handoff.requested"

        text = f"Our support hours are Sunday to Thursday {uuid.uuid4().hex}"
        ingested = await client.post("/ingest", json={"tenant_id": "tenant_123", "text": text, "source": "FAQ", "metadata": {"category": "support"}}, headers=bearer)
        assert ingested.status_code == 200 and ingested.json()["status"] == "queued"
        queued = json.loads((await next_message(pubsub))["data"])
        assert queued["document_id"] == ingested.json()["document_id"]
        query = {"query": "support hours Sunday", "tenant_id": "tenant_123", "top_k": 50, "filters": {"category": "support"}}
        found = (await client.post("/rag/query", json=query, headers=bearer)).json()
        mine = [result for result in found["results"] if result["text"] == text]
        assert mine == [{"text": text, "source": "FAQ", "score": 1.0, "metadata": {"category": "support"}}]
        assert isinstance(found["took_ms"], float)
        filtered = (await client.post("/rag/query", json={**query, "filters": {"category": "billing"}}, headers=bearer)).json()
        assert all(result["text"] != text for result in filtered["results"])
        assert (await client.post("/rag/query", json={"tenant_id": "tenant_123"}, headers=bearer)).status_code == 400

        ended = (await client.post(f"/call/{call_id}/end", headers=bearer)).json()
        assert (ended["call_id"], ended["status"]) == (call_id, "ended") and ended["duration_seconds"] >= 0
        assert json.loads((await next_message(pubsub))["data"])["call_id"] == call_id
        assert (await client.get(f"/call/{call_id}", headers=bearer)).json()["status"] == "ended"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{stack.gateway.ws_url}/ws/{call_id}?token={call['session_token']}"):
                pass
        assert refused.value.response.status_code == 404  # an ended call takes no socket

        health = (await client.get("/health")).json()
        assert health["status"] == "healthy" and health["version"] == "1.0.0" and isinstance(health["timestamp"], float)
        preflight = await client.options("/call/start", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] in ("*", "https://app.example.com")
    await pubsub.aclose()


async def test_websocket_messages_reach_redis_and_bad_input_gets_the_seeds_error_shape(stack, bus) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        token = await access_token(client)
        call, other_call = await start_call(client, token), await start_call(client, token)
    call_id = call["call_id"]
    pubsub = bus.pubsub()
    await pubsub.subscribe(f"audio:{call_id}", f"barge_in:{call_id}")
    async with connect(f"{stack.gateway.ws_url}/ws/{call_id}?token={call['session_token']}") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        pong = await recv_json(ws)
        assert pong["type"] == "pong" and abs(pong["timestamp"] - time.time()) < 5

        await ws.send(json.dumps({"type": "audio", "data": base64.b64encode(SEED_CHUNK).decode()}))
        assert (await next_message(pubsub))["data"] == SEED_CHUNK  # decoded, raw PCM on audio:{call_id}
        interim = await recv_json(ws)
        assert interim == {"type": "transcript_interim", "text": f"[0.094 s of audio at {SEED_CHUNK_DBFS:.1f} dBFS]", "timestamp": interim["timestamp"]}
        final = await recv_json(ws)
        assert final["type"] == "transcript_final" and final["text"] == f"[utterance of 0.094 s at {SEED_CHUNK_DBFS:.1f} dBFS]"
        response = await recv_json(ws)
        assert response["type"] == "response" and len(base64.b64decode(response["audio"])) == 2 * 4000  # 0.25 s at 16 kHz

        await ws.send(json.dumps({"type": "barge_in"}))
        barge_in = json.loads((await next_message(pubsub))["data"])
        assert (barge_in["type"], barge_in["call_id"]) == ("barge_in", call_id)

        for bad, code in [
            ("not json", "INVALID_JSON"), ("[1, 2]", "INVALID_MESSAGE"), ('{"data": 1}', "INVALID_MESSAGE"),
            ('{"type": "dance"}', "UNKNOWN_TYPE"), ('{"type": "audio", "data": "***"}', "INVALID_PAYLOAD"),
            ('{"type": "audio"}', "INVALID_PAYLOAD"), ("x" * 70_000, "MESSAGE_TOO_LARGE"),
        ]:
            await ws.send(bad)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", code) and error["message"] and isinstance(error["timestamp"], float)
        await ws.send(json.dumps({"type": "audio", "data": base64.b64encode(b"abc").decode()}))  # 1.5 samples
        assert (await recv_json(ws))["code"] == "AUDIO_FORMAT"  # the worker's own error, on the same socket
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"  # still usable

        burst = 600  # over the connection's bucket (RATE_LIMIT_BURST=500 in the example)
        for _ in range(burst):
            await ws.send('{"type": "ping"}')
        answers = [await recv_json(ws) for _ in range(burst)]
        limited = [answer for answer in answers if answer["type"] == "error"]
        assert limited and all(answer["code"] == "RATE_LIMITED" and set(answer) == {"type", "code", "message", "timestamp"} for answer in limited)
        assert len(limited) + sum(answer["type"] == "pong" for answer in answers) == burst
        for _ in range(100):  # the bucket refills at RATE_LIMIT_RPS: the socket serves again
            await ws.send('{"type": "ping"}')
            if (await recv_json(ws))["type"] == "pong":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no pong after the rate limit")
    await pubsub.aclose()

    for url, status in [
        (f"/ws/{call_id}?token={other_call['session_token']}", 403),  # another call's token
        (f"/ws/{call_id}?token=garbage", 401),
        (f"/ws/{call_id}?token={token}", 401),  # an access token names no call
        ("/ws/call_unknown", 404),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(stack.gateway.ws_url + url):
                pass
        assert refused.value.response.status_code == status, url
        assert "detail" in json.loads(refused.value.response.body)


async def test_tenant_limit_is_100_requests_per_60_s_under_the_seeds_key(stack, bus) -> None:
    await asyncio.to_thread(wait_for_window_start, 60, 20)
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        bearer = {"Authorization": f"Bearer {await access_token(client, LIMITED_TENANT, 'k')}"}  # request 1
        window = math.floor(time.time() / 60)
        statuses = [(await client.get("/call/call_none", headers=bearer)).status_code for _ in range(99)]
        assert statuses == [404] * 99
        limited = await client.get("/call/call_none", headers=bearer)
        assert limited.status_code == 429 and "detail" in limited.json()
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert int(await bus.get(f"ratelimit:{LIMITED_TENANT}:{window}")) == 101


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


async def test_metrics_carry_the_seeds_names(stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        scrape = lambda: client.get("/metrics", headers={"X-Internal-Token": stack.internal_token})  # noqa: E731
        before = (await scrape()).text
        token = await access_token(client)
        call = await start_call(client, token)
        async with connect(f"{stack.gateway.ws_url}/ws/{call['call_id']}?token={call['session_token']}") as ws:
            await ws.send(json.dumps({"type": "barge_in"}))
            await ws.send(json.dumps({"type": "ping"}))
            await recv_json(ws)
        await client.post("/handoff", json={"call_id": call["call_id"], "reason": "r"}, headers={"Authorization": f"Bearer {token}"})
        await client.post(f"/call/{call['call_id']}/end", headers={"Authorization": f"Bearer {token}"})
        assert (await client.post("/call/start", json={"tenant_id": "tenant_123"})).status_code == 401  # not a call event
        await asyncio.sleep(0.3)  # the socket's close reaches the gateway
        after = (await scrape()).text
    delta = lambda name, labels="": metric(after, name, labels) - metric(before, name, labels)  # noqa: E731
    assert delta("gateway_requests_total", 'endpoint="/call",method="POST"') == 3
    assert delta("gateway_requests_total", 'endpoint="/auth",method="POST"') == 1
    assert delta("gateway_requests_total", 'endpoint="/handoff",method="POST"') == 1
    assert delta("gateway_request_duration_seconds_count") == 5
    assert delta("gateway_ws_connections_total", 'status="connected"') == 1
    assert delta("gateway_ws_connections_total", 'status="disconnected"') == 1
    for event_type in ("started", "ended", "handoff", "barge_in"):
        assert delta("gateway_call_events_total", f'event_type="{event_type}"') == 1, event_type


async def test_rs256_tokens_work_and_an_hs256_token_signed_with_the_public_key_is_refused() -> None:
    redis_url = infra.require(infra.REDIS_URL, 6379, "Redis")
    stack = await asyncio.to_thread(voice.start, redis_url, None, "RS256")
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
            token = await access_token(client)
            assert jwt.get_unverified_header(token)["alg"] == "RS256"
            call = await start_call(client, token)
        assert jwt.get_unverified_header(call["session_token"])["alg"] == "RS256"
        async with connect(f"{stack.gateway.ws_url}/ws/{call['call_id']}?token={call['session_token']}") as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"
        forged = forge_hs256(stack.gateway.env["JWT_PUBLIC_KEY"], call["call_id"])
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{stack.gateway.ws_url}/ws/{call['call_id']}?token={forged}"):
                pass
        assert refused.value.response.status_code == 401
    finally:
        await asyncio.to_thread(stack.stop)


def forge_hs256(key: str, call_id: str) -> str:
    """An HS256 token keyed with the RS256 public key (RFC 8725 §2.1), built by hand: PyJWT refuses to."""
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"tenant_id": "tenant_123", "sub": "tenant_123", "call_id": call_id, "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"
