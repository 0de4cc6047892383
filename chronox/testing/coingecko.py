"""Local stand-in for CoinGecko's REST API (api.coingecko.com/api/v3, pro-api.coingecko.com/api/v3),
built from CoinGecko's documentation rather than from what ChronoX accepts.

Sources:
- CoinGecko's OpenAPI reference (coingecko-pro-api-v3.yml in cg-eesuhn/docs-coingecko, and
  docs.coingecko.com/reference/simple-price and /coins-id-ohlc-range): /simple/price's
  parameters and its example; /coins/{id}/ohlc/range's parameters (vs_currency, from, to
  in UNIX seconds, interval daily|hourly), the CoinsOHLC example, "the timestamp ...
  indicates the end (or close) time", "up to 31 days per request" hourly and 180 daily,
  "Exclusive for Paid Plan Subscribers"; the key headers x-cg-pro-api-key and
  x-cg-demo-api-key.
- docs.coingecko.com "Common Errors & Rate Limit" / "Errors & Rate Limits": 401 for missing
  or invalid keys, 429 for the rate limit, error codes 10002 (key missing), 10005 ("You may
  not have access to this endpoint. e.g. 'This request is limited Pro API subscribers'"),
  10010 / 10011 (a key of the other kind on this root); every call counts toward the
  per-minute limit, errors included.
- The error body's shape, {"status": {"error_code": ..., "error_message": ...}} with HTTP 401
  for 10005 and with 429 for the rate limit, as reported by CoinGecko's users (e.g.
  GitHub Gituser143/cryptgo#30 for the 429 message); the documentation shows no body.

FakeCoinGecko serves one root: `root="public"` (api.coingecko.com: keyless, or demo keys)
or `root="pro"` (pro-api.coingecko.com: pro keys). Point CHRONOX_COINGECKO_BASE_URL at
`base_url`.
"""
from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from chronox.testing.servers import Fault, FaultQueue, HTTPStandIn, StandInHandler

# /simple/price, the SimplePrice schema's example, verbatim.
SIMPLE_PRICE_EXAMPLE: dict[str, Any] = {
    "bitcoin": {"usd": 67187.3358936566, "usd_market_cap": 1317802988326.25, "usd_24h_vol": 31260929299.5248,
                "usd_24h_change": 3.63727894677354, "last_updated_at": 1711356300},
}
# /coins/{id}/ohlc and /coins/{id}/ohlc/range, the CoinsOHLC schema's example, verbatim
# ([close time in ms, open, high, low, close]; four-hourly candles).
OHLC_EXAMPLE: list[list[int]] = [
    [1709395200000, 61942, 62211, 61721, 61845],
    [1709409600000, 61828, 62139, 61726, 62139],
    [1709424000000, 62171, 62210, 61821, 62068],
]
PLAN_RESTRICTED_MESSAGE = "This request is limited Pro API subscribers"
RATE_LIMIT_MESSAGE = ("You've exceeded the Rate Limit. Please visit https://www.coingecko.com/en/api/pricing to "
                      "subscribe to our API plans for higher rate limits.")
KEY_MESSAGES = {
    10002: "API Key Missing. Please make sure you're using the right authentication method. For Pro API, ensure "
           "you pass in x_cg_pro_api_key parameter with a Pro Key and for Demo API, ensure you pass in "
           "x_cg_demo_api_key parameter with a Demo Key.",
    10010: "You have provided incorrect API key credentials. If you are using Pro API key, please change your "
           "root URL from api.coingecko.com to pro-api.coingecko.com",
    10011: "You have provided incorrect API key credentials. If you are using Demo API key, please change your "
           "root URL from pro-api.coingecko.com to api.coingecko.com",
}
INTERVALS = {"hourly": (3_600_000, 31), "daily": (86_400_000, 180)}
FAULT_KINDS = ("429", "500", "503", "malformed")
_OHLC_PATH = re.compile(r"/api/v3/coins/([^/]+)/ohlc/range")


@dataclass
class RequestRecord:
    time: float
    path: str
    query: dict[str, str]
    plan: str  # public, demo or pro: how the request authenticated
    status: int


class _Reply(Exception):
    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, headers or {}


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"status": {"error_code": code, "error_message": message}}, headers)


