"""The storage tables (SQLAlchemy Core), the single source the Alembic migrations are checked against.

Every table has a client-supplied string ``id`` (idempotent writes), ``created_at`` and ``updated_at``
set by the service in UTC. Payloads (room snapshots, metrics, curves) are JSON columns, JSONB on
PostgreSQL. ON DELETE follows ownership: a participant or an analysis output or a simulation result
dies with its parent; a measurement or a simulation job outlives the lobby and device it came from.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from sonalyze.storage.ids import ID_LENGTH

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Payload = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone, so it is restored here)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: storage keeps timezone-aware UTC timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _id() -> Column:
    return Column("id", String(ID_LENGTH), primary_key=True)


def _timestamps() -> list[Column]:
    return [Column("created_at", UTCDateTime(), nullable=False), Column("updated_at", UTCDateTime(), nullable=False)]


def _reference(name: str, target: str, *, ondelete: str, nullable: bool) -> Column:
    return Column(name, String(ID_LENGTH), ForeignKey(f"{target}.id", ondelete=ondelete), nullable=nullable, index=True)


devices = Table(
    "devices",
    metadata,
    _id(),
    Column("name", String(200)),
    Column("platform", String(32)),
    Column("model", String(200)),
    Column("app_version", String(64)),
    Column("attributes", Payload, nullable=False),
    *_timestamps(),
)

lobbies = Table(
    "lobbies",
    metadata,
    _id(),
    Column("code", String(16), nullable=False, index=True),
    _reference("host_device_id", "devices", ondelete="SET NULL", nullable=True),
    Column("status", String(32), nullable=False),
    Column("room", Payload),
    Column("settings", Payload, nullable=False),
    *_timestamps(),
)

# A join code is unique among lobbies that are not closed: the lobby service frees a closed lobby's code.
OPEN_LOBBY = lobbies.c.status != "closed"
Index(
    "uq_lobbies_open_code",
    lobbies.c.code,
    unique=True,
    postgresql_where=OPEN_LOBBY,
    sqlite_where=OPEN_LOBBY,
    info={"applies_to": lambda row: row.get("status") != "closed"},
)

participants = Table(
    "participants",
    metadata,
    _id(),
    _reference("lobby_id", "lobbies", ondelete="CASCADE", nullable=False),
    _reference("device_id", "devices", ondelete="CASCADE", nullable=False),
    Column("role", String(32)),
    Column("display_name", String(200)),
    Column("joined_at", UTCDateTime()),
    Column("left_at", UTCDateTime()),
    *_timestamps(),
    UniqueConstraint("lobby_id", "device_id", name="uq_participants_lobby_id_device_id"),
)

measurements = Table(
    "measurements",
    metadata,
    _id(),
    _reference("lobby_id", "lobbies", ondelete="SET NULL", nullable=True),
    _reference("device_id", "devices", ondelete="SET NULL", nullable=True),
    Column("kind", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("room", Payload),
    Column("parameters", Payload, nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    *_timestamps(),
)

analysis_outputs = Table(
    "analysis_outputs",
    metadata,
    _id(),
    _reference("measurement_id", "measurements", ondelete="CASCADE", nullable=False),
    Column("speaker_id", String(ID_LENGTH)),
    Column("microphone_id", String(ID_LENGTH)),
    Column("parameters", Payload, nullable=False),
    Column("metrics", Payload, nullable=False),
    Column("curves", Payload),
    *_timestamps(),
)

simulation_jobs = Table(
    "simulation_jobs",
    metadata,
    _id(),
    _reference("lobby_id", "lobbies", ondelete="SET NULL", nullable=True),
    _reference("device_id", "devices", ondelete="SET NULL", nullable=True),
    Column("status", String(32), nullable=False),
    Column("room", Payload, nullable=False),
    Column("parameters", Payload, nullable=False),
    Column("error", Text),
    *_timestamps(),
)

simulation_results = Table(
    "simulation_results",
    metadata,
    _id(),
    _reference("simulation_job_id", "simulation_jobs", ondelete="CASCADE", nullable=False),
    Column("source_id", String(ID_LENGTH)),
    Column("receiver_id", String(ID_LENGTH)),
    Column("metrics", Payload, nullable=False),
    Column("curves", Payload),
    *_timestamps(),
)

# Lists are ordered by (created_at, id); each table gets that index.
for _table in (devices, lobbies, participants, measurements, analysis_outputs, simulation_jobs, simulation_results):
    Index(f"ix_{_table.name}_created_at_id", _table.c.created_at, _table.c.id)
