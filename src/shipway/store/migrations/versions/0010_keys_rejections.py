"""Decisions carry the value of the contract's id field (``label_key``) so labels keyed by a
business id can be joined, and the tokens a model endpoint billed for them; shadow answers
carry their cost; rows refused by the contract are kept in ``rejections``.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("label_key", sa.String(128), nullable=True))
        batch.add_column(sa.Column("prompt_tokens", sa.Integer, nullable=True))
        batch.add_column(sa.Column("completion_tokens", sa.Integer, nullable=True))
    with op.batch_alter_table("shadow_decisions") as batch:
        batch.add_column(sa.Column("cost", sa.Float, nullable=True))
    op.create_index("ix_decisions_service_key", "decisions", ["service", "label_key", "ts"])
    op.create_table(
        "rejections",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("caller", sa.String(128), nullable=True),
        sa.Column("row_index", sa.Integer, nullable=True),
        sa.Column("field", sa.String(128), nullable=True),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("expected", sa.Text, nullable=True),
    )
    op.create_index("ix_rejections_service_ts", "rejections", ["service", "ts"])


def downgrade() -> None:
    op.drop_index("ix_rejections_service_ts", table_name="rejections")
    op.drop_table("rejections")
    op.drop_index("ix_decisions_service_key", table_name="decisions")
    with op.batch_alter_table("shadow_decisions") as batch:
        batch.drop_column("cost")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("completion_tokens")
        batch.drop_column("prompt_tokens")
        batch.drop_column("label_key")
