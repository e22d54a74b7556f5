"""Retention: old stories leave the store, so that it stops growing with every day polled.

A story leaves once no member of it has been fetched for ``retention`` (the configuration's
key; 0 keeps everything) and it has left the clustering window by a day: the window reads its
members' rows back (near-copy signatures, the canonical's), so a story still in it, or that
the daemon's window may still hold until its next eviction, is never deleted.  Its members
go with it, whole: a story is never left with some of its versions.  Their identity keys
stay behind (``retired_keys``), so an entry that a feed still lists is not stored again as
new; the term statistics keep their counts (``Store.purge_stories``).  Fetch attempts older
than ``retention`` go too.

Deleting runs in transactions of ``PURGE_STORIES_AT_ONCE`` stories, so that the writer and
the readers are never held up for long: the daemon runs one pass an hour between its
writes, ``aggregator purge`` on demand.  A process that keeps a window in memory
(``aggregator run``) holds the store's window lock shared (``holding_window``), and
``aggregator purge`` deletes (and ``aggregator recluster`` rebuilds stories) only while it
can hold it alone (``window_to_self``): a window may hold a story past its time until its
next eviction (every ``EVICT_EVERY`` articles, and before the daemon purges), which only its
own process knows.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from .cluster import window_start
from .store import Store

# Stories deleted in one transaction, and fetch attempts.
PURGE_STORIES_AT_ONCE = 500
PURGE_FETCHES_AT_ONCE = 5000
log = logging.getLogger(__name__)

# How far behind the window's start a story must be: a write group in flight may move the
# window on before the purge sees its rows.
WINDOW_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class Cutoffs:
    """A story may leave when it was last fetched before ``seen_before`` and its newest
    member published before ``published_before``; fetch attempts started before
    ``seen_before`` go too."""

    seen_before: datetime
    published_before: datetime


def purge_cutoffs(now: datetime, retention_s: float, newest_published: datetime | None,
                  window_floor: datetime | None, window_days: float) -> Cutoffs | None:
    """What may leave the store at ``now``: None when nothing may (no retention, or an
    empty store).  ``newest_published`` and ``window_floor`` as the store has them, which
    is where the daemon's window starts after a restart (``cluster.window_start``)."""
    if retention_s <= 0:
        return None
    seen_before = now - timedelta(seconds=retention_s)
    start = window_start(newest_published, window_floor, window_days, now)
    if start is None:
        return None
    return Cutoffs(seen_before, min(seen_before, start - WINDOW_MARGIN))


@dataclass
class PurgeReport:
    stories: int = 0
    articles: int = 0
    fetch_attempts: int = 0
    # False when a pass stopped before everything due had gone (``budget``).
    complete: bool = True

    def add(self, other: PurgeReport) -> None:
        self.stories += other.stories
        self.articles += other.articles
        self.fetch_attempts += other.fetch_attempts

    def __str__(self) -> str:
        return (f"{self.stories:,} stories ({self.articles:,} articles) and "
                f"{self.fetch_attempts:,} fetch attempts")


def _cutoffs(store: Store, now: datetime, retention_s: float,
             window_days: float) -> Cutoffs | None:
    """``purge_cutoffs`` as the store stands, read through its own connection (in its open
    transaction, if any)."""
    return purge_cutoffs(now, retention_s, store.newest_published(), store.window_floor(),
                         window_days)


def count_due(store: Store, conn: sqlite3.Connection, now: datetime, retention_s: float,
              window_days: float) -> PurgeReport:
    """Everything that ``purge`` would delete now, counted, nothing deleted."""
    cutoffs = _cutoffs(store, now, retention_s, window_days)
    if cutoffs is None:
        return PurgeReport()
    return PurgeReport(*store.count_expired(conn, cutoffs.seen_before,
                                            cutoffs.published_before))


def purge_batch(store: Store, conn: sqlite3.Connection, now: datetime, retention_s: float,
                window_days: float, held: Container[int] = ()) -> PurgeReport:
    """One transaction's worth, in the transaction open on ``conn``: at most
    ``PURGE_STORIES_AT_ONCE`` stories and ``PURGE_FETCHES_AT_ONCE`` fetch attempts.
    ``held``: stories the caller's clustering window holds, never deleted."""
    cutoffs = _cutoffs(store, now, retention_s, window_days)
    if cutoffs is None:
        return PurgeReport()
    stories = [story_id for story_id in store.expired_stories(
        conn, cutoffs.seen_before, cutoffs.published_before, PURGE_STORIES_AT_ONCE)
        if story_id not in held]
    articles = store.purge_stories(conn, stories, now)
    fetches = store.purge_fetch_attempts(conn, cutoffs.seen_before, PURGE_FETCHES_AT_ONCE)
    return PurgeReport(len(stories), articles, fetches)


def purge(store: Store, now: datetime, retention_s: float, window_days: float,
          transaction: Callable[[], Iterator[sqlite3.Connection]] | None = None,
          held: Container[int] = (), until: Callable[[], bool] = lambda: False,
          progress: Callable[[PurgeReport], None] | None = None) -> PurgeReport:
    """Transactions of ``purge_batch`` until nothing due is left or ``until()`` says stop
    (then ``complete`` is False); ``progress`` hears the totals before each further one.
    ``transaction``: a context manager giving the writing connection (the daemon's, under
    its write lock), by default ``store.transaction``."""
    transaction = transaction or store.transaction
    report = PurgeReport()
    while True:
        with transaction() as conn:
            batch = purge_batch(store, conn, now, retention_s, window_days, held)
        report.add(batch)
        if batch.stories < PURGE_STORIES_AT_ONCE and batch.fetch_attempts < \
                PURGE_FETCHES_AT_ONCE:
            return report
        if until():
            report.complete = False
            return report
        if progress:
            progress(report)


def window_lock_path(database: str) -> str:
    return f"{database}-window.lock"


@contextmanager
def _window_lock_file(database: str) -> Iterator[int]:
    """The lock file's descriptor; its lock goes with it when it is closed.  Made with the
    database's folder where neither is there yet (the lock is taken before the store is
    opened)."""
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(window_lock_path(database), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield lock
    finally:
        os.close(lock)


@contextmanager
def holding_window(database: str) -> Iterator[None]:
    """The window lock of ``database``, shared, for as long as this process keeps a window
    of it in memory; it waits for an ``aggregator purge`` that is deleting."""
    if database == ":memory:":
        yield
        return
    with _window_lock_file(database) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for aggregator purge to finish with %s", database)
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield


@contextmanager
def window_to_self(database: str) -> Iterator[bool]:
    """The window lock of ``database`` held alone, if no other process holds it: yields
    whether it is (False while a daemon runs on the store)."""
    with _window_lock_file(database) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
