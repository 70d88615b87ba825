"""Log format: one readable line per record on a terminal, JSON lines otherwise, ``LOG_FORMAT`` forcing either;
``sonalyze serve`` decides once and passes the decision to its children."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonalyze.common.logging import TextFormatter, configure_logging, log_context, log_format
from sonalyze.launcher import service_environment
from tests.support.servers import INTERNAL_TOKEN, free_port, free_port_block

STARTED = "Application startup complete."


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_text_anything_else_json_and_log_format_forces_either() -> None:
    assert log_format(_Terminal(), {}) == "text"
    assert log_format(io.StringIO(), {}) == "json"
    assert log_format(_Terminal(), {"LOG_FORMAT": "json"}) == "json"
    assert log_format(io.StringIO(), {"LOG_FORMAT": " Text "}) == "text"
    assert log_format(io.StringIO(), {"LOG_FORMAT": ""}) == "json"  # empty: not set
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of json, text, not 'yaml'"):
        log_format(_Terminal(), {"LOG_FORMAT": "yaml"})


def test_a_text_line_carries_the_service_the_context_and_the_traceback() -> None:
    record = logging.LogRecord("sonalyze.lobby.x", logging.WARNING, __file__, 1, "joined %s", ("L1",), None)
    record.created, record.msecs = 0.0, 250.0
    record.service, record.request_id, record.device_id = "lobby", "r1", "d1"
    line = TextFormatter().format(record)
    assert line.endswith(" WARNING lobby       sonalyze.lobby.x: joined L1  request_id=r1 device_id=d1")
    assert line[8:12] == ".250"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    failed.service = "gateway"
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("ERROR   gateway     x: failed")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: boom"


def test_configure_logging_writes_the_chosen_format(capsys) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for fmt in ("json", "text"):
            configure_logging("storage", "INFO", fmt)
            with log_context(request_id="r9"):
                logging.getLogger("sonalyze.storage.t").info("stored %d", 3)
            line = capsys.readouterr().err.strip()
            if fmt == "json":
                body = json.loads(line)
                assert (body["message"], body["service"], body["request_id"], body["level"]) == ("stored 3", "storage", "r9", "INFO")
            else:
                assert line.endswith("INFO    storage     sonalyze.storage.t: stored 3  request_id=r9")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_launcher_hands_its_decision_to_every_child_and_a_per_service_override_wins(tmp_path: Path) -> None:
    ports = {"gateway": 9000, "lobby": 9001, "measurement": 9002, "simulation": 9003, "storage": 9004}
    base_env = {"SONALYZE_STORAGE_LOG_FORMAT": "json"}
    envs = service_environment(["gateway", "storage"], data_dir=tmp_path, ports=ports, token="t", base_env=base_env, log_format="text")
    assert envs["gateway"]["LOG_FORMAT"] == "text" and envs["storage"]["LOG_FORMAT"] == "json"


def _serve(args: list[str], env: dict[str, str], on_terminal: bool) -> tuple[subprocess.Popen, int]:
    """``sonalyze serve ...`` with stdout and stderr on a new pseudo-terminal, or on a pipe (``LOG_FORMAT``
    only from ``env``)."""
    if on_terminal:
        reader, writer = os.openpty()
    else:
        reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "sonalyze", "serve", *args],
        env={**{k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}, **env},
        stdout=writer, stderr=writer, stdin=subprocess.DEVNULL
    )
    os.close(writer)
    return process, reader


def _lines_until(process: subprocess.Popen, reader: int, wanted: str, timeout_s: float = 60.0) -> list[str]:
    """What the process wrote, line by line, until a line contains ``wanted``; then it is stopped."""
    text, deadline = "", time.monotonic() + timeout_s
    try:
        while wanted not in text:
            assert time.monotonic() < deadline, f"no {wanted!r} in {timeout_s} s: {text}"
            if select.select([reader], [], [], 0.2)[0]:
                try:
                    chunk = os.read(reader, 65536)
                except OSError:  # a terminal whose last writer is gone
                    chunk = b""
                assert chunk or process.poll() is None, f"exited with {process.returncode} before {wanted!r}: {text}"
                text += chunk.decode(errors="replace")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
        os.close(reader)
    return [line.strip() for line in text.replace("\r\n", "\n").splitlines() if line.strip()]


def _storage(tmp_path: Path, **env: str) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}", "INTERNAL_AUTH_TOKEN": INTERNAL_TOKEN, **env}


@pytest.mark.parametrize(("on_terminal", "forced", "readable"), [(True, None, True), (False, None, False), (False, "text", True), (True, "json", False)])
def test_one_service_logs_text_on_a_terminal_and_json_elsewhere(tmp_path: Path, on_terminal: bool, forced: str | None, readable: bool) -> None:
    env = _storage(tmp_path, **({"LOG_FORMAT": forced} if forced else {}))
    process, reader = _serve(["storage", "--host", "127.0.0.1", "--port", str(free_port())], env, on_terminal)
    started = [line for line in _lines_until(process, reader, STARTED) if STARTED in line]
    assert len(started) == 1
    if readable:
        assert started[0].endswith(f"INFO    storage     uvicorn.error: {STARTED}")
    else:
        body = json.loads(started[0])
        assert (body["message"], body["service"], body["logger"]) == (STARTED, "storage", "uvicorn.error")


@pytest.mark.parametrize("on_terminal", [True, False])
def test_the_launchers_children_follow_the_launchers_terminal(tmp_path: Path, on_terminal: bool) -> None:
    env = {"SONALYZE_STORAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}"}
    args = ["--services", "storage", "--host", "127.0.0.1", "--base-port", str(free_port_block(6)), "--data-dir", str(tmp_path)]
    process, reader = _serve(args, env, on_terminal)
    started = [line for line in _lines_until(process, reader, "Press Ctrl-C to stop.") if STARTED in line]
    assert len(started) == 1
    if on_terminal:
        assert started[0].endswith(f"INFO    storage     uvicorn.error: {STARTED}")
    else:
        assert json.loads(started[0])["service"] == "storage"


def test_an_unknown_log_format_is_refused_before_anything_starts(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "sonalyze", "serve", "storage", "--port", str(free_port())],
        env={**os.environ, **_storage(tmp_path, LOG_FORMAT="yaml")}, capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 2
    assert "LOG_FORMAT must be one of json, text, not 'yaml'" in process.stderr
