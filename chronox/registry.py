"""The symbol registry: what to ingest per symbol, and the durable status of its runs.

This module is the only writer of `symbol_registry`. Rows come out typed (`RegistryRow`:
dates as dates, timestamps as UTC datetimes, the status as `RegistryStatus`);
`RegistryRow.as_json()` is the one place they become JSON.

`error_message` carries one note with its kind in `note_kind`: an error (status
`error`), a warning a completed run keeps (the text starts with `warning: `), or the
stream monitor's stale flag (`stream stale: ...`), which the stream clears when bars
flow again. The text conventions live here and nowhere else.

Every function takes a `Bind`: an Engine (the function runs its own transaction) or a
Connection (it joins the caller's).
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, Engine, Select, and_, case, select, update
from sqlalchemy.exc import IntegrityError

from chronox.bars import UTC, isoformat_utc
from chronox.markets import (
    Instrument,
    Market,
    ProviderId,
    canonical_symbol,
    check_phases,
    lookup_symbol,
    parse_market,
    parse_provider,
)
from chronox.models import NoteKind, RegistryStatus, SymbolRegistry, table
from chronox.strategy import InvalidInput, canonical_strategy, parse_strategy, validate_timeframe

REGISTRY = table(SymbolRegistry)
WARNING_PREFIX = "warning: "
STREAM_STALE_PREFIX = "stream stale:"
MESSAGE_LIMIT = 2000
BUSY = (RegistryStatus.SCHEDULED.value, RegistryStatus.RUNNING.value)
# SQLite caps the parameters of one statement; an IN list is chunked below that.
IN_CHUNK = 1000

Bind = Engine | Connection


class UnknownSymbol(InvalidInput):
    pass


@dataclass(frozen=True)
class Note:
    """A message for error_message, with its kind."""

    kind: NoteKind
    text: str

    @classmethod
    def error(cls, text: str) -> Note:
        return cls(NoteKind.ERROR, text[:MESSAGE_LIMIT] or "failed")

    @classmethod
    def warning(cls, detail: str) -> Note:
        return cls(NoteKind.WARNING, f"{WARNING_PREFIX}{detail}"[:MESSAGE_LIMIT])

    @classmethod
    def stale(cls, detail: str) -> Note:
        return cls(NoteKind.STREAM_STALE, f"{STREAM_STALE_PREFIX} {detail}"[:MESSAGE_LIMIT])


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


EnumT = TypeVar("EnumT", bound=Enum)


def _members(kind: type[EnumT]) -> Callable[[str], EnumT]:
    """`kind(value)` by a dict look-up: an Enum call costs a third of a microsecond, and a
    market's registry is ten thousand rows of four of them. Unknown values still raise."""
    members = {m.value: m for m in kind}

    def member(value: str) -> EnumT:
        found = members.get(value)
        return kind(value) if found is None else found

    return member


_status, _note_kind, _market, _provider = (_members(RegistryStatus), _members(NoteKind), _members(Market),
                                           _members(ProviderId))


