"""Monitoring: feedback labels, monitor results, alert state and alert events.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
    )
    op.create_index("ix_feedback_decision", "feedback", ["decision_id", "revision"], unique=True)
    op.create_table(
        "monitor_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("window_start", sa.Float, nullable=True),
        sa.Column("window_end", sa.Float, nullable=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
    )
    op.create_index("ix_monitor_results_service_ts", "monitor_results", ["service", "ts"])
    op.create_table(
        "alert_state",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("rule", sa.String(128), primary_key=True),
        sa.Column("consecutive", sa.Integer, nullable=False),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("since", sa.Float, nullable=True),
    )
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_events")
    op.drop_table("alert_state")
    op.drop_index("ix_monitor_results_service_ts", table_name="monitor_results")
    op.drop_table("monitor_results")
    op.drop_index("ix_feedback_decision", table_name="feedback")
    op.drop_table("feedback")
