"""Polygon's stocks websocket: handshake, subscriptions, and reconnects with backoff.

Protocol: the server greets with a `connected` status; the client sends
`{"action": "auth", "params": KEY}` and gets `auth_success` or `auth_failed`; then
`subscribe`/`unsubscribe` with comma-separated channels (`AM.AAPL,AM.MSFT`). Data
frames are JSON arrays of events (`{"ev": "AM", "sym": ..., "s": <epoch ms>, ...}`).

polygon-api-client's WebSocketClient is not used: it reconnects at once with no
backoff, gives no hook to log a reconnect or learn how long the connection was down,
stops for good when the server closes with code 1000, and awaits the message handler
on its reader. This module does those things itself on top of `websockets`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chronox.bars import Bar, bar_problem, ts_from_ms
from chronox.sources import shown
from chronox.sources.reconnect import ReconnectingStream, describe
from chronox.strategy import SYMBOL_PATTERN

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a whole-market minute can arrive as one frame
CHANNELS_PER_MESSAGE = 500


class AuthFailed(Exception):
    """The server rejected the API key; retrying cannot help."""


def channel(symbol: str) -> str:
    return f"AM.{symbol}"


def crypto_channel(symbol: str) -> str:
    """Polygon crypto cluster's minute aggregates of a canonical pair: XA.BTC-USD."""
    return f"XA.{symbol}"


CRYPTO_PAIR = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")


def split_frame(text: str | bytes) -> tuple[list[Any], list[dict[str, Any]]]:
    """(data events, status messages) of one frame; raises ValueError for a non-array frame."""
    try:
        # orjson: decoding the frames was a quarter of the stream process's time.
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        # What orjson refuses but the standard library reads (NaN, a number past a double, a
        # lone surrogate) stays one bad event of the frame, and what neither reads one
        # unreadable frame with the standard library's reason, as before.
        try:
            items = json.loads(text)
        except RecursionError:
            # A frame of deeply nested arrays must be one bad frame, not the end of the reader.
            raise ValueError("frame is nested too deeply") from None
    if not isinstance(items, list):
        raise ValueError("frame is not a JSON array")
    events: list[Any] = []
    statuses: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict) and item.get("ev") == "status":
            statuses.append(item)
        else:
            events.append(item)
    return events, statuses


def am_to_bar(event: Any) -> Bar:
    """A minute-aggregate event as a bar (window start from `s`, epoch ms); ValueError if unusable."""
    if not isinstance(event, dict) or event.get("ev") != "AM":
        raise ValueError("not an AM event")
    symbol = event.get("sym")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError(f"invalid symbol {shown(symbol)}")
    return _aggregate_bar(symbol, event)


def xa_to_bar(event: Any) -> Bar:
    """A crypto minute-aggregate event (`XA`, Polygon's crypto cluster) as a bar: `pair` is
    `BTC-USD`, the window start `s` epoch ms; ValueError if unusable."""
    if not isinstance(event, dict) or event.get("ev") != "XA":
        raise ValueError("not an XA event")
    pair = event.get("pair")
    if not isinstance(pair, str) or not CRYPTO_PAIR.fullmatch(pair):
        raise ValueError(f"invalid pair {shown(pair)}")
    return _aggregate_bar(pair, event)


def _aggregate_bar(symbol: str, event: dict[str, Any]) -> Bar:
    try:
        start = event["s"]
        if not isinstance(start, int) or isinstance(start, bool) or start <= 0:
            raise ValueError(f"window start s={shown(start)} is not epoch milliseconds")
        values = [event[k] for k in ("o", "h", "l", "c", "v")]
        vwap = event.get("vw")
        if any(isinstance(x, bool) for x in (*values, vwap)):  # float(True) would be a price of 1
            raise ValueError("non-numeric field: true/false where a number belongs")
        o, h, low, c, v = (float(x) for x in values)
        vwap = None if vwap is None else float(vwap)
    except KeyError as exc:
        raise ValueError(f"missing field {shown(exc.args[0])}") from None
    except (TypeError, OverflowError) as exc:  # OverflowError: an integer too large for a float
        raise ValueError(f"non-numeric field: {exc}") from None
    bar = Bar(symbol, ts_from_ms(start), o, h, low, c, v, vwap, None, "stream")
    problem = bar_problem(bar)
    if problem:
        raise ValueError(problem)
    return bar


