"""Planning and executing registry runs: which symbols, phases and day files; no Celery here.

Tasks in chronox.tasks call these functions with plain JSON arguments.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chronox import metrics, partitions, ranges, registry, rollups, store, ticks
from chronox.calendar import calendar_for, market_day
from chronox.completion import FLATPACK, REST_SKIPPED_STEP, record_bad_file, record_failure
from chronox.day_rollups import DayRollups
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.markets import Instrument, Market, ProviderId, check_phases, lookup_symbol, polygon_ticker_spellings
from chronox.models import RegistryStatus
from chronox.providers import SKIP_DETAIL
from chronox.publish import kafka_status
from chronox.settings import Settings, validate_run_options
from chronox.sources.flatfiles import (
    GLOBAL_CRYPTO,
    US_STOCKS,
    DayFileReader,
    DayFileRows,
    FlatFileError,
    FlatFileStore,
    published_days,
)
from chronox.store import DayLoadResult
from chronox.strategy import DayText, InvalidInput, parse_day, parse_strategy, validate_timeframe

log = logging.getLogger(__name__)

BINANCE_ARCHIVE = "binance"  # Binance's public kline archive: one file per symbol and day



@dataclass
class SymbolPlan:
    symbol: str
    phases: list[str]
    start: str
    end: str
    days: list[str] = field(default_factory=list)
    registered: bool = True  # False: an ad-hoc run, which leaves no registry row
    timeframe: str = "1m"  # what the api phase fetches and the envelopes carry
    market: str = Market.STOCKS.value
    provider: str = ProviderId.POLYGON.value
    provider_symbol: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def instrument(self) -> Instrument:
        return Instrument(self.symbol, Market(self.market), ProviderId(self.provider), self.provider_symbol)


@dataclass
class RunPlan:
    symbols: list[SymbolPlan]
    days: dict[str, list[str]]  # ISO day -> symbols loading that US stocks day file
    missing_files: list[str]  # trading days with no file although a later file exists
    unpublished: list[str]  # trading days after the newest published file
    newest_file_day: str | None
    options: dict[str, Any] = field(default_factory=dict)  # run overrides of settings (RUN_OPTIONS)
    # The day files of other datasets (global_crypto, binance): dataset -> ISO day -> symbols.
    other_days: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def day_files(self) -> dict[str, dict[str, list[str]]]:
        """Every dataset's day files: dataset -> ISO day -> symbols loading it."""
        return {**({US_STOCKS: self.days} if self.days else {}), **self.other_days}

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbols": [s.as_dict() for s in self.symbols],
            "days": self.days,
            "missing_files": self.missing_files,
            "unpublished": self.unpublished,
            "newest_file_day": self.newest_file_day,
            "options": self.options,
            "other_days": self.other_days,
        }

    def describe(self) -> str:
        count = sum(len(days) for days in self.day_files.values())
        lines = [f"{len(self.symbols)} symbol(s), {count} day file(s)"]
        if self.options:
            lines.append("options " + ", ".join(f"{k}={v}" for k, v in sorted(self.options.items())))
        if self.newest_file_day:
            lines.append(f"flat files available up to {self.newest_file_day}")
        if self.unpublished:
            lines.append(f"not yet published by Polygon (skipped): {', '.join(self.unpublished)}")
        if self.missing_files:
            lines.append(f"missing day files (recorded as gaps): {', '.join(self.missing_files)}")
        adhoc = [s.symbol for s in self.symbols if not s.registered]
        if adhoc:
            lines.append(f"not registered, run once without a registry row: {', '.join(adhoc)}")
        return "; ".join(lines)


