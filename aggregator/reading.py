"""What a reader has read and saved, by story (migration ``016_reading_marks``).

Marks are kept per article and read per story: a story is read when one of its versions is,
and saved when one of them is.  Marking a story marks every version it has, so the mark
follows the articles when ``aggregator recluster`` rebuilds the stories, and a version that
joins the story later does not bring it back unread: deduplication is for reading a story
once.  The web side writes marks beside the daemon's writer through a connection of its own
(``marks_connection``).  What the reading apps' APIs share is here too: the stories as
items (``story_items``, ``item_html``) and the sources as feeds (``app_sources``).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

import nh3

from .config import AppAccount
from .readers import BUSY_TIMEOUT_MS, from_iso, read_only_connection, select_in, to_iso

# The largest id SQLite stores (a signed 64-bit integer): a larger one asked for by an app
# matches nothing, and would make the query fail.
LARGEST_ID = 2**63 - 1


def is_whole_number(text: str) -> bool:
    """Whether ``text`` is a whole number in ASCII digits (``str.isdigit`` takes "²", which
    ``int`` refuses)."""
    return text.isascii() and text.isdigit()


# A mark's column, by what it says.
_COLUMNS = {"read": "read_at", "saved": "saved_at"}

# The members of the stories in the JSON array ``?1``.
_MEMBERS = "SELECT id FROM articles WHERE story_id IN (SELECT value FROM json_each(?1))"

# Whether the story ``s`` has a saved version.  Whether it has a read one, its own count
# says (``read_versions``, kept by triggers).
_SAVED = ("EXISTS (SELECT 1 FROM articles a JOIN article_marks m ON m.article_id = a.id "
          "WHERE a.story_id = s.id AND m.saved_at IS NOT NULL)")


def marks_connection(database: str) -> sqlite3.Connection:
    """A connection that writes marks beside the daemon: each change is one short
    transaction, which waits for the daemon's to end (``busy_timeout``)."""
    conn = sqlite3.connect(Path(database).resolve(), timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def mark_stories(conn: sqlite3.Connection, story_ids: Sequence[int], mark: str, on: bool,
                 now: datetime) -> int:
    """Set (``on``) or clear the mark ``mark`` ("read" or "saved") on every version of the
    stories ``story_ids``, in one transaction; returns how many articles changed.  A mark
    already set keeps its time."""
    column = _COLUMNS[mark]
    stories = json.dumps([int(story_id) for story_id in story_ids])
    conn.execute("BEGIN IMMEDIATE")
    try:
        if on:
            changed = conn.execute(
                f"INSERT INTO article_marks (article_id, {column}) SELECT id, ?2 "
                "FROM articles WHERE story_id IN (SELECT value FROM json_each(?1)) "
                f"ON CONFLICT (article_id) DO UPDATE SET {column} = excluded.{column} "
                f"WHERE {column} IS NULL", [stories, to_iso(now)]).rowcount
        else:
            changed = conn.execute(
                f"UPDATE article_marks SET {column} = NULL "
                f"WHERE {column} IS NOT NULL AND article_id IN ({_MEMBERS})", [stories]).rowcount
            conn.execute("DELETE FROM article_marks WHERE read_at IS NULL AND saved_at IS NULL "
                         f"AND article_id IN ({_MEMBERS})", [stories])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changed


def marked_story_ids(conn: sqlite3.Connection, story_ids: Sequence[int], mark: str) -> set[int]:
    """Which of ``story_ids`` have a version marked ``mark``."""
    if mark == "read":
        return {row[0] for row in select_in(
            conn, "SELECT id FROM stories WHERE read_versions > 0 AND id IN ({})",
            list(story_ids))}
    column = _COLUMNS[mark]
    return {row[0] for row in select_in(
        conn, "SELECT DISTINCT a.story_id FROM articles a JOIN article_marks m "
              f"ON m.article_id = a.id WHERE m.{column} IS NOT NULL AND a.story_id IN ({{}})",
        list(story_ids))}


def unread_story_ids(conn: sqlite3.Connection, updated_since: datetime) -> list[int]:
    """The stories updated since ``updated_since`` (their newest version's fetch) that no
    version of is read, by id; older ones count as read."""
    # The partial index holds only the stories with no read version: on 1,000,000 articles
    # a daily reader leaves a few thousand of the 30 days' 216,000 stories unread.
    return sorted(row[0] for row in conn.execute(
        "SELECT id FROM stories INDEXED BY stories_unread "
        "WHERE last_seen >= ? AND read_versions = 0", [to_iso(updated_since)]))


def saved_story_ids(conn: sqlite3.Connection) -> list[int]:
    """The stories with a saved version, by id."""
    # From the saved marks to their articles (CROSS JOIN keeps that order): the planner
    # would otherwise walk every article by story and look each one up, 297 ms against
    # 11 on 1,000,000 articles.
    return [row[0] for row in conn.execute(
        "SELECT DISTINCT a.story_id FROM article_marks m INDEXED BY article_marks_saved "
        "CROSS JOIN articles a ON a.id = m.article_id WHERE m.saved_at IS NOT NULL "
        "AND a.story_id IS NOT NULL ORDER BY a.story_id")]


def mark_read_before(conn: sqlite3.Connection, before: datetime, updated_since: datetime,
                     now: datetime, source_ids: Sequence[int] | None = None) -> int:
    """Mark read the unread stories first seen before ``before`` (an app's "mark all as
    read", which leaves alone what arrived after the list it showed); ``source_ids``: only
    those whose canonical comes from one of these sources.  Returns how many stories."""
    # Store times are whole seconds, cut short: what was seen before 12:00:00.5 is stored
    # as 12:00:00 or earlier.
    if before.microsecond:
        before = before.replace(microsecond=0) + timedelta(seconds=1)
    where = ""
    params: list = [to_iso(updated_since), to_iso(before)]
    if source_ids is not None:
        where = (" AND canonical_article_id IN (SELECT id FROM articles WHERE source_id IN "
                 "(SELECT value FROM json_each(?)))")
        params.append(json.dumps([int(source_id) for source_id in source_ids]))
    ids = [row[0] for row in conn.execute(
        f"SELECT id FROM stories INDEXED BY stories_unread WHERE last_seen >= ? "
        f"AND first_seen < ?{where} AND read_versions = 0", params)]
    if ids:
        mark_stories(conn, ids, "read", True, now)
    return len(ids)


@dataclass(frozen=True)
class Version:
    """One version of a story: where it comes from and how it relates to the canonical."""

    source: str
    title: str
    url: str | None
    relation: str | None
    similarity: float | None


@dataclass(frozen=True)
class StoryItem:
    """A story as a reading app shows it: the canonical's text, the other versions."""

    story_id: int
    source_id: int
    title: str
    author: str | None
    url: str | None
    text: str
    first_seen: str
    published: str
    updated: str
    others: tuple[Version, ...]
    read: bool
    saved: bool


def story_items(conn: sqlite3.Connection, story_ids: Sequence[int]) -> list[StoryItem]:
    """The stories ``story_ids`` that exist, in the order given, with their marks."""
    ids = list(dict.fromkeys(int(story_id) for story_id in story_ids))
    if not ids:
        return []
    stories = {row[0]: row for row in select_in(
        conn, "SELECT s.id, c.source_id, s.title, c.author, c.url, c.text, s.first_seen, "
              "s.first_published, s.last_published "
              "FROM stories s JOIN articles c ON c.id = s.canonical_article_id "
              "WHERE s.id IN ({})", ids)}
    others: dict[int, list[Version]] = {story_id: [] for story_id in stories}
    for row in select_in(
            conn, "SELECT a.story_id, src.name, a.title, a.url, a.relation, a.similarity "
                  "FROM articles a JOIN sources src ON src.id = a.source_id "
                  "JOIN stories s ON s.id = a.story_id "
                  "WHERE a.story_id IN ({}) AND a.id != s.canonical_article_id "
                  "ORDER BY a.published, a.id", list(stories)):
        others[row[0]].append(Version(*row[1:]))
    read = marked_story_ids(conn, list(stories), "read")
    saved = marked_story_ids(conn, list(stories), "saved")
    return [StoryItem(story_id=story_id, source_id=row[1], title=row[2], author=row[3],
                      url=row[4], text=row[5], first_seen=row[6], published=row[7],
                      updated=row[8], others=tuple(others[story_id]), read=story_id in read,
                      saved=story_id in saved)
            for story_id in ids if (row := stories.get(story_id))]


def story_ids_after(conn: sqlite3.Connection, after_id: int, limit: int) -> list[int]:
    """The ``limit`` stories after ``after_id``, oldest first."""
    return [row[0] for row in conn.execute(
        "SELECT id FROM stories WHERE id > ? AND canonical_article_id IS NOT NULL "
        "ORDER BY id LIMIT ?", [after_id, limit])]


def story_ids_before(conn: sqlite3.Connection, before_id: int, limit: int) -> list[int]:
    """The ``limit`` stories before ``before_id``, newest first."""
    return [row[0] for row in conn.execute(
        "SELECT id FROM stories WHERE id < ? AND canonical_article_id IS NOT NULL "
        "ORDER BY id DESC LIMIT ?", [before_id, limit])]


def item_html(item: StoryItem, story_page: str) -> str:
    """The canonical's text, then the other versions of the story, linked."""
    paragraphs = [p.strip() for p in item.text.split("\n") if p.strip()]
    parts = [f"<p>{escape(p)}</p>" for p in paragraphs]
    if item.others:
        links = "".join(
            f"<li>{html_link(v.url, v.title)} — {escape(v.source)} ({escape(v.relation or '')}"
            + (f", {v.similarity:.2f}" if v.similarity is not None else "") + ")</li>"
            for v in item.others)
        parts.append(f"<p>Also covered by:</p><ul>{links}</ul>")
    parts.append(f'<p><a href="{escape(story_page)}">Every version of this story</a></p>')
    # The text and titles come from feeds: cleaned once more, whatever slipped through.
    return nh3.clean("".join(parts))


def html_link(url: str | None, text: str) -> str:
    """``text`` as a link to ``url`` where that is an http(s) URL (a feed's links may be
    anything), else as plain text; both escaped."""
    if url and url.startswith(("http://", "https://")):
        return f'<a href="{escape(url)}">{escape(text)}</a>'
    return escape(text)


def unix_time(stamp: str | None) -> int:
    """A store time (``YYYY-MM-DDTHH:MM:SSZ``) in seconds since the epoch; 0 for none."""
    return int(from_iso(stamp).timestamp()) if stamp else 0


@dataclass(frozen=True)
class AppSource:
    """A source as the apps list it: a feed, in a folder for each tag."""

    source_id: int
    name: str
    url: str
    last_success: str | None
    tags: tuple[str, ...]
    # Whether its site's icon is stored (``icons``; served at ``icon_path``).
    has_icon: bool = False

    @property
    def icon_path(self) -> str:
        return f"/icons/{self.source_id}"

    @property
    def site_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}/" if parts.scheme in ("http", "https") else ""


