"""Binance spot REST (api.binance.com, or CHRONOX_BINANCE_BASE_URL) as a Provider of crypto symbols.

Symbols come in canonical (`BTC-USDT`) and go to Binance as `BTCUSDT`. Endpoints, with the
request weight Binance documents for each (rest-api.md), spent from the shared budget:

| method | endpoint | weight |
|---|---|---|
| minute_bars, intraday_bars (1m 5m 15m 1h), daily_bars | GET /api/v3/klines, 1000 a page by startTime | 2 a page |
| snapshots | GET /api/v3/ticker/price?symbols=[...], one request per batch | 4 |
| last_minute_agg: the latest *closed* 1m kline (window start, close, volume) | GET /api/v3/klines limit=2 | 2 |
| last_trade: the latest aggregate trade (time, price, quantity) | GET /api/v3/aggTrades limit=1 | 4 |
| ticker_details, dividends, splits | none: no request | 0 |

Crypto has no corporate actions: dividends() and splits() return [], the truth rather than
an error. ticker_details() describes the pair from its canonical name without a request.
Bars carry vwap = quote volume / base volume (None for a minute without volume) and the
number of trades as transactions. ticker/price carries no time: a snapshot is stamped with
the moment its answer arrived.

Politeness, shared by every worker through Redis (chronox.ratelimit, chronox.breaker):
- Each request spends its documented weight from a sliding per-minute budget of
  CHRONOX_BINANCE_WEIGHT_LIMIT (6000, Binance's limit per IP); waiting for it is
  RateLimited, which RestTask turns into a countdown, not a retry.
- Binance's own count (X-MBX-USED-WEIGHT-1M, per IP, so it sees other clients on the same
  address too) near the limit pauses the budget of every worker until the next minute
  begins: a wait like any other for budget, not a failure.
- 429 holds every worker for its Retry-After (Binance: "to prevent a ban"); 418 (IP ban)
  for its Retry-After, at least 2 minutes if none is sent. A held call raises Throttled
  with the time left and never reaches Binance.
- A circuit breaker counts transient failures (5xx, timeouts, refused connections).

BINANCE_API_KEY, when set, travels in the X-MBX-APIKEY header only and is scrubbed from
every message; public market data needs no key.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from chronox.bars import MAX_TRANSACTIONS, UTC, Bar, ts_from_ms
from chronox.breaker import CircuitBreaker, Hold, Throttled, get_breaker, get_hold
from chronox.calendar import CRYPTO, market_day_bounds
from chronox.markets import binance_symbol
from chronox.ratelimit import RateLimited, RateLimiter, RequestBudget, window_limiter
from chronox.settings import Settings
from chronox.sources import http, shown
from chronox.sources.base import ProviderError, Snapshot, TransientProviderError

PROVIDER = "binance"
KLINE_LIMIT = 1000  # Binance's maximum per request
INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
WEIGHT_KLINES = 2
WEIGHT_TICKER_PRICE = 4  # with `symbols` (any count), and without any symbol
WEIGHT_AGG_TRADES = 4
WEIGHT_WINDOW = 60.0  # X-MBX-USED-WEIGHT-1M: Binance counts weight per minute
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Hold off once Binance's count leaves less room than the heaviest request this module sends.
WEIGHT_HEADROOM = max(WEIGHT_KLINES, WEIGHT_TICKER_PRICE, WEIGHT_AGG_TRADES)
MIN_BAN_SECONDS = 120.0  # "IP bans ... scale in duration ... from 2 minutes to 3 days"
BUDGET_KEY = "chronox:ratelimit:binance"
WEIGHT_PAUSE = "binance-weight"  # the hold that pauses the budget until Binance's minute is over
BAD_SYMBOL = -1121  # "Invalid symbol."
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")


class BinanceError(ProviderError):
    """Binance refused the request or answered nonsense; `code` is Binance's error code, if any."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class TransientBinanceError(TransientProviderError, BinanceError):
    """Worth retrying later (5xx, timeouts, refused connections)."""


class WeightLimited(RateLimited):
    """No request weight left within the caller's patience; `wait` is when to come back."""

    exhausted = "Binance request weight budget exhausted (CHRONOX_BINANCE_WEIGHT_LIMIT)"


