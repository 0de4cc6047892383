"""ChronoX: market-data ingestion workers.

`celery -A chronox` finds the Celery app through the lazy `app` attribute, so importing
domain modules (chronox.bars, chronox.store, ...) never imports Celery.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from chronox.celery_app import app

        return app
    raise AttributeError(f"module 'chronox' has no attribute {name!r}")
