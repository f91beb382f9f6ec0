"""Alembic's environment for the store: run by ``ferry.migrations`` on the connection it holds locked.

Outside ferry (a developer's ``alembic`` session) it connects to ``sqlalchemy.url`` or ``FERRY_STORE``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from ferry.db import metadata

config = context.config


def _configure(**kwargs) -> None:
    context.configure(target_metadata=metadata, render_as_batch=True, compare_type=True, **kwargs)


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # ferry's own call: inside its transaction, under the schema lock
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from ferry.settings import Settings

        url = Settings().store_url()
    if context.is_offline_mode():
        _configure(url=url, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with create_engine(url, poolclass=NullPool).connect() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()


run()
