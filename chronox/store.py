"""Idempotent bar storage: a flat-file symbol-day is replaced atomically (COPY on PostgreSQL).

A day load is one transaction: delete the symbol-days, insert the file's rows, record
coverage, quarantine and (db-first) the publish outbox. Any failure, including a file
that turns out to be truncated half-way, rolls the whole day back.
"""
from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, tuple_

from chronox.bars import SOURCE_RANK, Bar, isoformat_utc
from chronox.calendar import day_bounds_utc
from chronox.models import Coverage, Ohlcv1m, PublishOutbox, Quarantine
from chronox.publish import KafkaPublisher
from chronox.sources.flatfiles import DayFileReader, FlatRow, QuarantinedRow

log = logging.getLogger(__name__)

OHLCV = Ohlcv1m.__table__
COVERAGE = Coverage.__table__
QUARANTINE = Quarantine.__table__
OUTBOX = PublishOutbox.__table__
COPY_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "transactions", "source")
TIMEFRAME = "1m"


@dataclass
class DayLoadResult:
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


def upsert(conn: Connection, table: Any, rows: Sequence[dict[str, Any]], keys: Sequence[str],
           updates: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE on PostgreSQL and SQLite alike."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(table)
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


def _replace_sqlite(conn: Connection, rows: Iterable[FlatRow], reader: DayFileReader,
                    symbols: Sequence[str], start: dt.datetime, end: dt.datetime, source: str) -> None:
    conn.execute(delete(OHLCV).where(and_(OHLCV.c.symbol.in_(list(symbols)),
                                          OHLCV.c.ts >= start, OHLCV.c.ts < end)))
    times = reader.minute_times
    batch: list[dict[str, Any]] = []
    for r in rows:
        batch.append({"symbol": r.symbol, "ts": times[r.minute], "open": r.open, "high": r.high,
                      "low": r.low, "close": r.close, "volume": r.volume, "vwap": None,
                      "transactions": r.transactions, "source": source})
        if len(batch) >= 5000:
            conn.execute(insert(OHLCV), batch)
            batch = []
    if batch:
        conn.execute(insert(OHLCV), batch)


def _publishing(rows: Iterable[FlatRow], reader: DayFileReader, publisher: KafkaPublisher,
                source: str) -> Iterator[FlatRow]:
    iso = reader.minute_iso
    for r in rows:
        publisher.send_bar(r.symbol, TIMEFRAME, iso[r.minute], r.open, r.high, r.low, r.close,
                           r.volume, source)
        yield r


def _lock_day(conn: Connection, day: dt.date) -> None:
    # Two runs loading the same day would otherwise race between DELETE and COPY.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", (7234002, day.toordinal()))


def load_flat_day(engine: Engine, reader: DayFileReader, symbols: Sequence[str], *,
                  publisher: KafkaPublisher | None = None, record_outbox: bool = False,
                  source: str = "flatpack",
                  progress: Callable[[int], None] | None = None) -> DayLoadResult:
    """Replace the symbol-days of `symbols` on reader.day with the file's rows, atomically.

    With a publisher (kafka-first) every bar is acknowledged by Kafka before the
    transaction commits. With record_outbox (db-first) the transaction also records the
    symbol-days in the publish outbox; they are published from the database after the
    commit (see publish_outbox_entries).
    """
    day = reader.day
    start, end = day_bounds_utc(day)
    result = DayLoadResult(day=day)
    with engine.begin() as conn:
        _lock_day(conn, day)
        reader.progress = progress
        rows: Iterable[FlatRow] = reader
        if publisher is not None:
            rows = _publishing(rows, reader, publisher, source)
        if conn.dialect.name == "postgresql":
            lines = reader.copy_lines(source) if publisher is None else \
                _copy_lines(rows, reader.minute_iso, source)
            _replace_postgres(conn, lines, symbols, start, end)
        else:
            _replace_sqlite(conn, rows, reader, symbols, start, end, source)
        stats = reader.stats
        result.rows = {s: stats.rows_kept.get(s, 0) for s in symbols}
        result.duplicates = stats.duplicates
        result.quarantined = quarantine_rows(conn, stats.quarantined)
        upsert(conn, COVERAGE,
               [{"symbol": s, "trading_day": day, "source": source, "rows": n}
                for s, n in result.rows.items()],
               keys=("symbol", "trading_day", "source"), updates=("rows", "updated_at"))
        # The file replaced every other source's bars of these symbol-days: so goes their coverage.
        conn.execute(delete(COVERAGE).where(COVERAGE.c.symbol.in_(list(symbols)), COVERAGE.c.trading_day == day,
                                            COVERAGE.c.source != source))
        if publisher is not None:
            publisher.flush()
            result.published = sum(result.rows.values())
        if record_outbox:
            upsert(conn, OUTBOX,
                   [{"symbol": s, "trading_day": day, "source": source, "attempts": 0,
                     "last_error": None} for s, n in result.rows.items() if n],
                   keys=("symbol", "trading_day", "source"), updates=("attempts",))
    return result


def _copy_lines(rows: Iterable[FlatRow], minute_iso: list[str], source: str) -> Iterator[str]:
    for r in rows:
        n = "\\N" if r.transactions is None else r.transactions
        yield (f"{r.symbol}\t{minute_iso[r.minute]}\t{r.open!r}\t{r.high!r}\t{r.low!r}\t"
               f"{r.close!r}\t{r.volume!r}\t\\N\t{n}\t{source}\n")


def iter_bars(conn: Connection, symbol: str, start: dt.datetime, end: dt.datetime) -> Iterator[Any]:
    query = (select(OHLCV).where(OHLCV.c.symbol == symbol, OHLCV.c.ts >= start, OHLCV.c.ts < end)
             .order_by(OHLCV.c.ts))
    yield from conn.execution_options(stream_results=True, yield_per=5000).execute(query)


def publish_outbox_entries(engine: Engine, publisher: KafkaPublisher,
                           entries: Sequence[tuple[str, dt.date, str]] | None = None,
                           limit: int = 500) -> int:
    """Publish committed symbol-days from the database, then clear their outbox rows.

    A bar is sent at least once: if Kafka fails, the entry stays and the next call
    resends the whole symbol-day (consumers deduplicate on dedup_key).
    """
    with engine.connect() as conn:
        query = select(OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source)
        if entries is not None:
            if not entries:
                return 0
            query = query.where(tuple_(OUTBOX.c.symbol, OUTBOX.c.trading_day, OUTBOX.c.source)
                                .in_(list(entries)))
        pending = list(conn.execute(query.order_by(OUTBOX.c.created_at).limit(limit)))
    sent = 0
    for symbol, day, source in pending:
        start, end = day_bounds_utc(day)
        try:
            with engine.connect() as conn:
                for bar in iter_bars(conn, symbol, start, end):
                    publisher.send_bar(bar.symbol, TIMEFRAME, isoformat_utc(bar.ts), bar.open,
                                       bar.high, bar.low, bar.close, bar.volume, bar.source)
                    sent += 1
            publisher.flush()
        except Exception as exc:
            with engine.begin() as conn:
                conn.execute(OUTBOX.update().where(OUTBOX.c.symbol == symbol,
                                                   OUTBOX.c.trading_day == day,
                                                   OUTBOX.c.source == source)
                             .values(attempts=OUTBOX.c.attempts + 1, last_error=str(exc)[:500]))
            raise
        with engine.begin() as conn:
            conn.execute(delete(OUTBOX).where(OUTBOX.c.symbol == symbol,
                                              OUTBOX.c.trading_day == day, OUTBOX.c.source == source))
    return sent


def outbox_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(OUTBOX)).scalar_one()


def _rank(column: Any) -> Any:
    from sqlalchemy import case

    return case(SOURCE_RANK, value=column, else_=-1)


def upsert_bars(engine: Engine, bars: Iterable[Bar], conn: Connection | None = None) -> int:
    """Insert bars from REST, stream or snapshot, respecting source precedence.

    An existing bar is replaced only by a bar from a source of equal or higher rank
    (flatpack > api > stream > snapshot), so these sources fill holes but never
    overwrite a flat-file bar. Returns how many rows were written.
    """
    rows = [bar._asdict() for bar in bars]
    if not rows:
        return 0
    if conn is not None:
        return _upsert_bars(conn, rows)
    with engine.begin() as own:
        return _upsert_bars(own, rows)


def _upsert_bars(conn: Connection, rows: list[dict[str, Any]]) -> int:
    if conn.dialect.name == "postgresql":
        return _upsert_bars_postgres(conn, rows)
    from sqlalchemy.dialects.sqlite import insert as dialect_insert

    written = 0
    for start in range(0, len(rows), 2000):
        statement = dialect_insert(OHLCV)
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
