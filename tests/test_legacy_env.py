"""The registry service's environment variables (TIMESCALE_*, REDIS_*, KAFKA_BROKERS,
ENABLE_SCHEDULER, SNAPSHOT_INTERVAL_MINUTES) as fallbacks for the CHRONOX_ ones; the
start-up line that says which database, broker and Kafka a process chose; and unreachable
services as one line within seconds, never a traceback. Passwords appear nowhere."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from chronox import registry
from chronox.db import get_engine
from chronox.settings import ConfigError, load_settings
from chronox.testing.services import temporary_database
from tests.conftest import PG_ADMIN_URL, REPO
from tests.helpers import write_days

pytestmark = pytest.mark.timeout(120)

PASSWORD = "s3cr3t:p@ss/word"  # URL-special characters on purpose
ALL_LEGACY = {"TIMESCALE_HOST": "db.example", "TIMESCALE_PORT": "6543", "TIMESCALE_DB": "market",
              "TIMESCALE_USER": "chronox", "TIMESCALE_PASSWORD": PASSWORD, "REDIS_HOST": "cache.example",
              "REDIS_PORT": "6380", "REDIS_PASSWORD": PASSWORD, "KAFKA_BROKERS": "k1:9092, k2:9092",
              "ENABLE_SCHEDULER": "false", "SNAPSHOT_INTERVAL_MINUTES": "2"}
CHRONOX = str(Path(sys.executable).with_name("chronox"))  # the installed command, as people run it
TIMESCALE_NAMES = ("TIMESCALE_HOST", "TIMESCALE_PORT", "TIMESCALE_DB", "TIMESCALE_USER", "TIMESCALE_PASSWORD")


# == Settings ===================================================================================

def test_legacy_variables_fill_in_every_unset_chronox_one():
    settings = load_settings(ALL_LEGACY)
    database = make_url(settings.database_url)
    assert (database.drivername, database.host, database.port, database.database, database.username,
            database.password) == ("postgresql", "db.example", 6543, "market", "chronox", PASSWORD)
    broker = make_url(settings.broker_url)
    assert (broker.drivername, broker.host, broker.port, broker.database, broker.password) == \
        ("redis", "cache.example", 6380, "0", PASSWORD)
    assert settings.redis_url == settings.broker_url == settings.result_backend
    assert settings.kafka_brokers == ("k1:9092", "k2:9092")
    assert (settings.enable_scheduler, settings.snapshot_interval_minutes) == (False, 2.0)
    assert settings.origin("database_url") == TIMESCALE_NAMES
    assert settings.origin("broker_url") == settings.origin("redis_url") == \
        ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD")
    assert settings.origin("kafka_brokers") == ("KAFKA_BROKERS",)
    assert settings.origin("enable_scheduler") == ("ENABLE_SCHEDULER",)
    assert settings.origin("polygon_timeout") == ()  # the default


def test_parts_not_given_take_libpq_and_redis_defaults():
    alone = load_settings({"TIMESCALE_HOST": "db"})
    assert alone.database_url == "postgresql://postgres@db:5432/postgres"
    assert alone.origin("database_url") == ("TIMESCALE_HOST",)
    # libpq names the database after the user when none is given
    assert load_settings({"TIMESCALE_USER": "market"}).database_url == "postgresql://market@localhost:5432/market"
    assert load_settings({"REDIS_HOST": "cache"}).broker_url == "redis://cache:6379/0"
    assert load_settings({"REDIS_PASSWORD": "pw"}).broker_url == "redis://:pw@localhost:6379/0"
    nothing = load_settings({})
    assert (nothing.database_url, nothing.broker_url, nothing.kafka_brokers) == ("sqlite:///chronox.db", None, ())
    assert nothing.origins == ()


def test_chronox_variables_win_over_the_old_names():
    settings = load_settings({**ALL_LEGACY, "CHRONOX_DATABASE_URL": "sqlite:///x.db",
                              "CHRONOX_BROKER_URL": "amqp://guest@rabbit//", "CHRONOX_REDIS_URL": "redis://r:1/2",
                              "CHRONOX_KAFKA_BROKERS": "kafka:9092", "CHRONOX_ENABLE_SCHEDULER": "true",
                              "CHRONOX_SNAPSHOT_INTERVAL_MINUTES": "7"})
    assert (settings.database_url, settings.broker_url, settings.redis_url, settings.kafka_brokers,
            settings.enable_scheduler, settings.snapshot_interval_minutes) == \
        ("sqlite:///x.db", "amqp://guest@rabbit//", "redis://r:1/2", ("kafka:9092",), True, 7.0)
    assert settings.origin("database_url") == ("CHRONOX_DATABASE_URL",)
    assert settings.origin("broker_url") == ("CHRONOX_BROKER_URL",)
    assert settings.result_backend is None  # not a Redis broker: no result backend guessed
    # a blank CHRONOX_ variable counts as unset, as everywhere
    assert load_settings({**ALL_LEGACY, "CHRONOX_KAFKA_BROKERS": " "}).origin("kafka_brokers") == ("KAFKA_BROKERS",)


def test_old_schedule_variables_shape_beat(monkeypatch):
    import importlib

    import celeryconfig

    monkeypatch.setenv("SNAPSHOT_INTERVAL_MINUTES", "2")
    assert importlib.reload(celeryconfig).beat_schedule["snapshot_refresh"]["schedule"] == 120
    monkeypatch.setenv("ENABLE_SCHEDULER", "false")
    assert importlib.reload(celeryconfig).beat_schedule == {}
    monkeypatch.setenv("CHRONOX_ENABLE_SCHEDULER", "true")  # wins
    assert "nightly_gap_scan" in importlib.reload(celeryconfig).beat_schedule
    for name in ("SNAPSHOT_INTERVAL_MINUTES", "ENABLE_SCHEDULER", "CHRONOX_ENABLE_SCHEDULER"):
        monkeypatch.delenv(name)
    importlib.reload(celeryconfig)


def test_passwords_stay_out_of_repr_and_errors():
    settings = load_settings({**ALL_LEGACY, "CHRONOX_RESULT_BACKEND": f"redis://:{PASSWORD.replace('/', '%2F')}@r/1"})
    shown = repr(settings)
    assert PASSWORD not in shown and "s3cr3t" not in shown
    assert "postgresql://chronox:***@db.example:6543/market" in shown and "redis://:***@cache.example:6380/0" in shown
    for bad, named in (({"TIMESCALE_PORT": "five"}, "TIMESCALE_PORT='five' is not an integer"),
                       ({"REDIS_PORT": "70000"}, "REDIS_PORT='70000' is more than 65535"),
                       ({"ENABLE_SCHEDULER": "sometimes"}, "ENABLE_SCHEDULER='sometimes' is not a boolean"),
                       ({"SNAPSHOT_INTERVAL_MINUTES": "0"}, "SNAPSHOT_INTERVAL_MINUTES='0' must be a positive")):
        with pytest.raises(ConfigError) as info:
            load_settings({"TIMESCALE_PASSWORD": PASSWORD, "REDIS_PASSWORD": PASSWORD, **bad})
        assert named in str(info.value) and "s3cr3t" not in str(info.value)


def test_startup_line_names_each_choice_and_its_variables():
    from chronox.reachability import describe

    line = describe(load_settings({**ALL_LEGACY, "CHRONOX_KAFKA_BROKERS": "kafka:9092"}))
    assert line == ("database postgresql://chronox:***@db.example:6543/market (from " + ", ".join(TIMESCALE_NAMES)
                    + "); broker redis://:***@cache.example:6380/0 (from REDIS_HOST, REDIS_PORT, REDIS_PASSWORD); "
                    "kafka kafka:9092 (from CHRONOX_KAFKA_BROKERS)")
    assert describe(load_settings({})) == (
        "database sqlite:///chronox.db (embedded default); broker none, tasks run in-process (embedded default); "
        "kafka off, nothing is published (embedded default)")


# == Real processes =============================================================================

def chronox(*args: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([CHRONOX, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung service, a wrong port)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def startup_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "chronox.startup: database " in line]


def one_error(proc: subprocess.CompletedProcess[str], seconds: float) -> str:
    """The single `Error:` line of a failed command, after checking it is all it said."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    # the start-up line, then the error: nothing else
    assert len(errors) == 1 and len(startup_lines(proc.stderr)) == 1 and len(proc.stderr.splitlines()) == 2, \
        proc.stderr
    assert seconds < 10, seconds
    return errors[0]


