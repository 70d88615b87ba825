"""Participants carry the name their device gave itself (contract C2): a nullable ``name`` column.

Revision ID: 0004_participant_names
Revises: 0003_sqlite_without_rowid
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_participant_names"
down_revision = "0003_sqlite_without_rowid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lobby_participants", sa.Column("name", sa.String(40), nullable=True))


def downgrade() -> None:
    # Plain SQL on both backends (SQLite ≥ 3.35 drops a column in place and keeps WITHOUT ROWID).
    op.execute("ALTER TABLE lobby_participants DROP COLUMN name")
