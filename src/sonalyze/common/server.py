"""Run one service's ASGI application under uvicorn (uvloop + httptools, JSON logs)."""

from __future__ import annotations

import os

import uvicorn

from sonalyze.common.logging import configure_logging
from sonalyze.services import ServiceSpec


def serve(spec: ServiceSpec, host: str, port: int) -> None:
    """Serve ``spec`` in this process until SIGINT/SIGTERM."""
    configure_logging(spec.name, os.environ.get("LOG_LEVEL", "INFO"))
    options: dict = {
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        **spec.uvicorn_options,
    }
    uvicorn.run(spec.app_factory, factory=True, host=host, port=port, **options)
