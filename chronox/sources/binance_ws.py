"""Binance's combined market streams (wss://stream.binance.com:9443/stream, or
CHRONOX_BINANCE_WS_URL): closed 1m klines of the subscribed symbols.

Protocol (web-socket-streams.md): the client sends
`{"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", ...], "id": 1}` (and UNSUBSCRIBE);
the server replies `{"result": null, "id": 1}`, or `{"code": 2, "msg": ..., "id": 1}` for a
bad request. Events arrive wrapped as `{"stream": "btcusdt@kline_1m", "data": {"e": "kline",
"s": "BTCUSDT", "k": {"t": <window start, ms>, "o": "...", ..., "x": <closed?>}}}`, about
every two seconds per symbol while the minute is open; only `k.x == true` is a bar.

What BinanceStream adds to the reconnect loop (chronox.sources.reconnect):
- `on_frame` is awaited only for frames that carry a closed kline (or that it cannot read,
  so the caller can quarantine them); replies, open klines and serverShutdown stay here.
- At most 5 messages a second leave the client (Binance closes connections that send
  more), 200 streams a message, 1024 streams a connection (Binance's maximum; more are
  refused with an error in the log).
- Binance ends every connection at 24 hours, and announces a restart with serverShutdown.
  Before either, the client opens a second connection, subscribes, switches over, then
  closes the first and reads what was still in flight on it: no minute is lost, and a
  closed kline both connections carried is handed on once. A rollover is not a loss:
  on_lost/on_restored are for real outages only.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chronox.bars import Bar, bar_problem, ts_from_ms
from chronox.markets import binance_symbol
from chronox.sources import shown
from chronox.sources.reconnect import ReconnectingStream, describe

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
MAX_FRAME_BYTES = 1024 * 1024
MAX_STREAMS = 1024  # per connection
STREAMS_PER_MESSAGE = 200
MESSAGE_INTERVAL = 0.25  # Binance: at most 5 incoming messages a second per connection
MAX_AGE = 23 * 3600.0  # Binance ends connections at 24 h; roll over an hour before
ROLLOVER_RETRY = 30.0  # a successor that would not connect is tried again this much later
RECENT_KLINES = 4  # closed klines remembered per stream, to hand on each once across a rollover


def channel(symbol: str) -> str:
    """The stream of a canonical symbol's closed 1m klines: BTC-USDT -> btcusdt@kline_1m."""
    return f"{binance_symbol(symbol).lower()}@kline_1m"


def stream_url(url: str) -> str:
    """The combined-stream endpoint of a base URL (wss://stream.binance.com:9443 -> .../stream)."""
    return url if urlsplit(url).path.rstrip("/").endswith("/stream") else f"{url.rstrip('/')}/stream"


def kline_bar(frame: str | bytes, symbols: Mapping[str, str]) -> Bar | None:
    """The bar of a frame's closed kline (source "stream"); None for an open kline; ValueError
    for anything unusable. `symbols` maps Binance's spelling (BTCUSDT) to the canonical one."""
    try:
        message = json.loads(frame)
    except RecursionError:
        raise ValueError("frame is nested too deeply") from None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, dict) or data.get("e") != "kline" or not isinstance(data.get("k"), dict):
        raise ValueError("not a combined-stream kline event")
    k = data["k"]
    if not isinstance(k.get("x"), bool):
        raise ValueError(f"kline closed flag x={shown(k.get('x'))} is not true or false")
    if not k["x"]:
        return None
    if k.get("i") != "1m":
        raise ValueError(f"kline interval {shown(k.get('i'))} is not 1m")
    symbol = symbols.get(k.get("s")) if isinstance(k.get("s"), str) else None
    if symbol is None:
        raise ValueError(f"kline of an unsubscribed symbol {shown(k.get('s'))}")
    start = k.get("t")
    if not isinstance(start, int) or isinstance(start, bool) or start <= 0 or start % 60_000:
        raise ValueError(f"window start t={shown(start)} is not a minute in epoch milliseconds")
    numbers = []
    for key in ("o", "h", "l", "c", "v", "q"):
        value = k.get(key)
        if not isinstance(value, str):
            raise ValueError(f"field {key}={shown(value)} is not a decimal string")
        numbers.append(float(value))
    trades = k.get("n")
    if not isinstance(trades, int) or isinstance(trades, bool):
        raise ValueError(f"number of trades n={shown(trades)} is not an integer")
    o, h, low, c, v, quote = numbers
    bar = Bar(symbol, ts_from_ms(start), o, h, low, c, v, quote / v if v > 0 else None, trades, "stream")
    problem = bar_problem(bar)
    if problem:
        raise ValueError(problem)
    return bar


