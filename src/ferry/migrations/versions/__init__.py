"""Alembic revisions of the store's schema, oldest first by their number; each file is one revision."""
