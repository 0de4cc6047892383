"""One migration history for SQLite and PostgreSQL, and it matches the models."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from chronox.db import get_engine, upgrade
from chronox.models import Base


def test_migrations_match_the_models(db_url):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert {"symbol_registry", "ohlcv_1m", "coverage", "quarantine", "publish_outbox"} <= tables


def test_upgrade_is_repeatable(db_url):
    upgrade(db_url)
    upgrade(db_url)
    with get_engine(db_url).connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
