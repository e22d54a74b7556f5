"""What a reader has read and saved, by story (migration ``016_reading_marks``).

Marks are kept per article and read per story: a story is read when one of its versions is,
and saved when one of them is.  Marking a story marks every version it has, so the mark
follows the articles when ``aggregator recluster`` rebuilds the stories, and a version that
joins the story later does not bring it back unread: deduplication is for reading a story
once.  Only ``sqlite3``: the web side calls these beside the daemon's writer, through a
connection of its own (``marks_connection``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .readers import BUSY_TIMEOUT_MS, select_in

# A mark's column, by what it says.
_COLUMNS = {"read": "read_at", "saved": "saved_at"}

# The members of the stories in the JSON array ``?1``.
_MEMBERS = "SELECT id FROM articles WHERE story_id IN (SELECT value FROM json_each(?1))"

# Whether the story ``stories.id`` has a version marked ``{column}``.
_MARKED = ("EXISTS (SELECT 1 FROM articles a JOIN article_marks m ON m.article_id = a.id "
           "WHERE a.story_id = stories.id AND m.{column} IS NOT NULL)")


def marks_connection(database: str) -> sqlite3.Connection:
    """A connection that writes marks beside the daemon: each change is one short
    transaction, which waits for the daemon's to end (``busy_timeout``)."""
    conn = sqlite3.connect(Path(database).resolve(), timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
                f"WHERE {column} IS NULL", [stories, _stamp(now)]).rowcount
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
    column = _COLUMNS[mark]
    return {row[0] for row in select_in(
        conn, "SELECT DISTINCT a.story_id FROM articles a JOIN article_marks m "
              f"ON m.article_id = a.id WHERE m.{column} IS NOT NULL AND a.story_id IN ({{}})",
        list(story_ids))}


def unread_story_ids(conn: sqlite3.Connection, updated_since: datetime) -> list[int]:
    """The stories updated since ``updated_since`` (their newest version's fetch) that no
    version of is read, by id; older ones count as read."""
    # Through the index by time, not a scan in id order: on 1,000,000 articles, 160 ms
    # against 205 for a 30-day list (sorting the ids afterwards costs a few).
    return sorted(row[0] for row in conn.execute(
        "SELECT id FROM stories INDEXED BY stories_last_seen WHERE last_seen >= ? "
        f"AND NOT {_MARKED.format(column='read_at')}", [_stamp(updated_since)]))


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
    where = ""
    params: list = [_stamp(updated_since), _stamp(before)]
    if source_ids is not None:
        where = (" AND canonical_article_id IN (SELECT id FROM articles WHERE source_id IN "
                 "(SELECT value FROM json_each(?)))")
        params.append(json.dumps([int(source_id) for source_id in source_ids]))
    ids = [row[0] for row in conn.execute(
        f"SELECT id FROM stories WHERE last_seen >= ? AND first_seen < ?{where} "
        f"AND NOT {_MARKED.format(column='read_at')}", params)]
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
    others: tuple[Version, ...]
    read: bool
    saved: bool


def story_items(conn: sqlite3.Connection, story_ids: Sequence[int]) -> list[StoryItem]:
    """The stories ``story_ids`` that exist, in the order given, with their marks."""
    ids = list(dict.fromkeys(int(story_id) for story_id in story_ids))
    if not ids:
        return []
    stories = {row[0]: row for row in select_in(
        conn, "SELECT s.id, c.source_id, s.title, c.author, c.url, c.text, s.first_seen "
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
                      url=row[4], text=row[5], first_seen=row[6],
                      others=tuple(others[story_id]), read=story_id in read,
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
