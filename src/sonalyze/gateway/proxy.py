"""``/v1/...`` HTTP proxy: a table of path prefixes to upstreams, and a streaming pass-through.

Bodies stream both ways (never held whole); hop-by-hop headers (RFC 9110 §7.6.1) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse

from sonalyze.common.http_client import UpstreamClient


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    prefix: str
    """Gateway path prefix, without trailing slash (``/v1/jobs``)."""
    upstream: str
    """Upstream name (``measurement``, ``simulation``)."""
    upstream_prefix: str
    """What ``prefix`` becomes upstream (``/v1/jobs``, ``/v1``, ``""``)."""


PROXY_ROUTES = (
    ProxyRoute("/v1/jobs", "measurement", "/v1/jobs"),
    ProxyRoute("/v1/measurement", "measurement", "/v1"),
    ProxyRoute("/v1/simulation", "simulation", ""),
)

REPLACED_RESPONSE_HEADERS = frozenset((b"date", b"server"))
GATEWAY_SET_HEADERS = frozenset((b"x-internal-token", b"x-device-id", b"x-device-token"))
"""Never taken from a client: the gateway sets ``X-Internal-Token`` and ``X-Device-Id`` itself (contract C1)."""
CREDENTIAL_PARAMS = frozenset((b"device_token", b"token"))
"""Query parameters the gateway consumes (credentials): not passed on to the upstream."""
"""Set afresh by the gateway's own HTTP server on every answer."""

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
     b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host")
)


def resolve_proxy(raw_path: str, upstream_urls: dict[str, str]) -> tuple[str, str] | None:
    """The upstream's base URL(s) and the path there (without query) for a gateway path, or None when no
    proxy route matches."""
    for route in PROXY_ROUTES:
        if raw_path == route.prefix or raw_path.startswith(route.prefix + "/"):
            rest = raw_path[len(route.prefix):]
            return upstream_urls[route.upstream], route.upstream_prefix + rest or "/"
    return None


def forwarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Request or response headers less the hop-by-hop ones (and those named by ``Connection``)."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(name, value) for name, value in headers if (lowered := name.lower()) not in HOP_BY_HOP and lowered not in named]


def upstream_query(query: bytes) -> bytes:
    """The query string less the gateway's credential parameters, otherwise byte for byte."""
    if not query:
        return query
    return b"&".join(part for part in query.split(b"&") if part.partition(b"=")[0] not in CREDENTIAL_PARAMS)


async def proxy(request: Request, base_url: str, path: str, client: UpstreamClient, device_id: str | None) -> StreamingResponse:
    """Stream ``request`` to ``base_url + path`` and the upstream's answer back, status and headers included.
    ``base_url`` may name several replicas (comma-separated): the client balances, fails over and keeps a
    replica whose ``/readyz`` answers 503 out (``REPLICA_CHECK_INTERVAL_S``, :class:`UpstreamClient`).

    The upstream learns the acting device from ``X-Device-Id`` (the authenticated one, absent without a
    credential); a client's own ``X-Device-Id``/``X-Internal-Token``/``X-Device-Token`` never pass.
    """
    query = upstream_query(request.scope.get("query_string", b""))
    if query:
        path += "?" + query.decode("latin-1")
    method = request.method
    has_body = method not in ("GET", "HEAD", "OPTIONS", "DELETE") or any(
        name in (b"content-length", b"transfer-encoding") for name, _ in request.scope["headers"]
    )
    headers = [(name, value) for name, value in forwarded_headers(request.scope["headers"]) if name.lower() not in GATEWAY_SET_HEADERS]
    if device_id is not None:
        headers.append((b"x-device-id", device_id.encode()))
    upstream = await client.open_stream(method, base_url, path, headers, request.stream() if has_body else None)
    headers = [(name, value) for name, value in forwarded_headers(upstream.headers) if name.lower() not in REPLACED_RESPONSE_HEADERS]
    response = StreamingResponse(upstream.aiter_body(), status_code=upstream.status_code, background=BackgroundTask(upstream.aclose))
    response.raw_headers = headers
    return response
