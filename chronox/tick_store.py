"""Trades and quotes in the database, on a caller's Connection, and as Kafka envelopes.

The tick tables keep Polygon's identity fields (SIP, participant and TRF timestamps in epoch
nanoseconds, sequence number, exchange, trade id, conditions, correction, tape) so a consumer
can rebuild the tape. Their key is (symbol, sip_timestamp, sequence_number) (with `ts`, the
SIP time in microseconds and the partition key): a tick met twice is stored once.

A day file or a REST day replaces a symbol-day whole (both carry Polygon's nanosecond times);
stream ticks (millisecond times) are added to what is there. Coverage per symbol, trading day
and dataset lives in `tick_coverage`. chronox.ticks reads the sources and calls these;
chronox.delivery reads committed ticks back here to publish them (db-first outbox).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, insert, select

from chronox import partitions, store
from chronox.bars import isoformat_utc
from chronox.calendar import day_bounds_utc
from chronox.models import Quote, TickCoverage, Trade, table

TRADES = "trades"
QUOTES = "quotes"
KINDS = (TRADES, QUOTES)
# What coverage is kept per, so what gaps are found per: the bars (table `coverage`) and
# each tick kind (`tick_coverage`).
BARS = "bars"
COVERAGE_DATASETS = (BARS, *KINDS)
EVENTS = {TRADES: "trade", QUOTES: "quote"}  # the envelopes' `event`
ENVELOPE_VERSION = "v1"
IDENTITY = ("symbol", "ts", "sip_timestamp", "sequence_number", "participant_timestamp", "trf_timestamp")
# Table columns in COPY order.
COLUMNS: dict[str, tuple[str, ...]] = {
    TRADES: (*IDENTITY, "exchange", "trade_id", "price", "size", "conditions", "correction", "tape", "trf_id",
             "source"),
    QUOTES: (*IDENTITY, "bid_exchange", "bid_price", "bid_size", "ask_exchange", "ask_price", "ask_size",
             "conditions", "indicators", "tape", "source"),
}
KEY = ("symbol", "ts", "sip_timestamp", "sequence_number")
TABLES: dict[str, Table] = {TRADES: table(Trade), QUOTES: table(Quote)}
COVERAGE = table(TickCoverage)
_LOCK = 7234005  # pg_advisory_xact_lock namespace: one writer of a dataset's day at a time
OUTBOX_TF = "tick"  # publish_outbox.tf of a tick symbol-day (its `source` names the dataset)

Row = dict[str, Any]  # a tick as column -> value (ts a UTC datetime)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        from chronox.strategy import InvalidInput

        raise InvalidInput(f"unknown tick dataset {kind!r}; datasets: {', '.join(KINDS)}")
    return kind


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The New York calendar day in UTC: what a tick day file (and a REST day) covers."""
    return day_bounds_utc(day)


def lock_day(conn: Connection, kind: str, day: dt.date, symbol: str | None = None) -> None:
    """Serializes the writers of one dataset's day on PostgreSQL: a day file's load (every
    symbol: exclusive) against REST fills of the day (one symbol each: shared, and exclusive
    for their symbol), so two writers never race between DELETE and insert."""
    if conn.dialect.name != "postgresql":
        return
    key = (_LOCK + KINDS.index(kind), day.toordinal())
    if symbol is None:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s, %s)", key)
        return
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock_shared(%s, %s)", key)
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (f"{kind}:{symbol}", day.toordinal()))


def ensure_day(conn: Connection, kind: str, day: dt.date) -> None:
    """The day's partition (PostgreSQL), made in the caller's (short) transaction."""
    partitions.ensure_partitions(conn, kind, day, day)


def _day_rows(target: Table, symbols: Sequence[str], start: dt.datetime, end: dt.datetime) -> Any:
    return and_(target.c.symbol.in_(list(symbols)), target.c.ts >= start, target.c.ts < end)


def replace_day(conn: Connection, kind: str, symbols: Sequence[str], start: dt.datetime, end: dt.datetime,
                lines: Iterator[bytes] | None = None, records: Iterable[Row] | None = None) -> None:
    """Make the ticks of `symbols` in [start, end) exactly what follows: COPY text in COLUMNS
    order (`lines`, PostgreSQL) or rows (`records`, SQLite)."""
    target = TABLES[kind]
    if conn.dialect.name == "postgresql":
        window = {"symbols": list(symbols), "start": start, "end": end}
        where = "symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s"
        if conn.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {kind} WHERE {where})", window).scalar():
            conn.exec_driver_sql(f"DELETE FROM {kind} WHERE {where}", window)
        store.copy_into(conn, kind, lines or iter(()), COLUMNS[kind])
        return
    conn.execute(delete(target).where(_day_rows(target, symbols, start, end)))
    for batch in store.batched(records or (), 5000):
        conn.execute(insert(target), batch)


def delete_day(conn: Connection, kind: str, symbols: Sequence[str], start: dt.datetime, end: dt.datetime) -> int:
    target = TABLES[kind]
    return conn.execute(delete(target).where(_day_rows(target, symbols, start, end))).rowcount or 0


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return isoformat_utc(value)
    return str(value)  # numbers, and text the readers allow no tab, backslash or line end in


def copy_line(row: Row, columns: Sequence[str]) -> str:
    return "\t".join(_text(row[c]) for c in columns) + "\n"


