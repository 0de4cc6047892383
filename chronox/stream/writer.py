"""The stream's write side: a bounded backlog from the socket reader, and the writer that
drains it into Kafka and the database in publish-mode order.

When writing falls behind, the backlog fills and the reader stops reading, so the
socket and TCP hold the excess, not memory, and nothing received is dropped.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Engine

from chronox import metrics, registry, rollups, ticks
from chronox.bars import RAW_LIMIT, UTC, Bar, QuarantinedRow
from chronox.delivery import Delivery, by_origin
from chronox.settings import Settings
from chronox.sources.reconnect import backoff_delay
from chronox.sources.websocket import am_to_bar, xa_to_bar
from chronox.store import TIMEFRAME, quarantine_rows, upsert_bars
from chronox.tick_store import Row

TickRows = dict[str, list[Row]]  # a batch's ticks (T and Q events) by dataset: trades, quotes
Step = Callable[[list[Bar], list[QuarantinedRow], TickRows], None]  # store or publish one batch

log = logging.getLogger(__name__)

ORIGIN = "polygon-ws"
CRYPTO_ORIGIN = "polygon-crypto-ws"
SHUTDOWN_WRITE_ATTEMPTS = 3


@dataclass
class StreamStats:
    connections: int = 0
    reconnects: int = 0
    subscribed: int = 0
    received: int = 0  # data events accepted from the socket
    written: int = 0  # bars committed
    ticks: int = 0  # trades and quotes committed (T and Q events)
    published: int = 0
    quarantined: int = 0
    lost: int = 0  # bars given up after repeated write failures at shutdown
    write_errors: int = 0
    backlog: int = 0
    backlog_high: int = 0
    backlog_full_waits: int = 0
    backlog_full_seconds: float = 0.0
    flushed_on_stop: int = 0
    gap_fills: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["backlog_full_seconds"] = round(self.backlog_full_seconds, 3)
        return out


class BadFrame(NamedTuple):
    raw: str
    reason: str
    origin: str = ORIGIN


class Backlog:
    """Bounded hand-off from the socket reader to the writer, counted in events."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.high_water = 0
        self._frames: collections.deque[list[Any]] = collections.deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._size

    @property
    def drained(self) -> bool:
        return self._closed and not self._frames

    def offer(self, events: list[Any], force: bool = False) -> bool:
        """Queue a frame's events unless that would pass the capacity (an empty backlog takes any frame)."""
        with self._cond:
            if not force and self._size and self._size + len(events) > self.capacity:
                return False
            self._frames.append(events)
            self._size += len(events)
            self.high_water = max(self.high_water, self._size)
            self._cond.notify()
            return True

    def take(self, limit: int, timeout: float) -> list[Any]:
        """Whole frames up to about `limit` events; waits up to `timeout` for the first one."""
        with self._cond:
            if not self._frames and not self._closed:
                self._cond.wait(timeout)
            batch: list[Any] = []
            while self._frames and len(batch) < limit:
                batch.extend(self._frames.popleft())
            self._size -= len(batch)
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class BarWriter:
    """Drains the backlog in two overlapping stages, Kafka and the database, in publish-mode order.

    While one batch is in the second stage the next is in the first, so the two sinks
    work at the same time. kafka-first: a batch is stored only after Kafka acknowledged it;
    db-first: published only after it committed. A failing step is retried with backoff
    while the backlog fills up and, once full, pauses the socket reader.
    """

    def __init__(self, settings: Settings, engine: Engine, backlog: Backlog, stats: StreamStats):
        self._settings = settings
        self._engine = engine
        self._delivery = Delivery(settings, engine)
        # symbol -> (market, provider) of what the process subscribed: what envelopes name.
        # Replaced whole by the registry follower, never changed in place.
        self.origins: dict[str, tuple[str, str]] = {}
        self._backlog = backlog
        self._stats = stats
        self._seen: set[str] = set()
        self._abort = threading.Event()
        self._handoff: queue.Queue[tuple[list[Bar], list[QuarantinedRow], TickRows] | None] = queue.Queue(maxsize=2)
        first, second = self._delivery.stages(self._publish, self._store)
        self._threads = (
            threading.Thread(target=self._first_stage, args=(first,), name="chronox-stream-stage1", daemon=True),
            threading.Thread(target=self._second_stage, args=(second,), name="chronox-stream-stage2", daemon=True),
        )

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def abort(self) -> None:
        """Stop retrying failed writes (a second stop signal)."""
        self._abort.set()

    def _first_stage(self, step: Step) -> None:
        while not self._backlog.drained:
            events = self._backlog.take(self._settings.stream_batch, timeout=0.5)
            if events:
                bars, bad, tick_rows = _validated(events)
                if self._retrying(step, bars, bad, tick_rows):
                    self._handoff.put((bars, bad, tick_rows))
        self._handoff.put(None)

    def _second_stage(self, step: Step) -> None:
        next_stamp = time.monotonic() + self._settings.stream_stamp_seconds
        while True:
            try:
                item = self._handoff.get(timeout=0.5)
            except queue.Empty:
                item = ([], [], {})
            if item is None:
                break
            if (item[0] or item[1] or item[2]) and self._retrying(step, *item):
                self._seen.update(b.symbol for b in item[0])
            if time.monotonic() >= next_stamp:
                self._stamp()
                next_stamp = time.monotonic() + self._settings.stream_stamp_seconds
        self._stamp()
        self._delivery.close()  # the producer, after its last flush

    def _retrying(self, step: Step, bars: list[Bar], bad: list[QuarantinedRow], tick_rows: TickRows) -> bool:
        attempt = 0
        while True:
            try:
                step(bars, bad, tick_rows)
                return True
            except Exception as exc:  # database or Kafka: both are retried the same way
                attempt += 1
                self._stats.write_errors += 1
                if self._abort.is_set() or (self._backlog.drained and attempt >= SHUTDOWN_WRITE_ATTEMPTS):
                    self._stats.lost += len(bars) + len(bad) + sum(len(rows) for rows in tick_rows.values())
                    log.error("giving up on %d stream bar(s) after %d attempt(s): %s", len(bars), attempt, exc)
                    return False
                delay = backoff_delay(attempt, 0.5, 30.0)
                log.error("%s of %d stream bar(s) failed (%s: %s); retrying in %.1fs; the backlog holds %d",
                          step.__name__.strip("_"), len(bars), type(exc).__name__, exc, delay, len(self._backlog))
                self._abort.wait(delay)

    def _publish(self, bars: list[Bar], bad: list[QuarantinedRow], tick_rows: TickRows) -> None:
        for origin, group in by_origin(bars, self.origins).items():
            self._stats.published += self._delivery.publish_bars(group, TIMEFRAME, kind="stream", origin=origin)
        for dataset, rows in tick_rows.items():  # trades and quotes: US stocks from Polygon
            self._stats.published += self._delivery.publish_ticks(dataset, rows)

    def _store(self, bars: list[Bar], bad: list[QuarantinedRow], tick_rows: TickRows) -> None:
        with self._engine.begin() as conn:
            upsert_bars(conn, bars)
            if bars:
                times = [b.ts for b in bars]
                rollups.refresh(conn, sorted({b.symbol for b in bars}), rollups.hour_floor(min(times)),
                                rollups.hour_floor(max(times)) + rollups.HOUR)
            quarantine_rows(conn, bad)
            stored_ticks = ticks.store_stream(conn, tick_rows)
        for (market, provider), group in by_origin(bars, self.origins).items():
            metrics.stream_stored(provider, (b.ts for b in group), market)
        metrics.trades_ingested(stored_ticks.get(ticks.TRADES, 0))
        self._stats.written += len(bars)
        self._stats.ticks += sum(stored_ticks.values())
        self._stats.quarantined += len(bad)

    def _stamp(self) -> None:
        """One UPDATE for every symbol seen since the last stamp; clears a stale flag the monitor set."""
        if not self._seen:
            return
        symbols, self._seen = sorted(self._seen), set()
        try:
            registry.stamp_stream(self._engine, symbols, dt.datetime.now(UTC))
        except Exception as exc:  # the next stamp retries; bars are already stored
            self._seen.update(symbols)
            log.warning("could not stamp last_stream for %d symbol(s): %s", len(symbols), exc)


