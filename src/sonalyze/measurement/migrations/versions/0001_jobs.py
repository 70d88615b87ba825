"""Measurement jobs in the database (they were ``DATA_DIR/jobs/{job_id}/job.json``).

The table is :data:`sonalyze.measurement.store.jobs_table`, column for column.

Revision ID: 0001_jobs
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "measurement_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("runner", sa.String(200)),
        sa.Column("updated_s", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_measurement_jobs_updated_s", "measurement_jobs", ["updated_s"])
    op.create_index("ix_measurement_jobs_status", "measurement_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("measurement_jobs")
