"""Data sources, second part: where each run lives (so a killed run's batches are taken up
again), SQL cursors, staged batches, schema changes, quarantine replays and dataset versions.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_runs") as t:
        t.add_column(sa.Column("owner", sa.String(160), nullable=True))
        t.add_column(sa.Column("beat_at", sa.Float, nullable=True))
    with op.batch_alter_table("source_files") as t:
        t.add_column(sa.Column("claimed_at", sa.Float, nullable=True))
        t.add_column(sa.Column("staged", sa.Text, nullable=True))
        t.add_column(sa.Column("cursor_from", sa.Text, nullable=True))
        t.add_column(sa.Column("cursor_to", sa.Text, nullable=True))
        t.add_column(sa.Column("schema_diff", sa.Text, nullable=True))
    with op.batch_alter_table("quarantine") as t:
        t.add_column(sa.Column("replayed_at", sa.Float, nullable=True))
        t.add_column(sa.Column("replay_run", sa.String(36), nullable=True))
    op.create_table(
        "source_cursors",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("cursor", sa.Text, nullable=True),
        sa.Column("boundary", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("columns", sa.Text, nullable=False),
        sa.Column("contract_hash", sa.String(64), nullable=False),
        sa.Column("cursor_from", sa.Text, nullable=True),
        sa.Column("cursor_to", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
    )
    op.create_index("ux_datasets_content", "datasets", ["service", "source", "sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_datasets_content", table_name="datasets")
    op.drop_table("datasets")
    op.drop_table("source_cursors")
    with op.batch_alter_table("quarantine") as t:
        t.drop_column("replay_run")
        t.drop_column("replayed_at")
    with op.batch_alter_table("source_files") as t:
        for c in ("schema_diff", "cursor_to", "cursor_from", "staged", "claimed_at"):
            t.drop_column(c)
    with op.batch_alter_table("source_runs") as t:
        t.drop_column("beat_at")
        t.drop_column("owner")
