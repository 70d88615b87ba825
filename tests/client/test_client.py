"""`sonalyze.client` against a real gateway process and a real upstream on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from sonalyze.client import ConnectionLost, GatewayError, SonalyzeClient
from sonalyze.common.errors import Forbidden, install_error_handlers
from sonalyze.common.handle import EventContext, EventHandlers
from tests.support.servers import ServiceProcess, ThreadedServer, wait_until

TOKEN = "client-test-token"


def _upstream() -> FastAPI:
    handlers = EventHandlers()

    @handlers.on("lobby.echo")
    async def echo(ctx: EventContext) -> dict:
        await asyncio.sleep(float(ctx.data.get("delay_s", 0)))
        return {"echo": ctx.data, "device_id": ctx.device_id}

    @handlers.on("lobby.refuse")
    async def refuse(ctx: EventContext) -> dict:
        raise Forbidden("only the host may do that", details={"host_device_id": "someone-else"})

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(handlers.router())

    @app.get("/v1/jobs/whoami")
    async def whoami(request: Request) -> dict:
        return {"device_id": request.headers.get("x-device-id")}

    @app.post("/v1/jobs/{job_id}/uploads/{name}", status_code=201)
    async def upload(job_id: str, name: str, request: Request) -> dict:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"job_id": job_id, "name": name, "size_bytes": size}

    return app


@pytest.fixture(scope="module")
def upstream():
    with ThreadedServer(_upstream()) as server:
        yield server


@pytest.fixture
def gateway(upstream):
    env = {
        "LOBBY_URL": upstream.url, "MEASUREMENT_URL": upstream.url, "INTERNAL_AUTH_TOKEN": TOKEN, "RATE_LIMIT_RPS": "1000",
        "RATE_LIMIT_BURST": "1000", "DEVICE_TOKEN_SECRET": "client-test-device-secret",
    }
    with ServiceProcess("gateway", env=env) as process:
        yield process


def _broadcast(gateway_url: str, device_id: str, data: dict) -> int:
    response = httpx.post(
        f"{gateway_url}/internal/broadcast",
        json={"event": "lobby.updated", "data": data, "targets": {"device_ids": [device_id]}},
        headers={"X-Internal-Token": TOKEN},
    )
    response.raise_for_status()
    return response.json()["delivered"]


async def test_requests_errors_and_pushed_events(gateway):
    async with SonalyzeClient(gateway.url) as client:
        phone = client.device_id  # issued by the gateway (identify {})
        assert phone is not None and client.device_token is not None
        assert await client.request("lobby.echo", {"n": 1}) == {"echo": {"n": 1}, "device_id": phone}

        with pytest.raises(GatewayError) as refused:
            await client.request("lobby.refuse")
        assert (refused.value.code, refused.value.details) == ("forbidden", {"host_device_id": "someone-else"})
        with pytest.raises(GatewayError) as unknown:
            await client.request("nobody.handles_this")
        assert unknown.value.code == "unknown_event"

        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"type": "first"}) == 1
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"type": "second"}) == 1
        second = await client.next_event("lobby.updated", where=lambda e: e.data["type"] == "second")
        first = await client.next_event("lobby.updated")
        assert (first.data, second.data) == ({"type": "first"}, {"type": "second"})
        assert client.pending_events() == []


async def test_concurrent_requests_are_matched_by_request_id(gateway):
    async with SonalyzeClient(gateway.url) as client:
        slow = asyncio.create_task(client.request("lobby.echo", {"delay_s": 0.5, "which": "slow"}))
        fast = await client.request("lobby.echo", {"which": "fast"})
        assert fast["echo"]["which"] == "fast" and not slow.done()
        assert (await slow)["echo"]["which"] == "slow"


async def test_reconnects_with_backoff_after_the_gateway_restarts(gateway):
    reloaded: list[dict] = []

    async def reload() -> None:  # what a client reads again after a reconnect (here: a request of its own)
        reloaded.append(await client.request("lobby.echo", {"reload": True}))

    async with SonalyzeClient(gateway.url, backoff_initial_s=0.05, backoff_max_s=0.5, on_reconnect=reload) as client:
        phone = client.device_id
        in_flight = asyncio.create_task(client.request("lobby.echo", {"delay_s": 30}))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(gateway.kill)
        with pytest.raises(ConnectionLost):
            await in_flight
        await asyncio.to_thread(gateway.start)
        await client.wait_connected(timeout_s=30)
        assert client.reconnects >= 1
        # the same device token is accepted by the restarted gateway (same DEVICE_TOKEN_SECRET)
        assert await client.request("lobby.echo", {"after": "restart"}) == {"echo": {"after": "restart"}, "device_id": phone}
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"type": "after_restart"}) == 1
        assert (await client.next_event("lobby.updated")).data == {"type": "after_restart"}
        await wait_until(lambda: len(reloaded) >= client.reconnects)
        assert reloaded == [{"echo": {"reload": True}, "device_id": phone}] * client.reconnects


async def test_upload_through_the_proxy_streams_a_file(gateway, tmp_path: Path):
    recording = tmp_path / "take.wav"
    recording.write_bytes(b"\x01" * 300_000)
    async with SonalyzeClient(gateway.url) as client:
        answer = await client.upload("job-1", "mic-1.wav", recording)
        assert answer == {"job_id": "job-1", "name": "mic-1.wav", "size_bytes": 300_000}
        assert (await client.upload("job-1", "small.wav", b"abc"))["size_bytes"] == 3


async def test_credentials_are_kept_in_a_file_and_reused(gateway, tmp_path: Path):
    path = tmp_path / "creds" / "phone.json"
    async with SonalyzeClient(gateway.url, credentials_path=path) as first:
        issued = (first.device_id, first.device_token)
    assert path.stat().st_mode & 0o777 == 0o600
    async with SonalyzeClient(gateway.url, credentials_path=path) as again:
        assert (again.device_id, again.device_token) == issued  # no new device
        assert (await again.request("lobby.echo"))["device_id"] == issued[0]
    async with SonalyzeClient(gateway.url, device_token=issued[1]) as by_token:
        assert by_token.device_id == issued[0]  # learned from the gateway


async def test_http_calls_carry_the_device_token(gateway):
    async with SonalyzeClient(gateway.url) as client:
        answer = await client.http("GET", "/v1/jobs/whoami")
        assert answer.json() == {"device_id": client.device_id}
    anonymous = httpx.get(gateway.url + "/v1/jobs/whoami", headers={"X-Device-Id": "someone-else"})
    assert anonymous.json() == {"device_id": None}  # a client's own X-Device-Id never passes


async def test_a_dropped_connection_resumes_with_every_missed_push_once_and_in_order(gateway):
    async with SonalyzeClient(gateway.url, backoff_initial_s=1.0, backoff_max_s=1.0) as client:
        phone = client.device_id
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"n": -1}) == 1
        assert (await client.next_event("lobby.updated")).data == {"n": -1}
        client._ws.transport.abort()  # the phone loses its network: the gateway sees the connection end
        while client.connected:
            await asyncio.sleep(0.01)
        for n in range(50):
            await asyncio.to_thread(_broadcast, gateway.url, phone, {"n": n})
        await client.wait_connected(timeout_s=30)
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"n": 50}) == 1
        seen = []
        while not seen or seen[-1] != 50:
            seen.append((await client.next_event("lobby.updated")).data["n"])
        assert seen == list(range(51))
        assert client.pending_events() == []
        assert (client.reconnects, client.resyncs) == (1, 0)
        metrics = (await client.http("GET", "/metrics", headers={"X-Internal-Token": TOKEN})).text
        replayed = [line for line in metrics.splitlines() if line.startswith("gateway_replayed_pushes_total ")]
        assert replayed and float(replayed[0].split()[1]) > 0  # some pushes came by replay, not live


async def test_a_restarted_gateway_tells_the_client_to_resync_and_the_hook_reloads(gateway):
    reloaded = asyncio.Event()

    async def reload() -> None:
        reloaded.set()

    async with SonalyzeClient(gateway.url, backoff_initial_s=0.05, backoff_max_s=0.5, on_resync=reload) as client:
        phone = client.device_id
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"n": 0}) == 1
        await client.next_event("lobby.updated")
        old_epoch = client.position["epoch"]
        await asyncio.to_thread(gateway.kill)
        await asyncio.to_thread(gateway.start)  # memory://: the history is gone with the process
        await asyncio.wait_for(reloaded.wait(), 30)
        assert client.resyncs == 1
        assert client.position["epoch"] != old_epoch and client.position["offset"] == 0
        assert (await client.next_event("resync_required")).data["reason"] == "history"
        assert await asyncio.to_thread(_broadcast, gateway.url, phone, {"n": 1}) == 1
        assert (await client.next_event("lobby.updated")).data == {"n": 1}
        assert client.position == {"epoch": client.position["epoch"], "offset": 1}
