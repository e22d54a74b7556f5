"""The read side over HTTP: story pages, deduplicated feeds, health and metrics, and the
reading apps' APIs (``fever``, ``greader``).

Every request reads the database through its own read-only connection, so the web side never
blocks the writer and can run as a replica (``aggregator serve``) beside a daemon.  The two
exceptions are the reading apps' marks (read, saved) and the corrections asked for from a
story's page (``story_corrections``, which the daemon carries out): short transactions of
their own, which wait for the daemon's.

The handlers that read the database are plain functions, which Starlette runs in its thread
pool: a slow read (a readiness probe waiting out the writer's transaction, a search of a
common word) holds one thread, not the event loop that every other request waits on.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import nh3
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from . import __version__
from .config import AppAccount
from .corrections import KINDS, request_correction
from .fever import fever_endpoint
from .greader import client_login, reader_api
from .readers import (
    PURGED_ARTICLES,
    PURGED_DUPLICATES,
    PURGED_SAME_STORY,
    close_calls,
    counted,
    newest_matching_story_ids,
    newest_only_note,
    newest_story_ids,
    purged_totals,
    search_stories,
    store_counts,
)
from .reading import LARGEST_ID, html_link, is_whole_number, marks_connection

FEED_SIZE = 50
PAGE_SIZE = 100
STORY_SIZE_BUCKETS = (1, 2, 3, 5, 10, 20, 50)
ATOM = "http://www.w3.org/2005/Atom"


@dataclass
class DaemonStatus:
    """What the daemon tells the web side about itself (absent for a read-only replica)."""

    last_pass_finished: float | None = None  # the system clock's time, for /metrics
    last_pass_seconds: float | None = None
    # ``time.monotonic`` when it finished, for /readyz: a system clock set forward or back
    # makes no pass older or newer than it is.
    last_pass_ended: float | None = None
    index_articles: Callable[[], int] | None = None
    index_article_limit: Callable[[], int] | None = None
    # (every term ever seen, the terms whose names are in memory)
    vocabulary_terms: Callable[[], tuple[int, int]] | None = None
    # How far the system clock is ahead of the feeds' servers, and how many said so
    # (``ServerClocks.ahead_s``).
    clock_ahead_s: Callable[[], tuple[float | None, int]] | None = None
    tick_s: float = 30.0

    def pass_finished(self, seconds: float) -> None:
        self.last_pass_seconds = seconds
        self.last_pass_finished = time.time()
        self.last_pass_ended = time.monotonic()


def pass_recent(ended: float | None, now: float, tick_s: float) -> bool:
    """Whether a pass that ended at ``ended`` (``time.monotonic``; None: none yet) is recent
    enough at ``now`` for the daemon to be ready: within three ticks, and five minutes at
    least, as a long pass delays the next tick."""
    return ended is not None and now - ended <= max(300.0, 3 * tick_s)


def _reading(database: str) -> closing[sqlite3.Connection]:
    """A read-only connection, closed when done, for all of a request's reads: opening one,
    with the schema read on its first statement, costs about 0.9 ms on a store of
    1,000,000 articles."""
    conn = sqlite3.connect(f"file:{quote(str(Path(database).resolve()))}?mode=ro", uri=True,
                           timeout=5)
    conn.row_factory = sqlite3.Row
    return closing(conn)


def _dicts(conn: sqlite3.Connection, sql: str, params=()) -> list[dict]:
    return [dict(row) for row in conn.execute(sql, params)]


def _rows(database: str, sql: str, params=()) -> list[dict]:
    """The rows of one statement, for a request that reads nothing else."""
    with _reading(database) as conn:
        return _dicts(conn, sql, params)


# Each filter's condition on a story whose id is ``{story}``.
_STORY_FILTERS = {
    "source": "EXISTS (SELECT 1 FROM articles m JOIN sources s ON s.id = m.source_id "
              "WHERE m.story_id = {story} AND s.name = ?)",
    "tag": "EXISTS (SELECT 1 FROM articles m JOIN sources s ON s.id = m.source_id, "
           "json_each(s.tags) t WHERE m.story_id = {story} AND t.value = ?)",
}


def latest_stories(database: str, limit: int, min_sources: int | None = None,
                   matching: str | None = None, **filters: str | None) -> list[dict]:
    """The newest stories with their members; ``min_sources``: only those that this many
    sources or more report (the coverage that deduplication makes countable); ``matching``:
    only those with an article among the newest that match a search (``search_query``)."""
    chosen = [(_STORY_FILTERS[name], value) for name, value in filters.items() if value]
    params = [value for _condition, value in chosen]
    order = "ORDER BY last_updated DESC, story_id DESC"
    with _reading(database) as conn:
        if matching or (min_sources or 1) > 1:
            # The stories to show are chosen from their own rows first: the view works out
            # each story's sources, which only the ones shown need.
            where = "".join(f" AND {c.format(story='stories.id')}" for c, _v in chosen)
            if matching:
                ids = search_query(conn, matching, lambda c, q: newest_matching_story_ids(
                    c, q, limit, min_sources or 1, where, params))[0]
            else:
                ids = newest_story_ids(conn, limit, min_sources, where=where, params=params)
            stories = _dicts(conn, f"SELECT * FROM latest_stories WHERE story_id IN "
                                   f"({','.join('?' * len(ids))}) {order}", ids)
        else:
            where = " AND ".join(c.format(story="latest_stories.story_id") for c, _v in chosen)
            stories = _dicts(conn, f"SELECT * FROM latest_stories "
                                   f"{'WHERE ' + where if where else ''} {order} LIMIT ?",
                             [*params, limit])
        return _with_members(conn, stories)


def _with_members(conn: sqlite3.Connection, stories: list[dict]) -> list[dict]:
    """Each story (a row of ``latest_stories``) with ``members``, the canonical first."""
    if stories:
        ids = [s["story_id"] for s in stories]
        members: dict[int, list[dict]] = {i: [] for i in ids}
        for row in _dicts(conn, "SELECT * FROM article_stories WHERE story_id IN "
                                f"({','.join('?' * len(ids))}) "
                                "ORDER BY is_canonical DESC, published, article_id", ids):
            members[row["story_id"]].append(row)
        for story in stories:
            story["members"] = members[story["story_id"]]
    return stories


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="alternate" type="application/atom+xml" title="Stories" href="/feed.atom">
<link rel="alternate" type="application/feed+json" title="Stories" href="/feed.json">
<style>
body {{ font: 16px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
        padding: 0 1rem; color: #1b1b1b; }}
h1 {{ font-size: 1.5rem; }} .story {{ margin: 0 0 1.4rem; }}
.story h2 {{ font-size: 1.1rem; margin: 0; }} .meta, .also {{ color: #555; font-size: .9rem; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ text-align: left;
        padding: .35rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }}
.relation {{ font-variant: small-caps; }} a {{ color: #0645ad; }}
.notice {{ background: #fff8d6; padding: .5rem .75rem; }}
</style></head><body>{body}
<footer class="meta">news-dedup-aggregator {__version__}</footer></body></html>""")


