"""Which provider answers the REST phases of a run: the one place that decides it.

No provider (no POLYGON_API_KEY and CHRONOX_PROVIDER is not `replay`) is not an error:
REST steps are skipped with a warning on the registry row, and a flat-file-only
deployment keeps working.
"""
from __future__ import annotations

from collections.abc import Sequence

from chronox.markets import Instrument, ProviderId
from chronox.settings import ProviderName, Settings
from chronox.sources.base import Provider

SKIP_DETAIL = ("Polygon REST steps skipped: POLYGON_API_KEY is not set (flat files still load; set the key, "
               "or CHRONOX_PROVIDER=replay to answer from local flat files)")


def needs_key(instrument: Instrument | None = None) -> bool:
    """Polygon needs POLYGON_API_KEY; Binance's and CoinGecko's public endpoints answer without one."""
    return (instrument.provider if instrument else ProviderId.POLYGON) == ProviderId.POLYGON


def provider_configured(settings: Settings, instrument: Instrument | None = None) -> bool:
    """Whether the REST phases of `instrument` (a US stock from Polygon by default) can run:
    a provider that needs a key has it, or the replay provider answers offline."""
    if settings.provider == ProviderName.REPLAY:
        return True
    return not needs_key(instrument) or bool(settings.polygon_api_key)


def get_provider(settings: Settings, instrument: Instrument | None = None,
                 peers: Sequence[Instrument] = ()) -> Provider | None:
    """The symbol's provider (DESIGN decision 10), or None when its REST steps are to be skipped.

    `peers`: more instruments of the same market and provider the caller asks about in
    one go (a snapshot batch), so the provider knows their names too. CHRONOX_PROVIDER=replay
    answers every market from the local day files, offline.
    """
    instrument = instrument or Instrument("")
    if not provider_configured(settings, instrument):
        return None
    if settings.provider == ProviderName.REPLAY:
        from chronox.sources.replay import ReplayProvider

        return ReplayProvider(settings, market=instrument.market)
    if instrument.provider == ProviderId.BINANCE:
        from chronox.sources.binance import BinanceRest

        return BinanceRest(settings)
    if instrument.provider == ProviderId.COINGECKO:
        from chronox.sources.coingecko import CoinGeckoRest

        return CoinGeckoRest(settings, ids={i.symbol: i.provider_name() for i in (instrument, *peers)})
    from chronox.ratelimit import get_limiter
    from chronox.sources.polygon import PolygonRest

    return PolygonRest(settings, get_limiter(settings), market=instrument.market)
