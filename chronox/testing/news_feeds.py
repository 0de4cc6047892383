"""Local stand-in for news feeds: an HTTP server serving RSS 2.0 and Atom 1.0 documents.

The documents follow the formats' own specifications: RSS_SAMPLE is the sample channel of
the RSS 2.0 specification (Liftoff News), ATOM_SAMPLE the example feed of RFC 4287 section
1.1; `rss_document` and `atom_document` render other items in exactly those shapes. Faults
per path: "500" (an HTML error page), "garbage" (200 with bytes that are no feed), "html"
(200 with a web page), "slow" (the document, late).
"""
from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from chronox.testing.servers import HTTPStandIn, StandInHandler

FAULTS = ("500", "garbage", "html", "slow")

RSS_SAMPLE = """<?xml version="1.0"?>
<rss version="2.0">
  <channel>
    <title>Liftoff News</title>
    <link>http://liftoff.msfc.nasa.gov/</link>
    <description>Liftoff to Space Exploration.</description>
    <language>en-us</language>
    <pubDate>Tue, 10 Jun 2003 04:00:00 GMT</pubDate>
    <lastBuildDate>Tue, 10 Jun 2003 09:41:01 GMT</lastBuildDate>
    <docs>http://blogs.law.harvard.edu/tech/rss</docs>
    <generator>Weblog Editor 2.0</generator>
    <managingEditor>editor@example.com</managingEditor>
    <webMaster>webmaster@example.com</webMaster>
    <item>
      <title>Star City</title>
      <link>http://liftoff.msfc.nasa.gov/news/2003/news-starcity.asp</link>
      <description>How do Americans get ready to work with Russians aboard the International Space Station? They
        take a crash course in culture, language and protocol at Russia's Star City.</description>
      <pubDate>Tue, 03 Jun 2003 09:39:21 GMT</pubDate>
      <guid>http://liftoff.msfc.nasa.gov/2003/06/03.html#item573</guid>
    </item>
    <item>
      <title>Space Exploration</title>
      <link>http://liftoff.msfc.nasa.gov/</link>
      <description>Sky watchers in Europe, Asia, and parts of Alaska and Canada will experience a partial eclipse
        of the Sun on Saturday, May 31st.</description>
      <pubDate>Fri, 30 May 2003 11:06:42 GMT</pubDate>
      <guid>http://liftoff.msfc.nasa.gov/2003/05/30.html#item572</guid>
    </item>
    <item>
      <title>The Engine That Does More</title>
      <link>http://liftoff.msfc.nasa.gov/news/2003/news-VASIMR.asp</link>
      <description>Before man travels to Mars, NASA hopes to design new engines that will let us fly through the
        Solar System more quickly.  The proposed VASIMR engine would do that.</description>
      <pubDate>Tue, 27 May 2003 08:37:32 GMT</pubDate>
      <guid>http://liftoff.msfc.nasa.gov/2003/05/27.html#item571</guid>
    </item>
  </channel>
</rss>
"""

ATOM_SAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">

  <title>Example Feed</title>
  <link href="http://example.org/"/>
  <updated>2003-12-13T18:30:02Z</updated>
  <author>
    <name>John Doe</name>
  </author>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>

  <entry>
    <title>Atom-Powered Robots Run Amok</title>
    <link href="http://example.org/2003/12/13/atom03"/>
    <id>urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a</id>
    <updated>2003-12-13T18:30:02Z</updated>
    <summary>Some text.</summary>
  </entry>

</feed>
"""


@dataclass(frozen=True)
class Item:
    title: str
    link: str
    summary: str
    published: dt.datetime  # UTC
    guid: str | None = None  # RSS guid / Atom id; the link when None


def rss_document(items: Iterable[Item], title: str = "Example News", link: str = "http://example.com/") -> str:
    """An RSS 2.0 channel shaped like the specification's sample."""
    entries = "".join(
        f"""    <item>
      <title>{escape(i.title)}</title>
      <link>{escape(i.link)}</link>
      <description>{escape(i.summary)}</description>
      <pubDate>{email.utils.format_datetime(i.published.astimezone(dt.UTC), usegmt=True)}</pubDate>
      <guid>{escape(i.guid or i.link)}</guid>
    </item>
""" for i in items)
    return f"""<?xml version="1.0"?>
<rss version="2.0">
  <channel>
    <title>{escape(title)}</title>
    <link>{escape(link)}</link>
    <description>{escape(title)}</description>
    <language>en-us</language>
{entries}  </channel>
</rss>
"""


def atom_document(items: Iterable[Item], title: str = "Example Feed", link: str = "http://example.org/") -> str:
    """An Atom 1.0 feed shaped like RFC 4287's example."""
    items = list(items)
    updated = max((i.published for i in items), default=dt.datetime(2003, 12, 13, 18, 30, 2, tzinfo=dt.UTC))
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    entries = "".join(
        f"""  <entry>
    <title>{escape(i.title)}</title>
    <link href="{escape(i.link, {'"': '&quot;'})}"/>
    <id>{escape(i.guid or i.link)}</id>
    <updated>{i.published.astimezone(dt.UTC).strftime(stamp)}</updated>
    <summary>{escape(i.summary)}</summary>
  </entry>
""" for i in items)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>{escape(title)}</title>
  <link href="{escape(link, {'"': '&quot;'})}"/>
  <updated>{updated.astimezone(dt.UTC).strftime(stamp)}</updated>
  <author>
    <name>John Doe</name>
  </author>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>
{entries}</feed>
"""


class FakeFeeds(HTTPStandIn[str]):
    """Feed documents by path, served on 127.0.0.1 from a daemon thread; `requests` logs the
    paths asked for."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self._documents: dict[str, tuple[bytes, str]] = {}
        # Unlike the API stand-ins' queued faults, a feed's fault lasts until it is lifted.
        self._faults: dict[str, str] = {}
        self.base_url = self._origin

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def serve(self, path: str, document: str, kind: str = "rss") -> str:
        """Serve `document` at `path` with its format's media type; its URL."""
        content_type = "application/atom+xml" if kind == "atom" else "application/rss+xml"
        with self._lock:
            self._documents[path] = (document.encode(), f"{content_type}; charset=utf-8")
        return self.url(path)

    def fault(self, path: str, kind: str | None) -> None:
        if kind is not None and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULTS}")
        with self._lock:
            if kind is None:
                self._faults.pop(path, None)
            else:
                self._faults[path] = kind

    def _handle(self, req: StandInHandler) -> None:
        req.send_body(*self._answer(req.path.split("?", 1)[0]))

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        with self._lock:
            self.requests.append(path)
            fault = self._faults.get(path)
            document = self._documents.get(path)
        if fault == "500":
            return 500, b"<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html"
        if fault == "garbage":
            return 200, bytes(range(256)) * 4, "application/rss+xml"
        if fault == "html":
            return 200, b"<!DOCTYPE html><html><head><title>Moved</title></head><body>Nothing</body></html>", \
                "text/html"
        if fault == "slow":
            time.sleep(2.0)
        if document is None:
            return 404, b"<html><body>Not Found</body></html>", "text/html"
        return 200, *document