def _story_item(story: dict, matching: int | None = None) -> str:
    """One story of a list: the canonical's title and link, when, how many versions, and
    the other outlets; ``matching``: how many of its versions a search matched."""
    others = [m for m in story["members"] if not m["is_canonical"]]
    also = ", ".join(html_link(m["url"], m["source"]) for m in others)
    matched = f" ({matching} matching)" if matching is not None else ""
    return (
        f'<article class="story"><h2>{html_link(story["canonical_url"], story["title"])}</h2>'
        f'<div class="meta">{escape(story["canonical_source"])} · '
        f'<time datetime="{escape(story["last_updated"])}">'
        f'{escape(story["last_published"][:16].replace("T", " "))} UTC</time> · '
        f'<a href="/story/{story["story_id"]}">{counted(story["article_count"], "version")} '
        f'from {counted(story["source_count"], "source")}</a>{matched}</div>'
        + (f'<div class="also">Also covered by {also}</div>' if also else "")
        + "</article>")


def _search_form(query: str = "") -> str:
    return ('<form action="/search" role="search"><input type="search" name="q" '
            f'value="{escape(query)}" aria-label="Search stories"> '
            '<button type="submit">Search</button></form>')


def home(request: Request) -> HTMLResponse:
    database = request.app.state.database
    filters = _filters(request)
    items = [_story_item(story) for story in latest_stories(database, PAGE_SIZE, **filters)]
    title = "Latest stories" + (f" covered by {filters['min_sources']} or more sources"
                                if filters["min_sources"] else "")
    kept = {k: v for k, v in filters.items() if v and k != "min_sources"}

    def choice(minimum: int, label: str) -> str:
        if (filters["min_sources"] or 1) == minimum:
            return escape(label)
        query = urlencode({**kept, "min_sources": minimum} if minimum > 1 else kept)
        return f'<a href="/{"?" + escape(query) if query else ""}">{escape(label)}</a>'

    choices = " · ".join(choice(minimum, label) for minimum, label in (
        (1, "all"), (2, "2+ sources"), (3, "3+ sources"), (5, "5+ sources")))
    body = (f'<h1>{escape(title)}</h1>{_search_form()}<p class="meta">Show: {choices} · '
            f'<a href="/sources">sources</a></p>'
            + ("".join(items) or "<p>No stories yet.</p>"))
    return _page(title, body)