def insert_new(conn: Connection, kind: str, rows: Sequence[Row]) -> list[Row]:
    """Insert ticks that are not stored yet (REST pages, stream batches, a day file's late
    repeats): a tick whose key is stored is left as it is, and within `rows` the first of a
    key wins. Returns the rows inserted, in their order."""
    if not rows:
        return []
    target, columns = TABLES[kind], COLUMNS[kind]
    if conn.dialect.name == "postgresql":
        partitions.ensure_times(conn, kind, (row["ts"] for row in rows))
        incoming = f"{kind}_incoming"
        conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {incoming} (LIKE {kind}, arrival integer) "
                             "ON COMMIT DELETE ROWS")
        store.copy_into(conn, incoming, (copy_line(row, columns)[:-1] + f"\t{i}\n" for i, row in enumerate(rows)),
                        (*columns, "arrival"))
        names, key = ", ".join(columns), ", ".join(KEY)
        new = {tuple(k) for k in conn.exec_driver_sql(
            f"INSERT INTO {kind} ({names}) SELECT DISTINCT ON ({key}) {names} FROM {incoming} "
            f"ORDER BY {key}, arrival ON CONFLICT DO NOTHING RETURNING symbol, sip_timestamp, sequence_number")}
        conn.exec_driver_sql(f"TRUNCATE {incoming}")
        inserted = []
        for row in rows:
            identity = (row["symbol"], row["sip_timestamp"], row["sequence_number"])
            if identity in new:
                new.discard(identity)  # a later row of the same key was not inserted
                inserted.append(row)
        return inserted
    # SQLite (the embedded default, small data): a statement per tick tells which went in.
    statement = store.dialect_insert(conn, target).on_conflict_do_nothing(index_elements=list(KEY))
    return [row for row in rows if conn.execute(statement, row).rowcount]


def cover(conn: Connection, kind: str, day: dt.date, rows: Mapping[str, int], source: str) -> None:
    """Coverage of a dataset's day for these symbols (zero rows too)."""
    store.upsert(conn, COVERAGE, [{"symbol": s, "trading_day": day, "dataset": kind, "source": source, "rows": n}
                                  for s, n in rows.items()],
                 keys=("symbol", "trading_day", "dataset"), updates=("source", "rows", "updated_at"))


def covered(conn: Connection, kind: str, symbols: Sequence[str], first: dt.date,
            last: dt.date) -> dict[str, dict[dt.date, str]]:
    """symbol -> covered trading day of the dataset -> the source that covered it."""
    out: dict[str, dict[dt.date, str]] = {}
    for i in range(0, len(symbols), 1000):
        query = select(COVERAGE.c.symbol, COVERAGE.c.trading_day, COVERAGE.c.source).where(
            COVERAGE.c.dataset == kind, COVERAGE.c.symbol.in_(list(symbols[i:i + 1000])),
            COVERAGE.c.trading_day >= first, COVERAGE.c.trading_day <= last)
        for symbol, day, source in conn.execute(query):
            out.setdefault(symbol, {})[day] = source
    return out


def iter_rows(conn: Connection, kind: str, symbols: Sequence[str], start: dt.datetime,
              end: dt.datetime) -> Iterator[Row]:
    """Stored ticks of `symbols` in [start, end), per symbol in tape order."""
    target = TABLES[kind]
    query = (select(target).where(_day_rows(target, symbols, start, end))
             .order_by(target.c.symbol, target.c.sip_timestamp, target.c.sequence_number))
    for row in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
        yield dict(row._mapping)


# -- envelopes ------------------------------------------------------------------------------


def iso_ns(ns: int) -> str:
    """Epoch nanoseconds as ISO-8601 UTC with all nine digits: 2024-01-02T14:30:00.123456789Z."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{dt.datetime.fromtimestamp(seconds, dt.UTC):%Y-%m-%dT%H:%M:%S}.{rest:09d}Z"


def codes(text: str | None) -> list[int]:
    """Condition or indicator codes as a list: "12,37" -> [12, 37]."""
    return [int(c) for c in text.split(",")] if text else []


def dedup_key(symbol: str, kind: str, sip_timestamp: int, sequence_number: int) -> str:
    return f"{symbol}|{kind}|{sip_timestamp}|{sequence_number}"


def envelope(kind: str, row: Mapping[str, Any], market: str = "stocks", provider: str = "polygon") -> dict[str, Any]:
    """One Kafka message per tick, key = symbol, on `chronox.<kind>.<SYMBOL>` (or `chronox.<kind>`)."""
    symbol, sip, seq = row["symbol"], row["sip_timestamp"], row["sequence_number"]
    out: dict[str, Any] = {"event": EVENTS[kind], "symbol": symbol, "ts": iso_ns(sip), "sip_timestamp": sip,
                           "participant_timestamp": row["participant_timestamp"],
                           "trf_timestamp": row["trf_timestamp"], "sequence_number": seq}
    if kind == TRADES:
        out.update(exchange=row["exchange"], id=row["trade_id"], price=row["price"], size=row["size"],
                   conditions=codes(row["conditions"]), correction=row["correction"], tape=row["tape"],
                   trf_id=row["trf_id"])
    else:
        out.update(bid_exchange=row["bid_exchange"], bid_price=row["bid_price"], bid_size=row["bid_size"],
                   ask_exchange=row["ask_exchange"], ask_price=row["ask_price"], ask_size=row["ask_size"],
                   conditions=codes(row["conditions"]), indicators=codes(row["indicators"]), tape=row["tape"])
    out.update(source=row["source"], version=ENVELOPE_VERSION, dedup_key=dedup_key(symbol, kind, sip, seq),
               market=market, provider=provider)
    return out
