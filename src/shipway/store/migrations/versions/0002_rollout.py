"""Rollout: rollout state and history, shadow decisions, failed decisions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("error", sa.Text, nullable=True))
    op.create_table(
        "shadow_decisions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_shadow_decisions_decision_id", "shadow_decisions", ["decision_id"])
    op.create_index(
        "ix_shadow_decisions_service_version", "shadow_decisions", ["service", "model_version"]
    )
    op.create_table(
        "rollout_state",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("champion", sa.Integer, nullable=False),
        sa.Column("previous_champion", sa.Integer, nullable=True),
        sa.Column("canary", sa.Integer, nullable=True),
        sa.Column("canary_percent", sa.Float, nullable=False),
        sa.Column("canary_key", sa.String(128), nullable=True),
        sa.Column("canary_step", sa.Integer, nullable=True),
        sa.Column("canary_since", sa.Float, nullable=True),
        sa.Column("shadows", sa.JSON, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("before", sa.JSON, nullable=False),
        sa.Column("after", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_events")
    op.drop_table("rollout_state")
    op.drop_index("ix_shadow_decisions_service_version", table_name="shadow_decisions")
    op.drop_index("ix_shadow_decisions_decision_id", table_name="shadow_decisions")
    op.drop_table("shadow_decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("error")