def _fts_words(query: str) -> str:
    """Free text as an FTS5 query: each word a quoted term, all of them required."""
    return " ".join(f'"{word}"' for word in re.findall(r"\w+", query))


def search_query(conn: sqlite3.Connection, query: str, search) -> tuple[list, str | None]:
    """``search(conn, query)``'s result, in FTS5's syntax where the query is written in it
    (``"exact phrase"``, ``OR``, ``NOT``, ``prefix*``) and as its words otherwise (``U.S.
    talks``, ``don't``); and the words searched for in that case (empty: none)."""
    try:
        return search(conn, query), None
    except sqlite3.OperationalError:
        words = _fts_words(query)
        return (search(conn, words) if words else []), words


def search_page(request: Request) -> HTMLResponse:
    """Full-text search, one result per story.  FTS5's syntax where the query is written in
    it (``"exact phrase"``, ``OR``, ``NOT``, ``prefix*``); any other text (``U.S. talks``,
    ``don't``) is searched as its words."""
    database = request.app.state.database
    query = request.query_params.get("q", "").strip()[:500]
    heading = f"Search: {query}" if query else "Search"
    if not query:
        return _page(heading, f"<h1>Search</h1>{_search_form()}"
                              '<p><a href="/">← Latest stories</a></p>')
    with _reading(database) as conn:
        found, words = search_query(
            conn, query, lambda c, q: search_stories(c, q, PAGE_SIZE))
        # Without words to search for, nothing was searched (an empty list).
        matching = dict(found.stories) if found else {}
        newest_only = bool(found) and found.newest_only
        rank = {story_id: position for position, story_id in enumerate(matching)}
        stories = _with_members(conn, sorted(
            _dicts(conn, f"SELECT * FROM latest_stories WHERE story_id IN "
                         f"({','.join('?' * len(matching))})", list(matching)),
            key=lambda story: rank[story["story_id"]]))
    note = "" if words is None else (
        (f'<p class="meta">Searched for the words {escape(words)}' if words else
         '<p class="meta">No words to search for') + " (the query is not in FTS5 syntax).</p>")
    if newest_only:
        note += f'<p class="meta">{escape(newest_only_note())}</p>'
    follow = escape(urlencode({"q": query}))
    note += (f'<p class="meta">Follow it: <a href="/feed.atom?{follow}">Atom</a> · '
             f'<a href="/feed.json?{follow}">JSON Feed</a> (newest matches first)</p>')
    items = "".join(_story_item(story, matching[story["story_id"]]) for story in stories)
    body = (f'<p><a href="/">← Latest stories</a></p><h1>{escape(heading)}</h1>'
            f'{_search_form(query)}{note}'
            + (items or "<p>No story matches.</p>"))
    return _page(heading, body)


def _when(stamp: str | None) -> str:
    if not stamp:
        return "never"
    return f'<time datetime="{escape(stamp)}">{escape(stamp[:16].replace("T", " "))}</time>'


def sources_page(request: Request) -> HTMLResponse:
    """Each configured source's health, as ``aggregator sources`` shows it, without URLs or
    error texts: those may carry a private feed's token, and this page may be public."""
    rows = _rows(request.app.state.database,
                 "SELECT * FROM source_health WHERE in_config ORDER BY status = 'ok', name")
    failing = sum(row["status"] != "ok" for row in rows)
    body_rows = "".join(
        f'<tr><td><a href="/?{escape(urlencode({"source": row["name"]}))}">'
        f'{escape(row["name"])}</a></td>'
        f'<td class="relation">{escape(row["status"])}</td>'
        f'<td>{escape(row["last_outcome"] or "")}'
        f'{" (HTTP " + str(row["last_status"]) + ")" if row["last_status"] else ""}'
        f'<div class="meta">{_when(row["last_checked_at"])}</div></td>'
        f'<td>{_when(row["last_success_at"])}</td><td>{row["consecutive_errors"]}</td>'
        f'<td>{_when(row["next_check_at"]) if row["disabled_reason"] is None else "—"}</td>'
        f'<td>{row["articles"]}</td></tr>' for row in rows)
    body = ('<p><a href="/">← Latest stories</a></p><h1>Sources</h1>'
            f'<p class="meta">{len(rows)} sources, {failing} not ok. '
            "Errors and addresses: <code>aggregator sources</code>.</p>"
            "<table><thead><tr><th>Source</th><th>Status</th><th>Last check</th>"
            "<th>Last success</th><th>Errors in a row</th><th>Next check</th>"
            f"<th>Articles</th></tr></thead><tbody>{body_rows}</tbody></table>")
    return _page("Sources", body)


