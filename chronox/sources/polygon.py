"""Polygon REST through polygon-api-client's RESTClient, made fit for retries.

What polygon-api-client 1.16 does not do for us, and this module does:
- Failures come out classified: TransientPolygonError (429, 5xx, timeouts, connection
  errors; carries Retry-After) or PolygonError (other 4xx, malformed answers). The
  client's own urllib3 retries would hide both the status and Retry-After, and it turns
  a malformed body into an empty result, so its pool is replaced and every call is made
  with raw=True and validated here.
- Timeouts apply (the client builds a Timeout but never passes it on).
- Every request, pages included, spends the shared request budget (chronox.ratelimit).
- Timestamps are normalized at this edge: aggregates carry epoch ms, snapshots and
  trades epoch ns; everything leaves as UTC datetimes.
- The API key never appears in an error message: it travels in the Authorization header
  only, `apiKey` is stripped from `next_url`, and messages are scrubbed anyway.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload
from urllib.parse import parse_qsl, urlencode, urlsplit

import urllib3

from chronox import metrics
from chronox.bars import MAX_TRANSACTIONS, UTC, Bar, bar_problem, ts_from_ms, ts_from_ns
from chronox.breaker import CircuitBreaker, Throttled, get_breaker
from chronox.calendar import calendar_for
from chronox.markets import Market, polygon_ticker
from chronox.ratelimit import RateLimiter, RequestBudget
from chronox.settings import Settings
from chronox.sources import http, shown
from chronox.sources.base import ProviderError, Snapshot, TransientProviderError

TRANSIENT_STATUSES = frozenset({408, 425, 429, 499}) | frozenset(range(500, 600))
# timeframe -> (multiplier, timespan) of Polygon's aggregates endpoint
INTRADAY_SPANS = {"1m": (1, "minute"), "5m": (5, "minute"), "15m": (15, "minute"), "1h": (1, "hour")}
AGGS_PAGE_LIMIT = 50_000  # Polygon's maximum; a 7-day window of minute bars fits one page
_API_KEY_PARAM = re.compile(r"(apiKey=)[^&\s'\"]+", re.IGNORECASE)


class PolygonError(ProviderError):
    """Polygon refused the request or answered nonsense; retrying will not help."""


class TransientPolygonError(TransientProviderError, PolygonError):
    """Worth retrying later; retry_after is Polygon's Retry-After in seconds, if it sent one."""


class PolygonThrottled(Throttled, TransientPolygonError):
    """429: Polygon is up and asks us to slow down, which the circuit breaker does not count."""


def scrub(text: str, secret: str | None) -> str:
    """The key hidden, also where a URL carries it as `apiKey=`."""
    return http.scrub(_API_KEY_PARAM.sub(r"\1***", text), secret)


def _reason(body: bytes) -> str:
    try:
        payload = json.loads(body)
        if isinstance(payload, dict):
            text = payload.get("error") or payload.get("message") or payload.get("status")
            if text:
                return str(text)[:300]
    except ValueError:
        pass
    return body[:120].decode("utf-8", "replace").strip() or "empty body"


