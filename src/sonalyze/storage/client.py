"""The one small client every writer uses to reach the storage service.

    async with StorageClient(settings.storage_url) as storage:
        await storage.put("lobbies", {"id": lobby_id, "code": "K7QP", "status": "open"})
        page = await storage.list("participants", lobby_id=lobby_id, limit=100)

Records always travel with their client-supplied ``id``; ``put`` is create-or-replace and so safe to
repeat. Errors: :class:`StorageUnavailable` (storage could not be reached or timed out) and
:class:`StorageError` (storage answered with an error status; ``retryable`` says whether trying again
later can help).
"""

from __future__ import annotations

from typing import Any

import httpx

from sonalyze.common.errors import UpstreamError, UpstreamUnavailable
from sonalyze.common.replicas import Replicas, request_any
from sonalyze.common.json import dumps, loads
from sonalyze.storage.resources import RESOURCES

Record = dict[str, Any]
_RETRYABLE_STATUSES = frozenset({408, 429})
_RETRYABLE_CODES = frozenset({"missing_reference"})
"""A parent written by another writer (or still in an outbox) may arrive later."""


class StorageUnavailable(UpstreamUnavailable):
    """Storage did not answer (connection refused, reset, timeout); always worth retrying."""

    retryable = True


class StorageError(UpstreamError):
    """Storage answered with an error: ``storage_status``, ``storage_code`` and its message/details."""

    def __init__(self, *, status: int, code: str, message: str, details: dict[str, Any] | None) -> None:
        super().__init__(
            f"storage answered {status} {code}: {message}",
            details={"status": status, "code": code, **({"details": details} if details else {})},
        )
        self.storage_status = status
        self.storage_code = code
        self.storage_details = details

    @property
    def retryable(self) -> bool:
        return self.storage_status >= 500 or self.storage_status in _RETRYABLE_STATUSES or self.storage_code in _RETRYABLE_CODES


def check_resource(resource: str) -> str:
    if resource not in RESOURCES:
        raise ValueError(f"unknown storage resource {resource!r}; one of {', '.join(RESOURCES)}")
    return resource


def record_id_of(record: Record) -> str:
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("a record sent to storage needs its client-supplied string 'id'")
    return record_id


class StorageClient:
    """Async HTTP client of the storage service (``/v1/{resource}``); ``transport`` is for tests."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.replicas = Replicas(base_url, ready_path="/healthz")
        """``base_url`` may name several replicas, comma-separated (`sonalyze.common.replicas`; storage's
        readiness is its ``/healthz``: 503 when its database does not answer)."""
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout_s,
            headers={"content-type": "application/json", **(headers or {})},
        )

    async def __aenter__(self) -> StorageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.replicas.aclose()
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        content = dumps(body) if body is not None else None
        try:
            response = await request_any(self._http, self.replicas, method, path, content=content, params=params)
        except httpx.TimeoutException as exc:
            raise StorageUnavailable(f"storage did not answer {method} {path} in time") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailable(f"storage unreachable for {method} {path}: {exc!r}") from exc
        if response.status_code == 204:
            return None
        try:
            payload = loads(response.content) if response.content else None
        except ValueError:
            payload = None
        if response.is_success:
            return payload
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise StorageError(
            status=response.status_code,
            code=str(error.get("code", "http_error")),
            message=str(error.get("message", response.reason_phrase)),
            details=error.get("details"),
        )

    async def create(self, resource: str, record: Record) -> Record:
        """``POST``: store a new record (an ``id`` is generated when absent); the same again is a no-op."""
        return await self._request("POST", f"/v1/{check_resource(resource)}", body=record)

    async def put(self, resource: str, record: Record) -> Record:
        """``PUT /{id}``: create or replace the record with ``record["id"]``; repeating it is harmless."""
        record_id = record_id_of(record)
        return await self._request("PUT", f"/v1/{check_resource(resource)}/{record_id}", body=record)

    async def get(self, resource: str, record_id: str) -> Record:
        return await self._request("GET", f"/v1/{check_resource(resource)}/{record_id}")

    async def update(self, resource: str, record_id: str, changes: Record) -> Record:
        """``PATCH``: change only the fields in ``changes``."""
        return await self._request("PATCH", f"/v1/{check_resource(resource)}/{record_id}", body=changes)

    async def delete(self, resource: str, record_id: str) -> None:
        await self._request("DELETE", f"/v1/{check_resource(resource)}/{record_id}")

    async def list(self, resource: str, *, limit: int = 50, offset: int = 0, **filters: str) -> dict[str, Any]:
        """One page ``{"items", "limit", "offset", "next_offset"}``; filters are parent ids (``lobby_id=...``)."""
        params = {"limit": limit, "offset": offset, **filters}
        return await self._request("GET", f"/v1/{check_resource(resource)}", params=params)

    async def lobby_by_code(self, code: str) -> Record:
        return await self._request("GET", f"/v1/lobbies/by-code/{code}")

    async def healthy(self) -> bool:
        """Some replica answers ``/healthz`` with 200."""
        try:
            response = await request_any(self._http, self.replicas, "GET", "/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200
