"""Beat jobs that are not another module's task: the nightly gap scan."""
from __future__ import annotations

from typing import Any

from chronox import scheduling
from chronox.celery_app import app
from chronox.settings import load_settings
from chronox.strategy import parse_moment
from chronox.tasks.base import ChronoxTask
from chronox.tasks.workflow import send_backfill


@app.task(name="chronox.schedule.nightly_gap_scan", base=ChronoxTask)
def nightly_gap_scan(now: str | None = None) -> dict[str, Any]:
    return scheduling.nightly_gap_scan(load_settings(), parse_moment(now), send_backfill)
