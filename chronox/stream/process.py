"""The `chronox stream` process: the socket reader, the registry follower, and the hand-off
of missed windows to REST gap fill.

Polygon allows one websocket per market and account, so streaming is one long-running
process, not a Celery task. Inside it:

- one feed per market and provider with streaming symbols (Polygon's stocks cluster, AM
  events, and T/Q events of symbols with the trades/quotes phases; its crypto cluster, XA
  events; Binance's closed 1m klines), each a socket
  reader (asyncio, main thread) that decodes frames and hands events to the bounded
  backlog of chronox.stream.writer, whose writer threads store and publish them;
- the registry follower re-reads the registry every CHRONOX_STREAM_POLL_SECONDS, and at
  once when the `stream` phase signals over Redis pub/sub (CONTROL_CHANNEL);
- after a reconnect, the window the connection was down is handed to REST gap fill.

No Celery here: gap fills go through the `gap_fill` callable the caller passes in.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chronox import health, metrics, registry, ticks
from chronox.bars import RAW_LIMIT, UTC, isoformat_utc
from chronox.calendar import calendar_for, in_extended_session
from chronox.db import get_engine
from chronox.markets import Market, ProviderId, binance_symbol
from chronox.providers import needs_key
from chronox.settings import ConfigError, Settings
from chronox.sources.binance_ws import BinanceStream, kline_bar
from chronox.sources.binance_ws import channel as binance_channel
from chronox.sources.websocket import PolygonStream, channel, crypto_channel, split_frame
from chronox.stream.activation import CONTROL_CHANNEL
from chronox.stream.writer import Backlog, BadFrame, BarWriter, StreamStats

log = logging.getLogger(__name__)

STATS_SECONDS = 60.0
OBSERVE_SECONDS = 1.0
BACKLOG_WARN_SECONDS = 10.0
# A bar is sent after its minute closes, so the minutes just before a drop may have been in flight.
GAP_LEAD = dt.timedelta(minutes=2)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True)
class GapFill:
    """Minutes the stream missed for some symbols, to be filled from REST (the api phase)."""

    symbols: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime
    market: str = "stocks"

    @property
    def days(self) -> tuple[str, str]:
        """First and last day of the window on the symbols' market, as the backfill task takes them."""
        day_of = calendar_for(self.market).day_of
        return day_of(self.start).isoformat(), day_of(self.end).isoformat()

    def as_dict(self) -> dict[str, Any]:
        first, last = self.days
        return {"symbols": len(self.symbols), "from": isoformat_utc(self.start), "to": isoformat_utc(self.end),
                "start": first, "end": last}


GapFillSender = Callable[[GapFill], int]


@dataclass
class Feed:
    """One socket of the process: a market's symbols from one provider."""

    market: str
    provider: str
    client: Any  # PolygonStream or BinanceStream: run, stop, set_channels, connections, reconnects
    channel: Callable[[str], str]
    symbols: tuple[str, ...] = ()
    down: tuple[dt.datetime, tuple[str, ...]] | None = None
    task: asyncio.Task[None] | None = None
    names: dict[str, str] = field(default_factory=dict)  # the provider's spelling -> canonical

    @property
    def label(self) -> str:
        return f"{self.provider} {self.market}"


