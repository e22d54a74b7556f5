"""Feed bytes to entries: RSS 0.9x/1.0/2.0 and Atom through feedparser, JSON Feed 1.0/1.1.

Nothing here cleans text or URLs (that is ``normalize``); this module only reads formats.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import feedparser

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


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def parse_feed(body: bytes, source: str, content_type: str | None = None) -> ParsedFeed:
    """Parse one fetched document.  Raises ``ParseError`` naming the source when it is no feed."""
    if not body.strip():
        raise ParseError(source, "the document is empty")
    if _looks_like_json(body) or (content_type or "").split(";")[0].strip().endswith("json"):
        return _parse_json_feed(body, source)
    return _parse_xml_feed(body, source, content_type)


def _struct_to_datetime(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, TypeError):
        return None


def _parse_xml_feed(body: bytes, source: str, content_type: str | None) -> ParsedFeed:
    headers = {"content-type": content_type} if content_type else None
    result = feedparser.parse(body, response_headers=headers)
    if not result.get("version") and not result.entries:
        reason = result.get("bozo_exception")
        detail = f": {reason}" if reason else ""
        raise ParseError(source, f"not an RSS, Atom or JSON feed{detail}")
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
    return ParsedFeed(
        title=feed.get("title"),
        link=feed.get("link"),
        format=result.get("version") or "unknown",
        entries=tuple(entries),
        ttl_minutes=int(ttl) if isinstance(ttl, str) and ttl.strip().isdigit() else None,
    )


def _json_date(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_author(item: dict, feed: dict) -> str | None:
    authors = item.get("authors") or ([item["author"]] if isinstance(item.get("author"), dict)
                                      else None) or feed.get("authors") or []
    names = [a.get("name") for a in authors if isinstance(a, dict) and a.get("name")]
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
        entries.append(ParsedEntry(
            guid=str(item["id"]) if item.get("id") is not None else None,
            link=item.get("url") if isinstance(item.get("url"), str) else None,
            title=item.get("title") if isinstance(item.get("title"), str) else "",
            author=_json_author(item, document),
            published=_json_date(item.get("date_published") or item.get("date_modified")),
            content=item.get("content_html") or _text_as_html(item.get("content_text")),
            summary=item.get("summary") if isinstance(item.get("summary"), str) else None,
        ))
    version = document["version"].rsplit("/", 1)[-1]
    return ParsedFeed(
        title=document.get("title"),
        link=document.get("home_page_url"),
        format=f"json{version.replace('.', '')}",
        entries=tuple(entries),
    )


def _text_as_html(text) -> str | None:
    if not isinstance(text, str):
        return None
    from html import escape
    return "".join(f"<p>{escape(p)}</p>" for p in text.split("\n") if p.strip())
