"""Local stand-ins for Binance: the spot REST API, the public data archive and the combined
kline stream, built from Binance's documentation rather than from what ChronoX accepts.

Sources (fetched from GitHub):
- binance/binance-spot-api-docs rest-api.md: "/api/v3/klines" (weight 2, limit default 500,
  maximum 1000, paging rules of startTime/endTime), "/api/v3/ticker/price" (weight 2 with
  `symbol`, 4 with `symbols` or none), "/api/v3/aggTrades" (weight 4), "LIMITS" (the
  X-MBX-USED-WEIGHT-1M header, 429 with Retry-After, then 418 for clients that do not back
  off, bans "from 2 minutes to 3 days"), the error payload {"code": -1121, "msg": "Invalid
  symbol."}; errors.md for the codes; enums.md for the 6000-per-minute REQUEST_WEIGHT limit.
- binance/binance-spot-api-docs web-socket-streams.md: combined streams at /stream wrap each
  event as {"stream": ..., "data": ...}; SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS with
  their {"result": null, "id": n} replies and error messages; 5 incoming messages per
  second per connection, 1024 streams per connection; the kline event; serverShutdown;
  connections end at 24 hours.
- binance/binance-public-data README.md: day files data/spot/daily/klines/<SYM>/1m/
  <SYM>-1m-<day>.zip with one header-less CSV of the klines' 12 columns, timestamps in
  microseconds from 2025-01-01, and a `.CHECKSUM` file beside each zip (sha256sum's output).

FakeBinance serves the REST API and the archive (point CHRONOX_BINANCE_BASE_URL and
CHRONOX_BINANCE_DATA_URL at `base_url`); FakeBinanceStream serves the websocket
(CHRONOX_BINANCE_WS_URL = `url`).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chronox.testing.servers import Fault, FaultQueue, HTTPStandIn, StandInHandler, WebSocketStandIn

# -- documented examples, verbatim ----------------------------------------------------------

# rest-api.md, "Kline/Candlestick data", Response (a weekly kline: close = open + 7 days - 1 ms).
KLINE_EXAMPLE: list[Any] = [
    1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
    1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "0",
]
# rest-api.md, "Symbol price ticker", Response (the array form).
TICKER_PRICE_EXAMPLE: list[dict[str, str]] = [
    {"symbol": "LTCBTC", "price": "4.00000200"},
    {"symbol": "ETHBTC", "price": "0.07946600"},
]
# rest-api.md, "Compressed/Aggregate trades list", Response.
AGG_TRADE_EXAMPLE: dict[str, Any] = {
    "a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153,
    "m": True, "M": True,
}
# rest-api.md, "Error Codes", Sample Payload.
ERROR_EXAMPLE: dict[str, Any] = {"code": -1121, "msg": "Invalid symbol."}
# errors.md, -1003 TOO_MANY_REQUESTS, its messages with the placeholders filled in.
TOO_MUCH_WEIGHT = ("Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
                   "Please use WebSocket Streams for live updates to avoid polling the API.")
BANNED = ("Way too much request weight used; IP banned until {until}. "
          "Please use WebSocket Streams for live updates to avoid bans.")
# web-socket-streams.md, "Kline/Candlestick Streams for UTC", Payload (an open kline, x false).
WS_KLINE_EXAMPLE: dict[str, Any] = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC",
    "k": {"t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100, "L": 200,
          "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": False,
          "q": "1.0000", "V": "500", "Q": "0.500", "B": "123456"},
}
# binance-public-data README.md, "Klines" (spot, microseconds; a 1h kline).
ARCHIVE_ROW_EXAMPLE = ("1735689600000000,4.15070000,4.15870000,4.15060000,4.15540000,539.23000000,"
                       "1735693199999999,2240.39860900,13,401.82000000,1669.98121300,0")

INTERVAL_MS = {"1s": 1000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
               "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000}
FAULT_KINDS = ("429", "418", "500", "503", "malformed", "not_array")


def kline_row(open_ms: int, o: float | str, h: float | str, low: float | str, c: float | str,
              v: float | str, interval: str = "1m", trades: int = 10,
              quote_volume: float | str | None = None) -> list[Any]:
    """A kline as /api/v3/klines sends it: times as integers (ms), numbers as 8-decimal strings."""
    def text(x: float | str) -> str:
        return x if isinstance(x, str) else f"{x:.8f}"

    volume = float(v)
    quote = quote_volume if quote_volume is not None else volume * (float(h) + float(low)) / 2
    return [open_ms, text(o), text(h), text(low), text(c), text(v), open_ms + INTERVAL_MS[interval] - 1,
            text(quote), trades, text(volume / 2), text(float(quote) / 2), "0"]


def minute_rows(day: dt.date, count: int = 1440, base: float = 42_000.0, every: int = 1,
                interval: str = "1m") -> list[list[Any]]:
    """`count` klines from 00:00 UTC of `day`, one every `every` intervals, prices drifting."""
    start = int(dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp() * 1000)
    rows = []
    for i in range(count):
        p = base + (i % 97) * 0.25
        rows.append(kline_row(start + i * every * INTERVAL_MS[interval], p, p + 1.5, p - 1.0, p + 0.5,
                              1.25 + (i % 7) * 0.5, interval, trades=5 + i % 11))
    return rows


@dataclass
class RequestRecord:
    time: float  # time.monotonic() at arrival
    path: str
    query: dict[str, str]
    status: int
    weight: int  # what Binance would have counted (0 for the archive)
    has_api_key: bool  # X-MBX-APIKEY header present (its value is never kept)


class _ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class FakeBinance(HTTPStandIn[RequestRecord]):
    """Binance's spot REST API and public data archive, in memory, on 127.0.0.1.

    Weight is counted per fixed window of `weight_window` seconds (Binance: the minute) and
    reported in X-MBX-USED-WEIGHT-1M. Over `weight_limit` the answer is 429 with Retry-After
    (seconds to the window's end); a request before that Retry-After has passed earns a
    418 ban of `ban_seconds`, and every request during a ban is 418 with the time left.
    """

    def __init__(self, weight_limit: int = 6000, weight_window: float = 60.0, ban_seconds: float = 120.0,
                 host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.weight_limit = weight_limit
        self.weight_window = weight_window
        self.ban_seconds = ban_seconds
        self._klines: dict[tuple[str, str], dict[int, list[Any]]] = {}
        self._prices: dict[str, str] = {}
        self._agg_trades: dict[str, list[dict[str, Any]]] = {}
        self._files: dict[str, bytes] = {}
        self._faults = FaultQueue(FAULT_KINDS)
        self._window_id = -1
        self._used = 0
        self._warned_until = 0.0  # a 429's Retry-After: requests before it earn a ban
        # Answer times in microseconds as if every request sent X-MBX-TIME-UNIT: MICROSECOND
        # (rest-api.md), e.g. a proxy adding the header.
        self.microseconds = False
        self._banned_until = 0.0
        self.bans = 0
        self.rate_limited = 0
        self.base_url = self._origin

    # -- data ------------------------------------------------------------------------------

    def add_klines(self, symbol: str, rows: Iterable[Sequence[Any]], interval: str = "1m") -> None:
        """Klines of `symbol` (Binance's spelling, BTCUSDT) served as given; a row with the open
        time of one already there replaces it."""
        with self._lock:
            store = self._klines.setdefault((symbol, interval), {})
            for row in rows:
                store[row[0]] = list(row)

    def set_prices(self, prices: dict[str, str]) -> None:
        with self._lock:
            self._prices.update(prices)

    def set_agg_trades(self, symbol: str, trades: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._agg_trades[symbol] = list(trades)

    def add_file(self, path: str, body: bytes) -> None:
        """Serve `body` at `path` (e.g. a corrupt zip)."""
        with self._lock:
            self._files["/" + path.lstrip("/")] = body

    def remove_file(self, path: str) -> None:
        with self._lock:
            self._files.pop("/" + path.lstrip("/"), None)

    def add_archive_day(self, symbol: str, day: dt.date, rows: Sequence[Sequence[Any]], unit: str = "ms",
                        checksum: str | None = "good", extra_lines: Sequence[str] = ()) -> str:
        """A day file of 1m klines, `rows` as /api/v3/klines gives them (ms), written with
        timestamps in `unit` ("ms" or "us"); checksum "good", "wrong" or None (no .CHECKSUM).
        `extra_lines` are appended verbatim (bad rows). Returns the zip's path."""
        name = f"{symbol}-1m-{day.isoformat()}"
        path = f"data/spot/daily/klines/{symbol}/1m/{name}.zip"
        scale, fill = (1000, 999) if unit == "us" else (1, 0)
        lines = []
        for row in rows:
            fields = [str(row[0] * scale), *map(str, row[1:6]), str(row[6] * scale + fill), *map(str, row[7:])]
            lines.append(",".join(fields))
        lines.extend(extra_lines)
        body = io.BytesIO()
        with zipfile.ZipFile(body, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{name}.csv", "\n".join(lines) + "\n")
        data = body.getvalue()
        self.add_file(path, data)
        if checksum is None:
            self.remove_file(f"{path}.CHECKSUM")
        else:
            digest = hashlib.sha256(data if checksum == "good" else data + b"tampered").hexdigest()
            self.add_file(f"{path}.CHECKSUM", f"{digest}  {name}.zip\n".encode())
        return path

    # -- faults and state ------------------------------------------------------------------

    def fail_next(self, kind: str, count: int = 1, retry_after: float | None = None, prefix: str = "/api/") -> None:
        """The next `count` requests under `prefix` answer `kind` (FAULT_KINDS)."""
        self._faults.add(Fault(kind, count, retry_after, prefix))

    def preset_used_weight(self, used: int) -> None:
        """Weight other clients on the same IP already used in the current window."""
        with self._lock:
            self._roll_window()
            self._used = used

    def requests_under(self, prefix: str = "/api/") -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def _roll_window(self) -> None:
        window_id = int(time.time() // self.weight_window)
        if window_id != self._window_id:
            self._window_id, self._used = window_id, 0

    # -- the protocol ----------------------------------------------------------------------

    def _handle(self, req: StandInHandler) -> None:
        parts = urlsplit(req.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        has_key = bool(req.headers.get("X-MBX-APIKEY"))
        if parts.path.startswith("/data/"):
            with self._lock:
                body = self._files.get(parts.path)
                fault = self._faults.take(parts.path)
                self.requests.append(RequestRecord(time.monotonic(), parts.path, query,
                                                   503 if fault else 200 if body is not None else 404, 0, has_key))
            if fault is not None:
                req.send_body(503, b"<Error><Code>SlowDown</Code></Error>", "application/xml")
            elif body is None:
                # data.binance.vision is an S3 bucket behind CloudFront: a missing key is a 404.
                req.send_body(404, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>"
                                   b"<Message>The specified key does not exist.</Message></Error>", "application/xml")
            else:
                req.send_body(200, body, "application/zip")
            return
        unit = (req.headers.get("X-MBX-TIME-UNIT") or "").upper()
        status, payload, headers = self._api(parts.path, query, has_key, unit == "MICROSECOND" or self.microseconds)
        req.send_json(status, payload, headers)

    def _api(self, path: str, query: dict[str, str], has_key: bool,
             microseconds: bool = False) -> tuple[int, Any, dict[str, str]]:
        now = time.time()
        with self._lock:
            self._roll_window()
            weight = self._weight(path, query)
            record = RequestRecord(time.monotonic(), path, query, 0, weight, has_key)
            self.requests.append(record)
            if self._banned_until > now:
                record.status = 418
                left = self._banned_until - now
                return 418, {"code": -1003, "msg": BANNED.format(until=int(self._banned_until * 1000))}, \
                    {"Retry-After": str(max(1, round(left)))}
            if self._warned_until > now:
                # it did not back off after a 429: an automated ban
                self._banned_until = now + self.ban_seconds
                self.bans += 1
                record.status = 418
                return 418, {"code": -1003, "msg": BANNED.format(until=int(self._banned_until * 1000))}, \
                    {"Retry-After": str(round(self.ban_seconds))}
            self._used += weight
            headers = {"X-MBX-USED-WEIGHT-1M": str(self._used)}
            if self._used > self.weight_limit:
                left = (self._window_id + 1) * self.weight_window - now
                self._warned_until = now + left
                self.rate_limited += 1
                record.status = 429
                return 429, {"code": -1003, "msg": TOO_MUCH_WEIGHT.format(limit=self.weight_limit)}, \
                    {**headers, "Retry-After": str(max(1, round(left)))}
            fault = self._faults.take(path)
            if fault is not None:
                record.status, payload, extra = self._fault_answer(fault, now)
                return record.status, payload, {**headers, **extra}
            try:
                payload = self._route(path, query)
                if microseconds and path == "/api/v3/klines":
                    payload = [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in payload]
            except _ApiError as exc:
                record.status = exc.status
                return exc.status, {"code": exc.code, "msg": exc.msg}, headers
            record.status = 200
            return 200, payload, headers

    def _fault_answer(self, fault: Fault, now: float) -> tuple[int, Any, dict[str, str]]:
        retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.kind == "429":
            self._warned_until = now + (fault.retry_after or 0)
            return 429, {"code": -1003, "msg": TOO_MUCH_WEIGHT.format(limit=self.weight_limit)}, retry
        if fault.kind == "418":
            self._banned_until = now + (fault.retry_after if fault.retry_after is not None else self.ban_seconds)
            self.bans += 1
            return 418, {"code": -1003, "msg": BANNED.format(until=int(self._banned_until * 1000))}, retry
        if fault.kind in ("500", "503"):
            return int(fault.kind), {"code": -1001, "msg": "Internal error; unable to process your request. "
                                                          "Please try again."}, retry
        if fault.kind == "malformed":
            return 200, b"<html>502 Bad Gateway</html>", {}
        return 200, {"unexpected": "object"}, {}

    @staticmethod
    def _weight(path: str, query: dict[str, str]) -> int:
        if path == "/api/v3/klines":
            return 2
        if path == "/api/v3/ticker/price":
            return 2 if "symbol" in query else 4
        if path == "/api/v3/aggTrades":
            return 4
        return 1

    def _route(self, path: str, query: dict[str, str]) -> Any:
        if path == "/api/v3/klines":
            return self._klines_answer(query)
        if path == "/api/v3/ticker/price":
            return self._price_answer(query)
        if path == "/api/v3/aggTrades":
            symbol = self._symbol(query)
            limit = self._limit(query, 500)
            return self._agg_trades.get(symbol, [])[-limit:]
        raise _ApiError(404, -1000, f"no such endpoint {path}")

    def _known(self, symbol: str) -> bool:
        return symbol in self._prices or any(s == symbol for s, _ in self._klines) or symbol in self._agg_trades

    def _symbol(self, query: dict[str, str]) -> str:
        symbol = query.get("symbol")
        if not symbol:
            raise _ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if not self._known(symbol):
            raise _ApiError(400, ERROR_EXAMPLE["code"], ERROR_EXAMPLE["msg"])
        return symbol

    @staticmethod
    def _limit(query: dict[str, str], default: int) -> int:
        try:
            limit = int(query.get("limit", default))
        except ValueError:
            raise _ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.") from None
        if not 1 <= limit <= 1000:
            raise _ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _klines_answer(self, query: dict[str, str]) -> list[list[Any]]:
        symbol = self._symbol(query)
        interval = query.get("interval", "")
        if interval not in INTERVAL_MS:
            raise _ApiError(400, -1120, "Invalid interval.")
        limit = self._limit(query, 500)
        rows = [self._klines[(symbol, interval)][t] for t in sorted(self._klines.get((symbol, interval), {}))]
        start, end = query.get("startTime"), query.get("endTime")
        if end is not None:
            rows = [r for r in rows if r[0] <= int(end)]
        if start is not None:
            return [r for r in rows if r[0] >= int(start)][:limit]
        return rows[-limit:]  # without startTime: the most recent, in time order

    def _price_answer(self, query: dict[str, str]) -> Any:
        if "symbol" in query and "symbols" in query:
            raise _ApiError(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in query:
            symbol = self._symbol(query)
            return {"symbol": symbol, "price": self._prices[symbol]}
        if "symbols" in query:
            try:
                symbols = json.loads(query["symbols"])
            except ValueError:
                raise _ApiError(400, -1100, "Illegal characters found in parameter 'symbols'.") from None
            if not isinstance(symbols, list) or not symbols:
                raise _ApiError(400, -1102, "Mandatory parameter 'symbols' was not sent, was empty/null, "
                                            "or malformed.")
            if any(s not in self._prices for s in symbols):
                raise _ApiError(400, ERROR_EXAMPLE["code"], ERROR_EXAMPLE["msg"])
            return [{"symbol": s, "price": self._prices[s]} for s in symbols]
        return [{"symbol": s, "price": p} for s, p in self._prices.items()]


# -- the combined stream -------------------------------------------------------------------

MAX_MESSAGES_PER_SECOND = 5
MAX_STREAMS = 1024


@dataclass
class _Conn:
    id: int
    ws: ServerConnection
    opened: float
    streams: set[str] = field(default_factory=set)
    arrivals: deque[float] = field(default_factory=deque)


class FakeBinanceStream(WebSocketStandIn[_Conn]):
    """Binance's websocket market streams (combined, at /stream) on its own thread and loop.

    Connections live at most `max_connection_seconds` (Binance: 24 hours), then the server
    closes them; a connection sending more than 5 messages in a second is closed, as Binance
    does.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_connection_seconds: float | None = None):
        super().__init__(host, port)
        self.max_connection_seconds = max_connection_seconds
        self.messages: list[Any] = []
        self.connections = 0
        self.closed_for_flooding = 0
        self.url = ""

    def _listening(self, port: int) -> None:
        self.url = f"ws://{self._host}:{port}"

    async def _open(self) -> Server:
        return await serve(self._handle, self._host, self._port, process_request=self._route, close_timeout=1)

    @staticmethod
    def _route(connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/stream":
            return Response(404, "Not Found", Headers(), b"combined streams live at /stream\n")
        return None

    # -- observation -----------------------------------------------------------------------

    @property
    def streams(self) -> set[str]:
        with self._lock:
            return set().union(*(c.streams for c in self._conns.values()))

    @property
    def streams_by_connection(self) -> dict[int, set[str]]:
        with self._lock:
            return {cid: set(c.streams) for cid, c in self._conns.items()}

    # -- the protocol ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(next(self._ids), ws, time.monotonic())
        with self._lock:
            self.connections += 1
            self._conns[conn.id] = conn
        expiry = None
        if self.max_connection_seconds is not None:
            expiry = asyncio.get_running_loop().call_later(
                self.max_connection_seconds, lambda: asyncio.ensure_future(ws.close(1000, "24h limit")))
        try:
            async for raw in ws:
                now = time.monotonic()
                conn.arrivals.append(now)
                while conn.arrivals and conn.arrivals[0] <= now - 1.0:
                    conn.arrivals.popleft()
                if len(conn.arrivals) > MAX_MESSAGES_PER_SECOND:
                    with self._lock:
                        self.closed_for_flooding += 1
                    await ws.close(1008, "Too many messages")
                    return
                try:
                    message: Any = json.loads(raw)
                except ValueError:
                    message = raw
                with self._lock:
                    self.messages.append(message)
                await ws.send(json.dumps(self._reply(conn, message)))
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            with self._lock:
                self._conns.pop(conn.id, None)

    def _reply(self, conn: _Conn, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            return {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
        request_id = message.get("id")
        if isinstance(request_id, bool) or not (request_id is None or isinstance(request_id, int)
                                                or (isinstance(request_id, str) and len(request_id) <= 36)):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        method, params = message.get("method"), message.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            with self._lock:
                return {"result": sorted(conn.streams), "id": request_id}
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return {"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
                                      "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line "
                                      "1 column 28", "id": request_id}
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return {"code": 2, "msg": "Invalid request: invalid params", "id": request_id}
        with self._lock:
            if method == "SUBSCRIBE":
                if len(conn.streams | set(params)) > MAX_STREAMS:
                    return {"code": 2, "msg": f"Too many subscriptions. Connection may create up to "
                                              f"'{MAX_STREAMS}' subscriptions at a time.", "id": request_id}
                conn.streams.update(params)
            else:
                conn.streams.difference_update(params)
        return {"result": None, "id": request_id}

    # -- pushing events ----------------------------------------------------------------------

    def send_kline(self, symbol: str, start_ms: int, o: float, h: float, low: float, c: float, v: float,
                   closed: bool, trades: int = 10, quote_volume: float | None = None) -> int:
        """A 1m kline event of `symbol` (BTCUSDT) to the connections subscribed to it, wrapped as
        combined streams wrap events; returns how many connections it went to."""
        stream = f"{symbol.lower()}@kline_1m"
        quote = quote_volume if quote_volume is not None else v * (h + low) / 2
        event = {"e": "kline", "E": start_ms + (60_000 if closed else 30_000), "s": symbol,
                 "k": {"t": start_ms, "T": start_ms + 59_999, "s": symbol, "i": "1m", "f": 100, "L": 100 + trades,
                       "o": f"{o:.8f}", "c": f"{c:.8f}", "h": f"{h:.8f}", "l": f"{low:.8f}", "v": f"{v:.8f}",
                       "n": trades, "x": closed, "q": f"{quote:.8f}", "V": f"{v / 2:.8f}", "Q": f"{quote / 2:.8f}",
                       "B": "0"}}
        return self.send_event(stream, event)

    def send_event(self, stream: str, event: dict[str, Any]) -> int:
        frame = json.dumps({"stream": stream, "data": event})

        async def push() -> int:
            with self._lock:
                targets = [c for c in self._conns.values() if stream in c.streams]
            sent = 0
            for conn in targets:
                try:
                    await conn.ws.send(frame)
                    sent += 1
                except ConnectionClosed:
                    pass
            return sent

        return int(self._call(push()))

    def send_raw(self, text: str) -> int:
        async def push() -> int:
            with self._lock:
                targets = list(self._conns.values())
            for conn in targets:
                try:
                    await conn.ws.send(text)
                except ConnectionClosed:
                    pass
            return len(targets)

        return int(self._call(push()))

    def server_shutdown(self) -> int:
        """The documented serverShutdown event (combined form) to every connection."""
        return self.send_raw(json.dumps({"stream": "!serverShutdown",
                                         "data": {"e": "serverShutdown", "E": int(time.time() * 1000)}}))

    def drop_connections(self) -> int:
        """Abort every connection without a close frame (the client sees 1006)."""
        async def drop() -> int:
            with self._lock:
                conns = list(self._conns.values())
            for conn in conns:
                conn.ws.transport.abort()
            return len(conns)

        return int(self._call(drop()))
