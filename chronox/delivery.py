"""The publish-mode contract, owned here for every writer (DESIGN decision 13).

kafka-first: Kafka, then Redis, then the database. What a transaction stores is
acknowledged by Kafka before it commits; a Kafka failure rolls the transaction back
and the task retries.

db-first: the database, then Kafka, then Redis. The transaction commits first and
publishes after. Bars of day loads are recorded in the publish outbox inside the
transaction, so a committed bar reaches Kafka even if Kafka was down at the commit:
the drain publishes it once Kafka is back.

Every writer goes through `Delivery.transaction` (day loads, REST windows and daily
bars, snapshots) or `Delivery.stages` (the stream's two-stage pipeline). A Kafka failure
drops the process's producer so the next attempt connects from scratch. Only this
module and chronox.publish import kafka.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from kafka.errors import KafkaError
from sqlalchemy import Connection, Engine

from chronox import metrics, store, tick_store
from chronox.bars import Bar, isoformat_utc
from chronox.calendar import calendar_for
from chronox.db import get_engine
from chronox.publish import KafkaPublisher, PublishError, drop_publisher, get_mirror, get_publisher
from chronox.settings import PublishMode, Settings

log = logging.getLogger(__name__)

# What a Kafka failure raises, for the task layer's list of transient errors.
KAFKA_ERRORS: tuple[type[Exception], ...] = (PublishError, KafkaError)
Step = TypeVar("Step")
T = TypeVar("T", bound="Tappable")


class Tappable(Protocol):
    """Rows on their way into storage that report each row as it passes (a day file):
    the tap gets symbol, ts (ISO UTC), open, high, low, close, volume."""

    def tapped(self: T, tap: Callable[[str, str, float, float, float, float, float], None]) -> T: ...


Origin = tuple[str, str]  # market, provider: what every envelope names besides its source
STOCKS_FROM_POLYGON: Origin = ("stocks", "polygon")


def by_origin(bars: Sequence[Bar], origins: Mapping[str, Origin], default: Origin = STOCKS_FROM_POLYGON
              ) -> dict[Origin, list[Bar]]:
    """Bars of several providers' symbols, grouped by the origin their envelopes name."""
    groups: dict[Origin, list[Bar]] = {}
    for bar in bars:
        groups.setdefault(origins.get(bar.symbol, default), []).append(bar)
    return groups


def send_bars(publisher: KafkaPublisher, bars: Sequence[Bar], tf: str, kind: str = "backfill",
              origin: Origin = STOCKS_FROM_POLYGON) -> None:
    market, provider = origin
    iso: dict[dt.datetime, str] = {}  # a stream frame holds many symbols of the same minute
    send = publisher.send_bar  # positional and bound once: this loop runs once per bar
    for b in bars:
        ts = iso.get(b.ts) or iso.setdefault(b.ts, isoformat_utc(b.ts) or "")
        send(b.symbol, tf, ts, b.open, b.high, b.low, b.close, b.volume, b.source, kind, market, provider)


def send_ticks(publisher: KafkaPublisher, kind: str, rows: Iterable[tick_store.Row],
               origin: Origin = STOCKS_FROM_POLYGON) -> int:
    """Ticks of dataset `kind` (trades, quotes), one envelope each; how many were sent."""
    market, provider = origin
    sent = 0
    for row in rows:
        publisher.send(kind, row["symbol"], tick_store.envelope(kind, row, market, provider))
        sent += 1
    return sent