class FakeCoinGecko(HTTPStandIn[RequestRecord]):
    """CoinGecko's API in memory on 127.0.0.1; `keys` maps API keys to their plan (demo or pro)."""

    def __init__(self, root: str = "public", keys: dict[str, str] | None = None, calls_per_window: int | None = None,
                 window: float = 60.0, host: str = "127.0.0.1", port: int = 0):
        if root not in ("public", "pro"):
            raise ValueError("root is public (api.coingecko.com) or pro (pro-api.coingecko.com)")
        super().__init__(host, port)
        self.root = root
        self.keys = dict(keys or {})
        self.calls_per_window = calls_per_window
        self.window = window
        self._prices: dict[str, dict[str, Any]] = {}
        self._ohlc: dict[tuple[str, str, str], list[list[Any]]] = {}
        self._faults = FaultQueue(FAULT_KINDS)
        self._calls: deque[float] = deque()
        self.base_url = f"{self._origin}/api/v3"

    # -- data and faults ---------------------------------------------------------------------

    def set_price_record(self, coin: str, record: dict[str, Any]) -> None:
        """Serve `record` (the shape of SIMPLE_PRICE_EXAMPLE's values) for `coin`; fields are
        left out as the request's include_* flags say."""
        with self._lock:
            self._prices[coin] = dict(record)

    def add_ohlc(self, coin: str, vs: str, interval: str, rows: list[list[Any]]) -> None:
        """Candles ([close ms, o, h, l, c]) of `coin` in `vs` at `interval` (hourly or daily)."""
        with self._lock:
            store = self._ohlc.setdefault((coin, vs, interval), [])
            store.extend(list(r) for r in rows)
            store.sort(key=lambda r: r[0])

    def fail_next(self, kind: str, count: int = 1, retry_after: float | None = None) -> None:
        self._faults.add(Fault(kind, count, retry_after))

    # -- the protocol ------------------------------------------------------------------------

    def _plan(self, headers: Any, query: dict[str, str]) -> str:
        pro = headers.get("x-cg-pro-api-key") or query.get("x_cg_pro_api_key")
        demo = headers.get("x-cg-demo-api-key") or query.get("x_cg_demo_api_key")
        if self.root == "pro":
            if pro and self.keys.get(pro) == "pro":
                return "pro"
            if demo:
                raise _error(401, 10011, KEY_MESSAGES[10011])
            raise _error(401, 10002, KEY_MESSAGES[10002])
        if pro:
            raise _error(401, 10010, KEY_MESSAGES[10010])
        if demo:
            if self.keys.get(demo) != "demo":
                raise _error(401, 10002, KEY_MESSAGES[10002])
            return "demo"
        return "public"

    def _handle(self, req: StandInHandler) -> None:
        req.send_json(*self._answer(req))

    def _answer(self, req: StandInHandler) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(req.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        now = time.monotonic()
        with self._lock:
            record = RequestRecord(now, parts.path, {k: v for k, v in query.items() if "api_key" not in k},
                                   "?", 0)
            self.requests.append(record)
            try:
                # Every call counts toward the limit, errors included (CoinGecko's documentation).
                self._calls.append(now)
                while self._calls and self._calls[0] <= now - self.window:
                    self._calls.popleft()
                if self.calls_per_window is not None and len(self._calls) > self.calls_per_window:
                    left = self._calls[0] + self.window - now
                    raise _error(429, 429, RATE_LIMIT_MESSAGE, {"Retry-After": str(max(1, round(left)))})
                fault = self._faults.take(parts.path)
                if fault is not None:
                    self._fault(fault)
                record.plan = self._plan(req.headers, query)
                payload = self._route(parts.path, query, record.plan)
            except _Reply as reply:
                record.status = reply.status
                return reply.status, reply.payload, reply.headers
            record.status = 200
            return 200, payload, {}

    @staticmethod
    def _fault(fault: Fault) -> None:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.kind == "429":
            raise _error(429, 429, RATE_LIMIT_MESSAGE, headers)
        if fault.kind == "malformed":
            raise _Reply(200, b"<html><body>error code: 1020</body></html>")
        raise _Reply(int(fault.kind), {"error": "Internal Server Error"}, headers)

    def _route(self, path: str, query: dict[str, str], plan: str) -> Any:
        if path == "/api/v3/ping":
            return {"gecko_says": "(V3) To the Moon!"}
        if path == "/api/v3/simple/price":
            return self._simple_price(query)
        match = _OHLC_PATH.fullmatch(path)
        if match:
            if plan != "pro":
                raise _error(401, 10005, PLAN_RESTRICTED_MESSAGE)
            return self._ohlc_range(match.group(1), query)
        raise _Reply(404, {"error": "Not Found"})

    def _simple_price(self, query: dict[str, str]) -> dict[str, Any]:
        ids = [i for i in query.get("ids", "").split(",") if i]
        currencies = [c for c in query.get("vs_currencies", "").split(",") if c]
        if not ids or not currencies:
            raise _Reply(400, {"error": "Missing parameter ids or vs_currencies"})
        flags = {name: query.get(f"include_{name}", "false") == "true"
                 for name in ("market_cap", "24hr_vol", "24hr_change", "last_updated_at")}
        out: dict[str, Any] = {}
        for coin in ids:
            record = self._prices.get(coin)
            if record is None:
                continue  # unknown ids are left out of the answer
            entry: dict[str, Any] = {}
            for vs in currencies:
                if vs in record:
                    entry[vs] = record[vs]
                    for suffix, flag in (("market_cap", "market_cap"), ("24h_vol", "24hr_vol"),
                                         ("24h_change", "24hr_change")):
                        if flags[flag] and f"{vs}_{suffix}" in record:
                            entry[f"{vs}_{suffix}"] = record[f"{vs}_{suffix}"]
            if flags["last_updated_at"] and "last_updated_at" in record:
                entry["last_updated_at"] = record["last_updated_at"]
            out[coin] = entry
        return out

    def _ohlc_range(self, coin: str, query: dict[str, str]) -> list[list[Any]]:
        interval = query.get("interval")
        if interval not in INTERVALS:
            raise _Reply(400, {"error": "interval must be daily or hourly"})
        try:
            first, last = int(float(query["from"])), int(float(query["to"]))
        except (KeyError, ValueError):
            raise _Reply(400, {"error": "from and to must be UNIX timestamps"}) from None
        _, max_days = INTERVALS[interval]
        if last < first or last - first > max_days * 86_400:
            raise _Reply(400, {"error": f"the range may span at most {max_days} days for interval={interval}"})
        rows = self._ohlc.get((coin, query.get("vs_currency", ""), interval), [])
        return [r for r in rows if first * 1000 <= r[0] <= last * 1000]
