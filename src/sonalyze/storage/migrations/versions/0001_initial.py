"""The seven record tables: devices, lobbies, participants, measurements, analysis outputs,
simulation jobs and simulation results.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from sonalyze.storage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)
Payload = sa.JSON().with_variant(JSONB(), "postgresql")


def _timestamps() -> list[sa.Column]:
    return [sa.Column("created_at", UTCDateTime(), nullable=False), sa.Column("updated_at", UTCDateTime(), nullable=False)]


def _reference(table: str, column: str, target: str, ondelete: str, nullable: bool) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    return (
        sa.Column(column, ID, nullable=nullable),
        sa.ForeignKeyConstraint([column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete),
    )


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_index(f"ix_{table}_created_at_id", table, ["created_at", "id"])


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("platform", sa.String(32)),
        sa.Column("model", sa.String(200)),
        sa.Column("app_version", sa.String(64)),
        sa.Column("attributes", Payload, nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    _indexes("devices")

    host_column, host_fk = _reference("lobbies", "host_device_id", "devices", "SET NULL", True)
    op.create_table(
        "lobbies",
        sa.Column("id", ID, nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        host_column,
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("room", Payload),
        sa.Column("settings", Payload, nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_lobbies"),
        sa.UniqueConstraint("code", name="uq_lobbies_code"),
        host_fk,
    )
    _indexes("lobbies", "host_device_id")

    lobby_column, lobby_fk = _reference("participants", "lobby_id", "lobbies", "CASCADE", False)
    device_column, device_fk = _reference("participants", "device_id", "devices", "CASCADE", False)
    op.create_table(
        "participants",
        sa.Column("id", ID, nullable=False),
        lobby_column,
        device_column,
        sa.Column("role", sa.String(32)),
        sa.Column("display_name", sa.String(200)),
        sa.Column("joined_at", UTCDateTime()),
        sa.Column("left_at", UTCDateTime()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_participants"),
        sa.UniqueConstraint("lobby_id", "device_id", name="uq_participants_lobby_id_device_id"),
        lobby_fk,
        device_fk,
    )
    _indexes("participants", "lobby_id", "device_id")

    lobby_column, lobby_fk = _reference("measurements", "lobby_id", "lobbies", "SET NULL", True)
    device_column, device_fk = _reference("measurements", "device_id", "devices", "SET NULL", True)
    op.create_table(
        "measurements",
        sa.Column("id", ID, nullable=False),
        lobby_column,
        device_column,
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("room", Payload),
        sa.Column("parameters", Payload, nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_measurements"),
        lobby_fk,
        device_fk,
    )
    _indexes("measurements", "lobby_id", "device_id")

    measurement_column, measurement_fk = _reference("analysis_outputs", "measurement_id", "measurements", "CASCADE", False)
    op.create_table(
        "analysis_outputs",
        sa.Column("id", ID, nullable=False),
        measurement_column,
        sa.Column("speaker_id", ID),
        sa.Column("microphone_id", ID),
        sa.Column("parameters", Payload, nullable=False),
        sa.Column("metrics", Payload, nullable=False),
        sa.Column("curves", Payload),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_analysis_outputs"),
        measurement_fk,
    )
    _indexes("analysis_outputs", "measurement_id")

    lobby_column, lobby_fk = _reference("simulation_jobs", "lobby_id", "lobbies", "SET NULL", True)
    device_column, device_fk = _reference("simulation_jobs", "device_id", "devices", "SET NULL", True)
    op.create_table(
        "simulation_jobs",
        sa.Column("id", ID, nullable=False),
        lobby_column,
        device_column,
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("room", Payload, nullable=False),
        sa.Column("parameters", Payload, nullable=False),
        sa.Column("error", sa.Text()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_simulation_jobs"),
        lobby_fk,
        device_fk,
    )
    _indexes("simulation_jobs", "lobby_id", "device_id")

    job_column, job_fk = _reference("simulation_results", "simulation_job_id", "simulation_jobs", "CASCADE", False)
    op.create_table(
        "simulation_results",
        sa.Column("id", ID, nullable=False),
        job_column,
        sa.Column("source_id", ID),
        sa.Column("receiver_id", ID),
        sa.Column("metrics", Payload, nullable=False),
        sa.Column("curves", Payload),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_simulation_results"),
        job_fk,
    )
    _indexes("simulation_results", "simulation_job_id")


def downgrade() -> None:
    for table in (
        "simulation_results",
        "simulation_jobs",
        "analysis_outputs",
        "measurements",
        "participants",
        "lobbies",
        "devices",
    ):
        op.drop_table(table)
