"""The `chronox stream` process, stream activation, and the stream health check.

Polygon allows one websocket per market and account, so streaming is one long-running
process, not a Celery task. Inside it:

- the socket reader (asyncio, main thread) decodes frames and hands AM events to a
  bounded backlog; when the backlog is full it stops reading, so the pressure goes back
  to the socket instead of into memory, and the wait is logged and counted;
- two writer threads take batches from the backlog, validate them into bars, and
  publish and store them in the order of the publish mode, Kafka and the database
  working on consecutive batches at the same time; `last_stream` is stamped in one
  UPDATE every CHRONOX_STREAM_STAMP_SECONDS;
- the registry follower re-reads the registry every CHRONOX_STREAM_POLL_SECONDS, and at
  once when the `stream` phase signals over Redis pub/sub (CONTROL_CHANNEL);
- after a reconnect, the window the connection was down is handed to REST gap fill.

No Celery here: gap fills go through the `gap_fill` callable the caller passes in.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from kafka.errors import KafkaError
from sqlalchemy import Engine, and_, case, create_engine, make_url, update

from chronox import registry
from chronox.bars import Bar, isoformat_utc
from chronox.calendar import NEW_YORK, in_extended_session, session
from chronox.db import get_engine
from chronox.publish import ENVELOPE_VERSION, PublishError, announce, drop_publisher, get_mirror, get_publisher
from chronox.settings import ConfigError, Settings
from chronox.sources.flatfiles import QuarantinedRow
from chronox.sources.websocket import PolygonStream, am_to_bar, backoff_delay, channel, split_frame
from chronox.store import quarantine_rows, upsert_bars
from chronox.strategy import has_phase, validate_symbol

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
CONTROL_CHANNEL = "chronox.control.stream"  # Redis pub/sub: "re-read the registry now"
STALE_PREFIX = registry.STREAM_STALE_PREFIX
ORIGIN = "polygon-ws"
STATS_SECONDS = 60.0
BACKLOG_WARN_SECONDS = 10.0
# A bar is sent after its minute closes, so the minutes just before a drop may have been in flight.
GAP_LEAD = dt.timedelta(minutes=2)
SHUTDOWN_WRITE_ATTEMPTS = 3


def _utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def _moment(value: str | dt.datetime | None) -> dt.datetime:
    if value is None:
        return _utcnow()
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def streaming_symbols(engine: Engine) -> list[str]:
    """Enabled registry symbols whose strategy has the stream phase."""
    return [r["symbol"] for r in registry.list_symbols(engine, enabled_only=True)
            if has_phase(r["strategy"], "stream")]


@dataclass(frozen=True)
class GapFill:
    """Minutes the stream missed for some symbols, to be filled from REST (the api phase)."""

    symbols: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime

    @property
    def days(self) -> tuple[str, str]:
        """First and last New York day of the window, as the backfill task takes them."""
        return (self.start.astimezone(NEW_YORK).date().isoformat(),
                self.end.astimezone(NEW_YORK).date().isoformat())

    def as_dict(self) -> dict[str, Any]:
        first, last = self.days
        return {"symbols": len(self.symbols), "from": isoformat_utc(self.start), "to": isoformat_utc(self.end),
                "start": first, "end": last}


GapFillSender = Callable[[GapFill], int]


@dataclass
class StreamStats:
    connections: int = 0
    reconnects: int = 0
    subscribed: int = 0
    received: int = 0  # data events accepted from the socket
    written: int = 0  # bars committed
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
        self._backlog = backlog
        self._stats = stats
        self._seen: set[str] = set()
        self._abort = threading.Event()
        self._handoff: queue.Queue[tuple[list[Bar], list[QuarantinedRow]] | None] = queue.Queue(maxsize=2)
        steps = (self._publish, self._store)
        first, second = steps if settings.publish_mode == "kafka-first" else steps[::-1]
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

    def _first_stage(self, step: Callable[[list[Bar], list[QuarantinedRow]], None]) -> None:
        while not self._backlog.drained:
            events = self._backlog.take(self._settings.stream_batch, timeout=0.5)
            if events:
                bars, bad = _validated(events)
                if self._retrying(step, bars, bad):
                    self._handoff.put((bars, bad))
        self._handoff.put(None)

    def _second_stage(self, step: Callable[[list[Bar], list[QuarantinedRow]], None]) -> None:
        next_stamp = time.monotonic() + self._settings.stream_stamp_seconds
        while True:
            try:
                item = self._handoff.get(timeout=0.5)
            except queue.Empty:
                item = ([], [])
            if item is None:
                break
            if (item[0] or item[1]) and self._retrying(step, *item):
                self._seen.update(b.symbol for b in item[0])
            if time.monotonic() >= next_stamp:
                self._stamp()
                next_stamp = time.monotonic() + self._settings.stream_stamp_seconds
        self._stamp()
        if self._settings.kafka_enabled:
            drop_publisher(self._settings)  # closes the producer after its last flush

    def _retrying(self, step: Callable[[list[Bar], list[QuarantinedRow]], None], bars: list[Bar],
                  bad: list[QuarantinedRow]) -> bool:
        attempt = 0
        while True:
            try:
                step(bars, bad)
                return True
            except Exception as exc:  # database or Kafka: both are retried the same way
                attempt += 1
                self._stats.write_errors += 1
                if isinstance(exc, (PublishError, KafkaError)):
                    drop_publisher(self._settings)
                if self._abort.is_set() or (self._backlog.drained and attempt >= SHUTDOWN_WRITE_ATTEMPTS):
                    self._stats.lost += len(bars) + len(bad)
                    log.error("giving up on %d stream bar(s) after %d attempt(s): %s", len(bars), attempt, exc)
                    return False
                delay = backoff_delay(attempt, 0.5, 30.0)
                log.error("%s of %d stream bar(s) failed (%s: %s); retrying in %.1fs; the backlog holds %d",
                          step.__name__.strip("_"), len(bars), type(exc).__name__, exc, delay, len(self._backlog))
                self._abort.wait(delay)

    def _publish(self, bars: list[Bar], bad: list[QuarantinedRow]) -> None:
        publisher = get_publisher(self._settings) if self._settings.kafka_enabled else None
        if publisher is None or not bars:
            return
        iso: dict[dt.datetime, str] = {}  # a frame holds many symbols of the same minute
        for b in bars:
            ts = iso.get(b.ts) or iso.setdefault(b.ts, isoformat_utc(b.ts) or "")
            publisher.send_bar(b.symbol, "1m", ts, b.open, b.high, b.low, b.close, b.volume, b.source,
                               kind="stream")
        publisher.flush()
        self._stats.published += len(bars)

    def _store(self, bars: list[Bar], bad: list[QuarantinedRow]) -> None:
        with self._engine.begin() as conn:
            upsert_bars(self._engine, bars, conn=conn)
            quarantine_rows(conn, bad)
        self._stats.written += len(bars)
        self._stats.quarantined += len(bad)

    def _stamp(self) -> None:
        """One UPDATE for every symbol seen since the last stamp; clears a stale flag the monitor set."""
        if not self._seen:
            return
        symbols, self._seen = sorted(self._seen), set()
        table = registry.REGISTRY
        stale = and_(table.c.status == "error", table.c.error_message.like(f"{STALE_PREFIX}%"))
        try:
            with self._engine.begin() as conn:
                conn.execute(update(table).where(table.c.symbol.in_(symbols)).values(
                    last_stream=_utcnow(),
                    status=case((stale, "completed"), else_=table.c.status),
                    error_message=case((stale, None), else_=table.c.error_message)))
        except Exception as exc:  # the next stamp retries; bars are already stored
            self._seen.update(symbols)
            log.warning("could not stamp last_stream for %d symbol(s): %s", len(symbols), exc)


def writer_engine(url: str) -> Engine:
    """The engine bars are written with.

    store.upsert_bars sends one INSERT .. ON CONFLICT per bar through executemany; with
    psycopg2's execute_batch they travel in pages instead of one round trip each
    (measured about 1.9x on PostgreSQL). Other databases use the shared engine.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() != "psycopg2":
        return get_engine(url)
    return create_engine(url, executemany_mode="values_plus_batch", executemany_batch_page_size=5000,
                         pool_pre_ping=True, pool_size=3, max_overflow=2)


