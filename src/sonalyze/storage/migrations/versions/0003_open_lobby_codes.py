"""A lobby join code is unique among lobbies that are not closed (the lobby service reuses closed codes).

Replaces the unique constraint on ``lobbies.code`` by a partial unique index (``status <> 'closed'``) and a
plain index for lookups. Downgrading restores the constraint, which fails while two lobbies share a code.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPEN_LOBBY = sa.text("status <> 'closed'")


def upgrade() -> None:
    with op.batch_alter_table("lobbies") as batch:
        batch.drop_constraint("uq_lobbies_code", type_="unique")
    op.create_index("ix_lobbies_code", "lobbies", ["code"])
    op.create_index(
        "uq_lobbies_open_code", "lobbies", ["code"], unique=True, postgresql_where=OPEN_LOBBY, sqlite_where=OPEN_LOBBY
    )


def downgrade() -> None:
    op.drop_index("uq_lobbies_open_code", table_name="lobbies")
    op.drop_index("ix_lobbies_code", table_name="lobbies")
    with op.batch_alter_table("lobbies") as batch:
        batch.create_unique_constraint("uq_lobbies_code", ["code"])
