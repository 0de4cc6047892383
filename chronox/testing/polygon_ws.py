"""Local stand-in for Polygon.io's real-time stream (wss://socket.polygon.io).

Speaks the same JSON protocol as Polygon so both ``polygon.WebSocketClient``
and plain ``websockets`` clients can be tested against it:

* on connect the server sends
  ``[{"ev":"status","status":"connected","message":"Connected Successfully"}]``;
* ``{"action":"auth","params":KEY}`` -> ``auth_success`` (or ``auth_failed``
  followed by a close with code 1008);
* ``{"action":"subscribe","params":"AM.AAPL,AM.MSFT"}`` -> one
  ``{"ev":"status","status":"success","message":"subscribed to: AM.AAPL"}``
  per channel, all in one array; ``unsubscribe`` answers
  ``"unsubscribed to: ..."``;
* data frames are JSON arrays of events (``{"ev":"AM","sym":...}``).

To point ``polygon.WebSocketClient`` here use
``WebSocketClient(api_key=..., feed=stream.feed, market="stocks", secure=False)``
(the client builds ``ws://{feed}/{market}``).  It reconnects immediately after
an abnormal close (``drop_connections``) and resubscribes, but stops for good
after a clean close (``close_connections`` with code 1000).

Compression is off by default so a throughput benchmark measures the client,
not zlib running in this server thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chronox.testing.servers import WebSocketStandIn


def _status(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


@dataclass
class _Conn:
    id: int
    ws: ServerConnection
    authenticated: bool = False
    subs: set[str] = field(default_factory=set)

    def wants(self, channel: str) -> bool:
        prefix = channel.split(".", 1)[0]
        return channel in self.subs or f"{prefix}.*" in self.subs


class FakePolygonStream(WebSocketStandIn[_Conn]):
    """Polygon stream server on its own thread and event loop."""

    def __init__(
        self,
        api_key: str = "test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        compression: str | None = None,
    ):
        super().__init__(host, port)
        self.api_key = api_key
        self._compression = compression
        self._messages: list[Any] = []
        self._connections = 0
        self._blast_frames: list[str] = []
        self._blast_channels: set[str] = set()
        self._blast_events = 0
        self.port = 0
        self.feed = ""
        self.url = ""

    # -- lifecycle -------------------------------------------------------

    def _listening(self, port: int) -> None:
        self.port = port
        self.feed = f"{self._host}:{self.port}"
        self.url = f"ws://{self.feed}/stocks"

    async def _open(self) -> Server:
        # A short close_timeout: clients that vanish without finishing the
        # close handshake would otherwise pin a handler for 10 s.
        return await serve(
            self._handle, self._host, self._port, compression=self._compression, close_timeout=1
        )

    # -- observation -----------------------------------------------------

    @property
    def subscriptions(self) -> set[str]:
        """Union of the channels of all open connections."""
        with self._lock:
            return set().union(*(c.subs for c in self._conns.values()))

    @property
    def subscriptions_by_connection(self) -> dict[int, set[str]]:
        with self._lock:
            return {cid: set(c.subs) for cid, c in self._conns.items()}

    @property
    def messages_received(self) -> list[Any]:
        """Client messages in arrival order: decoded JSON, or the raw text
        when it was not valid JSON."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """Connections accepted since start (reconnects count again)."""
        with self._lock:
            return self._connections

    @property
    def authenticated_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns.values() if c.authenticated)

    # -- protocol --------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(next(self._ids), ws)
        with self._lock:
            self._connections += 1
            self._conns[conn.id] = conn
        try:
            await ws.send(json.dumps([_status("connected", "Connected Successfully")]))
            async for raw in ws:
                try:
                    msg: Any = json.loads(raw)
                except ValueError:
                    msg = raw
                with self._lock:
                    self._messages.append(msg)
                reply, close = self._respond(conn, msg)
                if reply:
                    await ws.send(json.dumps(reply))
                if close:
                    await ws.close(1008, "authentication failed")
                    return
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._conns.pop(conn.id, None)

    def _respond(self, conn: _Conn, msg: Any) -> tuple[list[dict[str, str]], bool]:
        """Reply to one client message; the flag asks to close afterwards."""
        if not isinstance(msg, dict):
            return [_status("error", "invalid message")], False
        action, params = msg.get("action"), msg.get("params")
        if action == "auth":
            if params == self.api_key:
                with self._lock:
                    conn.authenticated = True
                return [_status("auth_success", "authenticated")], False
            return [_status("auth_failed", "authentication failed")], True
        if action not in ("subscribe", "unsubscribe"):
            return [_status("error", f"unknown action: {action}")], False
        if not conn.authenticated:
            return [_status("error", "not authorized")], False
        channels = [c.strip() for c in str(params or "").split(",") if c.strip()]
        with self._lock:
            if action == "subscribe":
                conn.subs.update(channels)
            else:
                conn.subs.difference_update(channels)
        verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
        return [_status("success", f"{verb}: {c}") for c in channels], False

    def _targets(self, channels: set[str] | None = None) -> list[_Conn]:
        with self._lock:
            conns = [c for c in self._conns.values() if c.authenticated]
        if channels is None:
            return conns
        return [c for c in conns if any(c.wants(ch) for ch in channels)]

    # -- pushing data ----------------------------------------------------

    def send_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Send events (each with "ev" and "sym", or "pair" on the crypto cluster) as one JSON
        array to every authenticated connection, keeping only the events it subscribed to.
        Returns the number of frames sent."""
        events = list(events)

        async def push() -> int:
            sent = 0
            for conn in self._targets():
                mine = [e for e in events if conn.wants(f"{e.get('ev')}.{e.get('sym', e.get('pair'))}")]
                if mine:
                    try:
                        await conn.ws.send(json.dumps(mine))
                        sent += 1
                    except ConnectionClosed:
                        pass
            return sent

        return self._call(push())

    def send_am(self, events: Iterable[dict[str, Any]]) -> int:
        return self.send_events({"ev": "AM", **e} for e in events)

    def send_trades(self, events: Iterable[dict[str, Any]]) -> int:
        """Trade events (`T.<sym>`), shaped as polygon_tick_examples.T_EVENT: t is epoch ms."""
        return self.send_events({"ev": "T", **e} for e in events)

    def send_quotes(self, events: Iterable[dict[str, Any]]) -> int:
        """Quote events (`Q.<sym>`), shaped as polygon_tick_examples.Q_EVENT."""
        return self.send_events({"ev": "Q", **e} for e in events)

    def send_raw(self, text: str | bytes, authenticated_only: bool = True) -> int:
        """Send an arbitrary frame (hostile-input tests); returns frames sent."""

        async def push() -> int:
            if authenticated_only:
                conns = self._targets()
            else:
                with self._lock:
                    conns = list(self._conns.values())
            sent = 0
            for conn in conns:
                try:
                    await conn.ws.send(text)
                    sent += 1
                except ConnectionClosed:
                    pass
            return sent

        return self._call(push())

    def drop_connections(self) -> int:
        """Abort every TCP connection without a close frame, so clients see an
        abnormal closure (1006) and should reconnect."""

        async def drop() -> int:
            with self._lock:
                conns = list(self._conns.values())
                self._conns.clear()
            for conn in conns:
                conn.ws.transport.abort()
            return len(conns)

        return self._call(drop())

    def close_connections(self, code: int = 1000, reason: str = "") -> int:
        """Close every connection with a proper close frame."""

        async def close() -> int:
            with self._lock:
                conns = list(self._conns.values())
            await asyncio.gather(*(c.ws.close(code, reason) for c in conns), return_exceptions=True)
            return len(conns)

        return self._call(close())

    # -- throughput ------------------------------------------------------

    def prepare_blast(
        self,
        symbols: Sequence[str],
        count: int,
        batch: int = 100,
        start_ms: int = 1_704_205_800_000,  # 2024-01-02 14:30 UTC, a session open
    ) -> None:
        """Pre-render ``count`` AM events cycling over ``symbols`` into frames
        of ``batch`` events, so ``blast()`` spends its time sending only.
        Event i is for symbols[i % len(symbols)], minute i // len(symbols)."""
        n = len(symbols)
        events = []
        for i in range(count):
            minute = i // n
            start = start_ms + minute * 60_000
            price = round(100 + (i % 1000) * 0.01, 2)
            events.append({
                "ev": "AM", "sym": symbols[i % n], "v": 100 + i % 50, "av": (minute + 1) * 1000,
                "op": 100.0, "vw": price, "o": price, "c": round(price + 0.01, 2),
                "h": round(price + 0.02, 2), "l": round(price - 0.01, 2), "a": price, "z": 10,
                "s": start, "e": start + 60_000,
            })
        self._blast_frames = [json.dumps(events[i:i + batch]) for i in range(0, count, batch)]
        self._blast_channels = {f"AM.{s}" for s in symbols}
        self._blast_events = count

    def blast(self) -> float:
        """Send the prepared frames to every authenticated connection
        subscribed to any of the blast's symbols (frames are not filtered per
        connection).  Returns the seconds spent sending."""
        frames, channels = self._blast_frames, self._blast_channels

        async def push() -> float:
            targets = self._targets(channels)
            began = time.perf_counter()
            for frame in frames:
                for conn in targets:
                    try:
                        await conn.ws.send(frame)
                    except ConnectionClosed:
                        pass
            return time.perf_counter() - began

        return self._call(push(), timeout=None)

    def blast_am(self, symbols: Sequence[str], count: int, batch: int = 100) -> float:
        self.prepare_blast(symbols, count, batch)
        return self.blast()
