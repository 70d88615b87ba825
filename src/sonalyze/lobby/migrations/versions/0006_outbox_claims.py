"""The storage outbox's claim columns: several lobby replicas deliver from one outbox, each row once.

Revision ID: 0006_outbox_claims
Revises: 0005_join_codes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_outbox_claims"
down_revision = "0005_join_codes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storage_outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64)))
        batch.add_column(sa.Column("claimed_until_s", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("storage_outbox") as batch:
        batch.drop_column("claimed_until_s")
        batch.drop_column("claimed_by")