def data_url(media_type: str, data: bytes) -> str:
    """An icon as Fever gives it: ``image/png;base64,...``."""
    return f"{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def app_sources(conn: sqlite3.Connection) -> list[AppSource]:
    """The configured sources, and those removed from the configuration whose stories are
    still stored (their items name them), by id."""
    return [AppSource(source_id, name, url, last_success, tuple(json.loads(tags)),
                      bool(has_icon))
            for source_id, name, url, last_success, tags, has_icon in conn.execute(
                "SELECT id, name, url, last_success_at, tags, EXISTS (SELECT 1 FROM "
                "source_icons i WHERE i.source_id = sources.id) FROM sources "
                "WHERE in_config OR article_count > 0 ORDER BY id")]


@dataclass(frozen=True)
class StreamQuery:
    """Which stories a list asks for, and in which order (the Google Reader API's
    streams): ``sources``, only those whose canonical comes from one of them; ``read``,
    only the read (True) or the unread (False) ones; ``saved``, only the saved ones;
    ``oldest``/``newest``, first seen in that span (``newest`` excluded); ``after_id``, the
    list goes on after that story (the page before ended there)."""

    limit: int
    sources: tuple[int, ...] | None = None
    read: bool | None = None
    saved: bool = False
    oldest: datetime | None = None
    newest: datetime | None = None
    oldest_first: bool = False
    after_id: int | None = None


