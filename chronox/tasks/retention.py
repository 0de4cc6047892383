"""The storage beat job: dropping expired tick partitions (chronox.partitions)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from chronox import partitions
from chronox.celery_app import app
from chronox.settings import load_settings
from chronox.tasks.base import ChronoxTask


@app.task(name="chronox.schedule.tick_retention", base=ChronoxTask)
def tick_retention(today: str | None = None) -> dict[str, Any]:
    """`today` (YYYY-MM-DD, UTC) makes the job behave as on that day."""
    return partitions.drop_expired_ticks(load_settings(), dt.date.fromisoformat(today) if today else None)
