"""The real-time side: the latest prices every minute and the day's hourly bars every ten
minutes, for the active symbols (strategy with the `snapshot` phase, the registry's
meaning) while their market trades (chronox.calendar.in_market_session: the NYSE regular
session for stocks, early closes honoured; always for crypto).

A job outside every active symbol's session exits at once, counting a skip, and calls
no provider. Requests spend the real-time reserve of the request budget
(chronox.ratelimit.realtime_lane), so a backfill cannot starve them. No Celery here:
chronox.tasks.realtime fans the batches out on the `chronox.realtime` queue.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from chronox import caches, metrics, registry, snapshot, store
from chronox.bars import UTC, Bar
from chronox.calendar import in_market_session, market_day
from chronox.db import get_engine
from chronox.delivery import Delivery
from chronox.markets import Instrument
from chronox.providers import get_provider, provider_configured
from chronox.ratelimit import realtime_lane
from chronox.rest import checked
from chronox.settings import Settings
from chronox.sources.base import ProviderError, TransientProviderError
from chronox.strategy import parse_moment

log = logging.getLogger(__name__)

LATEST_PRICES = "latest_prices"
HOURLY_REFRESH = "hourly_refresh"
ACTIVE_PHASE = "snapshot"
# One REST request per symbol: a task of this many keeps a slow answer from holding many.
HOURLY_BATCH = 25
# Ranges whose chart documents draw hourly bars: what an hourly refresh changes.
HOURLY_RANGES = ("1D", "7D")

# Skips by job, in this process. The metrics module does not count skips yet; it can
# export this tally (job names are a bounded label set).
def skip(job: str, reason: str, **extra: Any) -> dict[str, Any]:
    """A gated job that had nothing to do: counted, logged, and its task's result."""
    metrics.job_skipped(job)
    log.info("%s skipped: %s", job, reason)
    return {"job": job, "skipped": reason, **extra}


def active_in_session(settings: Settings, now: dt.datetime) -> tuple[list[Instrument], dict[str, bool]]:
    """(active symbols whose market trades at `now` and whose provider is configured,
    whether each market of an active symbol trades at `now`)."""
    rows = registry.list_symbols(get_engine(settings.database_url), enabled_only=True, phase=ACTIVE_PHASE)
    trading = {m: in_market_session(m, now) for m in {r.market.value for r in rows}}
    return [r.instrument for r in rows if trading[r.market.value] and provider_configured(settings, r.instrument)], \
        trading


def plan(settings: Settings, job: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """What a run of `job` at `now` does: `batches` of symbols, or a skip."""
    now = now or dt.datetime.now(UTC)
    due, trading = active_in_session(settings, now)
    if not due:
        reason = ("no active symbols (strategy with snapshot)" if not trading else
                  "outside the market session" if not any(trading.values()) else
                  "no REST provider configured (POLYGON_API_KEY unset)")
        return skip(job, reason, at=now.isoformat())
    size = settings.snapshot_batch if job == LATEST_PRICES else HOURLY_BATCH
    return {"job": job, "symbols": len(due), "batches": snapshot.batches(sorted(i.symbol for i in due), size)}


def refresh_prices(settings: Settings, symbols: Sequence[str]) -> dict[str, Any]:
    """The latest prices of `symbols`: the snapshot path (stored, `latest_price:{symbol}`,
    mirrored, published), on the real-time budget."""
    with realtime_lane():
        return {"job": LATEST_PRICES, **snapshot.refresh(settings, symbols)}


def _hour_bars(settings: Settings, instruments: Sequence[Instrument], moment: dt.datetime
               ) -> tuple[list[Bar], dict[str, str], str]:
    """Each symbol's hour aggregates of its market's day, from its own provider; (bars, the
    symbols a provider refused with why, the providers asked)."""
    fetched: list[Bar] = []
    failed: dict[str, str] = {}
    groups: dict[tuple[str, str], list[Instrument]] = {}
    for instrument in instruments:
        groups.setdefault((instrument.provider.value, instrument.market.value), []).append(instrument)
    with realtime_lane():
        for group in groups.values():
            provider = get_provider(settings, group[0], peers=group[1:])
            if provider is None:
                failed.update({i.symbol: "no REST provider configured" for i in group})
                continue
            for instrument in group:
                day = market_day(instrument.market.value, moment)
                try:
                    fetched.extend(provider.intraday_bars(instrument.symbol, "1h", day, day))
                except TransientProviderError:
                    raise
                except ProviderError as exc:
                    failed[instrument.symbol] = str(exc)[:300]
    return fetched, failed, "+".join(sorted({p for p, _ in groups}))


def refresh_hourly(settings: Settings, symbols: Sequence[str], now: str | dt.datetime | None = None
                   ) -> dict[str, Any]:
    """The current day's hourly bars of `symbols` from their providers' hour aggregates
    into ohlcv_1h (published as `1h` bars), then their hourly chart documents.

    A symbol its provider refuses (unknown ticker, malformed answer) is reported and the
    others go on; a transient failure raises, and the retry fetches the batch again.
    """
    moment = parse_moment(now) or dt.datetime.now(UTC)
    rows = registry.list_symbols(get_engine(settings.database_url), symbols=list(symbols))
    instruments = [r.instrument for r in rows]
    fetched, failed, providers = _hour_bars(settings, instruments, moment)
    good, bad = checked(fetched, f"{providers}:hourly:{len(symbols)} symbol(s)")
    # One bar per symbol and hour, the last winning, as the upsert would.
    bars = list({(b.symbol, b.ts): b for b in good}.values())
    with Delivery(settings).transaction() as out:
        store.upsert_bars_at(out.conn, "1h", bars)
        store.quarantine_rows(out.conn, bad)
        out.bars(bars, "1h", {i.symbol: i.origin for i in instruments})
    markets = {i.symbol: i.market.value for i in instruments}
    cached = caches.write_through(settings, [i.symbol for i in instruments if i.symbol not in failed],
                                  HOURLY_RANGES, moment, markets)
    if failed:
        log.warning("hourly bars refused for %d symbol(s), e.g. %s", len(failed), next(iter(failed.items())))
    return {"job": HOURLY_REFRESH, "provider": providers, "symbols": len(symbols), "bars": len(bars),
            "quarantined": len(bad), "cached": cached, "failed": failed}
