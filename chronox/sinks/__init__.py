"""Sinks: copies of committed data outside the database (DESIGN decision 14).

The database is the record. A sink (the Parquet lake, the Redis feature store) is
written by its own task after a commit, from rows read back from the database, once per
symbol-day and only when those rows changed since it last wrote them (`sink_state`). A
sink that fails retries on its own; nothing a sink does can roll back or block a load.
"""
from __future__ import annotations

from chronox.settings import Settings

LAKE = "lake"
FEATURES = "features"
NEWS_LAKE = "lake_news"  # the news files of the lake; its sink_state rows have symbol "*"
SINKS = (LAKE, FEATURES)


def configured(settings: Settings) -> tuple[str, ...]:
    """The bar sinks this deployment writes, in a stable order; () when none."""
    return tuple(name for name, on in ((LAKE, bool(settings.lake_url)), (FEATURES, settings.feature_store)) if on)
