"""Simulations in the database (they were ``DATA_DIR/simulations/{id}/job.json`` and ``result.json``).

The table is :data:`sonalyze.simulation.store.simulations_table`, column for column.

Revision ID: 0001_simulations
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_simulations"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "simulations",
        sa.Column("simulation_id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("runner", sa.String(200)),
        sa.Column("updated_s", sa.Float, nullable=False),
        sa.Column("job", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON),
    )
    op.create_index("ix_simulations_updated_s", "simulations", ["updated_s"])
    op.create_index("ix_simulations_status", "simulations", ["status"])


def downgrade() -> None:
    op.drop_table("simulations")
