"""Beat jobs that are not another module's task: the nightly gap scan."""
from __future__ import annotations

import datetime as dt
from typing import Any

from chronox import scheduling
from chronox.celery_app import app
from chronox.settings import load_settings
from chronox.strategy import InvalidInput
from chronox.tasks.base import ChronoxTask


@app.task(name="chronox.schedule.nightly_gap_scan", base=ChronoxTask)
def nightly_gap_scan(now: str | None = None) -> dict[str, Any]:
    moment = _moment(now)
    result = scheduling.gap_scan(load_settings(), now=moment)
    for item in result["dispatch"]:
        app.send_task("chronox.backfill", args=[item["symbol"]],
                      kwargs={"start": item["start"], "end": item["end"]})
    return {**result, "dispatched": len(result["dispatch"])}


def _moment(now: str | None) -> dt.datetime | None:
    if now is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(now)
    except ValueError:
        raise InvalidInput(f"now {now!r} is not an ISO-8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
