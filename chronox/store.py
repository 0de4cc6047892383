"""Idempotent bar storage on a caller's connection (the caller owns the transaction).

A flat-file symbol-day is replaced as a whole (COPY on PostgreSQL); bars from REST,
stream and snapshot are upserted with source precedence. Coverage, quarantine and the
publish outbox live here too. Nothing here talks to Kafka or reads files: rows come in
as values (`DayRows` for a day file, `Bar`s for the rest).
"""
from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Table, and_, case, delete, func, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from chronox import metrics, partitions
from chronox.bars import SOURCE_RANK, Bar, QuarantinedRow, isoformat_utc
from chronox.calendar import new_york_day
from chronox.models import (
    Coverage,
    CoverageDays,
    Ohlcv1d,
    Ohlcv1h,
    Ohlcv1m,
    Ohlcv5m,
    Ohlcv15m,
    PublishOutbox,
    Quarantine,
    RunStep,
    table,
)

OHLCV = table(Ohlcv1m)
COVERAGE = table(Coverage)
COVERAGE_DAYS = table(CoverageDays)
QUARANTINE = table(Quarantine)
OUTBOX = table(PublishOutbox)
RUN_STEPS = table(RunStep)
COPY_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "transactions", "source")
TIMEFRAME = "1m"
OutboxEntry = tuple[str, dt.date, str]  # symbol, trading day, source


class DayRows(Protocol):
    """A day file's rows in the two shapes storage takes; a load uses exactly one of them."""

    binary: bool  # copy_lines() is a binary COPY stream (chronox.pgcopy), else COPY text

    def copy_lines(self) -> Iterator[Any]:
        """PostgreSQL COPY in COPY_COLUMNS order: pieces of whole lines of text (str or bytes),
        or with `binary` the pieces of a binary COPY stream."""
        ...

    def records(self) -> Iterator[dict[str, Any]]:
        """Rows as column -> value, `ts` a UTC datetime."""
        ...


@dataclass
class DayLoadResult:
    """What a day load (minute bars or ticks) stored: rows per symbol, rows quarantined,
    repeats dropped, messages published."""

    day: dt.date
    rows: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    duplicates: int = 0
    published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "rows": sum(self.rows.values()),
            "symbols": len(self.rows),
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "published": self.published,
        }


def dialect_insert(conn: Connection, target: Table) -> Any:
    """The dialect's INSERT of `target`, the one with ON CONFLICT (PostgreSQL and SQLite alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    return sqlite.insert(target)


def upsert(conn: Connection, target: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str],
           updates: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE."""
    if not rows:
        return
    statement = dialect_insert(conn, target)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys), set_={c: statement.excluded[c] for c in updates}
    )
    conn.execute(statement, list(rows))


def _storable(text: str) -> str:
    """Text both databases accept: bad input can carry lone surrogates (undecodable bytes)
    and NUL characters, which PostgreSQL text and the drivers' UTF-8 encoding refuse."""
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def quarantine_rows(conn: Connection, rows: Iterable[QuarantinedRow]) -> int:
    batch = [{"origin": _storable(r.origin)[:255], "symbol": (r.symbol or None) and _storable(r.symbol)[:32],
              "raw": _storable(r.raw), "reason": _storable(r.reason)}
             for r in rows]
    if batch:
        conn.execute(insert(QUARANTINE), batch)
        metrics.quarantined(conn, [str(row["origin"]) for row in batch])
    return len(batch)


class _CopyStream:
    """A read()-able view of COPY text pieces (str lines, or bytes blocks of whole lines),
    pulled lazily so the file streams through.

    psycopg2 sends whatever read() returns, so a call may return a little more than
    `size` (whole pieces) instead of splitting a line across calls.
    """

    def __init__(self, pieces: Iterator[Any]):
        self._pieces = pieces
        self.error: BaseException | None = None

    def read(self, size: int = 1 << 20) -> Any:
        try:
            pieces: list[Any] = []
            total = 0
            for piece in self._pieces:
                pieces.append(piece)
                total += len(piece)
                if 0 <= size <= total:
                    break
            return pieces[0][:0].join(pieces) if pieces else ""
        except BaseException as exc:
            # psycopg2 reports a failing read() as QueryCanceled; keep the real cause.
            self.error = exc
            raise


