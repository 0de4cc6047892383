"""Gaps in coverage, and the `api` phase that fills them from REST aggregates.

A gap is a trading day of the symbol's market (NYSE: holidays excluded, early closes
included; crypto: every UTC day) in its window that has no coverage row of any source.
Coverage, not a minute grid: Polygon writes no bar for a minute without trades. The window
runs from the day after `last_backfill` (or --start; CHRONOX_BACKFILL_START or 30 days back
for a symbol never backfilled) to --end or today, and stops at the newest complete trading
day: a session is not a gap until its extended hours (04:00-20:00 New York, 17:00 after an
early close) are over.

Source precedence (chronox.bars.SOURCE_RANK) decides what is final. The api phase may fill
a day once its regular session is over (daily_historical at 16:30), but it covers the day
only once the after-hours are over too, so until then the day stays a gap. For a symbol
with a flatpack phase, a day the api phase filled is a gap again once its day file is
published: the run that fills it loads the file over the REST bars.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, select

from chronox import metrics, registry, ticks
from chronox.backfill import day_file_dataset, day_file_published, plan_run
from chronox.bars import UTC
from chronox.calendar import NYSE, STOCKS, MarketCalendar, calendar_for, market_day
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.markets import Instrument, as_instrument, lookup_symbol
from chronox.providers import get_provider, provider_configured
from chronox.rest import checked, not_in_plan, skipped
from chronox.rollups import refresh_days
from chronox.settings import Settings
from chronox.sources.base import NotInPlan
from chronox.store import COVERAGE_DAYS, copy_out, cover_days, lock_day, quarantine_rows, upsert_bars_at
from chronox.strategy import InvalidInput, parse_day, validate_timeframe
from chronox.tick_store import BARS, COVERAGE_DATASETS

log = logging.getLogger(__name__)

WINDOW_DAYS = 7
WORD = 64  # days per coverage_days word: what one bigint holds
FEW_SYMBOLS = 1000  # up to this many, the coverage query names the symbols
# How far before a window a flatpack symbol's REST-filled days are looked for: Polygon
# publishes a day file the next morning, so days filled without one are the newest.
SUPERSEDE_LOOKBACK_DAYS = 7


def last_complete_day(now: dt.datetime | None = None, market: str = STOCKS) -> dt.date | None:
    """The market's newest trading day whose (extended) session has ended."""
    return calendar_for(market).last_complete_day(now or dt.datetime.now(UTC))


def _trading_days_between(calendar: MarketCalendar, first: dt.date, last: dt.date) -> int:
    """How many trading days lie strictly between two days."""
    return len(calendar.trading_days(first + dt.timedelta(days=1), last - dt.timedelta(days=1)))


REST_SOURCE = "api"  # coverage written by the api phase: final only where no flat file is wanted


COVERAGE_EPOCH = dt.date(1970, 1, 1)  # where word 0 of coverage_days starts (migration 0012)


def covered_words(conn: Connection, symbols: Sequence[str], low: int,
                  high: int) -> tuple[np.ndarray, np.ndarray]:
    """coverage_days words `low` to `high` of `symbols`, as two (symbols x words) arrays in
    the order of `symbols`: bit i of word w is set when the day 64 w + i since
    COVERAGE_EPOCH has a coverage row of any source (the first), of another source than
    the api phase (the second). A word without a row is 0.

    Triggers on `coverage` keep these words (migration 0012): a year is six numbers per
    symbol instead of 250 rows.
    """
    shape = (len(symbols), high - low + 1)
    days, final = np.zeros(shape, dtype="<u8"), np.zeros(shape, dtype="<u8")
    if not symbols:
        return days, final
    words = _word_rows(conn, symbols, low, high)
    if not words.num_rows:
        return days, final
    row = pc.index_in(words["symbol"], value_set=pa.array(symbols)).fill_null(-1).to_numpy()
    wanted = row >= 0
    at = (row[wanted], words["word"].to_numpy()[wanted] - low)
    # Stored as signed bigints: the same 64 bits.
    days[at] = words["days"].to_numpy().view("<u8")[wanted]
    final[at] = words["final_days"].to_numpy().view("<u8")[wanted]
    return days, final


_WORD_COLUMNS = {"symbol": pa.string(), "word": pa.int64(), "days": pa.int64(), "final_days": pa.int64()}


