"""The pipeline: ``Aggregator.refresh(source)`` calls every step in order.

    fetch -> parse -> normalize -> (identity) -> fingerprint -> cluster -> store

Each step lives in its own module; this one only sequences them, records outcomes and keeps
one source's failure from touching any other source.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import math
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from . import fetch as fetching
from . import notify, retention
from .children import exit_with_parent
from .cluster import (
    DAY_S,
    FIRST_VERSION,
    ClusterArticle,
    Clusterer,
    Decision,
    low_bits,
    window_newest,
    window_start,
)
from .config import ClusteringSettings, Config, EntryFilter, Source, split_url
from .corrections import NEW_STORY, Correction, CorrectionError, describe, plan
from .errors import (
    AggregatorError,
    FetchError,
    ParseError,
    SourceError,
    SourceGoneError,
    StoreError,
)
from .fingerprint import (
    Signer,
    TermsLeftInStore,
    TermStatistics,
    TextFeatures,
    count_words,
    fingerprint_of,
    text_features,
)
from .icons import Icon, SiteIcons, find_icon, icon_due, site_root
from .memory import enlarge, release_free_memory
from .normalize import (
    NormalizedArticle,
    canonical_url,
    html_to_text,
    identity_keys,
    strip_lines,
    template_line_keys,
)
from .parse import ParsedEntry, parse_feed, text_as_html
from .prepare import (
    MAX_ENTRIES_PER_FETCH,
    Prepared,
    PreparedDocument,
    PrepareSettings,
    prepare_document,
    prepare_entries,
    prepare_new_entries,
    start_worker,
)
from .readers import thread_reader
from .schedule import (
    PollResponse,
    PollState,
    ServerClocks,
    adaptive_interval,
    as_of_now,
    clock_too_far_ahead,
    next_check_at,
    random_jitter,
    upkeep_due,
)
from .store import (
    SourceRow,
    StagedReads,
    StagedWrites,
    Store,
    TermCounts,
    WriteBehind,
    pack_vector,
    to_iso,
    unpack_vectors,
    utcnow,
)

log = logging.getLogger(__name__)

EVICT_EVERY = 500
# The warning that the article limit is cutting the window short, at most this often.
WINDOW_LIMIT_WARNING_S = 3600.0
# At most this many 304 answers are recorded in one transaction.
NOT_MODIFIED_GROUP = 64
# Sources already fetched when the writer gets to them are written together, in one
# transaction of at most this many sources and (about) this many entries.
WRITE_GROUP_SOURCES = 32
WRITE_GROUP_ENTRIES = 1000
# Write groups written in place share one transaction until it holds this many entries (or
# the writer would wait for a fetch): each commit writes every page that its transaction
# touched, and the term statistics' rows, one per distinct term, are scattered over the
# table; groups that follow one another share most of their terms and many of those pages.
SHARED_TRANSACTION_ENTRIES = 4 * WRITE_GROUP_ENTRIES
# How many times max_concurrency sources may be fetched before the oldest of them is stored.
FETCH_AHEAD = 8
# ... and no more are started while the sources fetched and waiting for the writer hold
# this many entries.  The count of sources alone does not bound their memory: a prepared
# entry holds 8-10 KB (its text, terms and signature), and 64 waiting feeds of 10,000
# entries would hold gigabytes.  Two write groups: the writer's next one is ready.
FETCH_AHEAD_ENTRIES = 2 * WRITE_GROUP_ENTRIES
# How long a group waits for the sources behind it that are still being fetched or parsed.
# A writer that keeps up (clustering off) would otherwise commit every source or two, and
# each commit rewrites every page it touched and flushes the full-text index: on 2,000 farm
# feeds that was 12 s of the writer's CPU instead of 6, taken from the workers it waited on.
WRITE_GROUP_LINGER_S = 0.25
# A document shorter than this, or a batch of entries whose text is (``text_size``), is
# prepared in the calling thread: a worker round trip would cost more than it saves.
WORKER_MIN_BYTES = 4096
# After worker processes failed to start (a container's process limit, no usable /dev/shm
# for their queues' semaphores), feeds are prepared in the daemon's own threads, and new
# workers are tried this long after.
WORKERS_RETRY_S = 300.0
# How long ``start_workers`` waits for new worker processes to run (importing the project).
WORKERS_START_TIMEOUT_S = 60.0
STOPPED_AT_START = "each process stopped before it ran a task"
# Articles fingerprinted together: large enough for bulk signing to pay, small enough that a
# recluster of a big store does not hold every article's features at once.
PLACEMENT_CHUNK = 512
# Terms that the latest articles did not use leave memory when the vocabulary has grown by a
# quarter of the terms it kept, and by at least this many (a small store keeps every term).
FORGET_TERMS_MIN = 20_000
# Polite to servers: never more than this many requests to one host at once.
PER_HOST_CONCURRENCY = 2
# Lines repeated in this many articles of one source are its template, not news.
TEMPLATE_LINE_MIN_ARTICLES = 3
# A line seen once is forgotten after this long; the table would otherwise grow forever.
TEMPLATE_LINE_MEMORY = timedelta(days=30)
PRUNE_EVERY = timedelta(hours=1)
# Retention (``retention.purge``) runs once an hour at most, and for at most this long in a
# pass: what is left waits for the next pass.
PURGE_BUDGET_S = 10.0



def text_size(entries: Sequence[ParsedEntry]) -> int:
    """The length of the entries' titles and texts: what preparing them costs goes with it
    (a few entries of full articles are worth a worker's round trip; a dozen of headlines
    are not).  In characters, which is near enough to bytes for comparing with
    ``WORKER_MIN_BYTES``."""
    return sum(len(entry.title) + len(entry.content or entry.summary or "")
               for entry in entries)


@dataclass
class Fetched:
    """A source's fetch and parse, before anything is stored."""

    started: datetime
    clock: float
    result: fetching.FetchResult | None = None
    entry_count: int = 0
    prepared: Prepared | None = None
    ttl_s: float | None = None
    skip_hours: frozenset[int] = frozenset()
    skip_days: frozenset[str] = frozenset()
    error: SourceError | None = None
    # Whether the site was asked for its icon, and the icon it gave (``icons``).
    icon_checked: bool = False
    icon: Icon | None = None


# (source id, source name, source priority, article, stored id or None for a new one)
Placement = tuple[int, str, int, NormalizedArticle, int | None]


class WorkerPool(ProcessPoolExecutor):
    """Worker processes (spawned), each given a first task before any feed.

    A process takes about a second to start (it imports the project), and feeds are given
    to the pool meanwhile.  One that cannot start (Python or the project missing where
    spawn looks, no memory) breaks the pool before any first task has run; a feed that
    kills its worker can only do so after one has.  So the two are told apart
    (``never_ran``): before, such a pool's first feeds were taken for feeds that kill
    their worker, pass after pass, every feed of a worker's size.
    """

    def __init__(self, workers: int, parent_pid: int):
        # spawn, not fork: the daemon has threads, and a forked lock stays locked.  The
        # pool's queues take semaphores at once (/dev/shm).
        super().__init__(workers, mp_context=multiprocessing.get_context("spawn"),
                         initializer=start_worker, initargs=(parent_pid,))
        try:
            # A pool starts a process for a task that finds none idle: one task each.
            self.first_tasks = [self.submit(os.getpid) for _ in range(workers)]
        except BaseException:  # no process could start (a process limit)
            self.shutdown(wait=False, cancel_futures=True)
            raise

    def never_ran(self) -> bool:
        """Whether no process of the pool has run a task (so far, or before it broke)."""
        return not any(task.done() and not task.cancelled() and task.exception() is None
                       for task in self.first_tasks)


def worker_count(configured: int, cpus: int, clustering: bool) -> int:
    """How many worker processes parse and prepare feeds: ``configured``, or with -1 one
    for each core the writer leaves free, at most 4.

    Clustering keeps the writer busy (a few ms an article), so it gets a core of its own.
    Without clustering it needs a fraction of a millisecond an article and parsing is the
    bottleneck: every core gets a worker (on a single core, a worker would only add a
    process to switch to).
    """
    if configured >= 0:
        return configured
    if cpus <= 1:
        return 0
    return min(4, cpus - 1 if clustering else cpus)


