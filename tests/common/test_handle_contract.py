"""The upstream contract (``POST /gateway/handle``) and the error edge, over a real uvicorn server."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from sonalyze.common.errors import Busy, Conflict, install_error_handlers
from sonalyze.common.handle import EventContext, EventHandlers
from tests.support.servers import ThreadedServer


class _Greeting(BaseModel):
    name: str


def _app() -> FastAPI:
    handlers = EventHandlers()

    @handlers.on("demo.greet")
    async def greet(ctx: EventContext) -> dict:
        body = ctx.parse(_Greeting)
        return {"hello": body.name, "device_id": ctx.require_device(), "request_id": ctx.request_id}

    @handlers.on("demo.refuse")
    async def refuse(ctx: EventContext) -> dict:
        raise Conflict("already done", details={"why": "test"})

    @handlers.on("demo.busy")
    async def busy(ctx: EventContext) -> dict:
        raise Busy("all workers are busy", headers={"Retry-After": "3"})

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(handlers.router())

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"item_id": item_id}

    return app


def test_handle_contract_data_and_errors():
    with ThreadedServer(_app()) as server, httpx.Client(base_url=server.url) as http:
        ok = http.post("/gateway/handle", json={"event": "demo.greet", "data": {"name": "ada"}, "device_id": "d1", "request_id": "r1"})
        assert ok.status_code == 200
        assert ok.json() == {"data": {"hello": "ada", "device_id": "d1", "request_id": "r1"}}

        bad = http.post("/gateway/handle", json={"event": "demo.greet", "data": {}, "device_id": "d1"})
        assert bad.status_code == 200
        assert bad.json()["error"]["code"] == "bad_request"
        assert bad.json()["error"]["details"]["errors"][0]["field"] == "name"

        anonymous = http.post("/gateway/handle", json={"event": "demo.greet", "data": {"name": "x"}})
        assert anonymous.json()["error"]["code"] == "bad_request"

        refused = http.post("/gateway/handle", json={"event": "demo.refuse"})
        assert refused.json() == {"error": {"code": "conflict", "message": "already done", "details": {"why": "test"}}}

        busy = http.post("/gateway/handle", json={"event": "demo.busy"})
        assert busy.json() == {"error": {"code": "busy", "message": "all workers are busy", "details": {"retry_after_s": 3.0}}}

        unknown = http.post("/gateway/handle", json={"event": "demo.nothing"})
        assert unknown.json()["error"]["code"] == "unknown_event"


def test_http_errors_have_stable_codes():
    with ThreadedServer(_app()) as server, httpx.Client(base_url=server.url) as http:
        invalid = http.get("/items/not-a-number")
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "validation_error"
        assert "item_id" in invalid.json()["error"]["message"]

        missing = http.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

        malformed = http.post("/gateway/handle", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "validation_error"
