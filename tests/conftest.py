"""Fixtures on real services: PostgreSQL, Redis, librdkafka's mock Kafka, Celery workers,
the Polygon REST stand-in. The stand-ins and process helpers themselves are chronox.testing's."""
from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chronox.db import dispose_engines, upgrade
from chronox.testing.polygon_rest import FakePolygonRest
from chronox.testing.services import MockKafka, temporary_database, truncate_all
from chronox.testing.workers import WorkerProcess
from tests.helpers import KEY, StreamProcess, stream_starter

if TYPE_CHECKING:
    from celery import Celery

    from chronox.testing.polygon_ws import FakePolygonStream
    from chronox.testing.provider_calls import ProviderWorkers
    from tests.faults.servers import PrivatePostgres

PG_ADMIN_URL = os.environ.get("CHRONOX_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("CHRONOX_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
REPO = Path(__file__).resolve().parent.parent

# Three trading days around nothing special, and a window with a holiday and a half day.
DAYS = (dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the embedded defaults, whatever the shell exported."""
    from chronox.settings import LEGACY_VARIABLES  # TIMESCALE_HOST, REDIS_HOST, ...: fallbacks, cleared too

    for name in list(os.environ):
        if name.startswith("CHRONOX_") and not name.startswith("CHRONOX_TEST_") or name == "POLYGON_API_KEY" \
                or name in LEGACY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
    from chronox import breaker

    breaker._stores.clear()  # a provider's circuit, opened by one test's faults, is not the next test's
    yield
    dispose_engines()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private database on the shared server, migrated once, dropped at the end."""
    with temporary_database(f"chronox_test_{os.getpid()}", PG_ADMIN_URL) as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL test database, every table emptied, and selected through the environment."""
    truncate_all(pg_database)
    monkeypatch.setenv("CHRONOX_DATABASE_URL", pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'chronox.db'}"
    upgrade(url)
    monkeypatch.setenv("CHRONOX_DATABASE_URL", url)
    return url


@pytest.fixture
def private_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own (tests/faults/servers.py), which it may stop and
    start: migrated and selected through the environment, destroyed at the end."""
    from tests.faults.servers import PrivatePostgres

    server = PrivatePostgres()
    try:
        upgrade(server.url)
        monkeypatch.setenv("CHRONOX_DATABASE_URL", server.url)
        yield server
    finally:
        dispose_engines()
        server.destroy()


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


@pytest.fixture
def celery_broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's Redis database as the Celery broker (and result backend), through the environment."""
    monkeypatch.setenv("CHRONOX_BROKER_URL", redis_url)
    return redis_url


@pytest.fixture
def celery_client(celery_broker: str) -> Iterator[Celery]:
    """A Celery client of this test's workers (send_task, control, AsyncResult), made from the
    environment when first requested: list it after any fixture that moves the broker
    (private_redis in tests/faults/conftest.py)."""
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


@pytest.fixture
def polygon(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePolygonRest]:
    """The Polygon REST stand-in, selected through the environment like a real deployment."""
    with FakePolygonRest(api_key=KEY) as fake:
        monkeypatch.setenv("POLYGON_API_KEY", KEY)
        monkeypatch.setenv("CHRONOX_POLYGON_BASE_URL", fake.base_url)
        monkeypatch.setenv("CHRONOX_POLYGON_TIMEOUT", "5")
        yield fake


@pytest.fixture
def rest_db(db_url: str) -> str:
    """db_url (SQLite and PostgreSQL) for the REST tests: every table starts empty there."""
    return db_url


@pytest.fixture
def rest_pg(pg_url: str) -> str:
    """pg_url for the REST tests: every table starts empty there."""
    return pg_url


@pytest.fixture(scope="module")
def workers() -> Iterator[ProviderWorkers]:
    """Worker processes that call a provider together (limits shared across processes)."""
    from chronox.testing.provider_calls import ProviderWorkers

    pool = ProviderWorkers(2)
    yield pool
    pool.close()


@pytest.fixture
def ws() -> Iterator[FakePolygonStream]:
    """The Polygon websocket stand-in."""
    from chronox.testing.polygon_ws import FakePolygonStream

    with FakePolygonStream() as server:
        yield server


@pytest.fixture
def start_stream(ws: FakePolygonStream, tmp_path: Path) -> Iterator[Callable[..., StreamProcess]]:
    """Start `chronox stream` subprocesses on `ws` (keyword arguments: settings to override)."""
    with stream_starter(ws, tmp_path) as start:
        yield start
