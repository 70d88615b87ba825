"""Logs of every service on stderr, carrying ``request_id`` and ``device_id`` when known.

JSON lines for machines (a pipe, a file, a container's log collector); one readable line per record when
stderr is a terminal (``make run``). ``LOG_FORMAT=json|text`` forces either; ``sonalyze serve`` decides once
for all its children, whose stderr may not be the terminal itself.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("sonalyze_log_context", default={})


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (``request_id``, ``device_id``, ...) to every log record emitted inside the block."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        for key, value in _context.get().items():
            setattr(record, key, value)
        return True


LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")

#: Attributes every LogRecord has, and uvicorn's coloured duplicate of the message: not shown as extras.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "service", "color_message"}


def log_format(stream: TextIO | None = None, environ: Mapping[str, str] = os.environ) -> LogFormat:
    """``LOG_FORMAT`` when set (``json`` or ``text``; anything else is a ``ValueError``), else ``text`` when
    ``stream`` (stderr by default) is a terminal and ``json`` otherwise."""
    forced = environ.get("LOG_FORMAT", "").strip().lower()
    if forced:
        if forced not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {forced!r}")
        return forced  # type: ignore[return-value]
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class TextFormatter(logging.Formatter):
    """``23:59:01.123 INFO    gateway  sonalyze.gateway.main: message  request_id=r1 device_id=d1``,
    then the traceback, if any, on the lines below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(service)-11s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extras = [f"{key}={value}" for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES and not key.startswith("_")]
        if extras:
            line += "  " + " ".join(extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat | None = None) -> None:
    """Send the root, uvicorn and service loggers to stderr, as ``fmt`` (default: `log_format`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if (fmt or log_format()) == "text" else json_formatter())
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
