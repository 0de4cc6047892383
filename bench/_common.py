"""Shared plumbing for benchmarks: a throwaway PostgreSQL database and the mock Kafka broker."""
from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_ADMIN_URL = os.environ.get("CHRONOX_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def temporary_database(prefix: str = "chronox_bench") -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from chronox.db import dispose_engines, upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def mock_kafka():  # type: ignore[no-untyped-def]
    """librdkafka's in-process mock cluster: (holder producer, 'host:port')."""
    import confluent_kafka

    holder = confluent_kafka.Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "unused",
                                       "log_level": 3})
    broker = next(iter(holder.list_topics(timeout=10).brokers.values()))
    return holder, f"{broker.host}:{broker.port}"
