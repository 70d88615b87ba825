"""A lease on an analyzing job: the replica awaiting its analysis renews ``lease_until_s`` (Unix time);
once it is past, any replica may take the job over (`sonalyze.measurement.store.JobStore.claim_expired`).

Revision ID: 0002_job_leases
Revises: 0001_jobs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_job_leases"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("measurement_jobs", sa.Column("lease_until_s", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("measurement_jobs") as batch:
        batch.drop_column("lease_until_s")
