"""Local stand-in for the Polygon.io REST API (api.polygon.io).

Speaks the real wire format closely enough that ``polygon.RESTClient(key,
base=fake.base_url)`` and plain HTTP clients work unchanged, so tests exercise
the real client's paging, auth and retry behaviour rather than a mock of it.

How polygon-api-client 1.16 reacts to each answer (it has urllib3 retries
built in: ``Retry(total=retries, status_forcelist=[413, 429, 499, 500, 502,
503, 504], backoff_factor=0.1)``, honouring ``Retry-After`` on 413/429/503):

* "429", "500", "502", "503": urllib3 retries them itself; once ``retries``
  is exhausted (immediately with ``RESTClient(..., retries=0)``) the call
  raises ``urllib3.exceptions.MaxRetryError`` whose ``.reason`` is a
  ``urllib3.exceptions.ResponseError`` ("too many 429 error responses").
  It never raises ``BadResponse`` for these codes.
* 401 (bad/missing key), 404 (unknown ticker/route), 400 (bad from/to):
  ``polygon.exceptions.BadResponse`` whose message is the JSON body.
* "slow": a normal answer, late, and no exception: 1.16 builds a
  ``urllib3.Timeout`` from ``connect_timeout``/``read_timeout`` but never
  passes it to the pool or the request, so the call simply blocks for
  ``delay``.  Callers needing a deadline must enforce it themselves.
* "malformed" and "garbage_json": no exception at all.  ``get_*`` calls
  return ``[]`` and ``list_*`` iterators end silently, because the client
  swallows JSON errors and missing result keys.  Callers must detect
  "suspiciously empty" themselves.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import random
import re
import time
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from chronox.testing.servers import Fault, FaultQueue, HTTPStandIn, StandInHandler

FAULT_KINDS = ("429", "500", "502", "503", "slow", "malformed", "garbage_json")

_DAY_MS = 86_400_000
_TIMESPAN_MS = {"minute": 60_000, "hour": 3_600_000, "day": _DAY_MS, "week": 7 * _DAY_MS}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Params that steer paging rather than filter records.
_PAGING_PARAMS = {"limit", "sort", "order", "cursor", "apiKey", "offset"}

# The example result of GET /v2/reference/news in Polygon's REST specification (ListNews,
# the 200 response's example), verbatim: what a news article looks like on the wire.
NEWS_EXAMPLE: dict[str, Any] = {
    "amp_url": "https://m.uk.investing.com/news/stock-market-news/markets-are-underestimating-fed-cuts-ubs-3559968"
               "?ampMode=1",
    "article_url": "https://uk.investing.com/news/stock-market-news/markets-are-underestimating-fed-cuts-ubs-3559968",
    "author": "Sam Boughedda",
    "description": "UBS analysts warn that markets are underestimating the extent of future interest rate cuts by the"
                   " Federal Reserve, as the weakening economy is likely to justify more cuts than currently"
                   " anticipated.",
    "id": "8ec638777ca03b553ae516761c2a22ba2fdd2f37befae3ab6fdab74e9e5193eb",
    "image_url": "https://i-invdn-com.investing.com/news/LYNXNPEC4I0AL_L.jpg",
    "insights": [{
        "sentiment": "positive",
        "sentiment_reasoning": "UBS analysts are providing a bullish outlook on the extent of future Federal Reserve"
                               " rate cuts, suggesting that markets are underestimating the number of cuts that will"
                               " occur.",
        "ticker": "UBS",
    }],
    "keywords": ["Federal Reserve", "interest rates", "economic data"],
    "published_utc": "2024-06-24T18:33:53Z",
    "publisher": {
        "favicon_url": "https://s3.polygon.io/public/assets/news/favicons/investing.ico",
        "homepage_url": "https://www.investing.com/",
        "logo_url": "https://s3.polygon.io/public/assets/news/logos/investing.png",
        "name": "Investing.com",
    },
    "tickers": ["UBS"],
    "title": "Markets are underestimating Fed cuts: UBS By Investing.com - Investing.com UK",
}


@dataclass
class RequestRecord:
    time: float  # time.monotonic() at arrival
    method: str
    path: str
    query: dict[str, str]  # apiKey value redacted
    status: int | None  # None while the answer is still being produced
    has_auth: bool  # Authorization header present; its value is never kept
    fault: str | None = None


class _ApiError(Exception):
    def __init__(self, status: int, payload: dict[str, Any]):
        super().__init__(status)
        self.status = status
        self.payload = payload


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _parse_bound(value: str, end: bool) -> int:
    if _DATE_RE.match(value):
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        start_ms = int(day.timestamp() * 1000)
        return start_ms + _DAY_MS - 1 if end else start_ms
    if value.isdigit():
        return int(value)
    raise _ApiError(400, {"status": "ERROR", "error": f"Could not parse date '{value}'"})


def _encode_cursor(params: dict[str, Any]) -> str:
    # Polygon's cursors are base64 of a query string; mimic that so the
    # next_url is opaque to clients, as with the real API.
    return base64.urlsafe_b64encode(urlencode(params).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, str]:
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        return dict(parse_qsl(base64.urlsafe_b64decode(padded).decode()))
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(400, {"status": "ERROR", "error": "Invalid cursor"}) from None


def _int_param(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, {"status": "ERROR", "error": f"Invalid {name}"}) from None
    return max(1, min(value, maximum))


def _ns_param(value: str) -> int:
    if not value.isdigit():
        raise _ApiError(400, {"status": "ERROR", "error": f"Could not parse timestamp '{value}'"})
    return int(value)


def _merge_bars(bars: list[dict[str, Any]], start: int) -> dict[str, Any]:
    volume = sum(b.get("v", 0) for b in bars)
    vw_num = sum(b.get("vw", b.get("c", 0)) * b.get("v", 0) for b in bars)
    highs: list[Any] = [b.get("h", b.get("c")) for b in bars]
    lows: list[Any] = [b.get("l", b.get("c")) for b in bars]
    return {
        "v": volume,
        "vw": round(vw_num / volume, 4) if volume else bars[-1].get("c"),
        "o": bars[0].get("o"),
        "c": bars[-1].get("c"),
        "h": max(highs),
        "l": min(lows),
        "t": start,
        "n": sum(b.get("n", 0) for b in bars),
    }


def _bucket(bars: list[dict[str, Any]], size_ms: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    group_start = 0  # compared only once `group` holds a bar
    for bar in bars:
        start = bar["t"] - bar["t"] % size_ms
        if start != group_start and group:
            out.append(_merge_bars(group, group_start))
            group = []
        group_start = start
        group.append(bar)
    if group:
        out.append(_merge_bars(group, group_start))
    return out


def _matches(record: dict[str, Any], key: str, value: str) -> bool:
    field, _, op = key.partition(".")
    if field not in record:
        return True  # unknown filters are ignored, like the real API
    actual = record[field]
    if op == "any_of":
        return str(actual) in value.split(",")
    try:
        left: Any = float(actual)
        right: Any = float(value)
    except (TypeError, ValueError):
        left, right = str(actual), value
    if isinstance(actual, bool):
        left, right = str(actual).lower(), value.lower()
    return {
        "": left == right,
        "gt": left > right,
        "gte": left >= right,
        "lt": left < right,
        "lte": left <= right,
    }.get(op, True)


class _Handler(StandInHandler):
    # Other methods reach the fake too, which answers them 405 as the real API does.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = StandInHandler.do_GET


class FakePolygonRest(HTTPStandIn[RequestRecord]):
    """In-memory Polygon REST API served on 127.0.0.1 from a daemon thread."""

    handler_class = _Handler

    def __init__(self, api_key: str = "test-key", host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.api_key = api_key
        self._minute: dict[str, list[dict[str, Any]]] = {}
        self._daily: dict[str, list[dict[str, Any]]] = {}
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._details: dict[str, dict[str, Any]] = {}
        self._dividends: list[dict[str, Any]] = []
        self._splits: list[dict[str, Any]] = []
        self._news: list[dict[str, Any]] = []  # ticker news articles, as served
        self._ticks: dict[str, dict[str, list[dict[str, Any]]]] = {"trades": {}, "quotes": {}}  # v3 records
        # Answers served as given (e.g. Polygon's documented examples), not derived from bars.
        self._snapshot_records: dict[str, dict[str, Any]] = {}
        self._last_trade_records: dict[str, dict[str, Any]] = {}
        self._faults = FaultQueue(FAULT_KINDS)
        self._ratio = 0.0
        self._ratio_kinds: tuple[str, ...] = ()
        self._ratio_retry_after: float | None = None
        self._rng = random.Random(0)
        self._id_counter = 0
        self.base_url = self._origin

    # -- data ------------------------------------------------------------

    def add_minute_bars(self, ticker: str, bars: Iterable[dict[str, Any]]) -> None:
        self._add_bars(self._minute, ticker, bars)

    def add_daily_bars(self, ticker: str, bars: Iterable[dict[str, Any]]) -> None:
        self._add_bars(self._daily, ticker, bars)

    def _add_bars(
        self, store: dict[str, list[dict[str, Any]]], ticker: str, bars: Iterable[dict[str, Any]]
    ) -> None:
        with self._lock:
            # Later bars replace earlier ones with the same start, as a
            # re-publish by the vendor would.
            by_t = {b["t"]: b for b in store.get(ticker, [])}
            by_t.update({int(b["t"]): dict(b) for b in bars})
            store[ticker] = [by_t[t] for t in sorted(by_t)]

    def set_snapshot(
        self,
        ticker: str,
        price: float,
        volume: float,
        updated_ns: int,
        prev_close: float | None = None,
    ) -> None:
        """Pin the snapshot (and last trade) for ``ticker``; otherwise both are
        derived from the latest minute bar."""
        with self._lock:
            self._snapshots[ticker] = {
                "price": price,
                "volume": volume,
                "updated_ns": int(updated_ns),
                "prev_close": prev_close,
            }

    def set_ticker_details(self, ticker: str, details: dict[str, Any]) -> None:
        base = {
            "ticker": ticker,
            "name": f"{ticker} Inc.",
            "market": "stocks",
            "locale": "us",
            "primary_exchange": "XNAS",
            "type": "CS",
            "active": True,
            "currency_name": "usd",
        }
        with self._lock:
            self._details[ticker] = {**base, **details}

    def add_dividends(self, ticker: str, dividends: Iterable[dict[str, Any]], assign_ids: bool = True) -> None:
        """assign_ids=False serves records without an `id`, as older API versions (and
        Polygon's documented examples until 2024) did."""
        self._add_reference(self._dividends, ticker, dividends, "E", assign_ids)

    def add_splits(self, ticker: str, splits: Iterable[dict[str, Any]], assign_ids: bool = True) -> None:
        self._add_reference(self._splits, ticker, splits, "P", assign_ids)

    def add_trades(self, ticker: str, records: Iterable[dict[str, Any]]) -> None:
        """Records for /v3/trades/{ticker}, each shaped as polygon_tick_examples.TRADES's results."""
        self._add_ticks("trades", ticker, records)

    def add_quotes(self, ticker: str, records: Iterable[dict[str, Any]]) -> None:
        """Records for /v3/quotes/{ticker}, each shaped as polygon_tick_examples.QUOTES's results."""
        self._add_ticks("quotes", ticker, records)

    def _add_ticks(self, kind: str, ticker: str, records: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._ticks[kind].setdefault(ticker, []).extend(dict(r) for r in records)

    def add_news(self, articles: Iterable[dict[str, Any]]) -> None:
        """Articles for /v2/reference/news, each in the shape of NEWS_EXAMPLE; an article
        with the id of one already served replaces it."""
        with self._lock:
            by_id = {a["id"]: a for a in self._news}
            by_id.update({a["id"]: dict(a) for a in articles})
            self._news = list(by_id.values())

    def _add_reference(
        self,
        store: list[dict[str, Any]],
        ticker: str,
        records: Iterable[dict[str, Any]],
        id_prefix: str,
        assign_ids: bool = True,
    ) -> None:
        with self._lock:
            for record in records:
                self._id_counter += 1
                item = {"ticker": ticker, **record}
                if assign_ids:
                    item.setdefault("id", f"{id_prefix}{self._id_counter:063x}")
                store.append(item)

    def set_snapshot_record(self, record: dict[str, Any]) -> None:
        """Serve `record` verbatim as its ticker's entry in the snapshot answers."""
        with self._lock:
            self._snapshot_records[record["ticker"]] = dict(record)

    def set_last_trade_record(self, ticker: str, results: dict[str, Any]) -> None:
        """Serve `results` verbatim as the last trade of `ticker`."""
        with self._lock:
            self._last_trade_records[ticker] = dict(results)

    # -- faults ----------------------------------------------------------

    def inject(
        self,
        path_prefix: str | None,
        kind: str,
        count: int = 1,
        retry_after: float | None = None,
        delay: float | None = None,
        body: bytes | str | None = None,
    ) -> None:
        """Queue ``count`` faults for the next requests whose path starts with
        ``path_prefix`` (None = any).  ``delay`` applies to any kind ("slow"
        defaults to 1 s); ``body`` overrides the canned body of the fault.
        ``Retry-After`` is sent in whole seconds, rounded up, because urllib3
        rejects fractional values."""
        if kind == "slow" and delay is None:
            delay = 1.0
        raw = body.encode() if isinstance(body, str) else body
        self._faults.add(Fault(kind, count, retry_after, path_prefix, delay, raw))

    def fail_ratio(
        self,
        ratio: float,
        kinds: Iterable[str] = ("429", "500"),
        seed: int = 0,
        retry_after: float | None = None,
    ) -> None:
        """Answer roughly ``ratio`` of the requests not hit by a queued fault
        with one of ``kinds``; the same seed gives the same sequence."""
        kinds = tuple(kinds)
        for kind in kinds:
            if kind not in FAULT_KINDS or kind == "slow":
                raise ValueError(f"unsupported fault kind for fail_ratio: {kind!r}")
        with self._lock:
            self._ratio = ratio
            self._ratio_kinds = kinds
            self._ratio_retry_after = retry_after
            self._rng = random.Random(seed)

    def clear_faults(self) -> None:
        self._faults.clear()
        with self._lock:
            self._ratio = 0.0

    def _take_fault(self, path: str) -> Fault | None:
        fault = self._faults.take(path)
        if fault is not None:
            return fault
        with self._lock:
            if self._ratio > 0 and self._rng.random() < self._ratio:
                return Fault(self._rng.choice(self._ratio_kinds), 1, self._ratio_retry_after)
        return None

    # -- request log -----------------------------------------------------

    def count_requests(self, path_prefix: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path_prefix is None or r.path.startswith(path_prefix))

    def max_requests_in_window(self, window_seconds: float, path_prefix: str | None = None) -> int:
        """Largest number of request arrivals inside any half-open window
        [t, t + window_seconds)."""
        with self._lock:
            times = sorted(
                r.time for r in self.requests if path_prefix is None or r.path.startswith(path_prefix)
            )
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # -- HTTP ------------------------------------------------------------

    def _handle(self, req: StandInHandler) -> None:
        parts = urlsplit(req.path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        record = RequestRecord(
            time=time.monotonic(),
            method=req.command,
            path=path,
            query={k: ("<redacted>" if k == "apiKey" else v) for k, v in query.items()},
            status=None,
            has_auth="Authorization" in req.headers,
        )
        with self._lock:
            self.requests.append(record)

        fault = self._take_fault(path)
        if fault is not None:
            record.fault = fault.kind
            if fault.delay:
                time.sleep(fault.delay)
            if fault.kind != "slow":
                status, body, content_type, headers = self._fault_response(fault)
                # Logged before answering so a caller sees it once its call returns.
                record.status = status
                req.send_body(status, body, content_type, headers)
                return

        request_id = _new_request_id()
        try:
            if req.command != "GET":
                raise _ApiError(405, {"status": "ERROR", "error": "Method not allowed"})
            self._authenticate(req, query)
            payload = self._route(path, query)
            status = 200
        except _ApiError as err:
            payload, status = err.payload, err.status
        except Exception as err:  # a stub bug should fail the test loudly, not hang it
            traceback.print_exc()
            payload, status = {"status": "ERROR", "error": f"stub error: {err!r}"}, 500
        payload = {**payload, "request_id": request_id}
        record.status = status
        req.send_json(status, payload)

    def _authenticate(self, req: StandInHandler, query: dict[str, str]) -> None:
        header = req.headers.get("Authorization")
        if header is None and "apiKey" not in query:
            raise _ApiError(401, {"status": "ERROR", "error": "API Key was not provided"})
        key = header[len("Bearer "):] if header and header.startswith("Bearer ") else query.get("apiKey")
        if key != self.api_key:
            raise _ApiError(401, {"status": "ERROR", "error": "Unknown API Key"})

    def _fault_response(self, fault: Fault) -> tuple[int, bytes, str, dict[str, str]]:
        headers: dict[str, str] = {}
        content_type = "application/json"
        if fault.kind == "429":
            status = 429
            body = json.dumps({
                "status": "ERROR",
                "request_id": _new_request_id(),
                "error": "You've exceeded the maximum requests per minute, please wait or upgrade"
                " your subscription to continue. https://polygon.io/pricing",
            }).encode()
            if fault.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(fault.retry_after))
        elif fault.kind == "500":
            status = 500
            body = json.dumps(
                {"status": "ERROR", "request_id": _new_request_id(), "error": "Internal server error"}
            ).encode()
        elif fault.kind in ("502", "503"):
            # Gateways in front of the API answer with HTML, not JSON.
            status = int(fault.kind)
            reason = "Bad Gateway" if status == 502 else "Service Temporarily Unavailable"
            body = (
                f"<html><head><title>{status} {reason}</title></head>"
                f"<body><center><h1>{status} {reason}</h1></center></body></html>"
            ).encode()
            content_type = "text/html"
            if status == 503 and fault.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(fault.retry_after))
        elif fault.kind == "malformed":
            status = 200
            body = b'{"status":"OK","results":[{"v":1234,"o":'  # cut mid-stream
        else:  # garbage_json: parses, but has no result keys and odd types
            status = 200
            body = json.dumps({
                "status": "OK",
                "request_id": _new_request_id(),
                "queryCount": None,
                "resultsCount": "three",
                "adjusted": "maybe",
                "count": -1,
            }).encode()
        if fault.body is not None:
            body = fault.body
        return status, body, content_type, headers

    def _route(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        segs = path.strip("/").split("/")
        if len(segs) == 9 and segs[:3] == ["v2", "aggs", "ticker"] and segs[4] == "range":
            return self._aggs(segs[3], segs[5], segs[6], segs[7], segs[8], path, query)
        stocks_snapshot = ["v2", "snapshot", "locale", "us", "markets", "stocks", "tickers"]
        if segs[:7] == stocks_snapshot and len(segs) in (7, 8):
            if len(segs) == 8:
                snap = self._snapshot(segs[7])
                if snap is None:
                    raise _ApiError(404, {"status": "NOT_FOUND", "message": "Ticker not found."})
                return {"status": "OK", "ticker": snap}
            return self._snapshot_all(query)
        if len(segs) == 4 and segs[:3] == ["v2", "last", "trade"]:
            return self._last_trade(segs[3])
        if len(segs) == 4 and segs[:3] == ["v3", "reference", "tickers"]:
            with self._lock:
                details = self._details.get(segs[3])
            if details is None:
                raise _ApiError(404, {"status": "NOT_FOUND", "message": "Ticker not found."})
            return {"status": "OK", "results": dict(details)}
        if path.rstrip("/") == "/v3/reference/dividends":
            return self._reference(self._dividends, path, query)
        if path.rstrip("/") == "/v3/reference/splits":
            return self._reference(self._splits, path, query)
        if path.rstrip("/") == "/v2/reference/news":
            return self._news_page(path, query)
        if len(segs) == 3 and segs[0] == "v3" and segs[1] in ("trades", "quotes"):
            return self._ticks_page(segs[1], segs[2], path, query)
        raise _ApiError(404, {"status": "NOT_FOUND", "message": "Not found"})

    def _page(self, matched: list[dict[str, Any]], path: str, query: dict[str, str], offset: int,
              limit: int) -> dict[str, Any]:
        """One page of cursor paging: `next_url` carries the query and the next offset."""
        response: dict[str, Any] = {"status": "OK", "results": matched[offset:offset + limit]}
        if offset + limit < len(matched):
            state = {k: v for k, v in query.items() if k not in ("cursor", "apiKey")}
            state.update(limit=str(limit), offset=str(offset + limit))
            response["next_url"] = f"{self.base_url}{path}?cursor={_encode_cursor(state)}"
        return response

    def _ticks_page(self, kind: str, ticker: str, path: str, query: dict[str, str]) -> dict[str, Any]:
        """/v3/trades/{ticker} and /v3/quotes/{ticker}: records filtered on sip_timestamp by
        `timestamp` and timestamp.gt/.gte/.lt/.lte (epoch nanoseconds, or a date: its UTC day),
        sorted by it, `order` desc by default; `limit` 1-50,000 (default 1000); cursor paging."""
        if "cursor" in query:
            query = _decode_cursor(query["cursor"])
        limit = _int_param(query, "limit", 1000, 50_000)
        offset = int(query["offset"]) if query.get("offset", "").isdigit() else 0
        checks = {"": lambda a, lo, hi: lo <= a <= hi, ".gt": lambda a, lo, hi: a > hi,
                  ".gte": lambda a, lo, hi: a >= lo, ".lt": lambda a, lo, hi: a < lo,
                  ".lte": lambda a, lo, hi: a <= hi}
        bounds = []
        for suffix, check in checks.items():
            value = query.get(f"timestamp{suffix}")
            if value is not None:
                # A date stands for its day: [first ns, last ns]; a number for itself.
                lo, hi = ((_parse_bound(value, False) * 1_000_000, _parse_bound(value, True) * 1_000_000 + 999_999)
                          if _DATE_RE.match(value) else (_ns_param(value),) * 2)
                bounds.append((check, lo, hi))
        with self._lock:
            records = [dict(r) for r in self._ticks[kind].get(ticker, [])]
        matched = [r for r in records if all(check(r["sip_timestamp"], lo, hi) for check, lo, hi in bounds)]
        matched.sort(key=lambda r: (r["sip_timestamp"], r.get("sequence_number", 0)),
                     reverse=query.get("order", "desc") == "desc")
        return self._page(matched, path, query, offset, limit)

    def _news_page(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        """Ticker news: `ticker` matches any of an article's tickers; published_utc with
        .gt/.gte/.lt/.lte bounds (a date or a date-time); sorted by published_utc, `order`
        asc or desc (default desc); `limit` 1-1000 (default 10); cursor paging."""
        if "cursor" in query:
            query = _decode_cursor(query["cursor"])
        limit = _int_param(query, "limit", 10, 1000)
        offset = int(query["offset"]) if query.get("offset", "").isdigit() else 0

        def moment(text: str) -> datetime:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise _ApiError(400, {"status": "ERROR", "error": f"Could not parse published_utc '{text}'"}) from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

        bounds = {op: moment(query[f"published_utc{suffix}"])
                  for op, suffix in (("eq", ""), ("gt", ".gt"), ("gte", ".gte"), ("lt", ".lt"), ("lte", ".lte"))
                  if f"published_utc{suffix}" in query}
        checks = {"eq": lambda a, b: a == b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
                  "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        with self._lock:
            articles = [dict(a) for a in self._news]
        matched = [a for a in articles
                   if ("ticker" not in query or query["ticker"] in a.get("tickers", []))
                   and all(checks[op](moment(a["published_utc"]), bound) for op, bound in bounds.items())]
        matched.sort(key=lambda a: (moment(a["published_utc"]), a["id"]), reverse=query.get("order", "desc") == "desc")
        response = self._page(matched, path, query, offset, limit)
        response["count"] = len(response["results"])
        return response

    def _aggs(
        self, ticker: str, multiplier: str, timespan: str, from_: str, to: str, path: str, query: dict[str, str]
    ) -> dict[str, Any]:
        if "cursor" in query:
            query = {**_decode_cursor(query["cursor"]), **{k: v for k, v in query.items() if k != "cursor"}}
        if timespan not in _TIMESPAN_MS or not multiplier.isdigit() or int(multiplier) < 1:
            raise _ApiError(400, {"status": "ERROR", "error": f"Unsupported timespan {multiplier}/{timespan}"})
        start, end = _parse_bound(from_, False), _parse_bound(to, True)
        limit = _int_param(query, "limit", 5000, 50_000)
        descending = query.get("sort") == "desc"
        adjusted = query.get("adjusted", "true") != "false"

        source = self._minute if timespan in ("minute", "hour") else self._daily
        with self._lock:
            bars = source.get(ticker, [])
            times = [b["t"] for b in bars]
            selected = [dict(b) for b in bars[bisect.bisect_left(times, start):bisect.bisect_right(times, end)]]
        size_ms = int(multiplier) * _TIMESPAN_MS[timespan]
        base_ms = 60_000 if source is self._minute else _DAY_MS
        if size_ms != base_ms:
            selected = _bucket(selected, size_ms)
        query_count = len(selected)
        if descending:
            selected.reverse()
        page, rest = selected[:limit], selected[limit:]

        response: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": query_count,
            "resultsCount": len(page),
            "adjusted": adjusted,
            "status": "OK",
            "count": len(page),
        }
        if page:
            response["results"] = page
        if rest:
            # Like Polygon, the next page is addressed by moving the range
            # bound to the next bar; the cursor carries the other options.
            nxt = rest[0]["t"]
            new_from, new_to = (from_, str(nxt)) if descending else (str(nxt), to)
            prefix = f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}"
            options = {"adjusted": str(adjusted).lower(), "limit": limit, "sort": "desc" if descending else "asc"}
            response["next_url"] = f"{self.base_url}{prefix}/{new_from}/{new_to}?cursor={_encode_cursor(options)}"
        return response

    def _reference(self, store: list[dict[str, Any]], path: str, query: dict[str, str]) -> dict[str, Any]:
        if "cursor" in query:
            query = _decode_cursor(query["cursor"])
        limit = _int_param(query, "limit", 10, 1000)
        offset = int(query["offset"]) if query.get("offset", "").isdigit() else 0
        filters = {k: v for k, v in query.items() if k not in _PAGING_PARAMS}
        with self._lock:
            matched = [dict(r) for r in store if all(_matches(r, k, v) for k, v in filters.items())]
        if "sort" in query:
            key = query["sort"]
            matched.sort(key=lambda r: (r.get(key) is None, r.get(key)), reverse=query.get("order") == "desc")
        return self._page(matched, path, query, offset, limit)

    def _snapshot_state(self, ticker: str) -> dict[str, Any] | None:
        """Price/volume/time behind the snapshot and last trade, from
        ``set_snapshot`` or else the last minute bar (its start time, in ns,
        becomes ``updated``)."""
        with self._lock:
            pinned = self._snapshots.get(ticker)
            minute = list(self._minute.get(ticker, []))
            daily = list(self._daily.get(ticker, []))
        if pinned is not None:
            updated_ms = pinned["updated_ns"] // 1_000_000
            price = pinned["price"]
            last = {"t": updated_ms - updated_ms % 60_000, "o": price, "h": price, "l": price,
                    "c": price, "v": pinned["volume"], "vw": price, "n": 1}
            day = {k: last[k] for k in ("o", "h", "l", "c", "v", "vw")}
            prev_close = pinned["prev_close"]
            prev_day = None if prev_close is None else {"o": prev_close, "h": prev_close, "l": prev_close,
                                                        "c": prev_close, "v": 0, "vw": prev_close}
            return {"last": last, "day": day, "prev_day": prev_day, "updated_ns": pinned["updated_ns"]}
        if not minute:
            return None
        last = minute[-1]
        day_start = last["t"] - last["t"] % _DAY_MS
        today = [b for b in minute if b["t"] >= day_start]
        day = {k: v for k, v in _merge_bars(today, day_start).items() if k in ("o", "h", "l", "c", "v", "vw")}
        earlier = [b for b in daily if b["t"] < day_start]
        prev_day = None
        if earlier:
            prev_day = {k: earlier[-1].get(k) for k in ("o", "h", "l", "c", "v", "vw")}
        return {"last": last, "day": day, "prev_day": prev_day, "updated_ns": last["t"] * 1_000_000}

    def _snapshot(self, ticker: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._snapshot_records.get(ticker)
        if record is not None:
            return dict(record)
        state = self._snapshot_state(ticker)
        if state is None:
            return None
        last, price, updated = state["last"], state["last"]["c"], state["updated_ns"]
        prev_close = state["prev_day"]["c"] if state["prev_day"] else None
        change = round(price - prev_close, 4) if prev_close else 0
        snap: dict[str, Any] = {
            "ticker": ticker,
            "todaysChange": change,
            "todaysChangePerc": round(change / prev_close * 100, 4) if prev_close else 0,
            "updated": updated,
            "day": state["day"],
            "min": {"av": state["day"]["v"], "t": last["t"], "n": last.get("n", 0),
                    **{k: last.get(k) for k in ("o", "h", "l", "c", "v", "vw")}},
            "prevDay": state["prev_day"] or {"o": 0, "h": 0, "l": 0, "c": 0, "v": 0, "vw": 0},
            "lastTrade": {"c": [14, 41], "i": "1", "p": price, "s": 100, "t": updated, "x": 4},
            "lastQuote": {"P": round(price + 0.01, 4), "S": 1, "p": round(price - 0.01, 4), "s": 1, "t": updated},
        }
        return snap

    def _snapshot_all(self, query: dict[str, str]) -> dict[str, Any]:
        if query.get("tickers"):
            wanted = [t.strip() for t in query["tickers"].split(",") if t.strip()]
        else:
            with self._lock:
                wanted = sorted(set(self._snapshots) | set(self._minute) | set(self._snapshot_records))
        snaps = [s for s in (self._snapshot(t) for t in wanted) if s is not None]
        return {"status": "OK", "count": len(snaps), "tickers": snaps}

    def _last_trade(self, ticker: str) -> dict[str, Any]:
        with self._lock:
            record = self._last_trade_records.get(ticker)
        if record is not None:
            return {"status": "OK", "results": dict(record)}
        state = self._snapshot_state(ticker)
        if state is None:
            raise _ApiError(404, {"status": "NOT_FOUND", "message": "Data not found."})
        updated = state["updated_ns"]
        return {
            "status": "OK",
            "results": {
                "T": ticker,
                "c": [14, 41],
                "i": "1",
                "p": state["last"]["c"],
                "q": 1,
                "s": 100,
                "t": updated,
                "x": 4,
                "y": updated,
                "z": 3,
            },
        }