def story_page(request: Request) -> Response:
    database = request.app.state.database
    story_id = request.path_params["story_id"]
    # Beyond SQLite's integers no story can be, and the query would fail.
    if story_id > LARGEST_ID:
        return HTMLResponse("<h1>No such story</h1>", status_code=404)
    with _reading(database) as conn:
        found = _dicts(conn, "SELECT * FROM latest_stories WHERE story_id = ?", [story_id])
        if not found:
            return HTMLResponse("<h1>No such story</h1>", status_code=404)
        story = found[0]
        members = _dicts(conn, "SELECT a.*, ar.text FROM article_stories a JOIN articles ar "
                               "ON ar.id = a.article_id WHERE a.story_id = ? "
                               "ORDER BY a.is_canonical DESC, a.published, a.article_id",
                         [story_id])
        history = _dicts(conn, "SELECT * FROM canonical_history WHERE story_id = ? "
                               "ORDER BY id", [story_id])
        notice = _correction_notice(conn, request.query_params.get("correction"))
        calls = close_calls(conn, story_id)
    # Corrections are offered where the reading apps' account can sign them, and a story
    # of one version has nothing to split from.
    correcting = request.app.state.apps is not None
    splitting = correcting and len(members) > 1
    rows = "".join(
        f'<tr><td>{html_link(m["url"], m["title"])}<div class="meta">'
        f'{escape(m["text"][:280])}{"…" if len(m["text"]) > 280 else ""}</div></td>'
        f'<td>{escape(m["source"])}</td><td>{escape(m["published"])}</td>'
        f'<td class="relation">{escape(m["relation"] or "")}</td>'
        f'<td>{m["similarity"]:.2f}</td>'
        + (_split_form(story_id, m["article_id"]) if splitting else "")
        + "</tr>" for m in members)
    changes = "".join(
        f'<li>{escape(h["changed_at"])}: article {h["article_id"]}'
        + (f' replaced article {h["previous_article_id"]}' if h["previous_article_id"] else "")
        + f' — {escape(h["reason"])}</li>' for h in history)
    body = (f'<p><a href="/">← Latest stories</a></p>'
            f'{notice}'
            f'<h1>{escape(story["title"])}</h1>'
            f'<p class="meta">{counted(story["article_count"], "version")} from '
            f'{counted(story["source_count"], "source")} · first seen '
            f'{escape(story["first_seen"])} · last updated {escape(story["last_updated"])}</p>'
            '<table><thead><tr><th>Version</th><th>Source</th><th>Published</th>'
            '<th>Relation</th><th>Similarity</th>' + ("<th></th>" if splitting else "")
            + f'</tr></thead><tbody>{rows}</tbody></table>'
            + (_merge_form(story_id) if correcting else "")
            + f'<h2>Why this canonical</h2><ul>{changes}</ul>'
            + _close_calls_html(calls, story_id, correcting))
    return _page(story["title"], body)


def _close_calls_html(calls: list[dict], story_id: int, correcting: bool) -> str:
    if not calls:
        return ""
    items = "".join(
        f'<li><a href="/story/{c["story_id"]}">{escape(c["title"])}</a> '
        f'<span class="meta">{counted(c["article_count"], "version")} · '
        f'article {c["article_id"]} '
        f'scored {c["closeness"]:.0%} of its threshold</span>'
        + (f'<form method="post" action="/story/{story_id}/merge" style="display:inline">'
           f'<input type="hidden" name="story_id" value="{c["story_id"]}"> '
           '<button type="submit">Same story: merge</button></form>' if correcting else "")
        + "</li>" for c in calls)
    return ("<h2>Close calls</h2><p class=\"meta\">The other stories its versions came "
            f"closest to joining.</p><ul>{items}</ul>")


def _split_form(story_id: int, article_id: int) -> str:
    return (f'<td><form method="post" action="/story/{story_id}/split">'
            f'<input type="hidden" name="article_id" value="{article_id}">'
            '<button type="submit" title="This version tells another story: take it out">'
            'Not this story</button></form></td>')


def _merge_form(story_id: int) -> str:
    return (f'<form method="post" action="/story/{story_id}/merge" class="meta">'
            '<label>Another story that tells this one: story <input type="number" '
            'name="story_id" min="1" required></label> <button type="submit">Merge</button>'
            "</form>")


