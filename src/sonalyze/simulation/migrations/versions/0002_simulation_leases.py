"""A lease on a running simulation (`sonalyze.common.leases`): the replica awaiting it renews
``lease_until_s`` (Unix time); once it is past, any replica takes the simulation over. ``device_id``: the
device its pushes go to, from whichever replica finishes it.

Revision ID: 0002_simulation_leases
Revises: 0001_simulations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_simulation_leases"
down_revision = "0001_simulations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("simulations", sa.Column("lease_until_s", sa.Float))
    op.add_column("simulations", sa.Column("device_id", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("simulations") as batch:
        batch.drop_column("device_id")
        batch.drop_column("lease_until_s")
