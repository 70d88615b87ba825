"""The market relay example: JetStream durable consumer → /ws/stream, latest payload on connect, bytes as published."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest
from websockets.asyncio.client import connect

from examples._launch import free_port
from examples.market import run as market
from tests.support import infra


async def next_event(ws) -> str:
    return await asyncio.wait_for(ws.recv(), 10)


async def test_signals_reach_every_stream_client_and_a_new_client_gets_the_latest_at_once() -> None:
    nats_url = infra.require(infra.NATS_URL, 4222, "NATS")
    tag = uuid.uuid4().hex[:10]
    stream, subject = f"TEST_LEVELS_{tag}", f"test.{tag}.levels.signals"
    port = free_port()
    relay = await asyncio.to_thread(market.start, nats_url, stream, subject, "gateway_levels", port)
    try:
        first = b'{"symbol": "EURUSD",  "level": 1.0842}'  # spacing kept: the gateway does not re-encode
        async with connect(relay.gateway.ws_url + "/ws/stream") as early:
            await market.publish(nats_url, subject, [first])
            text = await next_event(early)
            assert text == '{"type":"event","event":"levels.signal","data":' + first.decode() + "}"
            async with connect(relay.gateway.ws_url + "/ws/stream") as late:
                assert await next_event(late) == text  # the latest payload, at once
                await market.publish(nats_url, subject, [b'{"symbol": "EURUSD", "level": 1.0850}'])
                for ws in (early, late):
                    assert json.loads(await next_event(ws))["data"] == {"symbol": "EURUSD", "level": 1.0850}
        relay.gateway.stop()
        await market.publish(nats_url, subject, [b'{"while": "down"}', b"not json", b'{"level": 3}'])
        relay.gateway.start()  # the durable consumer resumes where it stopped
        async with connect(relay.gateway.ws_url + "/ws/stream") as after:
            received = json.loads(await next_event(after))
            if received["data"] != {"level": 3}:  # connected before the backlog was relayed
                assert received["data"] in ({"symbol": "EURUSD", "level": 1.0850}, {"while": "down"})
                while received["data"] != {"level": 3}:
                    received = json.loads(await next_event(after))
            assert received["data"] == {"level": 3}
    finally:
        relay.stop()
        client = await nats.connect(nats_url)
        await client.jetstream().delete_stream(stream)
        await client.close()


@pytest.mark.parametrize("data", [b"not json", b""])
def test_only_json_is_relayed(data: bytes) -> None:
    from sonalyze.gateway.stream_source import stream_envelope

    with pytest.raises(ValueError):
        stream_envelope("levels.signal", data)
