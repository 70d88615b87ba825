"""The analysis lease of a measurement session: several lobby replicas, one awaits each analysis, and when
it dies another one takes the analysis over.

Revision ID: 0007_analysis_leases
Revises: 0006_outbox_claims
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_analysis_leases"
down_revision = "0006_outbox_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lobby_measurement_sessions") as batch:
        batch.add_column(sa.Column("runner", sa.String(64)))
        batch.add_column(sa.Column("lease_until_s", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("lobby_measurement_sessions") as batch:
        batch.drop_column("lease_until_s")
        batch.drop_column("runner")