def _copy(conn: Connection, table: str, lines: Iterator[Any], columns: Sequence[str] = COPY_COLUMNS,
          binary: bool = False) -> None:
    """COPY `lines` into `table`: text pieces of whole lines, or with `binary` the pieces of
    a binary COPY stream (chronox.pgcopy: header, rows, trailer)."""
    raw = conn.connection.dbapi_connection
    stream = _CopyStream(lines)
    options = " WITH (FORMAT binary)" if binary else ""
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        try:
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN{options}", stream, size=1 << 20)
        except Exception:
            if stream.error is not None:
                raise stream.error from None
            raise


def copy_into(conn: Connection, table: str, lines: Iterator[Any], columns: Sequence[str]) -> None:
    """PostgreSQL: COPY text pieces (str or bytes, whole lines) into `columns` of `table`."""
    _copy(conn, table, lines, columns)


def copy_out(conn: Connection, query: str, params: Mapping[str, Any], column_types: Mapping[str, Any]) -> Any:
    """PostgreSQL: the rows of `query` (psycopg2 %(name)s parameters) as a pyarrow Table of
    `column_types` (name -> Arrow type, in the query's column order), through COPY TO STDOUT
    as CSV that Arrow parses: no Python object per row, which for a few hundred thousand
    rows costs more than anything done with them after."""
    import pyarrow as pa
    from pyarrow import csv

    buffer = io.BytesIO()
    with conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
        sql = cursor.mogrify(query, dict(params)).decode()
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buffer, size=1 << 20)
    if not buffer.tell():
        return pa.schema(list(column_types.items())).empty_table()
    buffer.seek(0)
    return csv.read_csv(buffer, read_options=csv.ReadOptions(column_names=list(column_types), block_size=16 << 20),
                        convert_options=csv.ConvertOptions(column_types=dict(column_types)))


def _replace_postgres(conn: Connection, lines: Iterator[Any], symbols: Sequence[str],
                      start: dt.datetime, end: dt.datetime, binary: bool) -> list[str]:
    """First load: COPY straight into ohlcv_1m.

    Reload: COPY into an unindexed staging table, find the symbols whose rows differ
    with one hash join, and rewrite only those. Deleting and re-inserting every row
    would make each insert's uniqueness check visit the deleted version; an unchanged
    rerun now writes nothing.
    """
    window = {"symbols": list(symbols), "start": start, "end": end}
    day_rows = "symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s"
    exists = conn.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM ohlcv_1m WHERE {day_rows})", window).scalar()
    if not exists:
        _copy(conn, "ohlcv_1m", lines, binary=binary)
        return list(symbols)
    conn.exec_driver_sql("CREATE TEMP TABLE ohlcv_1m_staging (LIKE ohlcv_1m) ON COMMIT DROP")
    _copy(conn, "ohlcv_1m_staging", lines, binary=binary)
    conn.exec_driver_sql("ANALYZE ohlcv_1m_staging")
    # The comparison hashes a whole day of the market; keep it in memory rather than spilling.
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    differs = " OR ".join(f"o.{c} IS DISTINCT FROM s.{c}" for c in COPY_COLUMNS[2:])
    changed = [symbol for (symbol,) in conn.exec_driver_sql(
        f"SELECT DISTINCT coalesce(s.symbol, o.symbol) FROM ohlcv_1m_staging s "
        f"FULL JOIN (SELECT * FROM ohlcv_1m WHERE {day_rows}) o ON o.symbol = s.symbol AND o.ts = s.ts "
        f"WHERE o.symbol IS NULL OR s.symbol IS NULL OR {differs}", window)]
    if changed:
        window["symbols"] = changed
        columns = ", ".join(COPY_COLUMNS)
        conn.exec_driver_sql(f"DELETE FROM ohlcv_1m WHERE {day_rows}", window)
        conn.exec_driver_sql(f"INSERT INTO ohlcv_1m ({columns}) SELECT {columns} FROM ohlcv_1m_staging "
                             "WHERE symbol = ANY(%(symbols)s)", window)
    return changed