class _Pool(urllib3.PoolManager):
    """The client's connection pool, with the budget spent and the answer classified per request."""

    def __init__(self, budget: RequestBudget, breaker: CircuitBreaker, secret: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._budget = budget
        self._breaker = breaker
        self._secret = secret

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        with self._breaker.call():
            return self._answer(method, url, redirect, **kw)

    def _answer(self, method: str, url: str, redirect: bool, **kw: Any) -> Any:
        path = urlsplit(url).path
        self._budget.before_request()
        try:
            response = super().urlopen(method, url, redirect=redirect, **kw)
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused and reset connections
            metrics.provider_request("polygon", None)
            raise TransientPolygonError(scrub(f"{path}: {type(exc).__name__}: {exc}", self._secret)) from None
        metrics.provider_request("polygon", response.status)
        if response.status == 200:
            return response
        message = scrub(f"Polygon answered {response.status} ({_reason(response.data)}) for {path}",
                        self._secret)
        retry_after = http.retry_after(response.headers.get("Retry-After"))
        if response.status == 429:
            raise PolygonThrottled(message, retry_after)
        if response.status in TRANSIENT_STATUSES:
            raise TransientPolygonError(message, retry_after)
        raise PolygonError(message)


def _malformed(what: str, detail: str) -> PolygonError:
    return PolygonError(f"malformed response to {what}: {detail}")


@overload
def _number(record: dict[str, Any], key: str, what: str, required: Literal[True] = ...,
            positive: bool = ...) -> float: ...
@overload
def _number(record: dict[str, Any], key: str, what: str, required: bool, positive: bool = ...) -> float | None: ...
def _number(record: dict[str, Any], key: str, what: str, required: bool = True,
            positive: bool = False) -> float | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(what, f"field {key!r} is {shown(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _malformed(what, f"field {key!r} is {shown(value)}, out of range") from None
    if positive and not (math.isfinite(number) and number > 0):
        raise _malformed(what, f"field {key!r} is {shown(value)}, not a positive number")
    return number


@overload
def _int(record: dict[str, Any], key: str, what: str, required: Literal[True] = ...,
         maximum: int | None = ...) -> int: ...
@overload
def _int(record: dict[str, Any], key: str, what: str, required: bool, maximum: int | None = ...) -> int | None: ...
def _int(record: dict[str, Any], key: str, what: str, required: bool = True,
         maximum: int | None = None) -> int | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(what, f"field {key!r} is {shown(value)}, not an integer")
    if maximum is not None and not 0 <= value <= maximum:
        raise _malformed(what, f"field {key!r} is {shown(value)}, not between 0 and {maximum}")
    return value


@overload
def _time(record: dict[str, Any], key: str, what: str, convert: Callable[[int], dt.datetime],
          required: Literal[True] = ...) -> dt.datetime: ...
@overload
def _time(record: dict[str, Any], key: str, what: str, convert: Callable[[int], dt.datetime],
          required: bool) -> dt.datetime | None: ...
def _time(record: dict[str, Any], key: str, what: str, convert: Callable[[int], dt.datetime],
          required: bool = True) -> dt.datetime | None:
    """An epoch field as UTC; a value in another unit or out of range is a malformed answer."""
    value = _int(record, key, what, required)
    if value is None:
        return None
    try:
        return convert(value)
    except ValueError as exc:
        raise _malformed(what, f"field {key!r}: {exc}") from None


def _str(record: dict[str, Any], key: str, what: str, size: int) -> str | None:
    """An optional text field that must fit its column."""
    value = record.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > size):
        raise _malformed(what, f"field {key!r} is {shown(value)}, not text of at most {size} characters")
    return value


# What tells two corporate actions apart when Polygon sends no `id` (older API versions and
# its documented examples until 2024): the fields ChronoX stores.
DIVIDEND_IDENTITY = ("symbol", "ex_dividend_date", "record_date", "pay_date", "declaration_date",
                     "cash_amount", "currency", "frequency", "dividend_type")
SPLIT_IDENTITY = ("symbol", "execution_date", "split_from", "split_to")


def derived_id(kind: str, row: dict[str, Any], identity: Sequence[str]) -> str:
    """A stable id from a parsed record's identifying fields: a rerun upserts the same row.
    The prefix keeps it apart from Polygon's ids (a letter and 64 hex digits)."""
    parts = [kind] + ["" if row[k] is None else row[k].isoformat() if isinstance(row[k], dt.date)
                      else repr(row[k]) for k in identity]
    return f"chronox-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:40]}"


def _with_id(record: dict[str, Any], row: dict[str, Any], kind: str, identity: Sequence[str],
             what: str) -> dict[str, Any]:
    """`row` with Polygon's id, or one derived from `identity` when the record has none."""
    value = record.get("id")
    if value is None:
        return {"id": derived_id(kind, row, identity), **row}
    if not isinstance(value, str) or not value or len(value) > 100:
        raise _malformed(what, f"record with an unusable id: {str(record)[:80]}")
    return {"id": value, **row}


@overload
def _date(record: dict[str, Any], key: str, what: str, required: Literal[True] = ...) -> dt.date: ...
@overload
def _date(record: dict[str, Any], key: str, what: str, required: bool) -> dt.date | None: ...
def _date(record: dict[str, Any], key: str, what: str, required: bool = True) -> dt.date | None:
    value = record.get(key)
    if value is None and not required:
        return None
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise _malformed(what, f"field {key!r} is {shown(value)}, not a date") from None


def agg_bar(symbol: str, record: Any, source: str, what: str) -> Bar:
    """A bar from an aggregate record (epoch ms window start)."""
    if not isinstance(record, dict):
        raise _malformed(what, f"result {shown(record)} is not an object")
    return Bar(symbol, _time(record, "t", what, ts_from_ms), _number(record, "o", what),
               _number(record, "h", what), _number(record, "l", what), _number(record, "c", what),
               _number(record, "v", what), _number(record, "vw", what, required=False),
               _int(record, "n", what, required=False), source)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


class PolygonRest:
    """The Provider backed by api.polygon.io (or CHRONOX_POLYGON_BASE_URL)."""

    name = "polygon"

    def __init__(self, settings: Settings, limiter: RateLimiter | None = None,
                 page_limit: int = AGGS_PAGE_LIMIT, market: str = "stocks"):
        """`market`: whose tickers the canonical symbols are (crypto `BTC-USD` is `X:BTCUSD`
        here); bars and snapshots come back under the canonical symbol."""
        from polygon import RESTClient

        if not settings.polygon_api_key:
            raise PolygonError("POLYGON_API_KEY is not set")
        import certifi

        self._secret = settings.polygon_api_key
        self.market = Market(market)
        self._calendar = calendar_for(market)
        self._page_limit = page_limit
        self._base = settings.polygon_base_url.rstrip("/")
        self._client = RESTClient(self._secret, base=self._base, retries=0, pagination=False)
        self.budget = RequestBudget(limiter)
        self._pool = _Pool(self.budget, get_breaker(settings, "polygon"), self._secret, num_pools=4,
                           headers=self._client.headers, ca_certs=certifi.where(), cert_reqs="CERT_REQUIRED",
                           retries=False,
                           timeout=urllib3.Timeout(connect=min(10.0, settings.polygon_timeout),
                                                   read=settings.polygon_timeout))
        self._client.client = self._pool

    def _json(self, response: Any, what: str) -> dict[str, Any]:
        try:
            # NaN and Infinity are not JSON; Python's parser would let them through as floats.
            payload = http.strict_json(response.data)
        except ValueError as exc:
            raise _malformed(what, f"not JSON ({exc})") from None
        except RecursionError:
            raise _malformed(what, "not JSON (nested too deeply)") from None
        if not isinstance(payload, dict):
            raise _malformed(what, "not a JSON object")
        if payload.get("status") not in ("OK", "DELAYED"):
            raise _malformed(what, f"status {payload.get('status')!r}")
        return payload

    def _pages(self, response: Any, what: str) -> Iterator[dict[str, Any]]:
        page = self._json(response, what)
        yield page
        while page.get("next_url"):
            next_url = page["next_url"]
            if not isinstance(next_url, str):
                raise _malformed(what, f"next_url is {next_url!r}")
            parts = urlsplit(next_url)
            # The key travels in the Authorization header; a copy in the URL would leak into logs.
            query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "apikey"])
            page = self._json(self._pool.request("GET", f"{self._base}{parts.path}"
                                                 f"{'?' + query if query else ''}"), what)
            yield page

    def _aggs(self, symbol: str, timespan: str, start: Any, end: Any, what: str,
              window: tuple[dt.datetime, dt.datetime], limit: int | None = None, sort: str = "asc",
              follow: bool = True, multiplier: int = 1) -> list[Bar]:
        """Aggregates whose window start lies in [window[0], window[1]); any other is malformed:
        a timestamp in the wrong unit would otherwise land on another day and be dropped there."""
        # Flat files are unadjusted; REST bars must be too, or a split would show as a jump.
        response = self._client.get_aggs(self._ticker(symbol), multiplier, timespan, start, end, adjusted=False,
                                         sort=sort,
                                         limit=limit or self._page_limit, raw=True)
        bars: list[Bar] = []
        for page in self._pages(response, what):
            count = page.get("resultsCount")
            results = page.get("results", [])
            if isinstance(count, bool) or not isinstance(count, int) or count < 0 \
                    or not isinstance(results, list) or len(results) != count:
                raise _malformed(what, f"resultsCount {count!r} does not match the results")
            for record in results:
                bar = agg_bar(symbol, record, "api", what)
                if not window[0] <= bar.ts < window[1]:
                    raise _malformed(what, f"bar at {bar.ts.isoformat()} is outside the requested "
                                           f"{window[0].isoformat()}..{window[1].isoformat()}")
                bars.append(bar)
            if not follow:
                break
        return bars

    def _ticker(self, symbol: str) -> str:
        return polygon_ticker(symbol, self.market)

    def _days(self, first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) of the market's days first..last (New York days, or UTC days for crypto)."""
        return self._calendar.day_bounds(first)[0], self._calendar.day_bounds(last)[1]

    def minute_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        return self.intraday_bars(symbol, "1m", first, last)

    def intraday_bars(self, symbol: str, timeframe: str, first: dt.date, last: dt.date) -> list[Bar]:
        """Aggregates of 1m, 5m, 15m or 1h (window start, UTC) on the market's days first..last."""
        multiplier, timespan = INTRADAY_SPANS[timeframe]
        start, end = self._days(first, last)
        # Epoch ms bounds: exactly the market's days, whatever Polygon makes of a bare date.
        return self._aggs(symbol, timespan, _ms(start), _ms(end) - 1,
                          f"{'minute' if timeframe == '1m' else timeframe} aggregates of {symbol} {first}..{last}",
                          (start, end), multiplier=multiplier)

    def daily_bars(self, symbol: str, first: dt.date, last: dt.date) -> list[Bar]:
        return self._aggs(symbol, "day", first.isoformat(), last.isoformat(),
                          f"daily aggregates of {symbol} {first}..{last}",
                          # A day of slack: Polygon stamps daily bars at New York midnight, but
                          # only a unit or range mistake is worth failing the answer for.
                          (self._days(first, last)[0] - dt.timedelta(days=1),
                           self._days(first, last)[1] + dt.timedelta(days=1)))

    def last_minute_agg(self, symbol: str, now: dt.datetime | None = None) -> Snapshot | None:
        now = now or dt.datetime.now(UTC)
        what = f"latest minute aggregate of {symbol}"
        since = now - dt.timedelta(days=7)
        bars = self._aggs(symbol, "minute", _ms(since), _ms(now), what,
                          (since.replace(microsecond=0), now + dt.timedelta(milliseconds=1)),
                          limit=1, sort="desc", follow=False)
        if not bars:
            return None
        bar = bars[0]
        problem = bar_problem(bar)
        if problem:
            raise _malformed(what, problem)
        return Snapshot(symbol, bar.ts, bar.close, bar.volume, None, "agg")

    def ticker_details(self, symbol: str) -> dict[str, Any]:
        what = f"ticker details of {symbol}"
        results = self._json(self._client.get_ticker_details(self._ticker(symbol), raw=True), what).get("results")
        if not isinstance(results, dict) or not isinstance(results.get("ticker"), str):
            raise _malformed(what, "no results object with a ticker")
        return results

    def _reference(self, endpoint: Callable[..., Any], symbol: str, what: str) -> Iterator[dict[str, Any]]:
        """Every record of a paginated reference endpoint (dividends, splits) for one ticker."""
        response = endpoint(ticker=self._ticker(symbol), limit=min(self._page_limit, 1000), raw=True)
        for page in self._pages(response, what):
            results = page.get("results")
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise _malformed(what, "results is not a list of objects")
            yield from results

    def dividends(self, symbol: str) -> list[dict[str, Any]]:
        what = f"dividends of {symbol}"
        return [_with_id(r, {
            "symbol": symbol,
            "ex_dividend_date": _date(r, "ex_dividend_date", what),
            "record_date": _date(r, "record_date", what, required=False),
            "pay_date": _date(r, "pay_date", what, required=False),
            "declaration_date": _date(r, "declaration_date", what, required=False),
            "cash_amount": _number(r, "cash_amount", what),
            "currency": _str(r, "currency", what, 8),
            "frequency": _int(r, "frequency", what, required=False, maximum=MAX_TRANSACTIONS),
            "dividend_type": _str(r, "dividend_type", what, 8),
        }, "dividend", DIVIDEND_IDENTITY, what) for r in self._reference(self._client.list_dividends, symbol, what)]

    def splits(self, symbol: str) -> list[dict[str, Any]]:
        what = f"splits of {symbol}"
        return [_with_id(r, {
            "symbol": symbol,
            "execution_date": _date(r, "execution_date", what),
            "split_from": _number(r, "split_from", what, positive=True),
            "split_to": _number(r, "split_to", what, positive=True),
        }, "split", SPLIT_IDENTITY, what) for r in self._reference(self._client.list_splits, symbol, what)]

    def ticks(self, dataset: str, symbol: str, start_ns: int, end_ns: int) -> Iterator[list[dict[str, Any]]]:
        """Pages of /v3/trades/{ticker} (`dataset` trades) or /v3/quotes/{ticker} (quotes):
        records whose SIP timestamp (epoch ns) lies in [start_ns, end_ns), oldest first, up to
        50,000 a page, following the cursor of `next_url`. The records are Polygon's; whether
        each is a usable tick is chronox.ticks' to say (it quarantines the others)."""
        what = f"{dataset} of {symbol} from {start_ns} to {end_ns} (epoch ns)"
        endpoint = self._client.list_trades if dataset == "trades" else self._client.list_quotes
        response = endpoint(self._ticker(symbol), timestamp_gte=start_ns, timestamp_lt=end_ns,
                            limit=self._page_limit, sort="timestamp", order="asc", raw=True)
        for page in self._pages(response, what):
            results = page.get("results", [])
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise _malformed(what, "results is not a list of objects")
            yield results

    def snapshots(self, symbols: Sequence[str]) -> list[Snapshot]:
        what = f"snapshot of {len(symbols)} ticker(s)"
        canonical = {self._ticker(s): s for s in symbols}
        payload = self._json(self._client.get_snapshot_all(self.market.value, tickers=list(canonical), raw=True),
                             what)
        tickers = payload.get("tickers")
        if not isinstance(tickers, list):
            raise _malformed(what, "no tickers list")
        out = []
        for record in tickers:
            snap = _ticker_snapshot(record, what)
            # A ticker nobody asked for is not ours to store (and may not fit the symbol column).
            if snap is not None and snap.symbol in canonical:
                out.append(dataclasses.replace(snap, symbol=canonical[snap.symbol]))
        return out

    def last_trade(self, symbol: str) -> Snapshot | None:
        what = f"last trade of {symbol}"
        if self.market == Market.CRYPTO:
            return self._last_crypto_trade(symbol, what)
        results = self._json(self._client.get_last_trade(symbol, raw=True), what).get("results")
        if not isinstance(results, dict):
            raise _malformed(what, "no results object")
        return Snapshot(symbol, _time(results, "t", what, ts_from_ns), _number(results, "p", what, positive=True),
                        _number(results, "s", what, required=False), None, "rest")


    def _last_crypto_trade(self, symbol: str, what: str) -> Snapshot | None:
        """/v1/last/crypto/{from}/{to}: its status is "success" and the trade is under `last`
        with a millisecond `timestamp`."""
        base, _, quote = symbol.partition("-")
        try:
            payload = http.strict_json(self._client.get_last_crypto_trade(base, quote, raw=True).data)
        except ValueError as exc:
            raise _malformed(what, f"not JSON ({exc})") from None
        last = payload.get("last") if isinstance(payload, dict) else None
        if not isinstance(last, dict):
            raise _malformed(what, "no last object")
        return Snapshot(symbol, _time(last, "timestamp", what, ts_from_ms), _number(last, "price", what, positive=True),
                        _number(last, "size", what, required=False), None, "rest")


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _ticker_snapshot(record: Any, what: str) -> Snapshot | None:
    """One entry of the all-tickers snapshot; None when it carries no price yet (pre-market)."""
    if not isinstance(record, dict) or not isinstance(record.get("ticker"), str):
        raise _malformed(what, f"entry {shown(record)} has no ticker")
    sections = {}
    for key in ("lastTrade", "min", "day", "prevDay"):
        section = record.get(key) or {}
        if not isinstance(section, dict):
            raise _malformed(what, f"{record['ticker']}: {key} is not an object")
        sections[key] = section
    trade, minute, day = sections["lastTrade"], sections["min"], sections["day"]
    price = (_positive(_number(trade, "p", what, required=False))
             or _positive(_number(minute, "c", what, required=False))
             or _positive(_number(day, "c", what, required=False)))
    if price is None:
        return None
    ts = None
    if _int(record, "updated", what, required=False):
        ts = _time(record, "updated", what, ts_from_ns)
    elif _int(trade, "t", what, required=False):
        ts = _time(trade, "t", what, ts_from_ns)
    elif _int(minute, "t", what, required=False):
        ts = _time(minute, "t", what, ts_from_ms)
    if ts is None:
        return None
    return Snapshot(record["ticker"], ts, price, _number(day, "v", what, required=False),
                    _positive(_number(sections["prevDay"], "c", what, required=False)), "snapshot")
