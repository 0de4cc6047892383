"""Fixtures of the fault tests: servers a test owns and may take away (tests.faults.servers,
tests.faults.support.PrivateKafka), each selected through the environment. private_postgres
is in tests/conftest.py: tests outside tests/faults use it too."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.servers import PrivateRedis
from tests.faults.support import PrivateKafka


@pytest.fixture
def private_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """This test's broker and result backend."""
    server = PrivateRedis(tmp_path / "redis")
    monkeypatch.setenv("CHRONOX_BROKER_URL", server.url)
    monkeypatch.setenv("CHRONOX_RESULT_BACKEND", server.url)
    yield server
    server.stop()


@pytest.fixture
def private_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateKafka]:
    """A mock Kafka cluster for this test alone, selected through the environment."""
    cluster = PrivateKafka()
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", cluster.bootstrap)
    from chronox import publish

    publish._publishers.clear()
    yield cluster
    cluster.stop()
