"""Each source's site icon (favicon), for the reading apps' feed lists.

When a source is fetched and its icon is due (``icon_due``), the fetch thread also asks the
feed's site for its icon: the icons the home page names (``<link rel="icon">`` and its
kin, ``icon_links``), then ``/favicon.ico``, under the same limits, politeness and private
address rules as the feed itself.  Only raster images are kept (``image_type`` reads the
first bytes, not the server's word), at most ``ICON_BYTES``: an SVG can hold scripts, and
the icon is served from the aggregator's own site.  An icon found is checked again after
``FOUND_REFRESH_S``, a site without one after ``MISSING_RETRY_S``; a failure never touches
the feed's own state.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlsplit

import httpx
import lxml.html
from lxml import etree

from .errors import SourceError
from .fetch import FetchLimits, Outcome, fetch_http
from .parse import page_base, resolved_link

DAY_S = 86_400.0
FOUND_REFRESH_S = 30 * DAY_S
MISSING_RETRY_S = 7 * DAY_S
ICON_BYTES = 256 * 1024
HOME_PAGE_BYTES = 2 * 1024 * 1024
# Icons tried at most for one site: those its page names first, then /favicon.ico.
MAX_TRIES = 4
# The longest one request of a look-up may take, and the whole look-up: the other feeds of
# the site wait for it (``SiteIcons``), and a slow site must not hold their fetch threads.
ICON_REQUEST_S = 10.0
LOOKUP_S = 30.0

# The first bytes of each raster format kept, and its media type.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
)


@dataclass(frozen=True)
class Icon:
    url: str
    media_type: str
    data: bytes


def icon_due(checked_at: datetime | None, has_icon: bool, now: datetime) -> bool:
    """Whether a source's site is asked for its icon at this fetch."""
    if checked_at is None:
        return True
    wait = FOUND_REFRESH_S if has_icon else MISSING_RETRY_S
    return (now - checked_at).total_seconds() >= wait


def image_type(data: bytes) -> str | None:
    """The media type of a raster image by its first bytes; None for anything else."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def site_root(feed_url: str) -> str | None:
    """The home page of a feed's site: its scheme and host; None for a local feed."""
    parts = urlsplit(feed_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}/"


# Which ``rel`` values name an icon, best first.
_ICON_RELS = ("icon", "shortcut icon", "apple-touch-icon", "apple-touch-icon-precomposed")


def icon_links(body: bytes, page_url: str) -> list[str]:
    """The icons a home page names, as absolute http(s) URLs, best kind first (then in page
    order), then the site's ``/favicon.ico``."""
    named: list[tuple[int, int, str]] = []
    try:
        document = lxml.html.document_fromstring(body) if body.strip() else None
    except (etree.ParserError, ValueError):
        document = None
    if document is not None:
        base = page_base(document, page_url)
        for position, element in enumerate(document.iter("link")):
            rel = " ".join((element.get("rel") or "").lower().split())
            href = (element.get("href") or "").strip()
            if rel not in _ICON_RELS or not href or href.startswith("data:"):
                continue
            url = resolved_link(base, href)
            if url and urlsplit(url).scheme in ("http", "https"):
                named.append((_ICON_RELS.index(rel), position, url))
    fallback = resolved_link(page_url, "/favicon.ico")
    found = [url for _rank, _position, url in sorted(named)]
    return list(dict.fromkeys([*found, *([fallback] if fallback else [])]))


class SiteIcons:
    """The icons looked up lately, by site, so that the feeds of one site (a newspaper's
    fifty sections, a farm of feeds on one host) share one lookup: a fetch thread that
    finds a lookup of its site under way waits for it.  Only the last ``SITES_KEPT`` sites
    are kept: an icon can be 256 KB."""

    SITES_KEPT = 64

    def __init__(self) -> None:
        self._found: OrderedDict[str, Icon | None] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def icon(self, site: str, find: Callable[[], Icon | None]) -> Icon | None:
        with self._lock:
            lock = self._locks.setdefault(site, threading.Lock())
        with lock:
            with self._lock:
                if site in self._found:
                    self._found.move_to_end(site)
                    return self._found[site]
            found = find()
            with self._lock:
                self._found[site] = found
                while len(self._found) > self.SITES_KEPT:
                    gone, _icon = self._found.popitem(last=False)
                    self._locks.pop(gone, None)
            return found


def find_icon(client: httpx.Client, source: str, feed_url: str, limits: FetchLimits,
              host_slot: Callable[[str], AbstractContextManager[None]]) -> Icon | None:
    """The icon of a feed's site, or None when it has none that can be kept (or cannot be
    reached).  ``host_slot``: the per-host politeness each request waits for."""
    root = site_root(feed_url)
    if root is None:
        return None
    deadline = time.monotonic() + LOOKUP_S
    home = _get(client, source, root, replace(limits, max_body_bytes=HOME_PAGE_BYTES),
                host_slot, deadline)
    candidates = icon_links(home.body if home else b"", home.url if home else root)
    for url in candidates[:MAX_TRIES]:
        got = _get(client, source, url, replace(limits, max_body_bytes=ICON_BYTES), host_slot,
                   deadline)
        media_type = image_type(got.body) if got else None
        if media_type is not None:
            return Icon(url, media_type, got.body)
    return None


def _get(client: httpx.Client, source: str, url: str, limits: FetchLimits,
         host_slot: Callable[[str], AbstractContextManager[None]], deadline: float):
    """One GET's result when it answered 200 with a body, else None (errors, and a look-up
    out of time, included)."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    limits = replace(limits, total_timeout_s=min(limits.total_timeout_s, ICON_REQUEST_S, left))
    try:
        with host_slot(url):
            result = fetch_http(client, source, url, None, None, limits)
    except SourceError:
        return None
    return result if result.outcome is Outcome.OK and result.body else None
