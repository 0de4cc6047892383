"""SQLAlchemy 2.0 typed models; Alembic migrations must agree with these (tested)."""
from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RegistryStatus(StrEnum):
    """Where a symbol's runs are: scheduled -> running -> completed, or error."""

    IDLE = "idle"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"


class NoteKind(StrEnum):
    """What the registry row's error_message is: the text says it, this column knows it."""

    ERROR = "error"  # why the status is error
    WARNING = "warning"  # something a completed run left out (e.g. REST without a key)
    STREAM_STALE = "stream_stale"  # the stream monitor's flag; cleared when bars flow again


REGISTRY_STATUSES = tuple(RegistryStatus)
# Canonical symbols: stock tickers (BRK.B) and crypto pairs BASE-QUOTE (1000SATS-USDT).
SYMBOL_LENGTH = 32


class Base(DeclarativeBase):
    pass


def table(model: type[Base]) -> Table:
    """A model's Core table; declarative models type __table__ as any FromClause."""
    found = model.__table__
    assert isinstance(found, Table)
    return found


class SymbolRegistry(Base):
    __tablename__ = "symbol_registry"
    # The registry service's index (migration 0005): scans of enabled symbols by status.
    __table_args__ = (Index("idx_symbol_registry_enabled", "enabled", "status"),)

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(64))
    timeframe: Mapped[str] = mapped_column(String(8), default="1m", server_default="1m")
    market: Mapped[str] = mapped_column(String(16), default="stocks", server_default="stocks")
    provider: Mapped[str] = mapped_column(String(16), default="polygon", server_default="polygon")
    provider_symbol: Mapped[str | None] = mapped_column(String(64))  # when the provider's name cannot be derived
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    last_backfill: Mapped[dt.date | None] = mapped_column(Date)
    last_snapshot: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_stream: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="idle", server_default="idle")
    error_message: Mapped[str | None] = mapped_column(Text)
    note_kind: Mapped[str | None] = mapped_column(String(16))  # NoteKind of error_message
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class BarColumns:
    """The columns every bar table shares, after its key."""

    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    vwap: Mapped[float | None] = mapped_column(Float)
    transactions: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))


class Ohlcv1m(BarColumns, Base):
    __tablename__ = "ohlcv_1m"

    # The natural key is the primary key: idempotent writes and source precedence hinge on it.
    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)


class Coverage(Base):
    """One row per symbol and trading day ingested: a gap is a trading day without one."""

    __tablename__ = "coverage"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    trading_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class CoverageDays(Base):
    """`coverage` folded into words of 64 calendar days per symbol, for the gap scan; kept by
    triggers on `coverage` (migration 0012), never written by ChronoX's code. Word w starts on
    1970-01-01 + 64 w; bit i of `days` is set when day 64 w + i has a coverage row of any
    source, of `final_days` when it has one of another source than the api phase."""

    __tablename__ = "coverage_days"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    word: Mapped[int] = mapped_column(Integer, primary_key=True)
    days: Mapped[int] = mapped_column(BigInteger)
    final_days: Mapped[int] = mapped_column(BigInteger)


class Quarantine(Base):
    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_origin", "origin"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    origin: Mapped[str] = mapped_column(String(255))
    symbol: Mapped[str | None] = mapped_column(String(32))
    raw: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class PublishOutbox(Base):
    """Symbol-days committed in db-first mode whose bars Kafka has not acknowledged yet."""

    __tablename__ = "publish_outbox"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    trading_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    tf: Mapped[str] = mapped_column(String(8), default="1m", server_default="1m")  # the bars published
    market: Mapped[str] = mapped_column(String(16), default="stocks", server_default="stocks")  # its day bounds
    provider: Mapped[str] = mapped_column(String(16), default="polygon", server_default="polygon")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class TickerDetails(Base):
    """Reference data of a symbol (Polygon ticker details), replaced on every flatpack run."""

    __tablename__ = "ticker_details"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    market: Mapped[str | None] = mapped_column(String(32))
    primary_exchange: Mapped[str | None] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(16))
    active: Mapped[bool | None] = mapped_column(Boolean)
    currency: Mapped[str | None] = mapped_column(String(16))
    list_date: Mapped[dt.date | None] = mapped_column(Date)
    raw: Mapped[str] = mapped_column(Text)  # the whole answer, JSON: fields beyond the columns
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Dividend(Base):
    __tablename__ = "dividends"
    __table_args__ = (Index("ix_dividends_symbol", "symbol"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # Polygon's id
    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH))
    ex_dividend_date: Mapped[dt.date] = mapped_column(Date)
    record_date: Mapped[dt.date | None] = mapped_column(Date)
    pay_date: Mapped[dt.date | None] = mapped_column(Date)
    declaration_date: Mapped[dt.date | None] = mapped_column(Date)
    cash_amount: Mapped[float] = mapped_column(Float)
    currency: Mapped[str | None] = mapped_column(String(8))
    frequency: Mapped[int | None] = mapped_column(Integer)
    dividend_type: Mapped[str | None] = mapped_column(String(8))


class Split(Base):
    __tablename__ = "splits"
    __table_args__ = (Index("ix_splits_symbol", "symbol"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # Polygon's id
    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH))
    execution_date: Mapped[dt.date] = mapped_column(Date)
    split_from: Mapped[float] = mapped_column(Float)
    split_to: Mapped[float] = mapped_column(Float)


