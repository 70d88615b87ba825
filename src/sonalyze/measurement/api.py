"""HTTP routes (``/v1/...``) and gateway events (``POST /gateway/handle``) of the measurement service.

Both call the same :class:`~sonalyze.measurement.service.MeasurementService` operations.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from sonalyze.common.handle import EventContext, EventHandlers
from sonalyze.common.json import JSONResponse
from sonalyze.measurement.jobs import AnalyzeRequest, Job, JobCreate
from sonalyze.measurement.service import FINAL_STATUSES, MeasurementService


def _service(request: Request) -> MeasurementService:
    return request.app.state.service


Service = Annotated[MeasurementService, Depends(_service)]


def _analysis_answer(job: Job) -> tuple[int, dict[str, Any]]:
    """200 with the whole job once the analysis ended, else 202 with what to poll."""
    if job.status in FINAL_STATUSES:
        return 200, job.public()
    return 202, job.brief()


def http_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/health")
    async def health(service: Service) -> JSONResponse:
        return JSONResponse(service.health())

    @router.post("/v1/jobs", status_code=201)
    async def create_job(service: Service, body: Annotated[JobCreate | None, Body()] = None) -> JSONResponse:
        job = await service.create_job(body or JobCreate())
        return JSONResponse(job.public(), status_code=201, headers={"Location": f"/v1/jobs/{job.job_id}"})

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, service: Service) -> JSONResponse:
        return JSONResponse((await service.get_job(job_id)).public())

    @router.api_route("/v1/jobs/{job_id}/sweep.wav", methods=["GET", "HEAD"])
    async def download_sweep(job_id: str, service: Service) -> FileResponse:
        job = await service.get_job(job_id)
        return FileResponse(service.sweep_path(job), media_type="audio/wav", filename=f"sweep-{job_id}.wav")

    @router.post("/v1/jobs/{job_id}/uploads/{name:path}", status_code=201)
    async def upload(job_id: str, name: str, request: Request, service: Service) -> JSONResponse:
        upload = await service.upload(
            job_id,
            name,
            request.stream(),
            content_type=request.headers.get("content-type"),
            content_length=request.headers.get("content-length"),
        )
        return JSONResponse(upload.public(), status_code=201)

    @router.post("/v1/jobs/{job_id}/analyze")
    async def analyze(
        job_id: str, service: Service, body: Annotated[AnalyzeRequest | None, Body()] = None
    ) -> JSONResponse:
        status_code, answer = _analysis_answer(await service.analyze(job_id, body or AnalyzeRequest()))
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

    @handlers.on("measurement.create_job")
    async def create_job(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).create_job(ctx.parse(JobCreate))).public()

    @handlers.on("measurement.get_job")
    async def get_job(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).get_job(ctx.parse(_JobRef).job_id)).public()

    @handlers.on("measurement.get_audio_info")
    async def get_audio_info(ctx: EventContext) -> dict[str, Any]:
        return (await service_of(ctx).get_job(ctx.parse(_JobRef).job_id)).audio_info()

    @handlers.on("analysis.run")
    async def run_analysis(ctx: EventContext) -> dict[str, Any]:
        run = ctx.parse(_AnalysisRun)
        request = AnalyzeRequest(source=run.source, uploads=run.uploads)
        return _analysis_answer(await service_of(ctx).analyze(run.job_id, request))[1]

    return handlers
