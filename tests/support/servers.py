"""Real servers for tests: uvicorn on loopback, in a thread of this process or in a child process."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sonalyze.common.internal_auth import internal_headers

REPO_ROOT = Path(__file__).resolve().parents[2]
INTERNAL_TOKEN = "test-internal-token"
"""The internal token of the services the tests start (``ServiceProcess`` sets it unless told otherwise)."""
SERVICE_HEADERS = internal_headers(INTERNAL_TOKEN)
"""What a service acting as itself sends to another one (the tests call the services as such)."""


def device_headers(device_id: str, token: str = INTERNAL_TOKEN) -> dict[str, str]:
    """What the gateway sends on a proxied request of an authenticated device."""
    return {**internal_headers(token, service=False), "X-Device-Id": device_id}


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the test process dies (no orphans)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_child(process: subprocess.Popen, sig: int, timeout_s: float) -> int:
    """Send ``sig`` to a child still running, give it ``timeout_s`` to exit, then SIGKILL; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(size: int, first: int = 23000, last: int = 60000) -> int:
    """The first of ``size`` consecutive TCP ports on 127.0.0.1 in [first, last) that nothing listens on right now."""
    for base in range(first, last - size, 97):
        try:
            sockets = []
            for offset in range(size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports")


def wait_http_ok(url: str, timeout_s: float = 30.0, is_alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"server for {url} exited while starting")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s ({last_error})")


class Loopback:
    """A server on 127.0.0.1 at ``port``: its HTTP and WebSocket base URLs."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class ThreadedServer(Loopback):
    """A uvicorn server for ``app`` in a background thread with its own event loop.

    Use it as a context manager, or ``start()``/``stop()``; ``restart()`` serves again on the same port.
    """

    def __init__(self, app: Any, port: int | None = None, **uvicorn_options: Any) -> None:
        self.app = app
        self.port = port or free_port()
        self.options = {"loop": "uvloop", "http": "httptools", "log_level": "warning", **uvicorn_options}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ThreadedServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, **self.options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=20)
            self._server = None
            self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServiceProcess(Loopback):
    """``python -m sonalyze serve NAME`` in a child process on a free port, as in production.

    Its output goes to a log file (``log_text()``) that tests print when something fails.
    """

    def __init__(self, service: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        from sonalyze.services import SERVICES

        self.spec = SERVICES[service]
        self.port = port or free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "INTERNAL_AUTH_TOKEN": INTERNAL_TOKEN, **(env or {})}
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"sonalyze-{service}-", suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 60.0) -> "ServiceProcess":
        self.spawn()
        return self.wait_started(timeout_s)

    def spawn(self) -> None:
        """Start the process without waiting for it. The calling thread is its parent: the child is stopped
        when that thread ends (PR_SET_PDEATHSIG), so spawn from the thread that outlives it."""
        command = [sys.executable, "-m", "sonalyze", "serve", self.spec.name, "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, env=self.env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )

    def wait_started(self, timeout_s: float = 60.0) -> "ServiceProcess":
        """Wait until the spawned process answers its health path (any thread may wait)."""
        assert self.process is not None
        try:
            wait_http_ok(self.url + self.spec.health_path, timeout_s, is_alive=lambda: self.process.poll() is None)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{self.spec.name} did not start: {exc}\n--- log ---\n{self.log_text()}") from exc
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.process is None:
            return None
        code = stop_child(self.process, sig, timeout_s)
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.01) -> None:
    """Poll ``predicate`` from async code until it is true or the time is up (then AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


class Backend:
    """The whole backend as ``sonalyze serve`` starts it (five processes), on a free block of ports with
    the data folder ``data_dir``; ``extra_args`` are more ``serve`` options (``--https``). Its output goes
    to ``data_dir/serve.log`` (``log_text()``); ``stop()`` sends SIGINT, as Ctrl-C does."""

    def __init__(self, data_dir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        from sonalyze.services import SERVICES

        self.data_dir = data_dir
        self.base_port = free_port_block(len(SERVICES) + 1)  # + the gateway's loopback port under --https
        self.extra_args = extra_args
        self.env = {key: value for key, value in os.environ.items() if key != "INTERNAL_AUTH_TOKEN"}
        self.env |= {"PYTHONUNBUFFERED": "1", "HTTP_TIMEOUT_SECONDS": "120", "RATE_LIMIT_RPS": "200", "RATE_LIMIT_BURST": "400"}
        self.env |= env or {}
        self.log_path = data_dir / "serve.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gateway (the app at ``/``): ``https://`` when it says it serves TLS."""
        scheme = "https" if "  gateway      https://" in self.log_text() else "http"
        return f"{scheme}://127.0.0.1:{self.base_port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    def start(self, timeout_s: float = 120.0) -> "Backend":
        command = [
            sys.executable, "-m", "sonalyze", "serve", "--host", "127.0.0.1", "--base-port", str(self.base_port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + timeout_s
        while "Sonalyze is running" not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sonalyze serve did not start:\n{self.log_text()}")
            time.sleep(0.2)
        return self

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.process is None:
            return None
        code = stop_child(self.process, signal.SIGINT, timeout_s)
        self.process = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Backend":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ServiceHttp:
    """``httpx.get``/``post``/``request`` sending the service headers: a test calling a service as a service."""

    @staticmethod
    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**SERVICE_HEADERS, **(kwargs.pop("headers", None) or {})}
        return httpx.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


service_http = _ServiceHttp()
