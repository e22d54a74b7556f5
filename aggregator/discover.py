"""Finding a site's feed from an address a person has at hand, for ``aggregator add``.

The address may be the feed itself.  Else it may be the page of a site whose feeds live at
addresses made from its pages' (``known_feed_urls``: Reddit, YouTube, GitHub, Mastodon),
tried also when the page itself refuses to be fetched, as such sites often do for scripts.
Else it is a web page: the feeds it advertises
(``parse.advertised_feeds``) are the candidates, and where it advertises none that answer,
the addresses where feeds usually live, in the page's own folder and then at the site's
root.  Every candidate is fetched and parsed, so only real feeds are offered, and the first
of the usual addresses that is a feed ends the search: sites answer the same feed at several.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit

from .errors import FetchError, ParseError
from .fetch import FetchResult
from .parse import advertised_feeds, looks_like_html, parse_feed

# The paths of Miniflux's well-known feed addresses, with the bare /feed and /rss of
# WordPress, Ghost, Substack and Tumblr and the JSON Feed that static site generators write.
USUAL_FEED_PATHS = ("feed", "feed/", "rss", "rss/", "feed.xml", "rss.xml", "atom.xml",
                    "index.xml", "feed.atom", "index.rss", "rss/feed.xml", "feed.json")

# Statuses that ask a client to stop: no more of the usual addresses are tried on that site.
_STOP_STATUSES = (401, 403, 429, 503)


@dataclass(frozen=True)
class FoundFeed:
    url: str  # where to poll it: after permanent redirects, before temporary ones
    title: str | None
    format: str
    entries: int


@dataclass(frozen=True)
class Discovery:
    feeds: tuple[FoundFeed, ...]
    # "the address is a feed", "the site's feed address", "advertised by the page",
    # "at a usual address", or "" (none found)
    how: str
    # Candidates that were not feeds, with why: (URL, reason).
    rejected: tuple[tuple[str, str], ...] = ()


def known_feed_urls(page_url: str) -> list[str]:
    """Feeds that sites publish at addresses made from their pages' own: a subreddit's or a
    user's ``.rss``, a YouTube channel's or playlist's feed, a GitHub repository's releases,
    a Mastodon account's ``.rss``."""
    parts = urlsplit(page_url)
    host = (parts.hostname or "").lower().removeprefix("www.").removeprefix("old.")
    path = parts.path.rstrip("/")
    if host == "reddit.com" and (match := re.match(r"^/(r|u|user)/([\w-]+)", path)):
        kind = "r" if match.group(1) == "r" else "user"
        return [f"https://www.reddit.com/{kind}/{match.group(2)}/.rss"]
    if host in ("youtube.com", "m.youtube.com"):
        if match := re.match(r"^/channel/(UC[\w-]+)", path):
            return [f"https://www.youtube.com/feeds/videos.xml?channel_id={match.group(1)}"]
        if playlist := parse_qs(parts.query).get("list"):
            return [f"https://www.youtube.com/feeds/videos.xml?playlist_id={playlist[0]}"]
        return []  # a channel's @handle page advertises the channel's feed itself
    if host == "github.com" and (match := re.match(r"^/([\w.-]+)/([\w.-]+)", path)):
        return [f"https://github.com/{match.group(1)}/{match.group(2)}/releases.atom"]
    if re.match(r"^/@\w+$", path):
        return [f"{parts.scheme}://{parts.netloc}{path}.rss"]
    return []


def usual_feed_urls(page_url: str) -> list[str]:
    """The usual feed addresses for a page: in its own folder first, then at the site root."""
    folder, root = urljoin(page_url, "./"), urljoin(page_url, "/")
    bases = [folder] if folder == root else [folder, root]
    return list(dict.fromkeys(urljoin(base, path) for base in bases for path in USUAL_FEED_PATHS))


def _as_feed(url: str, result: FetchResult) -> FoundFeed:
    feed = parse_feed(result.body, url, result.content_type, result.url)
    return FoundFeed(result.permanent_redirect or url, feed.title, feed.format,
                     len(feed.entries))


def _try(get: Callable[[str], FetchResult], url: str) -> FoundFeed | str:
    """The feed at ``url``, or why there is none."""
    try:
        return _as_feed(url, get(url))
    except (FetchError, ParseError) as error:
        return error.message


def _known_feed(get: Callable[[str], FetchResult], url: str) -> Discovery | None:
    for known in known_feed_urls(url):
        if not isinstance(found := _try(get, known), str):
            return Discovery((found,), "the site's feed address")
    return None


def find_feeds(url: str, get: Callable[[str], FetchResult]) -> Discovery:
    """The feeds to be found from ``url``; ``get`` fetches one URL (``fetch.fetch`` under the
    configuration's limits).  A ``FetchError`` for ``url`` itself, or a ``ParseError`` for a
    document that is neither a feed nor a web page, goes to the caller."""
    try:
        result = get(url)
    except FetchError:
        if known := _known_feed(get, url):
            return known
        raise
    try:
        return Discovery((_as_feed(url, result),), "the address is a feed")
    except ParseError:
        if not looks_like_html(result.body, result.content_type):
            raise
    if known := _known_feed(get, result.url):
        return known
    feeds: dict[str, FoundFeed] = {}
    rejected: list[tuple[str, str]] = []
    for link in advertised_feeds(result.body, result.url):
        found = _try(get, link.url)
        if isinstance(found, str):
            rejected.append((link.url, found))
        else:
            feeds.setdefault(found.url, found)
    if feeds:
        return Discovery(tuple(feeds.values()), "advertised by the page", tuple(rejected))
    for candidate in usual_feed_urls(result.url):
        try:
            return Discovery((_as_feed(candidate, get(candidate)),), "at a usual address",
                             tuple(rejected))
        except ParseError:
            continue
        except FetchError as error:
            if error.status in _STOP_STATUSES or error.unreachable:
                rejected.append((candidate, error.message))
                break
    return Discovery((), "", tuple(rejected))
