"""The simulation service's settings, read from the environment (``SIMULATION_*``)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonalyze.common.internal_auth import InternalAuthSettings
from sonalyze.common.tasks import TaskQueueSettings

from sonalyze.simulation.limits import Limits


class SimulationSettings(InternalAuthSettings, TaskQueueSettings, BaseSettings):
    """Every knob of the simulation service; ``create_app`` builds one, tests pass their own."""

    model_config = SettingsConfigDict(env_prefix="SIMULATION_", case_sensitive=False, extra="ignore", populate_by_name=True)

    data_dir: Path = Path("./simulation-data")
    """The embedded database, RIR files (without BLOB_URL) and the outbox (SIMULATION_DATA_DIR)."""
    workers: int = Field(1, ge=1)
    """Simulations running at once, one process each."""
    queue: int = Field(4, ge=0)
    """Simulations waiting for a worker; beyond that a request gets 503 ``busy`` with Retry-After."""
    timeout_s: float = Field(120.0, gt=0)
    """A simulation running longer is killed and answered with 504 ``timeout``."""
    max_order: int = Field(60, ge=0)
    """Highest image-source order in a shoebox room (O(order³) images)."""
    max_polygon_order: int = Field(10, ge=0)
    """Highest image-source order in a polygon room (cost grows exponentially with the order)."""
    max_volume_m3: float = Field(20000.0, gt=0)
    max_pairs: int = Field(32, ge=1)
    """Sources × microphones in one request."""
    max_rir_s: float = Field(6.0, gt=0)
    """Longest expected RIR; ray tracing is also stopped at this time."""
    max_rir_base64_mb: float = Field(16.0, ge=0)
    """Largest total of base64 RIRs in one answer; above it the answer carries download paths only."""

    gateway_url: str = Field("", validation_alias="GATEWAY_URL")
    """Where ``simulation.progress`` / ``completed`` / ``failed`` pushes go (``POST /internal/broadcast``); empty: none."""
    storage_url: str = Field("", validation_alias="STORAGE_URL")
    """The storage service; when set, every finished simulation is sent there through an outbox."""
    database_url: str = Field("", validation_alias="DATABASE_URL")
    """Simulations and the outbox (SQLAlchemy async URL); empty: ``{data_dir}/simulation.db``."""
    blob_url: str = Field("", validation_alias="BLOB_URL")
    """RIR files (written by the workers): empty (``data_dir``), ``file:///path`` or ``s3://bucket/prefix`` (`sonalyze.common.blobs`)."""
    s3_endpoint_url: str = Field("", validation_alias="S3_ENDPOINT_URL")
    """An S3-compatible server; empty: AWS."""
    replica_id: str = Field(default_factory=socket.gethostname)
    """Names this replica's running simulations (SIMULATION_REPLICA_ID; default the host name)."""
    retention_days: float = Field(30.0, ge=0)
    """A finished simulation and its RIRs are deleted this long after it finished; 0: kept (SIMULATION_RETENTION_DAYS)."""
    cleanup_interval_s: float = Field(3600.0, gt=0)
    """How often expired simulations are deleted."""
    job_lease_s: float = Field(15.0, gt=0)
    """A replica awaiting a simulation renews its lease every third of this; a simulation whose lease
    lapsed (its replica died) is taken over by another replica (SIMULATION_JOB_LEASE_S)."""

    @property
    def simulations_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'simulation.db'}"

    def limits(self) -> Limits:
        return Limits(
            max_order=self.max_order,
            max_polygon_order=self.max_polygon_order,
            max_volume_m3=self.max_volume_m3,
            max_pairs=self.max_pairs,
            max_rir_s=self.max_rir_s,
        )
