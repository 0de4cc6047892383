"""Services for tests and benchmarks: librdkafka's mock Kafka cluster and throwaway
PostgreSQL databases."""
from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class MockKafka:
    """librdkafka's in-process mock cluster (through confluent-kafka); the product talks to it
    with kafka-python at `bootstrap`. It lives as long as this object."""

    def __init__(self) -> None:
        import confluent_kafka

        self._holder = confluent_kafka.Producer({"test.mock.num.brokers": 1,
                                                 "bootstrap.servers": "unused", "log_level": 3})
        broker = next(iter(self._holder.list_topics(timeout=10).brokers.values()))
        self.bootstrap: str = f"{broker.host}:{broker.port}"

    def messages(self, topic: str, timeout_ms: int = 3000) -> list[Any]:
        """Every message on `topic` from the beginning (kafka-python ConsumerRecords)."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=[self.bootstrap], auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=timeout_ms,
                                 group_id=None)
        try:
            return list(consumer)
        finally:
            consumer.close()

    def json_messages(self, topic: str, timeout_ms: int = 3000) -> list[dict[str, Any]]:
        """Every message on `topic` from the beginning, JSON-decoded."""
        return [json.loads(m.value) for m in self.messages(topic, timeout_ms)]


@contextlib.contextmanager
def temporary_database(prefix: str, admin_url: str = DEFAULT_PG_ADMIN_URL) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of `admin_url`, named `prefix`_<random>,
    migrated to the head revision; yields its URL and drops it (connections and all) afterwards."""
    from sqlalchemy import create_engine, text

    from chronox.db import dispose_engines, upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def truncate_all(url: str) -> None:
    """Empty every table of chronox.models on the PostgreSQL database at `url` (one TRUNCATE;
    views are not in the metadata)."""
    from sqlalchemy import text

    from chronox.db import get_engine
    from chronox.models import Base

    with get_engine(url).begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(t.name for t in Base.metadata.sorted_tables)))
