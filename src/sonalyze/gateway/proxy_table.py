"""The configurable part of the HTTP proxy: the profiles document's ``http`` rows (``/auth``, ``/call``, ...).

Each row ``{"prefix", "upstream", "upstream_prefix"?, "count"?}`` proxies the prefix and everything below
it to the upstream, streamed like ``/v1`` (``proxy.proxy``), rate-limited per client address like ``/v1``.
The gateway does not authenticate these requests: the upstream does (seed 002's call service checks its
own JWTs), and no ``X-Device-Id`` is sent (Sonalyze device identity is not involved, contract C1). Each
request is counted in ``gateway_requests_total{method, endpoint=<prefix>}`` and timed in
``gateway_request_duration_seconds``; answers below 400 to a row's ``count`` rules count in
``gateway_call_events_total{event_type}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse

from sonalyze.gateway.profiles import HttpRouteSpec, PathTemplate, ProfilesDocument
from sonalyze.gateway.proxy import proxy
from sonalyze.gateway.router import _upstream_url

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def install_proxy_table(
    app: FastAPI, document: ProfilesDocument, upstream_urls: Mapping[str, str], client_address: Callable[[object, Request], str]
) -> None:
    """One pair of routes per row (the prefix, and the prefix + ``/{rest}``); unknown upstream names fail here."""
    for row in document.http:
        base_url = _upstream_url(row.upstream, upstream_urls)
        handler = _handler(row, base_url, row.upstream_prefix if row.upstream_prefix is not None else row.prefix, client_address)
        app.add_api_route(row.prefix, handler, methods=METHODS, include_in_schema=False)
        app.add_api_route(row.prefix + "/{rest:path}", handler, methods=METHODS, include_in_schema=False)


def _handler(row: HttpRouteSpec, base_url: str, upstream_prefix: str, client_address: Callable[[object, Request], str]):  # noqa: ANN202
    counts = [(rule.method.upper(), PathTemplate(rule.path), rule.event_type) for rule in row.count]
    prefix_chars = len(row.prefix)

    async def proxy_row(request: Request) -> StreamingResponse:
        gateway = request.app.state.gateway
        seed = gateway.profiles.metrics
        started_s = time.perf_counter()
        seed.requests.labels(request.method, row.prefix).inc()
        gateway.take_proxy_token(client_address(gateway, request))
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        response = await proxy(request, base_url, upstream_prefix + raw_path[prefix_chars:], gateway.upstream, None)
        seed.request_duration.observe(time.perf_counter() - started_s)
        if response.status_code < 400:
            for method, template, event_type in counts:
                if method == request.method and template.match(request.url.path) is not None:
                    seed.call_events.labels(event_type).inc()
        return response

    return proxy_row