class WindowPause:
    """A RateLimiter in front of the weight budget: while Binance's own count says this IP's
    minute is spent (by any client), a grant waits for the next minute, under the same
    patience as the budget (RateLimited beyond it, so a task leaves the worker until then)."""

    def __init__(self, inner: RateLimiter | None, pause: Hold):
        self._inner = inner
        self._pause = pause

    def acquire(self, holder: str | None = None, max_wait: float = math.inf) -> None:
        left = self._pause.remaining()
        if left > 0:
            if left > max_wait:
                raise RateLimited(left)
            time.sleep(left)
        if self._inner is not None:
            self._inner.acquire(holder, max_wait)


class WeightBudget:
    """Spends an endpoint's weight from the shared budget, one grant per unit of weight,
    under the task's wait policy (chronox.ratelimit.RequestBudget)."""

    def __init__(self, limiter: RateLimiter | None):
        self._budget = RequestBudget(limiter)

    def spend(self, weight: int) -> None:
        try:
            for _ in range(weight):
                self._budget.before_request()
        except RateLimited as exc:
            raise WeightLimited(exc.wait) from None

    @property
    def spent(self) -> int:
        return self._budget.sent


def weight_limiter(settings: Settings, window: float = WEIGHT_WINDOW) -> RateLimiter:
    """This process's view of the shared weight budget (per process without CHRONOX_REDIS_URL)."""
    return window_limiter(settings, settings.binance_weight_limit, window, BUDGET_KEY, PROVIDER)


def _malformed(what: str, detail: str) -> BinanceError:
    return BinanceError(f"malformed response to {what}: {detail}")