def stream_story_ids(conn: sqlite3.Connection, query: StreamQuery,
                     updated_since: datetime) -> list[int]:
    """The ids of one page of the stories ``query`` asks for, by id in its order.  Stories
    updated before ``updated_since`` count as read, as in ``unread_story_ids``."""
    where = ["s.canonical_article_id IS NOT NULL"]
    params: list = []
    if query.read is False or query.saved:
        # From the short lists, not a walk through every story checking each.
        chosen = (unread_story_ids(conn, updated_since) if query.read is False
                  else saved_story_ids(conn))
        where.append("s.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(chosen))
    if query.read is False and query.saved:
        where.append(_SAVED)
    if query.read:
        where.append("(s.last_seen < ? OR s.read_versions > 0)")
        params.append(to_iso(updated_since))
    if query.sources is not None:
        where.append("s.canonical_article_id IN (SELECT id FROM articles "
                     "WHERE source_id IN (SELECT value FROM json_each(?)))")
        params.append(json.dumps(list(query.sources)))
    for bound, operator in ((query.oldest, ">="), (query.newest, "<")):
        if bound is not None:
            where.append(f"s.first_seen {operator} ?")
            params.append(to_iso(bound))
    if query.after_id is not None:
        where.append(f"s.id {'>' if query.oldest_first else '<'} ?")
        params.append(query.after_id)
    order = "ASC" if query.oldest_first else "DESC"
    return [row[0] for row in conn.execute(
        f"SELECT s.id FROM stories s WHERE {' AND '.join(where)} ORDER BY s.id {order} "
        "LIMIT ?", [*params, query.limit])]


def unread_counts(conn: sqlite3.Connection, updated_since: datetime
                  ) -> list[tuple[int, int, str]]:
    """The unread stories by the source of their canonical: (source id, how many, when
    the newest was first seen)."""
    return conn.execute(
        "SELECT c.source_id, count(*), max(s.first_seen) FROM stories s "
        "INDEXED BY stories_unread JOIN articles c ON c.id = s.canonical_article_id "
        "WHERE s.last_seen >= ? AND s.read_versions = 0 GROUP BY c.source_id",
        [to_iso(updated_since)]).fetchall()


class AppRequest:
    """One request of a reading app: the store, the account, the server's address for
    links to story pages, and the time it is answered at."""

    def __init__(self, database: str, account: AppAccount, base_url: str, now: datetime):
        self.database = database
        self.account = account
        self.base_url = base_url
        self.now = now
        # Stories updated before this count as read.
        self.updated_since = now - timedelta(seconds=account.unread_for_s)

    def read(self, answer: Callable[[sqlite3.Connection], object]) -> object:
        """``answer`` of a read-only connection of its own."""
        conn = read_only_connection(self.database)
        try:
            return answer(conn)
        finally:
            conn.close()

    def story_page(self, story_id: int) -> str:
        return f"{self.base_url}/story/{story_id}"