class Outgoing:
    """What one transaction hands to Kafka and Redis; sent in publish-mode order on exit."""

    def __init__(self, delivery: Delivery, conn: Connection, kind: str):
        self.conn = conn
        self._delivery = delivery
        self._kind = kind
        self._bars: list[tuple[Sequence[Bar], str, Mapping[str, Origin]]] = []
        self._events: list[dict[str, Any]] = []
        self._mirror: Callable[[], None] | None = None
        self._outbox: list[store.OutboxEntry] = []
        self.tapped_rows = 0
        self.published = 0

    def bars(self, bars: Sequence[Bar], tf: str, origins: Mapping[str, Origin] | None = None) -> None:
        """Stored bars, published one envelope each; `origins` names the market and provider of
        symbols that are not the writer's own origin (a batch of several providers' symbols)."""
        if bars:
            self._bars.append((bars, tf, origins or {}))

    def events(self, events: Sequence[dict[str, Any]], mirror: Callable[[], None] | None = None) -> None:
        """Events keyed by their `symbol`, and the Redis work that goes with them."""
        self._events.extend(events)
        self._mirror = mirror

    def tap(self, rows: T, tf: str, source: str, skip: frozenset[str] = frozenset()) -> T:
        """A day file's rows: in kafka-first each row is sent as it streams into storage,
        except those of `skip` (symbols whose envelopes carry another timeframe)."""
        publisher = self._delivery.publisher() if self._delivery.kafka_first else None
        if publisher is None:
            return rows
        market, provider = self._delivery.origin

        def send(symbol: str, ts: str, o: float, h: float, low: float, c: float, v: float) -> None:
            if symbol not in skip:
                publisher.send_bar(symbol, tf, ts, o, h, low, c, v, source, market=market, provider=provider)
                self.tapped_rows += 1

        return rows.tapped(send)

    def symbol_days(self, entries: Sequence[store.OutboxEntry], timeframes: Mapping[str, str] | None = None) -> None:
        """Symbol-days of a day file the transaction stored, to publish at each symbol's
        timeframe (`timeframes` names those not at 1m; 1d symbols publish no day-file bars).

        kafka-first: 1m rows went out through the tap; coarser bars are read back here,
        rolled up, and sent before the commit. db-first: the outbox records them all.
        """
        timeframes = timeframes or {}
        entries = [e for e in entries if timeframes.get(e[0]) != "1d"]
        if not entries or not self._delivery.settings.kafka_enabled:
            return
        if not self._delivery.kafka_first:
            store.record_outbox(self.conn, entries, timeframes, *self._delivery.origin)
            self._outbox.extend(entries)
            return
        coarse: dict[tuple[str, dt.date, str], list[str]] = {}
        for symbol, day, source in entries:
            if symbol in timeframes:
                coarse.setdefault((timeframes[symbol], day, source), []).append(symbol)
        for (tf, day, source), symbols in coarse.items():
            bounds = calendar_for(self._delivery.origin[0]).day_bounds(day)
            self.bars(list(store.iter_bars(self.conn, symbols, *bounds, tf, source)), tf)

    def tick_sender(self, kind: str) -> Callable[[tick_store.Row], None] | None:
        """kafka-first: a function that sends one stored tick of dataset `kind` (trades,
        quotes) as it goes into storage, acknowledged before the commit; None otherwise."""
        publisher = self._delivery.publisher() if self._delivery.kafka_first else None
        if publisher is None:
            return None
        origin = self._delivery.origin

        def send(row: tick_store.Row) -> None:
            self.tapped_rows += send_ticks(publisher, kind, (row,), origin)

        return send

    def tick_days(self, kind: str, entries: Sequence[tuple[str, dt.date]]) -> None:
        """db-first: the symbol-days of dataset `kind` this transaction stored go to the outbox
        (source = the dataset), published after the commit or by a later drain."""
        if not entries or self._delivery.kafka_first or not self._delivery.settings.kafka_enabled:
            return
        outbox = [(symbol, day, kind) for symbol, day in entries]
        store.record_outbox(self.conn, outbox, {symbol: tick_store.OUTBOX_TF for symbol, _ in entries},
                            *self._delivery.origin)
        self._outbox.extend(outbox)

    def _send(self) -> None:
        publisher = self._delivery.publisher() if self._bars or self._events or self.tapped_rows else None
        if publisher is not None:
            published = self.tapped_rows + sum(len(b) for b, _, _ in self._bars)
            with metrics.kafka_batch(self._kind, published + len(self._events)):
                for bars, tf, origins in self._bars:
                    for origin, group in by_origin(bars, origins, self._delivery.origin).items():
                        send_bars(publisher, group, tf, self._kind, origin)
                for event in self._events:
                    publisher.send(self._kind, event["symbol"], event)
                publisher.flush()
            self.published = published
        if self._mirror is not None:
            self._mirror()


