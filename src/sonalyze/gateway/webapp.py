"""The browser app (``src/sonalyze/webapp/``) served by the gateway: ``/``, ``/join/{code}``, ``/assets/...``.

The files are read once when the gateway starts and kept in memory with their gzip encoding (RFC 9112
§7.2) and a strong entity tag from their SHA-256 (RFC 9110 §8.8.3), so a request is a dictionary lookup.
The file names are not content-hashed (build-free ES modules import each other by name), so every
response is ``Cache-Control: no-cache``: the browser keeps the file and revalidates it with
``If-None-Match``, answered ``304`` without a body when it has not changed (RFC 9111 §5.2.2.4).

The routes are appended after the gateway's own (``/healthz``, ``/readyz``, ``/metrics``, ``/v1``), and
``/internal/*`` and ``WS /ws`` never reach FastAPI, so none of those pay anything for the app.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import Response

from sonalyze.common.errors import NotFound

WEBAPP_DIR = Path(__file__).resolve().parents[1] / "webapp"
INDEX = "index.html"
ASSETS_PREFIX = "/assets/"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' blob:",  # blob: for an AudioWorklet module built in the page
        "worker-src 'self' blob:",
        "style-src 'self'",
        "img-src 'self' data: blob:",  # QR codes and plots drawn to data:/blob: URLs
        "media-src 'self' data: blob:",
        "connect-src 'self'",  # CSP Level 3: 'self' includes ws:/wss: to this host
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "permissions-policy": "microphone=(self), camera=(self), screen-wake-lock=(self), geolocation=(), payment=(), usb=()",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # a /join/{code} URL must not leak to other sites
    "cross-origin-opener-policy": "same-origin",
    "x-frame-options": "DENY",
}
_JOIN_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class StaticFile:
    """One file of the app in memory: its bytes, their gzip encoding when smaller, and entity tags."""

    content_type: str
    body: bytes
    etag: str
    gzip_body: bytes | None
    gzip_etag: str

    @classmethod
    def load(cls, path: Path) -> StaticFile:
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        compressed = gzip.compress(body, compresslevel=9, mtime=0)
        return cls(
            content_type=_CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            body=body,
            etag=f'"{digest}"',
            gzip_body=compressed if len(compressed) < len(body) else None,
            gzip_etag=f'"{digest}-gzip"',  # another representation, another strong tag (RFC 9110 §8.8.3)
        )


def load_files(folder: Path = WEBAPP_DIR) -> dict[str, StaticFile]:
    """Every regular file under ``folder`` by its path relative to it (POSIX separators); hidden ones skipped."""
    files: dict[str, StaticFile] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = StaticFile.load(path)
    return files


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` (RFC 9110 §12.5.3) allows gzip: listed (or ``*``) with a non-zero q."""
    if not accept_encoding:
        return False
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[coding.strip().lower()] = weight
    if "gzip" in weights:
        return weights["gzip"] > 0
    if "x-gzip" in weights:
        return weights["x-gzip"] > 0
    return weights.get("*", 0.0) > 0


def _none_match(header: str | None, etag: str) -> bool:
    """``If-None-Match`` matches ``etag`` by weak comparison (RFC 9110 §13.1.2)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def file_response(request: Request, file: StaticFile) -> Response:
    """The file (gzip when the client accepts it), or ``304`` when the client's copy is current."""
    use_gzip = file.gzip_body is not None and accepts_gzip(request.headers.get("accept-encoding"))
    etag = file.gzip_etag if use_gzip else file.etag
    headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": etag, "vary": "Accept-Encoding"}
    if _none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if use_gzip:
        headers["content-encoding"] = "gzip"
    return Response(file.gzip_body if use_gzip else file.body, headers=headers, media_type=file.content_type)


def mount_webapp(app: FastAPI, folder: Path = WEBAPP_DIR) -> None:
    """Add the app's routes after every route ``app`` already has (so those keep precedence)."""
    files = load_files(folder)
    index = files.pop(INDEX, None)
    if index is None:
        return  # a gateway installed without the app (or a split deployment serving it elsewhere)

    async def index_page(request: Request) -> Response:
        return file_response(request, index)

    async def join_page(request: Request) -> Response:
        if _JOIN_CODE.fullmatch(request.path_params["code"]) is None:
            raise NotFound("a join link is /join/ followed by the lobby's code")
        return file_response(request, index)

    async def asset(request: Request) -> Response:
        file = files.get(request.path_params["path"])
        if file is None:
            raise NotFound(f"no file {request.url.path}")
        return file_response(request, file)

    app.add_route("/", index_page, methods=["GET"], include_in_schema=False)
    app.add_route("/join/{code}", join_page, methods=["GET"], include_in_schema=False)
    app.add_route(ASSETS_PREFIX + "{path:path}", asset, methods=["GET"], include_in_schema=False)
