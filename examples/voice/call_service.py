"""Seed 002's call service behind the gateway's proxy table: tokens, calls, handoff, RAG, ingest.

Endpoints and shapes as in seed 002 (its errors are FastAPI's ``{"detail": ...}``): ``POST /auth/token``
(``tenant_id`` + ``api_key`` → a 1 h JWT with ``tenant_id``, ``sub``, ``exp``), ``POST /call/start``,
``GET /call/{call_id}``, ``POST /call/{call_id}/end``, ``POST /handoff``, ``POST /rag/query``,
``POST /ingest``, ``GET /health``. Status codes: 400 bad payload, 401 missing/invalid token or API key,
403 another tenant's resource, 404 unknown call, 429 over the tenant's limit (``RATE_LIMIT_REQUESTS`` per
``RATE_LIMIT_WINDOW`` s, counted in Redis under ``ratelimit:{tenant_id}:{window}`` by
``sonalyze.gateway.tenant_limit``, the gateway's own sliding window).

JWTs: ``JWT_ALGORITHM`` HS256 (``JWT_SECRET``) or RS256 (``JWT_PRIVATE_KEY`` signs, ``JWT_PUBLIC_KEY``
verifies, PEM). A call's ``session_token`` adds the claim ``call_id``: the gateway accepts it on
``WS /ws/{call_id}?token=`` for that call only, and this service refuses it as an access token.

Redis: the call ``call:{call_id}`` (JSON) and ``call:{call_id}:active`` (deleted when the call ends, so the
gateway refuses new sockets for it), both with ``CALL_TTL_SEC``; the worker's final transcripts in
``call:{call_id}:transcript``; ingested documents in ``rag:{tenant_id}``. Published channels:
``call.started``, ``call.ended``, ``handoff.requested``, ``ingest.queued`` (JSON).
CORS: ``CORS_ORIGINS`` (comma-separated, ``*`` by default). With ``INTERNAL_AUTH_TOKEN`` set, every
endpoint but ``/health`` needs the gateway's ``X-Internal-Token`` (contract C1: reached through the gateway).

Run: ``PORT=9101 REDIS_URL=redis://127.0.0.1:6379/0 JWT_SECRET=... API_KEYS='{"tenant_123": "secret"}'
PUBLIC_WS_URL=ws://127.0.0.1:8000 python examples/voice/call_service.py``
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import time
import uuid
from typing import Any

import jwt
import orjson
import redis.asyncio as redis
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sonalyze.gateway.tenant_limit import TenantRateLimiter

VERSION = "1.0.0"
WORD = re.compile(r"[a-z0-9]+")


class TokenRequest(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=100)
    api_key: str = Field(min_length=1, max_length=500)


class CallStartRequest(BaseModel):
    """Seed 002's model."""

    tenant_id: str = Field(min_length=1, max_length=100)
    user_id: str | None = None
    language: str = Field("auto", pattern="^(ar|en|auto)$")
    voice_id: str = Field("arabic_gulf_male", min_length=1, max_length=100)
    metadata: dict[str, Any] = Field(default_factory=dict)


class HandoffRequest(BaseModel):
    call_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=200)
    agent_queue: str = Field("general", min_length=1, max_length=100)


class RagQuery(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    tenant_id: str = Field(min_length=1, max_length=100)
    top_k: int = Field(3, ge=1, le=50)
    filters: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=100_000)
    source: str = Field("", max_length=500)
    metadata: dict[str, Any] = Field(default_factory=dict)


