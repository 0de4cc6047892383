"""sink_state: what each sink holds of each symbol-day, and which sinks lag the database."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, tuple_

from chronox import sinks
from chronox.models import Coverage, SinkState, table
from chronox.settings import Settings
from chronox.store import upsert

SINK_STATE = table(SinkState)
COVERAGE = table(Coverage)
LAG_DAYS = 30  # `chronox status` checks the symbol-days (re)loaded this many days back


@dataclass(frozen=True)
class Held:
    rows: int
    digest: str


def held(conn: Connection, sink: str, symbols: Sequence[str],
         days: Sequence[dt.date]) -> dict[tuple[str, dt.date], Held]:
    """What `sink` holds of these symbols on these days."""
    if not symbols or not days:
        return {}
    found: dict[tuple[str, dt.date], Held] = {}
    for i in range(0, len(symbols), 5000):
        query = select(SINK_STATE.c.symbol, SINK_STATE.c.day, SINK_STATE.c.rows, SINK_STATE.c.digest).where(
            SINK_STATE.c.sink == sink, SINK_STATE.c.symbol.in_(list(symbols[i:i + 5000])),
            SINK_STATE.c.day.in_(list(days)))
        found.update({(s, d): Held(n, h) for s, d, n, h in conn.execute(query)})
    return found


def record(conn: Connection, sink: str, entries: Iterable[tuple[str, dt.date, int, str]]) -> None:
    """(symbol, day, rows, digest) written by `sink` just now."""
    now = dt.datetime.now(dt.UTC)
    if conn.dialect.name == "postgresql":
        from psycopg2.extras import execute_values  # type: ignore[import-untyped]

        # A full-market day is 10,000 rows: one multi-row statement per 5,000, not a statement each.
        with conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            execute_values(cursor, "INSERT INTO sink_state (symbol, day, sink, rows, digest, written_at) VALUES %s "
                                   "ON CONFLICT (symbol, day, sink) DO UPDATE SET rows = EXCLUDED.rows, "
                                   "digest = EXCLUDED.digest, written_at = EXCLUDED.written_at",
                           [(s, d, sink, n, h, now) for s, d, n, h in entries], page_size=5000)
        return
    rows = [{"symbol": s, "day": d, "sink": sink, "rows": n, "digest": h, "written_at": now} for s, d, n, h in entries]
    for i in range(0, len(rows), 5000):
        upsert(conn, SINK_STATE, rows[i:i + 5000], keys=("symbol", "day", "sink"),
               updates=("rows", "digest", "written_at"))


def forget(conn: Connection, sink: str, symbol: str, before: dt.date) -> None:
    """`sink` no longer holds `symbol`'s days before `before` (the feature store drops old days)."""
    conn.execute(delete(SINK_STATE).where(SINK_STATE.c.sink == sink, SINK_STATE.c.symbol == symbol,
                                          SINK_STATE.c.day < before))


def lagging(conn: Connection, settings: Settings, now: dt.datetime | None = None,
            examples: int = 10) -> dict[str, dict[str, Any]]:
    """Per configured sink, the covered symbol-days loaded or reloaded in the last LAG_DAYS
    days that it does not hold as the database has them: never written, written before the
    day's coverage last changed, or with another row count. The feature store only keeps
    each symbol's newest CHRONOX_FEATURE_STORE_DAYS covered days, so only those count for it."""
    names = sinks.configured(settings)
    if not names:
        return {}
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=LAG_DAYS)
    covered: dict[tuple[str, dt.date], tuple[int, dt.datetime]] = {}
    query = (select(COVERAGE.c.symbol, COVERAGE.c.trading_day, func.sum(COVERAGE.c.rows),
                    func.max(COVERAGE.c.updated_at))
             .group_by(COVERAGE.c.symbol, COVERAGE.c.trading_day)
             .having(func.max(COVERAGE.c.updated_at) >= since))
    for symbol, day, rows, updated in conn.execute(query):
        if rows:
            covered[(symbol, day)] = (int(rows), _utc(updated))
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        wanted = covered
        if name == sinks.FEATURES:
            newest = _newest_days(conn, sorted({s for s, _ in covered}), settings.feature_store_days)
            wanted = {key: value for key, value in covered.items() if key in newest}
        state: dict[tuple[str, dt.date], tuple[int, dt.datetime]] = {}
        for i in range(0, len(wanted), 500):
            keys = list(wanted)[i:i + 500]
            state.update({(s, d): (n, _utc(at)) for s, d, n, at in conn.execute(
                select(SINK_STATE.c.symbol, SINK_STATE.c.day, SINK_STATE.c.rows, SINK_STATE.c.written_at)
                .where(SINK_STATE.c.sink == name, tuple_(SINK_STATE.c.symbol, SINK_STATE.c.day).in_(keys)))})
        behind = sorted(key for key, (rows, updated) in wanted.items()
                        if key not in state or state[key][0] != rows or state[key][1] < updated)
        report[name] = {"lagging": len(behind), "checked": len(wanted), "since": since.date().isoformat(),
                        "examples": [f"{s} {d.isoformat()}" for s, d in behind[:examples]]}
    return report


def _newest_days(conn: Connection, symbols: Sequence[str], count: int) -> set[tuple[str, dt.date]]:
    """Each symbol's newest `count` covered days (with rows)."""
    found: set[tuple[str, dt.date]] = set()
    for i in range(0, len(symbols), 500):
        days = (select(COVERAGE.c.symbol, COVERAGE.c.trading_day,
                       func.row_number().over(partition_by=COVERAGE.c.symbol,
                                              order_by=COVERAGE.c.trading_day.desc()).label("n"))
                .where(COVERAGE.c.symbol.in_(list(symbols[i:i + 500])), COVERAGE.c.rows > 0)
                .group_by(COVERAGE.c.symbol, COVERAGE.c.trading_day).subquery())
        found.update((s, d) for s, d in conn.execute(select(days.c.symbol, days.c.trading_day)
                                                         .where(days.c.n <= count)))
    return found


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def sink_report(settings: Settings) -> dict[str, dict[str, Any]]:
    """`lagging` for `chronox status`, on its own connection; {} when no sink is configured."""
    if not sinks.configured(settings):
        return {}
    from chronox.db import get_engine

    with get_engine(settings.database_url).connect() as conn:
        return lagging(conn, settings)