def _replace_sqlite(conn: Connection, records: Iterable[dict[str, Any]], symbols: Sequence[str],
                    start: dt.datetime, end: dt.datetime) -> None:
    conn.execute(delete(OHLCV).where(and_(OHLCV.c.symbol.in_(list(symbols)),
                                          OHLCV.c.ts >= start, OHLCV.c.ts < end)))
    for batch in batched(records, 5000):
        conn.execute(insert(OHLCV), batch)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to `size` items (one statement's worth of rows)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def lock_day(conn: Connection, day: dt.date) -> None:
    """Serializes the writers of one trading day (day loads, REST windows) on PostgreSQL.

    Two runs loading the same day would otherwise race between DELETE and COPY.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (7234002, day.toordinal()))


def replace_day(conn: Connection, rows: DayRows, symbols: Sequence[str], start: dt.datetime,
                end: dt.datetime) -> list[str]:
    """Make the bars of `symbols` in [start, end) exactly `rows` (flat files are authoritative).

    Returns the symbols whose bars may have changed (an unchanged reload on PostgreSQL
    rewrites, and returns, nothing).
    """
    if conn.dialect.name == "postgresql":
        partitions.ensure_window(conn, OHLCV.name, start, end)  # normally made already, outside the load
        return _replace_postgres(conn, rows.copy_lines(), symbols, start, end, rows.binary)
    _replace_sqlite(conn, rows.records(), symbols, start, end)
    return list(symbols)


ROLLUP_COLUMNS = ("symbol", "bucket", "open", "high", "low", "close", "volume", "bars")


def replace_rollups(conn: Connection, table: str, symbols: Sequence[str], start: dt.datetime, end: dt.datetime,
                    binary_rows: Iterator[bytes]) -> None:
    """PostgreSQL: make the rows of `symbols` in [start, end) of rollup `table` exactly
    `binary_rows` (a binary COPY stream in ROLLUP_COLUMNS order, chronox.pgcopy), as
    chronox.rollups.refresh would from the minutes."""
    conn.exec_driver_sql(f"DELETE FROM {table} WHERE symbol = ANY(%(symbols)s) AND bucket >= %(start)s "
                         "AND bucket < %(end)s", {"symbols": list(symbols), "start": start, "end": end})
    _copy(conn, table, binary_rows, ROLLUP_COLUMNS, binary=True)


def cover_day(conn: Connection, day: dt.date, rows: Mapping[str, int], source: str) -> None:
    """Coverage of a day load: one row per symbol (zero rows too), and no other source's,
    since the file replaced every other source's bars of these symbol-days."""
    if conn.dialect.name == "postgresql":
        # A whole market's symbols in two statements: an executemany upsert makes a round
        # trip per symbol (1.4 s for 10,000).
        window = {"day": day, "source": source, "symbols": list(rows), "rows": list(rows.values())}
        conn.exec_driver_sql(
            "INSERT INTO coverage (symbol, trading_day, source, rows) SELECT s, %(day)s, %(source)s, n "
            "FROM unnest(%(symbols)s::text[], %(rows)s::int[]) AS t(s, n) "
            "ON CONFLICT (symbol, trading_day, source) DO UPDATE SET rows = EXCLUDED.rows, updated_at = now()", window)
        conn.exec_driver_sql("DELETE FROM coverage WHERE symbol = ANY(%(symbols)s) AND trading_day = %(day)s "
                             "AND source <> %(source)s", window)
        return
    upsert(conn, COVERAGE, [{"symbol": s, "trading_day": day, "source": source, "rows": n} for s, n in rows.items()],
           keys=("symbol", "trading_day", "source"), updates=("rows", "updated_at"))
    conn.execute(delete(COVERAGE).where(COVERAGE.c.symbol.in_(list(rows)), COVERAGE.c.trading_day == day,
                                        COVERAGE.c.source != source))


def cover_days(conn: Connection, symbol: str, rows: Mapping[dt.date, int], source: str) -> None:
    """Coverage of days one source filled for one symbol (a day without bars counts 0)."""
    upsert(conn, COVERAGE, [{"symbol": symbol, "trading_day": d, "source": source, "rows": n}
                            for d, n in sorted(rows.items())],
           keys=("symbol", "trading_day", "source"), updates=("rows", "updated_at"))


def coverage_by_day(conn: Connection, symbol: str, first: dt.date, last: dt.date) -> dict[dt.date, int]:
    """Rows per covered day (all sources together)."""
    rows = conn.execute(select(COVERAGE.c.trading_day, func.sum(COVERAGE.c.rows))
                        .where(COVERAGE.c.symbol == symbol, COVERAGE.c.trading_day >= first,
                               COVERAGE.c.trading_day <= last)
                        .group_by(COVERAGE.c.trading_day))
    return {day: int(n) for day, n in rows}


def quarantined_count(conn: Connection, symbol: str) -> int:
    return conn.execute(select(func.count()).select_from(QUARANTINE).where(QUARANTINE.c.symbol == symbol)).scalar_one()


ROLLUP_TABLES = {"5m": table(Ohlcv5m), "15m": table(Ohlcv15m), "1h": table(Ohlcv1h)}


def iter_bars(conn: Connection, symbols: Sequence[str], start: dt.datetime, end: dt.datetime,
              timeframe: str = TIMEFRAME, source: str = "flatpack") -> Iterator[Bar]:
    """Stored bars of `symbols` in [start, end) at a timeframe, in time order per symbol;
    rolled-up bars carry `source` (their table keeps none)."""
    if timeframe == TIMEFRAME:
        query = (select(OHLCV).where(OHLCV.c.symbol.in_(list(symbols)), OHLCV.c.ts >= start, OHLCV.c.ts < end)
                 .order_by(OHLCV.c.symbol, OHLCV.c.ts))
        for row in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
            yield Bar(*(getattr(row, c) for c in COPY_COLUMNS))
        return
    rollup = ROLLUP_TABLES[timeframe]
    query = (select(rollup).where(rollup.c.symbol.in_(list(symbols)), rollup.c.bucket >= start,
                                  rollup.c.bucket < end).order_by(rollup.c.symbol, rollup.c.bucket))
    for row in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
        yield Bar(row.symbol, row.bucket, row.open, row.high, row.low, row.close, row.volume, None, None, source)


def record_outbox(conn: Connection, entries: Sequence[OutboxEntry], timeframes: Mapping[str, str],
                  market: str = "stocks", provider: str = "polygon") -> None:
    """Symbol-days to publish after the commit; `timeframes` names a symbol's bars when not
    1m; `market` (whose days they are: their bounds) and `provider` go into the envelopes."""
    upsert(conn, OUTBOX, [{"symbol": s, "trading_day": d, "source": src, "tf": timeframes.get(s, TIMEFRAME),
                           "market": market, "provider": provider, "attempts": 0, "last_error": None}
                          for s, d, src in entries],
           keys=("symbol", "trading_day", "source"), updates=("tf", "market", "provider", "attempts"))


def pending_outbox(conn: Connection, entries: Sequence[OutboxEntry] | None,
                   limit: int) -> list[tuple[OutboxEntry, str, str, str]]:
    """The oldest outbox entries with their timeframe, market and provider, all or those among `entries`."""
    columns = (OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source, OUTBOX.c.tf, OUTBOX.c.market,
               OUTBOX.c.provider)
    query = select(*columns)
    if entries is not None:
        query = query.where(tuple_(OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source).in_(list(entries)))
    return [((s, d, src), tf, market, provider)
            for s, d, src, tf, market, provider in conn.execute(query.order_by(OUTBOX.c.created_at).limit(limit))]


def _outbox_entry(entry: OutboxEntry) -> Any:
    symbol, day, source = entry
    return and_(OUTBOX.c.symbol == symbol, OUTBOX.c.trading_day == day, OUTBOX.c.source == source)


def outbox_failed(conn: Connection, entry: OutboxEntry, error: str) -> None:
    conn.execute(OUTBOX.update().where(_outbox_entry(entry))
                 .values(attempts=OUTBOX.c.attempts + 1, last_error=error[:500]))


def outbox_done(conn: Connection, entry: OutboxEntry) -> None:
    conn.execute(delete(OUTBOX).where(_outbox_entry(entry)))


def outbox_size(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(OUTBOX)).scalar_one()


def _rank(column: Any) -> Any:
    return case(SOURCE_RANK, value=column, else_=-1)


def upsert_bars(conn: Connection, bars: Iterable[Bar]) -> int:
    """Insert bars from REST, stream or snapshot, respecting source precedence.

    An existing bar is replaced only by a bar from a source of equal or higher rank
    (flatpack > api > stream > snapshot), so these sources fill holes but never
    overwrite a flat-file bar. Returns how many rows were written.
    """
    rows = [bar._asdict() for bar in bars]
    if not rows:
        return 0
    return _upsert_bars(conn, rows)


def upsert_bars_at(conn: Connection, timeframe: str, bars: Sequence[Bar],
                   day_of: Callable[[dt.datetime], dt.date] = new_york_day) -> int:
    """Bars of a timeframe into its table: minutes with source precedence (upsert_bars),
    5m/15m/1h into their rollup table and days into ohlcv_1d (`day_of`: the market's day
    of a daily bar's timestamp), replacing what was there."""
    if timeframe == TIMEFRAME:
        return upsert_bars(conn, bars)
    if not bars:
        return 0
    if timeframe == "1d":
        rows = [{"symbol": b.symbol, "day": day_of(b.ts), **{c: getattr(b, c) for c in COPY_COLUMNS[2:]}}
                for b in bars]
        upsert(conn, table(Ohlcv1d), rows, keys=("symbol", "day"), updates=COPY_COLUMNS[2:])
        return len(rows)
    target = ROLLUP_TABLES[timeframe]
    # A provider's aggregate: the minutes inside it were never seen, so `bars` is unknown.
    rows = [{"symbol": b.symbol, "bucket": b.ts, "open": b.open, "high": b.high, "low": b.low, "close": b.close,
             "volume": b.volume, "bars": None} for b in bars]
    upsert(conn, target, rows, keys=("symbol", "bucket"), updates=("open", "high", "low", "close", "volume", "bars"))
    return len(rows)


def _upsert_bars(conn: Connection, rows: list[dict[str, Any]]) -> int:
    if conn.dialect.name == "postgresql":
        return _upsert_bars_postgres(conn, rows)
    written = 0
    for start in range(0, len(rows), 2000):
        statement = sqlite.insert(OHLCV)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=["symbol", "ts"],
            set_={c: excluded[c] for c in COPY_COLUMNS[2:]},
            where=_rank(OHLCV.c.source) <= _rank(excluded.source),
        )
        written += conn.execute(statement, rows[start:start + 2000]).rowcount or 0
    return written