def _validated(events: Sequence[Any]) -> tuple[list[Bar], list[QuarantinedRow]]:
    bars: list[Bar] = []
    bad: list[QuarantinedRow] = []
    for event in events:
        if isinstance(event, BadFrame):
            bad.append(QuarantinedRow(ORIGIN, None, event.raw, event.reason))
            continue
        try:
            bars.append(am_to_bar(event))
        except ValueError as exc:
            symbol = event.get("sym") if isinstance(event, dict) else None
            bad.append(QuarantinedRow(ORIGIN, str(symbol)[:32] if symbol is not None else None,
                                      json.dumps(event)[:2000], str(exc)))
    return bars, bad


class StreamProcess:
    """Runs until SIGTERM/SIGINT; `run()` returns the exit code, raises AuthFailed for a bad key."""

    def __init__(self, settings: Settings, gap_fill: GapFillSender | None = None):
        if not settings.polygon_api_key:
            raise ConfigError("POLYGON_API_KEY is not set: `chronox stream` needs a Polygon API key")
        self._settings = settings
        self._gap_fill = gap_fill
        self._engine = get_engine(settings.database_url)
        self.stats = StreamStats()
        self._backlog = Backlog(settings.stream_backlog)
        self._writer = BarWriter(settings, writer_engine(settings.database_url), self._backlog, self.stats)
        self._wanted: tuple[str, ...] = ()
        self._down: tuple[dt.datetime, tuple[str, ...]] | None = None
        self._stopping = False
        self._last_full_warning = 0.0
        self._handoffs: set[asyncio.Task[None]] = set()
        self._listener_stop = threading.Event()
        self._wake = asyncio.Event()  # set by the Redis listener: re-read the registry now
        self._client = PolygonStream(
            settings.polygon_ws_url, settings.polygon_api_key, self._on_frame,
            reconnect_min=settings.stream_reconnect_min_seconds,
            reconnect_max=settings.stream_reconnect_max_seconds,
            on_lost=self._lost, on_restored=self._restored)

    def run(self) -> int:
        self._writer.start()
        try:
            asyncio.run(self._main())
        finally:
            self._listener_stop.set()
            self._backlog.close()
            self._writer.join()
            self._snapshot_stats()
        if self.stats.lost:
            log.error("stopped with %d stream event(s) not written", self.stats.lost)
            return 1
        return 0

    def _snapshot_stats(self) -> None:
        self.stats.connections = self._client.connections
        self.stats.reconnects = self._client.reconnects
        self.stats.backlog = len(self._backlog)
        self.stats.backlog_high = self._backlog.high_water

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, stop, sig)
        await self._refresh()
        if self._settings.redis_url:
            threading.Thread(target=self._listen, args=(loop,), name="chronox-stream-signal",
                             daemon=True).start()
        log.info("stream: %s, %d symbol(s), writing to %s", self._settings.polygon_ws_url,
                 len(self._wanted), self._engine.url.render_as_string(hide_password=True))
        reader = asyncio.create_task(self._client.run())
        helpers = [asyncio.create_task(self._follow_registry()), asyncio.create_task(self._report())]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # AuthFailed, or a bug: either ends the process
        finally:
            self._stopping = True
            for task in (*helpers, stopper):
                task.cancel()
            await self._client.stop()
            try:
                await asyncio.wait_for(reader, 5)
            except BaseException:  # its outcome was reported above, or it is being torn down
                pass
            if self._handoffs:
                await asyncio.wait(self._handoffs, timeout=30)

    def _on_signal(self, stop: asyncio.Event, sig: signal.Signals) -> None:
        if stop.is_set():
            log.error("%s again: abandoning writes that keep failing", sig.name)
            self._writer.abort()
            return
        self.stats.flushed_on_stop = len(self._backlog)
        log.warning("%s: stopping; flushing %d buffered event(s)", sig.name, self.stats.flushed_on_stop)
        stop.set()

    # -- the socket reader ---------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            events, statuses = split_frame(frame)
        except ValueError as exc:
            text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
            events, statuses = [BadFrame(text[:2000], f"unreadable frame: {exc}")], []
        for status in statuses:
            if status.get("status") == "success":
                log.debug("stream: %s", status.get("message"))
            else:
                log.warning("stream status %s: %s", status.get("status"), status.get("message"))
        if not events:
            return
        self.stats.received += len(events)
        if self._backlog.offer(events):
            return
        # Full: stop reading until the writer catches up, so the socket (not memory) holds the rest.
        began = time.monotonic()
        self.stats.backlog_full_waits += 1
        if began - self._last_full_warning >= BACKLOG_WARN_SECONDS:
            self._last_full_warning = began
            log.warning("stream backlog full (%d events): writing is slower than the feed, reading "
                        "paused (%d pause(s) so far)", len(self._backlog), self.stats.backlog_full_waits)
        while not self._backlog.offer(events, force=self._stopping):
            await asyncio.sleep(0.005)
        self.stats.backlog_full_seconds += time.monotonic() - began

    # -- following the registry ----------------------------------------------

    async def _follow_registry(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.stream_poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            symbols = tuple(await asyncio.to_thread(streaming_symbols, self._engine))
        except Exception as exc:  # keep streaming what we have; the next poll retries
            log.warning("stream: registry read failed, keeping %d subscription(s): %s", len(self._wanted), exc)
            return
        self._wanted = symbols
        self.stats.subscribed = len(symbols)
        added, removed = await self._client.set_channels(channel(s) for s in symbols)
        if added or removed:
            log.info("stream: subscribed %s; unsubscribed %s", _some(sorted(added)), _some(sorted(removed)))

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Redis pub/sub wake-ups from the stream phase; polling keeps working without them."""
        import redis

        while not self._listener_stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(self._settings.redis_url or "", socket_connect_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CONTROL_CHANNEL)
                while not self._listener_stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        loop.call_soon_threadsafe(self._wake.set)
            except Exception as exc:
                log.warning("stream: Redis signal listener failed (%s); registry polling continues", exc)
                self._listener_stop.wait(5)
            finally:
                if pubsub is not None:
                    pubsub.close()

    # -- outages -> gap fill ---------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self._down is None:
            self._down = (_utcnow(), self._wanted)

    def _restored(self, seconds_down: float) -> None:
        if self._down is None:
            return
        since, symbols = self._down
        self._down = None
        if not symbols:
            return
        start = (since - GAP_LEAD).replace(second=0, microsecond=0)
        end = _utcnow().replace(microsecond=0) + dt.timedelta(seconds=1)
        task = asyncio.create_task(asyncio.to_thread(self._hand_off, GapFill(symbols, start, end)))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    def _hand_off(self, gap: GapFill) -> None:
        entry: dict[str, Any] = {**gap.as_dict(), "dispatched": False}
        first, last = gap.days
        where = f"{len(gap.symbols)} symbol(s) ({_some(gap.symbols)}) missed {entry['from']} .. {entry['to']}"
        if self._gap_fill is None:
            entry["reason"] = "no broker configured"
            # Beyond a screenful of symbols, the command covers every enabled symbol instead.
            named = f" --symbols {' '.join(gap.symbols)}" if len(gap.symbols) <= 20 else ""
            log.warning("gap fill NOT dispatched (no broker: CHRONOX_BROKER_URL is unset): %s; fill it with "
                        "`chronox run --strategy api --start %s --end %s%s`", where, first, last, named)
        else:
            try:
                entry["tasks"] = self._gap_fill(gap)
                entry["dispatched"] = True
                log.warning("gap fill queued (chronox.backfill, strategy api, %s .. %s): %s", first, last, where)
            except Exception as exc:
                entry["reason"] = f"{type(exc).__name__}: {exc}"
                log.error("gap fill could not be dispatched (%s): %s", entry["reason"], where)
        self.stats.gap_fills.append(entry)
        del self.stats.gap_fills[:-100]

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATS_SECONDS)
            self._snapshot_stats()
            log.info("stream stats: %s", json.dumps(self.stats.as_dict()))


def _some(items: Sequence[str], limit: int = 10) -> str:
    if not items:
        return "-"
    head = ", ".join(items[:limit])
    return head if len(items) <= limit else f"{head} and {len(items) - limit} more"


def run_stream(settings: Settings, gap_fill: GapFillSender | None = None) -> tuple[int, dict[str, Any]]:
    """Run the stream process until stopped: (exit code, final stats)."""
    process = StreamProcess(settings, gap_fill)
    code = process.run()
    return code, process.stats.as_dict()


# -- the stream phase ---------------------------------------------------------


def activate(settings: Settings, symbol: str) -> dict[str, Any]:
    """The `stream` phase: mark the symbol, announce it, and wake the stream process."""
    symbol = validate_symbol(symbol)
    engine = get_engine(settings.database_url)
    row = registry.get_symbol(engine, symbol)
    if not row["enabled"] or not has_phase(row["strategy"], "stream"):
        reason = "disabled" if not row["enabled"] else f"strategy {row['strategy']} has no stream phase"
        log.warning("%s not activated for streaming: %s", symbol, reason)
        return {"symbol": symbol, "activated": False, "reason": reason}
    if row["status"] != "error":  # an earlier phase's error must survive to finalize
        registry.set_status(engine, [symbol], "running")
    event = {"event": "stream_activated", "symbol": symbol, "ts": isoformat_utc(_utcnow()),
             "version": ENVELOPE_VERSION}
    published = announce(settings, "stream", symbol, event)
    mirror = get_mirror(settings)
    if mirror is not None:
        mirror.client.publish(CONTROL_CHANNEL, json.dumps(event))
    return {"symbol": symbol, "activated": True, "published": published, "signalled": mirror is not None}


# -- the health check -----------------------------------------------------------


def check_health(settings: Settings, now: str | dt.datetime | None = None) -> dict[str, Any]:
    """Flag streaming symbols without a bar for CHRONOX_STREAM_STALE_MINUTES during their session.

    The clock starts at the later of the last bar, the registration and the session's
    extended open, so a symbol is never stale in the first minutes of a session.
    Outside the extended session (04:00-20:00 New York on trading days) nothing is stale.
    """
    moment = _moment(now)
    engine = get_engine(settings.database_url)
    rows = [r for r in registry.list_symbols(engine, enabled_only=True) if has_phase(r["strategy"], "stream")]
    result: dict[str, Any] = {"now": isoformat_utc(moment), "checked": len(rows), "in_session": False,
                              "stale": 0, "stale_symbols": []}
    if not in_extended_session(moment):
        return result
    result["in_session"] = True
    opened = session(moment.astimezone(NEW_YORK).date()).extended_open
    limit = dt.timedelta(minutes=settings.stream_stale_minutes)
    for row in rows:
        last = _moment(row["last_stream"]) if row["last_stream"] else None
        since = max(last or _moment(row["created_at"]), opened)
        if moment - since <= limit:
            continue
        if last is None:
            message = f"{STALE_PREFIX} no bar received yet (streaming since {isoformat_utc(since)})"
        else:
            minutes = int((moment - last).total_seconds() // 60)
            message = f"{STALE_PREFIX} last bar {isoformat_utc(last)} ({minutes} min ago)"
        log.warning("%s: %s", row["symbol"], message)
        registry.set_status(engine, [row["symbol"]], "error", error_message=message)
        result["stale_symbols"].append(row["symbol"])
    result["stale"] = len(result["stale_symbols"])
    return result