def _word_rows(conn: Connection, symbols: Sequence[str], low: int, high: int) -> pa.Table:
    """The coverage_days rows of words `low` to `high`: of `symbols` when they are a few (the
    primary key's index finds them), else every symbol's (a market's worth reads every word
    of the range anyway, and testing each against the list costs more than dropping the
    other symbols' words after)."""
    if len(symbols) > FEW_SYMBOLS and conn.dialect.name == "postgresql":
        # Tens of thousands of rows: read through the driver they were most of the scan's
        # database time.
        return copy_out(conn, f"SELECT symbol, word, days, final_days FROM {COVERAGE_DAYS.name} "
                              "WHERE word BETWEEN %(low)s AND %(high)s", {"low": low, "high": high}, _WORD_COLUMNS)
    query = select(COVERAGE_DAYS.c.symbol, COVERAGE_DAYS.c.word, COVERAGE_DAYS.c.days,
                   COVERAGE_DAYS.c.final_days).where(COVERAGE_DAYS.c.word.between(low, high))
    if len(symbols) <= FEW_SYMBOLS:
        query = query.where(COVERAGE_DAYS.c.symbol.in_(list(symbols)))
    rows = conn.execute(query).all()
    columns = zip(*rows, strict=True) if rows else ([] for _ in _WORD_COLUMNS)
    return pa.table({name: pa.array(values, kind) for (name, kind), values in zip(_WORD_COLUMNS.items(), columns,
                                                                                  strict=True)})


def _bits(words: np.ndarray) -> np.ndarray:
    """(rows x words) 64-bit words as (rows x 64 words) booleans, bit 0 of the first word first."""
    return np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").view(bool)


def _dates_by_row(bits: np.ndarray, dates: Sequence[dt.date]) -> list[list[dt.date]]:
    """The dates of each row's set bits, in order; column j stands for dates[j]."""
    rows, columns = np.nonzero(bits)
    found = [dates[j] for j in columns.tolist()]
    bounds = np.searchsorted(rows, np.arange(bits.shape[0] + 1)).tolist()
    return [found[bounds[i]:bounds[i + 1]] for i in range(bits.shape[0])]


def scan_days(conn: Connection, windows: Sequence[tuple[str, dt.date, dt.date]],
              calendar: MarketCalendar = NYSE) -> tuple[dict[str, list[dt.date]], dict[str, list[dt.date]]]:
    """For each (symbol, first, last) on one market's calendar, with one query for all of
    them: the missing trading days (no coverage row), and the days the api phase filled.

    Array work over every window at once: a market's scan is ten thousand windows, and
    per-symbol Python over their coverage words was most of its time."""
    windows = [w for w in windows if w[1] <= w[2]]
    if not windows:
        return {}, {}
    first, last = min(w[1] for w in windows), max(w[2] for w in windows)
    low, high = ((d - COVERAGE_EPOCH).days >> 6 for d in (first, last))
    base = COVERAGE_EPOCH + dt.timedelta(days=WORD * low)  # the day of column 0
    span = WORD * (high - low + 1)
    dates = [base + dt.timedelta(days=i) for i in range(span)]
    column = np.arange(span)
    trading = np.zeros(span, dtype=bool)
    trading[[(d - base).days for d in calendar.trading_days(first, last)]] = True
    symbols = sorted({w[0] for w in windows})
    covered, final = covered_words(conn, symbols, low, high)
    wanted: dict[tuple[dt.date, dt.date], int] = {}  # a window's row in `expected`
    expected_rows: list[np.ndarray] = []
    for _, since, until in windows:
        if (since, until) not in wanted:
            wanted[since, until] = len(expected_rows)
            expected_rows.append(trading & (column >= (since - base).days) & (column <= (until - base).days))
    expected = np.packbits(np.array(expected_rows), axis=1, bitorder="little").view("<u8")
    which = np.fromiter((wanted[since, until] for _, since, until in windows), dtype=np.int64, count=len(windows))
    index = {s: i for i, s in enumerate(symbols)}
    where = np.fromiter((index[w[0]] for w in windows), dtype=np.int64, count=len(windows))
    want, got, others = expected[which], covered[where], final[where]
    missing = dict(zip((w[0] for w in windows), _dates_by_row(_bits(want & ~got), dates), strict=True))
    rest = want & got & ~others
    filled = np.flatnonzero(rest.any(axis=1))
    rest_filled = dict(zip((windows[i][0] for i in filled), _dates_by_row(_bits(rest[filled]), dates), strict=True))
    return missing, rest_filled


