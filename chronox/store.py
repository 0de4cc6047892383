"""Idempotent bar storage on a caller's connection (the caller owns the transaction).

A flat-file symbol-day is replaced as a whole (COPY on PostgreSQL); bars from REST,
stream and snapshot are upserted with source precedence. Coverage, quarantine and the
publish outbox live here too. Nothing here talks to Kafka or reads files: rows come in
as values (`DayRows` for a day file, `Bar`s for the rest).
"""
from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, Table, and_, case, delete, func, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from chronox.bars import SOURCE_RANK, Bar, QuarantinedRow, isoformat_utc
from chronox.models import Coverage, Ohlcv1m, PublishOutbox, Quarantine, table

OHLCV = table(Ohlcv1m)
COVERAGE = table(Coverage)
QUARANTINE = table(Quarantine)
OUTBOX = table(PublishOutbox)
COPY_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "transactions", "source")
TIMEFRAME = "1m"
OutboxEntry = tuple[str, dt.date, str]  # symbol, trading day, source


class DayRows(Protocol):
    """A day file's rows in the two shapes storage takes; a load uses exactly one of them."""

    def copy_lines(self) -> Iterator[str]:
        """PostgreSQL COPY text lines in COPY_COLUMNS order."""
        ...

    def records(self) -> Iterator[dict[str, Any]]:
        """Rows as column -> value, `ts` a UTC datetime."""
        ...


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
    return len(batch)


class _CopyStream:
    """A read()-able view of COPY lines, pulled lazily so the file streams through.

    psycopg2 sends whatever read() returns, so a call may return a little more than
    `size` (whole lines) instead of splitting a line across calls.
    """

    def __init__(self, lines: Iterator[str], lines_per_piece: int = 4096):
        self._lines = lines
        self._lines_per_piece = lines_per_piece
        self.error: BaseException | None = None

    def read(self, size: int = 1 << 20) -> str:
        try:
            pieces: list[str] = []
            total = 0
            lines = self._lines
            while total < size or size < 0:
                piece = "".join(itertools.islice(lines, self._lines_per_piece))
                if not piece:
                    break
                pieces.append(piece)
                total += len(piece)
            return "".join(pieces)
        except BaseException as exc:
            # psycopg2 reports a failing read() as QueryCanceled; keep the real cause.
            self.error = exc
            raise


def _copy(conn: Connection, table: str, lines: Iterator[str], columns: Sequence[str] = COPY_COLUMNS) -> None:
    raw = conn.connection.dbapi_connection
    stream = _CopyStream(lines)
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        try:
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", stream, size=1 << 20)
        except Exception:
            if stream.error is not None:
                raise stream.error from None
            raise


def _replace_postgres(conn: Connection, lines: Iterator[str], symbols: Sequence[str],
                      start: dt.datetime, end: dt.datetime) -> None:
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
        _copy(conn, "ohlcv_1m", lines)
        return
    conn.exec_driver_sql("CREATE TEMP TABLE ohlcv_1m_staging (LIKE ohlcv_1m) ON COMMIT DROP")
    _copy(conn, "ohlcv_1m_staging", lines)
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


def _replace_sqlite(conn: Connection, records: Iterable[dict[str, Any]], symbols: Sequence[str],
                    start: dt.datetime, end: dt.datetime) -> None:
    conn.execute(delete(OHLCV).where(and_(OHLCV.c.symbol.in_(list(symbols)),
                                          OHLCV.c.ts >= start, OHLCV.c.ts < end)))
    for batch in _batched(records, 5000):
        conn.execute(insert(OHLCV), batch)


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
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
                end: dt.datetime) -> None:
    """Make the bars of `symbols` in [start, end) exactly `rows` (flat files are authoritative)."""
    if conn.dialect.name == "postgresql":
        _replace_postgres(conn, rows.copy_lines(), symbols, start, end)
    else:
        _replace_sqlite(conn, rows.records(), symbols, start, end)


def cover_day(conn: Connection, day: dt.date, rows: Mapping[str, int], source: str) -> None:
    """Coverage of a day load: one row per symbol (zero rows too), and no other source's,
    since the file replaced every other source's bars of these symbol-days."""
    upsert(conn, COVERAGE, [{"symbol": s, "trading_day": day, "source": source, "rows": n} for s, n in rows.items()],
           keys=("symbol", "trading_day", "source"), updates=("rows", "updated_at"))
    conn.execute(delete(COVERAGE).where(COVERAGE.c.symbol.in_(list(rows)), COVERAGE.c.trading_day == day,
                                        COVERAGE.c.source != source))


def cover_days(conn: Connection, symbol: str, rows: Mapping[dt.date, int], source: str) -> None:
    """Coverage of days one source filled for one symbol (a day without bars counts 0)."""
    upsert(conn, COVERAGE, [{"symbol": symbol, "trading_day": d, "source": source, "rows": n}
                            for d, n in sorted(rows.items())],
           keys=("symbol", "trading_day", "source"), updates=("rows", "updated_at"))


def covered_days(conn: Connection, symbol: str, first: dt.date, last: dt.date) -> set[dt.date]:
    rows = conn.execute(select(COVERAGE.c.trading_day).where(
        COVERAGE.c.symbol == symbol, COVERAGE.c.trading_day >= first, COVERAGE.c.trading_day <= last))
    return {day for (day,) in rows}


def coverage_by_day(conn: Connection, symbol: str, first: dt.date, last: dt.date) -> dict[dt.date, int]:
    """Rows per covered day (all sources together)."""
    rows = conn.execute(select(COVERAGE.c.trading_day, func.sum(COVERAGE.c.rows))
                        .where(COVERAGE.c.symbol == symbol, COVERAGE.c.trading_day >= first,
                               COVERAGE.c.trading_day <= last)
                        .group_by(COVERAGE.c.trading_day))
    return {day: int(n) for day, n in rows}


def quarantined_count(conn: Connection, symbol: str) -> int:
    return conn.execute(select(func.count()).select_from(QUARANTINE).where(QUARANTINE.c.symbol == symbol)).scalar_one()


def iter_bars(conn: Connection, symbol: str, start: dt.datetime, end: dt.datetime) -> Iterator[Any]:
    query = (select(OHLCV).where(OHLCV.c.symbol == symbol, OHLCV.c.ts >= start, OHLCV.c.ts < end)
             .order_by(OHLCV.c.ts))
    yield from conn.execution_options(stream_results=True, yield_per=5000).execute(query)


def record_outbox(conn: Connection, entries: Sequence[OutboxEntry]) -> None:
    upsert(conn, OUTBOX, [{"symbol": s, "trading_day": d, "source": src, "attempts": 0, "last_error": None}
                          for s, d, src in entries],
           keys=("symbol", "trading_day", "source"), updates=("attempts",))


def pending_outbox(conn: Connection, entries: Sequence[OutboxEntry] | None, limit: int) -> list[OutboxEntry]:
    """The oldest outbox entries, all of them or those among `entries`."""
    query = select(OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source)
    if entries is not None:
        query = query.where(tuple_(OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source).in_(list(entries)))
    return [(s, d, src) for s, d, src in conn.execute(query.order_by(OUTBOX.c.created_at).limit(limit))]


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
