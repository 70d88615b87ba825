"""A small client of the measurement service: create a job, analyze a speaker's uploads.

The transport is injectable (``httpx.AsyncBaseTransport``) so tests can put a stub in front; the
service's errors become the shared error tree (``upstream_unavailable``, ``upstream_timeout``,
``upstream_error``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from sonalyze.common.errors import SonalyzeError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sonalyze.common.replicas import Replicas, request_any

FINAL_JOB_STATUSES = frozenset({"done", "failed"})


class MeasurementClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        poll_interval_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """``headers``: the internal-auth headers (:func:`sonalyze.common.internal_auth.internal_headers`)."""
        self.replicas = Replicas(base_url, ready_path="/readyz")
        """``base_url`` may name several replicas, comma-separated (`sonalyze.common.replicas`)."""
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport, headers=headers)
        self._poll_interval_s = poll_interval_s

    async def aclose(self) -> None:
        await self.replicas.aclose()
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await request_any(self._client, self.replicas, method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the measurement service did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the measurement service is unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            raise UpstreamError(
                f"the measurement service refused {method} {path} ({response.status_code})",
                details={"status": response.status_code, "body": _error_of(response)},
            )
        return response

    async def create_job(
        self, *, sample_rate_hz: int, sweep_duration_s: float, sweep_count: int = 1, lobby_id: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/jobs``: a job with its sweep; the answer holds ``job_id``.

        ``lobby_id`` marks the job as a lobby session's: the lobby writes its storage ``measurements``
        record, the measurement service only the ``analysis_outputs``.
        """
        body: dict[str, Any] = {
            "sample_rate_hz": sample_rate_hz,
            "sweep": {"duration_s": sweep_duration_s},
            "sweep_count": sweep_count,
        }
        if lobby_id is not None:
            body["lobby_id"] = lobby_id
        job = (await self._request("POST", "/v1/jobs", json=body)).json()
        if not isinstance(job, dict) or "job_id" not in job:
            raise UpstreamError("the measurement service answered a job without job_id")
        return job

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/jobs/{job_id}")).json()

    async def analyze(self, job_id: str, uploads: list[str], *, timeout_s: float) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/analyze`` (sweep deconvolution) and wait for the finished job.

        A 202 answer, or a 409 because that analysis is already running (another lobby replica asked, or
        this one restarted), is followed by polling ``GET /v1/jobs/{id}``. A failed analysis raises
        ``upstream_error``. The measurement replica asked may die meanwhile (the connection drops or
        times out: ``upstream_unavailable``, ``upstream_timeout``): the request is sent again and the job
        polled again, on the other replicas, until ``timeout_s`` has passed (another replica takes the
        job's analysis over when its runner's lease lapses).
        """
        deadline_s = asyncio.get_running_loop().time() + timeout_s
        body = {"source": "sweep_deconvolution", "uploads": uploads}
        job: dict[str, Any] | None = None
        while job is None:
            try:
                job = (await self._request("POST", f"/v1/jobs/{job_id}/analyze", json=body)).json()
            except UpstreamError as exc:
                if (exc.details or {}).get("status") != 409:
                    raise
                job = await self._get_job_until(job_id, deadline_s)
                if job.get("status") != "analyzing":
                    raise
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                await self._pause_until(deadline_s, exc)
        while job.get("status") not in FINAL_JOB_STATUSES:
            await asyncio.sleep(self._poll_interval_s)
            job = await self._get_job_until(job_id, deadline_s)
        if job["status"] == "failed":
            raise UpstreamError(f"the analysis of job {job_id} failed: {job.get('error')}", details={"job_id": job_id, "error": job.get("error")})
        return job

    async def _get_job_until(self, job_id: str, deadline_s: float) -> dict[str, Any]:
        """``get_job``, asked again while the measurement replicas cannot answer, until ``deadline_s``."""
        while True:
            try:
                return await self.get_job(job_id)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                await self._pause_until(deadline_s, exc)

    async def _pause_until(self, deadline_s: float, failure: SonalyzeError) -> None:
        """Wait a poll interval before asking again; past ``deadline_s``, raise ``failure`` (what failed last)."""
        if asyncio.get_running_loop().time() + self._poll_interval_s > deadline_s:
            raise failure
        await asyncio.sleep(self._poll_interval_s)


def _error_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
