"""Feed bytes to entries: RSS 0.9x/1.0/2.0 and Atom through feedparser, JSON Feed 1.0/1.1.

Nothing here cleans text or URLs (that is ``normalize``); this module only reads formats.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from urllib.parse import urljoin, urlsplit

import feedparser
import lxml.html
from lxml import etree

from .config import split_url
from .errors import ParseError

# feedparser would otherwise fetch a URL if given a string that looks like one; we only ever
# hand it bytes, and we never let it resolve relative URIs against a server-supplied base.
feedparser.RESOLVE_RELATIVE_URIS = 0
feedparser.SANITIZE_HTML = 1


@dataclass(frozen=True)
class ParsedEntry:
    guid: str | None
    link: str | None
    title: str
    author: str | None = None
    published: datetime | None = None
    content: str | None = None
    summary: str | None = None


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    link: str | None
    format: str
    entries: tuple[ParsedEntry, ...] = field(default_factory=tuple)
    ttl_minutes: int | None = None
    skip_hours: frozenset[int] = frozenset()
    skip_days: frozenset[str] = frozenset()


_SKIP_BLOCK = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL | re.IGNORECASE)
               for name in ("skipHours", "skipDays")}
_SKIP_ITEM = {"skipHours": re.compile(r"<hour>\s*(\d{1,2})\s*</hour>", re.IGNORECASE),
              "skipDays": re.compile(r"<day>\s*([A-Za-z]+)\s*</day>", re.IGNORECASE)}
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def skip_schedule(body: bytes) -> tuple[frozenset[int], frozenset[str]]:
    """RSS ``<skipHours>`` (GMT hours 0-23) and ``<skipDays>``, which feedparser ignores."""
    head = body[:200_000].decode("utf-8", errors="replace")
    found = {}
    for name, block in _SKIP_BLOCK.items():
        match = block.search(head)
        found[name] = _SKIP_ITEM[name].findall(match.group(1)) if match else []
    hours = frozenset(int(h) % 24 for h in found["skipHours"] if int(h) <= 24)
    days = frozenset(d.lower() for d in found["skipDays"] if d.lower() in _DAYS)
    return hours, days


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def parse_feed(body: bytes, source: str, content_type: str | None = None,
               url: str | None = None) -> ParsedFeed:
    """Parse one fetched document.  Raises ``ParseError`` naming the source when it is no feed
    (for a web page, with the feeds it advertises, ``url`` being the page's address)."""
    if not body.strip():
        raise ParseError(source, "the document is empty")
    if _looks_like_json(body) or (content_type or "").split(";")[0].strip().endswith("json"):
        return _parse_json_feed(body, source)
    return _parse_xml_feed(body, source, content_type, url)


@dataclass(frozen=True)
class FeedLink:
    """A feed a web page names in its ``<link rel="alternate">`` elements."""

    url: str
    title: str | None
    kind: str  # "rss", "atom" or "json"


# The RSS autodiscovery convention and its Atom and JSON Feed counterparts.
FEED_LINK_TYPES = {"application/rss+xml": "rss", "application/rdf+xml": "rss",
                   "application/atom+xml": "atom", "application/feed+json": "json",
                   "application/json": "json"}
_HTML_START = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]",
                         re.IGNORECASE | re.DOTALL)