@pytest.mark.parametrize("command,variables,expected", [
    (("run",), {"CHRONOX_BROKER_URL": "redis://127.0.0.1:{port}/0"},
     "Error: broker redis://127.0.0.1:{port}/0 (CHRONOX_BROKER_URL) is unreachable: "),
    (("run", "--symbols", "AAPL"), {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "{port}", "REDIS_PASSWORD": PASSWORD},
     "Error: broker redis://:***@127.0.0.1:{port}/0 (REDIS_HOST, REDIS_PORT, REDIS_PASSWORD) is unreachable: "),
    (("symbols", "list"), {"CHRONOX_DATABASE_URL": "postgresql://chronox:s3cr3t@127.0.0.1:{port}/market"},
     "Error: database postgresql://chronox:***@127.0.0.1:{port}/market (CHRONOX_DATABASE_URL) is unreachable: "),
    (("symbols", "list"), {"TIMESCALE_HOST": "127.0.0.1", "TIMESCALE_PORT": "{port}", "TIMESCALE_PASSWORD": PASSWORD},
     "Error: database postgresql://postgres:***@127.0.0.1:{port}/postgres (TIMESCALE_HOST, TIMESCALE_PORT, "
     "TIMESCALE_PASSWORD) is unreachable: "),
    (("run",), {"KAFKA_BROKERS": "127.0.0.1:{port}"},
     "Error: kafka 127.0.0.1:{port} (KAFKA_BROKERS) is unreachable: "),
])
@pytest.mark.parametrize("service", ["refused", "silent"])
def test_unreachable_service_is_one_line_within_seconds(tmp_path, command, variables, expected, service):
    with contextlib.ExitStack() as stack:
        port = closed_port() if service == "refused" else stack.enter_context(silent_server())
        env = {**os.environ, **{k: v.format(port=port) for k, v in variables.items()}}
        proc, seconds = chronox(*command, env=env, cwd=tmp_path)
    error = one_error(proc, seconds)
    assert error.startswith(expected.format(port=port)), error
    reason = error[len(expected.format(port=port)):]
    assert reason and "\n" not in reason
    if service == "refused":
        assert "refused" in reason.lower(), reason
    assert "s3cr3t" not in proc.stderr


