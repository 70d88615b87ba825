"""The market relay example (seed 003): the seed's own client, bytes as published, latest payload on connect,
the seed's ``GET /health`` and banner, ``python -m examples.market.run --port P``; the envelope as an option."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import nats
import pytest
from websockets.asyncio.client import connect

from examples._launch import REPO, free_port
from examples.market import run as market
from tests.examples.seeds import SeedClient
from tests.support import infra


async def next_text(ws) -> str:
    return await asyncio.wait_for(ws.recv(), 10)


async def delete_stream(nats_url: str, stream: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


def names() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"TEST_LEVELS_{tag}", f"test.{tag}.levels.signals", f"gateway_levels_{tag}"


def test_run_prints_the_banner_serves_health_and_the_seed_client_reads_each_signal() -> None:
    nats_url = infra.require(infra.NATS_URL, 4222, "NATS")
    stream, subject, durable = names()
    port = free_port()
    command = [sys.executable, "-m", "examples.market.run", "--port", str(port), "--stream", stream, "--subject", subject,
               "--durable", durable, "--interval", "0.2"]
    runner = subprocess.Popen(command, cwd=REPO, env={**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    client = None
    try:
        lines: list[str] = []
        assert runner.stdout is not None
        while "  WebSocket: " not in "".join(lines):
            line = runner.stdout.readline()
            assert line, "examples.market.run exited before its banner"
            lines.append(line)
        lines.append(runner.stdout.readline())
        start = lines.index("GATEWAY SERVICE\n") - 1
        rule = "=" * 60 + "\n"  # seed 003's "Startup Output", with our NATS URL and port
        assert lines[start:start + 6] == [
            rule, "GATEWAY SERVICE\n", rule, f"  NATS URL: {nats_url}\n", f"  WebSocket: ws://localhost:{port}/ws/stream\n", rule,
        ]

        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status_code == 200
        body = health.json()
        assert body == {"service": "gateway", "status": "healthy", "nats_url": nats_url, "connections": body["connections"]}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200

        client = SeedClient("003", port)
        first = client.next_line()
        assert first.startswith("SPY: ") and first.endswith(", Levels: 3")  # the ticker's signals
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["connections"] == 1
        mine = {"spy": {"spot": 4321.5}, "levels": [{"price": 1}, {"price": 2}], "viewport": {}}
        asyncio.run(market.publish(nats_url, subject, [json.dumps(mine).encode()]))
        deadline = time.monotonic() + 15
        while client.next_line() != "SPY: 4321.5, Levels: 2":
            assert time.monotonic() < deadline
    finally:
        if client is not None:
            client.stop()
        os.killpg(runner.pid, signal.SIGTERM)  # run.py and its gateway
        runner.wait(30)
        asyncio.run(delete_stream(nats_url, stream))


async def test_signals_reach_every_stream_client_byte_for_byte_and_a_new_client_gets_the_latest_at_once() -> None:
    nats_url = infra.require(infra.NATS_URL, 4222, "NATS")
    stream, subject, durable = names()
    relay = await asyncio.to_thread(market.start, nats_url, stream, subject, durable, free_port())
    try:
        first = b'{"spy": {"spot": 1.0842},  "levels": []}'  # spacing kept: the gateway does not re-encode
        async with connect(relay.gateway.ws_url + "/ws/stream") as early:
            await market.publish(nats_url, subject, [first])
            assert await next_text(early) == first.decode()
            async with connect(relay.gateway.ws_url + "/ws/stream") as late:
                assert await next_text(late) == first.decode()  # the latest payload, at once
                for garbage in ("not json", '{"event": "ping"}', "x" * 70_000):
                    await late.send(garbage)  # the relay takes no client messages: read and dropped
                await late.send(b"\x00\x01")
                second = b'{"spy": {"spot": 1.0850}, "levels": [1]}'
                await market.publish(nats_url, subject, [second])
                for ws in (early, late):
                    assert await next_text(ws) == second.decode()  # nothing else came first: no error envelopes
        relay.gateway.stop()
        await market.publish(nats_url, subject, [b'{"while": "down"}', b"not json", b'{"level": 3}'])
        relay.gateway.start()  # the durable consumer resumes where it stopped
        async with connect(relay.gateway.ws_url + "/ws/stream") as after:
            received = json.loads(await next_text(after))
            while received != {"level": 3}:  # connected before the backlog was relayed: it comes in order
                assert received in ({"spy": {"spot": 1.0850}, "levels": [1]}, {"while": "down"})
                received = json.loads(await next_text(after))
    finally:
        relay.stop()
        await delete_stream(nats_url, stream)


async def test_the_envelope_stays_available_for_sonalyze_clients() -> None:
    nats_url = infra.require(infra.NATS_URL, 4222, "NATS")
    stream, subject, durable = names()
    relay = await asyncio.to_thread(market.start, nats_url, stream, subject, durable, free_port(), "envelope")
    try:
        payload = b'{"symbol": "EURUSD",  "level": 1.0842}'
        async with connect(relay.gateway.ws_url + "/ws/stream") as ws:
            await market.publish(nats_url, subject, [payload])
            assert await next_text(ws) == '{"type":"event","event":"levels.signal","data":' + payload.decode() + "}"
            await ws.send("not json")  # on the envelope stream, Sonalyze's error envelope
            assert json.loads(await next_text(ws))["error"]["code"] == "invalid_json"
    finally:
        relay.stop()
        await delete_stream(nats_url, stream)


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("data", [b"not json", b""])
def test_only_json_is_relayed(data: bytes, raw: bool) -> None:
    from sonalyze.gateway.stream_source import stream_payload

    with pytest.raises(ValueError):
        stream_payload("levels.signal", data, raw)
