"""Property-based tests: whatever a feed contains, parse -> normalize -> fingerprint either
works or raises one of the project's own errors."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from html import escape

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.errors import AggregatorError
from aggregator.fingerprint import Signer, TermStatistics, fingerprint_batch
from aggregator.normalize import normalize_entry
from aggregator.parse import parse_feed

SIGNER = Signer(64)
FETCHED = datetime(2026, 1, 30, tzinfo=UTC)
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

markup = st.sampled_from(["<p>", "</p>", "<script>", "</script>", "<br>", "&amp;", "&lol;",
                          "<![CDATA[", "]]>", "<a href='javascript:x'>", "\x00", "\ufffd",
                          "<iframe>", "&#0;", "&#x110000;", "<", ">", "\"", "'"])
text = st.lists(st.one_of(st.text(max_size=40), markup), max_size=12).map("".join)
dates = st.one_of(st.none(), st.text(max_size=30),
                  st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S +0000")),
                  st.datetimes().map(lambda d: d.isoformat() + "Z"))


def pipeline(body: bytes, content_type: str | None = None) -> None:
    try:
        feed = parse_feed(body, "fuzz", content_type)
    except AggregatorError:
        return
    stats = TermStatistics(100)
    for entry in feed.entries:
        article = normalize_entry(entry, "fuzz", FETCHED)
        fingerprint_batch([(article.title, article.text)], stats, SIGNER, 3, 3.0, 24)
        assert isinstance(article.text, str) and len(article.title) <= 1000


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(body):
    pipeline(body)


@FUZZ
@given(st.binary(max_size=500))
def test_arbitrary_bytes_after_a_feed_prefix(tail):
    pipeline(b"<?xml version='1.0'?><rss version='2.0'><channel><item><title>" + tail)
    pipeline(b'{"version": "https://jsonfeed.org/version/1.1", "items": [' + tail)


@FUZZ
@given(st.lists(st.fixed_dictionaries({
    "title": text, "link": st.one_of(st.none(), text), "guid": st.one_of(st.none(), text),
    "date": dates, "body": text, "author": st.one_of(st.none(), text)}), max_size=5),
    st.sampled_from(["rss", "atom"]))
def test_arbitrary_xml_feed_structures(items, kind):
    def field(tag, value, raw=False):
        if value is None:
            return ""
        return f"<{tag}>{value if raw else escape(value)}</{tag}>"

    if kind == "rss":
        entries = "".join(
            "<item>" + field("title", i["title"]) + field("link", i["link"])
            + field("guid", i["guid"]) + field("pubDate", i["date"])
            + field("author", i["author"]) + field("description", i["body"]) + "</item>"
            for i in items)
        body = f"<rss version='2.0'><channel><title>f</title>{entries}</channel></rss>"
    else:
        entries = "".join(
            "<entry>" + field("title", i["title"]) + field("id", i["guid"])
            + (f"<link href='{escape(i['link'])}'/>" if i["link"] else "")
            + field("updated", i["date"]) + field("content", i["body"]) + "</entry>"
            for i in items)
        body = f"<feed xmlns='http://www.w3.org/2005/Atom'><title>f</title>{entries}</feed>"
    pipeline(body.encode("utf-8", errors="surrogatepass"))


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(text, children, max_size=3)), max_leaves=10)


@FUZZ
@given(st.lists(st.dictionaries(
    st.sampled_from(["id", "url", "title", "content_html", "content_text", "summary",
                     "date_published", "date_modified", "authors", "author"]),
    json_value, max_size=8), max_size=5))
def test_arbitrary_json_feed_structures(items):
    body = json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": "j",
                       "items": items})
    pipeline(body.encode("utf-8", errors="surrogatepass"), "application/feed+json")


# Any Latin-1 text, and short runs of what numbers are made of, including the digits that
# Latin-1 has beyond ASCII ("¹²³", which str.isdigit takes and int refuses).
header_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
    st.text(alphabet="0123456789\u00b9\u00b2\u00b3 +-.\"", max_size=8))


@FUZZ
@given(retry_after=header_text, expires=header_text,
       cache_control=st.one_of(header_text, header_text.map(lambda v: f"max-age={v}")))
def test_whatever_a_server_sends_in_its_caching_headers_is_read_or_ignored(
        retry_after, expires, cache_control):
    """Header values come in Latin-1 from servers we do not control: each is read as a
    number of seconds or ignored (None), never an exception."""
    from aggregator.fetch import parse_expires, parse_max_age, parse_retry_after

    for seconds in (parse_retry_after(retry_after, FETCHED), parse_expires(expires, FETCHED),
                    parse_max_age(cache_control)):
        assert seconds is None or seconds >= 0
