"""The snapshot phase: the current market state of symbols, stored (latest per symbol),
cached in Redis as `latest_price:{symbol}` (60 s TTL), mirrored on Redis pub/sub,
published to Kafka as a snapshot event, and stamped on the registry as last_snapshot.

Methods: `snapshot` (Polygon's all-tickers snapshot, many tickers per request), `agg`
(the latest minute aggregate) and `rest` (the last trade), one request per symbol each.
A snapshot event is not a bar and has no outbox: in db-first mode a Kafka failure after
the commit fails the task, whose retry takes a fresh snapshot.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from chronox import registry
from chronox.bars import UTC, isoformat_utc
from chronox.db import get_engine
from chronox.delivery import STOCKS_FROM_POLYGON, Delivery
from chronox.markets import Instrument
from chronox.models import SnapshotLatest, table
from chronox.providers import get_provider
from chronox.publish import ENVELOPE_VERSION, get_mirror
from chronox.rest import skipped
from chronox.settings import SNAPSHOT_METHODS, Settings
from chronox.sources.base import Provider, Snapshot
from chronox.store import dialect_insert
from chronox.strategy import InvalidInput

log = logging.getLogger(__name__)

SNAPSHOT_COLUMNS = ("ts", "price", "volume", "prev_close", "method", "fetched_at")
SNAPSHOTS = table(SnapshotLatest)


def envelope(snap: Snapshot, strategy: str, now: dt.datetime,
             origin: tuple[str, str] = ("stocks", "polygon")) -> dict[str, Any]:
    """The snapshot event; `strategy`, `phase`, `timestamp` and `count` are the registry
    service's fields, which its consumers parse; `market` and `provider` name its origin."""
    return {"event": "snapshot", "symbol": snap.symbol, "ts": isoformat_utc(snap.ts), "price": snap.price,
            "volume": snap.volume, "prev_close": snap.prev_close, "method": snap.method,
            "source": "snapshot", "version": ENVELOPE_VERSION,
            "strategy": strategy, "phase": "completed", "timestamp": isoformat_utc(now), "count": 1,
            "market": origin[0], "provider": origin[1]}


def snapshot_symbols(settings: Settings) -> list[str]:
    return registry.symbols_with_phase(get_engine(settings.database_url), "snapshot")


def batches(symbols: Sequence[str], size: int) -> list[list[str]]:
    return [list(symbols[i:i + size]) for i in range(0, len(symbols), size)]


def check_method(method: str | None, settings: Settings) -> str:
    method = (method or settings.snapshot_method).lower()
    if method not in SNAPSHOT_METHODS:
        raise InvalidInput(f"unknown snapshot method {method!r}; use one of {', '.join(SNAPSHOT_METHODS)}")
    return method


def fetch(provider: Provider, symbols: Sequence[str], method: str, batch: int) -> list[Snapshot]:
    if method == "snapshot":
        return [s for chunk in batches(symbols, batch) for s in provider.snapshots(chunk)]
    one = provider.last_minute_agg if method == "agg" else provider.last_trade
    return [s for s in (one(symbol) for symbol in symbols) if s is not None]


def _store(conn: Connection, snaps: Sequence[Snapshot], fetched_at: dt.datetime) -> None:
    # One row per symbol: a multi-row upsert may not touch the same row twice.
    rows = list({s.symbol: {"symbol": s.symbol, "ts": s.ts, "price": s.price, "volume": s.volume,
                            "prev_close": s.prev_close, "method": s.method, "fetched_at": fetched_at}
                 for s in snaps}.values())
    if not rows:
        return
    statement = dialect_insert(conn, SNAPSHOTS)
    # RETURNING makes SQLAlchemy 2.0 batch the rows into multi-row statements; without
    # it an executemany of INSERT .. ON CONFLICT is one round trip per row.
    conn.execute(statement.on_conflict_do_update(
        index_elements=["symbol"], set_={c: statement.excluded[c] for c in SNAPSHOT_COLUMNS}
    ).returning(SNAPSHOTS.c.symbol), rows)
    registry.stamp_snapshot(conn, sorted({s.symbol for s in snaps}), fetched_at)


