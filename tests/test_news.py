"""News: the `news` phase against the Polygon stand-in serving Polygon's documented
ticker-news example, RSS 2.0 and Atom feeds from a local server (with feeds that are down
or answer garbage), one row per article, one Kafka event per ticker, the lake's news files."""
import copy
import datetime as dt
import json
import socket

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from chronox import registry
from chronox.cli import cli
from chronox.db import get_engine
from chronox.testing.news_feeds import ATOM_SAMPLE, RSS_SAMPLE, FakeFeeds, Item, rss_document
from chronox.testing.polygon_rest import NEWS_EXAMPLE
from tests.helpers import count

pytestmark = pytest.mark.timeout(120)


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def news_rows(url):
    with get_engine(url).connect() as conn:
        return {r.id: r for r in conn.execute(text("SELECT * FROM news ORDER BY id"))}


def generated(i, day):
    """An article shaped like Polygon's example, about NWA (and NWB for every third)."""
    article = copy.deepcopy(NEWS_EXAMPLE)
    article.update(id=f"{i:064x}", article_url=f"https://news.example.com/nwa/{i}", title=f"NWA story {i}",
                   tickers=["NWA", "NWB"] if i % 3 == 0 else ["NWA"],
                   published_utc=(dt.datetime.combine(day, dt.time(12), dt.UTC)
                                  + dt.timedelta(seconds=37 * i)).isoformat().replace("+00:00", "Z"),
                   insights=[{"ticker": "NWA", "sentiment": "negative", "sentiment_reasoning": "test"}]
                   if i % 2 == 0 else [])
    if i % 2:
        del article["insights"]  # not every article has insights
    return article


def test_news_phase_stores_each_article_once_and_publishes_it_per_ticker(pg_url, polygon, kafka):
    days = [dt.date(2024, 6, 24), dt.date(2024, 6, 25)]
    articles = [generated(i, days[i % 2]) for i in range(1004)]  # more than one page of 1000
    late = generated(5000, dt.date(2024, 6, 27))  # after the window: not asked for
    polygon.add_news([NEWS_EXAMPLE, *articles, late])
    engine = get_engine(pg_url)
    for symbol in ("NWA", "UBS"):
        registry.add_symbol(engine, symbol, "news")
    invoke("run", "--symbols", "NWA", "--symbols", "UBS", "--start", "2024-06-24", "--end", "2024-06-26")

    rows = news_rows(pg_url)
    assert len(rows) == 1005 and late["id"] not in rows
    ubs = rows[NEWS_EXAMPLE["id"]]
    assert ubs.title == NEWS_EXAMPLE["title"] and ubs.url == NEWS_EXAMPLE["article_url"]
    assert ubs.source == "polygon" and json.loads(ubs.tickers) == ["UBS"]
    assert ubs.published_utc == dt.datetime(2024, 6, 24, 18, 33, 53, tzinfo=dt.UTC)
    assert json.loads(ubs.sentiment) == {"UBS": "positive"} and json.loads(ubs.raw) == NEWS_EXAMPLE
    assert json.loads(rows[articles[0]["id"]].sentiment) == {"NWA": "negative"}
    assert rows[articles[1]["id"]].sentiment is None
    pages = [r for r in polygon.requests if r.path == "/v2/reference/news"]
    assert len(pages) == 3  # NWA: two pages; UBS: one
    assert all(r.has_auth and "apiKey" not in r.query for r in pages)
    assert {r.query.get("ticker") for r in pages if "ticker" in r.query} == {"NWA", "UBS"}

    [event] = kafka.json_messages("chronox.news.UBS")
    assert event == {"event": "news", "symbol": "UBS", "id": NEWS_EXAMPLE["id"],
                     "published_utc": "2024-06-24T18:33:53Z", "source": "polygon", "title": NEWS_EXAMPLE["title"],
                     "url": NEWS_EXAMPLE["article_url"], "tickers": ["UBS"],
                     "description": NEWS_EXAMPLE["description"], "sentiment": "positive", "version": "v1"}
    nwa = kafka.json_messages("chronox.news.NWA")
    assert sorted(e["id"] for e in nwa) == sorted(a["id"] for a in articles)
    assert {e["sentiment"] for e in nwa} == {"negative", None}
    nwb = kafka.json_messages("chronox.news.NWB")  # named by the article, though not registered
    assert sorted(e["id"] for e in nwb) == sorted(a["id"] for a in articles if "NWB" in a["tickers"])
    assert all(e["sentiment"] is None for e in nwb)

    invoke("run", "--symbols", "NWA", "--symbols", "UBS", "--start", "2024-06-24", "--end", "2024-06-26")
    assert len(news_rows(pg_url)) == 1005  # nothing new: nothing stored or published again
    assert len(kafka.json_messages("chronox.news.NWA", timeout_ms=1000)) == len(nwa)
    assert [r.status for r in registry.list_symbols(engine, symbols=["NWA", "UBS"])] == ["completed"] * 2


