"""Read-only access to the store, for the threads and processes beside the writer.

It imports nothing but the standard library: the worker processes read through it which
of the entries they prepare are already stored, and a worker that imported the store's
module (``sqlite_utils`` with it) would carry its memory for nothing.  The form of the
store's times is here too (``to_iso``, ``from_iso``), for every module that reads or
writes them.
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

BUSY_TIMEOUT_MS = 30_000


# An article's rows hold its times several times, and a pass's articles share their fetch
# time: each time is formatted once.
@lru_cache(maxsize=4096)
def to_iso(value: datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, the form every time in the store has."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    if value.year < 1000:
        # strftime writes such a year without leading zeros (glibc); kept as it was.
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    # isoformat is a third faster than strftime, and an article's rows hold several times.
    return value.isoformat(timespec="seconds")[:19] + "Z"


def from_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# In ``meta``: how many rows retention has deleted (``Store.purge_stories``), by kind.  (The
# fetch attempts are counted as they are recorded, in ``fetch_counts``.)
PURGED_ARTICLES = "purged_articles"
PURGED_DOCUMENTS = "purged_documents"
PURGED_DUPLICATES = "purged_duplicates"
PURGED_SAME_STORY = "purged_same_story"


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 article``, ``3 articles``: a count with its noun."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def select_in(conn, sql: str, values: list, params: Sequence = ()) -> list[tuple]:
    """The rows of ``sql`` whose ``{}`` becomes the placeholders of ``values`` (after
    ``params``), asked 500 values at a time: SQLite caps the parameters of a statement."""
    rows: list[tuple] = []
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        rows += conn.execute(sql.format(",".join("?" * len(chunk))),
                             [*params, *chunk]).fetchall()
    return rows


def read_only_connection(path: str) -> sqlite3.Connection:
    """A connection that cannot write, for readers beside the writer (threads, processes)."""
    uri = f"file:{Path(path).resolve()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)


_thread_readers = threading.local()


def thread_reader(database: str) -> sqlite3.Connection:
    """This thread's read-only connection to ``database`` (one per thread and process)."""
    readers = getattr(_thread_readers, "by_path", None)
    if readers is None:
        readers = _thread_readers.by_path = {}
    reader = readers.get(database)
    if reader is None:
        reader = readers[database] = read_only_connection(database)
    return reader


