"""Retraining jobs: their record, log, lineage and gate result.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("running", sa.String(8), nullable=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("owner", sa.String(160), nullable=True),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("rows", sa.Integer, nullable=True),
        sa.Column("labels", sa.Integer, nullable=True),
        sa.Column("candidate", sa.Integer, nullable=True),
        sa.Column("gate", sa.Text, nullable=True),
        sa.Column("lineage", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("log", sa.Text, nullable=False),
        sa.UniqueConstraint("service", "running", name="uq_training_jobs_running"),
    )
    op.create_index("ix_training_jobs_service", "training_jobs", ["service", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_training_jobs_service", table_name="training_jobs")
    op.drop_table("training_jobs")
