"""Issue 18 on a cluster: gateway processes on a redis-server or a nats-server (JetStream) of the test's own
(SIGKILL, SIGSTOP): the same checks for both brokers.

Every broadcast names its publisher and a number counting up from 0; a device's record is checked per
publisher against ``range(N)`` (exactly once, in order), counting every message. Each publisher ends
with an ``end`` broadcast sent after Redis is back: one publisher's broadcasts reach a device in order,
so once both ends arrived nothing of that publisher can still be on its way.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.gateway.conftest import TOKEN, nothing_arrived
from tests.gateway.test_cluster import OwnServer, gateway_env, wait_ready
from tests.support.servers import ServiceProcess

DEVICES_PER_NODE = 5


def start_nodes(bus_url: str, count: int, **env: str) -> list[ServiceProcess]:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    nodes = [ServiceProcess("gateway", env={**gateway_env(bus_url, prefix), **env}) for _ in range(count)]
    for node in nodes:
        node.start()
    for node in nodes:
        wait_ready(node.url)
    return nodes


async def broadcast(client: httpx.AsyncClient, node: ServiceProcess, devices: list[str], data: dict) -> None:
    answer = await client.post(
        node.url + "/internal/broadcast", json={"event": "burst", "data": data, "targets": {"device_ids": devices}},
        headers={"X-Internal-Token": TOKEN}, timeout=30,
    )
    assert answer.status_code == 200, answer.text


async def record(ws, publishers: set[str], seen: list[dict]) -> None:
    """Every burst message until each publisher's ``end``."""
    ended: set[str] = set()
    while ended != publishers:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert message["event"] == "burst", message
        seen.append(message)
        if message["data"]["n"] == "end":
            ended.add(message["data"]["p"])


def per_publisher(seen: list[dict], publisher: str) -> list[int]:
    return [m["data"]["n"] for m in seen if m["data"]["p"] == publisher and m["data"]["n"] != "end"]


