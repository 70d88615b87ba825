"""The lobby service's settings, read from the environment once at start-up."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonalyze.common.internal_auth import InternalAuthSettings
from sonalyze.lobby.service import JoinLimit
from sonalyze.lobby.session_machine import StepTimeouts


class LobbySettings(InternalAuthSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    service_name: str = "lobby"
    database_url: str = "sqlite+aiosqlite:///./lobby.db"
    gateway_url: str = Field(
        "", description="where lobby.updated and measurement.* pushes go (several gateways: comma-separated); empty: no pushes"
    )
    measurement_url: str = "http://127.0.0.1:8002"
    storage_url: str = Field("", description="the storage service; records go there through an outbox in the lobby DB. Empty: no storage writes")
    storage_outbox_lease_s: float = Field(
        60.0, gt=0, description="a replica's claim on a storage outbox row; must exceed HTTP_TIMEOUT_S (a storage call). "
        "A replica killed while sending leaves the row to the others after this"
    )
    lobby_idle_timeout_s: float = Field(3600.0, gt=0)
    session_step_timeout_s: float = Field(30.0, gt=0)
    session_upload_timeout_s: float = Field(60.0, gt=0)
    session_analysis_timeout_s: float = Field(120.0, gt=0)
    session_host_timeout_s: float = Field(600.0, gt=0)
    timer_interval_s: float = Field(0.5, gt=0, description="how often analysis leases, deadlines and idle lobbies are checked")
    replica_id: str = Field(
        "", validation_alias=AliasChoices("lobby_replica_id", "LOBBY_REPLICA_ID"),
        description="names this replica in the sessions whose analysis it awaits; empty: a fresh id per process",
    )
    analysis_lease_s: float = Field(
        15.0, gt=0, validation_alias=AliasChoices("lobby_analysis_lease_s", "LOBBY_ANALYSIS_LEASE_S"),
        description="the replica awaiting a session's analysis renews its lease every timer tick; when it lapses "
        "(the replica died) another replica awaits the analysis",
    )
    broadcast_queue_size: int = Field(10_000, gt=0)
    broadcast_workers: int = Field(4, gt=0)
    http_timeout_s: float = Field(10.0, gt=0)
    sweep_duration_s: float = Field(3.0, gt=0, description="sweep length asked of the measurement service per job")
    sample_rate_hz: int = Field(48_000, gt=0)
    sweep_count: int = Field(1, ge=1, le=5, description="sweeps per job unless measurement.create_session asks (contract C3)")
    join_failure_limit: int = Field(10, ge=1, description="failed lookups by join code per device and window before rate_limited")
    join_failure_window_s: float = Field(600.0, gt=0, description="the window of JOIN_FAILURE_LIMIT")

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> "LobbySettings":
        if self.storage_outbox_lease_s <= self.http_timeout_s:
            raise ValueError("STORAGE_OUTBOX_LEASE_S must exceed HTTP_TIMEOUT_S: a claim may not lapse while its storage call runs")
        return self

    @property
    def join_limit(self) -> JoinLimit:
        return JoinLimit(failures=self.join_failure_limit, window_s=self.join_failure_window_s)

    @property
    def step_timeouts(self) -> StepTimeouts:
        return StepTimeouts(
            device_s=self.session_step_timeout_s,
            upload_s=self.session_upload_timeout_s,
            analysis_s=self.session_analysis_timeout_s,
            host_s=self.session_host_timeout_s,
        )
