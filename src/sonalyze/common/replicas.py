"""Several URLs of one service (``STORAGE_URL=http://a:8000,http://b:8000``): round robin with failover.

Without a load balancer in front (a split deployment, the tests' two replicas on one machine) a client
spreads its calls over the replicas in turn. A replica that refused a connection is marked down and
passed over for ``down_s`` (a passive health check: the next call after that tries it again, and its
first answer marks it up). A call that could not connect is safe to send to the next replica — the
request never reached a server — so clients retry only on connection errors, never after a timeout
(a timed-out call may have been carried out). When every replica is down, all are tried anyway.

Active health check (an owner that names the service's readiness path, ``ready_path``): while the owner
is in use, a background task asks every replica's ``ready_path`` once per ``REPLICA_CHECK_INTERVAL_S``
(each probe bounded by ``REPLICA_CHECK_TIMEOUT_S``). A replica answering 5xx (``/readyz``'s 503), or not
answering, is passed over until a probe finds it ready again, even before a call to it fails; one that
was down gets calls again as soon as a probe finds it ready, without a failed call first. Any other status
is an answer from a live server (2xx ready; a 4xx means it has no such endpoint, and it is kept). No task
with one URL; the owner stops the task with :meth:`Replicas.aclose` (or by dropping the object). Like an upstream health check of a
load balancer (nginx's ``health_check``, Envoy's active health checking), without its thresholds: one
probe decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

log = logging.getLogger(__name__)


class ReplicaCheckSettings(BaseSettings):
    """``REPLICA_CHECK_*``, whatever the service's env prefix (read by every owner of :class:`Replicas`)."""

    replica_check_interval_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        validation_alias=AliasChoices("replica_check_interval_s", "REPLICA_CHECK_INTERVAL_S"),
        description="seconds between two readiness probes of each replica of a several-URL *_URL; 0: passive failover only",
    )
    replica_check_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("replica_check_timeout_s", "REPLICA_CHECK_TIMEOUT_S"),
        description="a readiness probe not answered within this takes its replica out",
    )


def split_urls(value: str) -> tuple[str, ...]:
    """The comma-separated ``http(s)://`` URLs of ``value``, without trailing slashes; ValueError otherwise."""
    urls = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url!r} (several URLs are separated by commas)")
    if not urls:
        raise ValueError("no URL given")
    return urls


class Replicas:
    def __init__(
        self,
        value: str,
        *,
        down_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        ready_path: str | None = None,
        settings: ReplicaCheckSettings | None = None,
    ) -> None:
        """``ready_path``: the readiness endpoint of the service these URLs name (``/readyz``), probed
        at each URL's origin; None: passive failover only. ``settings``: read from the environment."""
        self.urls = split_urls(value)
        self.down_s = down_s
        self._clock = clock
        self._next = 0
        self._down_until: dict[str, float] = {}
        self._unready: set[str] = set()
        """Replicas whose last readiness probe failed: passed over until one succeeds."""
        self.ready_path = ready_path
        checks = settings or (ReplicaCheckSettings() if ready_path is not None and len(self.urls) > 1 else None)
        self.check_interval_s = checks.replica_check_interval_s if checks else 0.0
        self.check_timeout_s = checks.replica_check_timeout_s if checks else 0.0
        self._checks: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def checked(self) -> bool:
        """Whether readiness is probed (several URLs, a ``ready_path``, an interval)."""
        return self.ready_path is not None and self.check_interval_s > 0 and len(self.urls) > 1

    def order(self) -> list[str]:
        """The URLs to try for one call: the next in turn first, replicas marked down last."""
        self._start_checks()
        start = self._next
        self._next = (self._next + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        up = self._up(rotated)
        return up + [url for url in rotated if url not in up]

    def failed(self, url: str) -> None:
        """``url`` refused a connection: pass it over for ``down_s``."""
        self._down_until[url] = self._clock() + self.down_s

    def answered(self, url: str) -> None:
        self._down_until.pop(url, None)

    def healthy(self) -> list[str]:
        return self._up(self.urls)

    def _up(self, urls: tuple[str, ...]) -> list[str]:
        now = self._clock()
        return [url for url in urls if url not in self._unready and self._down_until.get(url, 0.0) <= now]

    # the active check

    def _start_checks(self) -> None:
        """The probing task, started by the first call made in the owner's event loop."""
        if self._checks is not None or self._closed or not self.checked:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a call outside an event loop (none is made: the owners' calls are async)
            return
        self._checks = loop.create_task(_check_forever(weakref.ref(self)), name=f"replica-checks {','.join(self.urls)}")

    async def check(self, url: str, client: httpx.AsyncClient | None = None) -> bool:
        """Probe ``url``'s readiness once (through ``client``, else a client of its own) and mark it in or
        out; whether it is ready."""
        if client is None:
            async with httpx.AsyncClient() as own:
                return await self.check(url, own)
        status = await self._probe(client, url)
        if status is not None and status < 500:
            self._down_until.pop(url, None)
            if url in self._unready:
                self._unready.discard(url)
                log.info("replica %s is ready again (%s answered %d)", url, self.ready_path, status)
            return True
        if url not in self._unready:
            self._unready.add(url)
            log.warning("replica %s taken out: %s %s", url, self.ready_path, f"answered {status}" if status else "did not answer")
        return False

    async def _probe(self, client: httpx.AsyncClient, url: str) -> int | None:
        """The status of ``GET {origin of url}{ready_path}``, or None: refused, not within ``check_timeout_s``
        (the whole exchange), or not HTTP."""
        parts = urlsplit(url)
        try:
            async with asyncio.timeout(self.check_timeout_s):
                response = await client.get(f"{parts.scheme}://{parts.netloc}{self.ready_path}")
        except (httpx.HTTPError, OSError, TimeoutError):
            return None
        return response.status_code

    async def aclose(self) -> None:
        """Stop probing (for good: the owner is closing)."""
        self._closed = True
        if self._checks is not None:
            self._checks.cancel()
            await asyncio.gather(self._checks, return_exceptions=True)
            self._checks = None


async def _check_forever(ref: weakref.ref[Replicas]) -> None:
    """Probe every replica once per interval until :meth:`Replicas.aclose`, or until its owner dropped the
    :class:`Replicas` (an owner that is never closed leaves no task behind)."""
    while (replicas := ref()) is not None:
        started_s = time.monotonic()
        async with httpx.AsyncClient() as client:
            await asyncio.gather(*(replicas.check(url, client) for url in replicas.urls))
        pause_s = max(0.0, replicas.check_interval_s - (time.monotonic() - started_s))
        del replicas
        await asyncio.sleep(pause_s)


async def request_any(client: httpx.AsyncClient, replicas: Replicas, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """``client.request`` to the replicas in turn: the next one only when the connection was refused."""
    refused: httpx.ConnectError | None = None
    for url in replicas.order():
        try:
            response = await client.request(method, url + path, **kwargs)
        except httpx.ConnectError as exc:
            replicas.failed(url)
            refused = exc
            continue
        replicas.answered(url)
        return response
    assert refused is not None
    raise refused
