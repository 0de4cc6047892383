"""The reconnect loop of a long-lived market-data socket, apart from any provider's protocol.

`run()` opens a connection (`_open`, the subclass's handshake and subscriptions), reads it
(`_read`, until it is lost; it returns why), reports the loss (`on_lost(reason)`) and
reconnects with backoff_delay; once a later connection is up it
reports `on_restored(seconds_down)`, so the caller can fill the minutes it missed. A
connection that lived STABLE_SECONDS starts the backoff over. `_open` may raise one of
`fatal` (e.g. a rejected key) to end run() for good.

PolygonStream (chronox.sources.websocket) and BinanceStream (chronox.sources.binance_ws)
are built on it.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Generic, TypeVar

from websockets.exceptions import WebSocketException

log = logging.getLogger(__name__)

STABLE_SECONDS = 30.0  # a connection that lived this long starts the backoff over
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, WebSocketException, ValueError)


def backoff_delay(attempt: int, low: float, high: float,
                  rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: half of the step fixed, half random.

    The random half keeps many clients (or restarts) from reconnecting in lockstep.
    """
    step = min(max(high, low), low * 2 ** max(attempt - 1, 0))
    return step / 2 + rng() * step / 2

Connection = TypeVar("Connection")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ReconnectingStream(Generic[Connection]):
    fatal: tuple[type[BaseException], ...] = ()
    label = "stream"

    def __init__(self, url: str, *, reconnect_min: float = 1.0, reconnect_max: float = 60.0,
                 on_lost: Callable[[str], None] | None = None,
                 on_restored: Callable[[float], None] | None = None):
        self.url = url
        self._on_lost = on_lost or (lambda reason: None)
        self._on_restored = on_restored or (lambda seconds: None)
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._stopping = asyncio.Event()
        self.connections = 0
        self.reconnects = 0

    async def _open(self) -> Connection:
        raise NotImplementedError

    async def _read(self, connection: Connection) -> str:
        """Read until the connection is lost; the reason, for the log and on_lost."""
        raise NotImplementedError

    async def _close(self, connection: Connection) -> None:
        raise NotImplementedError

    def _restored_detail(self) -> str:
        """What the reconnect's log line adds (e.g. how many channels were re-subscribed)."""
        return ""

    async def run(self) -> None:
        """Connect and read until stop(); raises what `_open` raises of `fatal`."""
        loop = asyncio.get_running_loop()
        attempt = 0
        down_since: float | None = None
        while not self._stopping.is_set():
            try:
                connection = await self._open()
            except self.fatal:
                raise
            except CONNECT_ERRORS as exc:
                attempt += 1
                await self._pause(attempt, f"connect to {self.url} failed: {describe(exc)}")
                continue
            if self._stopping.is_set():
                await self._close(connection)
                break
            opened = loop.time()
            if down_since is not None:
                self.reconnects += 1
                seconds = opened - down_since
                log.warning("%s reconnected after %.1fs (connection #%d)%s", self.label, seconds, self.connections,
                            self._restored_detail())
                self._on_restored(seconds)
                down_since = None
            reason = await self._read(connection)
            if self._stopping.is_set():
                break
            down_since = loop.time()
            self._on_lost(reason)
            attempt = 1 if loop.time() - opened >= STABLE_SECONDS else attempt + 1
            await self._pause(attempt, f"connection lost ({reason})")

    async def _pause(self, attempt: int, why: str) -> None:
        delay = backoff_delay(attempt, self._reconnect_min, self._reconnect_max)
        log.warning("%s %s; reconnecting in %.2fs (attempt %d)", self.label, why, delay, attempt)
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            pass
