"""The Redis broker on redis-py: delivery on every node in order, AUTH, a hung server, subscriptions dropped and resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import orjson
import pytest
import redis.asyncio as redis

from sonalyze.gateway.publication import Targets
from sonalyze.gateway.broker_redis import REPLY_TIMEOUT_S, RedisBroker
from tests.support import infra
from tests.support.servers import free_port

pytestmark = pytest.mark.redis


class Recorder:
    """A node's local delivery: remembers what reached it."""

    def __init__(self) -> None:
        self.received: list[tuple[Targets, bytes]] = []

    def __call__(self, targets: Targets, payload: bytes) -> tuple[int, int]:
        self.received.append((targets, payload))
        return 1, 1


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_publication_reaches_every_node_once_in_order() -> None:
    url = infra.require(infra.REDIS_URL, 6379, "Redis")
    channel = f"test-{uuid.uuid4().hex[:12]}:broadcast"
    first, second = Recorder(), Recorder()
    brokers = [RedisBroker(url, channel, first), RedisBroker(url, channel, second)]
    for broker in brokers:
        await broker.start()
    try:
        await until(lambda: all(broker.connected for broker in brokers))
        payloads = [b'{"n":%d}' % n for n in range(200)]
        answers = await asyncio.gather(*(brokers[0].publish(Targets(device_ids=["a", "b"]), p) for p in payloads))
        assert set(answers) == {(None, None)}  # delivered by the nodes, after the answer
        await until(lambda: len(first.received) == len(second.received) == len(payloads))
        for recorder in (first, second):
            assert [payload for _, payload in recorder.received] == payloads  # pipelined, still in order
            assert recorder.received[0][0] == Targets(device_ids=["a", "b"])
    finally:
        for broker in brokers:
            await broker.close()


@pytest.fixture
def own_redis():
    """A redis-server of our own with a password, on a free port."""
    program = infra.require_binary("redis-server")
    port, password = free_port(), "s3cret pass"
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", password],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not infra.reachable(f"redis://127.0.0.1:{port}", port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield process, port, password
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    process.wait(10)


async def test_a_password_in_the_url_authenticates_and_a_wrong_one_stays_local(own_redis) -> None:
    _, port, password = own_redis
    good, wrong = Recorder(), Recorder()
    authenticated = RedisBroker(f"redis://:{password.replace(' ', '%20')}@127.0.0.1:{port}/0", "auth:broadcast", good)
    refused = RedisBroker(f"redis://:nope@127.0.0.1:{port}/0", "auth:broadcast", wrong)
    for broker in (authenticated, refused):
        await broker.start()
    try:
        await until(lambda: authenticated.connected)
        assert await authenticated.publish(Targets(everyone=True), b"{}") == (None, None)
        await until(lambda: len(good.received) == 1)
        assert not refused.connected
        assert await refused.publish(Targets(everyone=True), b"{}") == (1, 1)  # delivered locally at once
        assert len(wrong.received) == 1
    finally:
        for broker in (authenticated, refused):
            await broker.close()