def plan_run(settings: Settings, symbols: Sequence[str] | None = None,
             start: str | dt.date | None = None, end: str | dt.date | None = None,
             strategy: str | None = None, today: dt.date | None = None,
             store: FlatFileStore | None = None, skip_phases: Sequence[str] = (),
             timeframe: str | None = None, options: dict[str, Any] | None = None,
             range_: str | None = None, market: str | None = None, provider: str | None = None,
             provider_symbol: str | None = None,
             registry_rows: Sequence[registry.RegistryRow] | None = None) -> RunPlan:
    """Decide the work of one registry execution; raises InvalidInput for bad arguments.

    skip_phases drops phases from every symbol (`--no-stream`); a symbol left with no
    phase is not part of the run. timeframe keeps the symbols registered at it. range_
    (a preset such as 1Y, chronox.ranges) stands for the start day it implies. market
    keeps the symbols of a market; with provider and provider_symbol it also says what
    unregistered (ad-hoc) symbols are. registry_rows: the registry rows of `symbols` (without
    `symbols`: the enabled rows to plan), when the caller has read them already.
    """
    engine = get_engine(settings.database_url)
    if range_ is not None:
        ranges.check_run_request(range_, start)
        # "The market's year": an ad-hoc crypto run's today is the UTC day, else New York's.
        start = ranges.start_date(range_, today or market_day(market or "stocks", dt.datetime.now(dt.UTC)),
                                  settings.max_history_start)
    start_day, end_day = parse_day(start, "start"), parse_day(end, "end")
    if start_day and end_day and start_day > end_day:
        raise InvalidInput(f"start {start_day} is after end {end_day}")
    override = list(parse_strategy(strategy)) if strategy else None
    timeframe = validate_timeframe(timeframe) if timeframe is not None else None
    checked_options = validate_run_options(options)
    adhoc: list[Instrument] = []
    if symbols:
        named = {lookup_symbol(s) for s in symbols}
        rows = (list(registry_rows) if registry_rows is not None
                else registry.list_symbols(engine, symbols=sorted(named), market=market))
        missing = sorted(named - {r.symbol for r in rows})
        if missing and override is None:
            raise InvalidInput(f"not registered: {', '.join(missing)} (add with `chronox symbols add`, or give "
                               "--strategy to run them once without registering)")
        adhoc = [Instrument.of(s, market, provider, provider_symbol) for s in missing]
        if override is not None:
            for item in adhoc:
                check_phases(tuple(override), item.market, item.provider, timeframe or "1m")
    else:
        rows = (list(registry_rows) if registry_rows is not None
                else registry.list_symbols(engine, enabled_only=True, market=market))
    # (instrument, phases, timeframe, last_backfill, registered); ad-hoc symbols have only the run's settings.
    candidates = sorted([(r.instrument, r.phases, r.timeframe, r.last_backfill, True) for r in rows]
                        + [(i, (), timeframe or "1m", None, False) for i in adhoc], key=lambda c: c[0].symbol)
    today = today or dt.date.today()
    end_day = end_day or today
    stores: dict[str, Any] = {US_STOCKS: store or FlatFileStore(settings)}
    plans: list[SymbolPlan] = []
    day_text = DayText()
    wanted_days: dict[str, dict[str, set[dt.date]]] = defaultdict(dict)  # dataset -> symbol -> days
    for instrument, registered_phases, symbol_timeframe, last_backfill, registered in candidates:
        symbol = instrument.symbol
        if timeframe is not None and symbol_timeframe != timeframe:
            continue
        phases = [p for p in override or registered_phases if p not in skip_phases]
        if not phases:
            continue
        if start_day:
            first = start_day
        elif last_backfill:
            first = last_backfill + dt.timedelta(days=1)
        else:
            first = settings.default_backfill_start(today)
            if end is not None and end_day < first:
                # Planning it would "complete" a run that did nothing.
                raise InvalidInput(f"end {end_day} is before {symbol}'s default start {first} "
                                   "(CHRONOX_BACKFILL_START or 30 days back); pass --start as well")
        plans.append(SymbolPlan(symbol, phases, day_text[first], day_text[end_day], registered=registered,
                                timeframe=symbol_timeframe, market=instrument.market.value,
                                provider=instrument.provider.value, provider_symbol=instrument.provider_symbol))
        if "flatpack" in phases and first <= end_day:
            dataset = day_file_dataset(instrument)
            wanted_days[dataset][symbol] = set(calendar_for(instrument.market).trading_days(first, end_day))
    files: dict[str, dict[str, list[str]]] = {}
    report: dict[str, tuple[list[dt.date], list[dt.date], dt.date | None]] = {}
    by_symbol = {p.symbol: p for p in plans}
    for dataset, per_symbol in sorted(wanted_days.items()):
        found = published_days(set().union(*per_symbol.values()),
                               day_file_published(settings, dataset, stores.get(dataset)))
        report[dataset] = (found.missing, found.unpublished, found.newest)
        available_set = set(found.available)
        days: dict[str, list[str]] = defaultdict(list)
        for symbol, wanted in sorted(per_symbol.items()):
            for day in sorted(wanted & available_set):
                by_symbol[symbol].days.append(day.isoformat())
                days[day.isoformat()].append(symbol)
        files[dataset] = dict(sorted(days.items()))
    gone_days, later_days, newest = report.get(US_STOCKS, ([], [], None))
    missing_files = [d.isoformat() for d in gone_days]
    unpublished = [d.isoformat() for d in later_days]
    for dataset, (gone, later, _) in report.items():
        if dataset != US_STOCKS:  # other datasets' days are named with their dataset
            missing_files += [f"{dataset}:{d}" for d in gone]
            unpublished += [f"{dataset}:{d}" for d in later]
    # Tick day files (trades, quotes phases) are other datasets too; their days are not the
    # symbols' `days` (those are the minute bars' days finalize checks).
    tick_files, tick_missing, tick_unpublished = ticks.plan_day_files(settings, plans)
    files.update(tick_files)
    missing_files += tick_missing
    unpublished += tick_unpublished
    return RunPlan(plans, files.pop(US_STOCKS, {}), missing_files, unpublished,
                   newest.isoformat() if newest else None, checked_options, other_days=files)