def scan(conn: Connection, windows: Sequence[tuple[str, dt.date, dt.date]],
         calendar: MarketCalendar = NYSE) -> dict[str, list[dt.date]]:
    """The missing trading days of each (symbol, first, last) on one market's calendar,
    with one query for all of them: a gap is a trading day without a coverage row."""
    return scan_days(conn, windows, calendar)[0]


def missing_days(conn: Connection, symbol: str, first: dt.date, last: dt.date,
                 calendar: MarketCalendar = NYSE) -> list[dt.date]:
    return scan(conn, [(symbol, first, last)], calendar).get(symbol, [])


def windows(days: Sequence[dt.date], span: int = WINDOW_DAYS,
            calendar: MarketCalendar = NYSE) -> list[tuple[dt.date, dt.date]]:
    """Runs of consecutive trading days, cut so that none spans more than `span` calendar days."""
    if not days:
        return []
    out: list[tuple[dt.date, dt.date]] = []
    first = prev = days[0]
    for day in days[1:]:
        if (day - first).days < span and ((day - prev).days == 1 or not _trading_days_between(calendar, prev, day)):
            prev = day
            continue
        out.append((first, prev))
        first = prev = day
    out.append((first, prev))
    return out


@dataclass
class SymbolGaps:
    symbol: str
    since: dt.date
    until: dt.date
    gaps: list[dt.date] = field(default_factory=list)
    market: str = STOCKS
    # Among the gaps: days the api phase filled whose flat file is out now (it replaces them).
    superseded: list[dt.date] = field(default_factory=list)

    @property
    def windows(self) -> list[tuple[dt.date, dt.date]]:
        return windows(self.gaps, calendar=calendar_for(self.market))

    def as_dict(self) -> dict[str, Any]:
        out = {"symbol": self.symbol, "since": self.since.isoformat(), "until": self.until.isoformat(),
               "gaps": [d.isoformat() for d in self.gaps],
               "windows": [[a.isoformat(), b.isoformat()] for a, b in self.windows]}
        if self.superseded:
            out["superseded"] = [d.isoformat() for d in self.superseded]
        return out


def _bounded(symbol: str, start: str | dt.date, end: str | dt.date, newest: dt.date | None,
             market: str) -> SymbolGaps:
    """A symbol's window, stopped at the market's newest complete trading day."""
    since = parse_day(start)
    until = parse_day(end)
    until = min(until, newest) if newest else since - dt.timedelta(days=1)
    return SymbolGaps(symbol, since, until, market=market)


DayFilePublished = Callable[[dt.date], bool]


def _scan(settings: Settings, found: Sequence[SymbolGaps],
          flat_files: Mapping[str, DayFilePublished] | None = None) -> None:
    """Fill in the gaps of every window: one coverage query per market calendar.

    For a symbol in `flat_files` (its flatpack phase wants day files), a day the api phase
    filled is a gap too once its day file is published: source precedence says the file
    replaces REST bars, and the run the gap sends loads it. Those days are looked for
    SUPERSEDE_LOOKBACK_DAYS before the window as well, because the day REST filled (the
    file was not out yet) is what moved the symbol's last_backfill, where windows start.
    """
    flat_files = flat_files or {}
    by_market: dict[str, list[SymbolGaps]] = {}
    for g in found:
        if g.since <= g.until:
            by_market.setdefault(g.market, []).append(g)
    if not by_market:
        return
    lookback = dt.timedelta(days=SUPERSEDE_LOOKBACK_DAYS)
    with get_engine(settings.database_url).connect() as conn:
        for market, group in by_market.items():
            missing, rest_filled = scan_days(
                conn, [(g.symbol, g.since - lookback if g.symbol in flat_files else g.since, g.until) for g in group],
                calendar_for(market))
            for g in group:
                g.gaps = [d for d in missing.get(g.symbol, ()) if d >= g.since]  # in order
                published = flat_files.get(g.symbol)
                if published and g.symbol in rest_filled:
                    g.superseded = [d for d in rest_filled[g.symbol] if published(d)]
                    if g.superseded:
                        g.gaps = sorted(set(g.gaps) | set(g.superseded))
                        g.since = min(g.since, g.superseded[0])


