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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from kafka.errors import KafkaError
from sqlalchemy import Connection, Engine

from chronox import store
from chronox.bars import Bar, isoformat_utc
from chronox.calendar import day_bounds_utc
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


def send_bars(publisher: KafkaPublisher, bars: Sequence[Bar], tf: str, kind: str = "backfill") -> None:
    iso: dict[dt.datetime, str] = {}  # a stream frame holds many symbols of the same minute
    for b in bars:
        ts = iso.get(b.ts) or iso.setdefault(b.ts, isoformat_utc(b.ts) or "")
        publisher.send_bar(b.symbol, tf, ts, b.open, b.high, b.low, b.close, b.volume, b.source, kind=kind)


class Outgoing:
    """What one transaction hands to Kafka and Redis; sent in publish-mode order on exit."""

    def __init__(self, delivery: Delivery, conn: Connection, kind: str):
        self.conn = conn
        self._delivery = delivery
        self._kind = kind
        self._bars: list[tuple[Sequence[Bar], str]] = []
        self._events: list[dict[str, Any]] = []
        self._mirror: Callable[[], None] | None = None
        self._outbox: list[store.OutboxEntry] = []
        self.tapped_rows = 0
        self.published = 0

    def bars(self, bars: Sequence[Bar], tf: str) -> None:
        """Stored bars, published one envelope each."""
        if bars:
            self._bars.append((bars, tf))

    def events(self, events: Sequence[dict[str, Any]], mirror: Callable[[], None] | None = None) -> None:
        """Events keyed by their `symbol`, and the Redis work that goes with them."""
        self._events.extend(events)
        self._mirror = mirror

    def tap(self, rows: T, tf: str, source: str) -> T:
        """A day file's rows: in kafka-first each row is sent as it streams into storage."""
        publisher = self._delivery.publisher() if self._delivery.kafka_first else None
        if publisher is None:
            return rows

        def send(symbol: str, ts: str, o: float, h: float, low: float, c: float, v: float) -> None:
            publisher.send_bar(symbol, tf, ts, o, h, low, c, v, source)
            self.tapped_rows += 1

        return rows.tapped(send)

    def symbol_days(self, entries: Sequence[store.OutboxEntry]) -> None:
        """Symbol-days whose bars the transaction stored; db-first records them in the outbox."""
        if self._delivery.kafka_first or not self._delivery.settings.kafka_enabled or not entries:
            return
        store.record_outbox(self.conn, entries)
        self._outbox.extend(entries)

    def _send(self) -> None:
        publisher = self._delivery.publisher() if self._bars or self._events or self.tapped_rows else None
        if publisher is not None:
            for bars, tf in self._bars:
                send_bars(publisher, bars, tf, self._kind)
            for event in self._events:
                publisher.send(self._kind, event["symbol"], event)
            publisher.flush()
            self.published = self.tapped_rows + sum(len(b) for b, _ in self._bars)
        if self._mirror is not None:
            self._mirror()


class Delivery:
    """The order of storing and publishing for one set of settings."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
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

    def publish_bars(self, bars: Sequence[Bar], tf: str, kind: str) -> int:
        """Send bars and wait for Kafka's acknowledgement; 0 when publishing is off."""
        if not bars or not self.settings.kafka_enabled:
            return 0
        with self.kafka():
            publisher = self.publisher()
            assert publisher is not None  # Kafka is enabled
            send_bars(publisher, bars, tf, kind)
            publisher.flush()
        return len(bars)

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
            with self.kafka():
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
        for symbol, day, source in pending:
            start, end = day_bounds_utc(day)
            try:
                with self.engine.connect() as conn:
                    for bar in store.iter_bars(conn, symbol, start, end):
                        publisher.send_bar(bar.symbol, store.TIMEFRAME, isoformat_utc(bar.ts) or "", bar.open,
                                           bar.high, bar.low, bar.close, bar.volume, bar.source)
                        sent += 1
                publisher.flush()
            except Exception as exc:
                with self.engine.begin() as conn:
                    store.outbox_failed(conn, (symbol, day, source), str(exc))
                raise
            with self.engine.begin() as conn:
                store.outbox_done(conn, (symbol, day, source))
        return sent