class StreamProcess:
    """Runs until SIGTERM/SIGINT; `run()` returns the exit code, raises AuthFailed for a bad key."""

    def __init__(self, settings: Settings, gap_fill: GapFillSender | None = None):
        self._settings = settings
        self._gap_fill = gap_fill
        self._engine = get_engine(settings.database_url)
        rows = registry.list_symbols(self._engine, enabled_only=True, phase="stream")
        if not settings.polygon_api_key and (not rows or any(needs_key(r.instrument) for r in rows)):
            raise ConfigError("POLYGON_API_KEY is not set: `chronox stream` needs a Polygon API key")
        self.stats = StreamStats()
        self._backlog = Backlog(settings.stream_backlog)
        self._writer = BarWriter(settings, self._engine, self._backlog, self.stats)
        self._wanted: tuple[str, ...] = ()
        self._feeds: dict[tuple[str, str], Feed] = {}
        self._stopping = False
        self._last_full_warning = 0.0
        self._warned_no_key = False
        self._handoffs: set[asyncio.Task[None]] = set()
        self._listener_stop = threading.Event()
        self._wake = asyncio.Event()  # set by the Redis listener: re-read the registry now
        self._feed_added = asyncio.Event()

    def _feed(self, market: str, provider: str) -> Feed | None:
        """The feed of a market and provider, created at first use; None when it cannot run."""
        key = (market, provider)
        if key in self._feeds:
            return self._feeds[key]
        s = self._settings
        feed = Feed(market, provider, None, channel)
        low, high = s.stream_reconnect_min_seconds, s.stream_reconnect_max_seconds

        def lost(reason: str) -> None:
            self._lost(feed, reason)

        def restored(seconds: float) -> None:
            self._restored(feed, seconds)

        if provider == ProviderId.BINANCE:
            async def on_kline(frame: str | bytes) -> None:
                await self._on_kline(frame, feed.names)

            feed.client = BinanceStream(s.binance_ws_url, on_kline, reconnect_min=low, reconnect_max=high,
                                        on_lost=lost, on_restored=restored)
            feed.channel = binance_channel
        elif provider == ProviderId.POLYGON and s.polygon_api_key:
            url = s.polygon_crypto_ws_url if market == Market.CRYPTO else s.polygon_ws_url
            feed.client = PolygonStream(url, s.polygon_api_key, self._on_frame, reconnect_min=low,
                                        reconnect_max=high, on_lost=lost, on_restored=restored)
            feed.channel = crypto_channel if market == Market.CRYPTO else channel
        else:
            if not self._warned_no_key:
                self._warned_no_key = True
                log.error("stream: %s %s symbols are registered to stream, but POLYGON_API_KEY is not set; "
                          "they are not streamed", provider, market)
            return None
        self._feeds[key] = feed
        self._feed_added.set()
        return feed

    def run(self) -> int:
        endpoint = health.serve(self._settings, "stream")
        for provider in (ProviderId.POLYGON, ProviderId.BINANCE):
            metrics.stream_limits(provider.value, self._settings.stream_stale_minutes)
        self._writer.start()
        try:
            asyncio.run(self._main())
        finally:
            self._listener_stop.set()
            self._backlog.close()
            self._writer.join()
            self._snapshot_stats()
            if endpoint is not None:
                endpoint.stop()
        if self.stats.lost:
            log.error("stopped with %d stream event(s) not written", self.stats.lost)
            return 1
        return 0

    def _snapshot_stats(self) -> None:
        self.stats.connections = sum(f.client.connections for f in self._feeds.values())
        self.stats.reconnects = sum(f.client.reconnects for f in self._feeds.values())
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
        log.info("stream: %s, %d symbol(s), writing to %s",
                 ", ".join(f"{f.label} {f.client.url}" for f in self._feeds.values()) or "no feed yet",
                 len(self._wanted), self._engine.url.render_as_string(hide_password=True))
        helpers = [asyncio.create_task(self._follow_registry()), asyncio.create_task(self._report()),
                   asyncio.create_task(self._observe())]
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                readers = {f.task for f in self._feeds.values() if f.task is not None}
                self._feed_added.clear()
                added = asyncio.create_task(self._feed_added.wait())
                done, _ = await asyncio.wait({*readers, stopper, added}, return_when=asyncio.FIRST_COMPLETED)
                added.cancel()
                for reader in done & readers:
                    reader.result()  # AuthFailed, or a bug: either ends the process
        finally:
            self._stopping = True
            for task in (*helpers, stopper):
                task.cancel()
            for feed in self._feeds.values():
                await feed.client.stop()
            for feed in self._feeds.values():
                if feed.task is not None:
                    try:
                        await asyncio.wait_for(feed.task, 5)
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

    async def _on_kline(self, frame: str | bytes, names: dict[str, str]) -> None:
        """A Binance frame: a closed kline is a bar, an open one nothing, anything else bad."""
        try:
            bar = kline_bar(frame, names)
        except ValueError as exc:
            text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
            await self._offer([BadFrame(text[:RAW_LIMIT], f"unusable kline: {exc}", "binance-ws")])
            return
        if bar is not None:
            await self._offer([bar])

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            events, statuses = split_frame(frame)
        except ValueError as exc:
            text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
            events, statuses = [BadFrame(text[:RAW_LIMIT], f"unreadable frame: {exc}")], []
        for status in statuses:
            if status.get("status") == "success":
                log.debug("stream: %s", status.get("message"))
            else:
                log.warning("stream status %s: %s", status.get("status"), status.get("message"))
        if events:
            await self._offer(events)

    async def _offer(self, events: list[Any]) -> None:
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
            except TimeoutError:
                pass
            self._wake.clear()
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            rows = await asyncio.to_thread(registry.list_symbols, self._engine, True, None, "stream")
        except Exception as exc:  # keep streaming what we have; the next poll retries
            log.warning("stream: registry read failed, keeping %d subscription(s): %s", len(self._wanted), exc)
            return
        groups: dict[tuple[str, str], list[str]] = {key: [] for key in self._feeds}
        tick_channels: dict[tuple[str, str], list[str]] = {}  # T./Q. of symbols with trades/quotes phases
        for row in rows:
            groups.setdefault((row.market.value, row.provider.value), []).append(row.symbol)
            tick_channels.setdefault((row.market.value, row.provider.value), []).extend(
                ticks.stream_channels(row.instrument, row.phases))
        wanted: list[str] = []
        origins: dict[str, tuple[str, str]] = {}
        for (market, provider), symbols in sorted(groups.items()):
            feed = self._feed(market, provider) if symbols else self._feeds.get((market, provider))
            if feed is None:
                continue
            feed.symbols = tuple(symbols)
            wanted += symbols
            origins.update((s, (market, provider)) for s in symbols)
            if provider == ProviderId.BINANCE:
                feed.names.clear()
                feed.names.update((binance_symbol(s), s) for s in symbols)
            added, removed = await feed.client.set_channels(
                [*(feed.channel(s) for s in symbols), *tick_channels.get((market, provider), [])])
            if added or removed:
                log.info("stream: %s subscribed %s; unsubscribed %s", feed.label, _some(sorted(added)),
                         _some(sorted(removed)))
            if feed.task is None and symbols:
                feed.task = asyncio.create_task(feed.client.run())
        self._wanted = tuple(sorted(wanted))
        self._writer.origins = origins
        self.stats.subscribed = len(self._wanted)

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

    def _lost(self, feed: Feed, reason: str) -> None:
        if feed.down is None:
            feed.down = (_utcnow(), feed.symbols)

    def _restored(self, feed: Feed, seconds_down: float) -> None:
        if feed.down is None:
            return
        since, symbols = feed.down
        feed.down = None
        if not symbols:
            return
        start = (since - GAP_LEAD).replace(second=0, microsecond=0)
        end = _utcnow().replace(microsecond=0) + dt.timedelta(seconds=1)
        gap = GapFill(symbols, start, end, feed.market)
        task = asyncio.create_task(asyncio.to_thread(self._hand_off, gap))
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

    async def _observe(self) -> None:
        """The event loop's heartbeat (/healthz) and the stream's gauges, every OBSERVE_SECONDS."""
        while True:
            health.beat()
            for feed in self._feeds.values():
                metrics.stream_state(feed.provider, len(feed.symbols), len(self._backlog))
            metrics.session_open("stocks", in_extended_session(_utcnow()))
            await asyncio.sleep(OBSERVE_SECONDS)


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
