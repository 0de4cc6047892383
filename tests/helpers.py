"""Helpers shared by tests: synthetic files, table counts, bars in Polygon's JSON shape made
from the same synthetic data as the flat files, UTC times, scratch databases, provider
settings, `chronox stream` subprocesses, and waiting for a condition or a run."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

from chronox import registry
from chronox.db import get_engine
from chronox.sample import day_rows, write_day_file
from chronox.testing.polygon_rest import FakePolygonRest

if TYPE_CHECKING:
    import pytest

    from chronox.testing.polygon_ws import FakePolygonStream

KEY = "pk-TEST-5ecret-9f8e7d6c5b4a"  # Polygon API key: distinctive, so a leak shows up in any log or message


# -- times ----------------------------------------------------------------------------------

def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)


def as_utc(value: Any) -> dt.datetime:
    """A timestamp as a database returns it (ISO text from SQLite, naive or aware datetime) in UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# -- synthetic data -------------------------------------------------------------------------

def write_days(root: Path, days: Sequence[dt.date], tickers: Sequence[str]) -> dict[tuple[str, dt.date], int]:
    """Write sample files; returns the expected rows per (ticker, day)."""
    expected: dict[tuple[str, dt.date], int] = {}
    for day in days:
        rows = day_rows(day, tickers)
        write_day_file(root, day, rows)
        for t in tickers:
            expected[(t, day)] = sum(1 for r in rows if r[0] == t)
    return expected


def polygon_minute_bars(day: dt.date, symbol: str, shift: float = 0.0) -> list[dict[str, Any]]:
    """The sample data of a symbol-day as Polygon aggregates (epoch ms), prices shifted by `shift`."""
    return [{"t": ns // 1_000_000, "o": o + shift, "h": h + shift, "l": low + shift, "c": c + shift,
             "v": v, "vw": round((h + low) / 2 + shift, 4), "n": n}
            for _, v, o, c, h, low, ns, n in day_rows(day, [symbol])]


def polygon_daily_bar(day: dt.date, symbol: str) -> dict[str, Any]:
    """A daily aggregate of the sample data, stamped at New York midnight as Polygon does."""
    from chronox.calendar import day_bounds_utc

    rows = day_rows(day, [symbol])
    return {"t": int(day_bounds_utc(day)[0].timestamp() * 1000), "o": rows[0][2], "c": rows[-1][3],
            "h": max(r[4] for r in rows), "l": min(r[5] for r in rows), "v": sum(r[1] for r in rows),
            "vw": rows[-1][3], "n": sum(r[7] for r in rows)}


def serve_days(fake: FakePolygonRest, symbol: str, days: Sequence[dt.date], shift: float = 0.0) -> int:
    """Put the sample minute bars of `days` on the stand-in; returns how many."""
    total = 0
    for day in days:
        bars = polygon_minute_bars(day, symbol, shift)
        fake.add_minute_bars(symbol, bars)
        total += len(bars)
    return total


# -- reading the database -----------------------------------------------------------------

def count(url: str, sql: str, **params: Any) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def rows_by_symbol_day(url: str) -> dict[tuple[str, str], int]:
    """Counts of ohlcv_1m rows per symbol and New York day, computed in Python for portability."""
    from chronox.calendar import NEW_YORK

    out: dict[tuple[str, str], int] = {}
    with get_engine(url).connect() as conn:
        for symbol, ts in conn.execute(text("SELECT symbol, ts FROM ohlcv_1m")):
            key = (symbol, as_utc(ts).astimezone(NEW_YORK).date().isoformat())
            out[key] = out.get(key, 0) + 1
    return out


def statuses(url: str, symbols: Sequence[str]) -> dict[str, str]:
    """Registry status per symbol."""
    return registry.status_of(get_engine(url), symbols)


@contextmanager
def empty_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database named `prefix`_<random>, not migrated (a test takes it through
    the revisions itself); yields its URL and drops it, connections and all, afterwards."""
    from chronox.db import dispose_engines
    from tests.conftest import PG_ADMIN_URL

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- providers --------------------------------------------------------------------------------

def provider_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_variable: str) -> str:
    """A provider's shared state (budgets, breaker) in the test's Redis database, a short timeout,
    and its API key `key_variable` unset unless the test sets one; returns `redis_url`."""
    monkeypatch.setenv("CHRONOX_REDIS_URL", redis_url)
    monkeypatch.setenv("CHRONOX_POLYGON_TIMEOUT", "5")
    monkeypatch.delenv(key_variable, raising=False)
    return redis_url


# -- the stream process -----------------------------------------------------------------------

class StreamProcess:
    """`python -m chronox.cli stream` with the test's environment; output kept in files."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        from tests.conftest import REPO

        name = f"stream-{uuid.uuid4().hex[:6]}"  # a test may start more than one
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "chronox.cli", "stream"], cwd=REPO, env=env,
                                     stdout=self._out, stderr=self._err)

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"stream process still running after {timeout}s:\n{self.log()}") from None

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 30) -> tuple[int, dict[str, Any]]:
        """Signal (unless sig is None), wait, and return the exit code and the final stats line."""
        if sig is not None:
            self.proc.send_signal(sig)
        code = self.wait(timeout)
        lines = self.out_path.read_text().strip().splitlines()
        return code, json.loads(lines[-1]) if lines else {}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


@contextmanager
def stream_starter(server: FakePolygonStream, log_dir: Path,
                   **settings: str) -> Iterator[Callable[..., StreamProcess]]:
    """A function that starts `chronox stream` on the websocket stand-in `server` with `settings`
    and the keyword overrides it is given; every process it started is closed at the end."""
    processes: list[StreamProcess] = []

    def start(**overrides: str) -> StreamProcess:
        env = {**os.environ, "POLYGON_API_KEY": server.api_key, "CHRONOX_POLYGON_WS_URL": server.url,
               "CHRONOX_STREAM_POLL_SECONDS": "0.3", "CHRONOX_STREAM_STAMP_SECONDS": "0.2",
               **settings, **overrides}
        process = StreamProcess(env, log_dir)
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.close()


# -- waiting --------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll until predicate() is truthy and return its value; fail naming `what` after `timeout`.

    An exception in `ignore` counts as not yet (a service a fault took away may be back soon).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached in {timeout:.0f}s: {what}")
        time.sleep(interval)


def wait_for_statuses(url: str, symbols: Sequence[str], timeout: float = 120,
                      settled: Iterable[str] = ("completed", "error")) -> dict[str, str]:
    """Wait until every symbol's registry status is one of `settled`; returns the statuses.
    A database that does not answer (a fault test restarting it) counts as not yet."""
    from sqlalchemy.exc import DBAPIError

    settled = tuple(settled)
    last: dict[str, str] = {}

    def done() -> dict[str, str] | None:
        last.update(statuses(url, symbols))
        return dict(last) if len(last) == len(symbols) and all(s in settled for s in last.values()) else None

    try:
        return wait_until(done, timeout, f"registry statuses in {settled}", interval=0.3, ignore=(DBAPIError,))
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {last}") from None