def _finished(future: Future) -> Fetched | None:
    """The fetch, if it has finished without an error (without waiting for one that has not)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    fetched = future.result()
    return fetched if fetched.error is None else None


def _not_modified(future: Future) -> bool:
    fetched = _finished(future)
    return fetched is not None and fetched.result.outcome is fetching.Outcome.NOT_MODIFIED


def _fetched_entries(future: Future) -> bool:
    """A fetch that has finished with a feed to store."""
    fetched = _finished(future)
    return fetched is not None and fetched.result.outcome is not fetching.Outcome.NOT_MODIFIED


def fetch_more(fetching_ahead: int, ahead: int, fetched_entries: int, unfinished: int,
               entries_per_source: float | None, entry_budget: int, concurrency: int) -> bool:
    """Whether a pass starts fetching one more source.

    Fewer than ``ahead`` sources are fetched or being fetched ahead of the writer, and the
    entries they would hold stay under ``entry_budget``: those fetched
    (``fetched_entries``), and for each of the ``unfinished`` the pass's mean so far
    (``entries_per_source``).  Before any source has been fetched the mean is unknown
    (None): only as many as fetch at once (``concurrency``).  Feeds of a few dozen entries
    fill ``ahead`` first; a pass over large feeds fetches only as far ahead as the budget
    holds.
    """
    if fetching_ahead >= ahead:
        return False
    if entries_per_source is None:
        return unfinished < concurrency
    return fetched_entries + unfinished * entries_per_source < entry_budget


def _write_group_full(group: list[tuple[Source, SourceRow, Fetched]]) -> bool:
    return len(group) >= WRITE_GROUP_SOURCES or \
        sum(fetched.entry_count for _source, _row, fetched in group) >= WRITE_GROUP_ENTRIES


@dataclass
class RefreshReport:
    source: str
    outcome: str
    status: int | None = None
    entries: int = 0
    new_articles: int = 0
    repeats: int = 0
    # New entries that the source's ``include``/``exclude`` patterns left out.
    filtered: int = 0
    error: str | None = None
    # Each new article's id and decision; None where nobody reads them: a pass keeps its
    # reports to its end, and a decision with its candidates holds 2-3 KB (what ``aggregator
    # explain`` shows is stored with the article).
    decisions: list[tuple[int, Decision]] | None = field(default_factory=list)
    # No answer at all (refused, reset, timed out, no such host): the network or the server.
    unreachable: bool = False


def redirect_state(row: SourceRow, target: str | None, needed: int) -> dict[str, object]:
    """Source columns after a fetch: the feed moves once the same permanent redirect has
    been seen ``needed`` times in a row (a one-off misconfiguration does not move it)."""
    if target is None:
        return {"redirect_target": None, "redirect_sightings": 0}
    sightings = row.redirect_sightings + 1 if row.redirect_target == target else 1
    if sightings >= needed:
        return {"url": target, "redirect_target": None, "redirect_sightings": 0}
    return {"redirect_target": target, "redirect_sightings": sightings}


# What an article stored with clustering off was told: no candidate was looked for.
UNCLUSTERED = Decision("new_story", None, 0.0, 0.0)


def decision_record(decision: Decision, limit: int = 5) -> dict:
    """The stored form of a decision, which ``aggregator explain`` reads back."""
    return {
        "relation": decision.relation,
        "story_id": decision.story_id,
        "score": decision.score,
        "threshold": decision.threshold,
        "matched_article_id": decision.matched_article_id,
        "reason": decision.reason,
        "near_copies": [{"article_id": c.article_id, "story_id": c.story_id,
                         "jaccard": c.jaccard} for c in decision.near_copies[:limit]],
        "candidates": [{"story_id": c.story_id, "score": c.score, "cosine": c.cosine,
                        "time_factor": c.time_factor, "threshold": c.threshold,
                        "canonical_article_id": c.canonical_id,
                        **({"held_back": c.held_back} if c.held_back else {})}
                       for c in decision.candidates[:limit]],
    }


UNCLUSTERED_DECISION = {**decision_record(UNCLUSTERED),
                        "reason": "stored while clustering was off: a story of its own until "
                                  "`aggregator recluster` places it"}


def load_clusterer(store: Store, settings: ClusteringSettings, signer: Signer,
                   reads: StagedReads | None = None) -> Clusterer:
    """Rebuild the clustering index and statistics from stored signatures and counts.

    ``reads``: where the clusterer reads what it does not hold in memory (forgotten terms,
    signatures) later on, if not the store alone: the writer's view, with what it staged.

    No text is read again: signatures and vectors come back as stored, in bulk.  The window
    is anchored at the newest stored article, not at the wall clock, so that a store filled
    from dated archives restarts with the same live stories it had; but never further ahead
    of the clock than a day (``cluster.window_newest``).

    The cyclic garbage collector is paused meanwhile: the rebuild makes a few long-lived
    objects per article, and the collector would scan them again and again as they are
    made (a fifth of the time at 100,000 articles).  They are then frozen out of its scans.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_clusterer(store, settings, signer, reads)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
        release_free_memory()


def _load_clusterer(store: Store, settings: ClusteringSettings, signer: Signer,
                    reads: StagedReads | None) -> Clusterer:
    stats = TermStatistics(settings.idf_prior_docs)
    stats.recall = reads.recall_terms if reads else store.recall_terms
    stats.recall_ids = reads.recall_term_ids if reads else store.recall_term_ids
    floor = store.window_floor()
    since = window_start(store.newest_published(), floor, settings.window_days)
    count, chunks = store.window_rows(since) if since is not None else (0, iter(()))
    # The terms of as many of the latest articles as the window holds, as the running
    # writer keeps (``_forget_unseen_terms``): the others come back from the store when
    # an article uses them again.
    first_counted = store.next_article_id(store.db.conn) - count
    left_in_store: Future[TermsLeftInStore] = Future()
    stats.restore_recent(*store.recent_term_statistics(first_counted), left_in_store)
    clusterer = Clusterer(settings, stats, stored=StoreFingerprints(reads or store, signer))
    if floor is not None:
        clusterer.floor_ts = floor.timestamp()
    try:
        if count:
            _restore_window(clusterer, store, signer, count, chunks)
    finally:
        # Once the window is back: a thread reading beside its restore would contend
        # with it for the interpreter.
        read_terms_left_by_restart(store, first_counted, left_in_store)
    return clusterer


def _restore_window(clusterer: Clusterer, store: Store, signer: Signer, count: int,
                    chunks: Iterable) -> None:
    stats = clusterer.stats
    clusterer.rows.reserve(count)
    sources = store.source_names()
    for window in chunks:
        named = [sources[source_id] for source_id in window.source_ids]
        clusterer.restore_rows(window.ids, window.story_ids, window.canonical_ids,
                               signer.from_bytes_many(window.shingle_signatures),
                               signer.from_bytes_many(window.salient_signatures),
                               *numbered_vectors(stats, window.term_vectors, window.ids),
                               sources=[name for name, _priority in named],
                               priorities=[priority for _name, priority in named],
                               published_ts=window.published_ts,
                               has_author=[bool(flag) for flag in window.has_author],
                               dated=[bool(flag) for flag in window.dated],
                               word_counts=window.word_counts)
    clusterer.finish_restore()


def read_terms_left_by_restart(store: Store, first_counted: int,
                               into: Future[TermsLeftInStore]) -> None:
    """Give ``into`` a filter of the names of the terms that a restart leaves in the store
    (counted in no article from ``first_counted`` on), read by a thread through a
    connection of its own: a store that has run for months holds millions of terms, and
    the restart does not wait for them (the writer looks up every term new to memory
    meanwhile).  Read here, at once, where no other connection sees the rows
    (``Store.readers_see_writes``)."""

    def read(conn: sqlite3.Connection) -> None:
        try:
            left = TermsLeftInStore()
            left.add(Store.term_names_before(conn, first_counted))
            into.set_result(left)
        except Exception as exc:  # handed to the writer, which reports it
            into.set_exception(exc)

    if not store.readers_see_writes():
        read(store.db.conn)
        return

    def read_alone() -> None:
        try:
            conn = store.reader()
        except sqlite3.Error as exc:
            into.set_exception(exc)
            return
        try:
            read(conn)
        finally:
            conn.close()

    threading.Thread(target=read_alone, name="terms-left-in-store", daemon=True).start()


