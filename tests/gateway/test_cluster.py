"""Several gateway processes on one bus (the real Redis and NATS): publish once, each device gets it once.

Each test run uses its own channel / subject prefix (``GATEWAY_BROKER_PREFIX``) so that parallel runs on
the shared servers never see each other's publications.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import nats
import nats.js.errors
import pytest
from websockets.asyncio.client import connect

from tests.gateway.conftest import TOKEN
from tests.support import infra
from tests.support.servers import ServiceProcess, free_port

CHANNEL_ROUTES = json.dumps({"routes": [{"events": ["*"], "upstream": "lobby"}], "channels": [{"channels": ["*"], "authorize": "allow"}]})


def gateway_env(broker_url: str, prefix: str) -> dict[str, str]:
    return {
        "BROKER_URL": broker_url,
        "GATEWAY_BROKER_PREFIX": prefix,
        "INTERNAL_AUTH_TOKEN": TOKEN,
        "GATEWAY_ROUTES": CHANNEL_ROUTES,
        "LOBBY_URL": f"http://127.0.0.1:{free_port()}",
        "ALLOW_INSECURE_DEVICE_IDS": "true",  # identity is not under test here
    }


def wait_ready(url: str, ready: bool = True, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (httpx.get(url + "/readyz", timeout=2.0).status_code == 200) == ready:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url}/readyz did not become {'ready' if ready else 'not ready'} in {timeout_s} s")


def start_cluster(broker_url: str, count: int, prefix: str | None = None) -> list[ServiceProcess]:
    prefix = prefix or f"test-{uuid.uuid4().hex[:12]}:"
    nodes = [ServiceProcess("gateway", env=gateway_env(broker_url, prefix)) for _ in range(count)]
    for node in nodes:
        node.start()
    for node in nodes:
        wait_ready(node.url)
    return nodes


async def delete_history_stream(nats_url: str, prefix: str) -> None:
    """The JetStream stream the gateways kept their push history in (memory on the shared server: not left behind)."""
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(prefix.replace(".", "_") + "broadcast")
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await client.close()


@pytest.fixture(scope="module", params=["redis", "nats"])
def cluster(request) -> Iterator[list[ServiceProcess]]:
    url = infra.require(infra.REDIS_URL, 6379, "Redis") if request.param == "redis" else infra.require(infra.NATS_URL, 4222, "NATS")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    nodes = start_cluster(url, 3, prefix)
    yield nodes
    for node in nodes:
        node.stop()
    if request.param == "nats":
        asyncio.run(delete_history_stream(url, prefix))


async def post(url: str, targets: dict, event: str = "news") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        body = {"event": event, "data": {"n": 1}, "targets": targets}
        return await client.post(url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})


async def before_marker(publisher_url: str, *sockets) -> list[list[str]]:
    """For each socket, the events that reach it before a marker published now to all from
    ``publisher_url``: one node's publications cross the bus in order, so whatever that node published
    earlier arrives first or not at all. An explicit signal, not a wait a slow machine could outlast.
    Pass every open socket: the marker reaches them all."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    assert (await post(publisher_url, {"all": True}, event=marker)).status_code == 200
    events = []
    for ws in sockets:
        before = []
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["event"] != marker:
            before.append(message["event"])
        events.append(before)
    return events


async def test_a_broadcast_reaches_each_target_once_whichever_node_holds_it(cluster) -> None:
    g1, g2, g3 = cluster
    async with (
        connect(g1.ws_url + "/ws?device_id=a") as a_on_1,
        connect(g3.ws_url + "/ws?device_id=a") as a_on_3,
        connect(g2.ws_url + "/ws?device_id=b") as b_on_2,
        connect(g3.ws_url + "/ws?device_id=c") as c_on_3,
    ):
        answer = await post(g1.url, {"device_ids": ["a", "b"]})
        assert answer.status_code == 200 and answer.json() == {"delivered": None, "devices": None}
        assert await before_marker(g1.url, a_on_1, a_on_3, b_on_2, c_on_3) == [["news"], ["news"], ["news"], []]


