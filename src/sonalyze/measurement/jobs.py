"""A measurement job and its lifecycle: pure data, no I/O.

    created ──upload──▶ uploading ──analyze──▶ analyzing ──▶ done | failed
                          ▲   │                                  │
                          └───┘ more uploads                     └──▶ uploading (a late upload)
                                                                 └──▶ analyzing (analyze again)

A wrong transition (analyze with no upload, upload during an analysis, analyze twice at once) raises
:class:`~sonalyze.common.errors.Conflict` (``conflict``, details ``reason: invalid_transition``).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from sonalyze.acoustics.sweep import MAX_SWEEP_COUNT, SweepParams
from sonalyze.common.errors import Conflict
from sonalyze.storage.ids import ID_LENGTH, ID_PATTERN

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
UPLOAD_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SWEEP_FILE_FORMAT = {"container": "WAV", "subtype": "PCM_16", "channels": 1}
MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 192_000
"""Sample rates a phone or sound card really uses; others are refused (``unsupported_sample_rate``)."""


class JobStatus(StrEnum):
    CREATED = "created"
    UPLOADING = "uploading"
    ANALYZING = "analyzing"
    DONE = "done"
    FAILED = "failed"


ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset({JobStatus.UPLOADING}),
    JobStatus.UPLOADING: frozenset({JobStatus.UPLOADING, JobStatus.ANALYZING}),
    JobStatus.ANALYZING: frozenset({JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.DONE: frozenset({JobStatus.UPLOADING, JobStatus.ANALYZING}),
    JobStatus.FAILED: frozenset({JobStatus.UPLOADING, JobStatus.ANALYZING}),
}


class AnalysisSource(StrEnum):
    IMPULSE_RESPONSE = "impulse_response"
    SWEEP_DECONVOLUTION = "sweep_deconvolution"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class SweepSettings(BaseModel):
    """The sweep a job plays (ISO 18233 Annex B exponential sweep); every field optional on creation."""

    model_config = ConfigDict(extra="forbid")

    f_start_hz: float = Field(default=20.0, ge=1.0, description="≥ 1 Hz: lower makes log(f_end/f_start) overflow")
    f_end_hz: float | None = Field(default=None, gt=0, description="default: 20 kHz or 0.45·fs, whichever is lower")
    duration_s: float = Field(default=5.0, ge=0.5, le=30.0)
    silence_before_s: float = Field(default=0.5, ge=0.0, le=10.0)
    silence_after_s: float = Field(default=2.0, ge=0.0, le=30.0)
    level_dbfs: float = Field(default=-6.0, ge=-60.0, le=0.0)


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs`` and data of ``measurement.create_job``."""

    model_config = ConfigDict(extra="forbid")

    sample_rate_hz: int = Field(default=48000, description=f"{MIN_SAMPLE_RATE_HZ}–{MAX_SAMPLE_RATE_HZ} Hz")
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    sweep_count: int = Field(
        default=1, ge=1, le=MAX_SWEEP_COUNT, description="sweeps in the played file, averaged by the analysis"
    )
    lobby_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=ID_LENGTH,
        pattern=ID_PATTERN,
        description="set by the lobby for a session's job: the lobby writes its storage measurement record",
    )

    def sweep_params(self) -> SweepParams:
        """The resolved, validated sweep (ValueError when the combination is impossible)."""
        sweep = self.sweep
        f_end_hz = sweep.f_end_hz if sweep.f_end_hz is not None else min(20000.0, 0.45 * self.sample_rate_hz)
        return SweepParams(
            fs_hz=self.sample_rate_hz,
            f_start_hz=sweep.f_start_hz,
            f_end_hz=f_end_hz,
            duration_s=sweep.duration_s,
            silence_before_s=sweep.silence_before_s,
            silence_after_s=sweep.silence_after_s,
            level_dbfs=sweep.level_dbfs,
            sweep_count=self.sweep_count,
        ).validate()


class AnalyzeRequest(BaseModel):
    """Body of ``POST /v1/jobs/{job_id}/analyze``; ``uploads`` defaults to every upload of the job."""

    model_config = ConfigDict(extra="forbid")

    source: AnalysisSource = AnalysisSource.SWEEP_DECONVOLUTION
    uploads: list[str] | None = Field(default=None, min_length=1)


class AudioFacts(BaseModel):
    """What the audio check found in an uploaded file."""

    duration_s: float
    sample_rate_hz: int
    channels: int
    frames: int
    format: str
    subtype: str
    size_bytes: int
    peak_dbfs: float


