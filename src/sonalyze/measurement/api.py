"""HTTP routes (``/v1/...``) and gateway events (``POST /gateway/handle``) of the measurement service.

Both call the same :class:`~sonalyze.measurement.service.MeasurementService` operations.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from sonalyze.common.handle import EventContext, EventHandlers
from sonalyze.common.internal_auth import Caller, caller_of
from sonalyze.common.json import JSONResponse
from sonalyze.measurement.jobs import AnalyzeRequest, Job, JobCreate
from sonalyze.measurement.service import FINAL_STATUSES, MeasurementService


def _service(request: Request) -> MeasurementService:
    return request.app.state.service


def _caller(request: Request) -> Caller:
    """Who calls: a device through the gateway (``X-Device-Id``), the gateway for nobody, or a service."""
    return caller_of(request.scope)


Service = Annotated[MeasurementService, Depends(_service)]
CallerOf = Annotated[Caller, Depends(_caller)]


def _analysis_answer(job: Job) -> tuple[int, dict[str, Any]]:
    """200 with the whole job once the analysis ended, else 202 with what to poll."""
    if job.status in FINAL_STATUSES:
        return 200, job.public()
    return 202, job.brief()


def http_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    @router.get("/v1/health")
    async def health(service: Service) -> JSONResponse:
        return JSONResponse(service.health())

    @router.get("/readyz")
    async def readyz(service: Service) -> JSONResponse:
        """200 when the job database and the task queue answer, else 503 ``not_ready`` with the reason."""
        reason = await service.ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"error": {"code": "not_ready", "message": reason}}, status_code=503)

    @router.post("/v1/jobs", status_code=201)
    async def create_job(service: Service, caller: CallerOf, body: Annotated[JobCreate | None, Body()] = None) -> JSONResponse:
        job = await service.create_job(body or JobCreate(), caller)
        return JSONResponse(job.public(), status_code=201, headers={"Location": f"/v1/jobs/{job.job_id}"})

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, service: Service, caller: CallerOf) -> JSONResponse:
        return JSONResponse((await service.get_job(job_id, caller)).public())

    @router.get("/v1/jobs/{job_id}/sweep.wav", operation_id="download_sweep")
    @router.head("/v1/jobs/{job_id}/sweep.wav", operation_id="download_sweep_head")  # one id each in the OpenAPI
    async def download_sweep(job_id: str, service: Service, caller: CallerOf) -> FileResponse:
        job = await service.get_job(job_id, caller)
        return FileResponse(await service.sweep_path(job), media_type="audio/wav", filename=f"sweep-{job_id}.wav")

    @router.post("/v1/jobs/{job_id}/uploads/{name:path}", status_code=201)
    async def upload(job_id: str, name: str, request: Request, service: Service, caller: CallerOf) -> JSONResponse:
        upload = await service.upload(
            job_id,
            name,
            request.stream(),
            caller=caller,
            content_type=request.headers.get("content-type"),
            content_length=request.headers.get("content-length"),
            capture_facts=request.headers.get("x-capture-facts"),
        )
        return JSONResponse(upload.public(), status_code=201)

    @router.post("/v1/jobs/{job_id}/analyze")
    async def analyze(
        job_id: str, service: Service, caller: CallerOf, body: Annotated[AnalyzeRequest | None, Body()] = None
    ) -> JSONResponse:
        status_code, answer = _analysis_answer(await service.analyze(job_id, body or AnalyzeRequest(), caller))
        return JSONResponse(answer, status_code=status_code)

    return router


class _JobRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str


class _AnalysisRun(AnalyzeRequest):
    job_id: str


def event_handlers() -> EventHandlers:
    handlers = EventHandlers()

    def service_of(ctx: EventContext) -> MeasurementService:
        return ctx.app.state.service

    def caller(ctx: EventContext) -> Caller:
        """On ``/gateway/handle`` the acting device is the body's ``device_id`` (set by the gateway)."""
        return Caller(device_id=ctx.device_id, service=ctx.service)

    @handlers.on("measurement.create_job")
    async def create_job(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).create_job(ctx.parse(JobCreate), caller(ctx))).public()

    @handlers.on("measurement.get_job")
    async def get_job(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).get_job(ctx.parse(_JobRef).job_id, caller(ctx))).public()

    @handlers.on("measurement.get_audio_info")
    async def get_audio_info(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).get_job(ctx.parse(_JobRef).job_id, caller(ctx))).audio_info()

    @handlers.on("analysis.run")
    async def run_analysis(ctx: EventContext) -> dict[str, Any]:
        run = ctx.parse(_AnalysisRun)
        request = AnalyzeRequest(source=run.source, uploads=run.uploads)
        return _analysis_answer(await service_of(ctx).analyze(run.job_id, request, caller(ctx)))[1]

    return handlers