def terms(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def relevance(query: str, text: str) -> float:
    """Share of the query's distinct words found in the text (a stand-in for semantic search)."""
    wanted = terms(query)
    return round(len(wanted & terms(text)) / len(wanted), 4) if wanted else 0.0


def create_app(env: dict[str, str]) -> FastAPI:
    algorithm = env.get("JWT_ALGORITHM", "HS256")
    if algorithm == "HS256":
        signing_key = verify_key = env["JWT_SECRET"]
    elif algorithm == "RS256":
        signing_key, verify_key = env["JWT_PRIVATE_KEY"], env["JWT_PUBLIC_KEY"]
    else:
        raise ValueError(f"JWT_ALGORITHM {algorithm!r}: use HS256 or RS256")
    expiry_s = int(env.get("TOKEN_EXPIRY_SEC", "3600"))
    call_ttl_s = int(env.get("CALL_TTL_SEC", "3600"))
    api_keys: dict[str, str] = json.loads(env.get("API_KEYS", "{}"))
    public_ws_url = env.get("PUBLIC_WS_URL", "ws://localhost:8000").rstrip("/")
    internal_token = env.get("INTERNAL_AUTH_TOKEN", "")
    store = redis.Redis.from_url(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    limiter = TenantRateLimiter(
        env.get("REDIS_URL", "redis://127.0.0.1:6379/0"), int(env.get("RATE_LIMIT_REQUESTS", "100")), float(env.get("RATE_LIMIT_WINDOW", "60"))
    )

    app = FastAPI(title="voice call service (seed 002)")
    origins = [origin.strip() for origin in env.get("CORS_ORIGINS", "*").split(",") if origin.strip()]
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["GET", "POST"], allow_headers=["*"])

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """Seed 002 answers an invalid payload with 400 (FastAPI's default would be 422)."""
        details = [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
        return JSONResponse({"detail": details}, status_code=400)

    @app.middleware("http")
    async def from_the_gateway(request: Request, call_next):  # noqa: ANN001, ANN202
        if internal_token and request.url.path != "/health" and request.method != "OPTIONS":
            given = request.headers.get("x-internal-token", "")
            if not hmac.compare_digest(given.encode(), internal_token.encode()):
                return JSONResponse({"detail": "reach this service through the gateway"}, status_code=401)
        return await call_next(request)

    def issue(claims: dict[str, Any]) -> str:
        return jwt.encode({**claims, "exp": int(time.time()) + expiry_s}, signing_key, algorithm=algorithm)

    def token_tenant(request: Request) -> str:
        """The tenant of a valid access token (``Authorization: Bearer``), else 401."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "Missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(token.strip(), verify_key, algorithms=[algorithm], options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise HTTPException(401, "Token has expired", headers={"WWW-Authenticate": "Bearer"}) from None
        except jwt.InvalidTokenError as exc:
            raise HTTPException(401, f"Invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None
        if "call_id" in claims or not isinstance(claims.get("tenant_id"), str):
            raise HTTPException(401, "Not an access token", headers={"WWW-Authenticate": "Bearer"})
        return claims["tenant_id"]

    async def within_limit(tenant_id: str) -> None:
        wait_s = await limiter.take(tenant_id)
        if wait_s:
            raise HTTPException(429, "Rate limit exceeded", headers={"Retry-After": str(max(1, math.ceil(wait_s)))})

    async def admitted(request: Request, body_tenant: str | None = None) -> str:
        """The tenant of the request's access token (401), the body's own tenant if it names one (403),
        within the tenant's limit (429)."""
        tenant_id = token_tenant(request)
        if body_tenant is not None and tenant_id != body_tenant:
            raise HTTPException(403, f"token is for tenant {tenant_id!r}, not {body_tenant!r}")
        await within_limit(tenant_id)
        return tenant_id

    async def load_call(call_id: str, tenant_id: str) -> dict[str, Any]:
        raw = await store.get(f"call:{call_id}")
        call = orjson.loads(raw) if raw is not None else None
        if call is None or call["tenant_id"] != tenant_id:
            raise HTTPException(404, f"Call {call_id} not found")
        return call

    async def publish(channel: str, data: dict[str, Any]) -> None:
        await store.publish(channel, orjson.dumps({**data, "timestamp": time.time()}))

    @app.post("/auth/token")
    async def token(body: TokenRequest) -> dict[str, Any]:
        expected = api_keys.get(body.tenant_id)
        if expected is None or not hmac.compare_digest(expected.encode(), body.api_key.encode()):
            raise HTTPException(401, "Invalid tenant_id or api_key")
        await within_limit(body.tenant_id)
        access_token = issue({"tenant_id": body.tenant_id, "sub": body.tenant_id})
        return {"access_token": access_token, "token_type": "bearer", "expires_in": expiry_s}

    @app.post("/call/start")
    async def start_call(body: CallStartRequest, request: Request) -> dict[str, Any]:
        tenant_id = await admitted(request, body.tenant_id)
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        call = {**body.model_dump(), "call_id": call_id, "status": "active", "started_at": time.time(), "ended_at": None}
        pipe = store.pipeline(transaction=True)
        pipe.set(f"call:{call_id}", orjson.dumps(call), ex=call_ttl_s)
        pipe.set(f"call:{call_id}:active", b"1", ex=call_ttl_s)
        await pipe.execute()
        await publish("call.started", {"call_id": call_id, "tenant_id": tenant_id, "language": body.language, "voice_id": body.voice_id})
        session_token = issue({"tenant_id": tenant_id, "sub": tenant_id, "call_id": call_id})
        return {"call_id": call_id, "session_token": session_token, "ws_url": f"{public_ws_url}/ws/{call_id}", "status": "ready"}

    @app.get("/call/{call_id}")
    async def get_call(call_id: str, request: Request) -> dict[str, Any]:
        tenant_id = await admitted(request)
        return await load_call(call_id, tenant_id)

    @app.post("/call/{call_id}/end")
    async def end_call(call_id: str, request: Request) -> dict[str, Any]:
        tenant_id = await admitted(request)
        call = await load_call(call_id, tenant_id)
        if call["status"] != "ended":
            call = {**call, "status": "ended", "ended_at": time.time()}
            pipe = store.pipeline(transaction=True)
            pipe.set(f"call:{call_id}", orjson.dumps(call), keepttl=True)
            pipe.delete(f"call:{call_id}:active")
            await pipe.execute()
            await publish("call.ended", {"call_id": call_id, "tenant_id": tenant_id})
        duration_s = call["ended_at"] - call["started_at"]
        return {"call_id": call_id, "status": "ended", "duration_seconds": round(duration_s, 3)}

    @app.post("/handoff")
    async def handoff(body: HandoffRequest, request: Request) -> dict[str, Any]:
        tenant_id = await admitted(request)
        call = await load_call(body.call_id, tenant_id)
        transcript = [line.decode() for line in await store.lrange(f"call:{body.call_id}:transcript", 0, -1)]
        duration_s = (call["ended_at"] or time.time()) - call["started_at"]
        context = {
            "call_id": body.call_id, "reason": body.reason, "duration_seconds": round(duration_s),
            "transcript": transcript, "intents": ["escalation"] if body.reason else [], "sentiment": "neutral",
        }
        await publish("handoff.requested", {"tenant_id": tenant_id, "queue": body.agent_queue, **context})
        return {"status": "queued", "queue": body.agent_queue, "estimated_wait_seconds": 30, "context": context}

    @app.post("/rag/query")
    async def rag_query(body: RagQuery, request: Request) -> dict[str, Any]:
        started_s = time.perf_counter()
        tenant_id = await admitted(request, body.tenant_id)
        documents = [orjson.loads(raw) for raw in (await store.hgetall(f"rag:{tenant_id}")).values()]
        matching = [
            doc for doc in documents
            if all(doc["metadata"].get(key) == value for key, value in body.filters.items())
        ]
        scored = sorted(((relevance(body.query, doc["text"]), doc) for doc in matching), key=lambda pair: -pair[0])
        results = [
            {"text": doc["text"], "source": doc["source"], "score": score, "metadata": doc["metadata"]}
            for score, doc in scored[: body.top_k] if score > 0
        ]
        return {"results": results, "took_ms": round((time.perf_counter() - started_s) * 1000, 2)}

    @app.post("/ingest")
    async def ingest(body: IngestRequest, request: Request) -> dict[str, Any]:
        tenant_id = await admitted(request, body.tenant_id)
        document_id = f"doc_{uuid.uuid4().hex[:16]}"
        document = {"document_id": document_id, "text": body.text, "source": body.source, "metadata": body.metadata}
        await store.hset(f"rag:{tenant_id}", document_id, orjson.dumps(document))
        await publish("ingest.queued", {"tenant_id": tenant_id, "document_id": document_id, "source": body.source})
        return {"status": "queued", "document_id": document_id}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "timestamp": time.time(), "version": VERSION}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(dict(os.environ)), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
