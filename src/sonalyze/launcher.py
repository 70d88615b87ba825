"""``sonalyze serve`` with several services: one child process each, wired together, stopped together.

Every service runs as ``python -m sonalyze serve NAME`` in its own process, exactly as it would in a
split deployment, so the HTTP contracts between them are the real ones. The launcher gives them the
embedded defaults (SQLite files and a data folder under one directory), the URLs of each other and one
generated internal token. ``SONALYZE_<SERVICE>_<VAR>`` in the environment is passed to that service
alone as ``<VAR>`` (for example ``SONALYZE_STORAGE_DATABASE_URL``), for split deployments.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from sonalyze.common.logging import LogFormat, log_format
from sonalyze.services import SERVICES, ServiceSpec
from sonalyze.tls import TlsFiles, https_banner, lan_ipv4_addresses, lan_urls

INTERNAL_HOST = "127.0.0.1"
TLS_ENVIRONMENT = ("SONALYZE_HTTPS", "SONALYZE_TLS_CERT", "SONALYZE_TLS_KEY")
"""Read by this command only: the gateway child is given its certificate in its arguments."""


@dataclass
class _Child:
    spec: ServiceSpec
    host: str
    port: int
    process: subprocess.Popen
    internal_port: int | None = None
    """The gateway's plain loopback listener when it serves TLS on ``port``."""

    @property
    def url(self) -> str:
        if self.internal_port is not None:
            return f"http://{INTERNAL_HOST}:{self.internal_port}"
        host = INTERNAL_HOST if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def device_token_secret(data_dir: Path) -> str:
    """The gateway's DEVICE_TOKEN_SECRET, generated once into ``<data-dir>/device_token_secret`` (0600), so
    device credentials survive restarts."""
    path = data_dir / "device_token_secret"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


def service_environment(
    names: Sequence[str],
    *,
    data_dir: Path,
    ports: dict[str, int],
    token: str,
    base_env: dict[str, str],
    log_format: LogFormat | None = None,
) -> dict[str, dict[str, str]]:
    """The environment of each child: wiring (with ``LOG_FORMAT`` when given) and embedded defaults, then
    per-service overrides."""
    urls = {name: f"http://{INTERNAL_HOST}:{port}" for name, port in ports.items()}
    wiring = {
        "GATEWAY_URL": urls["gateway"],
        "LOBBY_URL": urls["lobby"],
        "MEASUREMENT_URL": urls["measurement"],
        "SIMULATION_URL": urls["simulation"],
        "STORAGE_URL": urls["storage"],
        "INTERNAL_AUTH_TOKEN": token,
        **({"LOG_FORMAT": log_format} if log_format is not None else {}),
    }
    defaults = {
        "lobby": {"DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'lobby.db'}"},
        "measurement": {
            "MEASUREMENT_DATA_DIR": str(data_dir / "measurement"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'measurement.db'}",
        },
        "simulation": {
            "SIMULATION_DATA_DIR": str(data_dir / "simulation"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'simulation.db'}",
        },
        "storage": {"DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'storage.db'}"},
    }
    envs: dict[str, dict[str, str]] = {}
    for name in names:
        prefix = f"SONALYZE_{name.upper()}_"
        overrides = {key[len(prefix):]: value for key, value in base_env.items() if key.startswith(prefix)}
        envs[name] = {**base_env, **wiring, **defaults.get(name, {}), **overrides, "SERVICE_NAME": name}
    return envs


def _wait_healthy(child: _Child, deadline: float) -> None:
    url = child.url + child.spec.health_path
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.spec.name} exited with code {child.process.returncode} while starting")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.spec.name} did not answer {url} in time")


def _stop_all(children: list[_Child], timeout_s: float = 15.0) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run_services(
    names: Sequence[str],
    *,
    public_host: str,
    base_port: int,
    data_dir: Path,
    startup_timeout_s: float = 60.0,
    tls: TlsFiles | None = None,
) -> int:
    """Start ``names``, print where each listens, and wait until Ctrl-C or one of them dies.

    With ``tls`` the gateway serves HTTPS on its port, and plain HTTP on loopback at the port after the
    last service's for the services' pushes; the LAN URLs and a QR code are printed."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: base_port + index for index, name in enumerate(SERVICES)}
    internal_port = base_port + len(SERVICES) if tls is not None else None
    token = os.environ.get("INTERNAL_AUTH_TOKEN") or secrets.token_urlsafe(32)
    base_env = {key: value for key, value in os.environ.items() if key not in TLS_ENVIRONMENT}
    wiring_ports = {**ports, "gateway": internal_port} if internal_port is not None else ports
    # The log format is decided here, on the terminal a person watches: a child's stderr may be a pipe.
    envs = service_environment(names, data_dir=data_dir, ports=wiring_ports, token=token, base_env=base_env, log_format=log_format())
    if "gateway" in envs and not envs["gateway"].get("DEVICE_TOKEN_SECRET"):
        envs["gateway"]["DEVICE_TOKEN_SECRET"] = device_token_secret(data_dir)
    children: list[_Child] = []
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name in names:
            spec = SERVICES[name]
            # Only the gateway faces the phones; the services behind it listen on loopback.
            host = public_host if name == "gateway" else INTERNAL_HOST
            command = [sys.executable, "-m", "sonalyze", "serve", name, "--host", host, "--port", str(ports[name])]
            child_internal_port = internal_port if name == "gateway" else None
            if tls is not None and name == "gateway":
                command += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--internal-port", str(internal_port)]
            process = subprocess.Popen(command, env=envs[name], start_new_session=True)
            children.append(_Child(spec, host, ports[name], process, child_internal_port))
        deadline = time.monotonic() + startup_timeout_s
        for child in children:
            _wait_healthy(child, deadline)
        print(f"Sonalyze is running (data in {data_dir}):", flush=True)
        for child in children:
            scheme = "https" if child.internal_port is not None else "http"
            print(f"  {child.spec.name:<12} {scheme}://{child.host}:{child.port}  (health {child.spec.health_path})")
        gateway = next((child for child in children if child.internal_port is not None), None)
        if gateway is not None:
            print(https_banner(lan_urls(public_host, gateway.port, lan_ipv4_addresses())), flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested:
            for child in children:
                if child.process.poll() is not None:
                    print(f"{child.spec.name} exited with code {child.process.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"sonalyze: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_all(children)
        print("Sonalyze stopped.", flush=True)
