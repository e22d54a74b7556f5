from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import SEEDS

from aggregator.errors import ParseError
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed


@pytest.mark.parametrize(("file", "format_prefix"), [
    ("world-desk.rss.xml", "rss20"), ("news18-world.atom.xml", "atom"),
    ("europe-brief.feed.json", "json11"),
])
def test_seed_feeds_parse_with_title_link_guid_author_and_date(file, format_prefix):
    feed = parse_feed((SEEDS / file).read_bytes(), "seed")
    assert feed.format.startswith(format_prefix)
    [entry] = feed.entries
    assert entry.title and entry.link.startswith("https://") and entry.guid and entry.author
    assert entry.published.year == 2026 and entry.published.tzinfo is not None
    assert "Lavrov" in entry.content


def test_json_feed_fields():
    body = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "J",
      "authors": [{"name": "Feed Author"}],
      "items": [{"id": 42, "url": "https://j.example/1", "title": "One",
                 "content_text": "Line one\\nLine two", "date_published": "2026-01-30T10:00:00Z"},
                "not an item"]}"""
    feed = parse_feed(body, "j")
    [entry] = feed.entries
    assert entry.guid == "42" and entry.author == "Feed Author"
    assert entry.content == "<p>Line one</p><p>Line two</p>"
    assert entry.published == datetime(2026, 1, 30, 10, tzinfo=UTC)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"<html><body>hello</body></html>", "not an RSS, Atom or JSON feed"),
    (b"{not json", "invalid JSON"),
    (b'{"version": "1", "items": []}', "not a JSON Feed"),
    (b'{"version": "https://jsonfeed.org/version/1.1"}', "no 'items'"),
])
def test_not_a_feed_is_a_parse_error_naming_the_source(body, message):
    with pytest.raises(ParseError) as caught:
        parse_feed(body, "bad source")
    assert message in str(caught.value)
    assert "bad source" in str(caught.value)


def test_truncated_xml_still_yields_the_entries_before_the_break():
    body = (b"<?xml version='1.0'?><rss version='2.0'><channel><title>T</title>"
            b"<item><title>Kept</title><link>https://t.example/1</link></item>"
            b"<item><title>Broken")
    feed = parse_feed(body, "t")
    assert [e.title for e in feed.entries][:1] == ["Kept"]


_HOSTILE_RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>R</title>
<link>https://r.example/</link>
<item><title>Bridge &lt;script&gt;evil()&lt;/script&gt;reopens</title>
<link>https://r.example/bridge</link>
<description>&lt;p onclick="evil()"&gt;The bridge is open again.&lt;/p&gt;
&lt;script&gt;evil()&lt;/script&gt;&lt;style&gt;p { evil: 1 }&lt;/style&gt;
&lt;iframe src="https://evil.example/"&gt;evil frame&lt;/iframe&gt;</description></item>
<item><title>Ferries run</title><link>https://r.example/ferries</link>
<description><![CDATA[<div>Ferries run again.<script>evil()</script>
<img src="x" onerror="evil()"><noscript>evil fallback</noscript></div>]]></description>
</item></channel></rss>"""

_HOSTILE_ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://a.example/news/">
<title>A</title><id>urn:a</id><updated>2026-01-30T10:00:00Z</updated>
<entry><title type="html">Rail &lt;script&gt;evil()&lt;/script&gt;strike ends</title>
<id>urn:a:1</id><link href="rail-strike"/><updated>2026-01-30T10:00:00Z</updated>
<content type="html">&lt;p&gt;Trains run again.&lt;/p&gt;&lt;script&gt;evil()&lt;/script&gt;
&lt;style&gt;.x { evil: 1 }&lt;/style&gt;&lt;object&gt;evil object&lt;/object&gt;</content></entry>
<entry><title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">Port <b>opens</b></div></title>
<id>urn:a:2</id><link href="/port"/><updated>2026-01-30T11:00:00Z</updated>
<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>Ships sail again.</p>
<script>evil()</script><form action="https://evil.example/">evil form</form></div></content>
</entry></feed>"""


@pytest.mark.parametrize(("body", "expected"), [
    (_HOSTILE_RSS, [("Bridge reopens", "The bridge is open again.", "https://r.example/bridge"),
                    ("Ferries run", "Ferries run again.", "https://r.example/ferries")]),
    (_HOSTILE_ATOM, [("Rail strike ends", "Trains run again.",
                      "https://a.example/news/rail-strike"),
                     ("Port opens", "Ships sail again.", "https://a.example/port")]),
])
def test_markup_in_entries_becomes_plain_text_without_anything_executable(body, expected):
    """Entries' markup reaches the store only as the plain text that ``normalize`` extracts
    (feedparser's own sanitizing is switched off as redundant): scripts, styles, frames,
    objects, forms and event handlers leave nothing, and links still resolve against the
    feed's base."""
    fetched = datetime(2026, 1, 30, 12, tzinfo=UTC)
    articles = [normalize_entry(entry, "hostile", fetched)
                for entry in parse_feed(body, "hostile").entries]
    assert [(a.title, a.text, a.url) for a in articles] == expected
    for article in articles:
        assert "evil" not in article.title + article.text
        assert "<" not in article.title + article.text