@pytest.mark.parametrize("how", [("--publish-mode", "db-first"), ("CHRONOX_PUBLISH_MODE", "db-first")])
def test_db_first_runs_without_kafka(tmp_path, how):
    """db-first commits bars and keeps them in the outbox while Kafka is away: no check stops it."""
    option, value = how
    env = {**os.environ, "KAFKA_BROKERS": f"127.0.0.1:{closed_port()}"}
    args = ["run"]
    if option.startswith("--"):
        args += [option, value]
    else:
        env[option] = value
    proc, _ = chronox(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr
    assert "nothing to run" in proc.stdout


def test_timescale_variables_reach_postgresql_and_say_so_once(tmp_path):
    """TIMESCALE_* pointed at the local server and a private database: the commands use it
    (rows land there), and each process says so once, password hidden."""
    with temporary_database("chronox_legacy", PG_ADMIN_URL) as url:
        parts = make_url(url)
        env = {**os.environ, "TIMESCALE_HOST": parts.host or "127.0.0.1", "TIMESCALE_PORT": str(parts.port or 5432),
               "TIMESCALE_DB": parts.database or "", "TIMESCALE_USER": parts.username or "postgres",
               "TIMESCALE_PASSWORD": PASSWORD}  # trust auth takes any password: the URL still carries it
        added, _ = chronox("symbols", "add", "LEGDB", "--strategy", "flatpack", env=env, cwd=tmp_path)
        listed, _ = chronox("symbols", "list", "--json", env=env, cwd=tmp_path)
        assert added.returncode == 0 and listed.returncode == 0, added.stderr + listed.stderr
        assert [r["symbol"] for r in json.loads(listed.stdout)] == ["LEGDB"]
        with get_engine(url).connect() as conn:  # the private database holds it, not a SQLite file
            assert conn.execute(text("SELECT strategy FROM symbol_registry")).all() == [("flatpack",)]
        assert not (tmp_path / "chronox.db").exists()
        expected = (f"database postgresql://{parts.username}:***@{parts.host}:{parts.port}/{parts.database} "
                    f"(from {', '.join(TIMESCALE_NAMES)}); broker none, tasks run in-process (embedded default); "
                    "kafka off, nothing is published (embedded default)")
        for proc in (added, listed):
            [line] = startup_lines(proc.stderr)
            assert line.endswith(f"INFO chronox.startup: {expected}"), line
            assert "s3cr3t" not in proc.stdout + proc.stderr


def test_run_uses_kafka_brokers_and_announces_once(tmp_path, kafka_cluster):
    """A whole in-process run with the old KAFKA_BROKERS: its bars reach Kafka, and the run,
    which reads the settings many times, says what it chose once."""
    flatfiles = tmp_path / "flatfiles"
    flatfiles.mkdir()
    expected = write_days(flatfiles, [dt.date(2024, 1, 2)], ["LEGK"])
    env = {**os.environ, "KAFKA_BROKERS": kafka_cluster.bootstrap, "CHRONOX_FLATFILES_URL": str(flatfiles),
           "CHRONOX_DATABASE_URL": f"sqlite:///{tmp_path / 'legacy.db'}"}
    assert chronox("symbols", "add", "LEGK", "--strategy", "flatpack", env=env, cwd=tmp_path)[0].returncode == 0
    proc, _ = chronox("run", "--symbols", "LEGK", "--start", "2024-01-02", "--end", "2024-01-02", "--json",
                      env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [line] = startup_lines(proc.stderr)
    assert line.endswith(f"; kafka {kafka_cluster.bootstrap} (from KAFKA_BROKERS)"), line
    assert "(from CHRONOX_DATABASE_URL)" in line
    bars = [m for m in kafka_cluster.json_messages("chronox.backfill.LEGK") if m.get("event") == "bar"]
    assert len(bars) == sum(expected.values()) > 0


def test_worker_and_beat_say_what_they_chose_once(tmp_path, monkeypatch, celery_client, start_worker, kafka_cluster):
    """Real `celery worker` and `celery beat` processes on the old variables: the worker's
    task writes to the TIMESCALE_* database and publishes to KAFKA_BROKERS."""
    with temporary_database("chronox_legacy", PG_ADMIN_URL) as url:
        parts = make_url(url)
        for name, value in {"TIMESCALE_HOST": parts.host, "TIMESCALE_PORT": str(parts.port),
                            "TIMESCALE_DB": parts.database, "TIMESCALE_PASSWORD": PASSWORD,
                            "KAFKA_BROKERS": kafka_cluster.bootstrap, "ENABLE_SCHEDULER": "false"}.items():
            monkeypatch.setenv(name, str(value))
        registry.add_symbol(get_engine(url), "LEGW", "stream")
        worker = start_worker(concurrency=1)
        result = celery_client.send_task("chronox.phase.stream", args=["LEGW"]).get(timeout=30)
        assert result["activated"] is True
        assert registry.get_symbol(get_engine(url), "LEGW").status == "running"
        [event] = kafka_cluster.json_messages("chronox.stream.LEGW")
        assert (event["symbol"], event["action"]) == ("LEGW", "activate")
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "chronox", "beat", "-s",
                                 str(tmp_path / "beat-schedule"), "--pidfile="], cwd=REPO, env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            beat_log = ""
            while "database postgresql" not in beat_log:  # pytest's timeout bounds the wait
                line = beat.stdout.readline() if beat.stdout else ""
                assert line or beat.poll() is None, beat_log
                beat_log += line
        finally:
            beat.terminate()
            try:
                beat_log += beat.communicate(timeout=20)[0]
            except subprocess.TimeoutExpired:
                # What beat printed is what this test checks, not how fast it stops: once, under
                # two test processes' load, a beat stopped just after start-up took longer.
                beat.kill()
                beat_log += beat.communicate()[0]
    expected = (f"database postgresql://postgres:***@{parts.host}:{parts.port}/{parts.database} (from TIMESCALE_HOST, "
                "TIMESCALE_PORT, TIMESCALE_DB, TIMESCALE_PASSWORD); broker ")
    for log in (worker.log(), beat_log):
        lines = [line for line in log.splitlines() if expected in line]
        assert len(lines) == 1, log
        assert lines[0].endswith(f"; kafka {kafka_cluster.bootstrap} (from KAFKA_BROKERS)"), lines[0]
        assert "(from CHRONOX_BROKER_URL)" in lines[0]
        assert "s3cr3t" not in log


# == The service's index ========================================================================

@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_registry_index_comes_with_migration_0005_and_goes_with_its_downgrade(kind, tmp_path):
    from sqlalchemy import inspect

    from alembic import command
    from chronox.db import alembic_config, dispose_engines, upgrade

    def indexes(url: str) -> dict[str, list[str | None]]:
        dispose_engines()
        with get_engine(url).connect() as conn:
            return {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("symbol_registry")}

    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'index.db'}"
            upgrade(url)
        else:
            url = stack.enter_context(temporary_database("chronox_index", PG_ADMIN_URL))
        assert indexes(url)["idx_symbol_registry_enabled"] == ["enabled", "status"]
        command.downgrade(alembic_config(url), "0004")
        assert "idx_symbol_registry_enabled" not in indexes(url)
        command.upgrade(alembic_config(url), "0005")
        assert indexes(url)["idx_symbol_registry_enabled"] == ["enabled", "status"]
        dispose_engines()
