"""The baseline: the schema every ferry made before migrations (services, revisions, instances, events, models).

A frozen copy of ``ferry.db``'s tables as they were then, created with IF NOT EXISTS exactly as that ferry
created them at first use: upgrading a store that ferry made (no ``alembic_version`` table, all these tables)
creates nothing and stamps it, and one made by an even older ferry gets its missing tables.

Revision ID: 0001_baseline
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.schema import CreateIndex, CreateTable, DropTable

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

metadata = MetaData()

Table(
    "services",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, index=True),
    Column("project", String(255), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

Table(
    "revisions",
    metadata,
    Column("service_id", String(64), ForeignKey("services.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Column("config", Text, nullable=False),
)

Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("service_id", String(64), ForeignKey("services.id", ondelete="CASCADE"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False, index=True),
    Column("revision", Integer, nullable=True),
    Column("state", JSON, nullable=False),
)

Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(64), nullable=True, index=True),
    Column("time", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("project", String(255), nullable=False),
    Column("framework", String(64), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("published", Boolean, nullable=False),
    Column("url", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("is_dir", Boolean, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("models_by_name", models.c.project, models.c.name, models.c.created_at)


def upgrade() -> None:
    for table in metadata.sorted_tables:
        op.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            op.execute(CreateIndex(index, if_not_exists=True))


def downgrade() -> None:
    for table in reversed(metadata.sorted_tables):
        op.execute(DropTable(table, if_exists=True))