@dataclass
class _Link:
    """One connection: its socket, when it opened, what it carries."""

    ws: ClientConnection
    opened: float  # loop time
    subscribed: set[str] = field(default_factory=set)
    stash: list[str | bytes] = field(default_factory=list)  # data frames read during the handshake
    last_sent: float = 0.0


class BinanceStream(ReconnectingStream[_Link]):
    """One logical subscription to Binance's closed 1m klines that survives connection loss
    and Binance's 24-hour connection limit; the hooks are PolygonStream's."""

    label = "binance stream"

    def __init__(self, url: str, on_frame: Callable[[str | bytes], Awaitable[None]], *,
                 reconnect_min: float = 1.0, reconnect_max: float = 60.0,
                 on_lost: Callable[[str], None] | None = None,
                 on_restored: Callable[[float], None] | None = None,
                 max_age: float = MAX_AGE):
        super().__init__(stream_url(url), reconnect_min=reconnect_min, reconnect_max=reconnect_max,
                         on_lost=on_lost, on_restored=on_restored)
        self._on_frame = on_frame
        self._max_age = max_age
        self._wanted: set[str] = set()
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._shutdown = asyncio.Event()  # serverShutdown: roll over now
        self._ids = itertools.count(1)
        self._recent: dict[str, deque[int]] = {}
        # Binance's spelling -> the canonical symbol (BTCUSDT -> BTC-USDT), for kline_bar; kept
        # current by the caller along with the channels.
        self.names: dict[str, str] = {}
        self.rollovers = 0
        self.open_klines = 0
        self.duplicates = 0

    # -- the hooks -----------------------------------------------------------------------------

    async def set_channels(self, channels: Iterable[str]) -> tuple[set[str], set[str]]:
        """Make `channels` (see channel()) the subscription; returns (added, removed) on the
        live connection."""
        async with self._lock:
            self._wanted = set(channels)
            link = self._link
            if link is None:
                return set(), set()  # the next connection subscribes to everything wanted
            try:
                return await self._reconcile(link)
            except ConnectionClosed:
                return set(), set()

    async def stop(self) -> None:
        """Close the connection cleanly (code 1000) and end run()."""
        self._stopping.set()
        link = self._link
        if link is not None:
            await link.ws.close(1000, "client shutting down")

    # -- connections -----------------------------------------------------------------------

    def _capped(self) -> set[str]:
        if len(self._wanted) <= MAX_STREAMS:
            return set(self._wanted)
        log.error("%s: %d streams wanted, but a Binance connection carries at most %d; subscribing the "
                  "first %d only", self.label, len(self._wanted), MAX_STREAMS, MAX_STREAMS)
        return set(sorted(self._wanted)[:MAX_STREAMS])

    async def _control(self, link: _Link, method: str, streams: Iterable[str]) -> list[int]:
        """SUBSCRIBE/UNSUBSCRIBE messages, paced under Binance's 5 messages a second."""
        ordered, ids = sorted(streams), []
        loop = asyncio.get_running_loop()
        for i in range(0, len(ordered), STREAMS_PER_MESSAGE):
            wait = link.last_sent + MESSAGE_INTERVAL - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            request_id = next(self._ids)
            await link.ws.send(json.dumps({"method": method, "params": ordered[i:i + STREAMS_PER_MESSAGE],
                                           "id": request_id}))
            link.last_sent = loop.time()
            ids.append(request_id)
        return ids

    async def _reconcile(self, link: _Link) -> tuple[set[str], set[str]]:
        wanted = self._capped()
        added, removed = wanted - link.subscribed, link.subscribed - wanted
        await self._control(link, "UNSUBSCRIBE", removed)
        await self._control(link, "SUBSCRIBE", added)
        link.subscribed = wanted
        return added, removed

    async def _connect(self) -> _Link:
        """A new connection subscribed to what is wanted, its subscriptions confirmed (the
        caller holds the lock, so the wanted set cannot change meanwhile)."""
        loop = asyncio.get_running_loop()
        # A ping every 20 s finds a dead connection; it is one message of the 5 a second allowed.
        ws = await connect(self.url, open_timeout=HANDSHAKE_TIMEOUT, close_timeout=1, max_size=MAX_FRAME_BYTES,
                           ping_interval=20, ping_timeout=20)
        link = _Link(ws, loop.time())
        try:
            wanted = self._capped()
            pending = set(await self._control(link, "SUBSCRIBE", wanted))
            deadline = loop.time() + HANDSHAKE_TIMEOUT
            while pending:
                frame = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
                reply = _reply(frame)
                if reply is None:
                    link.stash.append(frame)
                elif reply.get("id") in pending:
                    pending.discard(reply["id"])
                    if "code" in reply:
                        log.error("%s: Binance refused a subscription: %s", self.label, reply.get("msg"))
            link.subscribed = wanted
        except BaseException:
            await ws.close()
            raise
        self.connections += 1
        return link

    async def _open(self) -> _Link:
        async with self._lock:
            link = await self._connect()
            await self._reconcile(link)
            self._link = link
        log.info("%s: connected to %s, %d stream(s)", self.label, self.url, len(link.subscribed))
        return link

    async def _close(self, connection: _Link) -> None:
        await connection.ws.close()

    async def _successor(self, current: _Link) -> _Link | None:
        """A new connection that takes over from `current`, or None if it would not connect."""
        async with self._lock:
            try:
                link = await self._connect()
                await self._reconcile(link)
            except (OSError, TimeoutError, ConnectionClosed, ValueError) as exc:
                log.warning("%s: rollover connection failed (%s); keeping the current one", self.label,
                            describe(exc))
                return None
            self._link = link
            return link

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, connection: _Link) -> str:
        loop = asyncio.get_running_loop()
        link = connection
        pump = asyncio.create_task(self._pump(link))
        try:
            while True:
                due = max(0.0, link.opened + self._max_age - loop.time())
                shutdown = asyncio.create_task(self._shutdown.wait())
                done, _ = await asyncio.wait({pump, shutdown}, timeout=due, return_when=asyncio.FIRST_COMPLETED)
                shutdown.cancel()
                if pump in done:
                    return pump.result()
                if self._stopping.is_set():
                    continue  # stop() closed the socket: the pump ends next
                self._shutdown.clear()
                successor = await self._successor(link)
                if successor is None:
                    link.opened = loop.time() - self._max_age + ROLLOVER_RETRY
                    continue
                # The successor carries every stream now: close the old connection and
                # hand on what was still in flight on it before reading the new one.
                await link.ws.close(1000, "rolling over to a new connection")
                await pump
                self.rollovers += 1
                log.info("%s: rolled over to connection #%d", self.label, self.connections)
                link, pump = successor, asyncio.create_task(self._pump(successor))
        finally:
            if not pump.done():
                pump.cancel()
            async with self._lock:
                if self._link is link:
                    self._link = None

    async def _pump(self, link: _Link) -> str:
        stash, link.stash = link.stash, []
        for frame in stash:
            await self._dispatch(frame)
        try:
            async for frame in link.ws:
                await self._dispatch(frame)
            return f"closed by the server, code {link.ws.close_code}"
        except ConnectionClosed as exc:
            return describe(exc)

    async def _dispatch(self, frame: str | bytes) -> None:
        try:
            message: Any = json.loads(frame)
        except (ValueError, RecursionError):
            await self._on_frame(frame)  # the caller's parser reports it
            return
        if _is_reply(message):
            if "code" in message:
                log.error("%s: Binance refused a request: %s", self.label, shown(message.get("msg")))
            return
        data = message.get("data") if isinstance(message, dict) else None
        if isinstance(data, dict):
            if data.get("e") == "serverShutdown":
                log.warning("%s: Binance announced a server shutdown; moving to a new connection", self.label)
                self._shutdown.set()
                return
            k = data.get("k")
            if data.get("e") == "kline" and isinstance(k, dict):
                if k.get("x") is False:
                    self.open_klines += 1
                    return
                if k.get("x") is True and isinstance(k.get("t"), int):
                    recent = self._recent.setdefault(str(message.get("stream")), deque(maxlen=RECENT_KLINES))
                    if k["t"] in recent:
                        self.duplicates += 1
                        return
                    recent.append(k["t"])
        await self._on_frame(frame)


def _is_reply(message: Any) -> bool:
    return isinstance(message, dict) and "id" in message and ("result" in message or "code" in message)


def _reply(frame: str | bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    return message if _is_reply(message) else None