def _correction_notice(conn: sqlite3.Connection, correction: str | None) -> str:
    """Where a correction asked for from this page stands (``?correction=N``)."""
    try:
        correction_id = _form_id(correction or "", "correction")
    except ValueError:
        return ""
    found = _dicts(conn, "SELECT applied_at, story_id, error FROM story_corrections "
                         "WHERE id = ?", [correction_id])
    if not found:
        return ""
    state = found[0]
    if state["applied_at"] is None:
        text = ("waiting: the daemon carries it out once its pass in progress ends (reload "
                "this page to see it)")
    elif state["error"] is not None:
        text = f"not carried out: {escape(state['error'])}"
    else:
        text = (f'carried out: the articles are in <a href="/story/{state["story_id"]}">'
                f'story {state["story_id"]}</a>')
    return f'<p class="notice">Correction {correction_id}: {text}</p>'


async def correct_story(request: Request) -> Response:
    """``POST /story/ID/split`` (``article_id``, one or more: versions of the story) and
    ``POST /story/ID/merge`` (``story_id``: the other story): a correction kept for the
    daemon, as ``aggregator split`` and ``merge`` keep it; then back to the story's page,
    which says where it stands.  Signed with the reading apps' account (HTTP Basic), and
    refused from another site's page (its ``Origin``), since a browser sends the account
    with any form that posts here."""
    if request.path_params["kind"] not in KINDS:
        return PlainTextResponse("Not Found\n", status_code=404)
    account: AppAccount | None = request.app.state.apps
    if account is None:
        return PlainTextResponse("corrections from the web need [http.apps] in the "
                                 "configuration (its account signs them)\n", status_code=404)
    if not _same_origin(request):
        return PlainTextResponse("a correction must come from this site's pages\n",
                                 status_code=403)
    if not _signed(request, account):
        return PlainTextResponse("sign in with the reading apps' account\n", status_code=401,
                                 headers={"WWW-Authenticate":
                                          'Basic realm="aggregator", charset="UTF-8"'})
    story_id = request.path_params["story_id"]
    kind = request.path_params["kind"]
    form = await request.form()
    try:
        article_ids = await run_in_threadpool(
            _correction_articles, request.app.state.database, story_id, kind, form)
    except ValueError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    conn = marks_connection(request.app.state.database)
    try:
        correction_id = await run_in_threadpool(request_correction, conn, kind, article_ids,
                                                datetime.now(UTC))
    except sqlite3.OperationalError as exc:
        # A replica given a read-only file, or a writer that held the store too long.
        return PlainTextResponse(f"the store cannot be changed now: {exc}\n", status_code=503)
    finally:
        conn.close()
    return RedirectResponse(f"/story/{story_id}?correction={correction_id}", status_code=303)


