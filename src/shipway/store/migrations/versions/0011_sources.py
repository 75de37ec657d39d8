"""Data sources: their runs, the files each has taken, and the rows it quarantined.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _seq() -> sa.Column[int]:
    return sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "source_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("rows_in", sa.Integer, nullable=False),
        sa.Column("rows_good", sa.Integer, nullable=False),
        sa.Column("rows_bad", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index(
        "ix_source_runs_service_source", "source_runs", ["service", "source", "started_at"]
    )
    op.create_table(
        "source_files",
        _seq(),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_in", sa.Integer, nullable=False),
        sa.Column("rows_good", sa.Integer, nullable=False),
        sa.Column("rows_bad", sa.Integer, nullable=False),
        sa.Column("sink", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index(
        "ux_source_files_content", "source_files", ["service", "source", "sha256"], unique=True
    )
    op.create_table(
        "quarantine",
        _seq(),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("file", sa.Text, nullable=True),
        sa.Column("row_index", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("violations", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("ix_quarantine_service_source", "quarantine", ["service", "source", "ts"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_service_source", table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_index("ux_source_files_content", table_name="source_files")
    op.drop_table("source_files")
    op.drop_index("ix_source_runs_service_source", table_name="source_runs")
    op.drop_table("source_runs")
