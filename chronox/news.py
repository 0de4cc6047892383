"""News: Polygon ticker news (the `news` phase) and RSS/Atom feeds (CHRONOX_NEWS_FEEDS).

Every article is stored once in `news`, whatever brought it: the provider's id is the
key and the URL is unique too. Each article stored for the first time is published to
`chronox.news.<SYMBOL>` for every ticker it names, in the publish-mode order of
chronox.delivery (kafka-first: acknowledged before the commit; db-first: after it).

A feed that is down, slow or answers something that is not a feed is a warning for that
feed; the other feeds are read all the same and the job succeeds.
"""
from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
from sqlalchemy import Connection, select

from chronox.delivery import Delivery
from chronox.models import News, table
from chronox.providers import get_provider
from chronox.publish import ENVELOPE_VERSION
from chronox.settings import NewsFeed, Settings
from chronox.sinks import frames
from chronox.sources import shown
from chronox.sources.polygon import PolygonError, PolygonRest
from chronox.store import dialect_insert
from chronox.strategy import InvalidInput, validate_symbol

log = logging.getLogger(__name__)

NEWS = table(News)
KIND = "news"  # topics chronox.news.<SYMBOL> (per-kind: chronox.news)
POLYGON_PAGE = 1000  # Polygon's largest page of ticker news
FEED_TIMEOUT = (5.0, 20.0)  # connect, read
NEWS_SCHEMA = pa.schema([
    ("id", pa.string()), ("published_utc", frames.UTC_TS), ("source", pa.string()), ("title", pa.string()),
    ("url", pa.string()), ("tickers", pa.list_(pa.string())), ("description", pa.string()),
    ("sentiment", pa.string()),
])

# What the news lake sink is given: the settings and the UTC days that got new articles.
AfterCommit = Callable[[Settings, list[str]], None]


@dataclass(frozen=True)
class Article:
    id: str
    published_utc: dt.datetime  # UTC
    source: str
    title: str
    url: str | None
    tickers: tuple[str, ...]
    description: str | None
    sentiment: dict[str, str] | None  # ticker -> positive | negative | neutral
    raw: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "published_utc": self.published_utc, "source": self.source, "title": self.title,
                "url": self.url, "tickers": json.dumps(list(self.tickers)), "description": self.description,
                "sentiment": json.dumps(self.sentiment, sort_keys=True) if self.sentiment else None,
                "raw": json.dumps(self.raw, sort_keys=True, default=str)}

    def events(self) -> list[dict[str, Any]]:
        """One event per ticker the article names that can be a topic name."""
        out = []
        for ticker in self.tickers:
            try:
                symbol = validate_symbol(ticker)
            except InvalidInput:
                continue  # e.g. X:BTCUSD: not a ChronoX symbol, so no topic
            out.append({"event": "news", "symbol": symbol, "id": self.id,
                        "published_utc": self.published_utc.isoformat().replace("+00:00", "Z"),
                        "source": self.source, "title": self.title, "url": self.url, "tickers": list(self.tickers),
                        "description": self.description,
                        "sentiment": (self.sentiment or {}).get(ticker), "version": ENVELOPE_VERSION})
        return out


# -- storing and publishing ------------------------------------------------------------------

def store_articles(settings: Settings, articles: Sequence[Article]) -> list[Article]:
    """Store the articles not stored yet (by id or URL) and publish them; the new ones."""
    unique: dict[str, Article] = {}
    urls: set[str] = set()
    for article in articles:
        if article.id in unique or (article.url and article.url in urls):
            continue
        unique[article.id] = article
        if article.url:
            urls.add(article.url)
    if not unique:
        return []
    delivery = Delivery(settings)
    with delivery.transaction(KIND) as out:
        statement = dialect_insert(out.conn, NEWS).on_conflict_do_nothing().returning(NEWS.c.id)
        inserted = set(out.conn.scalars(statement, [a.row() for a in unique.values()]).all())
        new = [a for a in unique.values() if a.id in inserted]
        out.events([event for article in new for event in article.events()])
    return new


