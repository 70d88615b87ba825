"""Gateway benchmarks: broadcast fan-out, routed event round trips, idle connection memory.

The server under test runs pinned to core 0 (``taskset -c 0``); this load generator (raw asyncio on
uvloop: a hand-rolled WebSocket client that masks with a zero key and only counts frames) and the stub
upstream run pinned to core 1. Server CPU is read from ``/proc/<pid>/stat`` (utime, stime) before and
after; memory from ``/proc/<pid>/status`` (VmRSS).

    python bench/gateway_bench.py fanout --server gateway --clients 1000 --seconds 10
    python bench/gateway_bench.py fanout --server starlette --clients 1000 --seconds 10
    python bench/gateway_bench.py fanout --server node --clients 1000 --seconds 10   # after: npm install --prefix bench/gateway_baseline_node
    python bench/gateway_bench.py routed --clients 100 --seconds 10            # closed loop: max rate
    python bench/gateway_bench.py routed --clients 100 --seconds 10 --rate 5000  # paced: latency
    python bench/gateway_bench.py idle --server gateway --clients 10000

Each run prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import uvloop

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE = 1024


# --- measuring a process --------------------------------------------------------------------------

def cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * PAGE
    raise RuntimeError("no VmRSS")


# --- servers ----------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


LOAD_ENV = {
    "INTERNAL_AUTH_TOKEN": TOKEN,
    "ALLOW_INSECURE_DEVICE_IDS": "1",  # the load generator names its devices (no device tokens)
    "MAX_CONNECTIONS_PER_ADDRESS": "1000000",  # every client comes from 127.0.0.1
    "RATE_LIMIT_RPS": "1000000000",
    "RATE_LIMIT_BURST": "1000000000",
    "LOG_LEVEL": "WARNING",
}
"""The settings of a server under these load generators (gateway_bench, gateway_scale, gateway_resume)."""


def gateway_command(port: int) -> list[str]:
    return [sys.executable, "-m", "sonalyze", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)]


def start_pinned(command: list[str], env: dict[str, str], ready_url: str) -> subprocess.Popen:
    """``command`` on core 0 with ``LOAD_ENV`` and ``env``, once ``ready_url`` answers 200."""
    process = subprocess.Popen(["taskset", "-c", "0", *command], env={**os.environ, **LOAD_ENV, **env}, cwd=REPO)
    wait_ready(ready_url, process)
    return process


def start_server(kind: str, port: int, upstream_url: str) -> subprocess.Popen:
    if kind == "gateway":
        command = gateway_command(port)
    elif kind == "node":
        command = ["node", str(REPO / "bench" / "gateway_baseline_node" / "server.js"), str(port)]
    else:
        command = [sys.executable, str(REPO / "bench" / "gateway_baseline_starlette.py"), str(port)]
    upstreams = {"LOBBY_URL": upstream_url, "MEASUREMENT_URL": upstream_url, "SIMULATION_URL": upstream_url}
    return start_pinned(command, upstreams, f"http://127.0.0.1:{port}/healthz")


def start_upstream(port: int, core: int = 1) -> subprocess.Popen:
    process = subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, str(REPO / "bench" / "gateway_stub_upstream.py"), str(port)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


# --- a raw WebSocket client ------------------------------------------------------------------------

class WSClient(asyncio.Protocol):
    """Handshakes, then counts server frames (or hands each payload to ``on_message``)."""

    def __init__(self, port: int, device_id: str, on_message=None, frame_size: int = 0) -> None:
        self.port = port
        self.device_id = device_id
        self.on_message = on_message
        self.frame_size = frame_size
        self.received = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.open = False
        self.frames = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(
            f"GET /ws?device_id={self.device_id} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.open and self.frame_size:  # fan-out: every frame has the same size, count bytes only
            self.received += len(data)
            self.frames = self.received // self.frame_size
            return
        buffer = self.buffer + data if self.buffer else data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(buffer[:200]))
                return
            self.open = True
            self.ready.set_result(None)
            buffer = buffer[end + 4:]
            if self.frame_size:
                self.received = len(buffer)
                self.frames = self.received // self.frame_size
                return
        position, size = 0, len(buffer)
        on_message = self.on_message
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            header = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2:position + 4], "big")
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2:position + 10], "big")
                header = 10
            end = position + header + length
            if end > size:
                break
            self.frames += 1
            if on_message is not None:
                on_message(self, buffer[position + header:end])
            position = end
        self.buffer = buffer[position:] if position < size else b""

    def send_text(self, payload: bytes) -> None:
        """A client frame, masked with the all-zero key (valid RFC 6455; the payload is unchanged)."""
        length = len(payload)
        if length < 126:
            header = bytes((0x81, 0x80 | length))
        else:
            header = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
        self.transport.write(header + b"\x00\x00\x00\x00" + payload)


async def open_clients(
    port: int, count: int, on_message=None, prefix: str = "d", batch: int = 200, frame_size: int = 0
) -> list[WSClient]:
    loop = asyncio.get_running_loop()
    clients: list[WSClient] = []
    for start in range(0, count, batch):
        made = await asyncio.gather(*(
            loop.create_connection(lambda i=i: WSClient(port, f"{prefix}{i}", on_message, frame_size), "127.0.0.1", port)
            for i in range(start, min(count, start + batch))
        ))
        batch_clients = [protocol for _, protocol in made]
        await asyncio.gather(*(client.ready for client in batch_clients))
        clients += batch_clients
    return clients


async def post(reader, writer, port: int, path: str, body: bytes, headers: str = "") -> bytes:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


# --- benchmarks -------------------------------------------------------------------------------------

async def fanout(port: int, pid: int, clients_n: int, seconds: float) -> dict:
    event = "lobby.updated"
    data = {"type": "participant_joined", "device_id": "device-0123456789", "lobby_id": "0f8fad5b-d9cb-469f"}
    clients = await open_clients(port, clients_n)  # frames counted by header: with "pos" (issue 18) their sizes differ
    device_ids = [client.device_id for client in clients]
    body = json.dumps({"event": event, "data": data, "targets": {"device_ids": device_ids}}).encode()
    delivered = 0

    async def poster(deadline: float) -> None:
        nonlocal delivered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            answer = json.loads(await post(reader, writer, port, "/internal/broadcast", body, f"X-Internal-Token: {TOKEN}\r\n"))
            delivered += answer["delivered"]
        writer.close()

    await asyncio.gather(*(poster(time.monotonic() + 1.0) for _ in range(2)))  # warm-up
    while sum(client.frames for client in clients) < delivered:
        await asyncio.sleep(0.01)
    delivered = 0
    for client in clients:
        client.frames = client.received = 0
    user0, system0 = cpu_s(pid)
    started = time.monotonic()
    await asyncio.gather(*(poster(started + seconds) for _ in range(2)))
    while sum(client.frames for client in clients) < delivered:
        await asyncio.sleep(0.001)
    elapsed_s = time.monotonic() - started
    user1, system1 = cpu_s(pid)
    received = sum(client.frames for client in clients)
    for client in clients:
        client.transport.close()
    return {
        "clients": clients_n, "deliveries": received, "deliveries_per_s": round(received / elapsed_s),
        "user_us_per_delivery": round((user1 - user0) / received * 1e6, 2),
        "total_us_per_delivery": round((user1 - user0 + system1 - system0) / received * 1e6, 2),
        "server_cpu_share": round((user1 - user0 + system1 - system0) / elapsed_s, 2),
    }


async def routed_run(
    port: int, pid: int, clients_n: int, seconds: float, rate: float, direct_port: int | None, event: str = "lobby.get"
) -> dict:
    """Round trips client -> server -> upstream -> client (or straight to the upstream with ``direct_port``)."""
    state = {"measuring": False, "stop": False, "counter": 0}
    latencies_s: list[float] = []
    sent_at: dict[bytes, float] = {}
    completed = [0]
    errors: list[bytes] = []

    event_bytes = event.encode()
    if direct_port is None:
        def send(client) -> None:
            state["counter"] += 1
            request_id = b"%d" % state["counter"]
            sent_at[request_id] = time.perf_counter()
            client.send_text(b'{"event":"' + event_bytes + b'","request_id":"' + request_id + b'","data":{"lobby_id":"abc"}}')

        def on_message(client, payload: bytes) -> None:
            start = payload.find(b'"request_id":"') + 14
            request_id = payload[start:payload.find(b'"', start)]
            if b'"type":"response"' not in payload:
                errors.append(payload)
            finish(client, sent_at.pop(request_id))

        clients = await open_clients(port, clients_n, on_message, prefix="r")
    else:
        clients = [await HTTPClient.open(direct_port) for _ in range(clients_n)]

        def send(client) -> None:
            client.post(time.perf_counter())

        for client in clients:
            client.on_answer = lambda client, sent: finish(client, sent)

    def finish(client, sent: float) -> None:
        if state["measuring"]:
            latencies_s.append(time.perf_counter() - sent)
            completed[0] += 1
        if rate == 0 and not state["stop"]:
            send(client)

    loop = asyncio.get_running_loop()
    if rate == 0:
        for client in clients:
            send(client)
    else:
        interval_s = clients_n / rate

        async def pace(client, offset_s: float) -> None:
            await asyncio.sleep(offset_s)
            next_s = loop.time()
            while not state["stop"]:
                send(client)
                next_s += interval_s
                await asyncio.sleep(max(0.0, next_s - loop.time()))

        pacers = [loop.create_task(pace(client, i * interval_s / clients_n)) for i, client in enumerate(clients)]
    await asyncio.sleep(1.0)  # warm-up
    user0, system0 = cpu_s(pid)
    started = time.monotonic()
    state["measuring"] = True
    await asyncio.sleep(seconds)
    state["measuring"] = False
    elapsed_s = time.monotonic() - started
    user1, system1 = cpu_s(pid)
    state["stop"] = True
    if rate:
        for pacer in pacers:
            pacer.cancel()
    await asyncio.sleep(0.5)
    events = completed[0]
    latencies_s.sort()
    return {
        "clients": clients_n, "event": event, "mode": "closed loop" if rate == 0 else f"paced {rate:g}/s",
        "events": events, "error_envelopes": len(errors), "events_per_s": round(events / elapsed_s),
        "server_user_us_per_event": round((user1 - user0) / events * 1e6, 1),
        "server_total_us_per_event": round((user1 - user0 + system1 - system0) / events * 1e6, 1),
        "p50_ms": round(statistics.median(latencies_s) * 1e3, 3),
        "p99_ms": round(latencies_s[int(len(latencies_s) * 0.99)] * 1e3, 3),
    }


class HTTPClient(asyncio.Protocol):
    """Keep-alive POST /gateway/handle straight to the stub upstream (whose answers have a fixed size)."""

    REQUEST = (
        b"POST /gateway/handle HTTP/1.1\r\nHost: upstream\r\ncontent-type: application/json\r\ncontent-length: 109\r\n\r\n"
        + b'{"event":"lobby.get","data":{"lobby_id":"abc"},"device_id":"r1","request_id":"1","connection_id":"0123456789"}'[:109]
    )

    @classmethod
    async def open(cls, port: int) -> "HTTPClient":
        from gateway_stub_upstream import RESPONSE

        _, client = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        client.answer_size = len(RESPONSE)
        return client

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.pending: list[float] = []
        self.received = 0

    def post(self, sent: float) -> None:
        self.pending.append(sent)
        self.transport.write(self.REQUEST)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        while self.received >= self.answer_size:
            self.received -= self.answer_size
            self.on_answer(self, self.pending.pop(0))


async def idle(port: int, pid: int, clients_n: int) -> dict:
    warm = await open_clients(port, 100, prefix="w")
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    clients = await open_clients(port, clients_n, prefix="i")
    await asyncio.sleep(3.0)
    after = rss_bytes(pid)
    for client in clients + warm:
        client.transport.close()
    return {
        "clients": clients_n, "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / clients_n / 1024, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("benchmark", choices=["fanout", "routed", "direct", "idle"])
    parser.add_argument("--server", choices=["gateway", "starlette", "node"], default="gateway")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="routed: events/s in total (0: closed loop)")
    parser.add_argument("--upstream-core", type=int, default=1, help="core for the stub upstream (default 1)")
    parser.add_argument("--event", default="lobby.get", help="routed: the event sent (ping: answered by the gateway itself)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    os.sched_setaffinity(0, {1})
    upstream_port, port = free_port(), free_port()
    upstream = start_upstream(upstream_port, args.upstream_core)
    server = None if args.benchmark == "direct" else start_server(args.server, port, f"http://127.0.0.1:{upstream_port}")
    try:
        if args.benchmark == "fanout":
            result = uvloop.run(fanout(port, server.pid, args.clients, args.seconds))
        elif args.benchmark == "routed":
            result = uvloop.run(routed_run(port, server.pid, args.clients, args.seconds, args.rate, None, args.event))
        elif args.benchmark == "direct":
            result = uvloop.run(routed_run(upstream_port, upstream.pid, args.clients, args.seconds, args.rate, upstream_port))
        else:
            result = uvloop.run(idle(port, server.pid, args.clients))
    finally:
        for process in (server, upstream):
            if process is not None:
                process.terminate()
                process.wait()
    print(json.dumps({"benchmark": args.benchmark, "server": "stub upstream" if args.benchmark == "direct" else args.server, **result}))


if __name__ == "__main__":
    main()
