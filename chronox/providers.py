"""Which provider answers the REST phases of a run: the one place that decides it.

No provider (no POLYGON_API_KEY and CHRONOX_PROVIDER is not `replay`) is not an error:
REST steps are skipped with a warning on the registry row, and a flat-file-only
deployment keeps working.
"""
from __future__ import annotations

from chronox.settings import ProviderName, Settings
from chronox.sources.base import Provider

SKIP_DETAIL = ("Polygon REST steps skipped: POLYGON_API_KEY is not set (flat files still load; set the key, "
               "or CHRONOX_PROVIDER=replay to answer from local flat files)")


def provider_configured(settings: Settings) -> bool:
    return settings.provider == ProviderName.REPLAY or bool(settings.polygon_api_key)


def get_provider(settings: Settings) -> Provider | None:
    """The configured provider, or None when REST steps are to be skipped."""
    if not provider_configured(settings):
        return None
    if settings.provider == ProviderName.REPLAY:
        from chronox.sources.replay import ReplayProvider

        return ReplayProvider(settings)
    from chronox.ratelimit import get_limiter
    from chronox.sources.polygon import PolygonRest

    return PolygonRest(settings, get_limiter(settings))
