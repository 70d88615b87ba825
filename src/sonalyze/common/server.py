"""Run one service's ASGI application under uvicorn (uvloop + httptools, JSON logs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import uvicorn
from uvicorn.importer import import_from_string

from sonalyze.common.logging import configure_logging
from sonalyze.services import ServiceSpec
from sonalyze.tls import TlsFiles


def serve(spec: ServiceSpec, host: str, port: int, tls: TlsFiles | None = None, internal_port: int | None = None) -> None:
    """Serve ``spec`` in this process until SIGINT/SIGTERM; over TLS with ``tls``.

    With ``tls`` and ``internal_port`` the same application also answers plain HTTP on
    ``127.0.0.1:internal_port`` (no WebSocket, no lifespan of its own), for the services on this machine
    that push to the gateway and would not trust its self-signed certificate."""
    configure_logging(spec.name, os.environ.get("LOG_LEVEL", "INFO"))
    options: dict = {
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        **spec.uvicorn_options,
    }
    if tls is not None:
        options |= {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if internal_port is None:
        uvicorn.run(spec.app_factory, factory=True, host=host, port=port, **options)
        return
    app = import_from_string(spec.app_factory)()
    public = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    internal_options = {key: value for key, value in options.items() if not key.startswith("ssl_")}
    internal = _InternalServer(
        uvicorn.Config(app, host="127.0.0.1", port=internal_port, **{**internal_options, "ws": "none", "lifespan": "off"})
    )
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=public.config.get_loop_factory()) as runner:
        runner.run(_serve_both(public, internal))  # uvicorn re-raises a caught SIGINT on the way out


class _InternalServer(uvicorn.Server):
    """A second listener in the process: the public server handles the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def _serve_both(public: uvicorn.Server, internal: uvicorn.Server) -> None:
    """Run ``public`` (which runs the application's lifespan); ``internal`` once the application is up."""
    public_task = asyncio.create_task(public.serve())
    while not public.started and not public_task.done():
        await asyncio.sleep(0.02)
    internal_task = asyncio.create_task(internal.serve()) if public.started else None
    try:
        await public_task
    finally:
        if internal_task is not None:
            internal.should_exit = True
            await internal_task
