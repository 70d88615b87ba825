"""``GET /metrics``: connections, events by result, upstream latency, deliveries counted per broadcast, disconnects."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.conftest import TOKEN, gateway_settings, start_gateway


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url + "/metrics", headers={"X-Internal-Token": TOKEN})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_follow_what_the_gateway_does(upstreams) -> None:
    server = start_gateway(gateway_settings(upstreams, max_connections_per_device=1))
    try:
        async with connect(server.ws_url + "/ws?device_id=m1") as ws, connect(server.ws_url + "/ws?device_id=m2") as ws2:
            await ws.send(json.dumps({"event": "lobby.create", "request_id": 1}))
            assert json.loads(await ws.recv())["type"] == "response"
            await ws.send(json.dumps({"event": "lobby.fail", "request_id": 2}))
            assert json.loads(await ws.recv())["error"]["code"] == "bad_request"
            await ws.send(json.dumps({"event": "nope.x"}))
            await ws.recv()
            async with httpx.AsyncClient() as client:
                body = {"event": "lobby.updated", "targets": {"device_ids": ["m1", "m2"]}}
                await client.post(server.url + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN})
            await ws.recv(), await ws2.recv()
            async with connect(server.ws_url + "/ws?device_id=m1"):  # replaces ws
                with pytest.raises(ConnectionClosed):  # the gateway closed the replaced connection
                    await asyncio.wait_for(ws.recv(), 10)
                for _ in range(200):  # and forgets it once its handler ends
                    samples = await scrape(server.url)
                    if samples[("gateway_connections", ())] == 2:
                        break
                    await asyncio.sleep(0.05)
        assert samples[("gateway_connections", ())] == 2  # the replaced one is gone
        assert samples[("gateway_devices", ())] == 2
        assert samples[("gateway_events_in_total", (("event", "lobby.create"), ("result", "ok")))] == 1
        assert samples[("gateway_events_in_total", (("event", "lobby.fail"), ("result", "bad_request")))] == 1
        assert samples[("gateway_events_in_total", (("event", "nope.x"), ("result", "unknown_event")))] == 1
        assert samples[("gateway_upstream_latency_seconds_count", (("service", "lobby"),))] == 2
        assert samples[("gateway_events_out_total", (("event", "lobby.updated"),))] == 1
        assert samples[("gateway_broadcasts_delivered_total", (("kind", "devices"),))] == 1
        assert samples[("gateway_broadcast_deliveries_total", (("kind", "devices"),))] == 2
        assert samples[("gateway_disconnects_total", (("reason", "replaced"),))] == 1
        assert samples[("gateway_broker_connected", (("kind", "memory"),))] == 1
    finally:
        server.stop()
