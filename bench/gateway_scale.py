"""Gateway scale benchmarks (issue 8): one instance vs two over Redis, and 20,000 connections on one.

    python bench/gateway_scale.py cluster --instances 1 --broker memory --clients 1000 --seconds 10
    python bench/gateway_scale.py cluster --instances 2 --broker redis://127.0.0.1:6379/0 --clients 1000 --seconds 10
    python bench/gateway_scale.py connections --clients 20000

``cluster``: the clients are spread evenly over the instances; broadcasts to every device are posted to
instance 1. Two phases: *latency*, broadcasts paced at ``--rate`` per second, each carrying its send time
(``time.monotonic_ns``, one clock for all processes of the machine); every 20th client parses its frames
and the delivery latency is now − send time (p50, p99 over all samples); *throughput*, broadcasts posted
back to back with at most ``--window`` of them not yet fully received, deliveries per second over
``--seconds``, and the gateways' CPU per delivery (all instances together). Gateways are pinned to core 0,
this load generator to core 1 (Redis runs where the OS puts it).

``connections``: one instance, ``--clients`` WebSocket connections opened in batches by ``--generators``
processes (``ulimit -n`` raised by this script as far as the hard limit allows: each process holds at
most that many sockets), RSS before and after, then one broadcast to all of them and the time until
every client has it. Each run prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from gateway_bench import TOKEN, cpu_s, free_port, open_clients, post, rss_bytes, wait_ready  # noqa: E402

SAMPLE_EVERY = 20
STAMP_DIGITS = 20


def start_gateway(port: int, broker_url: str, prefix: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "INTERNAL_AUTH_TOKEN": TOKEN,
        "RATE_LIMIT_RPS": "1000000000",
        "RATE_LIMIT_BURST": "1000000000",
        "BROKER_URL": broker_url,
        "GATEWAY_BROKER_PREFIX": prefix,
        "LOG_LEVEL": "WARNING",
        "MAX_SEND_BUFFER_BYTES": str(16 << 20),
    }
    command = [sys.executable, "-m", "sonalyze", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(["taskset", "-c", "0", *command], env=env, cwd=REPO)
    wait_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process


def broadcast_body(device_ids: list[str], sent_ns: int) -> bytes:
    data = {"type": "tick", "t": str(sent_ns).zfill(STAMP_DIGITS)}  # fixed width: every frame has one size
    return orjson.dumps({"event": "bench.tick", "data": data, "targets": {"device_ids": device_ids}})


def frame_size() -> int:
    envelope = {"type": "event", "event": "bench.tick", "data": {"type": "tick", "t": "0" * STAMP_DIGITS}}
    return 2 + len(orjson.dumps(envelope))


async def cluster(ports: list[int], pids: list[int], clients_n: int, seconds: float, rate: float, window: int) -> dict:
    latencies_ns: list[int] = []
    measuring = [False]

    def on_message(client, payload: bytes) -> None:
        if measuring[0]:
            start = payload.find(b'"t":"') + 5
            latencies_ns.append(time.monotonic_ns() - int(payload[start:start + STAMP_DIGITS]))

    clients = []
    per_instance = clients_n // len(ports)
    for k, port in enumerate(ports):
        sampled = per_instance // SAMPLE_EVERY
        clients += await open_clients(port, sampled, on_message, prefix=f"s{k}-")
        clients += await open_clients(port, per_instance - sampled, prefix=f"c{k}-", frame_size=frame_size())
    device_ids = [client.device_id for client in clients]
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])

    async def publish() -> None:
        await post(reader, writer, ports[0], "/internal/broadcast", broadcast_body(device_ids, time.monotonic_ns()), f"X-Internal-Token: {TOKEN}\r\n")

    def received() -> int:
        return sum(client.frames for client in clients)

    async def settle(expected: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while received() < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{received()} of {expected} frames arrived")
            await asyncio.sleep(0.002)

    sent = 0
    for _ in range(20):  # warm-up
        await publish()
        sent += 1
    await settle(sent * len(clients))

    # latency: paced
    measuring[0] = True
    interval_s = 1.0 / rate
    next_s = time.monotonic()
    for _ in range(int(rate * seconds)):
        await publish()
        sent += 1
        next_s += interval_s
        await asyncio.sleep(max(0.0, next_s - time.monotonic()))
    await settle(sent * len(clients))
    measuring[0] = False
    latencies_ns.sort()

    # throughput: back to back, at most `window` broadcasts in flight
    cpu0 = [cpu_s(pid) for pid in pids]
    base_sent, base_received = sent, received()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        while (sent - base_sent) * len(clients) - (received() - base_received) > window * len(clients):
            await asyncio.sleep(0.0005)
        await publish()
        sent += 1
    await settle(sent * len(clients))
    elapsed_s = time.monotonic() - started
    cpu1 = [cpu_s(pid) for pid in pids]
    deliveries = received() - base_received
    writer.close()
    for client in clients:
        client.transport.close()
    user_s = sum(after[0] - before[0] for before, after in zip(cpu0, cpu1))
    total_s = sum(after[0] + after[1] - before[0] - before[1] for before, after in zip(cpu0, cpu1))
    return {
        "clients": len(clients),
        "latency_samples": len(latencies_ns),
        "latency_p50_ms": round(statistics.median(latencies_ns) / 1e6, 3),
        "latency_p99_ms": round(latencies_ns[int(0.99 * (len(latencies_ns) - 1))] / 1e6, 3),
        "paced_broadcasts_per_s": rate,
        "throughput_deliveries_per_s": round(deliveries / elapsed_s),
        "throughput_broadcasts_per_s": round((sent - base_sent) / elapsed_s, 1),
        "user_us_per_delivery": round(user_s / deliveries * 1e6, 2),
        "total_us_per_delivery": round(total_s / deliveries * 1e6, 2),
    }


def hold_clients(port: int, count: int, prefix: str, pipe) -> None:
    """A load-generator process: opens ``count`` connections, waits for one broadcast on all of them."""
    os.sched_setaffinity(0, {1})
    raise_file_limit(count + 100)

    async def run() -> None:
        clients = await open_clients(port, count, prefix=prefix, batch=500, frame_size=frame_size())
        pipe.send("open")
        await asyncio.to_thread(pipe.recv)  # the broadcast was posted
        while sum(client.frames for client in clients) < count:
            await asyncio.sleep(0.001)
        pipe.send("received")
        await asyncio.to_thread(pipe.recv)
        for client in clients:
            client.transport.close()

    uvloop.run(run())


async def connections(port: int, pid: int, clients_n: int, generators: int) -> dict:
    """``clients_n`` connections held by ``generators`` processes (each process is capped at ``ulimit -n``)."""
    context = multiprocessing.get_context("spawn")
    warm = await open_clients(port, 100, prefix="w")
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    started = time.monotonic()
    pipes, workers = [], []
    for k in range(generators):
        mine, theirs = context.Pipe()
        count = clients_n // generators + (1 if k < clients_n % generators else 0)
        worker = context.Process(target=hold_clients, args=(port, count, f"n{k}-", theirs))
        worker.start()
        pipes.append(mine)
        workers.append(worker)
    device_ids = [f"n{k}-{i}" for k in range(generators) for i in range(clients_n // generators + (1 if k < clients_n % generators else 0))]
    for mine in pipes:
        assert await asyncio.to_thread(mine.recv) == "open"
    opened_s = time.monotonic() - started
    await asyncio.sleep(3.0)
    after = rss_bytes(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = time.monotonic()
    await post(reader, writer, port, "/internal/broadcast", broadcast_body(device_ids, time.monotonic_ns()), f"X-Internal-Token: {TOKEN}\r\n")
    for mine in pipes:
        mine.send("posted")
    for mine in pipes:
        assert await asyncio.to_thread(mine.recv) == "received"
    fanout_s = time.monotonic() - sent
    for mine in pipes:
        mine.send("close")
    for worker in workers:
        worker.join(30)
    writer.close()
    for client in warm:
        client.transport.close()
    return {
        "clients": clients_n, "generator_processes": generators, "open_s": round(opened_s, 1),
        "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / clients_n / 1024, 2),
        "broadcast_to_all_ms": round(fanout_s * 1000, 1),
    }


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
        except (ValueError, PermissionError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("benchmark", choices=["cluster", "connections"])
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="cluster latency phase: broadcasts per second")
    parser.add_argument("--window", type=int, default=4, help="cluster throughput phase: broadcasts in flight")
    parser.add_argument("--generators", type=int, default=2, help="connections: load-generator processes")
    args = parser.parse_args()
    raise_file_limit(args.clients + 1000)  # the gateway inherits it
    os.sched_setaffinity(0, {1})
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    count = args.instances if args.benchmark == "cluster" else 1
    ports = [free_port() for _ in range(count)]
    servers = [start_gateway(port, args.broker, prefix) for port in ports]
    try:
        if args.benchmark == "cluster":
            result = uvloop.run(cluster(ports, [s.pid for s in servers], args.clients, args.seconds, args.rate, args.window))
        else:
            result = uvloop.run(connections(ports[0], servers[0].pid, args.clients, args.generators))
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(orjson.dumps({"benchmark": args.benchmark, "instances": count, "broker": args.broker.split("://")[0], **result, "loadavg": load}).decode())


if __name__ == "__main__":
    main()