def _same_origin(request: Request) -> bool:
    """Whether a browser's post comes from this site's pages: its ``Origin`` (sent with
    every cross-site post) is the host asked, or the ``base_url``'s (behind a proxy that
    gives the server a host of its own)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    ours = {request.headers.get("host")}
    if request.app.state.base_url:
        ours.add(urlsplit(request.app.state.base_url).netloc)
    return urlsplit(origin).netloc in ours


def _signed(request: Request, account: AppAccount) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        username, colon, password = base64.b64decode(credentials, validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared whatever the first gives, in constant time.
    same_user = hmac.compare_digest(username.encode(), account.username.encode())
    same_password = hmac.compare_digest(password.encode(), account.password.encode())
    return bool(colon) and same_user and same_password


def _form_id(value: str, name: str) -> int:
    if not is_whole_number(value) or not 0 < int(value) <= LARGEST_ID:
        raise ValueError(f"{name}: expected an id, got {value[:40]!r}")
    return int(value)


def _correction_articles(database: str, story_id: int, kind: str, form) -> list[int]:
    """The articles a correction names, from the story's page's form; a ``ValueError``
    names what is wrong."""
    if story_id > LARGEST_ID:
        raise ValueError(f"no story {story_id}")
    members = {row["id"] for row in _rows(database, "SELECT id FROM articles "
                                                    "WHERE story_id = ?", [story_id])}
    if not members:
        raise ValueError(f"no story {story_id}")
    if kind == "split":
        named = [_form_id(value, "article_id") for value in form.getlist("article_id")]
        if not named:
            raise ValueError("article_id: name the versions to take out")
        strangers = [article_id for article_id in named if article_id not in members]
        if strangers:
            raise ValueError(f"article_id: article {strangers[0]} is not a version of story "
                             f"{story_id}")
        return list(dict.fromkeys(named))
    other = _form_id(str(form.get("story_id", "")), "story_id")
    if other == story_id:
        raise ValueError("story_id: a story other than this one")
    canonicals = {row["id"]: row["canonical_article_id"] for row in _rows(
        database, "SELECT id, canonical_article_id FROM stories WHERE id IN (?, ?)",
        [story_id, other])}
    if other not in canonicals:
        raise ValueError(f"story_id: no story {other}")
    return [canonicals[story_id], canonicals[other]]


def _entry_html(story: dict) -> str:
    canonical = story["members"][0] if story["members"] else None
    parts = []
    if canonical:
        parts.append(f"<p>{escape(canonical['title'])} ({escape(canonical['source'])})</p>")
    others = [m for m in story["members"] if not m["is_canonical"]]
    if others:
        links = "".join(f'<li><a href="{escape(m["url"] or "")}">{escape(m["title"])}</a> — '
                        f'{escape(m["source"])} ({escape(m["relation"] or "")})</li>'
                        for m in others)
        parts.append(f"<p>Also covered by:</p><ul>{links}</ul>")
    # Titles come from feeds: whatever slipped through as markup is cleaned once more.
    return nh3.clean("".join(parts))


def _base_url(request: Request) -> str:
    return request.app.state.base_url or str(request.base_url).rstrip("/")


def _filters(request: Request) -> dict:
    """The story filters of a page's or a feed's query string: ``tag``, ``source`` and
    ``min_sources`` (a whole number from 1)."""
    min_sources = request.query_params.get("min_sources")
    if min_sources and not (min_sources.isascii() and min_sources.isdigit()
                                        and 1 <= int(min_sources) <= 1_000_000):
        raise HTTPException(400, f"min_sources: expected a whole number from 1, "
                                 f"got {min_sources[:40]!r}")
    return {"tag": request.query_params.get("tag"),
            "source": request.query_params.get("source"),
            "min_sources": int(min_sources) if min_sources else None}


def _feed_title(request: Request) -> str:
    query = request.query_params.get("q", "").strip()
    return f"Latest stories{f' matching {query!r}' if query else ''} (deduplicated)"


def feed_atom(request: Request) -> Response:
    base = _base_url(request)
    stories = latest_stories(request.app.state.database, FEED_SIZE, **_filters(request),
                             matching=request.query_params.get("q", "").strip()[:500])
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")

    def sub(parent, tag, text=None, **attrs):
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        if text is not None:
            element.text = text
        return element

    sub(feed, "id", f"{base}/feed.atom")
    sub(feed, "title", _feed_title(request))
    sub(feed, "updated", stories[0]["last_updated"] if stories else
        datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    sub(feed, "link", rel="self", href=str(request.url))
    sub(feed, "link", rel="alternate", href=f"{base}/")
    sub(feed, "generator", "news-dedup-aggregator", version=__version__)
    for story in stories:
        entry = sub(feed, "entry")
        sub(entry, "id", f"{base}/story/{story['story_id']}")
        sub(entry, "title", story["title"])
        sub(entry, "updated", story["last_updated"])
        sub(entry, "published", story["first_published"])
        author = sub(entry, "author")
        sub(author, "name", story["canonical_source"])
        if story["canonical_url"]:
            sub(entry, "link", rel="alternate", href=story["canonical_url"])
        for member in story["members"]:
            if not member["is_canonical"] and member["url"]:
                sub(entry, "link", rel="related", href=member["url"], title=member["source"])
        sub(entry, "content", _entry_html(story), type="html")
    body = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return Response(body, media_type="application/atom+xml; charset=utf-8")


def feed_json(request: Request) -> Response:
    base = _base_url(request)
    stories = latest_stories(request.app.state.database, FEED_SIZE, **_filters(request),
                             matching=request.query_params.get("q", "").strip()[:500])
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": _feed_title(request),
        "home_page_url": f"{base}/",
        "feed_url": str(request.url),
        "items": [{
            "id": f"{base}/story/{story['story_id']}",
            "url": story["canonical_url"] or f"{base}/story/{story['story_id']}",
            "title": story["title"],
            "content_html": _entry_html(story),
            "date_published": story["first_published"],
            "date_modified": story["last_updated"],
            "authors": [{"name": story["canonical_source"]}],
            "_aggregator": {
                "story_page": f"{base}/story/{story['story_id']}",
                "also_covered_by": [
                    {"source": m["source"], "url": m["url"], "title": m["title"],
                     "relation": m["relation"], "similarity": m["similarity"]}
                    for m in story["members"] if not m["is_canonical"]],
            },
        } for story in stories],
    }
    return Response(json.dumps(document, ensure_ascii=False),
                    media_type="application/feed+json; charset=utf-8")


def source_icon(request: Request) -> Response:
    """A source's site icon (``icons``), for the reading apps' feed lists.  Only raster
    images are stored; ``nosniff`` keeps a browser to the type given."""
    source_id = request.path_params["source_id"]
    found = _rows(request.app.state.database, "SELECT media_type, data FROM source_icons "
                                              "WHERE source_id = ?",
                  [source_id]) if source_id <= LARGEST_ID else []
    if not found:
        return PlainTextResponse("no icon\n", status_code=404)
    return Response(found[0]["data"], media_type=found[0]["media_type"],
                    headers={"Cache-Control": "public, max-age=86400",
                             "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "default-src 'none'"})


async def healthz(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


def readyz(request: Request) -> PlainTextResponse:
    """Ready when the database answers (and, in the daemon, is writable and a pass is recent)."""
    state = request.app.state
    try:
        _rows(state.database, "SELECT count(*) FROM _migrations")
        if state.status is not None:
            conn = sqlite3.connect(state.database, timeout=2, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
    except sqlite3.Error as exc:
        return PlainTextResponse(f"database not ready: {exc}\n", status_code=503)
    status = state.status
    if status is not None and not pass_recent(status.last_pass_ended, time.monotonic(),
                                              status.tick_s):
        return PlainTextResponse("no recent pass\n", status_code=503)
    return PlainTextResponse("ready\n")


def scrape_figures(conn: sqlite3.Connection) -> dict:
    """Every figure a scrape of ``/metrics`` reads from the store, from one snapshot of it.
    None needs a scan of a table that grows with the store (``readers.store_counts``,
    ``fetch_counts``)."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute
        return {
            "purged": purged_totals(conn),
            "fetches": rows("SELECT outcome, attempts FROM fetch_counts "
                            "ORDER BY outcome").fetchall(),
            "counts": store_counts(conn),
            "webhooks": rows("SELECT webhook, outcome, count(*) FROM webhook_deliveries "
                             "GROUP BY webhook, outcome").fetchall(),
            "due": rows("""SELECT count(*) FROM sources WHERE enabled AND in_config AND
                disabled_reason IS NULL AND (next_check_at IS NULL OR
                next_check_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))""").fetchone()[0],
            "sources": rows("SELECT status, count(*) FROM source_health WHERE in_config "
                            "GROUP BY status ORDER BY status").fetchall(),
            "corrections": rows("""SELECT CASE WHEN applied_at IS NULL THEN 'waiting'
                WHEN error IS NULL THEN 'done' ELSE 'refused' END AS state, count(*)
                FROM story_corrections GROUP BY state ORDER BY state""").fetchall(),
        }
    finally:
        conn.execute("ROLLBACK")


