"""A reader's corrections of the clustering: articles split out of a story that took them
wrongly, and stories merged that tell the same story.

A correction is kept in ``story_corrections`` by the articles it names (story ids change
with ``aggregator recluster``; article ids do not), and carried out by the writer: the
daemon within about a second (``NewCorrections``), or the command itself when no daemon
holds the store.  Carrying
one out moves articles between stories of the window, elects each changed story's
canonical again and records the reason.  ``aggregator recluster`` makes its corrections
again, in the order they were made, so that a new setting does not undo them.

Whether a correction can be carried out, and which articles go where, is decided here by
pure functions over the window's story membership (``plan_split``, ``plan_merge``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .errors import AggregatorError
from .readers import read_only_connection, to_iso

SPLIT = "split"
MERGE = "merge"
KINDS = (SPLIT, MERGE)

# Where a split's articles go: a story made for them (its id is chosen by the writer).
NEW_STORY = -1


class CorrectionError(AggregatorError):
    """A correction that cannot be carried out: the message says which article or story,
    and why."""


@dataclass(frozen=True)
class Correction:
    """One reader's correction as requested: ``article_ids`` are the articles to split
    out together, or one article of each story to merge."""

    id: int
    kind: str
    article_ids: tuple[int, ...]


@dataclass(frozen=True)
class Regrouping:
    """What carrying out a correction changes: ``moves``, each moved article's new story
    (``NEW_STORY`` for the one a split makes); ``losing``, the stories that lose members;
    ``emptied``, those of them left with none (a merge's other stories)."""

    moves: dict[int, int]
    losing: tuple[int, ...]
    emptied: tuple[int, ...] = ()


def request_correction(conn: sqlite3.Connection, kind: str, article_ids: Sequence[int],
                       now: datetime) -> int:
    """Keep a correction for the writer to carry out, in a transaction of its own (which
    waits for the daemon's to end); returns its id."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        correction_id = conn.execute(
            "INSERT INTO story_corrections (kind, article_ids, requested_at) VALUES (?, ?, ?)",
            [kind, json.dumps([int(a) for a in article_ids]), to_iso(now)]).lastrowid
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return correction_id


class NewCorrections:
    """Whether a correction was kept since the last look (by ``aggregator split`` or
    ``merge``, or a story page, the daemon's own or a replica's): the daemon asks every
    ``WATCH_S`` and, if so, carries it out at once instead of at its next tick.  One
    look-up in the partial index of the waiting ones, through a read-only connection of its
    own.  A correction that stays waiting (its pass failed) does not ask again: the ticks
    retry it."""

    def __init__(self, database: str):
        self.database = database
        self._conn: sqlite3.Connection | None = None
        self._seen: int | None = None

    def __call__(self) -> bool:
        if self.database == ":memory:":  # no other process can keep one there
            return False
        if self._conn is None:
            self._conn = read_only_connection(self.database)
        newest = self._conn.execute("SELECT max(id) FROM story_corrections "
                                    "WHERE applied_at IS NULL").fetchone()[0]
        new = newest is not None and newest != self._seen
        self._seen = newest
        return new

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _stories_of(article_ids: Sequence[int], story_of: Mapping[int, int]) -> dict[int, int]:
    """Each article's story in the window; an article outside it is an error."""
    missing = [article_id for article_id in article_ids if article_id not in story_of]
    if missing:
        raise CorrectionError(
            f"article {missing[0]} is not in the clustering window (stored more than "
            "window_days ago, or no such article): only the window's stories can change")
    return {article_id: story_of[article_id] for article_id in article_ids}


def plan_split(article_ids: Sequence[int], story_of: Mapping[int, int],
               members_of: Mapping[int, Sequence[int]]) -> Regrouping:
    """The articles ``article_ids`` leave their story together, for a story of their own.

    ``story_of``: each window article's story; ``members_of``: each window story's members.
    They must be one story's articles, and not all of them."""
    if not article_ids:
        raise CorrectionError("name at least one article to split out")
    stories = _stories_of(article_ids, story_of)
    distinct = sorted(set(stories.values()))
    if len(distinct) > 1:
        first = next(a for a in article_ids if stories[a] == distinct[0])
        other = next(a for a in article_ids if stories[a] == distinct[1])
        raise CorrectionError(
            f"articles {first} and {other} are in different stories ({distinct[0]} and "
            f"{distinct[1]}): split takes articles of one story (split each story apart)")
    [story_id] = distinct
    if set(members_of[story_id]) <= set(article_ids):
        raise CorrectionError(f"the named articles are the whole of story {story_id}: "
                              "there is nothing to split them from")
    return Regrouping(moves=dict.fromkeys(article_ids, NEW_STORY), losing=(story_id,))


def plan_merge(article_ids: Sequence[int], story_of: Mapping[int, int],
               members_of: Mapping[int, Sequence[int]]) -> Regrouping:
    """The stories of ``article_ids`` become one: the oldest (the lowest id) takes the
    members of the others."""
    stories = _stories_of(article_ids, story_of)
    distinct = sorted(set(stories.values()))
    if len(distinct) < 2:
        raise CorrectionError(f"the articles are all in story {distinct[0]}: nothing to "
                              "merge" if distinct else "name the stories to merge")
    target, others = distinct[0], distinct[1:]
    moves = {member: target for story_id in others for member in members_of[story_id]}
    return Regrouping(moves=moves, losing=tuple(others), emptied=tuple(others))


PLANS = {SPLIT: plan_split, MERGE: plan_merge}


def plan(correction: Correction, story_of: Mapping[int, int],
         members_of: Mapping[int, Sequence[int]]) -> Regrouping:
    return PLANS[correction.kind](correction.article_ids, story_of, members_of)


def describe(correction: Correction) -> str:
    """One line for logs and the canonical history."""
    named = ", ".join(str(article_id) for article_id in correction.article_ids)
    if correction.kind == SPLIT:
        return f"correction {correction.id}: article(s) {named} split out of their story"
    return f"correction {correction.id}: the stories of articles {named} merged"
