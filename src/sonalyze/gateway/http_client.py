"""The gateway's one pooled HTTP/1.1 client to its upstreams: routed events and the streamed proxy.

A small client over asyncio protocols and httptools' response parser (the parser uvicorn uses), with
keep-alive connections pooled per origin (at most ``max_connections_per_origin``; callers beyond wait).
It exists because httpx costs over 1 ms of CPU per request here against ~20 µs for this client
(``bench/gateway_http_clients.py``, results in bench/gateway.md): more than ten times the gateway's whole
budget for a routed event. A ``/gateway/handle`` call on an idle pooled connection runs on protocol
callbacks alone (:meth:`UpstreamClient.call`), without a task.
Bodies stream both ways with flow control: an upload is written as it arrives, a download is read
only as fast as it is consumed.

Lower-layer failures become the gateway's errors once, here: refused/unreachable ->
:class:`UpstreamUnavailable` (``upstream_unavailable``), no answer within ``timeout_s`` ->
:class:`UpstreamTimeout` (``upstream_timeout``); an answer that breaks the ``/gateway/handle`` contract
is ``upstream_error`` (:func:`contract_answer`).
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

from sonalyze.common.errors import UpstreamTimeout, UpstreamUnavailable
from sonalyze.gateway.models import error

logger = logging.getLogger("sonalyze.gateway.http_client")

_READ_HIGH_WATER = 256 * 1024
_CHUNK_END = b"0\r\n\r\n"


class _Lost(Exception):
    """The connection closed before a complete answer."""


class _Stray(Exception):
    """Bytes of a message nobody asked for (after the answer, or on an idle connection)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.listener: _Exchange | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.body_event = asyncio.Event()
        """Set when body bytes arrive or the answer ends (awaited exchanges clear it before waiting)."""
        self.expecting = False
        """A request was sent and its final answer has not ended: only then may a message begin."""
        self.poisoned = False
        """The upstream sent more than the answer (a lying Content-Length, an unasked message): never reused."""
        self.interim = False
        """Parsing a 1xx interim response (RFC 9110 §15.2): skipped, never taken as the answer."""
        self.notify = False
        """The answer ended inside ``feed_data``: its listener is told once the parser has returned."""
        self.active_s = loop.time()
        """When a byte last went either way: an upload's answer times out on inactivity, not duration."""
        self._reset(False)

    def _reset(self, awaited: bool) -> None:
        self.headers_ready: asyncio.Future[None] | None = self.loop.create_future() if awaited else None
        """Only for an awaited exchange: a callback exchange (``listener``) needs no future."""
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
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_result(None)
        if self.head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.body_event.set()
        if self.buffered > _READ_HIGH_WATER:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.expecting = False
        self.keep_alive = self.parser.should_keep_alive()  # the parser forgets it once reset for the next answer
        self.body_event.set()
        if self.listener is not None:
            self.notify = True

    # exchange

    def _fail(self, exc: Exception) -> None:
        if self.listener is not None:
            self.listener.lost(exc)
        elif self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(exc)
        self.body_event.set()

    def usable(self) -> bool:
        return not self.closed and not self.poisoned and not self.transport.is_closing()  # type: ignore[union-attr]

    def start(self, head: bytes, is_head_request: bool, has_body: bool = False, awaited: bool = True) -> None:
        """Send a request head (and a small body); ``awaited``: a coroutine waits for ``headers_ready``."""
        if not self.usable():
            raise _Lost("connection closed before the request was sent")
        self._reset(awaited)
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
    """Keep-alive connections to one origin: at most ``max_connections`` open; callers beyond that wait.

    Waiting is first come, first served and O(1): a waiter that gave up stays in the queue and is
    skipped when its turn comes, so a backlog (a burst beyond ``max_connections``) drains at the cost of
    ordinary calls.
    """

    def __init__(self, host: str, port: int, host_header: bytes, max_connections: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.host_header = host_header
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.open = 0
        self.idle: list[_Connection] = []
        self.waiters: deque[Waiter] = deque()

    def take_idle(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable():
                return connection
        return None

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection for one exchange, and whether it was used before."""
        loop = asyncio.get_running_loop()
        while True:
            connection = self.take_idle()
            if connection is not None:
                return connection, True
            if self.open < self.max_connections:
                break
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self.waiters.append(partial(_hand_to_future, waiter))
            try:
                handed = await asyncio.wait_for(waiter, self.timeout_s)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"all {self.max_connections} connections to {self.host}:{self.port} stayed busy") from exc
            if handed is not None and handed.usable():
                return handed, True
        self.open += 1
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop, self), self.host, self.port), self.timeout_s
            )
        except BaseException as exc:
            self.open -= 1
            self._wake(None)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no connection to {self.host}:{self.port} within {self.timeout_s:g} s") from exc
            if isinstance(exc, OSError):
                raise UpstreamUnavailable(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
            raise
        return connection, False

    def release(self, connection: _Connection) -> None:
        """Back to the pool after an exchange (closed instead when it cannot carry another)."""
        if not connection.reusable():
            self.discard(connection)
        elif not self._wake(connection):
            self.idle.append(connection)

    def discard(self, connection: _Connection) -> None:
        if not connection.closed:
            connection.transport.close()  # type: ignore[union-attr]  # lost() follows

    def lost(self, connection: _Connection) -> None:
        self.open -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        self._wake(None)  # a waiter may open a new connection now

    def close(self) -> None:
        for connection in self.idle:
            connection.transport.close()  # type: ignore[union-attr]
        self.idle.clear()

    def _wake(self, connection: _Connection | None) -> bool:
        waiters = self.waiters
        while waiters:
            if waiters.popleft()(connection):
                return True
        return False


def _hand_to_future(waiter: asyncio.Future[_Connection | None], connection: _Connection | None) -> bool:
    if waiter.done():
        return False  # timed out or cancelled
    waiter.set_result(connection)
    return True


class StreamedResponse:
    """An upstream answer whose body is read as it arrives (``aiter_body``); always ``aclose()`` it."""

    def __init__(self, client: UpstreamClient, connection: _Connection, writer: asyncio.Task[None] | None) -> None:
        self.status_code = connection.status
        self.headers = connection.headers
        self._client = client
        self._connection = connection
        self._writer = writer

    async def aiter_body(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            chunk = connection.take_chunk()
            if chunk is not None:
                yield chunk
                continue
            if connection.complete:
                return
            if connection.closed:
                raise UpstreamUnavailable("upstream closed the connection mid-answer")
            connection.body_event.clear()
            try:
                await asyncio.wait_for(connection.body_event.wait(), self._client.timeout_s)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"upstream sent nothing for {self._client.timeout_s:g} s") from exc

    async def aclose(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._connection.pool.release(self._connection)


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 to the upstreams (``http://`` only: they are internal services)."""

    def __init__(self, timeout_s: float, max_connections_per_origin: int = 256, internal_token: str = "") -> None:
        self.timeout_s = timeout_s
        self._token_line = b"x-internal-token: %s\r\n" % internal_token.encode("latin-1") if internal_token else b""
        """``X-Internal-Token`` on every request (contract C1): the upstreams take calls from the gateway only."""
        self.max_connections_per_origin = max_connections_per_origin
        self._pools: dict[str, _Pool] = {}
        self._post_heads: dict[str, tuple[_Pool, bytes]] = {}
        self.deadlines = _Deadlines(timeout_s)

    def call(self, base_url: str, body: dict[str, Any], done: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
        """Start ``POST {base_url}/gateway/handle``; ``done`` later gets ``{"data": ...}`` or ``{"error": {...}}``.

        The exchange runs on protocol callbacks alone, no task, on an idle pooled connection (the usual
        case) or, with every connection busy, on the next one freed; only opening a new connection takes a
        task. Returns a function that cancels the call (``done`` is then never called).
        """
        payload = orjson.dumps(body)
        pool, head = self._post_head(base_url + "/gateway/handle", payload)
        exchange = _Exchange(self, pool, base_url, (head, payload), done)
        exchange.submit()
        return exchange.cancel

    async def handle(self, base_url: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST {base_url}/gateway/handle``; always ``{"data": ...}`` or ``{"error": {...}}``."""
        return await self._handle_payload(base_url, orjson.dumps(body))

    async def _call_async(self, base_url: str, payload: bytes, done: Callable[[dict[str, Any]], None]) -> None:
        done(await self._handle_payload(base_url, payload))

    async def _handle_payload(self, base_url: str, payload: bytes) -> dict[str, Any]:
        try:
            status, content = await self.post_json(base_url + "/gateway/handle", payload)
        except UpstreamTimeout:
            return timeout_error(base_url, self.timeout_s)
        except UpstreamUnavailable as exc:
            return unavailable_error(base_url, exc.message)
        return contract_answer(base_url, status, content)

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
        """POST a JSON body and read the whole (small) answer: (status, body)."""
        pool, head = self._post_head(url, payload)
        for attempt in (0, 1):
            connection, reused = await pool.acquire()
            try:
                connection.start(head, False)
                await self._wait_headers(connection)
                chunks = []
                while not connection.complete:
                    if connection.closed:
                        raise _Lost("connection closed mid-answer")
                    connection.body_event.clear()
                    await self._wait(connection.body_event.wait())
                    while (chunk := connection.take_chunk()) is not None:
                        chunks.append(chunk)
                while (chunk := connection.take_chunk()) is not None:
                    chunks.append(chunk)
            except _Lost as exc:
                pool.discard(connection)
                if reused and attempt == 0 and not connection.received_any:
                    continue  # a pooled connection the upstream had already closed: retry once on a fresh one
                raise UpstreamUnavailable(str(exc)) from exc
            except BaseException:
                pool.discard(connection)
                raise
            status = connection.status
            pool.release(connection)
            return status, b"".join(chunks)
        raise AssertionError("unreachable")

    async def open_stream(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], content: AsyncIterable[bytes] | None
    ) -> StreamedResponse:
        """Send a request whose body streams from ``content``; the answer's body is left to stream.

        ``headers`` come without hop-by-hop ones and without ``host``; with a body and no
        ``content-length`` the body is sent chunked.
        """
        pool, path = self._split(url)
        lines = [method.encode(), b" ", path, b" HTTP/1.1\r\nhost: ", pool.host_header, b"\r\n", self._token_line]
        has_length = False
        for name, value in headers:
            has_length = has_length or name.lower() == b"content-length"
            lines += [name, b": ", value, b"\r\n"]
        chunked = content is not None and not has_length
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        connection, _ = await pool.acquire()
        writer = None
        try:
            connection.start(b"".join(lines), method == "HEAD", content is not None)
            if content is not None:
                writer = asyncio.get_running_loop().create_task(self._write_body(connection, content, chunked))
            await self._wait_first(connection, writer)
        except BaseException as exc:
            if writer is not None:
                writer.cancel()
            pool.discard(connection)
            if isinstance(exc, _Lost):
                raise UpstreamUnavailable(str(exc)) from exc
            raise
        return StreamedResponse(self, connection, writer)

    async def aclose(self) -> None:
        self.deadlines.close()
        for pool in self._pools.values():
            pool.close()

    # internals

    def _split(self, url: str) -> tuple[_Pool, bytes]:
        parts = urlsplit(url)
        pool = self._pools.get(parts.netloc)
        if pool is None:
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamUnavailable(f"cannot reach {url!r}: upstreams are plain http:// URLs")
            pool = self._pools[parts.netloc] = _Pool(
                parts.hostname, parts.port or 80, parts.netloc.encode(), self.max_connections_per_origin, self.timeout_s
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return pool, path.encode("latin-1")

    async def _wait(self, awaitable: Any) -> None:
        try:
            await asyncio.wait_for(awaitable, self.timeout_s)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream did not answer within {self.timeout_s:g} s") from exc

    async def _wait_headers(self, connection: _Connection) -> None:
        """Wait for the answer's head until nothing went either way for ``timeout_s`` (a slow upload that
        keeps sending does not time out)."""
        future = connection.headers_ready
        assert future is not None
        idle = _IdleTimer(connection, future, self.timeout_s)
        try:
            await future
        finally:
            idle.cancel()

    async def _wait_first(self, connection: _Connection, writer: asyncio.Task[None] | None) -> None:
        """Wait for the answer's headers; a failing body upload ends the wait too."""
        if writer is None:
            try:
                await self._wait_headers(connection)
            except _Lost as exc:
                raise UpstreamUnavailable(str(exc)) from exc
            return
        loop = asyncio.get_running_loop()
        headers = loop.create_task(self._wait_headers(connection))
        try:
            await asyncio.wait((headers, writer), return_when=asyncio.FIRST_COMPLETED)
            if not headers.done() and writer.exception() is not None:
                raise writer.exception()  # type: ignore[misc]
            await headers
        except _Lost as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        finally:
            headers.cancel()

    async def _write_body(self, connection: _Connection, content: AsyncIterable[bytes], chunked: bool) -> None:
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
            if not connection.can_write.is_set():
                await self._wait(connection.can_write.wait())
        if chunked and not connection.closed:
            transport.write(_CHUNK_END)
        connection.request_sent = True


class _Exchange:
    """One ``/gateway/handle`` call driven by callbacks: the pool's and its connection's.

    Its timeout counts from :meth:`submit` (waiting for a busy pool included) and is kept by the
    client's :class:`_Deadlines`.
    """

    __slots__ = ("client", "pool", "base_url", "head", "payload", "connection", "done", "retry", "waiting")

    def __init__(
        self, client: UpstreamClient, pool: _Pool, base_url: str, request: tuple[bytes, bytes], done: Callable[[dict[str, Any]], None]
    ) -> None:
        self.client = client
        self.pool = pool
        self.base_url = base_url
        self.head, self.payload = request
        self.connection: _Connection | None = None
        self.done = done
        self.retry: asyncio.Task[None] | None = None
        self.waiting = False
        """In the pool's queue for a connection."""

    def submit(self) -> None:
        """Send on an idle connection, or wait for one; a pool with room opens a new one (in a task)."""
        pool = self.pool
        loop = asyncio.get_running_loop()
        self.client.deadlines.add(self, loop)
        connection = pool.take_idle()
        if connection is not None and self._start(connection):
            return
        if pool.open < pool.max_connections:
            self._run_as_task(loop)
        else:
            self.waiting = True
            pool.waiters.append(self.take)

    def take(self, connection: _Connection | None) -> bool:
        """The pool's turn for this call (a :data:`Waiter`): a freed connection, or room for a new one."""
        if not self.waiting:
            return False  # timed out or cancelled while waiting
        self.waiting = False
        if connection is None or not self._start(connection):
            self._run_as_task(asyncio.get_running_loop())
        return True

    def _start(self, connection: _Connection) -> bool:
        """Send the request; False when the connection turned out closed (nothing was sent)."""
        try:
            connection.start(self.head, False, awaited=False)
        except _Lost:
            self.pool.discard(connection)
            return False
        connection.listener = self
        self.connection = connection
        return True

    def _run_as_task(self, loop: asyncio.AbstractEventLoop) -> None:
        """The awaited path (opens a connection, retries once on a stale one), with its own timeouts."""
        self.client.deadlines.discard(self)
        self.retry = loop.create_task(self.client._call_async(self.base_url, self.payload, self._finish))

    def complete(self) -> None:
        connection = self._detach()
        status, body = connection.status, b"".join(connection.chunks)
        connection.chunks.clear()
        self.pool.release(connection)  # may start the next waiting call on it at once
        self._finish(contract_answer(self.base_url, status, body))

    def lost(self, exc: Exception) -> None:
        connection = self._detach()
        self.pool.discard(connection)
        if not connection.received_any:
            # a pooled connection the upstream had already closed: retry once on a fresh one
            self._run_as_task(connection.loop)
            return
        self._finish(unavailable_error(self.base_url, str(exc)))

    def cancel(self) -> None:
        """Forget the answer; a call in flight still completes, so its connection goes back to the pool."""
        if self.retry is not None:
            self.retry.cancel()
        if self.waiting:
            self.waiting = False
            self.client.deadlines.discard(self)
        self.done = _ignore

    def expired(self) -> None:
        """No answer within the timeout (called by :class:`_Deadlines`)."""
        if self.waiting:
            self.waiting = False
            self.client.deadlines.discard(self)
        else:
            self.pool.discard(self._detach())
        self._finish(timeout_error(self.base_url, self.client.timeout_s))

    def _detach(self) -> _Connection:
        connection = self.connection
        assert connection is not None
        connection.listener = None
        self.client.deadlines.discard(self)
        return connection

    def _finish(self, answer: dict[str, Any]) -> None:
        try:
            self.done(answer)
        except Exception:
            logger.exception("handling an upstream answer failed")


def _ignore(answer: dict[str, Any]) -> None:
    return None


class _Deadlines:
    """The timeouts of callback exchanges: one timer for all of them instead of a ``call_later`` per call.

    Every exchange has the same timeout, so the oldest one in flight always expires first: the exchanges
    are kept in start order (a dict), and the one timer is set for the oldest one's deadline. An exchange
    that completes only leaves the dict; when the timer fires it expires what is due and is set again for
    the new oldest, so under steady load it fires about once per timeout, not once per call.
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
        due_s = loop.time() - self.timeout_s
        expired = []
        for exchange, started_s in self._started_s.items():
            if started_s > due_s:
                break
            expired.append(exchange)
        for exchange in expired:
            exchange.expired()  # discards itself
        if self._started_s:
            oldest_s = next(iter(self._started_s.values()))
            self._timer = loop.call_at(oldest_s + self.timeout_s, self._expire_due)


def timeout_error(base_url: str, timeout_s: float) -> dict[str, Any]:
    return {"error": error("upstream_timeout", f"{base_url} did not answer within {timeout_s:g} s")}


def unavailable_error(base_url: str, reason: str) -> dict[str, Any]:
    return {"error": error("upstream_unavailable", f"{base_url} is unreachable: {reason}")}


class _IdleTimer:
    """Fails ``future`` with :class:`UpstreamTimeout` once ``connection`` saw no byte for ``timeout_s``."""

    __slots__ = ("connection", "future", "timeout_s", "handle")

    def __init__(self, connection: _Connection, future: asyncio.Future[None], timeout_s: float) -> None:
        self.connection, self.future, self.timeout_s = connection, future, timeout_s
        self.handle = connection.loop.call_at(connection.active_s + timeout_s, self._check)

    def _check(self) -> None:
        if self.future.done():
            return
        due_s = self.connection.active_s + self.timeout_s
        if self.connection.loop.time() < due_s:
            self.handle = self.connection.loop.call_at(due_s, self._check)
            return
        self.future.set_exception(UpstreamTimeout(f"upstream sent nothing and took nothing for {self.timeout_s:g} s"))

    def cancel(self) -> None:
        self.handle.cancel()


def contract_answer(base_url: str, status_code: int, content: bytes) -> dict[str, Any]:
    """Check an upstream's answer against the ``/gateway/handle`` contract (pure)."""
    if status_code != 200:
        return {"error": error("upstream_error", f"{base_url} answered HTTP {status_code}", {"status": status_code})}
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {"error": error("upstream_error", f"{base_url} answered something that is not JSON")}
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
    return {"error": error("upstream_error", f"{base_url} answered neither {{\"data\"}} nor {{\"error\": {{code, message}}}}")}
