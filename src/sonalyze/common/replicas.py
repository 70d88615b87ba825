"""Several URLs of one service (``STORAGE_URL=http://a:8000,http://b:8000``): round robin with failover.

Without a load balancer in front (a split deployment, the tests' two replicas on one machine) a client
spreads its calls over the replicas in turn. A replica that refused a connection is marked down and
passed over for ``down_s`` (a passive health check: the next call after that tries it again, and its
first answer marks it up). A call that could not connect is safe to send to the next replica — the
request never reached a server — so clients retry only on connection errors, never after a timeout
(a timed-out call may have been carried out). When every replica is down, all are tried anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx


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
    def __init__(self, value: str, *, down_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.urls = split_urls(value)
        self.down_s = down_s
        self._clock = clock
        self._next = 0
        self._down_until: dict[str, float] = {}

    def order(self) -> list[str]:
        """The URLs to try for one call: the next in turn first, replicas marked down last."""
        start = self._next
        self._next = (self._next + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        now = self._clock()
        up = [url for url in rotated if self._down_until.get(url, 0.0) <= now]
        return up + [url for url in rotated if url not in up]

    def failed(self, url: str) -> None:
        """``url`` refused a connection: pass it over for ``down_s``."""
        self._down_until[url] = self._clock() + self.down_s

    def answered(self, url: str) -> None:
        self._down_until.pop(url, None)

    def healthy(self) -> list[str]:
        now = self._clock()
        return [url for url in self.urls if self._down_until.get(url, 0.0) <= now]


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
