"""CoinGecko's REST API (CHRONOX_COINGECKO_BASE_URL) as a Provider of crypto symbols.

CoinGecko names coins by id (`solana`), not by pair: the registry's provider_symbol maps a
canonical symbol (SOL-USD) to its id, and the symbol's quote (USD) is the vs_currency
(`usd`). The mapping is given to CoinGeckoRest; a symbol without one is refused.

| method | endpoint |
|---|---|
| snapshots | GET /simple/price (ids=a,b,..., vs_currencies, include_24hr_vol, include_last_updated_at), 100 ids |
| last_trade, last_minute_agg | the same price of one symbol: CoinGecko has neither trades nor minute bars |
| intraday_bars 1h, daily_bars | GET /coins/{id}/ohlc/range?interval=hourly|daily, 31 or 180 days a call |
| minute_bars, other timeframes | refused (CoinGeckoError): CoinGecko's ranges are hourly or daily |
| ticker_details, dividends, splits | no request: the pair's name, and no corporate actions |

What the answers mean, and how they become ChronoX's shapes:
- A snapshot is the price in the quote currency, stamped with `last_updated_at` (epoch
  seconds); its volume is `<vs>_24h_vol`, the last 24 hours' volume *in the quote
  currency*, not in coins; a coin or currency CoinGecko has no price for gets no snapshot.
- An OHLC candle is stamped with its *close* ("the timestamp ... indicates the end (or
  close) time"), so its bar's window start is the stamp minus the interval; a candle whose
  stamp is off the interval's grid is still open (stamped with its latest update) and is
  left out. CoinGecko's OHLC has no volume: bars get volume 0 (unknown, not "no trades"),
  vwap and transactions None.

CoinGecko's plans: keyless public, demo (COINGECKO_API_KEY in x-cg-demo-api-key, on
api.coingecko.com) and paid (x-cg-pro-api-key, on pro-api.coingecko.com: the default root
when CHRONOX_COINGECKO_PLAN=pro). An endpoint the plan does not include answers error code
10005 ("Plan Restricted"); that is PlanRefused, a ProviderError naming the plan, so the
phase can end as a warning (the OHLC range is for paid plans only).

Politeness: one shared budget of CHRONOX_COINGECKO_RATE_LIMIT calls a minute (30, the
keyless rate; every call counts, errors included), a 429 holds every worker for its
Retry-After (a minute if none is sent), and a circuit breaker (chronox.breaker).
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from chronox.bars import Bar, ts_from_ms
from chronox.breaker import CircuitBreaker, Hold, Throttled, get_breaker, get_hold
from chronox.calendar import CRYPTO, market_day_bounds
from chronox.ratelimit import RateLimited, RateLimiter, RequestBudget, window_limiter
from chronox.settings import CoinGeckoPlan, Settings
from chronox.sources import http, shown
from chronox.sources.base import NotInPlan, ProviderError, Snapshot, TransientProviderError

PROVIDER = "coingecko"
PUBLIC_BASE_URL = "https://api.coingecko.com/api/v3"
PRO_BASE_URL = "https://pro-api.coingecko.com/api/v3"
KEY_HEADERS = {CoinGeckoPlan.DEMO: "x-cg-demo-api-key", CoinGeckoPlan.PRO: "x-cg-pro-api-key"}
RATE_WINDOW = 60.0
BUDGET_KEY = "chronox:ratelimit:coingecko"
IDS_PER_REQUEST = 100
# timeframe -> (interval, candles' length in ms, days a request may span)
OHLC_INTERVALS = {"1h": ("hourly", 3_600_000, 31), "1d": ("daily", 86_400_000, 180)}
PLAN_RESTRICTED = 10005
KEY_ERRORS = {10002: "no API key was sent", 10010: "a pro key needs the pro root (pro-api.coingecko.com)",
              10011: "a demo key needs the public root (api.coingecko.com)"}
DEFAULT_HOLD = 60.0  # CoinGecko counts calls per minute


class CoinGeckoError(ProviderError):
    """CoinGecko refused the request or answered nonsense; retrying will not help."""


class TransientCoinGeckoError(TransientProviderError, CoinGeckoError):
    """Worth retrying later (5xx, timeouts, refused connections)."""


class PlanRefused(NotInPlan, CoinGeckoError):
    """The key's plan does not include the endpoint (CoinGecko error 10005)."""


class CallsLimited(RateLimited):
    exhausted = "CoinGecko call budget exhausted (CHRONOX_COINGECKO_RATE_LIMIT)"


def call_limiter(settings: Settings, window: float = RATE_WINDOW) -> RateLimiter | None:
    """This process's view of the shared call budget; None when CoinGecko calls are unlimited."""
    if not settings.coingecko_rate_limit:
        return None
    return window_limiter(settings, settings.coingecko_rate_limit, window, BUDGET_KEY, PROVIDER)


def plan_name(settings: Settings) -> str:
    """The plan calls are made on, as people call it: public (no key), demo or pro."""
    return str(settings.coingecko_plan) if settings.coingecko_api_key else "public (no key)"


