"""News tasks: the `news` phase (Polygon ticker news, a REST task) and the feed poll (beat)."""
from __future__ import annotations

from typing import Any

from chronox import news
from chronox.celery_app import app
from chronox.settings import load_settings
from chronox.tasks.base import ChronoxTask, RestTask
from chronox.tasks.sinks import send_news_lake

NEWS_PHASE = "chronox.rest.news"


# soft_fail: a news failure is recorded on the registry row, and the chain goes on to
# finalize, so the symbol's bars are still stamped and sent to the sinks.
@app.task(name=NEWS_PHASE, base=RestTask, bind=True, soft_fail=True)
def news_phase(self: RestTask, symbol: str, start: str, end: str,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
    return self.run_rest(news.load_news, symbol, start, end, send_news_lake, options=options)


@app.task(name="chronox.news.feeds", base=ChronoxTask)
def poll_feeds() -> dict[str, Any]:
    return news.poll_feeds(load_settings(), send_news_lake)