_RANK_SQL = "CASE {col} " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in SOURCE_RANK.items()) + " ELSE -1 END"


def _bar_line(row: dict[str, Any], arrival: int) -> str:
    values = [row[c] for c in COPY_COLUMNS]
    values[1] = isoformat_utc(values[1])
    return "\t".join("\\N" if v is None else repr(v) if isinstance(v, float) else str(v)
                     for v in values) + f"\t{arrival}\n"


def _upsert_bars_postgres(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Set-based: COPY into a session temp table, then one INSERT ... ON CONFLICT.

    Row-by-row ON CONFLICT statements manage a few thousand bars per second; the stream
    needs more. Within a batch the same minute may arrive twice: the higher-ranked,
    then the later, bar wins.
    """
    partitions.ensure_times(conn, OHLCV.name, (row["ts"] for row in rows))
    conn.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS ohlcv_1m_incoming "
                         "(LIKE ohlcv_1m, arrival integer) ON COMMIT DELETE ROWS")
    _copy(conn, "ohlcv_1m_incoming", (_bar_line(row, i) for i, row in enumerate(rows)),
          columns=(*COPY_COLUMNS, "arrival"))
    columns = ", ".join(COPY_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COPY_COLUMNS[2:])
    result = conn.exec_driver_sql(
        f"INSERT INTO ohlcv_1m AS o ({columns}) "
        f"SELECT DISTINCT ON (symbol, ts) {columns} FROM ohlcv_1m_incoming "
        f"ORDER BY symbol, ts, {_RANK_SQL.format(col='source')} DESC, arrival DESC "
        f"ON CONFLICT (symbol, ts) DO UPDATE SET {updates} "
        f"WHERE {_RANK_SQL.format(col='o.source')} <= {_RANK_SQL.format(col='EXCLUDED.source')}")
    conn.exec_driver_sql("TRUNCATE ohlcv_1m_incoming")
    return result.rowcount or 0


# -- what the steps of a symbol's latest run did -------------------------------------


def clear_steps(conn: Connection, symbols: Sequence[str]) -> None:
    for i in range(0, len(symbols), 1000):
        conn.execute(delete(RUN_STEPS).where(RUN_STEPS.c.symbol.in_(list(symbols[i:i + 1000]))))


def record_steps(conn: Connection, symbols: Sequence[str], step: str, outcome: str, detail: Any = None) -> None:
    """The outcome of `step` for each symbol (detail: JSON-able figures or a message)."""
    now = dt.datetime.now(dt.UTC)
    text = None if detail is None else json.dumps(detail, sort_keys=True, default=str)
    upsert(conn, RUN_STEPS, [{"symbol": s, "step": step, "outcome": outcome, "detail": text, "updated_at": now}
                             for s in dict.fromkeys(symbols)],
           keys=("symbol", "step"), updates=("outcome", "detail", "updated_at"))


def steps_of(conn: Connection, symbols: Sequence[str]) -> dict[str, dict[str, tuple[str, Any, dt.datetime]]]:
    """symbol -> step -> (outcome, detail, updated_at UTC)."""
    out: dict[str, dict[str, tuple[str, Any, dt.datetime]]] = {}
    rows = conn.execute(select(RUN_STEPS).where(RUN_STEPS.c.symbol.in_(list(symbols))))
    for row in rows:
        at = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.UTC)
        out.setdefault(row.symbol, {})[row.step] = (row.outcome, json.loads(row.detail) if row.detail else None, at)
    return out