class RegistryRow(NamedTuple):
    """One symbol_registry row, typed. A named tuple rather than a frozen dataclass: as
    immutable, and made four times faster, which a market's ten thousand rows notice."""

    symbol: str
    strategy: str
    timeframe: str
    enabled: bool
    last_backfill: dt.date | None
    last_snapshot: dt.datetime | None
    last_stream: dt.datetime | None
    status: RegistryStatus
    error_message: str | None
    note_kind: NoteKind | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    market: Market = Market.STOCKS
    provider: ProviderId = ProviderId.POLYGON
    provider_symbol: str | None = None

    @classmethod
    def from_db(cls, row: Any) -> RegistryRow:
        """A row of `_select()`: its columns in this tuple's order."""
        (symbol, strategy, timeframe, enabled, last_backfill, last_snapshot, last_stream, status, error_message,
         note_kind, created_at, updated_at, market, provider, provider_symbol) = row
        return cls(symbol, strategy, timeframe, bool(enabled), last_backfill, _utc(last_snapshot), _utc(last_stream),
                   _status(status), error_message, _note_kind(note_kind) if note_kind else None, _utc(created_at),
                   _utc(updated_at), _market(market), _provider(provider), provider_symbol)

    @property
    def phases(self) -> tuple[str, ...]:
        return parse_strategy(self.strategy)

    @property
    def instrument(self) -> Instrument:
        return Instrument(self.symbol, self.market, self.provider, self.provider_symbol)

    @property
    def warning(self) -> str | None:
        """The warning a row carries (REST steps skipped ...), if any."""
        return self.error_message if self.note_kind == NoteKind.WARNING else None

    @property
    def error(self) -> str | None:
        """The message of a row that is not a warning, if any."""
        return None if self.note_kind == NoteKind.WARNING else self.error_message

    @property
    def stale(self) -> bool:
        return self.note_kind == NoteKind.STREAM_STALE

    def as_json(self) -> dict[str, Any]:
        """The registry columns people see, JSON-able: timestamps ISO-8601 UTC, dates ISO, or null.

        note_kind stays inside: the message text says what it is."""
        out: dict[str, Any] = {}
        for name, value in self._asdict().items():
            if name == "note_kind":
                continue
            if isinstance(value, dt.datetime):
                value = isoformat_utc(value)
            elif isinstance(value, dt.date):
                value = value.isoformat()
            out[name] = value
        return out


def _select() -> Select[Any]:
    """The registry's columns in RegistryRow's order (from_db unpacks them by position)."""
    return select(*(REGISTRY.c[name] for name in RegistryRow._fields))