def symbol_gaps(settings: Settings, symbol: str, start: str | dt.date, end: str | dt.date,
                now: dt.datetime | None = None, market: str = STOCKS, closed: bool = False) -> SymbolGaps:
    """The gaps of one symbol's window, up to the newest complete trading day, or with
    `closed` up to the newest whose regular session is over (REST has its bars, but not
    yet its after-hours: see fill_window)."""
    moment, calendar = now or dt.datetime.now(UTC), calendar_for(market)
    newest = calendar.last_closed_day(moment) if closed else calendar.last_complete_day(moment)
    found = _bounded(symbol, start, end, newest, market)
    _scan(settings, [found])
    return found


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while: a market's scan makes hundreds of
    thousands of objects that all live until it returns (rows, plans, day lists), and the
    full collections they set off walk them and everything imported, find nothing to free,
    and took a third of the scan's time (0.1 s of 0.33 s for 10,000 symbols)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def find_gaps(settings: Settings, symbols: Sequence[str] | None = None, start: str | None = None,
              end: str | None = None, now: dt.datetime | None = None,
              market: str | None = None, dataset: str = BARS) -> list[SymbolGaps]:
    """Gaps of the named symbols, or of every enabled symbol that backfills (flatpack or api),
    each on its market's calendar; `market` keeps one market's symbols. A flatpack symbol's
    days the api phase filled are gaps once their day file is published (see _scan).

    With `dataset` trades or quotes: the days without that tick dataset's coverage, of the
    named symbols or of every enabled symbol with that phase, in the same windows."""
    if dataset not in COVERAGE_DATASETS:
        raise InvalidInput(f"unknown dataset {dataset!r}; one of {', '.join(COVERAGE_DATASETS)}")
    with _collector_paused():
        return _find_gaps(settings, symbols, start, end, now, market, dataset)


def _find_gaps(settings: Settings, symbols: Sequence[str] | None, start: str | None, end: str | None,
               now: dt.datetime | None, market: str | None, dataset: str) -> list[SymbolGaps]:
    engine = get_engine(settings.database_url)
    wanted = {"flatpack", "api"} if dataset == BARS else {dataset}
    if symbols:
        rows = registry.list_symbols(engine, symbols=sorted({lookup_symbol(s) for s in symbols}), market=market)
    else:
        rows = [r for r in registry.list_symbols(engine, enabled_only=True, market=market) if wanted & set(r.phases)]
        if not rows:
            return []
    if dataset != BARS:
        refused = [r.symbol for r in rows if not ticks.serves_ticks(r.instrument)]
        if refused:
            raise InvalidInput(f"no {dataset} are kept for {', '.join(refused)} (US stocks from Polygon only)")
    today = market_day(market or STOCKS, now or dt.datetime.now(UTC))
    # The api strategy has no flatpack phase, so planning looks up no flat files.
    plan = plan_run(settings, symbols=symbols, start=start, end=end, strategy="api", today=today, market=market,
                    registry_rows=rows)
    newest = {m: last_complete_day(now, m) for m in {p.market for p in plan.symbols}}
    found = [_bounded(p.symbol, p.start, p.end, newest[p.market], p.market) for p in plan.symbols]
    if dataset == BARS:
        _scan(settings, found, _flat_files(settings, rows))
    else:
        with engine.connect() as conn:
            missing = ticks.missing_tick_days(conn, dataset, [(g.symbol, g.since, g.until) for g in found])
        for g in found:
            g.gaps = missing.get(g.symbol, [])
    return found


def _flat_files(settings: Settings, rows: Sequence[registry.RegistryRow]) -> dict[str, DayFilePublished]:
    """Symbol -> whether its day file of a day is published, for symbols with a flatpack
    phase; one look-up per dataset and day, however many symbols share the file."""
    per_dataset: dict[str, DayFilePublished] = {}
    per_source: dict[tuple[str, str], DayFilePublished] = {}  # (market, provider): a market's rows share one
    out: dict[str, DayFilePublished] = {}
    for row in rows:
        if "flatpack" in row.phases:
            source = (row.market, row.provider)
            if source not in per_source:
                dataset = day_file_dataset(row.instrument)
                if dataset not in per_dataset:
                    per_dataset[dataset] = functools.lru_cache(maxsize=None)(
                        _checked(day_file_published(settings, dataset)))
                per_source[source] = per_dataset[dataset]
            out[row.symbol] = per_source[source]
    return out