def _malformed(what: str, detail: str) -> CoinGeckoError:
    return CoinGeckoError(f"malformed response to {what}: {detail}")


def _number(value: Any, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(what, f"{name} is {shown(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _malformed(what, f"{name} is {shown(value)}, out of range") from None
    if not math.isfinite(number):
        raise _malformed(what, f"{name} is {shown(value)}, out of range")
    return number


def error_status(payload: Any) -> tuple[int | None, str]:
    """CoinGecko's error code and message, from any of its error shapes:
    {"status": {"error_code", "error_message"}}, {"error": {"status": {...}}}, {"error": "..."}."""
    if not isinstance(payload, dict):
        return None, ""
    status = payload.get("status")
    if not isinstance(status, dict) and isinstance(payload.get("error"), dict):
        status = payload["error"].get("status")
    if isinstance(status, dict):
        code = status.get("error_code")
        message = status.get("error_message")
        return (code if isinstance(code, int) and not isinstance(code, bool) else None,
                str(message)[:300] if message is not None else "")
    if "error_code" in payload and isinstance(payload["error_code"], int):
        return payload["error_code"], str(payload.get("message") or payload.get("error") or "")[:300]
    if isinstance(payload.get("error"), str):
        return None, payload["error"][:300]
    return None, ""


class CoinGeckoRest:
    """The Provider backed by CoinGecko; `ids` maps canonical symbols to CoinGecko ids."""

    name = PROVIDER

    def __init__(self, settings: Settings, ids: Mapping[str, str] | None = None, *,
                 limiter: RateLimiter | None = None, breaker: CircuitBreaker | None = None,
                 hold: Hold | None = None, rate_window: float = RATE_WINDOW):
        self._ids = dict(ids or {})
        self._plan = plan_name(settings)
        self._secret = settings.coingecko_api_key
        default = PRO_BASE_URL if settings.coingecko_plan == CoinGeckoPlan.PRO else PUBLIC_BASE_URL
        self._base = (settings.coingecko_base_url or default).rstrip("/")
        self._headers = {"Accept": "application/json"}
        if self._secret:
            self._headers[KEY_HEADERS[settings.coingecko_plan]] = self._secret
        self._timeout = settings.polygon_timeout
        self.budget = RequestBudget(limiter if limiter is not None else call_limiter(settings, rate_window))
        self.breaker = breaker or get_breaker(settings, PROVIDER)
        self.hold = hold or get_hold(settings, PROVIDER, "CoinGecko")

    @property
    def plan(self) -> str:
        return self._plan

    @property
    def base_url(self) -> str:
        return self._base

    def coin_id(self, symbol: str) -> str:
        try:
            return self._ids[symbol]
        except KeyError:
            raise CoinGeckoError(f"no CoinGecko id for {symbol}: register it with --provider-symbol "
                                 "(e.g. bitcoin)") from None

    # -- one request ------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any], what: str) -> Any:
        self.hold.check()
        with self.breaker.call():
            try:
                self.budget.before_request()
            except RateLimited as exc:
                raise CallsLimited(exc.wait) from None
            self.hold.check()
            response = http.get(PROVIDER, f"{self._base}{path}", params, self._headers, self._timeout,
                                self._secret)
            status = response.status_code
            payload = None
            try:
                payload = http.json_body(response, CoinGeckoError, what)
            except CoinGeckoError:
                if status == 200:
                    raise
            code, reason = error_status(payload)
            reason = reason or http.body_text(response)
            if code == PLAN_RESTRICTED:
                raise PlanRefused(f"CoinGecko's {self._plan} plan does not include {path.split('?')[0]} "
                                  f"({what}): error {code}, {reason}", self._plan)
            if status == 200:
                return payload
            message = http.scrub(f"CoinGecko answered {status} ({f'error {code}, ' if code else ''}{reason}) "
                                 f"to {what}", self._secret)
            wait = http.retry_after(response.headers.get("Retry-After"))
            if status == 429:
                wait = wait if wait is not None else DEFAULT_HOLD
                self.hold.set(wait, f"CoinGecko rate limit hit (429: {reason[:120]})")
                raise Throttled(f"{message}; every worker holds off for {wait:.0f}s", retry_after=wait)
            if status == 408 or status >= 500:
                raise TransientCoinGeckoError(message, wait)
            if code in KEY_ERRORS:
                raise CoinGeckoError(f"{message}: {KEY_ERRORS[code]} (COINGECKO_API_KEY, "
                                     "CHRONOX_COINGECKO_PLAN, CHRONOX_COINGECKO_BASE_URL)")
            raise CoinGeckoError(message)

    # -- current state ----------------------------------------------------------------------

    def snapshots(self, symbols: Sequence[str]) -> list[Snapshot]:
        """Prices in each symbol's quote currency, up to IDS_PER_REQUEST coins a request."""
        out: list[Snapshot] = []
        ordered = list(dict.fromkeys(symbols))
        for i in range(0, len(ordered), IDS_PER_REQUEST):
            out.extend(self._prices(ordered[i:i + IDS_PER_REQUEST], "snapshot"))
        return out

    def _prices(self, symbols: Sequence[str], method: str) -> list[Snapshot]:
        if not symbols:
            return []
        pairs = {s: (self.coin_id(s), s.partition("-")[2].lower()) for s in symbols}
        what = f"prices of {len(symbols)} coin(s)"
        payload = self._get("/simple/price", {
            "ids": ",".join(sorted({i for i, _ in pairs.values()})),
            "vs_currencies": ",".join(sorted({vs for _, vs in pairs.values()})),
            "include_24hr_vol": "true", "include_last_updated_at": "true", "precision": "full"}, what)
        if not isinstance(payload, dict):
            raise _malformed(what, "not an object of coins")
        out = []
        for symbol, (coin, vs) in pairs.items():
            entry = payload.get(coin)
            if entry is None:
                continue  # an id CoinGecko does not know: no price
            if not isinstance(entry, dict):
                raise _malformed(what, f"{coin}: {shown(entry)} is not an object")
            if entry.get(vs) is None:
                continue  # no price in that currency
            price = _number(entry[vs], what, f"{coin}.{vs}")
            if price <= 0:
                continue
            stamp = entry.get("last_updated_at")
            if isinstance(stamp, bool) or not isinstance(stamp, int):
                raise _malformed(what, f"{coin}.last_updated_at is {shown(stamp)}, not epoch seconds")
            try:
                ts = ts_from_ms(stamp * 1000)
            except ValueError as exc:
                raise _malformed(what, f"{coin}.last_updated_at: {exc}") from None
            volume = entry.get(f"{vs}_24h_vol")
            out.append(Snapshot(symbol, ts, price, None if volume is None else _number(volume, what, f"{vs}_24h_vol"),
                                None, method))
        return out

    def last_trade(self, symbol: str) -> Snapshot | None:
        found = self._prices([symbol], "rest")
        return found[0] if found else None

    def last_minute_agg(self, symbol: str) -> Snapshot | None:
        found = self._prices([symbol], "agg")
        return found[0] if found else None

    # -- bars -------------------------------------------------------------------------------

    def _ohlc(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]:
        interval, step_ms, span_days = OHLC_INTERVALS[timeframe]
        coin, vs = self.coin_id(symbol), symbol.partition("-")[2].lower()
        start, end = market_day_bounds(CRYPTO, first, last)
        what = f"{interval} OHLC of {symbol} ({coin}) {first}..{last}"
        bars: dict[dt.datetime, Bar] = {}
        chunk = start
        while chunk < end:
            chunk_end = min(end, chunk + dt.timedelta(days=span_days))
            # Candles are stamped with their close: those closing in (chunk, chunk_end].
            rows = self._get(f"/coins/{coin}/ohlc/range", {"vs_currency": vs, "from": int(chunk.timestamp()),
                                                            "to": int(chunk_end.timestamp()), "interval": interval},
                             what)
            if not isinstance(rows, list):
                raise _malformed(what, "not an array of candles")
            for row in rows:
                if not isinstance(row, list) or len(row) != 5:
                    raise _malformed(what, f"candle {shown(row)} is not [time, open, high, low, close]")
                stamp = row[0]
                if isinstance(stamp, bool) or not isinstance(stamp, int):
                    raise _malformed(what, f"candle time {shown(stamp)} is not epoch milliseconds")
                if stamp % step_ms:
                    continue  # still open: stamped with its latest update, not a close
                try:
                    ts = ts_from_ms(stamp - step_ms)
                except ValueError as exc:
                    raise _malformed(what, f"candle time: {exc}") from None
                if not chunk <= ts < chunk_end:
                    continue  # the candle before the range: it closes on its first instant
                o, h, low, c = (_number(row[i], what, name) for i, name in
                                enumerate(("open", "high", "low", "close"), start=1))
                bars[ts] = Bar(symbol, ts, o, h, low, c, 0.0, None, None, "api")
            chunk = chunk_end
        return [bars[ts] for ts in sorted(bars)]

    def minute_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        raise CoinGeckoError("CoinGecko has no minute bars: its api phase fetches 1h or 1d bars")

    def intraday_bars(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]:
        if timeframe != "1h":
            raise CoinGeckoError(f"CoinGecko's OHLC ranges are hourly or daily, not {timeframe!r}")
        return self._ohlc(symbol, "1h", first, last)

    def daily_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        return self._ohlc(symbol, "1d", first, last)

    # -- reference data: nothing to ask -----------------------------------------------------

    def ticker_details(self, symbol: str) -> dict[str, Any]:
        base, _, quote = symbol.partition("-")
        return {"ticker": symbol, "name": f"{base}/{quote}", "market": "crypto", "type": "CRYPTO",
                "primary_exchange": None, "currency_name": quote.lower(), "active": None,
                "provider_symbol": self._ids.get(symbol)}

    def dividends(self, symbol: str) -> list[dict[str, Any]]:
        return []

    def splits(self, symbol: str) -> list[dict[str, Any]]:
        return []
