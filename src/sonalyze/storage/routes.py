"""The HTTP surface: one router per resource from :func:`resource_router`, plus ``/healthz``.

This module avoids ``from __future__ import annotations``: FastAPI reads the per-resource types
(``resource.list_query``) from the signatures of the functions built in the factory.
"""

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ValidationError

from sonalyze.common.errors import Unprocessable, error_body, from_validation_error
from sonalyze.common.json import JSONResponse, loads
from sonalyze.storage import records
from sonalyze.storage.db import StorageDatabase
from sonalyze.storage.records import WriteOutcome
from sonalyze.storage.resources import RESOURCES, Resource
from sonalyze.storage.schemas import Page, RecordId

ModelT = TypeVar("ModelT", bound=BaseModel)

_ERRORS = {
    404: {"description": "no such record (`not_found`)"},
    409: {"description": "another record holds this id or unique key (`conflict`)"},
    413: {"description": "body larger than STORAGE_MAX_BODY_MB (`payload_too_large`)"},
    422: {"description": "invalid body or query (`validation_error`), unknown parent (`missing_reference`)"},
}


def _database(request: Request) -> StorageDatabase:
    return request.app.state.database


async def _parse_body(request: Request, model: type[ModelT]) -> ModelT:
    """Parse strictly (orjson: NaN, Infinity and out-of-range numbers refused) and validate; failures are 422."""
    raw = await request.body()
    try:
        data = loads(raw)
    except ValueError as exc:
        raise Unprocessable(f"body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    return {"requestBody": schema}


def _values(resource: Resource, body: BaseModel) -> dict[str, Any]:
    """The validated fields as they are (``model_dump`` would copy every payload once more)."""
    return {field: getattr(body, field) for field in resource.fields}


def _written(row: dict[str, Any], outcome: WriteOutcome) -> JSONResponse:
    return JSONResponse(row, status_code=201 if outcome is WriteOutcome.CREATED else 200)


def resource_router(resource: Resource) -> APIRouter:
    """``/v1/{name}``: POST, GET (list), and GET/PUT/PATCH/DELETE of ``/{record_id}``."""
    router = APIRouter(prefix=f"/v1/{resource.name}", tags=[resource.name], responses=_ERRORS)
    name = resource.name

    @router.post(
        "",
        name=f"create_{name}",
        status_code=201,
        response_model=resource.public,
        openapi_extra=_body_doc(resource.create),
        summary=f"Create a {name} record (201), or replay the same one idempotently (200)",
    )
    async def create(request: Request) -> Response:
        body = await _parse_body(request, resource.create)
        record_id = records.new_record_id(body.id)
        row, outcome = await records.write(
            _database(request), resource=resource, record_id=record_id, values=_values(resource, body), replace=False
        )
        return _written(row, outcome)

    @router.get("", name=f"list_{name}", response_model=Page, summary=f"A page of {name}, filtered by parent")
    async def list_records(request: Request, query: Annotated[resource.list_query, Query()]) -> Response:
        filters = query.model_dump(exclude={"limit", "offset"}, exclude_none=True)
        page = await records.list_page(
            _database(request), resource=resource, filters=filters, limit=query.limit, offset=query.offset
        )
        return JSONResponse(page)

    @router.get("/{record_id}", name=f"get_{name}", response_model=resource.public)
    async def get(request: Request, record_id: RecordId) -> Response:
        return JSONResponse(await records.read(_database(request), resource=resource, record_id=record_id))

    @router.put(
        "/{record_id}",
        name=f"put_{name}",
        response_model=resource.public,
        openapi_extra=_body_doc(resource.create),
        summary=f"Create (201) or replace (200) the {name} record with this id; the writers' outbox uses it",
    )
    async def put(request: Request, record_id: RecordId) -> Response:
        body = await _parse_body(request, resource.create)
        if body.id not in (None, record_id):
            raise Unprocessable(f"body id {body.id!r} differs from the path id {record_id!r}", details={"field": "id"})
        row, outcome = await records.write(
            _database(request), resource=resource, record_id=record_id, values=_values(resource, body), replace=True
        )
        return _written(row, outcome)

    @router.patch(
        "/{record_id}", name=f"patch_{name}", response_model=resource.public, openapi_extra=_body_doc(resource.update)
    )
    async def patch(request: Request, record_id: RecordId) -> Response:
        body = await _parse_body(request, resource.update)
        changes = body.model_dump(exclude_unset=True)
        database = _database(request)
        if not changes:
            return JSONResponse(await records.read(database, resource=resource, record_id=record_id))
        return JSONResponse(await records.patch(database, resource=resource, record_id=record_id, changes=changes))

    @router.delete("/{record_id}", name=f"delete_{name}", status_code=204)
    async def delete(request: Request, record_id: RecordId) -> Response:
        await records.remove(_database(request), resource=resource, record_id=record_id)
        return Response(status_code=204)

    return router


def lookup_router() -> APIRouter:
    """``/v1/lobbies/by-code/{code}``: the lobby holding a join code now (an open one before closed ones)."""
    router = APIRouter(prefix="/v1", tags=["lobbies"], responses=_ERRORS)
    lobbies = RESOURCES["lobbies"]

    @router.get("/lobbies/by-code/{code}", name="get_lobby_by_code", response_model=lobbies.public)
    async def lobby_by_code(request: Request, code: str) -> Response:
        return JSONResponse(await records.read_lobby_by_code(_database(request), code=code))

    return router


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="200 when the database answers, else 503")
    async def healthz(request: Request) -> Response:
        if await _database(request).reachable():
            return JSONResponse({"status": "ok", "database": "reachable"})
        body = error_body("database_unreachable", "the storage database does not answer")
        return JSONResponse({"status": "unavailable", **body}, status_code=503)

    return router
