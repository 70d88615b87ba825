"""The one pooled HTTP/1.1 client between the services: the gateway's routed events and streamed proxy,
the lobby's pushes to the gateway.

A small client over asyncio protocols and httptools' response parser (the parser uvicorn uses), with
keep-alive connections pooled per origin (at most ``max_connections_per_origin``; callers beyond wait).
It exists because the libraries cost more than the gateway's whole budget for a routed event (80 µs of
CPU): measured side by side per call, this client ~20 µs, aiohttp ~150 µs, httpx over 1 ms
(``bench/gateway_http_clients.py``, results in bench/gateway.md "One HTTP client"). A ``/gateway/handle`` call on an idle pooled connection runs on protocol
callbacks alone (:meth:`UpstreamClient.call`), without a task.
Bodies stream both ways with flow control: an upload is written as it arrives, a download is read
only as fast as it is consumed.

Lower-layer failures become the gateway's errors once, here: refused/unreachable ->
:class:`UpstreamUnavailable` (``upstream_unavailable``), no answer within ``timeout_s`` ->
:class:`UpstreamTimeout` (``upstream_timeout``); an answer that breaks the ``/gateway/handle`` contract
is ``upstream_error`` (:func:`contract_answer`).

An upstream's base URL may name several replicas, comma-separated (``http://a:8001,http://b:8001``):
each exchange goes to the next in turn, and one whose connection is refused goes to the next replica —
nothing was sent, so that is always safe — the same balancing and passive health check as the services'
own clients (:class:`sonalyze.common.replicas.Replicas`), and its active one: each replica's ``ready_path``
(``/readyz``, at its origin) probed in the background until :meth:`UpstreamClient.aclose`. A single URL
takes none of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from sonalyze.common.errors import UpstreamTimeout, UpstreamUnavailable, error_body
from sonalyze.common.replicas import Replicas

logger = logging.getLogger("sonalyze.common.http_client")

_READ_HIGH_WATER = 256 * 1024
_CHUNK_END = b"0\r\n\r\n"


class _Lost(Exception):
    """The connection closed before a complete answer."""


class _Stray(Exception):
    """Bytes of a message nobody asked for (after the answer, or on an idle connection)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time (its ``listener``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.listener: _Exchange | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.expecting = False
        """A request was sent and its final answer has not ended: only then may a message begin."""
        self.poisoned = False
        """The upstream sent more than the answer (a lying Content-Length, an unasked message): never reused."""
        self.interim = False
        """Parsing a 1xx interim response (RFC 9110 §15.2): skipped, never taken as the answer."""
        self.notify = False
        """The answer ended inside ``feed_data``: its listener is told once the parser has returned."""
        self.active_s = loop.time()
        """When a byte last went either way: a streamed exchange times out on inactivity, not duration."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.head = False
        self.request_sent = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.active_s = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.transport.close()  # type: ignore[union-attr]
            if not self.poisoned:  # after stray bytes the answer itself may be whole
                self._fail(_Lost(f"malformed HTTP answer: {exc}"))
        if self.notify:
            # Told only now, after the parser returned: a listener releases the connection to the pool,
            # which may send the next request at once; bytes still in this feed must not answer it.
            self.notify = False
            if self.listener is not None:
                self.listener.complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.can_write.set()
        if not self.complete:
            self._fail(_Lost("connection closed by the upstream"))
        self.pool.lost(self)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if not self.expecting:
            self.poisoned = True
            raise _Stray("the upstream sent a message nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints, ...: the answer is still to come
            self.interim = True
            self.headers = []
            return
        self.status = status
        if self.listener is not None:
            self.listener.headers()
        if self.head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER:
            self.transport.pause_reading()  # type: ignore[union-attr]
        if self.listener is not None:
            self.listener.wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.expecting = False
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets it once reset for the next answer
        if self.listener is not None:
            self.notify = True

    # exchange

    def _fail(self, exc: Exception) -> None:
        if self.listener is not None:
            self.listener.lost(exc)

    def usable(self) -> bool:
        return not self.closed and not self.poisoned and not self.transport.is_closing()  # type: ignore[union-attr]

    def start(self, head: bytes, is_head_request: bool, has_body: bool) -> None:
        """Send a request head (with a small body, or the body follows: ``has_body``)."""
        if not self.usable():
            raise _Lost("connection closed before the request was sent")
        self._reset()
        self.head = is_head_request
        self.request_sent = not has_body
        self.expecting = True
        self.active_s = self.loop.time()
        self.transport.write(head)  # type: ignore[union-attr]

    def take_chunk(self) -> bytes | None:
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.buffered <= _READ_HIGH_WATER // 2 and not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]
        return chunk

    def reusable(self) -> bool:
        return (
            self.complete and self.keep_alive and self.request_sent and not self.closed and not self.head and not self.poisoned
        )


Waiter = Callable[["_Connection | None"], bool]
"""Takes a freed connection (None: room to open a new one); False when it no longer waits (skipped)."""


class _Pool:
    """Keep-alive connections to one origin: at most ``max_connections`` open; exchanges beyond that wait.

    Waiting is first come, first served and O(1): a waiter that gave up stays in the queue and is
    skipped when its turn comes, so a backlog (a burst beyond ``max_connections``) drains at the cost of
    ordinary calls.
    """

    def __init__(self, host: str, port: int, host_header: bytes, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header
        self.max_connections = max_connections
        self.open = 0
        self.idle: list[_Connection] = []
        self.waiters: deque[Waiter] = deque()

    def take_idle(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable():
                return connection
        return None

    def release(self, connection: _Connection) -> None:
        """Back to the pool after an exchange (closed instead when it cannot carry another)."""
        if not connection.reusable():
            self.discard(connection)
        else:
            self.offer(connection)

    def offer(self, connection: _Connection) -> None:
        """A connection free for the next exchange: the first waiter's, else idle."""
        if not self.wake(connection):
            self.idle.append(connection)

    def discard(self, connection: _Connection) -> None:
        if not connection.closed:
            connection.transport.close()  # type: ignore[union-attr]  # lost() follows

    def lost(self, connection: _Connection) -> None:
        self.open -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        self.wake(None)  # a waiter may open a new connection now

    def close(self) -> None:
        for connection in self.idle:
            connection.transport.close()  # type: ignore[union-attr]
        self.idle.clear()

    def wake(self, connection: _Connection | None) -> bool:
        waiters = self.waiters
        while waiters:
            if waiters.popleft()(connection):
                return True
        return False


class StreamedResponse:
    """An upstream answer whose body is read as it arrives (``aiter_body``); always ``aclose()`` it."""

    def __init__(self, exchange: _Exchange, connection: _Connection) -> None:
        self.status_code = connection.status
        self.headers = connection.headers
        self._exchange = exchange
        self._connection = connection

    async def aiter_body(self) -> AsyncIterator[bytes]:
        connection, exchange = self._connection, self._exchange
        while True:
            chunk = connection.take_chunk()
            if chunk is not None:
                yield chunk
                continue
            if connection.complete:
                return
            if exchange.failure is not None:
                raise exchange.failure
            await exchange.next_bytes()

    async def aclose(self) -> None:
        self._exchange.close()


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 to the upstreams (``http://`` only: they are internal services)."""

    def __init__(
        self, timeout_s: float, max_connections_per_origin: int = 256, internal_token: str = "", ready_path: str | None = "/readyz"
    ) -> None:
        """``ready_path``: the upstreams' readiness endpoint, probed on each replica of a several-URL upstream
        (:class:`Replicas`; None: passive failover only)."""
        self.timeout_s = timeout_s
        self.ready_path = ready_path
        self._token_line = b"x-internal-token: %s\r\n" % internal_token.encode("latin-1") if internal_token else b""
        """``X-Internal-Token`` on every request (contract C1): the upstreams take calls from the gateway only."""
        self.max_connections_per_origin = max_connections_per_origin
        self._pools: dict[str, _Pool] = {}
        self._post_heads: dict[str, tuple[_Pool, bytes]] = {}
        self._replicas: dict[str, Replicas] = {}
        self.deadlines = _Deadlines(timeout_s)

    def call(self, base_url: str, body: dict[str, Any], done: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
        """Start ``POST {base_url}/gateway/handle``; ``done`` later gets ``{"data": ...}`` or ``{"error": {...}}``.

        Runs on callbacks alone, no task, on an idle pooled connection (the usual case) or, with every
        connection busy, on the next one freed; only opening a new connection takes a task. Returns a
        function that cancels the call (``done`` is then never called).
        """
        payload = orjson.dumps(body)
        if "," in base_url:
            pool, head, failover = self._target(base_url, lambda url: self._post_head(url + "/gateway/handle", payload))
        else:  # one URL (the hot path): no closure to build
            pool, head = self._post_head(base_url + "/gateway/handle", payload)
            failover = None
        exchange = _Exchange(self, pool, head, partial(_handle_answer, base_url, self.timeout_s, done), failover=failover)
        exchange.submit()
        return exchange.cancel

    def _target(self, base_url: str, target: Callable[[str], tuple[_Pool, bytes]]) -> tuple[_Pool, bytes, _Failover | None]:
        """Pool and request head for one exchange to ``base_url`` (``target`` builds them for one URL), and
        with several replicas the others to try when the connection is refused."""
        if "," not in base_url:
            return (*target(base_url), None)
        replicas = self._replicas.get(base_url)
        if replicas is None:
            replicas = self._replicas[base_url] = Replicas(base_url, ready_path=self.ready_path)
        failover = _Failover(replicas, replicas.order(), target)
        return (*target(failover.url), failover)

    def _post_head(self, url: str, payload: bytes) -> tuple[_Pool, bytes]:
        target = self._post_heads.get(url)
        if target is None:
            pool, path = self._split(url)
            prefix = b"POST " + path + b" HTTP/1.1\r\nhost: " + pool.host_header
            target = self._post_heads[url] = (
                pool, prefix + b"\r\n" + self._token_line + b"content-type: application/json\r\ncontent-length: "
            )
        pool, prefix = target
        return pool, b"%s%d\r\n\r\n%s" % (prefix, len(payload), payload)

    async def post_json(self, url: str, payload: bytes) -> tuple[int, bytes]:
        """POST a JSON body and read the whole (small) answer: (status, body). The same exchange as
        :meth:`call`, awaited. ``url`` may name several replicas, comma-separated whole URLs
        (``http://a:8000/internal/broadcast,http://b:8000/internal/broadcast``)."""
        pool, head, failover = self._target(url, lambda one: self._post_head(one, payload))
        return await self._await(_Exchange(self, pool, head, failover=failover))  # type: ignore[return-value]

    async def open_stream(
        self, method: str, base_url: str, path: str, headers: list[tuple[bytes, bytes]], content: AsyncIterable[bytes] | None
    ) -> StreamedResponse:
        """Send a request for ``base_url + path`` whose body streams from ``content``; the answer's body is
        left to stream.

        ``headers`` come without hop-by-hop ones and without ``host``; with a body and no
        ``content-length`` the body is sent chunked.
        """
        has_length = False
        fields: list[bytes] = []
        for name, value in headers:
            has_length = has_length or name.lower() == b"content-length"
            fields += [name, b": ", value, b"\r\n"]
        chunked = content is not None and not has_length
        if chunked:
            fields.append(b"transfer-encoding: chunked\r\n")
        fields.append(b"\r\n")

        def target(url: str) -> tuple[_Pool, bytes]:
            pool, target_path = self._split(url + path)
            lines = [method.encode(), b" ", target_path, b" HTTP/1.1\r\nhost: ", pool.host_header, b"\r\n", self._token_line]
            return pool, b"".join(lines + fields)

        pool, head, failover = self._target(base_url, target)
        exchange = _Exchange(
            self, pool, head, stream=True, content=content, chunked=chunked, is_head=method == "HEAD", failover=failover
        )
        return StreamedResponse(exchange, await self._await(exchange))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        self.deadlines.close()
        for pool in self._pools.values():
            pool.close()
        await asyncio.gather(*(replicas.aclose() for replicas in self._replicas.values()))

    # internals

    async def _await(self, exchange: _Exchange) -> tuple[int, bytes] | _Connection:
        """Run ``exchange`` and wait for its outcome; cancelling the wait cancels the exchange."""
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        exchange.done = partial(_settle, outcome)
        exchange.submit()
        try:
            result = await outcome
        except BaseException:
            exchange.cancel()
            raise
        if isinstance(result, BaseException):
            raise result
        return result

    def _split(self, url: str) -> tuple[_Pool, bytes]:
        parts = urlsplit(url)
        pool = self._pools.get(parts.netloc)
        if pool is None:
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamUnavailable(f"cannot reach {url!r}: upstreams are plain http:// URLs")
            pool = self._pools[parts.netloc] = _Pool(parts.hostname, parts.port or 80, parts.netloc.encode(), self.max_connections_per_origin)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return pool, path.encode("latin-1")

    @staticmethod
    async def _write_body(connection: _Connection, content: AsyncIterable[bytes], chunked: bool) -> None:
        """Upload ``content`` as it comes; a peer that stops reading stalls it (its exchange then times
        out on inactivity and drops the connection, which ends this)."""
        transport = connection.transport
        assert transport is not None
        async for chunk in content:
            if connection.closed or connection.complete:
                return  # the upstream answered (or hung up) before reading everything
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            connection.active_s = connection.loop.time()
            await connection.can_write.wait()
        if chunked and not connection.closed:
            transport.write(_CHUNK_END)
        connection.request_sent = True


Outcome = tuple[int, bytes] | _Connection | BaseException
"""What an exchange hands to ``done``: a whole answer (status, body), a streamed answer's connection
(its headers arrived), or the failure (:class:`UpstreamTimeout`, :class:`UpstreamUnavailable`, or what
reading the upload raised)."""


def _ignore(outcome: Any) -> None:
    return None


class _Failover:
    """One exchange's replicas of an upstream: the one tried now (``url``) and the others, in order."""

    __slots__ = ("replicas", "url", "rest", "target")

    def __init__(self, replicas: Replicas, urls: list[str], target: Callable[[str], tuple[_Pool, bytes]]) -> None:
        self.replicas = replicas
        self.url = urls[0]
        self.rest = urls[1:]
        self.target = target

    def refused(self) -> tuple[_Pool, bytes] | None:
        """``url`` refused the connection: pool and head for the next replica (None: none is left)."""
        self.replicas.failed(self.url)
        if not self.rest:
            return None
        self.url = self.rest.pop(0)
        return self.target(self.url)


def _connect_ended(connection: _Connection, task: asyncio.Task[None]) -> None:
    """A connect that failed or was cancelled — even before it began — gives its pool slot back."""
    if not task.cancelled() and task.exception() is None:
        return
    if connection.transport is not None:
        connection.transport.close()  # connected after all: its connection_lost frees the slot
    else:
        connection.pool.open -= 1
        connection.pool.wake(None)


class _Exchange:
    """One request and its answer: the one engine behind :meth:`UpstreamClient.call`, ``post_json`` and
    ``open_stream``, driven by the pool's and its connection's callbacks.

    Getting a connection: an idle pooled one, else a new one when the pool has room (the only task: the
    connect), else a place in the pool's queue. Timeout: one per exchange, kept by the client's
    :class:`_Deadlines`, counted from :meth:`submit` (queueing and connecting included); a streamed
    exchange's counts from the last byte that went either way. Retry: a request held whole in its head
    (no streamed body) whose reused connection closed before any byte came back is sent once more —
    the upstream had closed the idle connection.
    """

    __slots__ = (
        "client", "pool", "head", "content", "chunked", "is_head", "done", "connection", "waiting",
        "connecting", "writer", "retried", "reused", "stream", "failure", "waker", "failover",
    )

    def __init__(
        self,
        client: UpstreamClient,
        pool: _Pool,
        head: bytes,
        done: Callable[[Outcome], None] = _ignore,
        *,
        stream: bool = False,
        content: AsyncIterable[bytes] | None = None,
        chunked: bool = False,
        is_head: bool = False,
        failover: _Failover | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.head = head
        self.content = content
        self.chunked = chunked
        self.is_head = is_head
        self.done = done
        self.stream = stream
        """``open_stream``: ``done`` gets the connection once the headers are in; the body is read later."""
        self.connection: _Connection | None = None
        self.waiting = False
        """In the pool's queue for a connection."""
        self.connecting: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        self.retried = False
        self.reused = False
        self.failure: BaseException | None = None
        """A streamed answer's failure after its headers (read by :meth:`StreamedResponse.aiter_body`)."""
        self.waker: asyncio.Future[None] | None = None
        self.failover = failover
        """Several replicas: where to go when a connection is refused (None: one URL)."""

    def submit(self) -> None:
        loop = asyncio.get_running_loop()
        self.client.deadlines.add(self, loop)
        self._acquire(loop)

    def _acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        pool = self.pool
        connection = pool.take_idle()
        if connection is not None and self._start(connection, True):
            return
        if pool.open < pool.max_connections:
            pool.open += 1
            connection = _Connection(loop, pool)
            self.connecting = loop.create_task(self._connect(connection))
            self.connecting.add_done_callback(partial(_connect_ended, connection))
        else:
            self.waiting = True
            pool.waiters.append(self.take)

    def take(self, connection: _Connection | None) -> bool:
        """The pool's turn for this exchange (a :data:`Waiter`): a freed connection, or room for a new one."""
        if not self.waiting:
            return False  # timed out or cancelled while waiting
        self.waiting = False
        if connection is None or not self._start(connection, True):
            self._acquire(asyncio.get_running_loop())
        return True

    async def _connect(self, connection: _Connection) -> None:
        """Open ``connection`` (its pool slot is taken; :func:`_connect_ended` frees it on failure)."""
        pool = self.pool
        try:
            await connection.loop.create_connection(lambda: connection, pool.host, pool.port)
        except OSError as exc:
            following = self.failover.refused() if self.failover is not None and self.done is not _ignore else None
            if following is None:
                self._end(UpstreamUnavailable(f"cannot connect to {pool.host}:{pool.port}: {exc.strerror or exc}"))
            else:  # nothing was sent: the next replica takes the request (this task frees its slot on raising)
                self.connecting = None
                self.pool, self.head = following
                self._acquire(connection.loop)
            raise
        self.connecting = None
        if self.failover is not None:
            self.failover.replicas.answered(self.failover.url)
        if self.done is _ignore:
            pool.offer(connection)  # given up meanwhile
        elif not self._start(connection, False):
            self._end(UpstreamUnavailable(f"{pool.host}:{pool.port} closed a new connection at once"))

    def _start(self, connection: _Connection, reused: bool) -> bool:
        """Send the request; False when the connection turned out closed (nothing was sent)."""
        try:
            connection.start(self.head, self.is_head, self.content is not None)
        except _Lost:
            self.pool.discard(connection)
            return False
        connection.listener = self
        self.connection = connection
        self.reused = reused
        if self.content is not None:
            self.writer = connection.loop.create_task(UpstreamClient._write_body(connection, self.content, self.chunked))
            self.writer.add_done_callback(self._written)
        return True

    def _written(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled() and writer.exception() is not None and self.done is not _ignore and self.stream:
            self.pool.discard(self._detach())
            self._end(writer.exception())  # type: ignore[arg-type]

    # the connection's callbacks

    def headers(self) -> None:
        if self.stream:
            self._settle(self.connection)  # type: ignore[arg-type]  # stays registered: the body may time out

    def wake(self) -> None:
        if self.waker is not None and not self.waker.done():
            self.waker.set_result(None)

    def complete(self) -> None:
        if self.stream:
            self.client.deadlines.discard(self)
            self.wake()
            return
        connection = self._detach()
        status, body = connection.status, b"".join(connection.chunks)
        connection.chunks.clear()
        self.pool.release(connection)  # may start the next waiting exchange on it at once
        self._end((status, body))

    def lost(self, exc: Exception) -> None:
        connection = self.connection
        assert connection is not None
        connection.listener = self.connection = None
        self.pool.discard(connection)
        if self.reused and not self.retried and not connection.received_any and self.content is None:
            self.retried = True  # still registered: the retry keeps the first attempt's deadline
            self._acquire(connection.loop)
            return
        self._fail(UpstreamUnavailable(str(exc)))

    # the caller's and the deadline's

    async def next_bytes(self) -> None:
        """Wait until a streamed answer's body grows, ends or fails."""
        self.waker = asyncio.get_running_loop().create_future()
        await self.waker

    def cancel(self) -> None:
        """Forget the answer; a call in flight still completes, so its connection goes back to the pool
        (a streamed one is dropped)."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.client.deadlines.discard(self)
        if self.waiting:
            self.waiting = False
            self.client.deadlines.discard(self)
        if self.stream and self.connection is not None:
            self.close()
        self.done = _ignore

    def close(self) -> None:
        """A streamed exchange is over: its connection goes back to the pool (or is dropped)."""
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        if self.connection is not None:
            self.pool.release(self._detach())

    def expired(self) -> None:
        """No answer within the timeout (called by :class:`_Deadlines`)."""
        self.client.deadlines.discard(self)
        if self.waiting:
            self.waiting = False
        elif self.connecting is not None:
            self.connecting.cancel()
        elif self.connection is not None:
            connection = self.connection
            connection.listener = self.connection = None
            self.pool.discard(connection)
        self._fail(UpstreamTimeout(f"upstream sent nothing for {self.client.timeout_s:g} s"))

    # internals

    def _fail(self, exc: BaseException) -> None:
        if self.done is _ignore and self.stream:
            self.failure = exc  # after the headers: the body reader raises it
            self.wake()
        self._end(exc)

    def _settle(self, outcome: Outcome) -> None:
        done, self.done = self.done, _ignore
        try:
            done(outcome)
        except Exception:
            logger.exception("handling an upstream answer failed")

    def _end(self, outcome: Outcome) -> None:
        self.client.deadlines.discard(self)
        self._settle(outcome)

    def _detach(self) -> _Connection:
        connection = self.connection
        assert connection is not None
        connection.listener = self.connection = None
        self.client.deadlines.discard(self)
        return connection

    def due_s(self, started_s: float, timeout_s: float) -> float:
        connection = self.connection
        if self.stream and connection is not None:
            return max(started_s, connection.active_s) + timeout_s
        return started_s + timeout_s


def _settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _handle_answer(base_url: str, timeout_s: float, done: Callable[[dict[str, Any]], None], outcome: Outcome) -> None:
    """A ``/gateway/handle`` outcome as the gateway's answer."""
    if isinstance(outcome, UpstreamTimeout):
        done(timeout_error(base_url, timeout_s))
    elif isinstance(outcome, UpstreamUnavailable):
        done(unavailable_error(base_url, outcome.message))
    else:
        status, body = outcome  # type: ignore[misc]
        done(contract_answer(base_url, status, body))


class _Deadlines:
    """The one timeout mechanism: one timer for every exchange in flight instead of a timer per exchange.

    The exchanges are kept in start order (a dict); the timer is set for the earliest deadline. When it
    fires it expires what is due and is set again for the next deadline, so under steady load it fires
    about once per timeout, not once per exchange.
    """

    __slots__ = ("timeout_s", "_started_s", "_timer", "_loop")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._started_s: dict[_Exchange, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, exchange: _Exchange, loop: asyncio.AbstractEventLoop) -> None:
        self._started_s[exchange] = now_s = loop.time()
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_at(now_s + self.timeout_s, self._expire_due)

    def discard(self, exchange: _Exchange) -> None:
        self._started_s.pop(exchange, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire_due(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        now_s, timeout_s = loop.time(), self.timeout_s
        expired = [exchange for exchange, started_s in self._started_s.items() if exchange.due_s(started_s, timeout_s) <= now_s]
        for exchange in expired:
            exchange.expired()  # discards itself; its caller may start another exchange (add) meanwhile
        if self._started_s:
            if self._timer is not None:
                self._timer.cancel()
            next_s = min(exchange.due_s(started_s, timeout_s) for exchange, started_s in self._started_s.items())
            self._timer = loop.call_at(next_s, self._expire_due)


def timeout_error(base_url: str, timeout_s: float) -> dict[str, Any]:
    return error_body("upstream_timeout", f"{base_url} did not answer within {timeout_s:g} s")


def unavailable_error(base_url: str, reason: str) -> dict[str, Any]:
    return error_body("upstream_unavailable", f"{base_url} is unreachable: {reason}")


def contract_answer(base_url: str, status_code: int, content: bytes) -> dict[str, Any]:
    """Check an upstream's answer against the ``/gateway/handle`` contract (pure)."""
    if status_code != 200:
        return error_body("upstream_error", f"{base_url} answered HTTP {status_code}", {"status": status_code})
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return error_body("upstream_error", f"{base_url} answered something that is not JSON")
    if isinstance(answer, dict):
        if "data" in answer and "error" not in answer:
            return {"data": answer["data"]}
        upstream_error = answer.get("error")
        if (
            isinstance(upstream_error, dict)
            and isinstance(upstream_error.get("code"), str)
            and isinstance(upstream_error.get("message"), str)
        ):
            return {"error": upstream_error}
    return error_body("upstream_error", f"{base_url} answered neither {{\"data\"}} nor {{\"error\": {{code, message}}}}")