def _checked(published: DayFilePublished) -> DayFilePublished:
    def check(day: dt.date) -> bool:
        try:
            return published(day)
        except Exception as exc:  # an unreachable file store (S3 down) must not stop the gap scan
            log.warning("could not look up the day file of %s (%s); its REST-filled days stay until the "
                        "next scan", day, exc)
            return False
    return check


def plan_fill(settings: Settings, instrument: Instrument | str, start: str, end: str) -> dict[str, Any]:
    """The api phase's first step: the gaps of one symbol, as windows to fill one task each;
    a day whose regular session is over counts (REST has its bars)."""
    instrument = as_instrument(instrument)
    if not provider_configured(settings, instrument):
        return skipped(settings, [instrument.symbol], "api")
    return symbol_gaps(settings, instrument.symbol, start, end, market=instrument.market, closed=True).as_dict()


def fill_window(settings: Settings, instrument: Instrument | str, start: str, end: str,
                timeframe: str = "1m", now: dt.datetime | None = None) -> dict[str, Any]:
    """Fill the still-uncovered trading days of one window from REST aggregates at the
    symbol's timeframe: minutes into ohlcv_1m, 5m/15m/1h into their rollup table (the
    tables above it rolled up from them), days into ohlcv_1d.

    Days covered meanwhile (a flat-file load, an earlier run) are left alone, so REST bars
    never mix into a flat-file day and a rerun requests nothing. A day whose extended
    session has not ended (daily_historical fills the day at 16:30 New York) is stored but
    not covered: it stays a gap, and the scan after its after-hours fills it for good
    (from the day file where the symbol has a flatpack phase, else from REST again).
    """
    instrument = as_instrument(instrument)
    symbol, calendar = instrument.symbol, calendar_for(instrument.market)
    provider = get_provider(settings, instrument)
    if provider is None:
        return skipped(settings, [symbol], "api")
    first, last = parse_day(start), parse_day(end)
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        days = missing_days(conn, symbol, first, last, calendar)
    result = {"symbol": symbol, "window": [first.isoformat(), last.isoformat()], "provider": provider.name}
    if not days:
        return {**result, "days": 0, "rows": 0, "quarantined": 0}
    timeframe = validate_timeframe(timeframe)
    try:
        if timeframe == "1d":
            fetched = provider.daily_bars(symbol, days[0], days[-1])
        else:
            fetched = provider.intraday_bars(symbol, timeframe, days[0], days[-1])
    except NotInPlan as refusal:
        return not_in_plan(settings, symbol, "api", refusal)
    # Minute bars keep the quarantine origin they always had (`polygon:minute:...`).
    kind = "minute" if timeframe == "1m" else timeframe
    good, bad = checked(fetched, f"{provider.name}:{kind}:{symbol}:{days[0]}..{days[-1]}")
    with Delivery(settings, origin=instrument.origin).transaction() as out:
        for day in days:
            lock_day(out.conn, day)  # the lock a flat-file load of the day takes
        still = set(missing_days(out.conn, symbol, days[0], days[-1], calendar)) & set(days)
        # One bar per period, the last winning as in the upsert, so the counts match the rows.
        bars = list({b.ts: b for b in good if calendar.day_of(b.ts) in still}.values())
        counts = Counter(calendar.day_of(b.ts) for b in bars)
        upsert_bars_at(out.conn, timeframe, bars, calendar.day_of)
        if timeframe != "1d":
            refresh_days(out.conn, [symbol], [calendar.day_bounds(d) for d in still], written=timeframe)
        # A day REST has no bar for is covered too: the symbol did not trade.
        moment = now or dt.datetime.now(UTC)
        over = {d for d in still if calendar.extended_session(d)[1] <= moment}
        cover_days(out.conn, symbol, {d: counts[d] for d in over}, REST_SOURCE)
        quarantine_rows(out.conn, bad)
        out.bars(bars, timeframe)
    metrics.bars_ingested("api", len(bars), provider.name)
    return {**result, "days": len(still), "rows": len(bars), "quarantined": len(bad),
            **({"open_days": [d.isoformat() for d in sorted(still - over)]} if still - over else {})}
