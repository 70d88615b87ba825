"""The gateway's upstream client against a hostile HTTP/1.1 server written on raw asyncio streams.

Each path misbehaves in one way: interim 1xx answers before the real one, an early final answer to an
upload, a close mid-body, broken chunked encoding, a Content-Length shorter or longer than the body.
Every answer names the request it belongs to (``?id=``), so a test sees at once when an answer reaches
the wrong request; and the server counts connections, so a test sees whether a broken one was reused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from sonalyze.common.errors import UpstreamTimeout, UpstreamUnavailable
from sonalyze.common.http_client import UpstreamClient


def _answer(status: str, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


class HostileUpstream:
    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.received_bytes = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def start(self) -> "HostileUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ")
                headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}
                parts = urlsplit(target)
                rid = parse_qs(parts.query).get("id", ["-"])[0]
                body = json.dumps({"id": rid, "connection": connection}).encode()
                length = int(headers.get("content-length", "0"))
                if parts.path == "/early":  # refuse the upload before reading it, keep the connection
                    writer.write(_answer("413 Payload Too Large", body))
                    await writer.drain()
                    continue  # the unread body now looks like the next request: a reused connection breaks
                if parts.path == "/slow-upload":
                    received = 0
                    while received < length:
                        data = await reader.read(65536)
                        if not data:
                            return  # the client gave up
                        received += len(data)
                    self.received_bytes = received
                    writer.write(_answer("201 Created", json.dumps({"id": rid, "received": received}).encode()))
                    await writer.drain()
                    continue
                payload = await reader.readexactly(length)
                if parts.path == "/gateway/handle":  # a routed event: 100 and 103 first, then its answer
                    body = json.dumps({"data": {"event": json.loads(payload)["event"], "connection": connection}}).encode()
                if parts.path in ("/interim", "/gateway/handle"):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </evil>; rel=preload\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    writer.write(_answer("200 OK", body, "x-final: yes\r\n"))
                elif parts.path == "/short-length":  # says 5 bytes, sends a whole smuggled answer after them
                    smuggled = _answer("200 OK", b'{"id": "smuggled"}')
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + b"hello" + smuggled)
                elif parts.path == "/long-length":  # says 1000 bytes, sends 10 and hangs up
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"0123456789")
                    await writer.drain()
                    writer.close()
                    return
                elif parts.path == "/close-mid-chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    await writer.drain()
                    writer.close()
                    return
                elif parts.path == "/bad-chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
                else:
                    writer.write(_answer("200 OK", body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    server = await HostileUpstream().start()
    yield server
    await server.stop()


async def fetch(client: UpstreamClient, url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        assert body is not None
        yield body

    headers = [(b"content-length", b"%d" % len(body))] if body is not None else []
    response = await client.open_stream(method, url, "", headers, chunks() if body is not None else None)
    try:
        content = b"".join([chunk async for chunk in response.aiter_body()])
    finally:
        await response.aclose()
    return response.status_code, dict(response.headers), content


async def test_interim_answers_are_skipped_and_never_taken_as_the_answer(hostile) -> None:
    client = UpstreamClient(5.0, max_connections_per_origin=1)
    try:
        for rid in ("a", "b", "c"):  # one pooled connection, reused after each whole answer
            status, headers, content = await fetch(client, f"{hostile.url}/interim?id={rid}")
            assert status == 200 and json.loads(content) == {"id": rid, "connection": 1}
            assert headers.get(b"x-final") == b"yes" and b"link" not in headers  # no merged interim headers
        for n in range(3):  # the awaited path, then the callback path, on the same connection
            status, content = await client.post_json(f"{hostile.url}/gateway/handle", b"{\"event\": \"e%d\"}" % n)
            assert (status, json.loads(content)) == (200, {"data": {"event": f"e{n}", "connection": 1}})
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        client.call(hostile.url, {"event": "cb"}, done.set_result)
        assert await asyncio.wait_for(done, 5) == {"data": {"event": "cb", "connection": 1}}
    finally:
        await client.aclose()
    assert hostile.connections == 1


async def test_two_clients_concurrently_always_get_their_own_answers(hostile) -> None:
    client = UpstreamClient(5.0, max_connections_per_origin=4)
    paths = ["/interim", "/short-length", "/plain", "/interim", "/bad-chunked", "/plain"]

    async def one_client(name: str) -> list[tuple[str, object]]:
        outcomes = []
        for index in range(30):
            path = paths[index % len(paths)]
            rid = f"{name}-{index}"
            try:
                status, _, content = await fetch(client, f"{hostile.url}{path}?id={rid}")
            except UpstreamUnavailable:
                outcomes.append((rid, "unavailable"))
                continue
            if path == "/short-length":
                outcomes.append((rid, content))  # the 5 bytes it declared, never the smuggled answer
            else:
                outcomes.append((rid, json.loads(content)["id"]))
        return outcomes

    try:
        results = await asyncio.gather(one_client("left"), one_client("right"))
    finally:
        await client.aclose()
    for outcomes in results:
        for (rid, got), index in zip(outcomes, range(30)):
            path = paths[index % len(paths)]
            expected = {"/short-length": b"hello", "/bad-chunked": "unavailable"}.get(path, rid)
            assert got == expected, (rid, path, got)


async def test_a_lying_content_length_or_a_close_mid_body_never_leaves_a_reused_connection(hostile) -> None:
    client = UpstreamClient(5.0, max_connections_per_origin=1)
    try:
        status, _, content = await fetch(client, f"{hostile.url}/short-length?id=1")
        assert (status, content) == (200, b"hello")
        _, _, after = await fetch(client, f"{hostile.url}/plain?id=2")
        assert json.loads(after) == {"id": "2", "connection": 2}  # a new connection, not the smuggled answer
        for path in ("/long-length", "/close-mid-chunked"):
            with pytest.raises(UpstreamUnavailable):
                await fetch(client, f"{hostile.url}{path}?id=x")
        _, _, last = await fetch(client, f"{hostile.url}/plain?id=3")
        assert json.loads(last)["id"] == "3"
    finally:
        await client.aclose()
    # 1: the short answer (dropped), 2: /plain then /long-length on it (closed), 3: /close-mid-chunked, 4: /plain
    assert hostile.connections == 4


async def test_an_early_final_answer_to_an_upload_is_its_answer_and_the_connection_is_dropped(hostile) -> None:
    client = UpstreamClient(5.0, max_connections_per_origin=1)
    try:
        status, _, content = await fetch(client, f"{hostile.url}/early?id=up", "POST", b"x" * 300_000)
        assert status == 413 and json.loads(content)["id"] == "up"
        _, _, after = await fetch(client, f"{hostile.url}/plain?id=next")
        assert json.loads(after) == {"id": "next", "connection": 2}
    finally:
        await client.aclose()


async def test_a_steady_upload_longer_than_the_timeout_succeeds_a_silent_one_times_out(hostile) -> None:
    timeout_s = 0.5
    client = UpstreamClient(timeout_s, max_connections_per_origin=1)
    chunk_bytes, chunks_count, pause_s = 15_000, 20, 0.1  # 300 kB at 150 kB/s: 2 s, four times the timeout

    async def steady() -> AsyncIterator[bytes]:
        for _ in range(chunks_count):
            await asyncio.sleep(pause_s)
            yield b"w" * chunk_bytes

    async def stalls() -> AsyncIterator[bytes]:
        yield b"w" * chunk_bytes
        await asyncio.sleep(3 * timeout_s)
        yield b"w" * chunk_bytes

    length = [(b"content-length", b"%d" % (chunk_bytes * chunks_count))]
    try:
        started_s = asyncio.get_running_loop().time()
        response = await client.open_stream("POST", hostile.url, "/slow-upload?id=u", length, steady())
        content = b"".join([chunk async for chunk in response.aiter_body()])
        await response.aclose()
        assert asyncio.get_running_loop().time() - started_s > 3 * timeout_s
        assert (response.status_code, json.loads(content)) == (201, {"id": "u", "received": chunk_bytes * chunks_count})
        with pytest.raises(UpstreamTimeout):
            await client.open_stream("POST", hostile.url, "/slow-upload?id=s", length, stalls())
    finally:
        await client.aclose()
