"""The measurement service's one settings object, read from the environment."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonalyze.common.internal_auth import InternalAuthSettings
from sonalyze.common.tasks import TaskQueueSettings


class MeasurementSettings(InternalAuthSettings, TaskQueueSettings, BaseSettings):
    """``MEASUREMENT_*`` variables (``HOST`` and ``PORT`` are read by ``sonalyze serve``)."""

    model_config = SettingsConfigDict(env_prefix="MEASUREMENT_", extra="ignore")

    data_dir: Path = Field(
        default=Path("sonalyze-data/measurement"), description="the embedded job database, audio (without BLOB_URL) and the outbox"
    )
    max_upload_mb: float = Field(default=50.0, gt=0, description="largest accepted upload request body, MiB")
    analysis_workers: int = Field(
        # Two where there are two cores: a lobby's microphones upload within a second of each other, and their
        # analyses side by side bring the results to every screen sooner (bench/webapp.md). The web app
        # sessions lost under load with 2 were the browser's capture and a test race, not this (bench/webapp.md).
        default_factory=lambda: min(2, os.cpu_count() or 1),
        ge=1,
        le=64,
        description="analyses running at once (one process each) without TASK_QUEUE_URL; default 2, 1 on one core",
    )
    analysis_queue: int = Field(
        default=4, ge=0, le=1000, description="analyses waiting for a worker before 503 busy, without TASK_QUEUE_URL"
    )
    analysis_timeout_s: float = Field(default=300.0, gt=0, description="an analysis running longer is stopped")
    max_upload_s: float = Field(
        default=120.0, gt=0, le=3600, description="longest accepted recording, s (bounds decoding and analysis cost)"
    )
    worker_memory_mb: float = Field(
        default=1536.0, gt=0, description="address space an analysis worker may add beyond its start-up size, MiB"
    )
    job_access_retention_hours: float = Field(
        default=24.0, ge=0, description="how long a session's devices keep access to its job after the lobby closed"
    )
    lobby_access_cache_s: float = Field(
        default=2.0, ge=0, le=60, description="how long the lobby's answer on who may reach a job is reused"
    )
    lobby_url: str = Field(
        default="", validation_alias="LOBBY_URL", description="the lobby, asked who may reach a session's job"
    )
    analyze_wait_s: float = Field(
        default=8.0, ge=0, description="how long analyze waits for the result before answering 202 (gateway: 10 s)"
    )

    storage_url: str = Field(
        default="", validation_alias="STORAGE_URL", description="the storage service; empty: analyses are not sent there"
    )
    database_url: str = Field(
        default="",
        validation_alias="DATABASE_URL",
        description="jobs and the storage outbox (SQLAlchemy async URL); empty: DATA_DIR/measurement.db",
    )
    blob_url: str = Field(
        default="",
        validation_alias="BLOB_URL",
        description="sweeps and uploads: empty (DATA_DIR), file:///path or s3://bucket/prefix (sonalyze.common.blobs)",
    )
    s3_endpoint_url: str = Field(
        default="", validation_alias="S3_ENDPOINT_URL", description="an S3-compatible server; empty: AWS"
    )
    replica_id: str = Field(
        default_factory=socket.gethostname,
        description="names this replica's running analyses (default: the host name; set it for replicas sharing a host)",
    )
    job_lease_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="an analyzing job is leased to the replica awaiting it, renewed every third of this; "
        "once it lapses (the replica died) another replica takes the job over and runs its analysis again",
    )
    retention_days: float = Field(
        default=30.0, ge=0, description="a job and its audio are deleted this long after its last change; 0: kept"
    )
    cleanup_interval_s: float = Field(default=3600.0, gt=0, description="how often expired jobs are deleted")

    @property
    def jobs_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'measurement.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
