"""The storage outbox: records bound for the storage service, written in the lobby's own transactions.

The table is :data:`sonalyze.storage.outbox.outbox_table` (``storage_outbox``), column for column.

Revision ID: 0002_storage_outbox
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_storage_outbox"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("operation", sa.String(8), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("aggregate", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON()),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_s", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_s", sa.Float, nullable=False),
    )
    op.create_index("ix_storage_outbox_state_aggregate_seq", "storage_outbox", ["state", "aggregate", "seq"])


def downgrade() -> None:
    op.drop_table("storage_outbox")