class RollupColumns:
    """Bars of a coarser timeframe, one per symbol and bucket (its start, UTC, on a clock boundary).

    Kept current in the transaction that writes the finer bars they roll up (ohlcv_1m ->
    ohlcv_5m -> ohlcv_15m -> ohlcv_1h), or written directly by the api phase of a symbol
    registered at that timeframe. `bars` is the number of minute bars inside; NULL for a
    bar a provider aggregated (its minutes were never seen).
    """

    bucket: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    bars: Mapped[int | None] = mapped_column(Integer)


class Ohlcv5m(RollupColumns, Base):
    __tablename__ = "ohlcv_5m"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)


class Ohlcv15m(RollupColumns, Base):
    __tablename__ = "ohlcv_15m"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)


class Ohlcv1h(RollupColumns, Base):
    __tablename__ = "ohlcv_1h"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)


class Ohlcv1d(BarColumns, Base):
    """Daily bars from Polygon's day aggregates; `day` is the New York trading day."""

    __tablename__ = "ohlcv_1d"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)


class SnapshotLatest(Base):
    """The newest snapshot taken of each symbol (the `snapshot` phase)."""

    __tablename__ = "snapshot_latest"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # market time of the price
    price: Mapped[float] = mapped_column(Float)
    # Volume behind the price: the day's (snapshot), the minute's (agg) or the trade's size (rest).
    volume: Mapped[float | None] = mapped_column(Float)
    prev_close: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(16))
    fetched_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class RunStep(Base):
    """What each step of a symbol's latest run did (ok, skipped, error) and its figures.

    Cleared when a run begins; the completion event's `results` are read from it, and a
    run of symbols that are not in the registry (ad-hoc runs) keeps its status here.
    """

    __tablename__ = "run_steps"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | skipped | error
    detail: Mapped[str | None] = mapped_column(Text)  # JSON: the step's figures, or the message
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SinkState(Base):
    """What a sink (the Parquet lake, the feature store) holds of a symbol-day: the rows and
    the digest of the committed data it wrote, so an unchanged symbol-day is not rewritten."""

    __tablename__ = "sink_state"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    sink: Mapped[str] = mapped_column(String(16), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    written_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class News(Base):
    """News articles (Polygon ticker news, RSS/Atom feeds), one row per article: the id is the
    provider's, and the URL is unique too, so an article met twice is stored once."""

    __tablename__ = "news"
    __table_args__ = (Index("ix_news_published_utc", "published_utc"),
                      Index("ux_news_url", "url", unique=True))

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    published_utc: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(64))  # polygon, or feed:<host>
    title: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(2048))
    tickers: Mapped[str] = mapped_column(Text)  # JSON list
    description: Mapped[str | None] = mapped_column(Text)
    sentiment: Mapped[str | None] = mapped_column(Text)  # JSON {ticker: positive|negative|neutral}
    raw: Mapped[str] = mapped_column(Text)  # the whole record as received, JSON


class TickColumns:
    """What trades and quotes share: Polygon's identity fields of a tick. `ts` is the SIP time
    cut to microseconds (the partition key on PostgreSQL: one partition per New York day); the
    `*_timestamp` columns are epoch nanoseconds as Polygon sends them (the stream's millisecond
    times times 10^6). The key is (symbol, sip_timestamp, sequence_number), with ts (which
    follows from sip_timestamp) in it because a partitioned table's keys must hold its
    partition key."""

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    sip_timestamp: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sequence_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    participant_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    trf_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    conditions: Mapped[str | None] = mapped_column(Text)  # condition codes as Polygon lists them: "12,37"
    tape: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # flatpack | api | stream


class Trade(TickColumns, Base):
    """Trades (the `trades` phase)."""

    __tablename__ = "trades"
    __table_args__ = {"postgresql_partition_by": "RANGE (ts)"}

    exchange: Mapped[int] = mapped_column(Integer)
    trade_id: Mapped[str] = mapped_column(String(64))  # Polygon's `id`: unique per ticker, exchange and TRF
    price: Mapped[float] = mapped_column(Float)
    size: Mapped[float] = mapped_column(Float)
    correction: Mapped[int | None] = mapped_column(Integer)
    trf_id: Mapped[int | None] = mapped_column(Integer)


class Quote(TickColumns, Base):
    """NBBO quotes (the `quotes` phase); a price of 0 is a side without a quote, as Polygon sends it."""

    __tablename__ = "quotes"
    __table_args__ = {"postgresql_partition_by": "RANGE (ts)"}

    bid_exchange: Mapped[int | None] = mapped_column(Integer)
    bid_price: Mapped[float | None] = mapped_column(Float)
    bid_size: Mapped[float | None] = mapped_column(Float)
    ask_exchange: Mapped[int | None] = mapped_column(Integer)
    ask_price: Mapped[float | None] = mapped_column(Float)
    ask_size: Mapped[float | None] = mapped_column(Float)
    indicators: Mapped[str | None] = mapped_column(Text)  # indicator codes, as `conditions`


class TickCoverage(Base):
    """One row per symbol, trading day and tick dataset (trades, quotes) loaded: a tick gap is
    a trading day without one. Apart from `coverage` so the bar gap scan stays as it is."""

    __tablename__ = "tick_coverage"

    symbol: Mapped[str] = mapped_column(String(SYMBOL_LENGTH), primary_key=True)
    trading_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(16), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # flatpack (the day file) | api (REST)
    rows: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
