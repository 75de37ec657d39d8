"""Initial schema: artifacts, model versions, decisions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=True),
        sa.Column("flavor", sa.String(32), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("contract_sha256", sa.String(64), nullable=False),
        sa.Column("data_sha256", sa.String(64), nullable=True),
        sa.Column("reference_sha256", sa.String(64), nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("service", "version", name="uq_model_versions_service_version"),
    )
    op.create_table(
        "decisions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=True),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("caller", sa.String(128), nullable=True),
    )
    op.create_index("ix_decisions_service_ts", "decisions", ["service", "ts"])


def downgrade() -> None:
    op.drop_index("ix_decisions_service_ts", table_name="decisions")
    op.drop_table("decisions")
    op.drop_table("model_versions")
    op.drop_table("artifacts")
