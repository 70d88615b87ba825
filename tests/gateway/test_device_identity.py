"""Device identity (contract C1) against a real gateway: what an attacker who knows a device id can do.

The upstream here reports what it was told (the handle body's ``device_id``, the ``X-Device-Id`` and
``X-Internal-Token`` headers), so each test checks what reaches the services, not the gateway's opinion.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sonalyze.common.json import JSONResponse
from sonalyze.gateway.device_tokens import DeviceTokens
from tests.gateway.conftest import TOKEN, gateway_settings, serve_three, start_gateway
from tests.support.servers import ThreadedServer

SECRET = "identity-test-secret"


def reporting_upstream(name: str) -> FastAPI:
    app = FastAPI()

    @app.post("/gateway/handle")
    async def handle(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"data": {"device_id": body["device_id"], "internal_token": request.headers.get("x-internal-token")}})

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST"])
    async def rest(request: Request) -> JSONResponse:
        return JSONResponse({
            "device_id": request.headers.get("x-device-id"),
            "internal_token": request.headers.get("x-internal-token"),
            "device_token": request.headers.get("x-device-token"),
            "query": request.url.query,
        })

    return app


@pytest.fixture(scope="module")
def reporting() -> Iterator[dict[str, ThreadedServer]]:
    yield from serve_three(reporting_upstream)


@pytest.fixture(scope="module")
def secure(reporting) -> Iterator[ThreadedServer]:
    server = start_gateway(
        gateway_settings(reporting, allow_insecure_device_ids=False, device_token_secret=SECRET, device_mint_burst=3, device_mint_rps=0.01)
    )
    yield server
    server.stop()


async def identify(ws, data: dict) -> dict:
    await ws.send(json.dumps({"event": "identify", "request_id": "i", "data": data}))
    return json.loads(await ws.recv())


async def acting_device(ws) -> str:
    """The device id the upstream is told an event comes from."""
    await ws.send(json.dumps({"event": "measurement.cancel_session", "request_id": "c", "data": {}}))
    return json.loads(await ws.recv())["data"]["device_id"]


def refusal(exc: InvalidStatus) -> tuple[int, str]:
    return exc.response.status_code, json.loads(exc.response.body)["error"]["code"]


def test_tokens_are_hmac_sha256_of_the_device_id() -> None:
    token = DeviceTokens(SECRET).issue("phone-1")
    body = "sdt1." + base64.urlsafe_b64encode(b"phone-1").rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert token == body + "." + mac  # RFC 2104 computed independently
    assert DeviceTokens(SECRET).verify(token) == "phone-1"


async def test_a_second_connection_with_the_hosts_id_is_refused_and_cannot_act_for_it(secure) -> None:
    async with connect(secure.ws_url + "/ws") as host:
        issued = (await identify(host, {}))["data"]
        assert issued["issued"] is True and issued["device_token"].startswith("sdt1.")
        host_id = issued["device_id"]
        assert await acting_device(host) == host_id

        with pytest.raises(InvalidStatus) as bare:  # the id alone: refused before the upgrade
            await connect(secure.ws_url + f"/ws?device_id={host_id}")
        assert refusal(bare.value) == (401, "device_token_required")

        async with connect(secure.ws_url + "/ws") as attacker:
            attacker_token = (await identify(attacker, {}))["data"]["device_token"]
            with pytest.raises(InvalidStatus) as other:  # another device's token with the host's id
                await connect(secure.ws_url + f"/ws?device_id={host_id}&device_token={attacker_token}")
            assert refusal(other.value) == (403, "device_mismatch")
            answer = await identify(attacker, {"device_id": host_id})
            assert answer["error"]["code"] == "device_token_required"  # a claim is no proof; it stays its own device
            assert await acting_device(attacker) != host_id  # its cancel acts for itself, never the host

        async with connect(secure.ws_url + "/ws") as fresh:
            claim = await identify(fresh, {"device_id": host_id})
            assert claim["type"] == "error" and claim["error"]["code"] == "device_token_required"
            forged = issued["device_token"][:-4] + ("AAAA" if not issued["device_token"].endswith("AAAA") else "BBBB")
            assert (await identify(fresh, {"device_token": forged}))["error"]["code"] == "invalid_device_token"
            await fresh.send(json.dumps({"event": "measurement.cancel_session", "request_id": "c", "data": {}}))
            assert json.loads(await fresh.recv())["error"]["code"] == "not_identified"

        assert await acting_device(host) == host_id  # the host's connection is untouched


async def test_a_token_for_device_a_cannot_act_as_device_b(secure) -> None:
    tokens = DeviceTokens(SECRET)
    token_a = tokens.issue("device-a")
    with pytest.raises(InvalidStatus) as mismatch:
        await connect(secure.ws_url + f"/ws?device_id=device-b&device_token={token_a}")
    assert refusal(mismatch.value) == (403, "device_mismatch")
    async with connect(secure.ws_url + f"/ws?device_token={token_a}") as ws:
        assert await acting_device(ws) == "device-a"
        assert (await identify(ws, {"device_token": tokens.issue("device-b")}))["error"]["code"] == "already_identified"
    async with connect(secure.ws_url + "/ws") as ws:
        answer = await identify(ws, {"device_id": "device-b", "device_token": token_a})
        assert answer["error"]["code"] == "device_mismatch"
        assert (await identify(ws, {"device_token": token_a}))["data"]["device_id"] == "device-a"
    with pytest.raises(InvalidStatus) as foreign:  # signed with another secret
        await connect(secure.ws_url + f"/ws?device_token={DeviceTokens('other').issue('device-a')}")
    assert refusal(foreign.value) == (401, "invalid_device_token")


async def test_tokens_survive_a_restart_with_the_same_secret(reporting) -> None:
    first = start_gateway(gateway_settings(reporting, allow_insecure_device_ids=False, device_token_secret="kept"))
    try:
        minted = httpx.post(first.url + "/v1/devices").json()
    finally:
        first.stop()
    again = start_gateway(gateway_settings(reporting, allow_insecure_device_ids=False, device_token_secret="kept"), )
    try:
        async with connect(again.ws_url + f"/ws?device_token={minted['device_token']}") as ws:
            assert await acting_device(ws) == minted["device_id"]
    finally:
        again.stop()
    rotated = start_gateway(gateway_settings(reporting, allow_insecure_device_ids=False, device_token_secret="rotated"))
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(rotated.ws_url + f"/ws?device_token={minted['device_token']}")
        assert refusal(refused.value) == (401, "invalid_device_token")
    finally:
        rotated.stop()


def test_devices_are_minted_over_http_within_a_rate_limit(reporting) -> None:
    server = start_gateway(gateway_settings(reporting, device_token_secret=SECRET, device_mint_burst=2, device_mint_rps=0.01))
    try:
        answers = [httpx.post(server.url + "/v1/devices") for _ in range(3)]
    finally:
        server.stop()
    assert [answer.status_code for answer in answers] == [201, 201, 429]
    first, second = answers[0].json(), answers[1].json()
    assert first["device_id"] != second["device_id"]
    assert DeviceTokens(SECRET).verify(first["device_token"]) == first["device_id"]
    assert answers[2].json()["error"]["code"] == "rate_limited" and answers[2].headers["retry-after"]


def test_proxied_requests_carry_the_authenticated_device_and_the_internal_token(secure) -> None:
    token = DeviceTokens(SECRET).issue("phone-7")
    spoofed = {"X-Device-Id": "host-phone", "X-Internal-Token": "guessed"}
    seen = httpx.get(secure.url + "/v1/jobs/x?a=1", headers={**spoofed, "X-Device-Token": token}).json()
    assert seen == {"device_id": "phone-7", "internal_token": TOKEN, "device_token": None, "query": "a=1"}
    by_query = httpx.get(secure.url + f"/v1/measurement/x?device_token={token}&b=2", headers=spoofed).json()
    assert by_query == {"device_id": "phone-7", "internal_token": TOKEN, "device_token": None, "query": "b=2"}
    anonymous = httpx.get(secure.url + "/v1/jobs/x", headers=spoofed).json()
    assert anonymous == {"device_id": None, "internal_token": TOKEN, "device_token": None, "query": ""}
    bad = httpx.get(secure.url + "/v1/jobs/x", headers={"X-Device-Token": token + "x"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "invalid_device_token")


async def test_routed_events_carry_the_internal_token(secure) -> None:
    async with connect(secure.ws_url + f"/ws?device_token={DeviceTokens(SECRET).issue('phone-8')}") as ws:
        await ws.send(json.dumps({"event": "lobby.get", "request_id": 1, "data": {}}))
        answer = json.loads(await ws.recv())
    assert answer["request_id"] == 1  # an integer request_id comes back as it went
    assert answer["data"] == {"device_id": "phone-8", "internal_token": TOKEN}


async def test_insecure_mode_takes_the_claimed_id_for_development(reporting) -> None:
    server = start_gateway(gateway_settings(reporting, allow_insecure_device_ids=True))
    try:
        async with connect(server.ws_url + "/ws?device_id=dev-phone") as ws:
            assert await acting_device(ws) == "dev-phone"
        seen = httpx.get(server.url + "/v1/jobs/x", headers={"X-Device-Id": "dev-phone"}).json()
        assert seen["device_id"] == "dev-phone"
    finally:
        server.stop()


def test_v1_takes_the_jwt_as_query_token_with_auth_required(reporting) -> None:
    import time

    import jwt

    server = start_gateway(gateway_settings(reporting, auth_required=True, jwt_secret="jwt-test-secret-of-32-bytes-or-more!"))
    try:
        token = jwt.encode({"device_id": "jwt-phone", "exp": int(time.time()) + 60}, "jwt-test-secret-of-32-bytes-or-more!", "HS256")
        seen = httpx.get(server.url + f"/v1/jobs/x?token={token}&c=3", headers={"X-Device-Id": "spoof"}).json()
        assert seen == {"device_id": "jwt-phone", "internal_token": TOKEN, "device_token": None, "query": "c=3"}
        missing = httpx.get(server.url + "/v1/jobs/x")
        assert (missing.status_code, missing.json()["error"]["code"]) == (401, "token_required")
    finally:
        server.stop()