def _days(articles: Iterable[Article]) -> list[str]:
    return sorted({a.published_utc.date().isoformat() for a in articles})


def day_table(conn: Connection, day: dt.date) -> pa.Table:
    """The stored articles published on a UTC day, for the lake's news/date=... file."""
    start = dt.datetime.combine(day, dt.time(0), dt.UTC)
    rows = conn.execute(select(NEWS).where(NEWS.c.published_utc >= start,
                                           NEWS.c.published_utc < start + dt.timedelta(days=1))
                        .order_by(NEWS.c.published_utc, NEWS.c.id)).all()
    return pa.Table.from_pylist([
        {"id": r.id, "published_utc": r.published_utc, "source": r.source, "title": r.title, "url": r.url,
         "tickers": json.loads(r.tickers), "description": r.description, "sentiment": r.sentiment}
        for r in rows], schema=NEWS_SCHEMA)


# -- Polygon ticker news (the news phase) ---------------------------------------------------

def _malformed(what: str, detail: str) -> PolygonError:
    return PolygonError(f"malformed response to {what}: {detail}")


def _moment(text: Any, what: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise _malformed(what, f"published_utc is {shown(text)}, not a time") from None
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def polygon_article(record: Any, what: str) -> Article:
    """An article from one result of /v2/reference/news."""
    if not isinstance(record, dict):
        raise _malformed(what, f"result {shown(record)} is not an object")
    ident, title, url = record.get("id"), record.get("title"), record.get("article_url")
    tickers = record.get("tickers") or []
    if not isinstance(ident, str) or not ident or len(ident) > 128:
        raise _malformed(what, f"article without a usable id: {shown(ident)}")
    if not isinstance(title, str) or (url is not None and not isinstance(url, str)):
        raise _malformed(what, f"article {ident}: title or article_url is not text")
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        raise _malformed(what, f"article {ident}: tickers is not a list of text")
    description = record.get("description")
    sentiment = {}
    for insight in record.get("insights") or []:
        if isinstance(insight, dict) and isinstance(insight.get("ticker"), str) \
                and isinstance(insight.get("sentiment"), str):
            sentiment[insight["ticker"]] = insight["sentiment"]
    return Article(ident, _moment(record.get("published_utc"), what), "polygon", title,
                   url[:2048] if url else None, tuple(tickers),
                   description if isinstance(description, str) else None, sentiment or None, record)


class PolygonNews(PolygonRest):
    """PolygonRest (its classified errors, request budget and key handling) plus ticker news."""

    def ticker_news(self, symbol: str, first: dt.date, last: dt.date) -> list[Article]:
        """Articles naming `symbol` published on UTC days `first` to `last`, every page."""
        what = f"news of {symbol}"
        response = self._client.list_ticker_news(
            ticker=symbol, published_utc_gte=f"{first.isoformat()}T00:00:00Z",
            published_utc_lt=f"{(last + dt.timedelta(days=1)).isoformat()}T00:00:00Z",
            sort="published_utc", order="asc", limit=POLYGON_PAGE, raw=True)
        articles: list[Article] = []
        for page in self._pages(response, what):
            results = page.get("results", [])
            if not isinstance(results, list):
                raise _malformed(what, "results is not a list")
            articles.extend(polygon_article(r, what) for r in results)
        return articles


def load_news(settings: Settings, symbol: str, start: str, end: str,
              after_commit: AfterCommit | None = None) -> dict[str, Any]:
    """The news phase: Polygon's articles about `symbol` from `start` to `end`, stored and published."""
    provider = get_provider(settings)
    if not isinstance(provider, PolygonRest):
        skipped = "news comes from Polygon: CHRONOX_PROVIDER=polygon with POLYGON_API_KEY"
        _record_step(settings, symbol, "skipped", skipped)
        return {"symbol": symbol, "articles": 0, "new": 0, "skipped": skipped}
    from chronox.ratelimit import get_limiter

    # The same client the provider is, with the same shared request budget.
    client = PolygonNews(settings, get_limiter(settings))
    articles = client.ticker_news(symbol, dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    new = store_articles(settings, articles)
    _record_step(settings, symbol, "ok", {"articles": len(articles), "new": len(new)})
    if new and after_commit is not None:
        after_commit(settings, _days(new))
    return {"symbol": symbol, "articles": len(articles), "new": len(new), "days": _days(new)}


def _record_step(settings: Settings, symbol: str, outcome: str, detail: Any) -> None:
    """The phase's line in the run's results (run_steps)."""
    from chronox.db import get_engine
    from chronox.store import record_steps

    with get_engine(settings.database_url).begin() as conn:
        record_steps(conn, [symbol], "news", outcome, detail)


# -- RSS and Atom feeds ----------------------------------------------------------------------

class FeedError(Exception):
    """A feed could not be read; a warning for that feed, never a failed job."""


def feed_articles(feed: NewsFeed, body: bytes, content_type: str | None = None) -> list[Article]:
    """The entries of an RSS or Atom document as articles about the feed's symbols."""
    import feedparser

    parsed = feedparser.parse(body, response_headers={"content-type": content_type} if content_type else None)
    if not parsed.entries and (parsed.bozo or not parsed.get("version")):
        reason = parsed.get("bozo_exception")
        raise FeedError("not an RSS or Atom feed" + (f" ({reason})" if reason else ""))
    host = urlsplit(feed.url).hostname or "feed"
    fetched = dt.datetime.now(dt.UTC).replace(microsecond=0)
    articles = []
    for entry in parsed.entries:
        link = entry.get("link")
        guid = entry.get("id") or link
        if not guid:
            continue  # nothing to tell it from the next copy of itself
        when = entry.get("published_parsed") or entry.get("updated_parsed")
        published = dt.datetime.fromtimestamp(calendar.timegm(when), dt.UTC) if when else fetched
        articles.append(Article(
            "feed:" + hashlib.sha256(guid.encode()).hexdigest()[:40], published, f"feed:{host}"[:64],
            entry.get("title") or "", link[:2048] if link else None, feed.symbols, entry.get("summary"), None,
            {"feed": feed.url, **{k: v for k, v in entry.items() if k != "summary_detail"}}))
    return articles


def fetch_feed(feed: NewsFeed) -> list[Article]:
    import requests

    try:
        response = requests.get(feed.url, timeout=FEED_TIMEOUT, headers={"User-Agent": "ChronoX news"})
    except requests.RequestException as exc:
        raise FeedError(f"unreachable: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise FeedError(f"HTTP {response.status_code}")
    return feed_articles(feed, response.content, response.headers.get("Content-Type"))


def poll_feeds(settings: Settings, after_commit: AfterCommit | None = None,
               fetch: Callable[[NewsFeed], list[Article]] = fetch_feed) -> dict[str, Any]:
    """Read every configured feed once; store and publish what is new."""
    warnings: list[str] = []
    fetched = 0
    new: list[Article] = []
    for feed in settings.news_feeds:
        try:
            articles = fetch(feed)
        except FeedError as exc:
            warnings.append(f"{feed.url}: {exc}")
            log.warning("news feed %s: %s", feed.url, exc)
            continue
        fetched += len(articles)
        new.extend(store_articles(settings, articles))
    if new and after_commit is not None:
        after_commit(settings, _days(new))
    return {"feeds": len(settings.news_feeds), "articles": fetched, "new": len(new), "days": _days(new),
            "warnings": warnings}


def sync_lake(settings: Settings, days: Sequence[str]) -> dict[str, Any]:
    """The lake's news/date=.../part-0.parquet files of these UTC days, from the stored articles."""
    from chronox.db import get_engine
    from chronox.sinks.lake import sync_news

    engine = get_engine(settings.database_url)

    def read_day(day: dt.date) -> pa.Table:
        with engine.connect() as conn:
            return day_table(conn, day)

    return sync_news(settings, days, read_day, engine).as_dict()
