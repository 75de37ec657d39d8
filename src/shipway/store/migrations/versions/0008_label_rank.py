"""Labels record the role of who gave them and a rank: reviewers' outcomes outrank labels
from people who label, which outrank labels from callers.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("rank", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("role", sa.String(32), nullable=True))
    op.execute("UPDATE feedback SET rank = 3 WHERE source = 'review'")


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("role")
        batch.drop_column("rank")
