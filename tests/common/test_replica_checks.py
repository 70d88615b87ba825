"""Active health checks of several replicas (sonalyze.common.replicas): real uvicorn servers on loopback
(ports 18300-18399), probed on their readiness endpoint; calls through both clients that balance replicas
(``request_any`` over httpx, the services' clients; ``UpstreamClient``, the gateway's proxy)."""

from __future__ import annotations

import asyncio
import gc
import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sonalyze.common.http_client import UpstreamClient
from sonalyze.common.replicas import ReplicaCheckSettings, Replicas, request_any
from tests.support.servers import ThreadedServer, wait_until

PORTS = iter(range(18300, 18400))
FAST = ReplicaCheckSettings(replica_check_interval_s=0.05, replica_check_timeout_s=0.5)


class Replica:
    """A service replica: ``/readyz`` answers ``ready_status``, ``/hello`` its name (counted), whatever it is."""

    def __init__(self, name: str, ready_status: int = 200) -> None:
        self.name = name
        self.ready_status = ready_status
        self.hellos = 0
        self.probes = 0

        async def readyz(_request: Request) -> PlainTextResponse:
            self.probes += 1
            return PlainTextResponse("ready" if self.ready_status < 500 else "not ready", status_code=self.ready_status)

        async def hello(_request: Request) -> PlainTextResponse:
            self.hellos += 1
            return PlainTextResponse(self.name)

        self.server = ThreadedServer(Starlette(routes=[Route("/readyz", readyz), Route("/hello", hello)]), port=next(PORTS))


@pytest.fixture
def replicas_ab():
    a, b = Replica("a"), Replica("b")
    a.server.start()
    b.server.start()
    yield a, b
    a.server.stop()
    b.server.stop()


async def _hello_via_httpx(replicas: Replicas, http: httpx.AsyncClient) -> str:
    response = await request_any(http, replicas, "GET", "/hello")
    return response.text


async def _hello_via_upstream(upstream: UpstreamClient, base_url: str) -> str:
    answer = await upstream.open_stream("GET", base_url, "/hello", [], None)
    body = b"".join([chunk async for chunk in answer.aiter_body()])
    await answer.aclose()
    return body.decode()


async def test_a_replica_answering_503_on_readyz_gets_no_calls_though_it_would_answer_them(replicas_ab):
    a, b = replicas_ab
    b.ready_status = 503
    replicas = Replicas(f"{a.server.url},{b.server.url}", ready_path="/readyz", settings=FAST)
    async with httpx.AsyncClient() as http:
        try:
            assert await _hello_via_httpx(replicas, http) == "a"  # a's turn; the first call starts the probes
            await wait_until(lambda: replicas.healthy() == [a.server.url])
            answers = [await _hello_via_httpx(replicas, http) for _ in range(10)]
            assert answers == ["a"] * 10 and b.hellos == 0
            assert (await http.get(b.server.url + "/hello")).text == "b"  # b answers calls: only its readiness kept it out
            b.ready_status = 200  # ready again: back in turn, no call having failed
            await wait_until(lambda: len(replicas.healthy()) == 2)
            assert sorted([await _hello_via_httpx(replicas, http) for _ in range(4)]) == ["a", "a", "b", "b"]
        finally:
            await replicas.aclose()


async def test_the_gateway_client_passes_over_a_not_ready_upstream(replicas_ab):
    a, b = replicas_ab
    b.ready_status = 503
    base_url = f"{a.server.url},{b.server.url}"
    upstream = UpstreamClient(5.0)
    try:
        assert await _hello_via_upstream(upstream, base_url) == "a"
        await wait_until(lambda: b.probes > 0 and upstream._replicas[base_url].healthy() == [a.server.url])
        assert [await _hello_via_upstream(upstream, base_url) for _ in range(10)] == ["a"] * 10 and b.hellos == 0
    finally:
        await upstream.aclose()
    checks = upstream._replicas[base_url]._checks
    assert checks is None  # closed with its client: no task left


async def test_a_replica_that_was_down_gets_calls_again_without_a_failed_call_first():
    a, b = Replica("a"), Replica("b")  # b not started: nothing listens on its port
    a.server.start()
    replicas = Replicas(f"{a.server.url},{b.server.url}", ready_path="/readyz", settings=FAST, down_s=0.05)
    failed: list[str] = []
    passive_failed = replicas.failed
    replicas.failed = lambda url: (failed.append(url), passive_failed(url))  # type: ignore[method-assign]
    async with httpx.AsyncClient() as http:
        try:
            assert await _hello_via_httpx(replicas, http) == "a"
            await wait_until(lambda: replicas.healthy() == [a.server.url])  # b's probe found nothing: out
            assert [await _hello_via_httpx(replicas, http) for _ in range(6)] == ["a"] * 6
            assert failed == []  # out before any call tried it (down_s long past: passive failover alone would)
            b.server.start()
            await wait_until(lambda: len(replicas.healthy()) == 2)
            assert sorted([await _hello_via_httpx(replicas, http) for _ in range(4)]) == ["a", "a", "b", "b"]
            assert failed == [] and b.hellos == 2
        finally:
            await replicas.aclose()
            a.server.stop()
            b.server.stop()


async def test_a_probe_that_gets_no_answer_is_bounded_by_its_timeout_and_takes_the_replica_out():
    silent = socket.create_server(("127.0.0.1", next(PORTS)))  # accepts (the kernel's backlog), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    replicas = Replicas(f"{url},http://127.0.0.1:{next(PORTS)}", ready_path="/readyz",
                        settings=ReplicaCheckSettings(replica_check_interval_s=10, replica_check_timeout_s=0.2))
    try:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        assert await replicas.check(url) is False
        assert 0.2 <= loop.time() - started_s < 1.0
        assert url not in replicas.healthy()
    finally:
        silent.close()


async def test_probes_only_with_several_urls_a_ready_path_and_an_interval_and_none_after_the_owner(monkeypatch, replicas_ab):
    a, b = replicas_ab
    single = Replicas(a.server.url, ready_path="/readyz", settings=FAST)
    passive = Replicas(f"{a.server.url},{b.server.url}")
    monkeypatch.setenv("REPLICA_CHECK_INTERVAL_S", "0")
    disabled = Replicas(f"{a.server.url},{b.server.url}", ready_path="/readyz")
    for replicas in (single, passive, disabled):
        replicas.order()
        assert not replicas.checked and replicas._checks is None
    monkeypatch.setenv("REPLICA_CHECK_INTERVAL_S", "0.05")
    dropped = Replicas(f"{a.server.url},{b.server.url}", ready_path="/readyz")
    dropped.order()
    checks = dropped._checks
    assert checks is not None and dropped.check_interval_s == 0.05
    await wait_until(lambda: a.probes > 0 and b.probes > 0)
    del dropped
    gc.collect()
    await asyncio.wait_for(checks, 1.0)  # an owner that never closed it: the task ends with the object
    probes = a.probes
    await asyncio.sleep(0.2)
    assert a.probes == probes
