"""The replay provider: answers the REST phases' calls from local day flat files.

For demos and development without POLYGON_API_KEY (CHRONOX_PROVIDER=replay): minute
bars come from the day files, daily bars are aggregated from them, snapshots are the
last minute of the newest file, reference data is synthetic and there are no corporate
actions. Nothing leaves the machine and no request budget is spent.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chronox.bars import Bar
from chronox.calendar import calendar_for
from chronox.markets import Market, polygon_ticker_spellings
from chronox.settings import Settings
from chronox.sources.base import ProviderError, Snapshot
from chronox.sources.flatfiles import GLOBAL_CRYPTO, PREFIXES, US_STOCKS, DayFileReader, FlatFileStore, FlatRow


class ReplayProvider:
    name = "replay"

    def __init__(self, settings: Settings, today: dt.date | None = None, market: str = "stocks"):
        """`market`: stocks read Polygon's US stocks files, crypto its global crypto files."""
        self.market = Market(market)
        self._calendar = calendar_for(market)
        self._store = FlatFileStore(settings, GLOBAL_CRYPTO if self.market == Market.CRYPTO else US_STOCKS)
        if self._store.is_s3:
            raise ProviderError("CHRONOX_PROVIDER=replay reads local day files: "
                               "set CHRONOX_FLATFILES_URL to a directory")
        self._today = today or self._calendar.day_of(dt.datetime.now(dt.UTC))

    def _rows(self, day: dt.date, symbols: Sequence[str]) -> tuple[dict[str, list[FlatRow]], list[dt.datetime]]:
        found: dict[str, list[FlatRow]] = defaultdict(list)
        if not self._store.exists(day):
            return found, []
        aliases = {spelling: s for s in symbols for spelling in polygon_ticker_spellings(s, self.market)}
        with self._store.open(day) as raw:
            reader = DayFileReader(raw, day, list(aliases), self._store.location(day),
                                   bounds=self._calendar.day_bounds(day), aliases=aliases)
            for row in reader:
                found[row.symbol].append(row)
        return found, reader.minute_times

    def minute_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        bars: list[Bar] = []
        for day in self._calendar.trading_days(first, last):
            if not self._store.exists(day):
                # Polygon would answer with the day's bars; an empty answer here would
                # record the day as covered, as if the symbol had not traded.
                raise ProviderError(f"replay provider has no day file for {day} ({self._store.location(day)})")
            rows, times = self._rows(day, [symbol])
            bars.extend(Bar(symbol, times[r.minute], r.open, r.high, r.low, r.close, r.volume, None,
                            r.transactions, "api") for r in rows[symbol])
        return bars

    def intraday_bars(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]:
        """Minute bars of the files, aggregated into buckets of the timeframe as Polygon does."""
        minutes = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}[timeframe]
        buckets: dict[dt.datetime, list[Bar]] = {}
        for bar in self.minute_bars(symbol, first, last):
            start = bar.ts.replace(minute=bar.ts.minute // minutes * minutes)
            buckets.setdefault(start, []).append(bar)
        return [Bar(symbol, start, group[0].open, max(b.high for b in group), min(b.low for b in group),
                    group[-1].close, sum(b.volume for b in group), None,
                    sum(b.transactions or 0 for b in group), "api")
                for start, group in sorted(buckets.items())]

    def daily_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        bars = []
        for day in self._calendar.trading_days(first, last):
            rows = self._rows(day, [symbol])[0][symbol]
            if not rows:
                continue
            volume = sum(r.volume for r in rows)
            vwap = sum(r.close * r.volume for r in rows) / volume if volume else None
            bars.append(Bar(symbol, self._calendar.day_bounds(day)[0], rows[0].open, max(r.high for r in rows),
                            min(r.low for r in rows), rows[-1].close, volume, vwap,
                            sum(r.transactions or 0 for r in rows), "api"))
        return bars

    def ticker_details(self, symbol: str) -> dict[str, Any]:
        return {"ticker": symbol, "name": f"{symbol} (replay: synthetic reference data)",
                "market": "stocks", "locale": "us", "primary_exchange": "XNAS", "type": "CS",
                "active": True, "currency_name": "usd"}

    def dividends(self, symbol: str) -> list[dict[str, Any]]:
        return []

    def splits(self, symbol: str) -> list[dict[str, Any]]:
        return []

    def _newest_day(self) -> dt.date | None:
        root = Path(self._store.root) / PREFIXES[self._store.dataset]
        days = []
        for path in root.glob("*/*/*.csv.gz"):
            try:
                days.append(dt.date.fromisoformat(path.name[:10]))
            except ValueError:
                continue
        days = [d for d in days if d <= self._today]
        return max(days) if days else None

    def _latest(self, symbols: Sequence[str], method: str) -> list[Snapshot]:
        day = self._newest_day()
        if day is None:
            return []
        rows, times = self._rows(day, symbols)
        out = []
        for symbol in symbols:
            if rows.get(symbol):
                last = rows[symbol][-1]
                volume = sum(r.volume for r in rows[symbol]) if method == "snapshot" else last.volume
                out.append(Snapshot(symbol, times[last.minute], last.close, volume, None, method))
        return out

    def snapshots(self, symbols: Sequence[str]) -> list[Snapshot]:
        return self._latest(symbols, "snapshot")

    def last_trade(self, symbol: str) -> Snapshot | None:
        return next(iter(self._latest([symbol], "rest")), None)

    def last_minute_agg(self, symbol: str) -> Snapshot | None:
        return next(iter(self._latest([symbol], "agg")), None)