class Upload(AudioFacts):
    name: str
    uploaded_at: datetime
    capture: dict[str, Any] | None = None
    """The client's capture facts (``X-Capture-Facts``, `uploads.parse_capture_facts`), if it sent them."""

    def public(self) -> dict[str, Any]:
        return {"name": self.name, **self.model_dump(mode="json")}


class Progress(BaseModel):
    fraction: float
    message: str


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """A job (the ``body`` of its database row). ``results`` maps upload name to the acoustics report (or an error)."""

    job_id: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    sweep: dict[str, float]
    """The exact sweep played: the fields of :class:`~sonalyze.acoustics.sweep.SweepParams`."""
    uploads: list[Upload] = Field(default_factory=list)
    results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    summary: dict[str, Any] | None = None
    progress: Progress | None = None
    error: JobError | None = None
    lobby_id: str | None = None
    """The lobby whose session created the job; None for a standalone job."""
    owner_device_id: str | None = None
    """The device that created a standalone job (the only device that may reach it)."""
    analysis: AnalyzeRequest | None = None
    """The latest analysis asked for (its uploads listed): what another replica runs again when it takes
    the job over (`sonalyze.measurement.store.JobStore.claim_expired`)."""
    _version: int = PrivateAttr(default=0)

    @property
    def version(self) -> int:
        """The database row's version this copy was read at (`sonalyze.measurement.store`)."""
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = value

    @classmethod
    def create(cls, params: SweepParams, *, lobby_id: str | None = None, owner_device_id: str | None = None) -> Job:
        now = utc_now()
        return cls(
            job_id=new_job_id(),
            status=JobStatus.CREATED,
            created_at=now,
            updated_at=now,
            sweep=dataclasses.asdict(params),
            lobby_id=lobby_id,
            owner_device_id=owner_device_id,
        )

    @property
    def sweep_params(self) -> SweepParams:
        return SweepParams(
            **{**self.sweep, "fs_hz": int(self.sweep["fs_hz"]), "sweep_count": int(self.sweep.get("sweep_count", 1))}
        )

    @property
    def sample_rate_hz(self) -> int:
        return self.sweep_params.fs_hz

    @property
    def audio_url(self) -> str:
        return f"/v1/jobs/{self.job_id}/sweep.wav"

    def upload(self, name: str) -> Upload | None:
        return next((upload for upload in self.uploads if upload.name == name), None)

    def check_transition(self, to: JobStatus, action: str) -> None:
        if to not in ALLOWED_TRANSITIONS[self.status]:
            raise Conflict(
                f"cannot {action}: the job is {self.status.value}",
                details={"reason": "invalid_transition", "status": self.status.value, "to": to.value},
            )

    def move_to(self, to: JobStatus, action: str) -> None:
        self.check_transition(to, action)
        self.status = to
        self.updated_at = utc_now()

    def sweep_public(self) -> dict[str, Any]:
        params = self.sweep_params
        return {
            "f_start_hz": params.f_start_hz,
            "f_end_hz": params.f_end_hz,
            "duration_s": params.duration_s,
            "silence_before_s": params.silence_before_s,
            "silence_after_s": params.silence_after_s,
            "level_dbfs": params.level_dbfs,
            "fade_s": params.fade_s,
            "sweep_start_s": params.sweep_start_s,
            "sweep_length_s": params.sweep_length_samples / params.fs_hz,
            "sweep_start_sample": params.silence_before_samples,
            "sweep_length_samples": params.sweep_length_samples,
            "total_duration_s": params.total_duration_s,
            "total_samples": params.total_samples,
            "sweep_count": params.sweep_count,
            "period_s": params.period_samples / params.fs_hz,
        }

    def audio_info(self) -> dict[str, Any]:
        """What the speaker needs to play the sweep and the microphones to align their recordings."""
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "sample_rate_hz": self.sample_rate_hz,
            "sweep": self.sweep_public(),
            "audio_url": self.audio_url,
            "audio_format": SWEEP_FILE_FORMAT,
        }

    def public(self) -> dict[str, Any]:
        """The job as clients see it (``GET /v1/jobs/{job_id}``)."""
        return {
            **self.audio_info(),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "uploads": [upload.public() for upload in self.uploads],
            "results": self.results,
            "summary": self.summary,
            "progress": self.progress.model_dump() if self.progress else None,
            "error": self.error.model_dump() if self.error else None,
        }

    def brief(self) -> dict[str, Any]:
        """The answer while an analysis runs (HTTP 202): what to poll and how far it is."""
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "progress": self.progress.model_dump() if self.progress else None,
            "poll_url": f"/v1/jobs/{self.job_id}",
        }