@pytest.mark.parametrize("kind", ["redis", "nats"])
@pytest.mark.parametrize("outage", ["sigkill", "sigstop"])
async def test_devices_on_two_instances_get_every_broadcast_once_across_a_broker_outage_mid_burst(outage: str, kind: str) -> None:
    bus = OwnServer(kind)
    bus.start()
    nodes: list[ServiceProcess] = []
    try:
        nodes = start_nodes(bus.url, 2)
        devices = {node.port: [f"d{node.port}-{i}" for i in range(DEVICES_PER_NODE)] for node in nodes}
        everyone = [d for ids in devices.values() for d in ids]
        sockets = [await connect(node.ws_url + f"/ws?device_id={d}") for node in nodes for d in devices[node.port]]
        publishers = {"g1", "g2"}
        records: list[list[dict]] = [[] for _ in sockets]
        readers = [asyncio.create_task(record(ws, publishers, seen)) for ws, seen in zip(sockets, records)]
        per_phase = 40
        async with httpx.AsyncClient() as client:

            async def publish(name: str, node: ServiceProcess, numbers: range) -> None:
                for n in numbers:
                    await broadcast(client, node, everyone, {"p": name, "n": n})
                    await asyncio.sleep(0.01)

            async def burst(numbers: range) -> None:
                await asyncio.gather(publish("g1", nodes[0], numbers), publish("g2", nodes[1], numbers))

            await burst(range(0, per_phase))
            if outage == "sigkill":
                bus.process.kill()
                bus.process.wait()
            else:
                bus.process.send_signal(signal.SIGSTOP)
            await burst(range(per_phase, 2 * per_phase))  # while Redis is gone or frozen
            if outage == "sigkill":
                bus.process = None
                bus.start()  # same port, empty: the history starts over (a new epoch)
            else:
                bus.process.send_signal(signal.SIGCONT)
            for node in nodes:
                await asyncio.to_thread(wait_ready, node.url, True, 30.0)
            await burst(range(2 * per_phase, 3 * per_phase))
            for name, node in (("g1", nodes[0]), ("g2", nodes[1])):
                await broadcast(client, node, everyone, {"p": name, "n": "end"})
            await asyncio.wait_for(asyncio.gather(*readers), 90)
            metrics = (await client.get(nodes[0].url + "/metrics", headers={"X-Internal-Token": TOKEN})).text
        for seen in records:
            for publisher in publishers:
                assert per_publisher(seen, publisher) == list(range(3 * per_phase))
            assert len(seen) == 2 * (3 * per_phase + 1)  # every message counted: nothing else, nothing twice
        assert "gateway_outage_queue 0.0" in metrics  # everything queued was published
        for ws in sockets:
            await ws.close()
    finally:
        for node in nodes:
            node.stop()
        bus.stop()


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_a_device_offline_for_10_s_resumes_on_another_instance_and_after_an_instance_restart(kind: str) -> None:
    bus = OwnServer(kind)
    bus.start()
    nodes: list[ServiceProcess] = []
    try:
        nodes = start_nodes(bus.url, 2)
        g1, g2 = nodes
        async with httpx.AsyncClient() as client:
            async with connect(g2.ws_url + "/ws?device_id=phone") as ws:
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": 0})
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            position = first["pos"]
            published = 1
            deadline = asyncio.get_running_loop().time() + 10.0
            while asyncio.get_running_loop().time() < deadline:  # offline for 10 s; g1 keeps publishing
                await broadcast(client, g1, ["phone", "other"], {"p": "g1", "n": published})
                published += 1
                await asyncio.sleep(0.05)
            g2.kill()  # the instance it was on is gone too; it comes back on g1
            async with connect(g1.ws_url + f"/ws?device_id=phone&resume={position['epoch']}:{position['offset']}") as ws:
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": "end"})
                seen: list[dict] = []
                await record(ws, {"g1"}, seen)
                last = seen[-2]["pos"]
            assert per_publisher(seen, "g1") == list(range(1, published))
            assert len(seen) == published  # the missed ones and the end: each once
            offsets = [m["pos"]["offset"] for m in seen]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
            g2.start()  # restarted mid-session: the history is in Redis, not in the instance
            wait_ready(g2.url)
            for n in range(published, published + 5):
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": n})
            async with connect(g2.ws_url + f"/ws?device_id=phone&resume={last['epoch']}:{last['offset']}") as ws:
                await broadcast(client, g2, ["phone"], {"p": "g2", "n": "end"})
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": "end"})
                seen = []
                while sum(m["data"]["n"] == "end" for m in seen) < 3:  # g1's first end (replayed), g2's, g1's second
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                assert await nothing_arrived(ws)
            # the first "end" of g1 (seen before, but after the kept position) is replayed too
            assert [m["data"]["n"] for m in seen if m["data"]["p"] == "g1"] == ["end", *range(published, published + 5), "end"]
            assert [m["data"]["n"] for m in seen if m["data"]["p"] == "g2"] == ["end"]
            assert len(seen) == 8
    finally:
        for node in nodes:
            node.stop()
        bus.stop()


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_a_resume_from_a_position_older_than_the_stream_gets_resync_required(kind: str) -> None:
    bus = OwnServer(kind)
    bus.start()
    nodes: list[ServiceProcess] = []
    try:
        nodes = start_nodes(bus.url, 1, PUSH_HISTORY_MAX="5")
        (g1,) = nodes
        async with httpx.AsyncClient() as client:
            async with connect(g1.ws_url + "/ws?device_id=phone") as ws:
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": 0})
                position = json.loads(await asyncio.wait_for(ws.recv(), 10))["pos"]
            for n in range(1, 400):  # Redis's MAXLEN ~ trims whole stream nodes (100 entries): far past 5
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": n})
            async with connect(g1.ws_url + f"/ws?device_id=phone&resume={position['epoch']}:{position['offset']}") as ws:
                told = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert told == {
                    "type": "event", "event": "resync_required",
                    "data": {"pos": {"epoch": position["epoch"], "offset": 400}, "reason": "history"},
                }
                await broadcast(client, g1, ["phone"], {"p": "g1", "n": "end"})
                after = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert after["data"] == {"p": "g1", "n": "end"} and after["pos"]["offset"] == 401
    finally:
        for node in nodes:
            node.stop()
        bus.stop()
