"""Join codes of 8 characters, and the failed join attempts of each device (docs/security.md, "Join codes").

PostgreSQL: ``lobby_lobbies.code`` widens from ``varchar(6)`` to ``varchar(8)``; lobbies open at the upgrade
keep their 6-character codes. SQLite does not enforce the length: nothing to change there. Downgrading
narrows the column again, which fails while a lobby has an 8-character code.

Revision ID: 0005_join_codes
Revises: 0004_participant_names
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_join_codes"
down_revision = "0004_participant_names"
branch_labels = None
depends_on = None


def _code_length(length: int) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("lobby_lobbies", "code", type_=sa.String(length), existing_nullable=False)


def upgrade() -> None:
    _code_length(8)
    op.create_table(
        "lobby_join_failures",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("window_start_s", sa.Float, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lobby_join_failures")
    _code_length(6)
