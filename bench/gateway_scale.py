"""Gateway scale benchmarks (issue 8): one instance vs two over Redis (or NATS), and 20,000 connections on one.

    python bench/gateway_scale.py compare --rounds 3 --clients 1000 --seconds 10
    python bench/gateway_scale.py broker --broker redis://127.0.0.1:6379/0 --targets 1 --messages 20000
    python bench/gateway_scale.py cluster --instances 2 --broker redis://127.0.0.1:6379/0 --clients 1000 --seconds 10
    python bench/gateway_scale.py connections --clients 0 --generators 2    # 0: as many as the file limit allows

``compare``: the setups of ``--setups`` (default: one instance alone, two over Redis, two over NATS) side by
side in one run, ``--rounds`` times, the order rotated each round so that a change in the machine's load
falls on every setup alike; one JSON line per run, then one with the medians of each setup.

``cluster``: the clients are spread evenly over the instances; broadcasts to every device are posted to
instance 1. Two phases: *latency*, broadcasts paced at ``--rate`` per second, each carrying its send time
(``time.monotonic_ns``, one clock for all processes of the machine); every 20th client parses its frames
and the delivery latency is now − send time (p50, p99 over all samples; the gateways deliver in no
particular order, so the samples spread over the whole fan-out). ``first_delivery`` is, per broadcast, the
earliest sampled delivery: the fixed part (HTTP request, broker hop, wake-ups) before the fan-out spreads
it out. *throughput*, broadcasts posted back to back with at most ``--window`` of them not yet fully
received, deliveries per second over ``--seconds``, and the gateways' CPU per delivery (all instances
together). Gateways are pinned to core 0,
this load generator to core 1 (Redis runs where the OS puts it).

``broker``: the bus alone, without WebSockets: a node in another process (core 0) subscribed through the
gateway's broker, this process (core 1) publishing ``--messages`` publications of ``--targets`` device
ids one after another through its own broker (it is a node too, so it also receives each one). CPU per
message of each node (getrusage) and the publish → local-delivery latency. ``--without-hiredis`` hides
hiredis (redis-py then parses in pure Python), to measure code that used redis-py.

``connections``: one instance, ``--clients`` WebSocket connections (0: as many as the gateway's descriptor
limit leaves room for) opened in batches by ``--generators`` processes (``ulimit -n`` raised by this script
as far as the hard limit allows: each process holds at most that many sockets), RSS and open descriptors
before and after, then one broadcast to all of them and the time until every client has it. Each run
prints one JSON line.
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

from gateway_bench import TOKEN, cpu_s, free_port, gateway_command, open_clients, post, rss_bytes, start_pinned  # noqa: E402

SAMPLE_EVERY = 20
WARM_UP_CONNECTIONS = 100
AS_MANY_AS_ALLOWED = 1 << 30
STAMP_DIGITS = 20


def start_gateway(port: int, broker_url: str, prefix: str) -> subprocess.Popen:
    env = {"BROKER_URL": broker_url, "GATEWAY_BROKER_PREFIX": prefix, "MAX_SEND_BUFFER_BYTES": str(16 << 20)}
    return start_pinned(gateway_command(port), env, f"http://127.0.0.1:{port}/readyz")


def broadcast_body(device_ids: list[str], sent_ns: int) -> bytes:
    data = {"type": "tick", "t": str(sent_ns).zfill(STAMP_DIGITS)}  # fixed width: every frame has one size
    return orjson.dumps({"event": "bench.tick", "data": data, "targets": {"device_ids": device_ids}})


def frame_size() -> int:
    envelope = {"type": "event", "event": "bench.tick", "data": {"type": "tick", "t": "0" * STAMP_DIGITS}}
    return 2 + len(orjson.dumps(envelope))


async def cluster(ports: list[int], pids: list[int], clients_n: int, seconds: float, rate: float, window: int) -> dict:
    latencies_ns: list[int] = []
    first_ns: dict[int, int] = {}
    """Per broadcast (its send stamp), the earliest sampled delivery latency."""
    measuring = [False]

    def on_message(client, payload: bytes) -> None:
        if measuring[0]:
            start = payload.find(b'"t":"') + 5
            sent_ns = int(payload[start:start + STAMP_DIGITS])
            latency_ns = time.monotonic_ns() - sent_ns
            latencies_ns.append(latency_ns)
            if latency_ns < first_ns.get(sent_ns, latency_ns + 1):
                first_ns[sent_ns] = latency_ns

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
    first_sorted_ns = sorted(first_ns.values())

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
        "first_delivery_p50_ms": round(statistics.median(first_sorted_ns) / 1e6, 3),
        "paced_broadcasts_per_s": rate,
        "throughput_deliveries_per_s": round(deliveries / elapsed_s),
        "throughput_broadcasts_per_s": round((sent - base_sent) / elapsed_s, 1),
        "user_us_per_delivery": round(user_s / deliveries * 1e6, 2),
        "total_us_per_delivery": round(total_s / deliveries * 1e6, 2),
    }


def broker_node(url: str, prefix: str, messages: int, without_hiredis: bool, pipe) -> None:
    """The subscribing node of ``broker``: its CPU from the first message to the last, and each latency."""
    if without_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    os.sched_setaffinity(0, {0})
    from sonalyze.gateway.broker import create_broker

    latencies_ns: list[int] = []
    usage: list[resource.struct_rusage] = []
    done = asyncio.Event()

    def deliver(targets, payload: bytes) -> tuple[int, int]:
        latencies_ns.append(time.monotonic_ns() - int(payload[6:6 + STAMP_DIGITS]))
        if len(latencies_ns) == 1 or len(latencies_ns) == messages:
            usage.append(resource.getrusage(resource.RUSAGE_SELF))
            if len(latencies_ns) == messages:
                done.set()
        return 0, 0

    async def run() -> None:
        node = create_broker(url, prefix, deliver)
        await node.start()
        while not node.connected:
            await asyncio.sleep(0.01)
        pipe.send("ready")
        try:
            await asyncio.wait_for(done.wait(), 300)
        except TimeoutError:
            raise SystemExit(f"only {len(latencies_ns)} of {messages} publications arrived") from None
        await node.close()

    uvloop.run(run())
    first, last = usage
    pipe.send((latencies_ns, last.ru_utime - first.ru_utime, last.ru_stime - first.ru_stime))


async def broker_bench(url: str, targets_n: int, messages: int, without_hiredis: bool) -> dict:
    from sonalyze.gateway.broker import create_broker
    from sonalyze.gateway.publication import Targets

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    mine, theirs = multiprocessing.get_context("spawn").Pipe()
    subscriber = multiprocessing.get_context("spawn").Process(target=broker_node, args=(url, prefix, messages + 1, without_hiredis, theirs))
    subscriber.start()
    assert await asyncio.to_thread(mine.recv) == "ready"
    node = create_broker(url, prefix, lambda targets, payload: (0, 0))
    await node.start()
    while not node.connected:
        await asyncio.sleep(0.01)
    targets = Targets(device_ids=[f"device-{i:06d}" for i in range(targets_n)])
    await node.publish(targets, b'{"t":"' + str(time.monotonic_ns()).zfill(STAMP_DIGITS).encode() + b'"}')  # the subscriber's CPU starts here
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    for _ in range(messages):
        await node.publish(targets, b'{"t":"' + str(time.monotonic_ns()).zfill(STAMP_DIGITS).encode() + b'"}')
    elapsed_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    latencies_ns, sub_user_s, sub_system_s = await asyncio.to_thread(mine.recv)
    subscriber.join(30)
    await node.close()
    latencies_ns = sorted(latencies_ns[1:])
    from redis.asyncio.connection import DefaultParser

    return {
        "targets": targets_n, "messages": messages, "hiredis": not without_hiredis,
        "broker_code": sys.modules[type(node).__module__].__doc__.splitlines()[0][:60],
        "redis_py_parser": DefaultParser.__name__,
        "publications_per_s": round(messages / elapsed_s),
        "subscriber_user_us_per_message": round(sub_user_s / messages * 1e6, 1),
        "subscriber_total_us_per_message": round((sub_user_s + sub_system_s) / messages * 1e6, 1),
        "publisher_user_us_per_message": round((after.ru_utime - before.ru_utime) / messages * 1e6, 1),
        "publisher_total_us_per_message": round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / messages * 1e6, 1),
        "latency_p50_ms": round(statistics.median(latencies_ns) / 1e6, 3),
        "latency_p99_ms": round(latencies_ns[int(0.99 * (len(latencies_ns) - 1))] / 1e6, 3),
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
    """``clients_n`` connections held by ``generators`` processes (each process is capped at ``ulimit -n``).

    ``clients_n`` 0: as many as the gateway's file limit leaves room for (its open descriptors after the
    warm-up, and one for the broadcast request, subtracted).
    """
    context = multiprocessing.get_context("spawn")
    warm = await open_clients(port, WARM_UP_CONNECTIONS, prefix="w")
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    fds_before = open_fds(pid)
    max_open_files = file_limit(pid)
    if clients_n == 0:
        clients_n = max_open_files - fds_before - 1
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
    fds_after = open_fds(pid)
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
        "clients": clients_n, "warm_up_connections": WARM_UP_CONNECTIONS, "generator_processes": generators,
        "gateway_max_open_files": max_open_files, "gateway_fds_before": fds_before, "gateway_fds_after": fds_after,
        "open_s": round(opened_s, 1),
        "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / clients_n / 1024, 2),
        "broadcast_to_all_ms": round(fanout_s * 1000, 1),
    }


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def file_limit(pid: int) -> int:
    """The soft ``RLIMIT_NOFILE`` of ``pid``: its descriptors are numbered below it."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files"))
    return int(line.split()[3])


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
        except (ValueError, PermissionError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


DEFAULT_SETUPS = "1:memory://,2:redis://127.0.0.1:6379/0,2:nats://127.0.0.1:4222"


def run_cluster(instances: int, broker_url: str, args: argparse.Namespace) -> dict:
    """Start ``instances`` gateways sharing ``broker_url``, run :func:`cluster`, stop them."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    ports = [free_port() for _ in range(instances)]
    servers = [start_gateway(port, broker_url, prefix) for port in ports]
    try:
        result = uvloop.run(cluster(ports, [s.pid for s in servers], args.clients, args.seconds, args.rate, args.window))
    finally:
        stop(servers)
    return {"benchmark": "cluster", "instances": instances, "broker": broker_url.split("://")[0], **result, "loadavg": loadavg()}


def compare(args: argparse.Namespace) -> None:
    """Every setup once per round, order rotated; one line per run, then the medians per setup."""
    setups = [(int(count), url) for count, _, url in (item.partition(":") for item in args.setups.split(","))]
    runs: dict[str, list[dict]] = {f"{count} x {url.split('://')[0]}": [] for count, url in setups}
    for round_index in range(args.rounds):
        shift = round_index % len(setups)
        for count, url in setups[shift:] + setups[:shift]:
            result = {"round": round_index + 1, **run_cluster(count, url, args)}
            runs[f"{count} x {url.split('://')[0]}"].append(result)
            print(orjson.dumps(result).decode(), flush=True)
    keys = ("latency_p50_ms", "latency_p99_ms", "first_delivery_p50_ms", "throughput_deliveries_per_s", "user_us_per_delivery", "total_us_per_delivery")
    medians = {setup: {key: statistics.median(run[key] for run in results) for key in keys} for setup, results in runs.items()}
    print(orjson.dumps({"benchmark": "compare", "rounds": args.rounds, "clients": args.clients, "medians": medians}).decode())


def stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.terminate()
        server.wait(30)


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("benchmark", choices=["cluster", "compare", "broker", "connections"])
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--setups", default=DEFAULT_SETUPS, help="compare: instances:broker_url, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="compare: runs of each setup")
    parser.add_argument("--clients", type=int, default=1000, help="connections: 0 = as many as the file limit allows")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="cluster latency phase: broadcasts per second")
    parser.add_argument("--window", type=int, default=4, help="cluster throughput phase: broadcasts in flight")
    parser.add_argument("--generators", type=int, default=2, help="connections: load-generator processes")
    parser.add_argument("--targets", type=int, default=1, help="broker: device ids per publication")
    parser.add_argument("--messages", type=int, default=20_000, help="broker: publications")
    parser.add_argument("--without-hiredis", action="store_true", help="broker: hide hiredis from redis-py")
    parser.add_argument("--label", default="", help="written into the result line (e.g. which code ran)")
    args = parser.parse_args()
    if args.without_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    raise_file_limit(args.clients + 1000 if args.clients else AS_MANY_AS_ALLOWED)  # the gateway inherits it
    os.sched_setaffinity(0, {1})
    if args.benchmark == "compare":
        compare(args)
    elif args.benchmark == "broker":
        result = uvloop.run(broker_bench(args.broker, args.targets, args.messages, args.without_hiredis))
        print(orjson.dumps({"label": args.label, "benchmark": "broker", "broker": args.broker.split("://")[0], **result, "loadavg": loadavg()}).decode())
    elif args.benchmark == "cluster":
        print(orjson.dumps({"label": args.label, **run_cluster(args.instances, args.broker, args)}).decode())
    else:
        port = free_port()
        server = start_gateway(port, "memory://", f"bench-{uuid.uuid4().hex[:8]}:")
        try:
            result = uvloop.run(connections(port, server.pid, args.clients, args.generators))
        finally:
            stop([server])
        print(orjson.dumps({"label": args.label, "benchmark": "connections", "instances": 1, "broker": "memory", **result, "loadavg": loadavg()}).decode())


if __name__ == "__main__":
    main()