# Event shape -> (converter, quarantine origin, the field naming the symbol).
CONVERTERS: dict[str, tuple[Callable[[Any], Bar], str, str]] = {
    "XA": (xa_to_bar, CRYPTO_ORIGIN, "pair"),
}


def _validated(events: Sequence[Any]) -> tuple[list[Bar], list[QuarantinedRow], TickRows]:
    """Bars of the backlog's events: Polygon's AM (stocks) and XA (crypto) events, bars a
    feed decoded already (Binance's closed klines), and bad frames for the quarantine;
    and the ticks of its T and Q events (chronox.ticks), by dataset."""
    bars: list[Bar] = []
    bad: list[QuarantinedRow] = []
    tick_rows: TickRows = {}
    for event in events:
        if isinstance(event, Bar):
            bars.append(event)
            continue
        if isinstance(event, BadFrame):
            bad.append(QuarantinedRow(event.origin, None, event.raw, event.reason))
            continue
        kind = event.get("ev") if isinstance(event, dict) else None
        if kind in ticks.STREAM_KINDS:
            try:
                dataset, row = ticks.stream_tick(event)
                tick_rows.setdefault(dataset, []).append(row)
            except ValueError as exc:
                symbol = event.get("sym")
                bad.append(QuarantinedRow(ORIGIN, str(symbol)[:32] if symbol is not None else None,
                                          json.dumps(event)[:RAW_LIMIT], str(exc)))
            continue
        convert, origin, key = CONVERTERS.get(kind, (am_to_bar, ORIGIN, "sym")) if isinstance(kind, str) \
            else (am_to_bar, ORIGIN, "sym")
        try:
            bars.append(convert(event))
        except ValueError as exc:
            symbol = event.get(key) if isinstance(event, dict) else None
            bad.append(QuarantinedRow(origin, str(symbol)[:32] if symbol is not None else None,
                                      json.dumps(event)[:RAW_LIMIT], str(exc)))
    return bars, bad, tick_rows