def day_file_published(settings: Settings, dataset: str,
                       store: FlatFileStore | None = None) -> Callable[[dt.date], bool]:
    """Whether a dataset's day file of a day is there to load."""
    if dataset == BINANCE_ARCHIVE:
        # One archive file per symbol and day, published the next UTC morning: a day the
        # archive lacks is found, and reported, by its load.
        utc_today = dt.datetime.now(dt.UTC).date()
        return lambda day: day < utc_today
    return (store or FlatFileStore(settings, dataset)).exists


def day_file_dataset(instrument: Instrument) -> str:
    """The day files a flatpack phase reads for an instrument."""
    if instrument.provider == ProviderId.BINANCE:
        return BINANCE_ARCHIVE
    return GLOBAL_CRYPTO if instrument.market == Market.CRYPTO else US_STOCKS


def begin_run(settings: Settings, symbols: Sequence[str], rest_skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Mark the run's symbols running; those whose REST steps the run leaves out (no
    provider) carry the skip warning, which finalize keeps on the completed row."""
    skipped = set(rest_skipped)
    result: dict[str, Any] = {"running": len(symbols)}
    with get_engine(settings.database_url).begin() as conn:
        store.clear_steps(conn, symbols)
        registry.set_status(conn, [s for s in symbols if s not in skipped], RegistryStatus.RUNNING)
        if skipped:
            note = registry.Note.warning(SKIP_DETAIL)
            registry.set_status(conn, [s for s in symbols if s in skipped], RegistryStatus.RUNNING, note)
            store.record_steps(conn, sorted(skipped), REST_SKIPPED_STEP, "skipped", note.text)
            log.warning("REST steps of %d symbol(s) left out: %s", len(skipped), note.text)
            result.update(step="REST steps", symbols=sorted(skipped), skipped=note.text)
    return result


def load_flat_day(delivery: Delivery, reader: Any, symbols: Sequence[str],
                  source: str = FLATPACK, timeframes: Mapping[str, str] | None = None,
                  rows: Any = None, bounds: tuple[dt.datetime, dt.datetime] | None = None) -> DayLoadResult:
    """Replace the symbol-days of `symbols` on reader.day with the file's rows, atomically.

    One transaction: the bars, their rollups, coverage, quarantine and (db-first) the
    outbox commit together or not at all, so a file that turns out to be truncated
    half-way loads nothing. The delivery publishes the bars in publish-mode order, at
    each symbol's timeframe (`timeframes` names those registered at another than 1m).

    `reader` is a day file's reader (its `day` and `stats`; Polygon's DayFileReader, or a
    Binance archive day), `rows` what storage takes of it (DayFileRows of the reader by
    default), `bounds` the day in UTC (the reader's by default).
    """
    day = reader.day
    result = DayLoadResult(day=day)
    coarse = {s: tf for s, tf in (timeframes or {}).items() if tf != store.TIMEFRAME}
    day_start, day_end = bounds or reader.bounds
    # The day's partitions in a short transaction of their own: attaching one holds a lock on
    # ohlcv_1m (against other attaches) until its transaction ends, which the load's would delay.
    with delivery.engine.begin() as conn:
        partitions.ensure_window(conn, store.OHLCV.name, day_start, day_end)
    with delivery.transaction() as out:
        store.lock_day(out.conn, day)
        # A Polygon day file on PostgreSQL: its rollups are made from the rows as they stream
        # into COPY, rather than aggregated again from the stored minutes.
        day_rollups = DayRollups(reader) if rows is None and out.conn.dialect.name == "postgresql" else None
        rows = out.tap(rows or DayFileRows(reader, source, watch=None if day_rollups is None else day_rollups.add),
                       store.TIMEFRAME, source, skip=frozenset(coarse))
        changed = store.replace_day(out.conn, rows, symbols, day_start, day_end)
        if day_rollups is not None:
            day_rollups.write(out.conn, changed, day_start, day_end)
        else:
            rollups.refresh(out.conn, changed, day_start, day_end)
        stats = reader.stats
        result.rows = {s: stats.rows_kept.get(s, 0) for s in symbols}
        result.duplicates = stats.duplicates
        result.quarantined = store.quarantine_rows(out.conn, stats.quarantined)
        store.cover_day(out.conn, day, result.rows, source)
        out.symbol_days([(s, day, source) for s, n in result.rows.items() if n], coarse)
    metrics.bars_ingested(source, sum(result.rows.values()))  # committed: Polygon's day files
    result.published = out.published
    return result


def load_day(settings: Settings, day: str, symbols: Sequence[str],
             progress: Callable[[int], None] | None = None,
             timeframes: Mapping[str, str] | None = None, dataset: str = US_STOCKS) -> dict[str, Any]:
    """Read one day file once and load it for every given symbol (DESIGN decision 1).

    `dataset`: Polygon's US stocks files (New York days), its global crypto files (UTC
    days; tickers spelled `X:BTC-USD` or `X:BTCUSD`, both taken), or Binance's archive.
    A broken file quarantines one record for the whole file and marks its symbols in
    error; transient failures (database, Kafka, S3 connection) propagate for a retry.
    """
    if dataset == BINANCE_ARCHIVE:
        return load_binance_day(settings, day, symbols, progress, timeframes)
    engine = get_engine(settings.database_url)
    the_day = dt.date.fromisoformat(day)
    files = FlatFileStore(settings, dataset)
    origin = files.location(the_day)
    market = Market.CRYPTO if dataset == GLOBAL_CRYPTO else Market.STOCKS
    aliases = {spelling: s for s in symbols for spelling in polygon_ticker_spellings(s, market)}
    try:
        with files.open(the_day) as raw:
            reader = DayFileReader(raw, the_day, list(aliases), origin, progress=progress,
                                   bounds=calendar_for(market).day_bounds(the_day),
                                   aliases=aliases if market == Market.CRYPTO else None)
            result = load_flat_day(Delivery(settings, engine, (market.value, ProviderId.POLYGON.value)), reader,
                                   symbols, timeframes=timeframes)
    except FlatFileError as exc:
        return {"day": day, **record_bad_file(engine, origin, symbols, "minute_bars", exc)}
    return result.as_dict()


def load_binance_day(settings: Settings, day: str, symbols: Sequence[str],
                     progress: Callable[[int], None] | None = None,
                     timeframes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A day of Binance's archive: one file per symbol, each loaded as its own symbol-day.

    A symbol without a file that day (not listed yet, or not published yet) is reported
    as such and left uncovered: its finalize names the day not loaded.
    """
    from chronox.sources.binance_archive import BinanceArchive, BinanceDayRows

    engine = get_engine(settings.database_url)
    the_day = dt.date.fromisoformat(day)
    archive = BinanceArchive(settings)
    delivery = Delivery(settings, engine, (Market.CRYPTO.value, ProviderId.BINANCE.value))
    bounds = calendar_for(Market.CRYPTO).day_bounds(the_day)
    total = DayLoadResult(day=the_day)
    missing: list[str] = []
    errors: list[str] = []
    for symbol in symbols:
        try:
            reader = archive.open_day(symbol, the_day)
            if reader is None:
                missing.append(symbol)
                continue
            one = load_flat_day(delivery, reader, [symbol], timeframes=timeframes,
                                rows=BinanceDayRows(reader, FLATPACK), bounds=bounds)
        except FlatFileError as exc:
            errors.append(record_bad_file(engine, archive.location(symbol, the_day), [symbol], "minute_bars", exc,
                                          provider=ProviderId.BINANCE.value, symbol=symbol)["error"])
            continue
        total.rows.update(one.rows)
        total.quarantined += one.quarantined
        total.duplicates += one.duplicates
        total.published += one.published
        if progress is not None:
            progress(sum(total.rows.values()))
    if missing:
        message = f"no Binance archive file for {day}: {', '.join(missing)}"
        log.warning("%s", message)
        record_failure(engine, missing, "minute_bars", message, ends_run=False)
        errors.append(message)
    return {**total.as_dict(), **({"error": "; ".join(errors)} if errors else {})}


def drain_outbox(settings: Settings) -> dict[str, Any]:
    """Publish every symbol-day still in the outbox (db-first mode after a Kafka outage)."""
    if not settings.kafka_enabled:
        return {"published": 0, "kafka": kafka_status(settings)}
    delivery = Delivery(settings)
    published = delivery.drain_outbox()
    with delivery.engine.connect() as conn:
        return {"published": published, "pending": store.outbox_size(conn)}


def schedule(settings: Settings, plan: RunPlan) -> None:
    registry.set_status(get_engine(settings.database_url), [s.symbol for s in plan.symbols],
                        RegistryStatus.SCHEDULED)
