"""What every market-data provider implements, and the errors the phases understand.

A provider module (Polygon, the replay provider, later Binance and CoinGecko) answers
the REST phases through this interface; chronox.providers picks one for a run.
Timestamps leave a provider as UTC datetimes.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chronox.bars import Bar


class ProviderError(Exception):
    """The provider refused the request or answered nonsense; retrying will not help."""


class NotInPlan(ProviderError):
    """The account's plan does not include the request: the step ends as a warning naming
    the plan, since only a different subscription would change the answer."""

    def __init__(self, message: str, plan: str):
        super().__init__(message)
        self.plan = plan


class TransientProviderError(ProviderError):
    """Worth retrying later; retry_after is the provider's Retry-After in seconds, if it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Snapshot:
    symbol: str
    ts: dt.datetime  # UTC, market time of the price
    price: float
    volume: float | None  # the day's (snapshot), the minute's (agg) or the trade's size (rest)
    prev_close: float | None
    method: str


class Provider(Protocol):
    """What the REST phases need from a source of market data."""

    name: str

    def minute_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]: ...
    def intraday_bars(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]: ...
    def daily_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]: ...
    def ticker_details(self, symbol: str) -> dict[str, Any]: ...
    def dividends(self, symbol: str) -> list[dict[str, Any]]: ...
    def splits(self, symbol: str) -> list[dict[str, Any]]: ...
    def snapshots(self, symbols: Sequence[str]) -> list[Snapshot]: ...
    def last_trade(self, symbol: str) -> Snapshot | None: ...
    def last_minute_agg(self, symbol: str) -> Snapshot | None: ...