async def test_channels_and_all_span_the_nodes(cluster) -> None:
    g1, g2, g3 = cluster
    async with (
        connect(g1.ws_url + "/ws?device_id=m1") as m1,
        connect(g2.ws_url + "/ws?device_id=m2") as m2,
        connect(g3.ws_url + "/ws?device_id=out") as outsider,
    ):
        for ws in (m1, m2):
            await ws.send(json.dumps({"event": "subscribe", "data": {"channel": "room:7"}}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]["subscribed"] is True
        assert (await post(g3.url, {"channels": ["room:7"]}, event="said")).status_code == 200
        assert await before_marker(g3.url, m1, m2, outsider) == [["said"], ["said"], []]
        assert (await post(g2.url, {"all": True}, event="maintenance")).status_code == 200
        assert await before_marker(g2.url, m1, m2, outsider) == [["maintenance"]] * 3


class OwnServer:
    """A redis-server or nats-server (with JetStream, streams in memory) of our own on a free port, to stop
    and start again: either starts empty."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.store = tempfile.TemporaryDirectory(prefix="sonalyze-nats-") if kind == "nats" else None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}" + ("/0" if self.kind == "redis" else "")

    def start(self) -> None:
        program = infra.require_binary(f"{self.kind}-server")
        if self.kind == "redis":
            command = [program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        else:
            command = [program, "-js", "-sd", self.store.name, "-a", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not infra.reachable(self.url, self.port):
            assert time.monotonic() < deadline, f"{self.kind}-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # if a test left it stopped
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_losing_the_bus_keeps_local_delivery_and_the_gateway_reconnects(kind: str) -> None:
    bus = OwnServer(kind)
    bus.start()
    nodes: list[ServiceProcess] = []
    try:
        nodes = start_cluster(bus.url, 2)
        g1, g2 = nodes
        async with connect(g1.ws_url + "/ws?device_id=here") as here, connect(g2.ws_url + "/ws?device_id=there") as there:
            bus.stop()
            await asyncio.to_thread(wait_ready, g1.url, False)
            readiness = httpx.get(g1.url + "/readyz").json()
            assert readiness["broker"] == {"kind": kind, "connected": False}
            answer = await post(g1.url, {"device_ids": ["here", "there"]}, event="local")
            assert answer.json() == {"delivered": 1, "devices": 1}  # this node's device, delivered at once
            assert await before_marker(g1.url, here) == [["local"]]  # the marker too: only locally
            bus.start()
            for node in nodes:
                await asyncio.to_thread(wait_ready, node.url, True, 30.0)
            assert (await post(g1.url, {"device_ids": ["here", "there"]}, event="back")).status_code == 200
            here_got, there_got = ([e for e in events if not e.startswith("marker-")] for events in await before_marker(g1.url, here, there))
            assert here_got == ["back"]  # "local" reached it while the bus was down, once
            assert there_got == ["local", "back"]  # queued while the bus was down, published when it came back (issue 18)
    finally:
        for node in nodes:
            node.stop()
        bus.stop()


async def test_a_backend_subscribes_devices_on_every_node(cluster) -> None:
    g1, g2, g3 = cluster
    async with connect(g2.ws_url + "/ws?device_id=p-on-2") as on_2, connect(g3.ws_url + "/ws?device_id=p-on-3") as on_3:
        async with httpx.AsyncClient() as client:
            body = {"device_ids": ["p-on-2", "p-on-3"], "channel": "lobby:77", "action": "subscribe"}
            answer = await client.post(g1.url + "/internal/subscriptions", json=body, headers={"X-Internal-Token": TOKEN})
        assert answer.json() == {"connections": None, "devices": None}
        # the membership change travels over the bus before the next publication of the same node
        assert (await post(g1.url, {"channels": ["lobby:77"]}, event="lobby.updated")).status_code == 200
        assert await before_marker(g1.url, on_2, on_3) == [["lobby.updated"], ["lobby.updated"]]
