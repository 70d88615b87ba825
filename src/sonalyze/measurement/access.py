"""Who may reach a job: its sweep, uploads and results.

- A service acting as itself (``X-Service-Token``, e.g. the lobby's session coordinator): every job.
- A standalone job (no ``lobby_id``): the device that created it (``owner_device_id``), and nobody else.
- A lobby session's job: the lobby's participants *now* — a device that left has lost access — while the
  lobby is open and for ``MEASUREMENT_JOB_ACCESS_RETENTION_HOURS`` after it closed; an upload only from
  the microphone the session names for that file.

The measurement service learns a session's devices by asking the lobby
(``GET /internal/lobbies/{lobby_id}/jobs/{job_id}/access``) and keeps the answer for
``MEASUREMENT_LOBBY_ACCESS_CACHE_S`` (2 s): a leave is seen within that time, and a session's burst of
uploads and polls costs the lobby one question. Asking rather than being told keeps the lobby the only
place membership is written, with nothing to replay after an outage; if the lobby cannot answer, access
is refused (503 ``upstream_unavailable``), never granted. A refusal is a 404 ``not_found``, as for a job
that does not exist: a job id never tells an outsider that the job is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sonalyze.common.errors import Forbidden, NotFound, Unauthorized, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sonalyze.common.internal_auth import Caller
from sonalyze.common.replicas import Replicas, request_any
from sonalyze.measurement.jobs import Job


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """The lobby's answer: participants now, when the lobby closed, who uploads which file."""

    devices: frozenset[str]
    closed_at_s: float | None
    uploads: dict[str, str]


def hidden(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}", details={"job_id": job_id})


def require_device(caller: Caller) -> str:
    """The acting device of a caller that is not a service; 401 ``device_required`` without one."""
    if caller.device_id is None:
        raise Unauthorized("this request needs an authenticated device (a device token)", code="device_required")
    return caller.device_id


def may_read(job: Job, caller: Caller, grant: SessionGrant | None, *, now_s: float, retention_s: float) -> bool:
    """Pure policy: may ``caller`` read (and analyze) ``job``? ``grant`` is the lobby's answer for a session job."""
    if caller.service:
        return True
    if caller.device_id is None:
        return False
    if job.lobby_id is None:
        return job.owner_device_id is not None and caller.device_id == job.owner_device_id
    if grant is None or caller.device_id not in grant.devices:
        return False
    return grant.closed_at_s is None or now_s <= grant.closed_at_s + retention_s


def may_upload(job: Job, caller: Caller, grant: SessionGrant | None, name: str, *, now_s: float, retention_s: float) -> bool:
    """Read access and, for a session job, the microphone the session names for the file ``name``."""
    if not may_read(job, caller, grant, now_s=now_s, retention_s=retention_s):
        return False
    if caller.service or job.lobby_id is None:
        return True
    return grant is not None and grant.uploads.get(name) == caller.device_id


class JobAccess:
    """The policy of this module with the lobby's answers fetched and cached."""

    def __init__(
        self,
        lobby_url: str,
        *,
        headers: dict[str, str],
        retention_s: float,
        cache_s: float,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # LOBBY_URL may name several, comma-separated; the lobby's readiness is its /readyz
        self._replicas = Replicas(lobby_url, ready_path="/readyz") if lobby_url else None
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout_s) if lobby_url else None
        self.retention_s = retention_s
        self.cache_s = cache_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, SessionGrant | None]] = {}

    async def aclose(self) -> None:
        if self._replicas is not None:
            await self._replicas.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def check_read(self, job: Job, caller: Caller) -> None:
        grant = await self._grant(job, caller)
        if not may_read(job, caller, grant, now_s=self._clock(), retention_s=self.retention_s):
            raise hidden(job.job_id)

    async def check_upload(self, job: Job, caller: Caller, name: str) -> None:
        grant = await self._grant(job, caller)
        now_s = self._clock()
        if not may_read(job, caller, grant, now_s=now_s, retention_s=self.retention_s):
            raise hidden(job.job_id)
        if not may_upload(job, caller, grant, name, now_s=now_s, retention_s=self.retention_s):
            expected = [file for file, device in (grant.uploads if grant else {}).items() if device == caller.device_id]
            raise Forbidden(
                f"this device does not upload {name!r} in this session",
                code="wrong_device",
                details={"name": name, "your_uploads": sorted(expected)},
            )

    async def _grant(self, job: Job, caller: Caller) -> SessionGrant | None:
        """The lobby's answer for a session job, when the policy needs it (a device asking)."""
        if job.lobby_id is None or caller.service or caller.device_id is None:
            return None
        key = (job.lobby_id, job.job_id)
        now_s = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now_s - cached[0] < self.cache_s:
            return cached[1]
        grant = await self._ask_lobby(job.lobby_id, job.job_id)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: a burst of distinct jobs costs re-asking, never memory
        self._cache[key] = (now_s, grant)
        return grant

    async def _ask_lobby(self, lobby_id: str, job_id: str) -> SessionGrant | None:
        if self._http is None:
            return None  # no LOBBY_URL: only services reach session jobs
        path = f"/internal/lobbies/{lobby_id}/jobs/{job_id}/access"
        try:
            response = await request_any(self._http, self._replicas, "GET", path)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("the lobby did not say in time who may reach this job") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the lobby is unreachable to check access: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise UpstreamError(f"the lobby refused the access question ({response.status_code})")
        body: dict[str, Any] = response.json()
        return SessionGrant(
            devices=frozenset(body.get("devices") or ()),
            closed_at_s=body.get("closed_at_s"),
            uploads=dict(body.get("uploads") or {}),
        )