def looks_like_html(body: bytes, content_type: str | None) -> bool:
    """Whether a document is a web page (by its type, or by how it starts)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in ("text/html", "application/xhtml+xml"):
        return True
    return bool(_HTML_START.match(body.lstrip(b"\xef\xbb\xbf")[:4096]))


def resolved_link(base: str, href: str) -> str | None:
    """``href`` made absolute against ``base``; None for one that is no URL at all (an
    unclosed IPv6 address, a port beyond 65535: ``config.split_url``)."""
    try:
        url = urljoin(base, href)
        split_url(url)
    except ValueError:
        return None
    return url


def page_base(document, page_url: str) -> str:
    """What a page's relative links resolve against: its first ``<base href>``, else its
    own address."""
    for element in document.iter("base"):
        href = (element.get("href") or "").strip()
        if href:
            return resolved_link(page_url, href) or page_url
    return page_url


def advertised_feeds(body: bytes, page_url: str) -> list[FeedLink]:
    """The feeds a web page advertises, in page order, as absolute http(s) URLs.

    A ``<base href>`` moves what relative links resolve against.  JSON links into a
    WordPress REST API (``wp-json``) are pages of the API, not feeds.
    """
    try:
        document = lxml.html.document_fromstring(body)
    except (etree.ParserError, ValueError):
        return []
    base = page_base(document, page_url)
    found: dict[str, FeedLink] = {}
    for element in document.iter("link"):
        rel = (element.get("rel") or "").lower().split()
        media_type = (element.get("type") or "").split(";")[0].strip().lower()
        href = (element.get("href") or "").strip()
        kind = FEED_LINK_TYPES.get(media_type)
        if not href or kind is None or not {"alternate", "feed"} & set(rel):
            continue
        if kind == "json" and media_type == "application/json" and "wp-json" in href:
            continue
        url = resolved_link(base, href)
        if url and urlsplit(url).scheme in ("http", "https") and url not in found:
            found[url] = FeedLink(url, (element.get("title") or "").strip() or None, kind)
    return list(found.values())


def _not_a_feed(body: bytes, content_type: str | None, url: str | None, reason) -> str:
    if not looks_like_html(body, content_type):
        return f"not an RSS, Atom or JSON feed{f': {reason}' if reason else ''}"
    links = advertised_feeds(body, url) if url else []
    if not links:
        return ("not an RSS, Atom or JSON feed: a web page, which names no feed (`aggregator "
                "add` with the site's address also tries the usual feed addresses)")
    others = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
    return (f"not an RSS, Atom or JSON feed: a web page, which names the feed {links[0].url}"
            f"{others}: use that as the source's url")


def _struct_to_datetime(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, TypeError):
        return None


_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._-]+)", re.IGNORECASE)


def repair_utf8(body: bytes, content_type: str | None) -> bytes:
    """Replace invalid byte sequences in a document that is (or claims to be) UTF-8.

    Left alone, feedparser would re-read the whole document as windows-1252 and garble every
    correct non-ASCII character for the sake of a few bad bytes.
    """
    declared = _XML_ENCODING.match(body[:200])
    charset = _CHARSET.search(content_type or "")
    name = (declared.group(1).decode() if declared else charset.group(1) if charset else "utf-8")
    if name.lower().replace("_", "-") not in ("utf-8", "utf8"):
        return body
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="replace").encode("utf-8")


def _parse_xml_feed(body: bytes, source: str, content_type: str | None,
                    url: str | None) -> ParsedFeed:
    body = repair_utf8(body, content_type)
    headers = {"content-type": content_type} if content_type else None
    # Markup in entries is only ever turned into plain text (``normalize.html_to_text``, which
    # drops scripts and styles), so feedparser's own HTML sanitizing and link rewriting would
    # be work thrown away: a fifth of its parsing time.
    result = feedparser.parse(body, response_headers=headers, sanitize_html=False,
                              resolve_relative_uris=False)
    if not result.get("version") and not result.entries:
        raise ParseError(source, _not_a_feed(body, content_type, url,
                                             result.get("bozo_exception")))
    entries = []
    for item in result.entries:
        content = None
        if item.get("content"):
            content = max((c.get("value") or "" for c in item.content), key=len) or None
        entries.append(ParsedEntry(
            guid=item.get("id") or None,
            link=item.get("link") or None,
            title=item.get("title") or "",
            author=item.get("author") or None,
            published=_struct_to_datetime(item.get("published_parsed")
                                          or item.get("updated_parsed")),
            content=content,
            summary=item.get("summary") or None,
        ))
    feed = result.feed
    ttl = feed.get("ttl")
    skip_hours, skip_days = skip_schedule(body)
    return ParsedFeed(
        title=feed.get("title"),
        link=feed.get("link"),
        format=result.get("version") or "unknown",
        entries=tuple(entries),
        ttl_minutes=(int(ttl) if isinstance(ttl, str) and ttl.strip().isascii()
                     and ttl.strip().isdigit() else None),
        skip_hours=skip_hours,
        skip_days=skip_days,
    )


def _json_date(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.year < 1900:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(value) -> str | None:
    """A JSON value that must be a string; anything else counts as absent."""
    return value if isinstance(value, str) and value else None


def _json_author(item: dict, feed: dict) -> str | None:
    authors = item.get("authors")
    if not isinstance(authors, list):
        single = item.get("author")
        authors = [single] if isinstance(single, dict) else feed.get("authors")
    if not isinstance(authors, list):
        return None
    names = [a["name"] for a in authors if isinstance(a, dict) and _text(a.get("name"))]
    return ", ".join(names) or None


def _parse_json_feed(body: bytes, source: str) -> ParsedFeed:
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(source, f"invalid JSON: {exc}") from None
    if not isinstance(document, dict) or not str(document.get("version", "")).startswith(
            "https://jsonfeed.org/version/"):
        raise ParseError(source, "JSON document is not a JSON Feed (no jsonfeed.org version)")
    items = document.get("items")
    if not isinstance(items, list):
        raise ParseError(source, "JSON Feed has no 'items' list")
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        identifier = item.get("id")
        entries.append(ParsedEntry(
            guid=str(identifier) if isinstance(identifier, str | int) and
            not isinstance(identifier, bool) and str(identifier) else None,
            link=_text(item.get("url")),
            title=_text(item.get("title")) or "",
            author=_json_author(item, document),
            published=_json_date(item.get("date_published") or item.get("date_modified")),
            content=_text(item.get("content_html")) or text_as_html(item.get("content_text")),
            summary=_text(item.get("summary")),
        ))
    version = document["version"].rsplit("/", 1)[-1]
    return ParsedFeed(
        title=_text(document.get("title")),
        link=_text(document.get("home_page_url")),
        format=f"json{version.replace('.', '')}",
        entries=tuple(entries),
    )


def text_as_html(text) -> str | None:
    """Plain text as HTML paragraphs, one per non-empty line."""
    if not isinstance(text, str):
        return None
    return "".join(f"<p>{escape(p)}</p>" for p in text.split("\n") if p.strip())