class Delivery:
    """The order of storing and publishing for one set of settings."""

    def __init__(self, settings: Settings, engine: Engine | None = None, origin: Origin = STOCKS_FROM_POLYGON):
        """`origin`: the market and provider of what this writer stores (named in every envelope)."""
        self.origin = origin
        self.settings = settings
        self.engine = engine or get_engine(settings.database_url)
        self.kafka_first = settings.publish_mode == PublishMode.KAFKA_FIRST

    def publisher(self) -> KafkaPublisher | None:
        return get_publisher(self.settings)

    @contextlib.contextmanager
    def kafka(self) -> Iterator[None]:
        """Kafka work; a failure drops the producer so the next attempt reconnects, and is re-raised."""
        try:
            yield
        except (PublishError, KafkaError):
            drop_publisher(self.settings)
            raise

    @contextlib.contextmanager
    def transaction(self, kind: str = "backfill") -> Iterator[Outgoing]:
        """A database transaction whose outgoing bars and events are published in publish-mode order.

        kafka-first: sent and acknowledged before the commit (a failure rolls back).
        db-first: sent after the commit; a failure raises so the task retries, except for
        symbol-days in the outbox, which wait there for the drain.
        """
        with self.kafka():
            with self.engine.begin() as conn:
                outgoing = Outgoing(self, conn, kind)
                yield outgoing
                if self.kafka_first:
                    outgoing._send()
            if not self.kafka_first:
                outgoing._send()
        if outgoing._outbox:
            outgoing.published += self.drain_outbox(outgoing._outbox)

    def close(self) -> None:
        """Close this process's producer, after its last flush."""
        if self.settings.kafka_enabled:
            drop_publisher(self.settings)

    def stages(self, publish: Step, store_: Step) -> tuple[Step, Step]:
        """(first, second) for a pipeline that publishes and stores the same batches."""
        return (publish, store_) if self.kafka_first else (store_, publish)

    def publish_bars(self, bars: Sequence[Bar], tf: str, kind: str, origin: Origin | None = None) -> int:
        """Send bars and wait for Kafka's acknowledgement; 0 when publishing is off."""
        if not bars or not self.settings.kafka_enabled:
            return 0
        with self.kafka(), metrics.kafka_batch(kind, len(bars)):
            publisher = self.publisher()
            assert publisher is not None  # Kafka is enabled
            send_bars(publisher, bars, tf, kind, origin or self.origin)
            publisher.flush()
        return len(bars)

    def publish_ticks(self, kind: str, rows: Sequence[tick_store.Row], origin: Origin | None = None) -> int:
        """Send ticks of dataset `kind` and wait for Kafka's acknowledgement; 0 when publishing is off."""
        if not rows or not self.settings.kafka_enabled:
            return 0
        with self.kafka(), metrics.kafka_batch(kind, len(rows)):
            publisher = self.publisher()
            assert publisher is not None  # Kafka is enabled
            send_ticks(publisher, kind, rows, origin or self.origin)
            publisher.flush()
        return len(rows)

    def announce(self, kind: str, symbol: str, event: dict[str, Any]) -> bool:
        """One event (completion, activation) to the Redis mirror and Kafka; whether Kafka took it.

        kafka-first raises a Kafka failure (the task retries); db-first keeps the database
        as the record and only logs the event as missed.
        """
        mirror = get_mirror(self.settings)
        if mirror is not None:
            mirror.publish(kind, symbol, event)
        if not self.settings.kafka_enabled:
            return False
        try:
            with self.kafka(), metrics.kafka_batch(kind, 1):
                publisher = self.publisher()
                assert publisher is not None  # Kafka is enabled
                publisher.send(kind, symbol, event)
                publisher.flush()
            return True
        except (PublishError, KafkaError) as exc:
            if self.kafka_first:
                raise
            log.warning("%s event for %s not published: %s", event.get("event", kind), symbol, exc)
            return False

    def drain_outbox(self, entries: Sequence[store.OutboxEntry] | None = None, limit: int = 500) -> int:
        """Publish committed symbol-days still in the outbox (all when entries is None); bars sent.

        A Kafka outage is not an error here: the entries stay for the next drain.
        """
        if not self.settings.kafka_enabled:
            return 0
        try:
            with self.kafka():
                publisher = self.publisher()
                assert publisher is not None  # Kafka is enabled
                return self._publish_outbox(publisher, entries, limit)
        except (PublishError, KafkaError) as exc:
            log.warning("Kafka unavailable, %s symbol-day(s) stay in the publish outbox: %s",
                        "all" if entries is None else len(entries), exc)
            return 0

    def _publish_outbox(self, publisher: KafkaPublisher, entries: Sequence[store.OutboxEntry] | None,
                        limit: int) -> int:
        """Each symbol-day is read back from the database, sent, and then cleared; a failure
        leaves the entry (counted) and the next drain resends the whole symbol-day."""
        if entries is not None and not entries:
            return 0
        with self.engine.connect() as conn:
            pending = store.pending_outbox(conn, entries, limit)
        sent = 0
        for entry, tf, market, provider in pending:
            symbol, day, source = entry
            start, end = calendar_for(market).day_bounds(day)
            flushed = sent
            ticks = tf == tick_store.OUTBOX_TF  # a tick symbol-day: `source` names its dataset
            kind = source if ticks else "backfill"
            try:
                with self.engine.connect() as conn:
                    if ticks:
                        sent += send_ticks(publisher, source, tick_store.iter_rows(conn, source, [symbol], start, end),
                                           (market, provider))
                    else:
                        for bar in store.iter_bars(conn, [symbol], start, end, tf, source):
                            publisher.send_bar(bar.symbol, tf, isoformat_utc(bar.ts), bar.open, bar.high, bar.low,
                                               bar.close, bar.volume, bar.source, market=market, provider=provider)
                            sent += 1
                publisher.flush()
                metrics.kafka_messages(kind, "sent", sent - flushed)
            except Exception as exc:
                metrics.kafka_messages(kind, "failed", sent - flushed)
                with self.engine.begin() as conn:
                    store.outbox_failed(conn, entry, str(exc))
                raise
            with self.engine.begin() as conn:
                store.outbox_done(conn, entry)
        return sent
