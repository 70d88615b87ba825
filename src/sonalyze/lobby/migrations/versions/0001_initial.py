"""Lobbies, participants, the event log and measurement sessions.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lobby_lobbies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("code", sa.String(6), nullable=False),
        sa.Column("name", sa.String(120), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("host_device_id", sa.String(128), nullable=True),
        sa.Column("room", sa.JSON, nullable=True),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("session_id", sa.String(32), nullable=True),
        sa.Column("created_s", sa.Float, nullable=False),
        sa.Column("updated_s", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_lobby_lobbies_open_code",
        "lobby_lobbies",
        ["code"],
        unique=True,
        sqlite_where=sa.text("status != 'closed'"),
        postgresql_where=sa.text("status != 'closed'"),
    )
    op.create_index("ix_lobby_lobbies_status_updated", "lobby_lobbies", ["status", "updated_s"])
    op.create_table(
        "lobby_participants",
        sa.Column("lobby_id", sa.String(32), sa.ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("joined_seq", sa.Integer, nullable=False),
        sa.Column("joined_s", sa.Float, nullable=False),
    )
    op.create_table(
        "lobby_events",
        sa.Column("lobby_id", sa.String(32), sa.ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(48), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_s", sa.Float, nullable=False),
    )
    op.create_table(
        "lobby_measurement_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("lobby_id", sa.String(32), sa.ForeignKey("lobby_lobbies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.String(24), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deadline_s", sa.Float, nullable=True),
        sa.Column("created_s", sa.Float, nullable=False),
        sa.Column("updated_s", sa.Float, nullable=False),
    )
    op.create_index("ix_lobby_measurement_sessions_lobby_id", "lobby_measurement_sessions", ["lobby_id"])
    op.create_index("ix_lobby_measurement_sessions_deadline_s", "lobby_measurement_sessions", ["deadline_s"])


def downgrade() -> None:
    op.drop_table("lobby_measurement_sessions")
    op.drop_table("lobby_events")
    op.drop_table("lobby_participants")
    op.drop_table("lobby_lobbies")
