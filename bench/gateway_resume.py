"""Issue 18: what push positions cost the fan-out, and how long a resume of 1,000 missed pushes takes.

Side by side in one run, interleaved: the gateway with the history off (``PUSH_HISTORY_MAX=0``: no
``pos``, nothing kept) and on (the default), fan-out to 1,000 and 5,000 devices; then the resume.
The gateway runs pinned to core 0 and the load generator on core 1 (``bench/gateway_bench.py``'s
servers, clients and CPU reading). Frames are counted by parsing each frame header: with ``pos`` they
differ in size, so ``gateway_bench.py``'s byte counting cannot be used.

- fan-out: two posters send the same broadcast to every device for ``--seconds``; gateway CPU (user,
  user+system) per delivery, and the latency of each ``POST /internal/broadcast`` (the gateway writes
  every connection's frame before it answers: it is publish-to-written).
- resume: one device sees a push, disconnects; 1,000 pushes for it are published; it reconnects with
  ``?resume=`` and the time from opening the TCP connection to the 1,000th replayed push is measured.

    ALLOW_INSECURE_DEVICE_IDS=1 MAX_CONNECTIONS_PER_ADDRESS=100000 .venv/bin/python bench/gateway_resume.py --rounds 2
    ... bench/gateway_resume.py --rounds 2 --broker redis://127.0.0.1:10110/0   # a redis-server of your own

With a cluster broker the broadcast is answered once published (delivery follows on the bus), so the
latency is publish-to-answer there, not publish-to-written.

One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import TOKEN, WSClient, cpu_s, free_port, open_clients, post, start_server, start_upstream  # noqa: E402


async def fanout(port: int, pid: int, clients_n: int, seconds: float) -> dict:
    data = {"type": "participant_joined", "device_id": "device-0123456789", "lobby_id": "0f8fad5b-d9cb-469f"}
    clients = await open_clients(port, clients_n, prefix=f"f{clients_n}-")
    body = json.dumps({"event": "lobby.updated", "data": data, "targets": {"device_ids": [c.device_id for c in clients]}}).encode()
    delivered = 0
    latencies_s: list[float] = []

    async def poster(deadline: float, measure: bool) -> None:
        nonlocal delivered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            sent_s = time.perf_counter()
            answer = json.loads(await post(reader, writer, port, "/internal/broadcast", body, f"X-Internal-Token: {TOKEN}\r\n"))
            if measure:
                latencies_s.append(time.perf_counter() - sent_s)
            delivered += clients_n if answer["delivered"] is None else answer["delivered"]  # None: a cluster broker
        writer.close()

    await asyncio.gather(*(poster(time.monotonic() + 1.0, False) for _ in range(2)))  # warm-up
    while sum(client.frames for client in clients) < delivered:
        await asyncio.sleep(0.01)
    delivered = 0
    for client in clients:
        client.frames = 0
    user0, system0 = cpu_s(pid)
    started = time.monotonic()
    await asyncio.gather(*(poster(started + seconds, True) for _ in range(2)))
    while sum(client.frames for client in clients) < delivered:
        await asyncio.sleep(0.001)
    elapsed_s = time.monotonic() - started
    user1, system1 = cpu_s(pid)
    received = sum(client.frames for client in clients)
    for client in clients:
        client.transport.close()
    latencies_s.sort()
    return {
        "clients": clients_n, "deliveries": received, "deliveries_per_s": round(received / elapsed_s),
        "user_us_per_delivery": round((user1 - user0) / received * 1e6, 2),
        "total_us_per_delivery": round((user1 - user0 + system1 - system0) / received * 1e6, 2),
        "publish_ms_p50": round(statistics.median(latencies_s) * 1e3, 2),
        "publish_ms_p99": round(latencies_s[int(0.99 * (len(latencies_s) - 1))] * 1e3, 2),
    }


class ResumingClient(WSClient):
    """Connects as ``device_id`` with ``?resume=``; keeps the last payload and counts frames."""

    def __init__(self, port: int, device_id: str, resume: str | None) -> None:
        super().__init__(port, device_id, on_message=self._keep)
        self.resume = resume
        self.last: bytes = b""
        self.done = asyncio.get_running_loop().create_future()
        self.expect = 1

    def _keep(self, _: WSClient, payload: bytes) -> None:
        self.last = payload
        if self.frames >= self.expect and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_made(self, transport) -> None:
        self.transport = transport
        resume = f"&resume={self.resume}" if self.resume else ""
        transport.write(
            f"GET /ws?device_id={self.device_id}{resume} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )


async def resume_time(port: int, missed: int) -> dict:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"event": "t.n", "data": {"n": 0}, "targets": {"device_ids": ["r"]}}).encode()
    _, first = await loop.create_connection(lambda: ResumingClient(port, "r", None), "127.0.0.1", port)
    await first.ready
    await post(reader, writer, port, "/internal/broadcast", body, f"X-Internal-Token: {TOKEN}\r\n")
    await first.done
    position = orjson.loads(first.last)["pos"]
    first.transport.close()
    await asyncio.sleep(0.2)  # the gateway sees the close
    for n in range(1, missed + 1):
        body = json.dumps({"event": "t.n", "data": {"n": n}, "targets": {"device_ids": ["r"]}}).encode()
        await post(reader, writer, port, "/internal/broadcast", body, f"X-Internal-Token: {TOKEN}\r\n")
    writer.close()
    started_s = time.perf_counter()
    _, again = await loop.create_connection(
        lambda: ResumingClient(port, "r", f"{position['epoch']}:{position['offset']}"), "127.0.0.1", port
    )
    again.expect = missed
    finished_s = await asyncio.wait_for(again.done, 30)
    last = orjson.loads(again.last)
    again.transport.close()
    assert again.frames == missed and last["data"]["n"] == missed, (again.frames, last)
    return {"missed": missed, "replayed": again.frames, "resume_ms": round((finished_s - started_s) * 1e3, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--broker", default="memory://", help="BROKER_URL of the gateway (e.g. a redis-server of your own)")
    args = parser.parse_args()
    os.environ["BROKER_URL"] = args.broker
    os.sched_setaffinity(0, {1})
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    try:
        for round_n in range(1, args.rounds + 1):
            for clients_n in args.clients:
                for history in ("off", "on"):
                    os.environ["PUSH_HISTORY_MAX"] = "0" if history == "off" else "10000"
                    port = free_port()
                    server = start_server("gateway", port, f"http://127.0.0.1:{upstream_port}")
                    try:
                        result = uvloop.run(fanout(port, server.pid, clients_n, args.seconds))
                    finally:
                        server.terminate()
                        server.wait()
                    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                    print(json.dumps({
                        "benchmark": "fanout", "broker": args.broker.split(":")[0], "history": history, "round": round_n, "loadavg": load, **result,
                    }), flush=True)
        os.environ["PUSH_HISTORY_MAX"] = "10000"
        port = free_port()
        server = start_server("gateway", port, f"http://127.0.0.1:{upstream_port}")
        try:
            for _ in range(args.rounds):
                print(json.dumps({"benchmark": "resume", "broker": args.broker.split(":")[0], **uvloop.run(resume_time(port, 1000))}), flush=True)
        finally:
            server.terminate()
            server.wait()
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
