"""Engine and session helpers, and Alembic upgrades driven from code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

from chronox.settings import load_settings

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the progress display read while the loader writes; busy_timeout turns
    # lock contention into waiting instead of "database is locked" errors.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """One pooled engine per URL and process (Celery prefork children get their own)."""
    url = url or load_settings().database_url
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _ENGINES[url] = engine
    return engine


def dispose_engines() -> None:
    """Forget pooled connections, e.g. after fork, so processes never share sockets."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


def prepared_engine(url: str) -> Engine:
    """The engine of a database ready for use: the embedded SQLite database is private
    to this machine, so it is kept migrated silently; PostgreSQL is `chronox db upgrade`'s."""
    if url.startswith("sqlite"):
        upgrade(url)
    return get_engine(url)


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", (url or load_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply migrations; safe to run repeatedly and from several processes at startup."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
