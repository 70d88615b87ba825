"""The gateway serves the browser app: ``/``, ``/join/{code}``, ``/assets/...`` with entity tags, gzip and
security headers, while ``/ws``, ``/v1``, ``/internal``, ``/healthz``, ``/readyz`` and ``/metrics`` stay as they were.

A real gateway on loopback (uvicorn, the gateway's WebSocket protocol); expected bytes, hashes and
decompression come from the files on disk and Python's own ``gzip``/``hashlib``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from sonalyze.gateway.config import GatewaySettings
from sonalyze.gateway.main import WS_PROTOCOL, create_app
from tests.support.servers import ThreadedServer, free_port

APP_DIR = Path(__file__).resolve().parents[2] / "src" / "sonalyze" / "webapp"
TOKEN = "webapp-test-token"


def _assets() -> list[str]:
    return sorted(
        path.relative_to(APP_DIR).as_posix()
        for path in APP_DIR.rglob("*")
        if path.is_file() and path.name != "index.html" and not any(p.startswith(".") for p in path.relative_to(APP_DIR).parts)
    )


@pytest.fixture(scope="module")
def gateway() -> Iterator[ThreadedServer]:
    dead = f"http://127.0.0.1:{free_port()}"  # no upstream: /v1 answers come from the proxy itself
    settings = GatewaySettings(
        lobby_url=dead, measurement_url=dead, simulation_url=dead, internal_auth_token=TOKEN, http_timeout_seconds=2.0
    )
    server = ThreadedServer(create_app(settings), ws=WS_PROTOCOL).start()
    yield server
    server.stop()


def _raw_get(url: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (httpx would otherwise undo the gzip)."""
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers={"accept-encoding": "identity", **headers}) as response:
        return response, b"".join(response.iter_raw())


def _etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _assert_app_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in csp.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "blob:" in directives["script-src"]  # AudioWorklet modules may come from a blob: URL
    assert directives["frame-ancestors"] == ["'none'"]
    assert "microphone=(self)" in response.headers["permissions-policy"].split(", ")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize("path", ["/", "/join/4HXJEQ", "/join/abc-12_x"])
def test_index_at_root_and_join_links(gateway, path):
    index = (APP_DIR / "index.html").read_bytes()
    response, body = _raw_get(gateway.url + path)
    assert response.status_code == 200
    assert body == index
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "content-encoding" not in response.headers
    assert response.headers["etag"] == _etag_of(index)
    _assert_app_headers(response)


@pytest.mark.parametrize("path", ["/join/", "/join/ABC/extra", "/join/" + "A" * 65, "/join/AB%20CD", "/assets/index.html", "/assets/nope.js", "/assets/../pyproject.toml", "/assets/%2e%2e/cli.py", "/nothing"])
def test_unknown_paths_are_404_with_the_error_body(gateway, path):
    response = httpx.get(gateway.url + path, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_every_asset_is_served_with_its_type(gateway):
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
    for name in _assets():
        response, body = _raw_get(f"{gateway.url}/assets/{name}")
        assert response.status_code == 200, name
        assert body == (APP_DIR / name).read_bytes(), name
        assert response.headers["etag"] == _etag_of(body), name
        suffix = Path(name).suffix
        if suffix in types:
            assert response.headers["content-type"] == types[suffix], name
        _assert_app_headers(response)


def test_gzip_when_accepted_and_only_then(gateway):
    index = (APP_DIR / "index.html").read_bytes()
    for accept in ("gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*"):
        response, body = _raw_get(gateway.url + "/", **{"accept-encoding": accept})
        assert response.headers["content-encoding"] == "gzip", accept
        assert gzip.decompress(body) == index, accept
        assert int(response.headers["content-length"]) == len(body) < len(index)
        assert response.headers["etag"] == _etag_of(index)[:-1] + '-gzip"'
    for accept in ("identity", "gzip;q=0", "br", "*;q=0", "deflate, *;q=0.5, gzip;q=0"):
        response, body = _raw_get(gateway.url + "/", **{"accept-encoding": accept})
        assert "content-encoding" not in response.headers, accept
        assert body == index, accept


def test_if_none_match_revalidates_without_a_body(gateway):
    index = (APP_DIR / "index.html").read_bytes()
    tag = _etag_of(index)
    response, body = _raw_get(gateway.url + "/join/4HXJEQ", **{"if-none-match": tag})
    assert response.status_code == 304 and body == b""
    assert response.headers["etag"] == tag
    response, body = _raw_get(gateway.url + "/", **{"if-none-match": f'"other", W/{tag}'})
    assert response.status_code == 304 and body == b""
    gz_tag = tag[:-1] + '-gzip"'
    response, body = _raw_get(gateway.url + "/", **{"if-none-match": gz_tag, "accept-encoding": "gzip"})
    assert response.status_code == 304 and body == b""
    response, body = _raw_get(gateway.url + "/", **{"if-none-match": gz_tag})  # identity wanted: another representation
    assert response.status_code == 200 and body == index
    response, body = _raw_get(gateway.url + "/", **{"if-none-match": '"stale"'})
    assert response.status_code == 200 and body == index


def test_head_has_the_headers_and_no_body(gateway):
    index = (APP_DIR / "index.html").read_bytes()
    response = httpx.head(gateway.url + "/", headers={"accept-encoding": "identity"}, timeout=10)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(index)
    assert response.headers["etag"] == _etag_of(index)


def test_gateway_routes_keep_precedence(gateway):
    health = httpx.get(gateway.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "content-security-policy" not in health.headers
    assert httpx.get(gateway.url + "/readyz", timeout=10).json()["status"] == "ready"
    metrics = httpx.get(gateway.url + "/metrics", headers={"accept-encoding": "gzip", "x-internal-token": TOKEN}, timeout=10)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "content-encoding" not in metrics.headers  # only the app's files are compressed
    internal = httpx.post(gateway.url + "/internal/broadcast", json={}, timeout=10)
    assert internal.status_code == 401
    proxied = httpx.get(gateway.url + "/v1/jobs/x", headers={"accept-encoding": "gzip"}, timeout=10)
    assert proxied.status_code == 502 and proxied.json()["error"]["code"] == "upstream_unavailable"
    assert "content-encoding" not in proxied.headers


async def test_websocket_is_untouched(gateway):
    async with connect(gateway.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"event": "ping", "request_id": 1}))
        answer = json.loads(await ws.recv())
    assert answer["type"] == "response" and answer["event"] == "pong" and answer["request_id"] == 1


@pytest.mark.slow
def test_the_built_package_carries_the_app(tmp_path):
    """A wheel built from the project holds every file of src/sonalyze/webapp (package data), subfolders too."""
    import shutil
    import subprocess
    import sys
    import zipfile

    project = tmp_path / "project"
    shutil.copytree(APP_DIR.parents[2] / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(APP_DIR.parents[2] / name, project / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(project)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("sonalyze-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"sonalyze/webapp/index.html", *(f"sonalyze/webapp/{name}" for name in _assets())}
    assert expected <= names, sorted(expected - names)