def _labelled(family, name: str, documentation: str, labels: list[str], rows):
    """A metric family (``CounterMetricFamily`` or ``GaugeMetricFamily``) of one sample a
    row: the row's labels, then its value."""
    metric = family(name, documentation, labels=labels)
    for *values, value in rows:
        metric.add_metric(values, value)
    return metric


class StoreCollector:
    """Prometheus metrics read from the database at scrape time."""

    def __init__(self, database: str, status: DaemonStatus | None):
        self.database = database
        self.status = status

    def collect(self):
        with _reading(self.database) as conn:
            read = scrape_figures(conn)
        # Counters never go down: what retention deleted (``Store.purge_stories``) is added
        # back from the totals it keeps; ``fetch_counts`` counts every attempt recorded.
        purged, counts = read["purged"], read["counts"]
        yield _labelled(CounterMetricFamily, "aggregator_fetches", "Fetch attempts by outcome",
                        ["outcome"], read["fetches"])
        yield CounterMetricFamily("aggregator_articles_ingested", "Articles stored",
                                  value=counts["articles"] + purged.get(PURGED_ARTICLES, 0))
        yield CounterMetricFamily("aggregator_articles_purged",
                                  "Articles deleted by retention (the retention setting)",
                                  value=purged.get(PURGED_ARTICLES, 0))
        yield CounterMetricFamily("aggregator_duplicates", "Articles linked as duplicates",
                                  value=counts["duplicates"]
                                  + purged.get(PURGED_DUPLICATES, 0))
        yield CounterMetricFamily("aggregator_same_story_joins",
                                  "Articles linked as other write-ups of a story",
                                  value=counts["same_story"]
                                  + purged.get(PURGED_SAME_STORY, 0))
        sizes = counts["story_sizes"]
        buckets = [(str(bound), sum(n for size, n in sizes.items() if size <= bound))
                   for bound in STORY_SIZE_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily("aggregator_story_size", "Articles per story",
                                    buckets=buckets,
                                    sum_value=sum(size * n for size, n in sizes.items()))
        yield _labelled(GaugeMetricFamily, "aggregator_webhook_stories",
                        "Stories by the outcome of their last POST to each webhook (retry: "
                        "not delivered yet)", ["webhook", "outcome"], read["webhooks"])
        yield GaugeMetricFamily("aggregator_sources_due", "Sources due for a fetch now "
                                "(the queue length)", value=read["due"])
        # What an alert on failing feeds needs: the daemon never drops one, so a feed that
        # fails for weeks shows here, not by going quiet.
        yield _labelled(GaugeMetricFamily, "aggregator_sources",
                        "Sources by state (source_health.status: ok, backoff, cooldown, "
                        "disabled, disabled in config, never fetched)", ["status"],
                        read["sources"])
        yield _labelled(GaugeMetricFamily, "aggregator_corrections",
                        "Readers' corrections (aggregator split and merge, the story pages) "
                        "by state: waiting for the daemon, done, refused", ["state"],
                        read["corrections"])
        if self.status is not None:
            if self.status.last_pass_seconds is not None:
                yield GaugeMetricFamily("aggregator_pass_duration_seconds",
                                        "Duration of the last pass",
                                        value=self.status.last_pass_seconds)
            if self.status.last_pass_finished is not None:
                yield GaugeMetricFamily("aggregator_last_pass_timestamp_seconds",
                                        "When the last pass finished",
                                        value=self.status.last_pass_finished)
            if self.status.index_articles is not None:
                yield GaugeMetricFamily("aggregator_index_articles",
                                        "Articles in the in-memory clustering index",
                                        value=self.status.index_articles())
            if self.status.index_article_limit is not None:
                yield GaugeMetricFamily("aggregator_index_article_limit",
                                        "The clustering index's article limit "
                                        "(window_articles; 0: none)",
                                        value=self.status.index_article_limit())
            if self.status.vocabulary_terms is not None:
                seen, in_memory = self.status.vocabulary_terms()
                yield GaugeMetricFamily("aggregator_vocabulary_terms",
                                        "Distinct terms seen since the store began",
                                        value=seen)
                yield GaugeMetricFamily("aggregator_vocabulary_terms_in_memory",
                                        "Terms whose names the writer keeps in memory (the "
                                        "others are read back from the store when used)",
                                        value=in_memory)
            if self.status.clock_ahead_s is not None:
                ahead, _servers = self.status.clock_ahead_s()
                if ahead is not None:
                    yield GaugeMetricFamily("aggregator_clock_ahead_of_servers_seconds",
                                            "How far the system clock is ahead of the feeds' "
                                            "servers (negative: behind), the median of their "
                                            "Date headers; over an hour holds retention",
                                            value=ahead)


def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(StoreCollector(request.app.state.database, request.app.state.status))
    return Response(generate_latest(registry),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(database: str, status: DaemonStatus | None = None,
               base_url: str | None = None, apps: AppAccount | None = None) -> Starlette:
    app = Starlette(routes=[
        Route("/", home),
        Route("/story/{story_id:int}", story_page),
        Route("/story/{story_id:int}/{kind:str}", correct_story, methods=["POST"]),
        Route("/search", search_page),
        Route("/sources", sources_page),
        Route("/feed.atom", feed_atom),
        Route("/icons/{source_id:int}", source_icon),
        Route("/feed.json", feed_json),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/fever/", fever_endpoint, methods=["GET", "POST"]),
        Route("/fever", fever_endpoint, methods=["GET", "POST"]),
        Route("/accounts/ClientLogin", client_login, methods=["GET", "POST"]),
        Route("/reader/api/0/{path:path}", reader_api, methods=["GET", "POST"]),
        # FreshRSS's address of the same API, which users of FreshRSS give their apps.
        Route("/api/greader.php/accounts/ClientLogin", client_login, methods=["GET", "POST"]),
        Route("/api/greader.php/reader/api/0/{path:path}", reader_api,
              methods=["GET", "POST"]),
    ])
    app.state.apps = apps
    app.state.database = database
    app.state.status = status
    app.state.base_url = base_url.rstrip("/") if base_url else None
    return app