def _int(value: Any, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(what, f"{name} is {shown(value)}, not an integer")
    return value


def _decimal(value: Any, what: str, name: str) -> float:
    """Binance sends prices and quantities as decimal strings ("0.01634790")."""
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise _malformed(what, f"{name} is {shown(value)}, not a decimal string")
    number = float(value)
    if not math.isfinite(number):
        raise _malformed(what, f"{name} is {shown(value)}, out of range")
    return number


def _time(value: Any, what: str, name: str) -> dt.datetime:
    try:
        return ts_from_ms(_int(value, what, name))
    except ValueError as exc:
        raise _malformed(what, f"{name}: {exc}") from None


def kline_bar(symbol: str, row: Any, what: str, source: str = "api") -> Bar:
    """A bar from one kline row of /api/v3/klines: [open time (ms), open, high, low, close,
    volume, close time, quote volume, trades, taker buy base, taker buy quote, ignore]."""
    if not isinstance(row, list) or len(row) < 9:
        raise _malformed(what, f"kline {shown(row)} is not an array of 12 fields")
    ts = _time(row[0], what, "open time")
    o, h, low, c, v = (_decimal(row[i], what, name) for i, name in
                       enumerate(("open", "high", "low", "close", "volume"), start=1))
    if _int(row[6], what, "close time") <= row[0]:
        raise _malformed(what, f"kline close time {row[6]} is not after its open time {row[0]}")
    quote_volume = _decimal(row[7], what, "quote asset volume")
    trades = _int(row[8], what, "number of trades")
    if not 0 <= trades <= MAX_TRANSACTIONS:
        raise _malformed(what, f"number of trades {trades} is not between 0 and {MAX_TRANSACTIONS}")
    return Bar(symbol, ts, o, h, low, c, v, quote_volume / v if v > 0 else None, trades, source)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


class BinanceRest:
    """The Provider backed by Binance's spot REST API."""

    name = PROVIDER

    def __init__(self, settings: Settings, *, limiter: RateLimiter | None = None,
                 breaker: CircuitBreaker | None = None, hold: Hold | None = None,
                 weight_window: float = WEIGHT_WINDOW, page_limit: int = KLINE_LIMIT):
        self._base = settings.binance_base_url.rstrip("/")
        self._secret = settings.binance_api_key
        self._headers = {"Accept": "application/json"}
        if self._secret:
            self._headers["X-MBX-APIKEY"] = self._secret
        self._timeout = settings.polygon_timeout
        self._limit = settings.binance_weight_limit
        self._window = weight_window
        self._page_limit = page_limit
        self.breaker = breaker or get_breaker(settings, PROVIDER)
        self.hold = hold or get_hold(settings, PROVIDER, "Binance")
        self.pause = get_hold(settings, WEIGHT_PAUSE, "Binance")
        self.weight = WeightBudget(WindowPause(limiter if limiter is not None
                                               else weight_limiter(settings, weight_window), self.pause))

    # -- one request ------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any], weight: int, what: str) -> Any:
        """The JSON answer of one GET, after spending `weight`; raises classified errors."""
        self.hold.check()
        with self.breaker.call():
            self.weight.spend(weight)
            self.hold.check()  # a ban may have begun while this call waited for budget
            response = http.get(PROVIDER, f"{self._base}{path}", params, self._headers, self._timeout,
                                self._secret)
            self._observe_weight(response.headers.get(USED_WEIGHT_HEADER))
            status = response.status_code
            if status == 200:
                return http.json_body(response, BinanceError, what)
            code, reason = self._reason(response)
            message = http.scrub(f"Binance answered {status} ({reason}) to {what}", self._secret)
            wait = http.retry_after(response.headers.get("Retry-After"))
            if status == 418:
                wait = max(wait or 0.0, 0.0) or MIN_BAN_SECONDS
                self.hold.set(wait, f"Binance banned this IP (418: {reason[:120]})")
                raise Throttled(f"{message}; every worker holds off for {wait:.0f}s", retry_after=wait)
            if status == 429:
                wait = wait if wait is not None else self._to_window_end()
                self.hold.set(wait, f"Binance rate limit hit (429: {reason[:120]})")
                raise Throttled(f"{message}; every worker holds off for {wait:.0f}s", retry_after=wait)
            if status == 408 or status >= 500:
                raise TransientBinanceError(message, wait)
            raise BinanceError(message, code)

    def _to_window_end(self) -> float:
        """Seconds until Binance's weight window (the minute, by default) starts afresh."""
        return self._window - time.time() % self._window + 0.5

    def _observe_weight(self, header: str | None) -> None:
        try:
            used = int(header) if header else None
        except ValueError:
            return
        if used is not None and used > self._limit - WEIGHT_HEADROOM:
            self.pause.set(self._to_window_end(),
                          f"Binance reports {used} of {self._limit} request weight used this minute "
                          f"({USED_WEIGHT_HEADER})")

    def _reason(self, response: Any) -> tuple[int | None, str]:
        """Binance's error body is {"code": -1121, "msg": "Invalid symbol."}."""
        try:
            payload = json.loads(response.content)
        except ValueError:
            return None, http.body_text(response)
        if isinstance(payload, dict) and isinstance(payload.get("msg"), str):
            code = payload.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) else None
            return code, f"{code} {payload['msg'][:300]}" if code is not None else payload["msg"][:300]
        return None, http.body_text(response)

    # -- bars -------------------------------------------------------------------------------

    def _klines(self, symbol: str, interval: str, start: dt.datetime, end: dt.datetime, what: str) -> list[Bar]:
        """Klines whose open time lies in [start, end), paged by startTime; any other, or one
        off the interval's grid, is malformed (a time in another unit lands far outside)."""
        step = INTERVAL_MS[interval]
        cursor, end_ms = _ms(start), _ms(end)
        bars: list[Bar] = []
        while cursor < end_ms:
            rows = self._get("/api/v3/klines", {"symbol": binance_symbol(symbol), "interval": interval,
                                                "startTime": cursor, "endTime": end_ms - 1,
                                                "limit": self._page_limit}, WEIGHT_KLINES, what)
            if not isinstance(rows, list) or len(rows) > self._page_limit:
                raise _malformed(what, f"not an array of at most {self._page_limit} klines")
            previous = cursor - 1
            for row in rows:
                bar = kline_bar(symbol, row, what)
                opened = row[0]
                if not previous < opened < end_ms or opened % step:
                    raise _malformed(what, f"kline at {bar.ts.isoformat()} is out of order, off the {interval} "
                                           f"grid or outside {start.isoformat()}..{end.isoformat()}")
                previous = opened
                bars.append(bar)
            if len(rows) < self._page_limit:
                break
            cursor = previous + step
        return bars

    def minute_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        return self.intraday_bars(symbol, "1m", first, last)

    def intraday_bars(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]:
        """Klines of 1m, 5m, 15m or 1h (window start, UTC) on the UTC days first..last."""
        if timeframe not in INTERVAL_MS or timeframe == "1d":
            raise BinanceError(f"Binance intraday bars come in 1m, 5m, 15m and 1h, not {timeframe!r}")
        start, end = market_day_bounds(CRYPTO, first, last)
        return self._klines(symbol, timeframe, start, end, f"{timeframe} klines of {symbol} {first}..{last}")

    def daily_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        """1d klines (00:00 UTC window start) of the UTC days first..last."""
        start, end = market_day_bounds(CRYPTO, first, last)
        return self._klines(symbol, "1d", start, end, f"1d klines of {symbol} {first}..{last}")

    # -- reference data: nothing to ask for crypto ------------------------------------------

    def ticker_details(self, symbol: str) -> dict[str, Any]:
        base, _, quote = symbol.partition("-")
        return {"ticker": symbol, "name": f"{base}/{quote}", "market": "crypto", "type": "CRYPTO",
                "primary_exchange": "BINANCE", "currency_name": quote.lower(), "active": None,
                "provider_symbol": binance_symbol(symbol)}

    def dividends(self, symbol: str) -> list[dict[str, Any]]:
        return []

    def splits(self, symbol: str) -> list[dict[str, Any]]:
        return []

    # -- current state ----------------------------------------------------------------------

    def snapshots(self, symbols: Sequence[str]) -> list[Snapshot]:
        """Latest prices of `symbols` in one request (volume and previous close: unknown)."""
        if not symbols:
            return []
        wanted = {binance_symbol(s): s for s in symbols}
        what = f"price ticker of {len(symbols)} symbol(s)"
        try:
            payload = self._get("/api/v3/ticker/price",
                                {"symbols": json.dumps(sorted(wanted), separators=(",", ":"))},
                                WEIGHT_TICKER_PRICE, what)
        except BinanceError as exc:
            if exc.code != BAD_SYMBOL or isinstance(exc, TransientProviderError):
                raise
            # One symbol Binance does not list fails the whole batch: ask for every price
            # (the same weight) and keep the known ones.
            payload = self._get("/api/v3/ticker/price", {}, WEIGHT_TICKER_PRICE, f"{what} (every symbol)")
        received = dt.datetime.now(UTC)
        if not isinstance(payload, list):
            raise _malformed(what, "not an array of prices")
        out = []
        for entry in payload:
            if not isinstance(entry, dict) or not isinstance(entry.get("symbol"), str):
                raise _malformed(what, f"entry {shown(entry)} has no symbol")
            symbol = wanted.get(entry["symbol"])
            if symbol is not None:
                out.append(Snapshot(symbol, received, _decimal(entry.get("price"), what, "price"), None, None,
                                    "snapshot"))
        return out

    def last_minute_agg(self, symbol: str, now: dt.datetime | None = None) -> Snapshot | None:
        """The latest closed 1m kline: window start, close, volume (the open minute is skipped)."""
        now = now or dt.datetime.now(UTC)
        what = f"latest 1m kline of {symbol}"
        rows = self._get("/api/v3/klines", {"symbol": binance_symbol(symbol), "interval": "1m", "limit": 2},
                         WEIGHT_KLINES, what)
        if not isinstance(rows, list):
            raise _malformed(what, "not an array of klines")
        closed = [bar for bar in (kline_bar(symbol, row, what) for row in rows)
                  if bar.ts + dt.timedelta(minutes=1) <= now]
        if not closed:
            return None
        bar = max(closed, key=lambda b: b.ts)
        return Snapshot(symbol, bar.ts, bar.close, bar.volume, None, "agg")

    def last_trade(self, symbol: str) -> Snapshot | None:
        """The latest aggregate trade: trade time, price, quantity."""
        what = f"latest aggregate trade of {symbol}"
        rows = self._get("/api/v3/aggTrades", {"symbol": binance_symbol(symbol), "limit": 1},
                         WEIGHT_AGG_TRADES, what)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise _malformed(what, "not an array of trades")
        if not rows:
            return None
        trade = rows[-1]
        return Snapshot(symbol, _time(trade.get("T"), what, "T"), _decimal(trade.get("p"), what, "p"),
                        _decimal(trade.get("q"), what, "q"), None, "rest")
