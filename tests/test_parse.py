from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import SEEDS

from aggregator.errors import ParseError
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
