"""One error tree for every service, translated once at the edge.

Each error carries a stable machine-readable ``code``, a human ``message``, optional ``details`` and the
HTTP status it maps to. Over HTTP it becomes ``{"error": {"code", "message", "details"?}}`` with that
status; through ``POST /gateway/handle`` it becomes the same body with status 200, and the gateway turns
it into an ``error`` envelope for the client.

    SonalyzeError (500, internal_error)
    ├── BadRequest (400, bad_request)
    ├── Unauthorized (401, unauthorized)
    ├── Forbidden (403, forbidden)
    ├── NotFound (404, not_found)
    ├── Conflict (409, conflict)
    ├── PayloadTooLarge (413, payload_too_large)
    ├── Unprocessable (422, validation_error)
    ├── RateLimited (429, rate_limited)
    ├── UpstreamUnavailable (502, upstream_unavailable)
    ├── UpstreamError (502, upstream_error)
    ├── Busy (503, busy)
    └── UpstreamTimeout (504, upstream_timeout)
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sonalyze.common.json import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class SonalyzeError(Exception):
    """Base of every error a Sonalyze service reports to a client."""

    code = "internal_error"
    status_code = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details
        self.headers = headers

    def to_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class BadRequest(SonalyzeError):
    code, status_code = "bad_request", 400


class Unauthorized(SonalyzeError):
    code, status_code = "unauthorized", 401


class Forbidden(SonalyzeError):
    code, status_code = "forbidden", 403


class NotFound(SonalyzeError):
    code, status_code = "not_found", 404


class Conflict(SonalyzeError):
    code, status_code = "conflict", 409


class PayloadTooLarge(SonalyzeError):
    code, status_code = "payload_too_large", 413


class Unprocessable(SonalyzeError):
    code, status_code = "validation_error", 422


class RateLimited(SonalyzeError):
    code, status_code = "rate_limited", 429

    @classmethod
    def retry_after(cls, message: str, retry_after_s: float) -> RateLimited:
        """429 with ``details.retry_after_s`` (to the millisecond) and ``Retry-After`` in whole seconds,
        rounded up, at least 1 (RFC 9110 §10.2.3)."""
        return cls(
            message, details={"retry_after_s": round(retry_after_s, 3)}, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        )


class UpstreamUnavailable(SonalyzeError):
    code, status_code = "upstream_unavailable", 502


class UpstreamError(SonalyzeError):
    code, status_code = "upstream_error", 502


class Busy(SonalyzeError):
    code, status_code = "busy", 503


class UpstreamTimeout(SonalyzeError):
    code, status_code = "upstream_timeout", 504


_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "busy",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def validation_details(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """Pydantic errors as ``{"errors": [{"field": "a.b", "message": ...}]}`` (JSON-safe)."""
    return {
        "errors": [
            {"field": ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)), "message": err.get("msg", "")}
            for err in errors
        ]
    }


def validation_message(errors: list[dict[str, Any]]) -> str:
    """A one-line human summary of pydantic errors: ``field: reason; field: reason``."""
    parts = []
    for item in validation_details(errors)["errors"][:5]:
        parts.append(f"{item['field']}: {item['message']}" if item["field"] else item["message"])
    return "; ".join(parts) or "invalid request"


def from_validation_error(exc: ValidationError, error_class: type[SonalyzeError] = Unprocessable) -> SonalyzeError:
    """A pydantic validation failure as our error, naming each field (422 ``validation_error`` by default)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return error_class(validation_message(errors), details=validation_details(errors))


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the ``{"error": {...}}`` body with its status, once, at the edge."""

    @app.exception_handler(SonalyzeError)
    async def _sonalyze_error(_: Request, exc: SonalyzeError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        body = error_body("validation_error", validation_message(errors), validation_details(errors))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)
