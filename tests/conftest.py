"""Fixtures on real services: PostgreSQL, Redis, librdkafka's mock Kafka, Celery workers."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from chronox.db import dispose_engines, get_engine, upgrade

if TYPE_CHECKING:
    from celery import Celery

PG_ADMIN_URL = os.environ.get("CHRONOX_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("CHRONOX_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
REPO = Path(__file__).resolve().parent.parent
TABLES = ("ohlcv_1m", "coverage", "quarantine", "publish_outbox", "symbol_registry")

# Three trading days around nothing special, and a window with a holiday and a half day.
DAYS = (dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the embedded defaults, whatever the shell exported."""
    for name in list(os.environ):
        if name.startswith("CHRONOX_") and not name.startswith("CHRONOX_TEST_") or name == "POLYGON_API_KEY":
            monkeypatch.delenv(name, raising=False)
    yield
    dispose_engines()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private database on the shared server, migrated once, dropped at the end."""
    name = f"chronox_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL test database, emptied, and selected through the environment."""
    engine = get_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
    monkeypatch.setenv("CHRONOX_DATABASE_URL", pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'chronox.db'}"
    upgrade(url)
    monkeypatch.setenv("CHRONOX_DATABASE_URL", url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run a test on both the embedded default and PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(scope="session")
def redis_database() -> Iterator[str]:
    """A Redis database number of this test session's own, so two sessions on one machine
    never consume each other's tasks: claimed with a key that expires if the session dies."""
    import redis

    claim = f"chronox-test-session:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    for number in range(8, 16):
        client = redis.Redis.from_url(f"{REDIS_SERVER}/{number}")
        if client.set("chronox-test-claim", claim, nx=True, ex=3600):
            break
    else:
        raise RuntimeError("Redis databases 8-15 are all claimed by other test sessions")
    yield f"{REDIS_SERVER}/{number}"
    if client.get("chronox-test-claim") == claim.encode():
        client.flushdb()


@pytest.fixture
def redis_url(redis_database: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_database)
    claim = client.get("chronox-test-claim") or b"renewed"

    def empty() -> None:
        client.flushdb()
        client.set("chronox-test-claim", claim, ex=3600)

    empty()
    yield redis_database
    empty()


class MockKafka:
    """librdkafka's in-process mock cluster; the product talks to it with kafka-python."""

    def __init__(self) -> None:
        import confluent_kafka

        self._holder = confluent_kafka.Producer({"test.mock.num.brokers": 1,
                                                 "bootstrap.servers": "unused", "log_level": 3})
        broker = next(iter(self._holder.list_topics(timeout=10).brokers.values()))
        self.bootstrap = f"{broker.host}:{broker.port}"

    def messages(self, topic: str, timeout_ms: int = 3000) -> list:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=[self.bootstrap], auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=timeout_ms,
                                 group_id=None)
        try:
            return list(consumer)
        finally:
            consumer.close()

    def json_messages(self, topic: str, timeout_ms: int = 3000) -> list[dict]:
        import json

        return [json.loads(m.value) for m in self.messages(topic, timeout_ms)]


@pytest.fixture(scope="session")
def kafka_cluster() -> MockKafka:
    return MockKafka()


@pytest.fixture
def kafka(kafka_cluster: MockKafka, monkeypatch: pytest.MonkeyPatch) -> MockKafka:
    """Kafka on, with a per-test topic namespace is not needed: topics are per symbol and
    each test uses its own symbols or reads only what it wrote after its start."""
    monkeypatch.setenv("CHRONOX_KAFKA_BROKERS", kafka_cluster.bootstrap)
    from chronox import publish

    publish._publishers.clear()
    return kafka_cluster


@pytest.fixture
def flatfiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "flatfiles"
    root.mkdir()
    monkeypatch.setenv("CHRONOX_FLATFILES_URL", str(root))
    return root


class WorkerProcess:
    def __init__(self, env: dict[str, str], concurrency: int = 2, queues: str | None = None,
                 name: str | None = None):
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        args = [sys.executable, "-m", "celery", "-A", "chronox", "worker", "-P", "prefork",
                "-c", str(concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "-E"]
        if queues:
            args += ["-Q", queues]
        self.log_path = Path(env.get("CHRONOX_TEST_LOG_DIR", "/tmp")) / f"chronox-worker-{self.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, client: Celery, timeout: float = 60) -> None:
        """Return once this worker answers `client`'s ping (see the celery_client fixture)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            replies = client.control.ping(timeout=1.0)
            if any(self.name in key for reply in replies for key in reply):
                return
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def celery_broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's Redis database as the Celery broker (and result backend), through the environment."""
    monkeypatch.setenv("CHRONOX_BROKER_URL", redis_url)
    return redis_url


@pytest.fixture
def celery_client(celery_broker: str) -> Iterator[Celery]:
    """A Celery client of this test's workers (send_task, control, AsyncResult), made from the
    environment when first requested: list it after any fixture that moves the broker
    (tests.faults.servers.private_redis)."""
    from chronox.celery_app import make_client
    from chronox.settings import load_settings

    client = make_client(load_settings())
    yield client
    client.close()


@pytest.fixture
def start_worker(celery_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `celery worker` processes on the Redis broker with the test's environment;
    each is returned once it answers the test's celery_client."""
    monkeypatch.setenv("CHRONOX_TEST_LOG_DIR", str(tmp_path))
    workers: list[WorkerProcess] = []

    def start(concurrency: int = 2, queues: str | None = None) -> WorkerProcess:
        # Requested now, not at setup: the environment may have moved the broker since.
        client: Celery = request.getfixturevalue("celery_client")
        worker = WorkerProcess(dict(os.environ), concurrency=concurrency, queues=queues)
        workers.append(worker)
        worker.wait_ready(client)
        return worker

    yield start
    for worker in workers:
        worker.stop()