def numbered_vectors(stats: TermStatistics, stored: list[bytes],
                     article_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors (``unpack_vectors``, of the articles ``article_ids``), their terms'
    store ids made numbers in memory."""
    ids, weights = unpack_vectors(stored, article_ids)
    return stats.numbers_of_stored(ids), weights


class StoreFingerprints:
    """The clusterer's view of ``article_fingerprints``: what it does not hold in memory."""

    def __init__(self, store: Store | StagedReads, signer: Signer):
        self.store, self.signer = store, signer

    def shingle_signatures(self, article_ids: list[int]) -> np.ndarray:
        return self.signer.from_bytes_many(self.store.shingle_signatures(article_ids))


class TermTally:
    """The term statistics of the articles placed in the open transaction, written when it
    ends: a write group's sources share most terms, so one statement per term for the
    transaction instead of one per term of each source (a fifth of the rows in the synthetic
    stream, less again where groups share a transaction).

    Each ``_cluster_and_store`` call tallies the term numbers of its articles apart
    (``start``), so that a source rolled back to its savepoint takes its tally with it
    (``mark``, ``undo_since``); once its source is released they are folded into how many of
    the transaction's articles hold each term number (``fold``).  Folded, a tally holds no
    array per article until the commit.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.pending: list[tuple[list[np.ndarray], int]] = []
        self.articles_with = np.zeros(0, dtype=np.int64)
        self.documents = 0
        self.tallied = False

    def start(self, documents: int) -> list[np.ndarray]:
        """The list that a call appends each article's term numbers to."""
        counted: list[np.ndarray] = []
        self.pending.append((counted, documents))
        return counted

    def mark(self) -> int:
        return len(self.pending)

    def undo_since(self, mark: int) -> None:
        del self.pending[mark:]

    def fold(self) -> None:
        for counted, documents in self.pending:
            self.tallied = True
            self.documents += documents
            numbers = np.concatenate(counted) if counted else np.zeros(0, dtype=np.int64)
            if numbers.size:
                needed = int(numbers.max()) + 1
                if needed > self.articles_with.size:
                    enlarge(self, "articles_with", max(needed, 2 * self.articles_with.size))
                np.add.at(self.articles_with, numbers, 1)
        self.pending = []

    def take(self) -> tuple[np.ndarray, int] | None:
        """How many articles hold each term number, and how many articles; None if nothing
        was tallied.  The tally is empty after."""
        self.fold()
        if not self.tallied:
            return None
        taken = self.articles_with, self.documents
        self.clear()
        return taken


class SharedTransaction:
    """The transaction that write groups decided in place share, while it is open: the
    groups written in it, whose reports wait for its commit, and how many entries they
    brought."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.groups: list[GroupWrite] = []
        self.entries = 0


class GroupWrite:
    """A write group decided by the writer: its sources' reports, once its transaction has
    committed.  Handed to the write-behind process, if that transaction failed, once its
    sources were written again one at a time (``Aggregator._settle_in_flight``); written in
    place in a shared transaction, once that transaction ended (``Aggregator._end_shared``)."""

    def __init__(self, aggregator: Aggregator | None, names: list[str],
                 writes: list[Callable[..., RefreshReport]], reports: list[RefreshReport],
                 staged: StagedWrites | None = None, changes: int = 0):
        self.aggregator, self.names, self.writes = aggregator, names, writes
        self.reports, self.staged, self.changes = reports, staged, changes
        self.future: Future | None = None
        self.settled = aggregator is None

    @classmethod
    def written(cls, reports: list[RefreshReport]) -> GroupWrite:
        """A group written before it was returned."""
        return cls(None, [], [], reports)

    def settle(self, reports: list[RefreshReport]) -> None:
        """The group's final reports; its rows and its sources' inputs are let go (a pass
        keeps every group's reports to its end)."""
        self.reports, self.settled = reports, True
        self.staged, self.names, self.writes = None, [], []

    def result(self) -> list[RefreshReport]:
        if not self.settled:
            assert self.aggregator is not None
            self.aggregator._settle_in_flight()
        return self.reports



def _fetchable(link: str | None) -> bool:
    """Whether an entry's link is an http(s) URL whose page can be asked for: a feed's
    links are the feed's to write, and one that is no URL at all (an unclosed IPv6
    address, a port beyond 65535, a control character) is passed over."""
    if not link or not link.startswith(("http://", "https://")):
        return False
    try:
        return bool(split_url(link).hostname) and link.isprintable()
    except ValueError:
        return False

class Aggregator:
    """The daemon's working parts: configuration, store, clusterer and HTTP client."""

    def __init__(self, config: Config, store: Store | None = None):
        self.config = config
        self.settings = config.clustering
        self._sources_by_name = {source.name: source for source in config.sources}
        self.store = store or Store(config.database)
        # Fetch threads and worker processes open their own read-only connections to it.
        self._database = str(Path(self.store.path).resolve())
        self.store.sync_sources(config.sources)
        self.signer = Signer(self.settings.num_perm)
        # The writer's reads: the store and what it staged and has not yet written.
        self._reads = StagedReads(self.store)
        self.clusterer = self._load_clusterer()
        self._warn_of_unclustered()
        self.limits = fetching.FetchLimits.of(config)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self.notifier = notify.Notifier(config.user_agent)
        self.last_delivery = notify.DeliveryReport()
        self._host_slots: dict[str, threading.Semaphore] = {}
        self._host_next_start: dict[str, float] = {}
        self._host_slots_lock = threading.Lock()
        self._site_icons = SiteIcons()
        # Reentrant: a write group whose transaction failed is written again, source by
        # source, by the thread that waits on it, under the lock it holds.
        self._write_lock = threading.RLock()
        # Writes the groups the writer decided (``_submit_group``), one at a time, behind it.
        self._write_behind: WriteBehind | None = None
        self._in_flight: GroupWrite | None = None
        # Written in place, groups share a transaction (``_write_shared``).
        self._shared: SharedTransaction | None = None
        # Writes that changed the clusterer, and how many of them were committed (or undone
        # by a rebuild): while they differ, the clusterer is ahead of the store.
        self._clusterer_changes = 0
        self._clusterer_settled = 0
        self._since_eviction = 0
        self._window_limit_warned = -math.inf
        self._tally = TermTally()
        # Terms in memory after the last ``_forget_unseen_terms``.
        self._terms_kept = 0
        self._last_prune: datetime | None = None
        self._last_purge: datetime | None = None
        # What the feeds' servers say of the system clock (their ``Date`` headers), and
        # when (``time.monotonic``) a purge held for it was last told of.
        self.server_clocks = ServerClocks()
        self._purge_held_told = -math.inf
        self._workers: WorkerPool | None = None
        self._workers_lock = threading.Lock()
        # (``time.monotonic``) Before this, no worker processes are started: the last start
        # failed (``_workers_failed``).
        self._workers_retry_at = -math.inf

    def _warn_of_unclustered(self) -> None:
        since = window_start(self.store.newest_published(), self.store.window_floor(),
                             self.settings.window_days)
        if not self.settings.enabled or since is None:
            return
        count = self.store.unclustered_since(since)
        if count:
            log.warning("%d articles of the window were stored while clustering was off and "
                        "belong to no shared story; `aggregator recluster --since %s` places "
                        "them", count, since.date().isoformat())

    def reload(self, config: Config) -> list[str]:
        """Apply a changed configuration without a restart; returns what changed.

        New sources become due at once, removed ones are no longer polled (their articles
        stay), changed settings apply from the next decision; unchanged sources keep their
        fetch state.  Settings that shape the index (``num_perm``, ``shingle_size``, the LSH
        thresholds) need a restart and keep their old values until then.
        """
        before = {s.name: s for s in self.config.sources}
        after = {s.name: s for s in config.sources}
        changes = [f"added {name}" for name in after if name not in before]
        changes += [f"removed {name}" for name in before if name not in after]
        changes += [f"changed {name}" for name in after
                    if name in before and before[name] != after[name]]
        structural = ("num_perm", "shingle_size", "duplicate_threshold", "candidate_threshold",
                      "index_backend", "index_storage")
        settings = config.clustering
        if any(getattr(settings, key) != getattr(self.settings, key) for key in structural):
            log.warning("%s need a restart to change; kept as they were",
                        ", ".join(structural))
            settings = replace(settings, **{key: getattr(self.settings, key)
                                            for key in structural})
        if settings != self.settings:
            changes.append("clustering settings")
        if config.retention_s != self.config.retention_s:
            changes.append("retention")
        turned_on = settings.enabled and not self.settings.enabled
        workers_before = self.worker_count
        with self._write_lock:
            self._settle_in_flight()
            self.store.sync_sources(config.sources)
            self.config = replace(config, clustering=settings)
            self._sources_by_name = {source.name: source for source in config.sources}
            self.settings = settings
            self.clusterer.settings = settings
        if self.worker_count != workers_before:
            changes.append(f"worker processes: {self.worker_count}")
            with self._workers_lock:
                # Fetches waiting on the old pool finish there; the next ones start the new.
                if self._workers is not None:
                    self._workers.shutdown(wait=False)
                    self._workers = None
        if turned_on:
            self._warn_of_unclustered()
        return changes

    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = fetching.make_client(self.limits)
            return self._client

    def close(self) -> None:
        self._settle_in_flight()
        self.notifier.close()
        if self._write_behind is not None:
            self._write_behind.close()
        if self._client is not None:
            self._client.close()
        if self._workers is not None:
            self._workers.shutdown(cancel_futures=True)
        self.store.close()

    # -- preparation ------------------------------------------------------------------------

    @property
    def worker_count(self) -> int:
        return worker_count(self.config.workers, os.cpu_count() or 1, self.settings.enabled)

    def _prepare_settings(self) -> PrepareSettings:
        settings = self.settings
        return PrepareSettings(settings.num_perm, settings.shingle_size, settings.title_weight,
                               settings.phrase_weight, features=settings.enabled,
                               max_entries=MAX_ENTRIES_PER_FETCH)

    def _worker_pool(self) -> WorkerPool | None:
        """The worker processes (started on first use), if the configuration has any and
        they could start when last tried (``_workers_failed``)."""
        if not self.worker_count:
            return None
        with self._workers_lock:
            if self._workers is None:
                if time.monotonic() < self._workers_retry_at:
                    return None
                try:
                    self._workers = WorkerPool(self.worker_count, os.getpid())
                except (OSError, ImportError, RuntimeError) as exc:
                    # (``BrokenProcessPool``, a ``RuntimeError``: the first process died
                    # before the last first task was given.)
                    self._workers_failed(None, exc)
            return self._workers

    def _workers_failed(self, pool: WorkerPool | None, exc: BaseException | str) -> None:
        """Worker processes could not start: ``pool`` (if any) is let go, and until
        ``WORKERS_RETRY_S`` from now feeds are prepared in the calling threads, more slowly
        but stored all the same.  Call with ``_workers_lock`` held."""
        # Its queued work (a task whose process did not start) is dropped with it.
        self._drop_workers(pool)
        if time.monotonic() >= self._workers_retry_at:  # once a try, not once a source
            log.warning("worker processes cannot start (%s); feeds are parsed and prepared "
                        "in the daemon's own process, and workers tried again in %.0f s",
                        exc, WORKERS_RETRY_S)
        self._workers_retry_at = time.monotonic() + WORKERS_RETRY_S

    def _drop_workers(self, pool: WorkerPool | None) -> None:
        """Shut ``pool`` down, and let it go if it is still the daemon's (``_workers_lock``
        held)."""
        if pool is None:
            return
        if self._workers is pool:
            self._workers = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, pool: WorkerPool, function: Callable,
                *args) -> tuple[WorkerPool, Future] | None:
        """``pool.submit(function, *args)``, with the pool it went to: ``pool``, or a new
        one where ``pool`` was broken by a worker that died before or shut down by a reload.
        None where no process could start for it (``_workers_failed``): the caller then
        does the work itself."""
        for replaced in (False, True):
            try:
                return pool, pool.submit(function, *args)
            except (RuntimeError, OSError, ImportError) as exc:
                with self._workers_lock:
                    if replaced or not isinstance(exc, RuntimeError):
                        self._workers_failed(pool, exc)
                        return None
                    # Broken (``BrokenProcessPool``: a worker died while idle, or preparing
                    # another feed, which that feed's own future reports), or shut down by a
                    # reload meanwhile: this task goes to a new pool.
                    self._drop_workers(pool)
                fresh = self._worker_pool()
                if fresh is None:
                    return None
                pool = fresh
        return None

    def start_workers(self) -> bool:
        """Start the worker processes now instead of on first use, and wait until they run
        (each imports the project first, about a second of CPU); whether they do.  The
        daemon starts them with itself."""
        pool = self._worker_pool()
        if pool is None:
            return False
        wait(pool.first_tasks, timeout=WORKERS_START_TIMEOUT_S)
        if pool.never_ran():
            with self._workers_lock:
                self._workers_failed(pool, STOPPED_AT_START)
            return False
        return True

    def prepare_async(self, source: str, entries: tuple[ParsedEntry, ...],
                      fetched: datetime) -> Future:
        """Normalise and fingerprint entries ahead of ``ingest_entries``, in a worker
        process when their text is as long as a document the daemon sends to one; else at
        once, in this thread."""
        pool = self._worker_pool() if text_size(entries) >= WORKER_MIN_BYTES else None
        if pool is not None:
            submitted = self._submit(pool, prepare_entries, entries, source, fetched,
                                     self._prepare_settings())
            if submitted is not None:
                return submitted[1]
        done: Future = Future()
        done.set_result(self._prepare_here(entries, source, fetched))
        return done

    def _prepare_here(self, entries: Sequence[ParsedEntry], source: str,
                      fetched: datetime) -> Prepared:
        return prepare_entries(tuple(entries), source, fetched, self._prepare_settings(),
                               signer=self.signer)

    def _in_worker(self, source: str, worth_it: bool, function: Callable, *args):
        """``function(*args)`` in a worker process when there is one and the work is
        ``worth_it`` (a round trip costs more than a small batch); else in this thread.

        A worker that dies (killed, out of memory) fails the sources it was preparing, not
        the daemon: the pool is replaced for the next ones.
        """
        pool = self._worker_pool() if worth_it else None
        submitted = None if pool is None else self._submit(pool, function, *args)
        if submitted is None:
            return function(*args)
        pool, future = submitted
        try:
            return future.result()
        except BrokenProcessPool:
            with self._workers_lock:
                never_ran = pool.never_ran()
                if never_ran:
                    self._workers_failed(pool, STOPPED_AT_START)
                else:
                    self._drop_workers(pool)
            if never_ran:  # no feed's doing: none was prepared there
                return function(*args)
            raise ParseError(source, "the worker process preparing this feed stopped; "
                                     "it is tried again at the next check") from None

    def _prepare_document(self, source: str, result: fetching.FetchResult,
                          fetched: datetime) -> PreparedDocument:
        return self._in_worker(source, len(result.body) >= WORKER_MIN_BYTES,
                               prepare_document, result.body, result.content_type, source,
                               fetched, self._prepare_settings(), self._database, result.url)

    def _prepare_entries(self, source: str, entries: tuple[ParsedEntry, ...],
                         fetched: datetime) -> Prepared:
        return self._in_worker(source, text_size(entries) >= WORKER_MIN_BYTES, prepare_new_entries,
                               entries, source, fetched, self._prepare_settings(),
                               self._database)

    # -- one source --------------------------------------------------------------------------

    def refresh(self, source: Source) -> RefreshReport:
        """Fetch, parse, normalise, fingerprint, cluster and store one source's new entries."""
        row = self.store.source(source.name)
        return self._store_fetched(source, row, self._fetch_and_parse(source, row))

    def _fetch_and_parse(self, source: Source, row: SourceRow) -> Fetched:
        """The network half of a refresh: no database access, so it runs in fetch threads."""
        fetched = Fetched(started=utcnow(), clock=time.monotonic())
        try:
            with self._host_slot(row.url):
                fetched.result = fetching.fetch(self.client if not source.is_local else None,
                                                source.name, row.url, row.etag,
                                                row.last_modified, self.limits,
                                                source.credentials)
            self.server_clocks.record(fetching.site_of(fetched.result.url),
                                      fetched.result.clock_ahead_s)
            if fetched.result.outcome is not fetching.Outcome.NOT_MODIFIED:
                document = self._parsed_and_prepared(source, fetched.result, fetched.started)
                if document.entries_in_feed > MAX_ENTRIES_PER_FETCH:
                    log.warning("source %r: %d entries, only the first %d are read",
                                source.name, document.entries_in_feed, MAX_ENTRIES_PER_FETCH)
                fetched.prepared = document.prepared
                fetched.entry_count = min(document.entries_in_feed, MAX_ENTRIES_PER_FETCH)
                fetched.ttl_s = document.ttl_minutes * 60.0 if document.ttl_minutes else None
                fetched.skip_hours, fetched.skip_days = document.skip_hours, document.skip_days
            if not source.is_local and icon_due(row.icon_checked_at, row.has_icon,
                                                fetched.started):
                fetched.icon = self._site_icons.icon(site_root(row.url), partial(
                    find_icon, self.client, source.name, row.url, self.limits,
                    self._host_slot))
                fetched.icon_checked = True
        except SourceError as error:
            fetched.error = error
        return fetched

    def _parsed_and_prepared(self, source: Source, result: fetching.FetchResult,
                             started: datetime) -> PreparedDocument:
        """Parsing and preparing go to a worker process in one trip; a full-text source's
        entries come back to this thread first, for their pages to be fetched."""
        if not source.full_text:
            return self._prepare_document(source.name, result, started)
        feed = parse_feed(result.body, source.name, result.content_type, result.url)
        entries = self._with_full_text(source, feed.entries[:MAX_ENTRIES_PER_FETCH])
        return PreparedDocument(len(feed.entries),
                                self._prepare_entries(source.name, entries, started),
                                feed.ttl_minutes, feed.skip_hours, feed.skip_days)

    def _with_full_text(self, source: Source,
                        entries: tuple[ParsedEntry, ...]) -> tuple[ParsedEntry, ...]:
        """Fetch the page of each new entry and put its article text in place of the summary.

        Pages are fetched under the same limits as feeds; a page that fails or yields less
        text than the feed gave leaves the entry as it was.
        """
        keyed = [(entry, identity_keys(source.name, (entry.guid or "").strip() or None,
                                       canonical_url(entry.link), "")[:-1])
                 for entry in entries]
        known = self.store.known_keys(thread_reader(self._database),
                                      [k for _entry, keys in keyed for k in keys])
        result = []
        for entry, keys in keyed:
            # An entry the source's patterns leave out costs its site no page request.
            wanted = source.entry_filter is None or source.entry_filter.keeps(entry.title,
                                                                              entry.link)
            if (wanted and _fetchable(entry.link) and not known.intersection(keys)):
                entry = self._page_text(source, entry)
            result.append(entry)
        return tuple(result)

    def _page_text(self, source: Source, entry: ParsedEntry) -> ParsedEntry:
        try:
            with self._host_slot(entry.link):
                page = fetching.fetch_http(self.client, source.name, entry.link, None, None,
                                           self.limits)
        except SourceError as error:
            log.info("full text of %s not fetched: %s", entry.link, error)
            return entry
        import trafilatura  # imported on first use: it is slow to load and often not needed

        extracted = trafilatura.extract(page.body, url=entry.link, favor_precision=True,
                                        include_comments=False) if page.body else None
        given = html_to_text(entry.content or entry.summary)
        if not extracted or len(extracted) <= len(given):
            return entry
        return replace(entry, content=text_as_html(extracted))

    def host_key(self, url: str) -> str:
        """The politeness unit of a URL: its service group if one matches, else its host."""
        host = (urlsplit(url).hostname or "").lower()
        for name, patterns in self.config.service_groups:
            if any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns):
                return f"group:{name}"
        return host

    @contextmanager
    def _host_slot(self, url: str) -> Iterator[None]:
        """At most ``PER_HOST_CONCURRENCY`` requests at once to one host (or service group),
        and at least ``min_host_interval`` between the starts of two of them."""
        key = self.host_key(url)
        with self._host_slots_lock:
            slot = self._host_slots.get(key)
            if slot is None:
                slot = self._host_slots[key] = threading.Semaphore(PER_HOST_CONCURRENCY)
        with slot:
            spacing = self.config.min_host_interval_s
            if spacing:
                with self._host_slots_lock:
                    start = max(time.monotonic(), self._host_next_start.get(key, 0.0))
                    self._host_next_start[key] = start + spacing
                time.sleep(max(0.0, start - time.monotonic()))
            yield

    def _store_fetched(self, source: Source, row: SourceRow, fetched: Fetched) -> RefreshReport:
        """The database half of a refresh: one transaction for everything the pass decided."""
        if fetched.error is not None:
            poll = PollState(source.interval_s, row.consecutive_errors)
            return self._record_failure(source, row, poll, fetched.started, fetched.clock,
                                        fetched.error)
        with self._writing() as conn, self._staging(conn) as staged:
            return self._write_fetched(conn, staged, source, row, fetched)

    def _write_fetched(self, conn, staged: StagedWrites, source: Source, row: SourceRow,
                       fetched: Fetched) -> RefreshReport:
        """``conn``: the open transaction, or None where the write is staged only (for the
        write-behind process)."""
        started, clock, result = fetched.started, fetched.clock, fetched.result
        ttl_s = fetched.ttl_s
        not_modified = result.outcome is fetching.Outcome.NOT_MODIFIED
        report = RefreshReport(source.name, "not_modified" if not_modified else "ok",
                               result.status, 0 if not_modified else fetched.entry_count,
                               decisions=None)
        if fetched.prepared is not None and fetched.prepared.articles:
            self._ingest(conn, staged, row.id, source.name, source.priority,
                         fetched.prepared, started, report)
        state: dict[str, object] = {
            "last_status": result.status, "last_outcome": report.outcome,
            "last_checked_at": started, "last_success_at": started,
            "consecutive_errors": 0, "last_error": None, "cooldown_until": None,
            # Only a forced pass requests a disabled source (an operator checking whether a
            # gone feed is back): one that answers is enabled again.
            "disabled_reason": None,
            "next_check_at": next_check_at(started,
                                           PollState(self._interval(source, row, started)),
                                           PollResponse(result.outcome, result.max_age_s,
                                                        None, ttl_s, fetched.skip_hours,
                                                        fetched.skip_days),
                                           random_jitter()),
        }
        if result.etag or result.last_modified or result.outcome is fetching.Outcome.OK:
            state["etag"] = result.etag
            state["last_modified"] = result.last_modified
        if fetched.icon_checked:
            state["icon_checked_at"] = started
        if fetched.icon is not None:
            icon = fetched.icon
            staged.store_icon(row.id, icon.url, icon.media_type, icon.data, started)
        state.update(redirect_state(row, result.permanent_redirect,
                                    self.config.permanent_redirect_after))
        staged.record_fetch(
            row.id, started=started, duration_ms=int((time.monotonic() - clock) * 1000),
            url=result.url, status=result.status, outcome=report.outcome, error=None,
            size=len(result.body), entries=report.entries,
            new_articles=report.new_articles, state=state)
        return report

    def _interval(self, source: Source, row: SourceRow, now: datetime) -> float:
        if not source.adaptive:
            return source.interval_s
        recent = self._reads.entries_since(row.id, now - timedelta(days=7))
        return adaptive_interval(recent, self.config.min_interval_s, self.config.max_interval_s)

    def _record_failure(self, source: Source, row, poll: PollState, started: datetime,
                        clock: float, error: SourceError) -> RefreshReport:
        errors = row.consecutive_errors + 1
        status = getattr(error, "status", None)
        retry_after = getattr(error, "retry_after_s", None)
        if isinstance(error, SourceGoneError):
            outcome = fetching.Outcome.GONE
        elif status is not None:
            outcome = fetching.classify_status(status)
        else:
            outcome = fetching.Outcome.ERROR
        when = next_check_at(started, PollState(poll.interval_s, errors),
                             PollResponse(outcome, retry_after_s=retry_after), random_jitter())
        state: dict[str, object] = {
            "last_status": status, "last_outcome": "parse_error"
            if isinstance(error, ParseError) else outcome.value,
            "last_checked_at": started, "consecutive_errors": errors,
            "last_error": error.message, "next_check_at": when,
        }
        if outcome is fetching.Outcome.THROTTLED and retry_after is not None:
            state["cooldown_until"] = started + timedelta(seconds=retry_after)
        if isinstance(error, SourceGoneError):
            state["disabled_reason"] = error.message
        log.warning("%s", error)
        with self._write_lock:
            self._settle_in_flight()
            self.store.record_fetch(
                row.id, started=started, duration_ms=int((time.monotonic() - clock) * 1000),
                url=row.url, status=status, outcome=str(state["last_outcome"]),
                error=error.message, size=None, entries=None, new_articles=None, state=state)
        return RefreshReport(source.name, str(state["last_outcome"]), status,
                             error=error.message,
                             unreachable=isinstance(error, FetchError) and error.unreachable)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The write lock and one transaction.

        If the transaction changed the clusterer and then failed (in the middle, or at the
        commit itself: a full disk), the clusterer is rebuilt after the rollback, from what
        the store kept.  Rebuilt before it, it would read the uncommitted rows and keep
        articles, and story ids, that the store no longer has.  A rebuild that fails in turn
        is tried again before the next write.
        """
        with self._write_lock:
            self._settle_in_flight()
            conn = self._begin_writing()
            try:
                yield conn
                self._end_writing(conn)
            except BaseException:
                self._abandon_writing(conn)
                raise

    def _begin_writing(self) -> sqlite3.Connection:
        """The start of ``_writing``'s transaction (or of a shared one)."""
        if self._clusterer_ahead:
            self._reload_clusterer()
        conn = self.store.begin()
        self._tally.clear()  # left by a transaction that failed
        self._reads.reset_ids()
        return conn

    def _end_writing(self, conn: sqlite3.Connection) -> None:
        """The term statistics of the transaction's articles, then the commit."""
        self._count_terms(conn)
        self._forget_unseen_terms()
        self.store.index_and_commit(conn)
        self._clusterer_settled = self._clusterer_changes

    def _abandon_writing(self, conn: sqlite3.Connection) -> None:
        self.store.rollback(conn)
        self._tally.clear()  # what it counted was rolled back with it
        self._reads.reset_ids()  # the rolled-back rows' ids are free again
        if self._clusterer_ahead:
            self._reload_clusterer()

    @contextmanager
    def _staging(self, conn: sqlite3.Connection,
                 defer: Callable[[StagedWrites], None] | None = None
                 ) -> Iterator[StagedWrites]:
        """Rows staged for one source in the open transaction, written through ``conn`` at
        the end unless the source's write failed (its rows are then dropped).  With
        ``defer``, rows that are only a fetch and a source's state go to it instead, for
        the caller to write with others (``_write_fetches``), unless the source wrote rows
        of its own through ``conn`` (clustering off, its articles go in directly): its
        fetch is then written with them."""
        staged = StagedWrites()
        self._reads.current = [staged]
        written = conn.total_changes
        try:
            yield staged
            if defer is not None and staged.holds_fetches_only() \
                    and conn.total_changes == written:
                defer(staged)
            else:
                self.store.write_staged(conn, staged)
        finally:
            self._reads.current = []

    @property
    def _clusterer_ahead(self) -> bool:
        return self._clusterer_changes != self._clusterer_settled

    def _reload_clusterer(self) -> None:
        self.clusterer = self._load_clusterer()
        self._clusterer_settled = self._clusterer_changes

    def _load_clusterer(self) -> Clusterer:
        return load_clusterer(self.store, self.settings, self.signer, self._reads)

    # -- entries -> stored, clustered articles -------------------------------------------------

    def ingest_entries(self, source: str, priority: int, entries: Iterable[ParsedEntry],
                       fetched: datetime, prepared: Prepared | None = None) -> RefreshReport:
        """Store and cluster entries that did not come through a fetch (eval, imports).

        ``prepared`` is what ``prepare_async`` made of the same entries, if the caller
        prepared them ahead (to overlap preparation with the previous batch's writes).
        """
        entries = tuple(entries)
        report = RefreshReport(source, "ok", None, len(entries))
        row = self.store.source(source)
        prepared = prepared or self._prepare_here(entries, source, fetched)
        with self._writing() as conn, self._staging(conn) as staged:
            self._ingest(conn, staged, row.id, source, priority, prepared, fetched, report)
        return report

    def ingest_group(self, batches: Sequence[tuple[str, int, Sequence[ParsedEntry], datetime,
                                                  Prepared | None]]) -> list[RefreshReport]:
        """``ingest_entries`` for several sources' ``(source, priority, entries, fetched,
        prepared)`` at once, in one transaction (see ``_submit_group``): a source that fails
        is reported, not raised."""
        return self.submit_group(batches).result()

    def submit_group(self, batches: Sequence[tuple[str, int, Sequence[ParsedEntry], datetime,
                                                   Prepared | None]],
                     keep_decisions: bool = True) -> GroupWrite:
        """``ingest_group``, returned as soon as the group is decided: its transaction is
        written behind the caller, who may go on to the next group meanwhile, or, in place,
        left open for the groups after it (``_write_shared``); its reports are final once
        it commits.  The text features of ``prepared`` are let go once the rows are staged.
        ``keep_decisions``: whether the reports list each new article's decision."""
        def write(source: str, priority: int, entries: Sequence[ParsedEntry],
                  fetched: datetime, prepared: Prepared | None, conn,
                  staged: StagedWrites) -> RefreshReport:
            report = RefreshReport(source, "ok", None, len(entries),
                                   decisions=[] if keep_decisions else None)
            prepared = prepared or self._prepare_here(entries, source, fetched)
            self._ingest(conn, staged, self.store.source(source).id, source, priority,
                         prepared, fetched, report)
            return report

        return self._submit_group([batch[0] for batch in batches],
                                  [partial(write, *batch) for batch in batches])

    def _writes_behind(self) -> bool:
        """Whether write groups are written by the write-behind process (``write_behind``):
        it needs a database file (its own connection) and a clusterer (with clustering off
        the writer stores articles in a few statements itself and has little else to do)."""
        return self.config.write_behind and self.settings.enabled \
            and self.store.path != ":memory:"

    def _submit_group(self, names: list[str],
                      writes: list[Callable[..., RefreshReport]]) -> GroupWrite:
        """Decide a write group's sources here and hand the rows to the write-behind process,
        which writes them in one transaction while this thread decides the next group.

        Each source's ``write(conn, staged)`` is called with no connection: it stages its
        rows, and reads through ``self._reads``, which adds what is staged and not yet
        committed to what the store holds.  One group at most is being written behind: the
        next is handed over once it has committed.  If a source fails while being decided,
        or the transaction of the group before fails, nothing of the group is kept: the
        clusterer is rebuilt from the store and the group written here, source by source
        (``_write_now``), which reports the source that fails and keeps the others.
        """
        with self._write_lock:
            if not self._writes_behind():
                return self._write_shared(names, writes)
            if self._in_flight is None and self._clusterer_ahead:
                self._reload_clusterer()
            group = StagedWrites()
            reports = []
            # From here until the group commits, the clusterer is ahead of the store.
            self._clusterer_changes += 1
            try:
                for write in writes:
                    staged = StagedWrites()
                    self._reads.current = [group, staged]
                    reports.append(write(None, staged))
                    group.absorb(staged)
                counts = self._take_tallies()
                if counts is not None:
                    group.count_terms(counts)
            except Exception:
                self._reads.current = []
                self._tally.clear()
                self._settle_in_flight()
                self._reload_clusterer()
                return GroupWrite.written(self._write_now(names, writes))
            finally:
                self._reads.current = []
            self._forget_unseen_terms()
            if not self._settle_in_flight():
                # Decided on the rows of a group that the store does not have.
                return GroupWrite.written(self._write_now(names, writes))
            handed = GroupWrite(self, names, writes, reports, group, self._clusterer_changes)
            if self._write_behind is None:
                self._write_behind = WriteBehind(
                    self.store.path, partial(exit_with_parent, os.getpid()))
            try:
                handed.future = self._write_behind.submit(group)
            except Exception as exc:  # no process could start (no more processes allowed)
                log.warning("write group of %d sources not handed to the write-behind "
                            "process (%s); written here", len(names), exc)
                self._reload_clusterer()
                return GroupWrite.written(self._write_now(names, writes))
            self._reads.pending.append(group)
            self._in_flight = handed
            return handed

    def _write_shared(self, names: list[str],
                      writes: list[Callable[..., RefreshReport]]) -> GroupWrite:
        """Write a group here, in the transaction that the groups before it left open
        (``SharedTransaction``), each source under a savepoint of its own (``_write_each``).

        The transaction commits once it holds ``SHARED_TRANSACTION_ENTRIES`` entries, or
        when anything else needs the store settled (``_settle_in_flight``: the end of a pass,
        a writer about to wait for a fetch, another write); the group's reports are final
        then.  If SQLite gives up the transaction (a full disk, a failed commit), every
        source of its groups is reported as not stored: none of their fetch state was kept
        either, so they are fetched again at their next check.
        """
        with self._write_lock:
            shared = self._shared
            if shared is None:
                self._settle_in_flight()
                try:
                    shared = self._shared = SharedTransaction(self._begin_writing())
                except Exception as exc:  # a read-only file, a lock held too long
                    return GroupWrite.written([self._failed_report(name, exc)
                                               for name in names])
            group = GroupWrite(self, names, [], [])
            shared.groups.append(group)
            try:
                group.reports = self._write_each(shared.conn, names, writes)
                # Indexed now, not at the commit: their texts are not held until then.
                self.store.index_new_articles(shared.conn)
            except Exception as exc:
                self._end_shared(exc)
                return group
            shared.entries += sum(report.entries for report in group.reports)
            if shared.entries >= SHARED_TRANSACTION_ENTRIES:
                self._commit_shared()
            return group

    def _commit_shared(self) -> None:
        """Commit the transaction that write groups share, if one is open, and settle their
        reports."""
        with self._write_lock:
            if self._shared is None:
                return
            try:
                self._end_writing(self._shared.conn)
            except Exception as exc:
                self._end_shared(exc)
                return
            self._end_shared(None)

    def _end_shared(self, failure: Exception | None) -> None:
        """Settle the groups of the shared transaction, which has committed, or which
        ``failure`` ended (it is rolled back here)."""
        shared, self._shared = self._shared, None
        assert shared is not None
        try:
            if failure is not None:
                self._abandon_writing(shared.conn)
        finally:
            for group in shared.groups:
                group.settle(group.reports if failure is None else
                             [self._failed_report(name, failure) for name in group.names])

    def _settle_in_flight(self) -> bool:
        """Commit the transaction that write groups share, if any.  Wait for the group being
        written behind, if any, and settle its reports.  If its transaction failed, rebuild
        the clusterer from the store and write the group again here, source by source; False
        then (the clusterer no longer holds what was decided after the group)."""
        with self._write_lock:
            self._commit_shared()
            handed, self._in_flight = self._in_flight, None
            if handed is None:
                return True
            assert handed.future is not None
            try:
                handed.future.result()
            except Exception as exc:
                log.warning("write group of %d sources not committed (%s); written again "
                            "source by source", len(handed.names), exc)
                self._reads.pending.clear()
                self._reload_clusterer()
                handed.settle(self._write_now(handed.names, handed.writes))
                return False
            self._reads.pending.remove(handed.staged)
            self._clusterer_settled = max(self._clusterer_settled, handed.changes)
            handed.settle(handed.reports)
            return True

    def _write_now(self, names: list[str],
                   writes: list[Callable[..., RefreshReport]]) -> list[RefreshReport]:
        """A write group in one transaction of this thread, each source under a savepoint
        of its own (see ``_write_each``)."""
        try:
            with self._writing() as conn:
                return self._write_each(conn, names, writes)
        except Exception as exc:  # the commit, or SQLite gave up the whole transaction
            return [self._failed_report(name, exc) for name in names]

    def _write_each(self, conn, names: list[str],
                    writes: list[Callable[..., RefreshReport]]) -> list[RefreshReport]:
        """Run each source's write (called with ``conn`` and the source's staged rows,
        written at its end) under a savepoint of its own.

        One transaction for several sources costs one commit and one flush of the full-text
        index instead of one each.  A source whose write fails is rolled back to its
        savepoint alone and reported; the others are kept.  If that source had changed the
        clusterer, it is rebuilt at once from the writer's connection, which still sees the
        sources written before it.  Some errors (a full disk, an I/O error) make SQLite
        roll back the whole transaction: then the group fails as one.
        """
        reports = []
        # The sources that staged only their fetch (a 304, nothing new), by their place in
        # the group: written together at the end, a statement a table for all of them
        # instead of a dozen each.
        fetches_only: list[tuple[int, StagedWrites]] = []
        for name, write in zip(names, writes, strict=True):
            changes, tallies = self._clusterer_changes, self._tally.mark()
            # Ids follow the largest stored, which a source rolled back gives back.
            self._reads.reset_ids()
            deferred = len(fetches_only)
            try:
                # Deferred before this source's report is added: its place is the count.
                with self.store.savepoint(conn), self._staging(
                        conn, lambda staged: fetches_only.append((len(reports), staged))
                ) as staged:
                    report = write(conn, staged)
            except Exception as exc:
                if not conn.in_transaction:
                    raise
                del fetches_only[deferred:]
                self._tally.undo_since(tallies)
                if self._clusterer_changes != changes:
                    # Still ahead of the store: it holds the earlier sources' articles,
                    # whose term statistics it reads from the store.
                    self._count_terms(conn)
                    self.clusterer = self._load_clusterer()
                report = self._failed_report(name, exc)
            else:
                self._tally.fold()
            reports.append(report)
        if fetches_only:
            self._write_fetches(conn, names, fetches_only, reports)
        return reports

    def _write_fetches(self, conn, names: list[str],
                       fetches_only: list[tuple[int, StagedWrites]],
                       reports: list[RefreshReport]) -> None:
        """The rows of the sources that staged only their fetch (each with its place in the
        group), in one write under a savepoint; if it fails, each source's under a
        savepoint of its own, so that only a source whose rows fail is reported failed."""
        together = StagedWrites()
        for _place, staged in fetches_only:
            together.absorb(staged)
        try:
            with self.store.savepoint(conn):
                self.store.write_staged(conn, together)
            return
        except Exception:
            if not conn.in_transaction:
                raise
        for place, staged in fetches_only:
            try:
                with self.store.savepoint(conn):
                    self.store.write_staged(conn, staged)
            except Exception as exc:
                if not conn.in_transaction:
                    raise
                reports[place] = self._failed_report(names[place], exc)

    def _failed_report(self, source: str, exc: Exception) -> RefreshReport:
        if isinstance(exc, StoreError | sqlite3.Error):
            # Disk full, a read-only file, a lock held too long: nothing of this source's
            # pass was committed; it is fetched again next time.
            message = f"database {self.store.path}: {exc}"
            log.error("source %r not stored: %s", source, message)
            return RefreshReport(source, "store_error", error=message)
        # One source's bug never stops the others.
        log.error("source %r failed unexpectedly", source, exc_info=exc)
        return RefreshReport(source, "error", error=repr(exc))

    def _ingest(self, conn, staged: StagedWrites, source_id: int, source: str, priority: int,
                prepared: Prepared, fetched: datetime, report: RefreshReport) -> None:
        """Place and stage a source's new entries.  ``conn``: the open transaction, or None
        where the rows are staged for the write-behind process (clustering on)."""
        fresh: list[NormalizedArticle] = []
        features: list[TextFeatures | None] = []
        word_counts: list[int | None] = []
        # Keys stored before this batch, and those of the batch's own earlier entries.
        seen = self._reads.known_keys([k for a in prepared.articles for k in a.identity_keys])
        entry_filter = self._entry_filter(source)
        for number, (article, feature) in enumerate(zip(prepared.articles, prepared.features,
                                                        strict=True)):
            if seen.intersection(article.identity_keys):
                report.repeats += 1
                continue
            if entry_filter is not None and not entry_filter.keeps(article.title, article.url):
                report.filtered += 1
                continue
            seen.update(article.identity_keys)
            fresh.append(article)
            features.append(feature)
            word_counts.append(prepared.word_counts[number] if prepared.word_counts else None)
        if conn is None:
            # Taken: the inputs of a group written behind are kept until it commits (to
            # write it again if it fails), and their features would stay with them; written
            # again, the group computes them here (``_cluster_and_store``).
            prepared.features = [None] * len(prepared.features)
        if not fresh:
            return
        stripped = self._strip_template_lines(staged, source_id, fresh, fetched)
        # What was computed of a text that lost template lines is computed again, here.
        changed = [after.text != before.text for before, after in zip(fresh, stripped,
                                                                      strict=True)]
        if not self.settings.enabled:
            assert conn is not None, "clustering off: written in the open transaction"
            # Its template lines first: the articles' rows go in directly.
            self.store.write_staged(conn, staged)
            staged.clear()
            self._store_unclustered(conn, source_id, stripped, [
                count_words(article.text) if count is None or text_changed else count
                for article, count, text_changed in zip(stripped, word_counts, changed,
                                                        strict=True)], report)
            return
        features = [None if text_changed else feature
                    for feature, text_changed in zip(features, changed, strict=True)]
        self._cluster_and_store(conn, staged, [(source_id, source, priority, article, None)
                                               for article in stripped], report,
                                features=features)

    def _entry_filter(self, source: str) -> EntryFilter | None:
        """The configured source's entry filter; None for a source no longer configured
        (its entries come from ``ingest_entries``: eval, imports)."""
        configured = self._sources_by_name.get(source)
        return configured.entry_filter if configured else None

    def _store_unclustered(self, conn, source_id: int, articles: list[NormalizedArticle],
                           word_counts: list[int], report: RefreshReport) -> None:
        """Clustering off: each article is a story of its own, stored without a fingerprint
        and left out of the index and the statistics (``recluster`` places it later)."""
        article_ids = self.store.insert_solo_articles(
            conn, source_id, articles, word_counts, UNCLUSTERED_DECISION, FIRST_VERSION)
        report.new_articles += len(article_ids)
        if report.decisions is not None:
            report.decisions.extend((article_id, UNCLUSTERED) for article_id in article_ids)

    def _cluster_and_store(self, conn, staged: StagedWrites, placements: list[Placement],
                           report: RefreshReport,
                           progress: Callable[[int, int], None] | None = None,
                           features: list[TextFeatures | None] | None = None) -> None:
        """Fingerprint, cluster and stage articles in order, in chunks; with ``conn`` (an
        open transaction) each chunk's rows are written at its end, so that a recluster of
        a large store does not hold them all.

        What does not depend on the statistics (tokens, counts, shingle signatures) comes
        prepared in ``features`` or is computed for a whole chunk at once; the rest article
        by article, each under the statistics that include every article before it.  Their
        terms are tallied for the store's statistics, written when the transaction ends.
        """
        settings = self.settings
        features = features or [None] * len(placements)
        # From here until the commit, the clusterer is ahead of the store (see _writing).
        self._clusterer_changes += 1
        counted = self._tally.start(len(placements))
        for start in range(0, len(placements), PLACEMENT_CHUNK):
            chunk = placements[start:start + PLACEMENT_CHUNK]
            chunk_features = features[start:start + PLACEMENT_CHUNK]
            missing = [i for i, f in enumerate(chunk_features) if f is None]
            computed = text_features([(chunk[i][3].title, chunk[i][3].text) for i in missing],
                                     self.signer, settings.shingle_size,
                                     settings.title_weight, settings.phrase_weight)
            for i, feature in zip(missing, computed, strict=True):
                chunk_features[i] = feature
            signatures = np.stack([f.shingle_signature for f in chunk_features])
            shingle_keys = self.clusterer.duplicate_index.band_keys(signatures)
            shingle_bits = None if self.clusterer.rows.keep_stored else low_bits(signatures)
            for offset, (placement, feature) in enumerate(
                    zip(chunk, chunk_features, strict=True)):
                article_print = fingerprint_of(feature, self.clusterer.stats, self.signer,
                                               settings.salient_terms)
                self._place(staged, *placement[:4], article_print, report,
                            stored_id=placement[4],
                            shingle_keys=None if shingle_keys is None
                            else shingle_keys[offset:offset + 1],
                            shingle_bits=None if shingle_bits is None else shingle_bits[offset])
                counted.append(article_print.term_ids)
                if progress:
                    progress(start + offset + 1, len(placements))
            if conn is not None and start + PLACEMENT_CHUNK < len(placements):
                self.store.write_staged(conn, staged)
                staged.clear()

    def _count_terms(self, conn) -> None:
        """Write the transaction's tally to the term statistics."""
        counts = self._take_tallies()
        if counts is not None:
            self.store.count_terms(conn, counts)

    def _take_tallies(self) -> TermCounts | None:
        """The transaction's tally as what the term statistics add, and none left."""
        taken = self._tally.take()
        if taken is None:
            return None
        articles_with, documents = taken
        stats, terms = self.clusterer.stats, self.clusterer.vocabulary.terms
        stored_ids = self.clusterer.vocabulary.stored_ids
        present = np.flatnonzero(articles_with)
        names = [terms[term_id] for term_id in present.tolist()]
        return TermCounts(documents, stored_ids(present), names, articles_with[present],
                          stats.priors_of(present, names), stats.last_articles_of(present))

    def vocabulary_terms(self) -> tuple[int, int]:
        """The terms seen since the store began, and those whose names are in memory."""
        vocabulary = self.clusterer.vocabulary
        return vocabulary.seen, len(vocabulary.ids)

    def _forget_unseen_terms(self) -> None:
        """Drop from memory the terms that none of the latest articles used (as many
        articles as the window holds), once the vocabulary has grown enough since the last
        time (``FORGET_TERMS_MIN``): they stay in the store (``TermStatistics.recall``)."""
        stats = self.clusterer.stats
        if len(stats.vocabulary.ids) < self._terms_kept + max(self._terms_kept // 4,
                                                              FORGET_TERMS_MIN):
            return
        forgotten = stats.forget_unseen_since(
            stats.newest_article - self.clusterer.window_size + 1, self.clusterer.terms_held())
        self._terms_kept = len(stats.vocabulary.ids)
        log.debug("%d terms left memory; %d kept", forgotten, self._terms_kept)

    def _strip_template_lines(self, staged: StagedWrites, source_id: int,
                              articles: list[NormalizedArticle],
                              seen: datetime) -> list[NormalizedArticle]:
        """Drop lines that this source repeats across articles (its page template).

        A line counts as template once it appears in ``TEMPLATE_LINE_MIN_ARTICLES`` of the
        source's articles, those stored before and those in this batch together.
        """
        keys_per_article = [template_line_keys(a.text) for a in articles]
        batch_counts: dict[str, int] = {}
        for keys in keys_per_article:
            for key in keys:
                batch_counts[key] = batch_counts.get(key, 0) + 1
        stored = self._reads.line_counts(source_id, batch_counts)
        template = {key for key, count in batch_counts.items()
                    if count + stored.get(key, 0) >= TEMPLATE_LINE_MIN_ARTICLES}
        staged.count_lines(source_id, batch_counts, seen)
        if not template:
            return articles
        return [replace(a, text=strip_lines(a.text, template)) for a in articles]

    def _place(self, staged: StagedWrites, source_id: int, source: str, priority: int,
               article: NormalizedArticle, fingerprint, report: RefreshReport,
               stored_id: int | None = None, shingle_keys: np.ndarray | None = None,
               shingle_bits: np.ndarray | None = None) -> None:
        """Decide the article's story and stage its rows: a new article, or (``stored_id``) a
        stored one being clustered again by ``recluster``."""
        candidate = ClusterArticle(None, source, priority, article.published.timestamp(),
                                   article.author is not None, fingerprint,
                                   dated=article.has_published, shingle_keys=shingle_keys,
                                   shingle_bits=shingle_bits)
        decision = self.clusterer.propose(candidate)
        story_id = decision.story_id
        if story_id is None:
            story_id = self._reads.new_story_id()
            staged.create_story(story_id, article.published, article.fetched)
        # Committed to the clusterer first (it is ahead of the store until the transaction
        # ends anyway, see _writing), so that the row is written once, with its relation.
        article_id = self._reads.new_article_id() if stored_id is None else stored_id
        candidate.article_id = article_id
        outcome = self.clusterer.commit(candidate, story_id)
        relation, similarity = outcome.member_relations[article_id]
        vector_ids, vector_weights = self.clusterer.vector(candidate)
        columns = dict(
            story_id=story_id, relation=relation, similarity=similarity,
            fingerprint=fingerprint,
            term_vector=pack_vector(self.clusterer.vocabulary.stored_ids(vector_ids).tolist(),
                                    vector_weights),
            shingle_bytes=self.signer.to_bytes(fingerprint.shingle_signature),
            salient_bytes=self.signer.to_bytes(fingerprint.salient_signature),
            decision=decision_record(decision))
        if stored_id is None:
            staged.insert_article(article_id=article_id, source_id=source_id, article=article,
                                  **columns)
        else:
            staged.update_article(article_id=article_id, source_id=source_id, article=article,
                                  **columns)
        staged.apply_story_outcome(article_id, outcome, article.fetched)
        report.new_articles += 1
        if report.decisions is not None:
            report.decisions.append((article_id, decision))
        self._since_eviction += 1
        if self._since_eviction >= EVICT_EVERY:
            self._since_eviction = 0
            self._evict(staged)
            # What the last articles' transient objects freed, back to the OS: else the
            # heap keeps the high-water mark of every batch (a tenth of RSS at 40,000).
            release_free_memory()

    def _evict(self, staged: StagedWrites) -> None:
        """Drop the stories that left the window: by time, and the oldest beyond the
        window's article limit.  A cutoff raised by the limit is stored in the same
        transaction, so that a restart rebuilds the same window."""
        clusterer = self.clusterer
        newest = window_newest(clusterer.newest_ts())
        by_time = max(newest - self.settings.window_days * DAY_S, clusterer.floor_ts)
        cutoff = clusterer.capacity_cutoff(by_time, self.settings.window_articles)
        if cutoff > by_time:
            clusterer.floor_ts = cutoff
            staged.raise_window_floor(datetime.fromtimestamp(cutoff, UTC))
            self._warn_of_window_limit(cutoff, newest)
        clusterer.evict_before(cutoff)

    def _warn_of_window_limit(self, cutoff_ts: float, newest_ts: float) -> None:
        now = time.monotonic()
        if now - self._window_limit_warned < WINDOW_LIMIT_WARNING_S:
            return
        self._window_limit_warned = now
        log.warning("the story window is at its limit of %d articles (window_articles): it "
                    "spans %.1f days instead of %g (window_days); raise the limit for a "
                    "longer window, at about 2 KB of memory per article",
                    self.settings.window_articles, (newest_ts - cutoff_ts) / DAY_S,
                    self.settings.window_days)

    def recluster(self, since: datetime | None = None,
                  progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild the stories of articles published since ``since`` (all when None) with the
        current settings, from the stored text; returns how many articles were placed.

        Stories that had any member in that period are dissolved and their members placed
        again, oldest first, in one transaction: readers see the old stories or the new ones.
        """
        settings = self.settings
        if not settings.enabled:
            raise AggregatorError("clustering is off ([clustering] enabled = false): turn it "
                                  "on to recluster")
        with self._writing() as conn:
            articles = self.store.detach_stories(conn, since)
            self._reads.reset_ids()  # new stories' ids follow those left
            self._clusterer_changes += 1
            self.clusterer = self._load_clusterer()
            report = RefreshReport("recluster", "ok", entries=len(articles))
            with self._staging(conn) as staged:
                self._cluster_and_store(conn, staged, [(a.source_id, a.article.source,
                                                        a.priority, a.article, a.id)
                                                       for a in articles], report, progress)
            self.store.carry_deliveries(conn)
            # A reader's corrections outlast new settings: made again, in order, on the
            # new stories (those that no longer apply are passed over).
            now = utcnow()
            for correction in self.store.corrections(conn, pending=False):
                with suppress(CorrectionError):
                    self._carry_out(conn, correction, now)
            if since is None:
                self.store.forget_unclustered(conn)
        self.clusterer = self._load_clusterer()
        return report.new_articles

    # -- a reader's corrections ---------------------------------------------------------------

    def apply_corrections(self, now: datetime | None = None) -> list[tuple[Correction,
                                                                           int | None,
                                                                           str | None]]:
        """Carry out the corrections not carried out yet (``aggregator split`` and ``merge``
        keep them in the store), each in a transaction of its own, in the order made: for
        each, the story its articles are in afterwards, or why it could not be carried out
        (also recorded).  Cheap when there are none: one look-up in a partial index."""
        pending = self.store.corrections(self.store.db.conn, pending=True)
        if not pending:
            return []
        now = now or utcnow()
        results: list[tuple[Correction, int | None, str | None]] = []
        for correction in pending:
            story_id, error = None, None
            try:
                with self._writing() as conn:
                    try:
                        if not self.settings.enabled:
                            raise CorrectionError("clustering is off ([clustering] enabled "
                                                  "= false): stories cannot change")
                        story_id = self._carry_out(conn, correction, now)
                    except CorrectionError as exc:
                        error = str(exc)
                    self.store.record_correction(conn, correction.id, now, story_id, error)
            except Exception as exc:
                # Rolled back (and the window rebuilt from the store); recorded as failed,
                # so that it is not tried again before every later pass.
                log.exception("%s failed", describe(correction))
                story_id, error = None, f"failed: {type(exc).__name__}: {exc}"
                with self._writing() as conn:
                    self.store.record_correction(conn, correction.id, now, None, error)
            if error is None:
                log.info("%s: now story %d", describe(correction), story_id)
            else:
                log.info("%s: not carried out: %s", describe(correction), error)
            results.append((correction, story_id, error))
        return results

    def _carry_out(self, conn, correction: Correction, now: datetime) -> int:
        """One correction, in the clusterer and in the open transaction; returns the story
        of its first article afterwards."""
        clusterer = self.clusterer
        story_of, members_of = clusterer.memberships(list(correction.article_ids))
        regrouping = plan(correction, story_of, members_of)
        moves = regrouping.moves
        if NEW_STORY in moves.values():
            new_story = self._reads.new_story_id()
            moves = {article_id: new_story if story_id == NEW_STORY else story_id
                     for article_id, story_id in moves.items()}
        # The clusterer changes before the store: a failure from here on rebuilds it from
        # what the store kept (``_writing``).
        self._clusterer_changes += 1
        outcomes = clusterer.regroup(moves, regrouping.losing)
        taker = dict.fromkeys(regrouping.emptied, next(iter(moves.values())))
        self.store.regroup_stories(conn, moves, outcomes, taker, describe(correction), now)
        first = correction.article_ids[0]
        return moves.get(first, story_of[first])

    # -- passes -----------------------------------------------------------------------------

    def due_sources(self, now: datetime) -> list[Source]:
        """Enabled sources whose next check has come, except those on a host cooling down.

        A 429 or 503 with Retry-After from one feed cools down its whole host (or service
        group): the other feeds there are not requested either until the time has passed.
        """
        return self._due(now, self._source_rows())

    def _source_rows(self) -> dict[str, SourceRow]:
        return {source.name: self.store.source(source.name) for source in self.config.sources}

    def _due(self, now: datetime, rows: dict[str, SourceRow]) -> list[Source]:
        # Both times as of now: a system clock set back must not hold a feed back as long.
        cooling = set()
        for row in rows.values():
            cooldown_until = as_of_now(now, row.last_checked_at, row.cooldown_until)
            if cooldown_until and cooldown_until > now:
                cooling.add(self.host_key(row.url))
        due = []
        for source in self.config.sources:
            row = rows[source.name]
            if not source.enabled or row.disabled_reason:
                continue
            if not source.is_local and self.host_key(row.url) in cooling:
                continue
            next_check = as_of_now(now, row.last_checked_at, row.next_check_at)
            if next_check is None or next_check <= now:
                due.append(source)
        return due

    def run_pass(self, stopping: threading.Event | None = None,
                 force: bool = False) -> list[RefreshReport]:
        """Refresh every source that is due (every enabled one with ``force``).

        Up to ``max_concurrency`` sources are fetched and parsed at once (at most
        ``PER_HOST_CONCURRENCY`` per host) while this thread stores the ones already fetched,
        in configuration order, so that fetching never waits on clustering and the outcome
        does not depend on which server answered first.  Fetching runs at most
        ``FETCH_AHEAD`` x ``max_concurrency`` sources ahead of storing, and starts no more
        while those fetched and waiting hold ``FETCH_AHEAD_ENTRIES`` entries (``fetch_more``),
        which bounds the memory that fetched, not yet stored sources hold.
        """
        now = utcnow()
        # A reader's corrections first: the entries of this pass then meet the corrected
        # stories.  Whatever goes wrong with them, the sources are polled.
        try:
            self.apply_corrections(now)
        except Exception:
            log.exception("readers' corrections not carried out; polling goes on")
        rows = self._source_rows()
        sources = [s for s in self.config.sources if s.enabled] if force else \
            self._due(now, rows)
        if any(not source.is_local for source in sources):
            _ = self.client  # built before the threads start, so none waits on the others
        # Reports of the groups stored, in order; the last group's transaction may still be
        # being written behind this thread while it stores the next.
        written: list[GroupWrite] = []
        ahead = FETCH_AHEAD * self.config.max_concurrency
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency,
                                thread_name_prefix="fetch") as pool:
            pending: deque[tuple[Source, Future]] = deque()
            upcoming = iter(sources)

            # Entries that the sources taken so far this pass brought, and how many; and
            # the entries of those fetched ahead and not yet taken, and how many (counted
            # by the fetch threads as each fetch ends, before its future is done).
            taken_entries, taken_sources = 0, 0
            waiting_entries, waiting_sources = 0, 0
            counting = threading.Lock()

            def fetch(source: Source, row: SourceRow) -> Fetched:
                nonlocal waiting_entries, waiting_sources
                entries = 0
                try:
                    fetched = self._fetch_and_parse(source, row)
                    entries = fetched.entry_count
                    return fetched
                finally:
                    with counting:
                        waiting_entries += entries
                        waiting_sources += 1

            def take() -> tuple[Source, Future]:
                """The next source, once fetched; then as many more are started as may be
                (the others ahead are being fetched meanwhile)."""
                nonlocal taken_entries, taken_sources, waiting_entries, waiting_sources
                source, future = pending.popleft()
                if not future.done():
                    # What the writer has written is committed before it waits.
                    self._commit_shared()
                wait([future])
                entries = future.result().entry_count if future.exception() is None else 0
                with counting:
                    waiting_entries -= entries
                    waiting_sources -= 1
                taken_entries += entries
                taken_sources += 1
                top_up()
                return source, future

            def top_up() -> None:
                with counting:
                    fetched_entries, finished = waiting_entries, waiting_sources
                unfinished = len(pending) - finished
                sources = taken_sources + finished
                mean = (taken_entries + fetched_entries) / sources if sources else None
                while fetch_more(len(pending), ahead, fetched_entries, unfinished, mean,
                                 FETCH_AHEAD_ENTRIES, self.config.max_concurrency):
                    following = next(upcoming, None)
                    if following is None:
                        return
                    pending.append((following, pool.submit(fetch, following,
                                                           rows[following.name])))
                    unfinished += 1

            def with_ready_behind(first: tuple[Source, SourceRow, Fetched],
                                  same_kind: Callable[[Future], bool],
                                  full: Callable[[list], bool]) -> list:
                """``first`` and the sources behind it fetched with the same kind of answer,
                by now or within ``WRITE_GROUP_LINGER_S``: they are written in one
                transaction."""
                group = [first]
                deadline = time.monotonic() + WRITE_GROUP_LINGER_S
                while pending and not full(group):
                    following = pending[0][1]
                    if not following.done():
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._commit_shared()
                        wait([following], timeout=remaining)
                    if not same_kind(following):
                        break
                    source, future = take()
                    group.append((source, rows[source.name], future.result()))
                return group

            top_up()
            while pending:
                if stopping is not None and stopping.is_set():
                    for _other, waiting in pending:
                        waiting.cancel()
                    break
                # Stored next whatever it brings; meanwhile the following ones may finish.
                source, future = take()
                if _not_modified(future):
                    written.append(self._store_group(with_ready_behind(
                        (source, rows[source.name], future.result()), _not_modified,
                        lambda group: len(group) >= NOT_MODIFIED_GROUP)))
                elif _fetched_entries(future):
                    written.append(self._store_group(with_ready_behind(
                        (source, rows[source.name], future.result()), _fetched_entries,
                        _write_group_full)))
                else:
                    written.append(GroupWrite.written(
                        [self._store_one(source, rows[source.name], future)]))
        reports = [report for group in written for report in group.result()]
        if len(reports) > 1 and all(r.unreachable for r in reports):
            self._forgive_outage(sources[:len(reports)], rows, now)
        try:
            self._prune_template_lines(now)
            self.purge_expired(now)
            self.deliver_webhooks(now)
            self.store.checkpoint()
        except (StoreError, sqlite3.Error) as exc:
            log.error("database %s: %s", self.store.path, exc)
        return reports

    def _forgive_outage(self, sources: list[Source], rows: dict[str, SourceRow],
                        now: datetime) -> None:
        """Every source of the pass was unreachable: our network is down, not the feeds.

        The errors stay recorded, but they do not count towards the feeds' backoff: each
        source keeps its error count and is tried again after its plain interval.
        """
        log.warning("all %d sources were unreachable: network outage assumed; "
                    "their error counts are left as they were", len(sources))
        with self._write_lock:
            self._settle_in_flight()
            with self.store.transaction() as conn:
                for source in sources:
                    row = rows[source.name]
                    conn.execute(
                        "UPDATE sources SET consecutive_errors = ?, next_check_at = ? "
                        "WHERE id = ?",
                        [row.consecutive_errors,
                         to_iso(next_check_at(now, PollState(source.interval_s),
                                              PollResponse(fetching.Outcome.OK),
                                              random_jitter())),
                         row.id])

    def _store_one(self, source: Source, row: SourceRow, future: Future) -> RefreshReport:
        try:
            return self._store_fetched(source, row, future.result())
        except Exception as exc:
            return self._failed_report(source.name, exc)

    def _store_group(self, group: list[tuple[Source, SourceRow, Fetched]]) -> GroupWrite:
        """Sources already fetched, written in one transaction (see ``_submit_group``):
        those with entries, or those that answered 304, whose fetch state alone changes."""
        def write(source: Source, row: SourceRow, fetched: Fetched, conn,
                  staged: StagedWrites) -> RefreshReport:
            return self._write_fetched(conn, staged, source, row, fetched)

        return self._submit_group([source.name for source, _row, _fetched in group],
                                  [partial(write, *member) for member in group])

    def purge_expired(self, now: datetime, budget_s: float = PURGE_BUDGET_S,
                      force: bool = False) -> retention.PurgeReport:
        """Let the stories that ``retention`` no longer keeps leave the store
        (``retention.purge``), once an hour (or now, with ``force``), for at most
        ``budget_s``; what is left goes at the next pass.  Each transaction holds the write
        lock, so fetched sources are written between them."""
        report = retention.PurgeReport()
        if not self.config.retention_s or not force and not upkeep_due(
                self._last_purge, now, PRUNE_EVERY):
            return report
        if self._purge_held_by_clock():
            report.complete = False
            return report
        started = time.monotonic()
        # The window evicts every ``EVICT_EVERY`` articles, and a story it still holds
        # stays: a quiet store would wait long for its old stories to go.
        with self._writing() as conn, self._staging(conn) as staged:
            self._clusterer_changes += 1
            self._evict(staged)
        report = retention.purge(
            self.store, now, self.config.retention_s, self.settings.window_days,
            transaction=self._upkeep, held=self.clusterer.stories,
            until=lambda: time.monotonic() - started > budget_s)
        if report.complete:
            self._last_purge = now
        if report.stories or report.fetch_attempts:
            log.info("retention (%g days): deleted %s%s", self.config.retention_s / DAY_S,
                     report, "" if report.complete else "; the rest at the next pass")
        return report

    def _purge_held_by_clock(self) -> bool:
        """Whether the feeds' servers say that the system clock is too far ahead for the
        purge to trust it (``schedule.clock_too_far_ahead``): it would delete stories that
        are only older than the wrong clock says, and they could not be brought back.  The
        purge waits for the clock to be corrected; an operator hears of it once an hour."""
        ahead, servers = self.server_clocks.ahead_s()
        if not clock_too_far_ahead(ahead):
            return False
        if time.monotonic() - self._purge_held_told >= PRUNE_EVERY.total_seconds():
            self._purge_held_told = time.monotonic()
            log.warning("the system clock is %s ahead of the feeds' servers (the median of "
                        "%d servers' Date headers): retention deletes nothing until it is "
                        "corrected", f"{ahead / 86400:.1f} days" if ahead >= 2 * 86400
                        else f"{ahead / 3600:.1f} hours", servers)
        return True

    def deliver_webhooks(self, now: datetime) -> notify.DeliveryReport:
        """Post the stories that the configured webhooks take and have not had yet
        (``notify``), after what the pass wrote is in the store."""
        with self._write_lock:
            self._settle_in_flight()
        self.last_delivery = self.notifier.run(self.config, self.store.db.conn,
                                                self._upkeep, now)
        if self.last_delivery.delivered or self.last_delivery.rejected \
                or self.last_delivery.failed:
            log.info("webhooks: %s", self.last_delivery)
        return self.last_delivery

    @contextmanager
    def _upkeep(self) -> Iterator[sqlite3.Connection]:
        """A transaction of the store's upkeep (retention, template lines) between writes."""
        with self._write_lock:
            self._settle_in_flight()
            with self.store.transaction() as conn:
                yield conn

    def _prune_template_lines(self, now: datetime) -> None:
        if not upkeep_due(self._last_prune, now, PRUNE_EVERY):
            return
        self._last_prune = now
        with self._upkeep() as conn:
            self.store.prune_lines(conn, now - TEMPLATE_LINE_MEMORY)