def _mirror(settings: Settings, events: Sequence[dict[str, Any]]) -> None:
    mirror = get_mirror(settings)
    if mirror is None:
        return
    # One round trip per batch instead of two per symbol.
    batch = mirror.pipelined()
    for event in events:
        batch.cache_price(event["symbol"], event)
        batch.publish("snapshot", event["symbol"], event)
    batch.execute()


def record(settings: Settings, snaps: Sequence[Snapshot], strategies: Mapping[str, str],
           fetched_at: dt.datetime | None = None, origins: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Store, cache, mirror and publish snapshots in the order of the publish mode."""
    fetched_at = fetched_at or dt.datetime.now(UTC)
    origins = origins or {}
    events = [envelope(s, strategies.get(s.symbol, "snapshot"), fetched_at,
                       origins.get(s.symbol, STOCKS_FROM_POLYGON)) for s in snaps]
    with Delivery(settings).transaction(kind="snapshot") as out:
        _store(out.conn, snaps, fetched_at)
        out.events(events, mirror=lambda: _mirror(settings, events))


def refresh_batches(settings: Settings, method: str | None = None) -> tuple[str, list[list[str]]]:
    """The periodic refresh's work: every enabled snapshot symbol, in batches of CHRONOX_SNAPSHOT_BATCH."""
    method = check_method(method, settings)
    size = settings.snapshot_batch
    if method != "snapshot" and settings.polygon_rate_limit:
        # agg and rest make a request per symbol; one per task keeps a task waiting for
        # budget off the worker instead of sleeping between its requests.
        size = 1
    return method, batches(snapshot_symbols(settings), size)


def refresh(settings: Settings, symbols: Sequence[str], method: str | None = None,
            strategies: Mapping[str, str] | None = None,
            instruments: Sequence[Instrument] | None = None) -> dict[str, Any]:
    """Take and record snapshots of `symbols`, each from its own provider; the per-symbol
    phase passes one symbol, its run's strategy and its instrument, the periodic refresh
    takes the registry's."""
    method = check_method(method, settings)
    if not symbols:
        return {"method": method, "symbols": 0, "stored": 0, "missing": []}
    if instruments is None or strategies is None:
        rows = registry.list_symbols(get_engine(settings.database_url), symbols=list(symbols))
        strategies = strategies if strategies is not None else {r.symbol: r.strategy for r in rows}
        known = {r.symbol: r.instrument for r in rows}
        instruments = instruments or [known.get(s) or Instrument(s) for s in symbols]
    groups: dict[tuple[str, str], list[Instrument]] = {}
    for instrument in instruments:
        groups.setdefault((instrument.market, instrument.provider), []).append(instrument)
    snaps: list[Snapshot] = []
    names: list[str] = []
    left_out: dict[str, Any] | None = None
    for members in groups.values():
        provider = get_provider(settings, members[0], members[1:])
        if provider is None:
            # Only this provider's symbols wait for its key; the others' snapshots are taken.
            left_out = skipped(settings, [i.symbol for i in members], "snapshot")
            continue
        names.append(provider.name)
        snaps += fetch(provider, [i.symbol for i in members], method, settings.snapshot_batch)
    if not names and left_out is not None:
        return left_out
    record(settings, snaps, strategies, origins={i.symbol: i.origin for i in instruments})
    got = {s.symbol for s in snaps}
    missing = [s for s in symbols if s not in got]
    if missing:
        log.info("no %s price for %d symbol(s), e.g. %s", method, len(missing), ", ".join(missing[:5]))
    result = {"method": method, "provider": ",".join(sorted(set(names))), "symbols": len(symbols),
              "stored": len(snaps), "missing": missing[:50]}
    return result if left_out is None else {**result, "skipped": left_out["skipped"]}