class PolygonStream(ReconnectingStream[ClientConnection]):
    """One logical subscription to Polygon's websocket that survives connection loss.

    `on_frame` is awaited for every data frame; it should hand the frame off quickly.
    `on_lost(reason)` is called when a live connection drops and `on_restored(seconds_down)`
    when a later one is authenticated and re-subscribed, so the caller can account for
    the minutes it missed. `run()` raises AuthFailed when the key is rejected.
    """

    fatal = (AuthFailed,)
    label = "stream"

    def __init__(self, url: str, api_key: str, on_frame: Callable[[str | bytes], Awaitable[None]], *,
                 reconnect_min: float = 1.0, reconnect_max: float = 60.0,
                 on_lost: Callable[[str], None] | None = None,
                 on_restored: Callable[[float], None] | None = None):
        super().__init__(url, reconnect_min=reconnect_min, reconnect_max=reconnect_max, on_lost=on_lost,
                         on_restored=on_restored)
        self._api_key = api_key
        self._on_frame = on_frame
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._ws: ClientConnection | None = None
        self._lock = asyncio.Lock()

    async def set_channels(self, channels: Iterable[str]) -> tuple[set[str], set[str]]:
        """Make `channels` the subscription; returns (added, removed) on the live connection."""
        async with self._lock:
            self._wanted = set(channels)
            ws = self._ws
            if ws is None:
                return set(), set()  # the next connection subscribes to everything wanted
            added, removed = self._wanted - self._subscribed, self._subscribed - self._wanted
            try:
                await _send_action(ws, "unsubscribe", removed)
                await _send_action(ws, "subscribe", added)
            except ConnectionClosed:
                return set(), set()
            self._subscribed = set(self._wanted)
            return added, removed

    async def stop(self) -> None:
        """Close the connection cleanly (code 1000) and end run()."""
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "client shutting down")

    async def _open(self) -> ClientConnection:
        ws = await connect(self.url, open_timeout=HANDSHAKE_TIMEOUT, close_timeout=1,
                           max_size=MAX_FRAME_BYTES, ping_interval=20, ping_timeout=20)
        try:
            await self._authenticate(ws)
            async with self._lock:
                wanted = set(self._wanted)
                await _send_action(ws, "subscribe", wanted)
                self._subscribed = wanted
                self._ws = ws
        except BaseException:
            await ws.close()
            raise
        self.connections += 1
        return ws

    async def _close(self, connection: ClientConnection) -> None:
        await connection.close()

    def _restored_detail(self) -> str:
        return f": authenticated, re-subscribed {len(self._subscribed)} channel(s)"

    async def _authenticate(self, ws: ClientConnection) -> None:
        await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT)  # the `connected` greeting
        await ws.send(json.dumps({"action": "auth", "params": self._api_key}))
        while True:
            _, statuses = split_frame(await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT))
            for status in statuses:
                if status.get("status") == "auth_success":
                    return
                if status.get("status") == "auth_failed":
                    raise AuthFailed(f"Polygon rejected the API key at {self.url}: "
                                     f"{status.get('message') or 'auth_failed'}")
                log.warning("stream status during login: %s", status.get("message") or status)

    async def _read(self, ws: ClientConnection) -> str:
        try:
            async for frame in ws:
                await self._on_frame(frame)
            return f"closed by the server, code {ws.close_code}"
        except ConnectionClosed as exc:
            return describe(exc)
        finally:
            async with self._lock:
                self._ws = None
                self._subscribed = set()


async def _send_action(ws: ClientConnection, action: str, channels: set[str]) -> None:
    ordered = sorted(channels)
    for i in range(0, len(ordered), CHANNELS_PER_MESSAGE):
        await ws.send(json.dumps({"action": action, "params": ",".join(ordered[i:i + CHANNELS_PER_MESSAGE])}))