def stored_keys(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    """Which of ``keys`` (identity keys, ``normalize.identity_keys``) an article holds, or
    an article held before retention deleted it (``retired_keys``): an entry that a feed
    still lists is not new again once its article has gone."""
    held = {row[0] for row in select_in(
        conn, "SELECT key FROM article_keys WHERE key IN ({})", keys)}
    others = [key for key in keys if key not in held]
    if others:
        held.update(row[0] for row in select_in(
            conn, "SELECT key FROM retired_keys WHERE key IN ({})", others))
    return held


# The source counts that stories have, from a threshold on: one index seek each
# (``stories_sources_last_seen``), however many stories share a count.
SOURCE_COUNTS = """
WITH RECURSIVE counts(k) AS (
    SELECT (SELECT min(source_count) FROM stories WHERE source_count >= ?)
    UNION ALL
    SELECT (SELECT min(source_count) FROM stories WHERE source_count > k)
    FROM counts WHERE k IS NOT NULL
)
SELECT k FROM counts WHERE k IS NOT NULL
"""


def newest_story_ids(conn: sqlite3.Connection, limit: int, min_sources: int,
                     since: str = "0000", where: str = "", params: Sequence = ()) -> list[int]:
    """The ids of the ``limit`` newest stories (by ``last_seen``, then id) that
    ``min_sources`` or more sources report, seen at ``since`` or later, newest first.

    Read per source count, each the newest ``limit`` of one range of the index
    ``stories_sources_last_seen``, then merged: a scan of stories by time would read them
    all where few reach the threshold.  ``where`` adds conditions on the ``stories`` row
    (``AND ...``, with ``params``)."""
    found: list[tuple[str, int]] = []
    for (count,) in conn.execute(SOURCE_COUNTS, [min_sources]).fetchall():
        # As tuples whatever the connection's row factory: ``sqlite3.Row`` has no order.
        found += map(tuple, conn.execute(
            f"SELECT last_seen, id FROM stories WHERE source_count = ? AND last_seen >= ? "
            f"{where} ORDER BY last_seen DESC, id DESC LIMIT ?",
            [count, since, *params, limit]))
    return [story_id for _seen, story_id in heapq.nlargest(limit, found)]


# A search ranks (FTS5's ``rank``, BM25 by default) only the newest this many matching
# articles (ids only grow, so the highest ids are the newest): the rank is worked out
# article by article, and a word common in a large store matches most of it ("the" in
# 100,000 stream articles: 0.4 s to rank every match, 30 ms the newest 5,000).
SEARCH_NEWEST = 5000
# Of those, the best this many are grouped into stories; among equal ranks (articles of one
# length that hold a word as often), the newest first.
SEARCH_ARTICLES = 500


SEARCH_STORIES = """
WITH newest AS MATERIALIZED (
    SELECT rowid, rank FROM articles_fts WHERE articles_fts MATCH :query
    ORDER BY rowid DESC LIMIT :newest)
SELECT a.story_id, count(*), (SELECT count(*) FROM newest) FROM (
    SELECT rowid, rank FROM newest ORDER BY rank, rowid DESC LIMIT :articles) f
JOIN articles a ON a.id = f.rowid
WHERE a.story_id IS NOT NULL
GROUP BY a.story_id ORDER BY min(f.rank), a.story_id DESC LIMIT :limit
"""


class Found(NamedTuple):
    """What a search found: ``stories``, (story id, matching articles among the best
    ``SEARCH_ARTICLES``), best match first; ``ranked``, how many matching articles were
    ranked."""

    stories: list[tuple[int, int]]
    ranked: int

    @property
    def newest_only(self) -> bool:
        """Whether more articles may match than were ranked: only the newest were."""
        return self.ranked >= SEARCH_NEWEST


def newest_only_note() -> str:
    """What a search that ranked only the newest matching articles tells its reader."""
    return (f"{SEARCH_NEWEST:,} or more articles match: the best matches among the newest "
            f"{SEARCH_NEWEST:,} are shown. More words narrow the search.")


def search_stories(conn: sqlite3.Connection, query: str, limit: int) -> Found:
    """The stories whose articles are the best matches of an FTS5 query among its newest
    ``SEARCH_NEWEST`` matching articles.  A query FTS5 cannot read raises
    ``sqlite3.OperationalError``."""
    rows = conn.execute(SEARCH_STORIES, {"query": query, "newest": SEARCH_NEWEST,
                                         "articles": SEARCH_ARTICLES,
                                         "limit": limit}).fetchall()
    return Found([(story_id, matching) for story_id, matching, _ranked in rows],
                 rows[0][2] if rows else 0)


# A feed of a search looks at the newest this many matching articles (ids only grow, so
# the highest ids are the newest): ranking is not needed, and a common word would otherwise
# make every request read all of its matches.
MATCHING_ARTICLES = 2000
NEWEST_MATCHING_STORIES = """
SELECT id FROM stories WHERE id IN (
    SELECT a.story_id FROM (
        SELECT rowid FROM articles_fts WHERE articles_fts MATCH ?
        ORDER BY rowid DESC LIMIT ?) f
    JOIN articles a ON a.id = f.rowid)
AND source_count >= ? {where} ORDER BY last_seen DESC, id DESC LIMIT ?
"""


def newest_matching_story_ids(conn: sqlite3.Connection, query: str, limit: int,
                              min_sources: int = 1, where: str = "",
                              params: Sequence = ()) -> list[int]:
    """The ids of the ``limit`` newest stories (by ``last_seen``, then id) with an article
    among the newest ``MATCHING_ARTICLES`` that match an FTS5 query and ``min_sources``
    sources or more, newest first; ``where`` adds conditions on the ``stories`` row (``AND
    ...``, with ``params``).  A query FTS5 cannot read raises ``sqlite3.OperationalError``."""
    return [story_id for (story_id,) in conn.execute(
        NEWEST_MATCHING_STORIES.format(where=where),
        [query, MATCHING_ARTICLES, min_sources, *params, limit])]


def store_counts(conn: sqlite3.Connection) -> dict:
    """What ``/metrics`` reports of the store: ``articles``; ``duplicates`` and
    ``same_story``, the articles linked to a canonical by each relation; ``story_sizes``,
    how many stories have each number of articles.

    No statement reads every article or story: SQLite counts all articles and all stories
    from their smallest index, and the partial indexes ``articles_duplicates`` and
    ``stories_of_three_or_more`` hold the duplicates and the larger stories.  The rest
    follows from the invariants that ``aggregator check`` holds: every article is in one
    story, and every story has articles, one of them its canonical.  So the linked articles
    are all but one a story, and the stories of one and of two articles are what the larger
    ones leave of both counts."""
    articles = conn.execute("SELECT count(*) FROM articles").fetchone()[0]
    stories = conn.execute("SELECT count(*) FROM stories").fetchone()[0]
    duplicates = conn.execute(
        "SELECT count(*) FROM articles WHERE relation = 'duplicate'").fetchone()[0]
    larger = dict(conn.execute(
        "SELECT article_count, count(*) FROM stories WHERE article_count > 2 "
        "GROUP BY article_count").fetchall())
    pairs = articles - stories - sum((size - 1) * count for size, count in larger.items())
    alone = stories - pairs - sum(larger.values())
    sizes = {size: count for size, count in ((1, alone), (2, pairs)) if count}
    return {"articles": articles, "duplicates": duplicates,
            "same_story": articles - stories - duplicates, "story_sizes": {**sizes, **larger}}


def purged_totals(conn: sqlite3.Connection) -> dict[str, int]:
    """What retention has deleted so far, by ``meta`` key (``PURGED_*``)."""
    return {key: int(value) for key, value in conn.execute(
        "SELECT key, value FROM meta WHERE key LIKE 'purged\\_%' ESCAPE '\\'")}


# How many close calls a story shows, and how close a call must be: a candidate that scored
# under 0.3 of its threshold is noise (on the dev files the floor drops 91% and 26% of the
# calls listed, and 1-2% of those that name the right story: benchmarks/close_calls.py).
CLOSE_CALLS = 5
CLOSE_CALL_FLOOR = 0.3


def close_calls(conn: sqlite3.Connection, story_id: int,
                limit: int = CLOSE_CALLS) -> list[dict]:
    """The other stories that the story's versions came closest to joining, closest first:
    each version's decision keeps its best candidate stories, scored (a story whose version
    started a story of its own missed them all).  A candidate is found again by its
    canonical at the time, so a story renumbered since (a merge, a recluster) is still
    found.  Each: ``story_id``, ``title``, ``article_count``, ``closeness`` (the best
    cosine x time factor over its threshold), ``article_id`` (the version that came
    closest) -- what a reader needs to merge a story that the clusterer missed.  Calls
    under ``CLOSE_CALL_FLOOR`` of their threshold are left out."""
    rows = conn.execute(
        """SELECT other.story_id, s.title, s.article_count,
                  max(json_extract(c.value, '$.cosine') * json_extract(c.value, '$.time_factor')
                      / json_extract(c.value, '$.threshold')) AS closeness, a.id
           FROM articles a, json_each(a.decision, '$.candidates') c
           JOIN articles other
             ON other.id = json_extract(c.value, '$.canonical_article_id')
           JOIN stories s ON s.id = other.story_id
           WHERE a.story_id = ?1 AND other.story_id != ?1
             AND json_extract(c.value, '$.threshold') > 0
           GROUP BY other.story_id HAVING closeness >= ?3
           ORDER BY closeness DESC, other.story_id LIMIT ?2""",
        [story_id, limit, CLOSE_CALL_FLOOR]).fetchall()
    return [{"story_id": row[0], "title": row[1], "article_count": row[2],
             "closeness": round(row[3], 4), "article_id": row[4]} for row in rows]