def test_news_phase_without_polygon_is_left_out_with_the_warning(sqlite_url):
    registry.add_symbol(get_engine(sqlite_url), "NWS", "news")
    output = invoke("run", "--symbols", "NWS", "--start", "2024-06-24", "--end", "2024-06-24")
    row = registry.get_symbol(get_engine(sqlite_url), "NWS")
    assert row.status == "completed" and "POLYGON_API_KEY is not set" in (row.error_message or ""), output
    assert count(sqlite_url, "SELECT count(*) FROM news") == 0


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_feeds_are_read_each_article_kept_once_and_bad_feeds_are_warnings(pg_url, kafka, tmp_path, monkeypatch):
    with FakeFeeds() as feeds:
        atom_entry_url = "http://example.org/2003/12/13/atom03"
        market = rss_document([
            Item("Robots again", atom_entry_url, "The Atom sample's article, syndicated here",
                 dt.datetime(2003, 12, 13, 18, 30, 2, tzinfo=dt.UTC), guid="market-1"),
            Item("NWR and NWT merge <talks>", "http://news.example.com/merge", "Both & more",
                 dt.datetime(2024, 1, 3, 14, 0, tzinfo=dt.UTC)),
        ], title="Market wire")
        config = [
            {"url": feeds.serve("/liftoff.rss", RSS_SAMPLE), "symbols": ["nwr"]},
            {"url": feeds.serve("/example.atom", ATOM_SAMPLE, kind="atom"), "symbols": ["NWT"]},
            {"url": feeds.serve("/market.rss", market), "symbols": ["NWR", "NWT"]},
            {"url": feeds.url("/broken.rss"), "symbols": ["NWR"]},
            {"url": feeds.url("/garbage.rss"), "symbols": ["NWR"]},
            {"url": feeds.url("/moved.rss"), "symbols": ["NWR"]},
            {"url": f"http://127.0.0.1:{closed_port()}/down.rss", "symbols": ["NWR"]},
        ]
        feeds.serve("/broken.rss", RSS_SAMPLE)
        feeds.fault("/broken.rss", "500")
        feeds.serve("/garbage.rss", RSS_SAMPLE)
        feeds.fault("/garbage.rss", "garbage")
        feeds.fault("/moved.rss", "html")
        monkeypatch.setenv("CHRONOX_NEWS_FEEDS", json.dumps(config))
        monkeypatch.setenv("CHRONOX_LAKE_URL", str(tmp_path / "lake"))

        result = json.loads(invoke("schedule", "trigger", "news_feeds"))
        assert (result["feeds"], result["articles"], result["new"]) == (7, 6, 5)
        assert [w.split(": ", 1)[0] for w in result["warnings"]] == [c["url"] for c in config[3:]]
        assert "HTTP 500" in result["warnings"][0] and "not an RSS or Atom feed" in result["warnings"][1]
        assert "not an RSS or Atom feed" in result["warnings"][2] and "unreachable" in result["warnings"][3]

        rows = {r.title: r for r in news_rows(pg_url).values()}
        assert sorted(rows) == ["Atom-Powered Robots Run Amok", "NWR and NWT merge <talks>", "Space Exploration",
                                "Star City", "The Engine That Does More"]
        star = rows["Star City"]
        assert star.url == "http://liftoff.msfc.nasa.gov/news/2003/news-starcity.asp"
        assert star.published_utc == dt.datetime(2003, 6, 3, 9, 39, 21, tzinfo=dt.UTC)
        assert json.loads(star.tickers) == ["NWR"] and star.source.startswith("feed:127.0.0.1")
        assert "crash course in culture" in star.description
        robots = rows["Atom-Powered Robots Run Amok"]  # the market wire's copy (same URL) was not stored again
        assert robots.url == atom_entry_url and json.loads(robots.tickers) == ["NWT"]
        assert robots.description == "Some text." and robots.sentiment is None
        assert json.loads(rows["NWR and NWT merge <talks>"].tickers) == ["NWR", "NWT"]

        nwr = kafka.json_messages("chronox.news.NWR")
        assert sorted(e["title"] for e in nwr) == ["NWR and NWT merge <talks>", "Space Exploration", "Star City",
                                                   "The Engine That Does More"]
        nwt = kafka.json_messages("chronox.news.NWT")
        assert sorted(e["title"] for e in nwt) == ["Atom-Powered Robots Run Amok", "NWR and NWT merge <talks>"]

        lake = ds.dataset(str(tmp_path / "lake" / "news"), format="parquet", partitioning="hive").to_table()
        assert sorted(lake.column("title").to_pylist()) == sorted(rows)
        day = lake.filter(ds.field("date") == "2003-06-03").to_pylist()
        assert [(r["title"], r["tickers"]) for r in day] == [("Star City", ["NWR"])]

        again = json.loads(invoke("schedule", "trigger", "news_feeds"))
        assert (again["articles"], again["new"], len(again["warnings"])) == (6, 0, 4)
        assert len(kafka.json_messages("chronox.news.NWR", timeout_ms=1000)) == 4
        assert count(pg_url, "SELECT count(*) FROM news") == 5


def test_news_feed_settings_and_beat_job(monkeypatch):
    import importlib

    import celeryconfig
    from chronox.settings import ConfigError, load_settings

    monkeypatch.setenv("CHRONOX_NEWS_FEEDS", '[{"url": "https://example.com/a.rss", "symbols": ["brk.b"]}]')
    assert load_settings().news_feeds[0].symbols == ("BRK.B",)
    entry = importlib.reload(celeryconfig).beat_schedule["news_feeds"]
    assert (entry["task"], entry["schedule"], entry["options"]["queue"]) == ("chronox.news.feeds", 900, "chronox.rest")
    for bad in ("not json", '{"url": "x"}', '[{"url": "ftp://x", "symbols": []}]',
                '[{"url": "https://x", "symbols": ["no way"]}]'):
        monkeypatch.setenv("CHRONOX_NEWS_FEEDS", bad)
        with pytest.raises(ConfigError, match="CHRONOX_NEWS_FEEDS"):
            load_settings()
    monkeypatch.delenv("CHRONOX_NEWS_FEEDS")
    importlib.reload(celeryconfig)