async def test_a_hung_server_times_out_the_publish_and_delivery_goes_local(own_redis) -> None:
    process, port, password = own_redis
    local = Recorder()
    broker = RedisBroker(f"redis://:{password.replace(' ', '%20')}@127.0.0.1:{port}", "hung:broadcast", local)
    await broker.start()
    try:
        await until(lambda: broker.connected)
        os.kill(process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing, closes nothing
        started = time.monotonic()
        assert await broker.publish(Targets(device_ids=["a"]), b"{}") == (1, 1)
        assert REPLY_TIMEOUT_S - 0.1 < time.monotonic() - started < REPLY_TIMEOUT_S + 1.0
        assert not broker.connected and len(local.received) == 1
        os.kill(process.pid, signal.SIGCONT)
        await until(lambda: broker.connected, 10.0)  # reconnected by itself
    finally:
        await broker.close()



async def test_publications_issued_behind_a_hung_one_go_local_with_it_in_order(own_redis) -> None:
    """50 publications at once to a frozen server: each is delivered here within about one reply timeout, in
    order (those issued behind the first fail with it, not each after a timeout of its own)."""
    process, port, password = own_redis
    local = Recorder()
    broker = RedisBroker(f"redis://:{password.replace(' ', '%20')}@127.0.0.1:{port}", "hung-many:broadcast", local)
    await broker.start()
    try:
        await until(lambda: broker.connected)
        os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        payloads = [b'{"n":%d}' % n for n in range(50)]
        answers = await asyncio.gather(*(broker.publish(Targets(device_ids=["a"]), payload) for payload in payloads))
        assert time.monotonic() - started < REPLY_TIMEOUT_S + 1.0
        assert set(answers) == {(1, 1)}
        assert [payload for _, payload in local.received] == payloads
    finally:
        await broker.close()

async def test_nodes_resubscribing_while_a_node_publishes_deliver_every_publication_once_in_order(own_redis) -> None:
    """Both nodes' subscriptions are dropped mid-burst, eight times: the publisher queues and flushes while the
    other node subscribes again. A publication that comes with the SUBSCRIBE reply is held until the node has
    caught up from the stream (delivered first, it moved the node's offset past earlier ones, lost for good)."""
    _, port, password = own_redis
    url = f"redis://:{password.replace(' ', '%20')}@127.0.0.1:{port}/0"
    publisher_got, other_got = Recorder(), Recorder()
    publisher, other = (RedisBroker(url, "burst:broadcast", recorder, 100_000) for recorder in (publisher_got, other_got))
    admin = redis.Redis.from_url(url)
    for broker in (publisher, other):
        await broker.start()
    try:
        await until(lambda: publisher.connected and other.connected)
        sent = 0

        async def batch() -> None:
            nonlocal sent
            await asyncio.gather(*(publisher.publish(Targets(everyone=True), b'{"n":%d}' % n) for n in range(sent, sent + 20)))
            sent += 20
            await asyncio.sleep(0.01)  # a steady rate the flush of the outage queue outruns

        for _ in range(8):
            for _ in range(5):
                await batch()
            # both nodes lose their subscription (and reconnect by themselves) while a batch is on its way
            await asyncio.gather(batch(), admin.client_kill_filter(_type="pubsub"))
            deadline = time.monotonic() + 20
            while not (publisher.connected and other.connected and not publisher.queue):  # publishing all along
                assert time.monotonic() < deadline, "the nodes did not reconnect"
                await batch()
        await until(lambda: len(other_got.received) >= sent and len(publisher_got.received) >= sent, 30.0)
        for recorder in (publisher_got, other_got):  # the publishing node too: what it sent before losing its
            # subscription and had not seen back yet is delivered there before anything it publishes after
            assert [orjson.loads(payload)["n"] for _, payload in recorder.received] == list(range(sent))  # each once, in order
    finally:
        await admin.aclose()
        for broker in (publisher, other):
            await broker.close()


class CoalescingProxy:
    """A TCP proxy in front of Redis that hands its clients what Redis sends in chunks gathered over
    ``window_s`` (a slow link or a busy reader: a reply and the messages right after it come in one read);
    ``drop()`` cuts every connection through it (the clients see the bus lost and reconnect)."""

    def __init__(self, target_port: int, window_s: float = 0.05) -> None:
        self.target_port = target_port
        self.window_s = window_s
        self.transports: list[asyncio.Transport] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.get_running_loop().create_server(lambda: _ProxyClient(self), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def drop(self) -> None:
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    def close(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()


class _ProxyClient(asyncio.Protocol):
    def __init__(self, proxy: CoalescingProxy) -> None:
        self.proxy = proxy
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.proxy.transports.append(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_connection(lambda: _ProxyUpstream(self.transport, self.proxy.window_s), "127.0.0.1", self.proxy.target_port)
        self.proxy.transports.append(self.upstream)
        self.upstream.writelines(self.early)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.abort()


class _ProxyUpstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport, window_s: float) -> None:
        self.client = client
        self.window_s = window_s
        self.gathered: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.gathered.append(data)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.window_s, self._pass_on)

    def _pass_on(self) -> None:
        self.timer = None
        if not self.client.is_closing():
            self.client.write(b"".join(self.gathered))
        self.gathered.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.abort()


async def test_a_publication_read_with_the_subscribe_reply_waits_for_the_catch_up(own_redis) -> None:
    """One node reaches Redis through a proxy that gathers what Redis sends (the SUBSCRIBE reply and the
    publications right after it arrive in one read); its connections are cut five times while the other
    node publishes all along. Each time it must deliver what was published while it was away (from the
    stream) before the publications that came with its SUBSCRIBE reply, each once."""
    _, port, password = own_redis
    proxy = CoalescingProxy(port)
    proxy_port = await proxy.start()
    credentials = password.replace(" ", "%20")
    publisher_got, other_got = Recorder(), Recorder()
    publisher = RedisBroker(f"redis://:{credentials}@127.0.0.1:{port}/0", "gathered:broadcast", publisher_got, 100_000)
    other = RedisBroker(f"redis://:{credentials}@127.0.0.1:{proxy_port}/0", "gathered:broadcast", other_got, 100_000)
    for broker in (publisher, other):
        await broker.start()
    sent = 0
    publishing = True

    async def publish_all_along() -> None:
        nonlocal sent
        while publishing:
            await publisher.publish(Targets(everyone=True), b'{"n":%d}' % sent)
            sent += 1
            await asyncio.sleep(0.002)

    try:
        await until(lambda: publisher.connected and other.connected)
        task = asyncio.create_task(publish_all_along())
        for _ in range(5):
            await asyncio.sleep(0.2)
            proxy.drop()
            await until(lambda: not other.connected)
            await until(lambda: other.connected, 10.0)
        await asyncio.sleep(0.2)
        publishing = False
        await task
        await until(lambda: len(other_got.received) >= sent, 10.0)
        assert [orjson.loads(payload)["n"] for _, payload in other_got.received] == list(range(sent))  # each once, in order
    finally:
        publishing = False
        proxy.close()
        for broker in (publisher, other):
            await broker.close()
