"""revisions.author: who made the change (NULL for revisions written before it was recorded).

Revision ID: 0002_revision_author
Revises: 0001_baseline
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_revision_author"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("revisions", sa.Column("author", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revisions") as batch:  # SQLite before 3.35 cannot drop a column in place
        batch.drop_column("author")