@contextlib.contextmanager
def _begin(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _chunks(symbols: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(symbols), IN_CHUNK):
        yield list(symbols[i:i + IN_CHUNK])


# -- registration -------------------------------------------------------------------


def add_symbol(bind: Bind, symbol: str, strategy: str, timeframe: str = "1m", enabled: bool = True,
               market: str = Market.STOCKS, provider: str = ProviderId.POLYGON,
               provider_symbol: str | None = None) -> RegistryRow:
    """Register a symbol; a phase or timeframe its provider cannot serve is refused with the reason."""
    the_market = parse_market(market)
    the_provider = parse_provider(provider, the_market)
    symbol = canonical_symbol(symbol, the_market)
    strategy, timeframe = canonical_strategy(strategy), validate_timeframe(timeframe)
    check_phases(parse_strategy(strategy), the_market, the_provider, timeframe)
    if the_provider == ProviderId.COINGECKO and not provider_symbol:
        raise InvalidInput(f"coingecko needs its coin id for {symbol}: give --provider-symbol (e.g. bitcoin)")
    values = {"symbol": symbol, "strategy": strategy, "timeframe": timeframe, "enabled": enabled,
              "market": the_market.value, "provider": the_provider.value,
              "provider_symbol": provider_symbol.strip() if provider_symbol else None,
              "status": RegistryStatus.IDLE.value, "created_at": _now(), "updated_at": _now()}
    try:
        with _begin(bind) as conn:
            conn.execute(REGISTRY.insert().values(**values))
    except IntegrityError:
        raise InvalidInput(f"symbol {symbol} is already registered; use `symbols update`") from None
    return get_symbol(bind, symbol)


def add_symbols(bind: Bind, symbols: Sequence[str], strategy: str, timeframe: str = "1m") -> int:
    """Register many US stocks from Polygon with one strategy in one statement (a full
    market's tickers); each symbol is checked as add_symbol checks it. How many were added."""
    strategy, timeframe = canonical_strategy(strategy), validate_timeframe(timeframe)
    check_phases(parse_strategy(strategy), Market.STOCKS, ProviderId.POLYGON, timeframe)
    now = _now()
    rows = [{"symbol": canonical_symbol(s, Market.STOCKS), "strategy": strategy, "timeframe": timeframe,
             "enabled": True, "market": Market.STOCKS.value, "provider": ProviderId.POLYGON.value,
             "status": RegistryStatus.IDLE.value, "created_at": now, "updated_at": now} for s in symbols]
    if rows:
        try:
            with _begin(bind) as conn:
                conn.execute(REGISTRY.insert(), rows)
        except IntegrityError:
            raise InvalidInput("some of the symbols are already registered; use `symbols update`") from None
    return len(rows)


def get_symbol(bind: Bind, symbol: str) -> RegistryRow:
    symbol = lookup_symbol(symbol)
    with _begin(bind) as conn:
        row = conn.execute(_select().where(REGISTRY.c.symbol == symbol)).first()
    if row is None:
        raise UnknownSymbol(f"symbol {symbol} is not registered")
    return RegistryRow.from_db(row)


def list_symbols(bind: Bind, enabled_only: bool = False, symbols: Sequence[str] | None = None,
                 phase: str | None = None, market: str | None = None) -> list[RegistryRow]:
    """Rows by symbol; `phase` keeps those whose strategy has it, `market` those of a market."""
    query = _select().order_by(REGISTRY.c.symbol)
    if enabled_only:
        query = query.where(REGISTRY.c.enabled.is_(True))
    if market is not None:
        query = query.where(REGISTRY.c.market == parse_market(market).value)
    if symbols is not None:
        query = query.where(REGISTRY.c.symbol.in_([lookup_symbol(s) for s in symbols]))
    with _begin(bind) as conn:
        rows = [RegistryRow.from_db(row) for row in conn.execute(query).all()]
    return [r for r in rows if phase is None or phase in r.phases]


def symbols_with_phase(bind: Bind, phase: str) -> list[str]:
    """Enabled symbols whose strategy has `phase`."""
    return [r.symbol for r in list_symbols(bind, enabled_only=True, phase=phase)]


def update_symbol(bind: Bind, symbol: str, strategy: str | None = None,
                  timeframe: str | None = None, enabled: bool | None = None) -> RegistryRow:
    current = get_symbol(bind, symbol)
    symbol = current.symbol
    values: dict[str, Any] = {"updated_at": _now()}
    if strategy is not None:
        values["strategy"] = canonical_strategy(strategy)
    if timeframe is not None:
        values["timeframe"] = validate_timeframe(timeframe)
    if enabled is not None:
        values["enabled"] = enabled
    check_phases(parse_strategy(values.get("strategy", current.strategy)), current.market, current.provider,
                 values.get("timeframe", current.timeframe))
    with _begin(bind) as conn:
        changed = conn.execute(update(REGISTRY).where(REGISTRY.c.symbol == symbol).values(**values)).rowcount
    if not changed:
        raise UnknownSymbol(f"symbol {symbol} is not registered")
    return get_symbol(bind, symbol)


def remove_symbol(bind: Bind, symbol: str) -> None:
    symbol = lookup_symbol(symbol)
    with _begin(bind) as conn:
        removed = conn.execute(REGISTRY.delete().where(REGISTRY.c.symbol == symbol)).rowcount
    if not removed:
        raise UnknownSymbol(f"symbol {symbol} is not registered")


# -- status and notes -----------------------------------------------------------------


def set_status(bind: Bind, symbols: Sequence[str], status: RegistryStatus | str, note: Note | None = None,
               last_backfill: dt.date | None = None) -> None:
    """Move symbols to a status with its note; scheduled, running and completed clear an old one."""
    if not symbols:
        return
    status = RegistryStatus(status)
    if status == RegistryStatus.ERROR and note is None:
        note = Note.error("failed")
    values: dict[str, Any] = {"status": status.value, "updated_at": _now()}
    if status != RegistryStatus.IDLE or note is not None:
        values.update(error_message=note.text if note else None, note_kind=note.kind.value if note else None)
    if last_backfill is not None:
        values["last_backfill"] = last_backfill
    with _begin(bind) as conn:
        for chunk in _chunks(symbols):
            conn.execute(update(REGISTRY).where(REGISTRY.c.symbol.in_(chunk)).values(**values))


def fail(bind: Bind, symbols: Sequence[str], message: str) -> None:
    set_status(bind, symbols, RegistryStatus.ERROR, Note.error(message))


def mark_stale(bind: Bind, symbols: Sequence[str], detail: str) -> None:
    """The stream monitor's flag: status error with `stream stale: <detail>`."""
    set_status(bind, symbols, RegistryStatus.ERROR, Note.stale(detail))


def note_warning(bind: Bind, symbols: Sequence[str], detail: str) -> None:
    """Put a warning on registry rows without changing their status, unless a row shows an error."""
    note = Note.warning(detail)
    with _begin(bind) as conn:
        for chunk in _chunks(symbols):
            conn.execute(update(REGISTRY)
                         .where(REGISTRY.c.symbol.in_(chunk), REGISTRY.c.status != RegistryStatus.ERROR.value)
                         .values(error_message=note.text, note_kind=note.kind.value, updated_at=_now()))


def stamp_snapshot(bind: Bind, symbols: Sequence[str], at: dt.datetime) -> None:
    with _begin(bind) as conn:
        for chunk in _chunks(symbols):
            conn.execute(update(REGISTRY).where(REGISTRY.c.symbol.in_(chunk))
                         .values(last_snapshot=at, updated_at=_now()))


def stamp_stream(bind: Bind, symbols: Sequence[str], at: dt.datetime) -> None:
    """last_stream for symbols that sent bars; a stale flag the monitor set is cleared."""
    stale = and_(REGISTRY.c.status == RegistryStatus.ERROR.value, REGISTRY.c.note_kind == NoteKind.STREAM_STALE.value)
    with _begin(bind) as conn:
        for chunk in _chunks(symbols):
            conn.execute(update(REGISTRY).where(REGISTRY.c.symbol.in_(chunk)).values(
                last_stream=at, updated_at=_now(),
                status=case((stale, RegistryStatus.COMPLETED.value), else_=REGISTRY.c.status),
                error_message=case((stale, None), else_=REGISTRY.c.error_message),
                note_kind=case((stale, None), else_=REGISTRY.c.note_kind)))


# -- queries ----------------------------------------------------------------------------


def status_of(bind: Bind, symbols: Sequence[str]) -> dict[str, str]:
    with _begin(bind) as conn:
        rows = conn.execute(select(REGISTRY.c.symbol, REGISTRY.c.status).where(REGISTRY.c.symbol.in_(list(symbols))))
        return {s: st for s, st in rows}


def busy_symbols(bind: Bind, now: dt.datetime, stale_after: dt.timedelta) -> set[str]:
    """Symbols `scheduled` or `running` more recently than `stale_after` ago: a run owns them.

    An older busy status is presumed to belong to a run that died and no longer counts.
    """
    cutoff = now - stale_after
    with _begin(bind) as conn:
        rows = conn.execute(select(REGISTRY.c.symbol, REGISTRY.c.updated_at).where(REGISTRY.c.status.in_(BUSY)))
        return {symbol for symbol, updated in rows if updated is not None and (_utc(updated) or now) > cutoff}


def status_report(bind: Bind, market: str | None = None) -> dict[str, Any]:
    """What `chronox status` shows: counts by status, errors, stale streams, last stamps
    (of one market's symbols when `market` is given)."""
    rows = list_symbols(bind, market=market)
    counts = {status.value: 0 for status in RegistryStatus}
    for row in rows:
        counts[row.status] += 1
    errors = [{"symbol": r.symbol, "error_message": r.error_message} for r in rows
              if r.status == RegistryStatus.ERROR and not r.stale]
    stale = [{"symbol": r.symbol, "last_stream": isoformat_utc(r.last_stream), "error_message": r.error_message}
             for r in rows if r.stale]
    stamps = [{k: v for k, v in r.as_json().items() if k in ("symbol", "market", "provider", "strategy", "enabled",
                                                             "status", "last_backfill", "last_snapshot",
                                                             "last_stream")} for r in rows]
    return {"total": len(rows), "by_status": counts, "errors": errors, "stale_streams": stale, "symbols": stamps}
