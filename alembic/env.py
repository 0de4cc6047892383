"""Alembic environment: same database URL and metadata as the application."""
from __future__ import annotations

from sqlalchemy import engine_from_config, pool

from alembic import context
from chronox.models import Base
from chronox.settings import load_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or load_settings().database_url
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # Batch mode lets the same migration history alter tables on SQLite.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Workers may all run `db upgrade` at start-up; serialize them.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7234001)")
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
