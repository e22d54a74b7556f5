"""All SQL lives here: the schema, its named migrations, the views dashboards read, and the
reads and writes of the daemon.

The file is shared with dashboards while the daemon writes, so it runs in WAL mode with a
busy timeout and keeps write transactions short (one per write group of sources, or a few
groups that follow one another: ``pipeline.SHARED_TRANSACTION_ENTRIES``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import sqlite_utils

from .corrections import Correction, request_correction
from .errors import SchemaTooNewError, StoreError
from .native import kernels
from .normalize import NormalizedArticle
from .readers import (
    BUSY_TIMEOUT_MS,
    PURGED_ARTICLES,
    PURGED_DOCUMENTS,
    PURGED_DUPLICATES,
    PURGED_SAME_STORY,
    close_calls,
    from_iso,
    newest_story_ids,
    read_only_connection,
    search_stories,
    select_in,
    stored_keys,
    to_iso,
)
from .reading import marked_story_ids, saved_story_ids

# The page size of a new store (an existing one keeps its own).  An article's fingerprint row
# is about 2 KB: with 4 KB pages each takes a page of its own, half of it empty, and a restart
# with a cold page cache waits on one small read per article of the window.  With 16 KB
# pages seven share a page: the file is 7% smaller and such a restart 1.6x faster, and the
# writer's time per article is the same.
PAGE_SIZE = 16384
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Articles read at a time when the window is rebuilt at start-up.
WINDOW_CHUNK = 4096
# Connections reading the window's fingerprints at a restart (see _fingerprint_rows).
WINDOW_READERS = 4


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------------------------------
# Migrations: applied in order, each recorded by name in _migrations.  Never edit one that has
# shipped; add a new one.

def _run_script(db: sqlite_utils.Database, script: str) -> None:
    """Run a multi-statement script inside the caller's transaction.

    ``executescript`` would commit first, which would make a migration non-atomic.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.conn.execute(pending)
            pending = ""
    if pending.strip():
        raise StoreError(f"incomplete SQL statement in migration: {pending.strip()[:80]}")


def _m001_initial(db: sqlite_utils.Database) -> None:
    _run_script(db, """
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        config_url TEXT NOT NULL,
        url TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        tags TEXT NOT NULL DEFAULT '[]',
        enabled INTEGER NOT NULL DEFAULT 1,
        in_config INTEGER NOT NULL DEFAULT 1,
        etag TEXT,
        last_modified TEXT,
        last_status INTEGER,
        last_outcome TEXT,
        last_checked_at TEXT,
        last_success_at TEXT,
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_check_at TEXT,
        cooldown_until TEXT,
        disabled_reason TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE stories (
        id INTEGER PRIMARY KEY,
        canonical_article_id INTEGER,
        title TEXT NOT NULL DEFAULT '',
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        first_published TEXT NOT NULL,
        last_published TEXT NOT NULL,
        article_count INTEGER NOT NULL DEFAULT 0,
        source_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE articles (
        id INTEGER PRIMARY KEY,
        source_id INTEGER NOT NULL REFERENCES sources(id),
        guid TEXT,
        url TEXT,
        canonical_url TEXT,
        identity_key TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        author TEXT,
        published TEXT NOT NULL,
        published_from_feed INTEGER NOT NULL,
        fetched TEXT NOT NULL,
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        word_count INTEGER NOT NULL,
        story_id INTEGER REFERENCES stories(id),
        relation TEXT CHECK (relation IN ('canonical', 'duplicate', 'same_story')),
        similarity REAL,
        decision TEXT,
        term_counts TEXT NOT NULL,
        vector TEXT NOT NULL,
        salient_terms TEXT NOT NULL,
        shingle_signature BLOB NOT NULL,
        salient_signature BLOB NOT NULL
    );
    CREATE INDEX articles_story ON articles(story_id);
    CREATE INDEX articles_published ON articles(published);
    CREATE INDEX articles_content_hash ON articles(content_hash);
    CREATE TABLE article_keys (
        key TEXT PRIMARY KEY,
        article_id INTEGER NOT NULL REFERENCES articles(id)
    ) WITHOUT ROWID;
    CREATE INDEX stories_last_seen ON stories(last_seen);
    CREATE TABLE canonical_history (
        id INTEGER PRIMARY KEY,
        story_id INTEGER NOT NULL REFERENCES stories(id),
        article_id INTEGER NOT NULL REFERENCES articles(id),
        previous_article_id INTEGER REFERENCES articles(id),
        reason TEXT NOT NULL,
        changed_at TEXT NOT NULL
    );
    CREATE INDEX canonical_history_story ON canonical_history(story_id);
    CREATE TABLE fetch_attempts (
        id INTEGER PRIMARY KEY,
        source_id INTEGER NOT NULL REFERENCES sources(id),
        started_at TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        url TEXT NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        error TEXT,
        bytes INTEGER,
        entries INTEGER,
        new_articles INTEGER
    );
    CREATE INDEX fetch_attempts_source ON fetch_attempts(source_id, started_at);
    CREATE TABLE term_stats (
        term TEXT PRIMARY KEY,
        document_frequency INTEGER NOT NULL,
        prior_fraction REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta(key, value) VALUES ('documents', '0');
    CREATE VIEW article_stories AS
    SELECT
        a.id AS article_id,
        a.guid,
        a.url,
        s.name AS source,
        a.title,
        a.author,
        a.published,
        a.story_id,
        (st.canonical_article_id = a.id) AS is_canonical,
        a.relation,
        a.similarity
    FROM articles a
    JOIN sources s ON s.id = a.source_id
    LEFT JOIN stories st ON st.id = a.story_id;
    """)


def _m002_source_lines(db: sqlite_utils.Database) -> None:
    _run_script(db, """
    CREATE TABLE source_lines (
        source_id INTEGER NOT NULL REFERENCES sources(id),
        line_key TEXT NOT NULL,
        articles INTEGER NOT NULL,
        last_seen TEXT NOT NULL,
        PRIMARY KEY (source_id, line_key)
    ) WITHOUT ROWID;
    """)


def _m003_dashboards(db: sqlite_utils.Database) -> None:
    _run_script(db, """
    CREATE VIRTUAL TABLE articles_fts USING fts5(
        title, text, content='articles', content_rowid='id', tokenize='porter unicode61'
    );
    INSERT INTO articles_fts(articles_fts) VALUES ('rebuild');
    CREATE TRIGGER articles_fts_insert AFTER INSERT ON articles BEGIN
        INSERT INTO articles_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
    END;
    CREATE TRIGGER articles_fts_delete AFTER DELETE ON articles BEGIN
        INSERT INTO articles_fts(articles_fts, rowid, title, text)
        VALUES ('delete', old.id, old.title, old.text);
    END;
    CREATE TRIGGER articles_fts_update AFTER UPDATE OF title, text ON articles BEGIN
        INSERT INTO articles_fts(articles_fts, rowid, title, text)
        VALUES ('delete', old.id, old.title, old.text);
        INSERT INTO articles_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
    END;
    CREATE INDEX articles_source_fetched ON articles(source_id, fetched);
    CREATE INDEX fetch_attempts_started ON fetch_attempts(started_at);
    CREATE VIEW latest_stories AS
    SELECT
        st.id AS story_id,
        st.title,
        a.url AS canonical_url,
        src.name AS canonical_source,
        st.first_seen,
        st.last_seen AS last_updated,
        st.first_published,
        st.last_published,
        st.article_count,
        st.source_count,
        (SELECT group_concat(name, ', ') FROM (
            SELECT DISTINCT s2.name AS name FROM articles m JOIN sources s2 ON s2.id = m.source_id
            WHERE m.story_id = st.id ORDER BY s2.name)) AS sources
    FROM stories st
    JOIN articles a ON a.id = st.canonical_article_id
    JOIN sources src ON src.id = a.source_id;
    CREATE VIEW source_health AS
    SELECT
        s.name,
        s.url,
        s.config_url,
        s.enabled,
        s.in_config,
        CASE
            WHEN s.disabled_reason IS NOT NULL THEN 'disabled'
            WHEN NOT s.enabled THEN 'disabled in config'
            WHEN s.last_checked_at IS NULL THEN 'never fetched'
            WHEN s.cooldown_until > strftime('%Y-%m-%dT%H:%M:%SZ', 'now') THEN 'cooldown'
            WHEN s.consecutive_errors > 0 THEN 'backoff'
            ELSE 'ok'
        END AS status,
        s.last_status,
        s.last_outcome,
        s.last_checked_at,
        s.last_success_at,
        s.consecutive_errors,
        s.last_error,
        s.next_check_at,
        s.cooldown_until,
        s.disabled_reason,
        (SELECT count(*) FROM articles a WHERE a.source_id = s.id) AS articles
    FROM sources s;
    CREATE VIEW daily_ingest AS
    SELECT
        substr(a.fetched, 1, 10) AS day,
        s.name AS source,
        count(*) AS articles,
        sum(a.relation = 'canonical') AS canonical,
        sum(a.relation = 'duplicate') AS duplicates,
        sum(a.relation = 'same_story') AS same_story
    FROM articles a JOIN sources s ON s.id = a.source_id
    GROUP BY day, s.name;
    CREATE VIEW daily_fetches AS
    SELECT
        substr(f.started_at, 1, 10) AS day,
        s.name AS source,
        count(*) AS fetches,
        sum(f.outcome = 'ok') AS ok,
        sum(f.outcome = 'not_modified') AS not_modified,
        sum(f.outcome NOT IN ('ok', 'not_modified')) AS failed,
        sum(coalesce(f.new_articles, 0)) AS new_articles,
        round(avg(f.duration_ms)) AS mean_duration_ms
    FROM fetch_attempts f JOIN sources s ON s.id = f.source_id
    GROUP BY day, s.name;
    """)


def _m004_redirect_sightings(db: sqlite_utils.Database) -> None:
    _run_script(db, """
    ALTER TABLE sources ADD COLUMN redirect_target TEXT;
    ALTER TABLE sources ADD COLUMN redirect_sightings INTEGER NOT NULL DEFAULT 0;
    """)


def pack_vector(term_ids: list[int], weights: list[float]) -> bytes:
    """A term vector as stored: int32 term ids (``term_stats.id``), then float64 weights."""
    return (np.asarray(term_ids, dtype="<i4").tobytes()
            + np.asarray(weights, dtype="<f8").tobytes())


def unpack_vectors(stored: list[bytes],
                   article_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Many stored vectors as two zero-padded matrices (term ids, weights), one row each;
    ``article_ids``, their articles', name the one that is malformed, if one is.

    The start-up path: each vector copied into its rows by the compiled ``unpack_vectors``
    where the package was built with a C compiler on a little-endian machine (the stored
    layout); ``unpack_vectors_numpy`` is the same in numpy, and the reference, which
    decides what the kernel refuses (it raises ``StoreError`` for a vector that is not 12
    bytes a term).
    """
    if kernels is None or sys.byteorder != "little":
        return unpack_vectors_numpy(stored, article_ids)
    width = max(1, max(map(len, stored), default=0) // 12)
    ids = np.zeros((len(stored), width), dtype=np.int32)
    weights = np.zeros((len(stored), width), dtype=np.float64)
    if kernels.unpack_vectors(stored, ids, weights) >= 0:
        return unpack_vectors_numpy(stored, article_ids)
    return ids, weights


def unpack_vectors_numpy(stored: list[bytes], article_ids: Sequence[int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``unpack_vectors`` in numpy: one scatter of the joined bytes into the flat matrices
    instead of two arrays per vector, and none when every vector has the same width."""
    count = len(stored)
    sizes = np.fromiter(map(len, stored), dtype=np.int64, count=count)
    if count and (sizes % 12).any():
        bad = int(np.flatnonzero(sizes % 12)[0])
        which = f"article {article_ids[bad]}'s stored term vector" if article_ids is not None \
            else f"stored term vector {bad + 1} of {count}"
        raise StoreError(f"{which} is {sizes[bad]} bytes: not 12 bytes a term (int32 ids, "
                         "then float64 weights)")
    lengths = sizes // 12
    width = max(1, int(lengths.max(initial=0)))
    term_ids = np.frombuffer(b"".join([data[:len(data) // 3] for data in stored]), dtype="<i4")
    weights = np.frombuffer(b"".join([data[len(data) // 3:] for data in stored]), dtype="<f8")
    if count and len(term_ids) == count * width:
        return (term_ids.astype(np.int32).reshape(count, width),
                weights.astype(np.float64).reshape(count, width))
    ids_out = np.zeros((count, width), dtype=np.int32)
    weights_out = np.zeros((count, width), dtype=np.float64)
    # Each row's values go after the row's start in the flat matrices, in order.
    ends = np.cumsum(lengths)
    flat = np.repeat(np.arange(count) * width - (ends - lengths), lengths) + np.arange(
        len(term_ids))
    ids_out.ravel()[flat] = term_ids
    weights_out.ravel()[flat] = weights
    return ids_out, weights_out


def _m005_article_fingerprints(db: sqlite_utils.Database) -> None:
    """Terms get integer ids; an article's fingerprint moves to a narrow table of its own.

    A restart reads the fingerprints of the window and nothing else: in ``articles`` they sat
    behind the text, in overflow pages.  Vectors are stored as packed term ids and weights,
    which a restart reads with one ``frombuffer`` instead of parsing JSON.
    """
    conn = db.conn
    conn.execute("""CREATE TABLE term_stats_new (
        id INTEGER PRIMARY KEY,
        term TEXT NOT NULL UNIQUE,
        document_frequency INTEGER NOT NULL,
        prior_fraction REAL NOT NULL
    )""")
    conn.execute("INSERT INTO term_stats_new (term, document_frequency, prior_fraction) "
                 "SELECT term, document_frequency, prior_fraction FROM term_stats ORDER BY term")
    conn.execute("DROP TABLE term_stats")
    conn.execute("ALTER TABLE term_stats_new RENAME TO term_stats")
    conn.execute("""CREATE TABLE article_fingerprints (
        article_id INTEGER PRIMARY KEY REFERENCES articles(id) ON DELETE CASCADE,
        source_id INTEGER NOT NULL,
        published TEXT NOT NULL,
        has_author INTEGER NOT NULL,
        dated INTEGER NOT NULL,
        word_count INTEGER NOT NULL,
        salient_terms TEXT NOT NULL,
        term_vector BLOB NOT NULL,
        shingle_signature BLOB NOT NULL,
        salient_signature BLOB NOT NULL
    )""")
    ids = dict(conn.execute("SELECT term, id FROM term_stats"))
    rows = conn.execute("SELECT id, source_id, published, author IS NOT NULL, "
                        "published_from_feed, word_count, vector, salient_terms, "
                        "shingle_signature, salient_signature FROM articles").fetchall()
    for (article_id, source_id, published, has_author, dated, words, text, salient, shingle,
         salient_signature) in rows:
        vector = json.loads(text)
        for term in vector:
            if term not in ids:  # counted out by a recluster: kept with no documents
                ids[term] = conn.execute(
                    "INSERT INTO term_stats (term, document_frequency, prior_fraction) "
                    "VALUES (?, 0, 1e-7)", [term]).lastrowid
        conn.execute("INSERT INTO article_fingerprints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [article_id, source_id, published, has_author, dated, words, salient,
                      pack_vector([ids[t] for t in vector], list(vector.values())),
                      shingle, salient_signature])
    for column in ("vector", "salient_terms", "shingle_signature", "salient_signature"):
        conn.execute(f"ALTER TABLE articles DROP COLUMN {column}")


def _m006_source_article_counts(db: sqlite_utils.Database) -> None:
    """``sources.article_count``, kept by triggers, so that ``source_health`` does not count
    a million articles each time a dashboard asks; an index for the start-up's window query."""
    _run_script(db, """
    ALTER TABLE sources ADD COLUMN article_count INTEGER NOT NULL DEFAULT 0;
    UPDATE sources SET article_count =
        (SELECT count(*) FROM articles a WHERE a.source_id = sources.id);
    CREATE TRIGGER articles_count_insert AFTER INSERT ON articles BEGIN
        UPDATE sources SET article_count = article_count + 1 WHERE id = new.source_id;
    END;
    CREATE TRIGGER articles_count_delete AFTER DELETE ON articles BEGIN
        UPDATE sources SET article_count = article_count - 1 WHERE id = old.source_id;
    END;
    CREATE INDEX stories_last_published ON stories(last_published);
    DROP VIEW source_health;
    CREATE VIEW source_health AS
    SELECT
        s.name,
        s.url,
        s.config_url,
        s.enabled,
        s.in_config,
        CASE
            WHEN s.disabled_reason IS NOT NULL THEN 'disabled'
            WHEN NOT s.enabled THEN 'disabled in config'
            WHEN s.last_checked_at IS NULL THEN 'never fetched'
            WHEN s.cooldown_until > strftime('%Y-%m-%dT%H:%M:%SZ', 'now') THEN 'cooldown'
            WHEN s.consecutive_errors > 0 THEN 'backoff'
            ELSE 'ok'
        END AS status,
        s.last_status,
        s.last_outcome,
        s.last_checked_at,
        s.last_success_at,
        s.consecutive_errors,
        s.last_error,
        s.next_check_at,
        s.cooldown_until,
        s.disabled_reason,
        s.article_count AS articles
    FROM sources s;
    """)


def _m007_no_content_hash_index(db: sqlite_utils.Database) -> None:
    """No query looks articles up by ``content_hash`` (a repeated text is found through its
    key in ``article_keys``), and keeping the index cost a tenth of each article's insert."""
    _run_script(db, "DROP INDEX IF EXISTS articles_content_hash;")


def _m008_search_rows_at_commit(db: sqlite_utils.Database) -> None:
    """New articles enter the full-text index at the end of the writer's transaction, all
    at once (``Store.transaction``), instead of through a trigger row by row: FTS5 writes
    its pending terms out at every statement of a trigger and at every savepoint, and a
    segment per article made the index cost 70 us of an article's insert instead of 25."""
    _run_script(db, "DROP TRIGGER IF EXISTS articles_fts_insert;")


def _m009_term_last_article(db: sqlite_utils.Database) -> None:
    """Each term keeps the id of the newest article counted with it, so that a restart reads
    the terms of the latest articles only, not every term the store has ever seen.  Terms
    counted before this are taken as seen in the newest stored article: the next restart
    reads them all, and later ones leave out those that no newer article used."""
    conn = db.conn
    conn.execute("ALTER TABLE term_stats ADD COLUMN last_article_id INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE term_stats SET last_article_id = "
                 "(SELECT coalesce(max(id), 0) FROM articles)")


def _m010_counted_terms(db: sqlite_utils.Database) -> None:
    """``articles.term_counts`` (JSON, term -> weighted count) becomes ``counted_terms``: the
    terms alone, separated by spaces.  What reads it (``recluster``, which counts an article
    out of the statistics, and ``aggregator check``) needs which terms an article counted,
    never how often; encoding the counts as JSON cost a worker about 7% of its time an
    article, and the JSON held twice the bytes, in every article row and in every article
    prepared ahead of the writer."""
    _run_script(db, """
    ALTER TABLE articles ADD COLUMN counted_terms TEXT NOT NULL DEFAULT '';
    UPDATE articles SET counted_terms =
        (SELECT coalesce(group_concat(key, ' '), '') FROM json_each(articles.term_counts))
        WHERE term_counts != '{}';
    ALTER TABLE articles DROP COLUMN term_counts;
    """)


def _m011_article_counts_by_writer(db: sqlite_utils.Database) -> None:
    """``sources.article_count`` is added to by the writer, one statement for each source's
    new articles, instead of by a trigger on each insert: a statement that fires a trigger
    may write several rows, so inside the writer's transaction SQLite first copied each page
    that the insert changed (the article's table and index pages, the source's row) into a
    statement journal, about 9 pages of 16 KB an article.  Deleting an article still counts
    it out by trigger (``articles_count_delete``)."""
    _run_script(db, "DROP TRIGGER IF EXISTS articles_count_insert;")


# The full-text index's merge settings (``_m012_search_merges``): FTS5 keeps them in the
# index's own config table, so they hold for every connection that writes to it.
SEARCH_AUTOMERGE = 16
SEARCH_HASH_BYTES = 4 * 1024 * 1024


def _m012_search_merges(db: sqlite_utils.Database) -> None:
    """The full-text index merges its segments 16 at a time instead of 4 (``automerge``) and
    gathers up to 4 MB of new terms before it writes a segment instead of 1 MB
    (``hashsize``).  Each article's terms were written into a small segment and then merged
    again and again as segments of four gathered on every level: the index cost a tenth of
    the writer's time an article (and each page a merge rewrites is written twice more, to
    the WAL at the commit and back at the checkpoint).  Searches find the same rows in the
    same order; the settings only change how the index lays them out."""
    for option, value in (("automerge", SEARCH_AUTOMERGE), ("hashsize", SEARCH_HASH_BYTES)):
        db.conn.execute("INSERT INTO articles_fts(articles_fts, rank) VALUES (?, ?)",
                        (option, value))


def _m013_retention(db: sqlite_utils.Database) -> None:
    """What the store needs to let old stories go (``retention``, ``Store.purge_stories``).

    ``retired_keys``: the identity keys of deleted articles, so that a feed which still
    lists an old entry does not bring it back as a new article.  ``article_keys`` gets an
    index by article, to find an article's keys when it is deleted (its ids only grow, so
    each insert lands at the end of the index).  ``term_stats.purged_frequency``: the
    statistics keep counting the articles they learned from after those are deleted, and
    say how many of each term's documents are gone, so that ``aggregator check`` can still
    recount them from the store.  ``meta`` keeps what was deleted by kind, so that the
    counters of ``/metrics`` never go down."""
    _run_script(db, """
    CREATE TABLE retired_keys (
        key TEXT PRIMARY KEY,
        retired_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX article_keys_article ON article_keys(article_id);
    ALTER TABLE term_stats ADD COLUMN purged_frequency INTEGER NOT NULL DEFAULT 0;
    """)


def _m014_stories_by_coverage(db: sqlite_utils.Database) -> None:
    """The newest stories that several sources report (``aggregator stories
    --min-sources``, the web's ``?min_sources=``), read one source count at a time
    (``readers.newest_story_ids``).  Through ``stories_last_seen`` alone, a threshold that
    few stories reach read every story: 177 ms at p95 on 1,000,000 articles."""
    db.conn.execute("CREATE INDEX stories_sources_last_seen ON stories(source_count, last_seen)")


def _m015_webhook_deliveries(db: sqlite_utils.Database) -> None:
    """What the daemon posted to each configured webhook (``notify``), by webhook name and
    story: a story is posted once, however many versions follow, across restarts."""
    _run_script(db, """
    CREATE TABLE webhook_deliveries (
        webhook TEXT NOT NULL,
        story_id INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        last_attempt_at TEXT NOT NULL,
        delivered_at TEXT,
        PRIMARY KEY (webhook, story_id)
    ) WITHOUT ROWID;
    """)


def _m016_reading_marks(db: sqlite_utils.Database) -> None:
    """What a reader has read and saved (``reading``, the Fever API), kept per article so
    that it follows the articles through ``aggregator recluster``: a story is read when one
    of its versions is, so a version that joins later does not bring it back unread.  The
    partial index finds the saved ones without reading every mark; ``story_marks`` gives
    each story's marks to dashboards."""
    _run_script(db, """
    CREATE TABLE article_marks (
        article_id INTEGER PRIMARY KEY REFERENCES articles(id) ON DELETE CASCADE,
        read_at TEXT,
        saved_at TEXT
    );
    CREATE INDEX article_marks_saved ON article_marks(article_id) WHERE saved_at IS NOT NULL;
    CREATE VIEW story_marks AS
    SELECT a.story_id, max(m.read_at) AS read_at, max(m.saved_at) AS saved_at
    FROM article_marks m JOIN articles a ON a.id = m.article_id
    GROUP BY a.story_id;
    """)


def _m017_story_corrections(db: sqlite_utils.Database) -> None:
    """A reader's corrections of the clustering (``corrections``): kept by article ids,
    which ``aggregator recluster`` keeps, so that it can make them again.  The partial index
    finds the ones not carried out yet, which the daemon looks for at every tick."""
    _run_script(db, """
    CREATE TABLE story_corrections (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('split', 'merge')),
        article_ids TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        applied_at TEXT,
        story_id INTEGER,
        error TEXT
    );
    CREATE INDEX story_corrections_pending ON story_corrections(id) WHERE applied_at IS NULL;
    """)


def _m018_source_icons(db: sqlite_utils.Database) -> None:
    """Each source's site icon for the reading apps (``icons``), and when its site was last
    asked for it: a site without one is asked again a week later, not at every fetch."""
    _run_script(db, """
    ALTER TABLE sources ADD COLUMN icon_checked_at TEXT;
    CREATE TABLE source_icons (
        source_id INTEGER PRIMARY KEY REFERENCES sources(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        media_type TEXT NOT NULL,
        data BLOB NOT NULL,
        fetched_at TEXT NOT NULL
    );
    """)


def _m019_scrape_counts(db: sqlite_utils.Database) -> None:
    """What ``/metrics`` and the dashboards count, without a scan of every article and story
    (0.77 s a scrape on 1,000,000 articles; 6.8-7.6 s for the canned query
    ``duplicate_share_by_source``): the duplicates and the other write-ups, by source, and
    the stories of three articles or more, by size.  The rest follows from the counts of all
    articles and all stories, which SQLite reads from its smallest index
    (``readers.store_counts``), and from ``sources.article_count``.  Partial, so that the
    writer keeps an entry for those rows alone."""
    _run_script(db, """
    CREATE INDEX articles_duplicates ON articles(source_id) WHERE relation = 'duplicate';
    CREATE INDEX articles_same_story ON articles(source_id) WHERE relation = 'same_story';
    CREATE INDEX stories_of_three_or_more ON stories(article_count) WHERE article_count > 2;
    """)


def _m020_fetch_counts(db: sqlite_utils.Database) -> None:
    """The fetch attempts ever recorded, by outcome (``aggregator_fetches_total``), kept by
    the writer as it records them: ``fetch_attempts`` grows by one row a fetch (a million in
    two months for 200 feeds polled every quarter of an hour), and counting it took a
    second a scrape.  Begun from the stored attempts and those retention deleted, whose
    totals ``meta`` kept until now."""
    _run_script(db, r"""
    CREATE TABLE fetch_counts (
        outcome TEXT PRIMARY KEY,
        attempts INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO fetch_counts (outcome, attempts)
    SELECT outcome, count(*) FROM fetch_attempts GROUP BY outcome;
    INSERT INTO fetch_counts (outcome, attempts)
    SELECT substr(key, length('purged_fetches:') + 1), CAST(value AS INTEGER) FROM meta
    WHERE key LIKE 'purged\_fetches:%' ESCAPE '\'
    ON CONFLICT (outcome) DO UPDATE SET attempts = attempts + excluded.attempts;
    DELETE FROM meta WHERE key LIKE 'purged\_fetches:%' ESCAPE '\';
    """)


def _m021_repeat_counts(db: sqlite_utils.Database) -> None:
    """Each source's duplicates and other write-ups, kept in ``sources`` beside its
    ``article_count``: the canned query ``duplicate_share_by_source`` counted them from two
    partial indexes, half a million entries on a store of 1,000,000 articles (36 ms at the
    median, 62 ms at p95).  The writer adds each source's new ones with its new articles
    (``COUNT_ARTICLES``); a relation that changes later (a new canonical, ``recluster``, a
    correction) or an article deleted is counted by trigger.  The index of other write-ups
    had no other reader."""
    _run_script(db, """
    ALTER TABLE sources ADD COLUMN duplicate_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sources ADD COLUMN same_story_count INTEGER NOT NULL DEFAULT 0;
    UPDATE sources SET
        duplicate_count = (SELECT count(*) FROM articles a
                           WHERE a.source_id = sources.id AND a.relation = 'duplicate'),
        same_story_count = (SELECT count(*) FROM articles a
                            WHERE a.source_id = sources.id AND a.relation = 'same_story');
    DROP INDEX articles_same_story;
    DROP TRIGGER articles_count_delete;
    CREATE TRIGGER articles_count_delete AFTER DELETE ON articles BEGIN
        UPDATE sources SET article_count = article_count - 1,
            duplicate_count = duplicate_count - (old.relation IS 'duplicate'),
            same_story_count = same_story_count - (old.relation IS 'same_story')
        WHERE id = old.source_id;
    END;
    CREATE TRIGGER articles_relation_count AFTER UPDATE OF relation ON articles
    WHEN old.relation IS NOT new.relation BEGIN
        UPDATE sources SET
            duplicate_count = duplicate_count + (new.relation IS 'duplicate')
                - (old.relation IS 'duplicate'),
            same_story_count = same_story_count + (new.relation IS 'same_story')
                - (old.relation IS 'same_story')
        WHERE id = new.source_id;
    END;
    """)


def _m022_saved_marks_with_their_time(db: sqlite_utils.Database) -> None:
    """The index of saved marks holds when each was saved: the canned query
    ``saved_stories`` orders the stories by it, and read it from the marks' table, a look-up
    a mark (13 ms of its 35-39 for 1,970 saved marks among 985,000 on a store of 1,000,000
    articles)."""
    _run_script(db, """
    DROP INDEX article_marks_saved;
    CREATE INDEX article_marks_saved ON article_marks(article_id, saved_at)
    WHERE saved_at IS NOT NULL;
    """)


# ``ingest_counts`` begun from the stored articles (an empty table), as a store filled past
# the writer must be too.
COUNT_DAYS_OF_ARTICLES = (
    "INSERT INTO ingest_counts (day, source_id, articles, canonical, duplicates, same_story) "
    "SELECT substr(fetched, 1, 10), source_id, count(*), sum(relation IS 'canonical'), "
    "sum(relation IS 'duplicate'), sum(relation IS 'same_story') FROM articles GROUP BY 1, 2")


# ``fetch_days`` begun from the stored attempts.
COUNT_FETCH_DAYS_OF_ATTEMPTS = (
    "INSERT INTO fetch_days (day, source_id, fetches, ok, not_modified, new_articles, "
    "duration_ms) SELECT substr(started_at, 1, 10), source_id, count(*), "
    "sum(outcome IS 'ok'), sum(outcome IS 'not_modified'), total(new_articles), "
    "sum(duration_ms) FROM fetch_attempts GROUP BY 1, 2")


def _m023_daily_counts(db: sqlite_utils.Database) -> None:
    """``daily_ingest`` and ``daily_fetches`` read counts kept by day and source
    (``ingest_counts``, ``fetch_days``) instead of grouping every article and every fetch
    attempt: 12.6 s on a store of 1,000,000 articles, 8.4 s with 1,344,000 attempts (200
    feeds every quarter of an hour for 70 days), past the time Datasette gives a query.
    Kept as ``sources``' counts are (``_m021_repeat_counts``): the writer adds its new rows
    (``COUNT_DAYS``, ``COUNT_FETCH_DAYS``), triggers a relation changed later and a row
    deleted.  A day whose rows are all deleted keeps its counts, at zero, which the views
    leave out, as they left the day out before."""
    _run_script(db, f"""
    CREATE TABLE ingest_counts (
        day TEXT NOT NULL,
        source_id INTEGER NOT NULL,
        articles INTEGER NOT NULL,
        canonical INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        same_story INTEGER NOT NULL,
        PRIMARY KEY (day, source_id)
    ) WITHOUT ROWID;
    {COUNT_DAYS_OF_ARTICLES};
    CREATE TRIGGER articles_day_count_delete AFTER DELETE ON articles BEGIN
        UPDATE ingest_counts SET articles = articles - 1,
            canonical = canonical - (old.relation IS 'canonical'),
            duplicates = duplicates - (old.relation IS 'duplicate'),
            same_story = same_story - (old.relation IS 'same_story')
        WHERE day = substr(old.fetched, 1, 10) AND source_id = old.source_id;
    END;
    CREATE TRIGGER articles_day_relation_count AFTER UPDATE OF relation ON articles
    WHEN old.relation IS NOT new.relation BEGIN
        UPDATE ingest_counts SET
            canonical = canonical + (new.relation IS 'canonical') - (old.relation IS 'canonical'),
            duplicates = duplicates + (new.relation IS 'duplicate')
                - (old.relation IS 'duplicate'),
            same_story = same_story + (new.relation IS 'same_story')
                - (old.relation IS 'same_story')
        WHERE day = substr(new.fetched, 1, 10) AND source_id = new.source_id;
    END;
    CREATE TABLE fetch_days (
        day TEXT NOT NULL,
        source_id INTEGER NOT NULL,
        fetches INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        not_modified INTEGER NOT NULL,
        new_articles INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        PRIMARY KEY (day, source_id)
    ) WITHOUT ROWID;
    {COUNT_FETCH_DAYS_OF_ATTEMPTS};
    CREATE TRIGGER fetch_attempts_count_delete AFTER DELETE ON fetch_attempts BEGIN
        UPDATE fetch_days SET fetches = fetches - 1, ok = ok - (old.outcome IS 'ok'),
            not_modified = not_modified - (old.outcome IS 'not_modified'),
            new_articles = new_articles - coalesce(old.new_articles, 0),
            duration_ms = duration_ms - old.duration_ms
        WHERE day = substr(old.started_at, 1, 10) AND source_id = old.source_id;
    END;
    DROP VIEW daily_fetches;
    CREATE VIEW daily_fetches AS
    SELECT d.day, s.name AS source, d.fetches, d.ok, d.not_modified,
        d.fetches - d.ok - d.not_modified AS failed, d.new_articles,
        round(1.0 * d.duration_ms / d.fetches) AS mean_duration_ms
    FROM fetch_days d JOIN sources s ON s.id = d.source_id
    WHERE d.fetches > 0
    ORDER BY d.day, s.name;
    DROP VIEW daily_ingest;
    CREATE VIEW daily_ingest AS
    SELECT d.day, s.name AS source, d.articles, d.canonical, d.duplicates, d.same_story
    FROM ingest_counts d JOIN sources s ON s.id = d.source_id
    WHERE d.articles > 0
    ORDER BY d.day, s.name;
    """)


# ``stories.read_versions`` begun from the stored marks (every story at 0).
COUNT_READ_VERSIONS_OF_MARKS = (
    "UPDATE stories SET read_versions = r.versions FROM (SELECT a.story_id, count(*) AS "
    "versions FROM article_marks m JOIN articles a ON a.id = m.article_id "
    "WHERE m.read_at IS NOT NULL AND a.story_id IS NOT NULL GROUP BY a.story_id) AS r "
    "WHERE stories.id = r.story_id")


def _m024_read_versions(db: sqlite_utils.Database) -> None:
    """Each story keeps how many of its versions are marked read (``read_versions``), and
    a partial index holds the stories with none, by their last update (the count beside it,
    else each entry's story row is read to test it): a reading app's
    unread list (Fever ``unread_item_ids``, Google Reader's unread stream and counts) looked
    for a read version of every story of its 30 days, 150-190 ms on a store of 1,000,000
    articles at every sync.  The marks stay per article (they follow the articles through
    ``recluster`` and corrections); triggers keep the count wherever a read mark or an
    article's story changes, and before an article is deleted (its mark goes by cascade,
    after the article, when the story is no longer known)."""
    _run_script(db, f"""
    ALTER TABLE stories ADD COLUMN read_versions INTEGER NOT NULL DEFAULT 0;
    {COUNT_READ_VERSIONS_OF_MARKS};
    CREATE INDEX stories_unread ON stories(last_seen, read_versions) WHERE read_versions = 0;
    CREATE TRIGGER article_marks_read_insert AFTER INSERT ON article_marks
    WHEN new.read_at IS NOT NULL BEGIN
        UPDATE stories SET read_versions = read_versions + 1
        WHERE id = (SELECT story_id FROM articles WHERE id = new.article_id);
    END;
    CREATE TRIGGER article_marks_read_update AFTER UPDATE OF read_at ON article_marks
    WHEN (old.read_at IS NULL) != (new.read_at IS NULL) BEGIN
        UPDATE stories SET read_versions = read_versions + (new.read_at IS NOT NULL)
            - (old.read_at IS NOT NULL)
        WHERE id = (SELECT story_id FROM articles WHERE id = new.article_id);
    END;
    CREATE TRIGGER article_marks_read_delete AFTER DELETE ON article_marks
    WHEN old.read_at IS NOT NULL BEGIN
        UPDATE stories SET read_versions = read_versions - 1
        WHERE id = (SELECT story_id FROM articles WHERE id = old.article_id);
    END;
    CREATE TRIGGER articles_read_delete BEFORE DELETE ON articles
    WHEN EXISTS (SELECT 1 FROM article_marks WHERE article_id = old.id
                 AND read_at IS NOT NULL) BEGIN
        UPDATE stories SET read_versions = read_versions - 1 WHERE id = old.story_id;
    END;
    CREATE TRIGGER articles_read_story AFTER UPDATE OF story_id ON articles
    WHEN old.story_id IS NOT new.story_id AND EXISTS (
        SELECT 1 FROM article_marks WHERE article_id = new.id AND read_at IS NOT NULL) BEGIN
        UPDATE stories SET read_versions = read_versions - 1 WHERE id = old.story_id;
        UPDATE stories SET read_versions = read_versions + 1 WHERE id = new.story_id;
    END;
    """)


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_source_lines", _m002_source_lines),
    ("003_dashboards", _m003_dashboards),
    ("004_redirect_sightings", _m004_redirect_sightings),
    ("005_article_fingerprints", _m005_article_fingerprints),
    ("006_source_article_counts", _m006_source_article_counts),
    ("007_no_content_hash_index", _m007_no_content_hash_index),
    ("008_search_rows_at_commit", _m008_search_rows_at_commit),
    ("009_term_last_article", _m009_term_last_article),
    ("010_counted_terms", _m010_counted_terms),
    ("011_article_counts_by_writer", _m011_article_counts_by_writer),
    ("012_search_merges", _m012_search_merges),
    ("013_retention", _m013_retention),
    ("014_stories_by_coverage", _m014_stories_by_coverage),
    ("015_webhook_deliveries", _m015_webhook_deliveries),
    ("016_reading_marks", _m016_reading_marks),
    ("017_story_corrections", _m017_story_corrections),
    ("018_source_icons", _m018_source_icons),
    ("019_scrape_counts", _m019_scrape_counts),
    ("020_fetch_counts", _m020_fetch_counts),
    ("021_repeat_counts", _m021_repeat_counts),
    ("022_saved_marks_with_their_time", _m022_saved_marks_with_their_time),
    ("023_daily_counts", _m023_daily_counts),
    ("024_read_versions", _m024_read_versions),
]


@dataclass(frozen=True)
class SourceRow:
    id: int
    name: str
    url: str
    config_url: str
    priority: int
    enabled: bool
    etag: str | None
    last_modified: str | None
    consecutive_errors: int
    next_check_at: datetime | None
    cooldown_until: datetime | None
    disabled_reason: str | None
    redirect_target: str | None = None
    redirect_sightings: int = 0
    icon_checked_at: datetime | None = None
    has_icon: bool = False
    last_checked_at: datetime | None = None


@dataclass
class WindowRows:
    """The stored articles of the live window, column by column, oldest first, with what
    the clusterer needs to put them back in its index."""

    ids: list[int] = field(default_factory=list)
    source_ids: list[int] = field(default_factory=list)
    published_ts: list[float] = field(default_factory=list)
    has_author: list[bool] = field(default_factory=list)
    word_counts: list[int] = field(default_factory=list)
    story_ids: list[int] = field(default_factory=list)
    canonical_ids: list[int] = field(default_factory=list)
    dated: list[bool] = field(default_factory=list)
    shingle_signatures: list[bytes] = field(default_factory=list)
    salient_signatures: list[bytes] = field(default_factory=list)
    term_vectors: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class ReplayArticle:
    """A stored article to be clustered again."""

    id: int
    source_id: int
    priority: int
    article: NormalizedArticle


# Present in ``meta`` once an article has been stored while clustering was off.
UNCLUSTERED_MARK = "articles_without_fingerprints"
# In ``meta``: the cutoff that the window's article limit (``window_articles``) last set.
WINDOW_FLOOR = "window_floor"
# The columns of ``term_stats`` that a restart and a recall read, as ``fingerprint.TermRow``.
TERM_ROW = "id, term, document_frequency, prior_fraction, last_article_id"
# ``json.dumps`` as it writes by default, byte for byte, for the rows staged with every
# article (its decision, its salient terms): those hold no container twice, so the check
# for cycles (a tenth of the time of a decision) finds none.
to_json = json.JSONEncoder(check_circular=False).encode


def writer_connection(path: str) -> sqlite3.Connection:
    """A connection that writes, set up as every writer of the store needs."""
    try:
        # isolation_level=None: no implicit transactions; every write goes through a
        # transaction of the code's own, so each one's extent is visible in the code.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Before WAL mode is set: only an empty database takes it, and in WAL mode not even
        # that one.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # After a long reader lets go, the WAL is cut back to this size at a checkpoint.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {exc}") from None
    return conn


# The stories that retention may delete (``Store.expired_stories``): ``?1`` the time before
# which their members were last fetched, ``?2`` before which the newest was published.
# Never the story of the newest article id nor the newest story id: ids come from the
# largest stored (``next_article_id``), and an id given twice would make older records
# (decisions, term statistics) name the wrong row.  Never a story a reader saved.
EXPIRED = ("last_seen < ?1 AND last_published < ?2 "
           "AND id != (SELECT coalesce(max(id), 0) FROM stories) "
           "AND id IS NOT (SELECT story_id FROM articles ORDER BY id DESC LIMIT 1) "
           "AND NOT EXISTS (SELECT 1 FROM articles a JOIN article_marks m "
           "ON m.article_id = a.id WHERE a.story_id = stories.id "
           "AND m.saved_at IS NOT NULL)")

@lru_cache(maxsize=256)
def _one_row(statement: str) -> str:
    """``statement`` for one row of parameters, column ``cN`` the parameter ``?N+1``:
    ``INSERT ... SELECT ... FROM {rows}`` as ``INSERT ... VALUES (...)``, ``UPDATE ... FROM
    {rows} AS u WHERE ...`` as an ``UPDATE ... WHERE`` on the row's key.

    A statement that may write several rows and fail part way (an ``INSERT ... SELECT``, an
    ``UPDATE ... FROM``, where a constraint or a foreign key can stop it) makes SQLite copy
    each page it changes into a statement journal first, inside a transaction; one row of
    ``VALUES``, or an update of one row by its key, needs none.  Stepped once a row
    (``executemany``), the statements of the other form journalled 21 pages of 16 KB an
    article on a full window: four fifths of the writer's ``pwrite`` calls.
    """
    def parameter(match: re.Match) -> str:
        return f"?{int(match[1]) + 1}"

    if " FROM {rows} AS u " in statement:
        return re.sub(r"\bu\.c(\d+)\b", parameter,
                      statement.replace(" FROM {rows} AS u ", " "))
    selected = re.fullmatch(r"(.*?) SELECT (.*?) FROM \{rows\}(?: WHERE true)?(.*)", statement,
                            re.DOTALL)
    if selected is None:
        raise ValueError(f"no one-row form for {statement!r}")
    head, columns, tail = selected.groups()
    values = re.sub(r"\bc(\d+)\b", parameter, columns)
    return f"{head} VALUES ({values}){tail}"


def _columns(width: int, start: int = 0) -> str:
    return ", ".join(f"c{i}" for i in range(start, width))


def write_rows(conn: sqlite3.Connection, statement: str, rows: Sequence[Sequence]) -> None:
    """``statement`` (its ``{rows}`` a row source) over ``rows``, a step a row, in its
    one-row form (``_one_row``)."""
    conn.executemany(_one_row(statement), rows)


# A story's title is its canonical's: given where the canonical is staged with it, else
# read from the stored article (``recluster`` places stored articles).
_CANONICAL_TITLE = "coalesce({title}, (SELECT title FROM articles WHERE id = {canonical}))"
# A new story is written once, with what its articles staged since it was created: an update
# of each row just inserted cost as much again (an index entry moved, a title read back).
INSERT_STORIES = (
    "INSERT INTO stories (id, canonical_article_id, title, first_seen, last_seen, "
    "first_published, last_published, article_count, source_count) SELECT c0, c1, "
    + _CANONICAL_TITLE.format(title="c2", canonical="c1")
    + f", {_columns(9, 3)} FROM {{rows}}")
ARTICLE_COLUMNS = ("id, source_id, guid, url, canonical_url, identity_key, title, author, "
                   "published, published_from_feed, fetched, text, content_hash, word_count, "
                   "story_id, relation, similarity, decision, counted_terms")
INSERT_ARTICLES = f"INSERT INTO articles ({ARTICLE_COLUMNS}) SELECT {_columns(19)} FROM {{rows}}"
UPDATE_ARTICLES = ("UPDATE articles SET story_id = u.c1, relation = u.c2, similarity = u.c3, "
                   "word_count = u.c4, decision = u.c5, counted_terms = u.c6 "
                   "FROM {rows} AS u WHERE articles.id = u.c0")
# A source's new articles, of which duplicates and other write-ups: (source id, articles,
# duplicates, other write-ups), from ``source_counts``.
COUNT_ARTICLES = ("UPDATE sources SET article_count = article_count + u.c1, "
                  "duplicate_count = duplicate_count + u.c2, "
                  "same_story_count = same_story_count + u.c3 "
                  "FROM {rows} AS u WHERE sources.id = u.c0")


def source_counts(articles: Iterable[tuple[int, str]]) -> list[list[int]]:
    """``COUNT_ARTICLES``' rows for new articles given as (source id, relation)."""
    counts: dict[int, list[int]] = {}
    for source_id, relation in articles:
        row = counts.get(source_id)
        if row is None:
            row = counts[source_id] = [source_id, 0, 0, 0]
        row[1] += 1
        if relation == "duplicate":
            row[2] += 1
        elif relation == "same_story":
            row[3] += 1
    return list(counts.values())


# New articles by UTC day of their fetch and source: (day, source id, articles, canonical,
# duplicates, other write-ups), from ``day_counts``.
COUNT_DAYS = ("INSERT INTO ingest_counts (day, source_id, articles, canonical, duplicates, "
              f"same_story) SELECT {_columns(6)} FROM {{rows}} WHERE true "
              "ON CONFLICT (day, source_id) DO UPDATE SET "
              "articles = articles + excluded.articles, "
              "canonical = canonical + excluded.canonical, "
              "duplicates = duplicates + excluded.duplicates, "
              "same_story = same_story + excluded.same_story")
# Fetch attempts by UTC day of their start and source: (day, source id, attempts, ok, not
# modified, new articles, milliseconds), from ``fetch_day_counts``.
COUNT_FETCH_DAYS = (
    "INSERT INTO fetch_days (day, source_id, fetches, ok, not_modified, new_articles, "
    f"duration_ms) SELECT {_columns(7)} FROM {{rows}} WHERE true "
    "ON CONFLICT (day, source_id) DO UPDATE SET fetches = fetches + excluded.fetches, "
    "ok = ok + excluded.ok, not_modified = not_modified + excluded.not_modified, "
    "new_articles = new_articles + excluded.new_articles, "
    "duration_ms = duration_ms + excluded.duration_ms")


# Where ``day_counts`` counts an article of each relation in its rows.
_RELATION_COLUMN = {"canonical": 3, "duplicate": 4, "same_story": 5}


def day_counts(articles: Iterable[tuple[str, int, str]]) -> list[list]:
    """``COUNT_DAYS``' rows for new articles given as (fetch time, source id, relation)."""
    counts: dict[tuple[str, int], list] = {}
    for fetched, source_id, relation in articles:
        key = (fetched[:10], source_id)
        row = counts.get(key)
        if row is None:
            row = counts[key] = [key[0], source_id, 0, 0, 0, 0]
        row[2] += 1
        column = _RELATION_COLUMN.get(relation)
        if column is not None:
            row[column] += 1
    return list(counts.values())


def fetch_day_counts(attempts: Iterable[Sequence]) -> list[list]:
    """``COUNT_FETCH_DAYS``' rows for fetch attempts given as ``INSERT_FETCHES``' rows."""
    counts: dict[tuple[str, int], list] = {}
    for source_id, started, duration_ms, _url, _status, outcome, *_rest, new_articles \
            in attempts:
        key = (started[:10], source_id)
        row = counts.get(key)
        if row is None:
            row = counts[key] = [key[0], source_id, 0, 0, 0, 0, 0]
        row[2] += 1
        row[3] += outcome == "ok"
        row[4] += outcome == "not_modified"
        row[5] += new_articles or 0
        row[6] += duration_ms
    return list(counts.values())


INSERT_KEYS = "INSERT OR IGNORE INTO article_keys (key, article_id) SELECT c0, c1 FROM {rows}"
UPDATE_RELATIONS = ("UPDATE articles SET relation = u.c1, similarity = u.c2 "
                    "FROM {rows} AS u WHERE articles.id = u.c0")
UPSERT_ICON = ("INSERT INTO source_icons (source_id, url, media_type, data, fetched_at) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source_id) DO UPDATE SET url = excluded.url, "
               "media_type = excluded.media_type, data = excluded.data, "
               "fetched_at = excluded.fetched_at")
INSERT_HISTORY = ("INSERT INTO canonical_history (story_id, article_id, previous_article_id, "
                  f"reason, changed_at) SELECT {_columns(5)} FROM {{rows}}")
# The title is read again only when the canonical changed: no article's title changes.
UPDATE_STORIES = (
    "UPDATE stories SET canonical_article_id = u.c1, title = CASE WHEN canonical_article_id "
    "IS u.c1 THEN title ELSE " + _CANONICAL_TITLE.format(title="u.c7", canonical="u.c1")
    + " END, last_seen = u.c2, first_published = u.c3, last_published = u.c4, "
    "article_count = u.c5, source_count = u.c6 FROM {rows} AS u WHERE stories.id = u.c0")
COUNT_LINES = ("INSERT INTO source_lines (source_id, line_key, articles, last_seen) "
               f"SELECT {_columns(4)} FROM {{rows}} WHERE true "
               "ON CONFLICT(source_id, line_key) DO UPDATE SET "
               "articles = articles + excluded.articles, last_seen = excluded.last_seen")
INSERT_FETCHES = ("INSERT INTO fetch_attempts (source_id, started_at, duration_ms, url, status, "
                  f"outcome, error, bytes, entries, new_articles) SELECT {_columns(10)} "
                  "FROM {rows}")
COUNT_FETCHES = ("INSERT INTO fetch_counts (outcome, attempts) SELECT c0, c1 FROM {rows} "
                 "WHERE true ON CONFLICT (outcome) DO UPDATE SET "
                 "attempts = attempts + excluded.attempts")
COUNT_TERMS = ("INSERT INTO term_stats (id, term, document_frequency, prior_fraction, "
               f"last_article_id) SELECT {_columns(5)} FROM {{rows}} WHERE true "
               "ON CONFLICT(term) DO UPDATE SET "
               "document_frequency = document_frequency + excluded.document_frequency, "
               "last_article_id = max(last_article_id, excluded.last_article_id)")
# Term statistics' rows made into Python objects, and written, at a time.
TERM_ROWS_CHUNK = 4096
FINGERPRINT_COLUMNS = ("source_id", "published", "has_author", "dated", "word_count",
                       "salient_terms", "term_vector", "shingle_signature", "salient_signature")
# An upsert, not OR REPLACE: a replace may delete a row first, which makes SQLite journal
# every page the statement changes (see ``_one_row``).
INSERT_FINGERPRINT_ROW = (
    f"INSERT INTO article_fingerprints (article_id, {', '.join(FINGERPRINT_COLUMNS)}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(article_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in FINGERPRINT_COLUMNS))


@dataclass
class TermCounts:
    """Articles added to the term statistics: how many (``documents``), and for each term
    counted its id in the store, its name, how many of the articles have it, its prior and
    the newest article with it.  Arrays, not rows of Python objects: a write group counts
    ten thousand terms, and rows of them all at once took several megabytes, which the heap
    kept after they were freed."""

    documents: int
    ids: np.ndarray
    terms: list[str]
    articles: np.ndarray
    priors: np.ndarray
    last_articles: np.ndarray

    def rows(self, start: int, stop: int) -> list[tuple[int, str, int, float, int]]:
        """Rows ``(id, term, articles, prior, newest article)`` from ``start`` to ``stop``."""
        return list(zip(self.ids[start:stop].tolist(), self.terms[start:stop],
                        self.articles[start:stop].tolist(), self.priors[start:stop].tolist(),
                        self.last_articles[start:stop].tolist(), strict=True))

    def chunks(self, size: int = TERM_ROWS_CHUNK
               ) -> Iterator[list[tuple[int, str, int, float, int]]]:
        for start in range(0, len(self.terms), size):
            yield self.rows(start, start + size)


class StagedWrites:
    """What the writer decided for some sources' articles, not yet in the database.

    The writer stages each article's rows here instead of writing them a statement at a
    time; ``write`` then writes them table by table, a statement each: in the writer's own
    transaction, or in the write-behind process (``WriteBehind``), which writes a write
    group while the writer decides the next one.  The rows are those
    that a statement per row would write: ids are given as SQLite gives them (one more than
    the largest), and a row updated several times ends with the values of its last update.

    Reads go through ``StagedReads``, which adds to what the database holds what is staged
    here (identity keys, template-line counts, signatures, term counts, entries).
    """

    def __init__(self) -> None:
        self.stories: list[list] = []
        self.articles: list[list] = []
        self.article_updates: list[list] = []
        self.fingerprints: list[list] = []
        self.fingerprint_blobs: list[tuple[bytes, bytes, bytes]] = []
        self.keys: list[tuple[str, int]] = []
        self.key_set: set[str] = set()
        self.signatures: dict[int, bytes] = {}
        self.relations: dict[int, tuple[str, float]] = {}
        self.history: list[list] = []
        self.story_updates: dict[int, list] = {}
        self.lines: dict[tuple[int, str], list] = {}
        self.window_floor: datetime | None = None
        self.fetches: list[list] = []
        self.source_states: list[tuple[int, dict[str, object]]] = []
        self.icons: list[list] = []
        self.term_counts: list[TermCounts] = []
        self._terms_by_name: dict[str, int] | None = None
        self._terms_by_id: dict[int, int] | None = None
        # What reads need of the new articles once their rows are let go: (source id,
        # published) each, and the smallest id, the first staged (they are numbered on from
        # the largest stored: once a snapshot of the database holds it, it holds them all).
        self.entries: list[tuple[int, str]] = []
        self.first_article_id: int | None = None

    def clear(self) -> None:
        """Forget what is staged (once written)."""
        self.__init__()  # type: ignore[misc]

    # What only the writer's reads look up, never ``write``.
    _FOR_READS_ONLY = frozenset({"key_set", "signatures", "entries", "first_article_id",
                                 "_terms_by_name", "_terms_by_id"})

    def rows_to_write(self) -> StagedWrites:
        """Everything staged but what only reads need: handed to the write-behind process
        (whatever is staged later for ``write`` goes with it)."""
        rows = StagedWrites()
        rows.__dict__.update((name, value) for name, value in vars(self).items()
                             if name not in self._FOR_READS_ONLY)
        return rows

    def let_rows_go(self) -> None:
        """Drop the rows once written, keeping what reads look up until the transaction is
        known to have committed (the writer's next group is decided meanwhile)."""
        self.stories, self.articles, self.article_updates = [], [], []
        self.fingerprints, self.fingerprint_blobs, self.keys = [], [], []
        self.relations, self.history, self.story_updates = {}, [], {}
        self.fetches, self.source_states, self.icons = [], [], []

    # -- staging ------------------------------------------------------------------------------

    def create_story(self, story_id: int, published: datetime, seen: datetime) -> None:
        self.stories.append([story_id, to_iso(seen), to_iso(seen), to_iso(published),
                             to_iso(published)])

    def insert_article(self, *, article_id: int, source_id: int, article, story_id: int,
                       relation: str, similarity: float, fingerprint, term_vector: bytes,
                       shingle_bytes: bytes, salient_bytes: bytes, decision: dict) -> None:
        """A new article, placed in its story, with its fingerprint and identity keys."""
        self.articles.append([
            article_id, source_id, article.guid, article.url, article.canonical_url,
            article.identity_key, article.title, article.author, to_iso(article.published),
            int(article.has_published), to_iso(article.fetched), article.text,
            article.content_hash, fingerprint.word_count, story_id, relation, similarity,
            to_json(decision), fingerprint.counted_terms])
        self.entries.append((source_id, self.articles[-1][8]))
        if self.first_article_id is None:
            self.first_article_id = article_id
        self._stage_fingerprint(article_id, source_id, article, fingerprint, term_vector,
                                shingle_bytes, salient_bytes)
        for key in article.identity_keys:
            self.keys.append((key, article_id))
            self.key_set.add(key)

    def update_article(self, *, article_id: int, source_id: int, article, story_id: int,
                       relation: str, similarity: float, fingerprint, term_vector: bytes,
                       shingle_bytes: bytes, salient_bytes: bytes, decision: dict) -> None:
        """A stored article in its new story, with its new fingerprint and decision (or its
        first: ``recluster``)."""
        self.article_updates.append([article_id, story_id, relation, similarity,
                                     fingerprint.word_count, to_json(decision),
                                     fingerprint.counted_terms])
        self._stage_fingerprint(article_id, source_id, article, fingerprint, term_vector,
                                shingle_bytes, salient_bytes)

    def _stage_fingerprint(self, article_id: int, source_id: int, article, fingerprint,
                           term_vector: bytes, shingle_bytes: bytes,
                           salient_bytes: bytes) -> None:
        self.fingerprints.append([article_id, source_id, to_iso(article.published),
                                  int(article.author is not None), int(article.has_published),
                                  fingerprint.word_count,
                                  to_json(list(fingerprint.salient))])
        self.fingerprint_blobs.append((term_vector, shingle_bytes, salient_bytes))
        self.signatures[article_id] = shingle_bytes

    def apply_story_outcome(self, article_id: int, outcome, seen: datetime) -> None:
        """The clusterer's outcome for the story's other members (their relations, when the
        canonical changed), its canonical's history and the story's row.  The article's own
        row was staged with its story and relation."""
        for member, relation in outcome.member_relations.items():
            if member != article_id:
                self.relations[member] = relation
        if outcome.canonical_reason is not None:
            self.history.append([outcome.story_id, outcome.canonical_id,
                                 outcome.previous_canonical_id, outcome.canonical_reason,
                                 to_iso(seen)])
        self.story_updates[outcome.story_id] = [
            outcome.story_id, outcome.canonical_id, to_iso(seen),
            to_iso(datetime.fromtimestamp(outcome.first_ts, UTC)),
            to_iso(datetime.fromtimestamp(outcome.last_ts, UTC)), outcome.article_count,
            outcome.source_count]

    def count_lines(self, source_id: int, articles_per_key: Mapping[str, int],
                    seen: datetime) -> None:
        """New articles' lines: ``articles_per_key`` says in how many each line is."""
        seen_iso = to_iso(seen)
        for key, count in articles_per_key.items():
            counted = self.lines.get((source_id, key))
            if counted is None:
                self.lines[(source_id, key)] = [count, seen_iso]
            else:
                counted[0] += count
                counted[1] = seen_iso

    def raise_window_floor(self, floor: datetime) -> None:
        self.window_floor = floor

    def record_fetch(self, source_id: int, *, started: datetime, duration_ms: int, url: str,
                     status: int | None, outcome: str, error: str | None, size: int | None,
                     entries: int | None, new_articles: int | None,
                     state: dict[str, object]) -> None:
        """One fetch attempt, and the source's fetch state (``state`` columns)."""
        self.fetches.append([source_id, to_iso(started), duration_ms, url, status, outcome,
                             error, size, entries, new_articles])
        if state:
            self.source_states.append((source_id, {
                key: to_iso(value) if isinstance(value, datetime) else value
                for key, value in state.items()}))

    def store_icon(self, source_id: int, url: str, media_type: str, data: bytes,
                   fetched: datetime) -> None:
        """A source's site icon, in place of the one it had."""
        self.icons.append([source_id, url, media_type, data, to_iso(fetched)])

    def count_terms(self, counts: TermCounts) -> None:
        """Articles added to the term statistics."""
        self.term_counts.append(counts)
        self._terms_by_name = self._terms_by_id = None

    # What a source that answered 304, or brought nothing new, stages.
    _FETCH_ROWS = frozenset({"fetches", "source_states", "icons"})

    def holds_fetches_only(self) -> bool:
        """Whether it holds nothing but fetch attempts, sources' fetch states and icons (a
        field staged later counts as more, whatever it is)."""
        return not any(value for name, value in vars(self).items()
                       if name not in self._FETCH_ROWS and name not in self._FOR_READS_ONLY)

    def absorb(self, other: StagedWrites) -> None:
        """Stage what ``other`` staged, after what this one did."""
        self.stories += other.stories
        self.articles += other.articles
        self.entries += other.entries
        if self.first_article_id is None:
            self.first_article_id = other.first_article_id
        self.article_updates += other.article_updates
        self.fingerprints += other.fingerprints
        self.fingerprint_blobs += other.fingerprint_blobs
        self.keys += other.keys
        self.key_set |= other.key_set
        self.signatures.update(other.signatures)
        self.relations.update(other.relations)
        self.history += other.history
        self.story_updates.update(other.story_updates)
        for line, (count, seen) in other.lines.items():
            counted = self.lines.get(line)
            if counted is None:
                self.lines[line] = [count, seen]
            else:
                counted[0] += count
                counted[1] = seen
        self.window_floor = other.window_floor or self.window_floor
        self.fetches += other.fetches
        self.source_states += other.source_states
        self.icons += other.icons
        for counts in other.term_counts:
            self.count_terms(counts)

    # -- what reads add -----------------------------------------------------------------------

    def term_row(self, term: str | None = None,
                 stored_id: int | None = None) -> tuple[int, str, int, float, int] | None:
        """The staged counts of a term, by name or by stored id, as ``COUNT_TERMS`` adds
        them (a group counts each term once; of counts absorbed, the last)."""
        # Positions, not rows: a group counts tens of thousands of terms, and a read asks
        # for a few of them while the group is written behind.
        if term is not None:
            if self._terms_by_name is None:
                names = [name for counts in self.term_counts for name in counts.terms]
                self._terms_by_name = dict(zip(names, range(len(names)), strict=True))
            position = self._terms_by_name.get(term)
        else:
            if self._terms_by_id is None:
                ids = [stored for counts in self.term_counts for stored in counts.ids.tolist()]
                self._terms_by_id = dict(zip(ids, range(len(ids)), strict=True))
            position = self._terms_by_id.get(stored_id)
        if position is None:
            return None
        for counts in self.term_counts:
            if position < len(counts.terms):
                return counts.rows(position, position + 1)[0]
            position -= len(counts.terms)
        raise AssertionError("a term position past the counts")

    def entries_since(self, source_id: int, since_iso: str) -> int:
        return sum(1 for source, published in self.entries
                   if source == source_id and published >= since_iso)

    # -- writing ------------------------------------------------------------------------------

    def write(self, conn: sqlite3.Connection,
              search_rows: list[tuple[int, str, str]] | None = None) -> None:
        """Write everything staged, through ``conn``, in an open transaction: a statement a
        table, stepped once a row.

        ``search_rows``: where the new articles' full-text rows go, for the transaction's
        commit to index (``Store.transaction``); without it they are indexed here.
        """
        write = partial(write_rows, conn)
        new_stories, story_updates = self._story_rows()
        write(INSERT_STORIES, new_stories)
        write(INSERT_ARTICLES, self.articles)
        write(COUNT_ARTICLES, source_counts((row[1], row[15]) for row in self.articles))
        write(COUNT_DAYS, day_counts((row[10], row[1], row[15]) for row in self.articles))
        write(UPDATE_ARTICLES, self.article_updates)
        conn.executemany(INSERT_FINGERPRINT_ROW, [
            [*row, *blobs] for row, blobs in zip(self.fingerprints, self.fingerprint_blobs,
                                                 strict=True)])
        write(INSERT_KEYS, self.keys)
        write(UPDATE_RELATIONS, [[member, relation, similarity] for member,
                                 (relation, similarity) in self.relations.items()])
        write(INSERT_HISTORY, self.history)
        write(UPDATE_STORIES, story_updates)
        write(COUNT_LINES, [[source_id, key, count, seen] for (source_id, key), (count, seen)
                            in self.lines.items()])
        if self.window_floor is not None:
            Store.raise_window_floor(conn, self.window_floor)
        write(INSERT_FETCHES, self.fetches)
        write(COUNT_FETCHES, list(Counter(row[5] for row in self.fetches).items()))
        write(COUNT_FETCH_DAYS, fetch_day_counts(self.fetches))
        self._write_source_states(write)
        conn.executemany(UPSERT_ICON, self.icons)
        for counts in self.term_counts:
            for rows in counts.chunks():
                write(COUNT_TERMS, rows)
            Store.count_documents(conn, counts.documents)
        if not self.articles:
            return
        if search_rows is not None:
            search_rows.extend((row[0], row[6], row[11]) for row in self.articles)
        else:
            # Every article between the first and the last is one of these: their ids
            # follow the largest stored before them.
            conn.execute("INSERT INTO articles_fts (rowid, title, text) SELECT id, title, "
                         "text FROM articles WHERE id BETWEEN ? AND ?",
                         [self.articles[0][0], self.articles[-1][0]])

    def _story_rows(self) -> tuple[list[list], list[list]]:
        """Rows for ``INSERT_STORIES`` (the stories created here, each with its last update)
        and for ``UPDATE_STORIES`` (the stories stored before), with the canonical's title
        where its article is staged here (else None: the statements read it)."""
        titles = {row[0]: row[6] for row in self.articles}
        created = set()
        new_stories = []
        for story_id, first_seen, last_seen, first_published, last_published in self.stories:
            created.add(story_id)
            update = self.story_updates.get(story_id)
            if update is None:
                new_stories.append([story_id, None, "", first_seen, last_seen,
                                    first_published, last_published, 0, 0])
            else:
                _id, canonical, last_seen, first_published, last_published, articles, \
                    sources = update
                new_stories.append([story_id, canonical, titles.get(canonical), first_seen,
                                    last_seen, first_published, last_published, articles,
                                    sources])
        story_updates = [[*update, titles.get(update[1])]
                         for story_id, update in self.story_updates.items()
                         if story_id not in created]
        return new_stories, story_updates

    def _write_source_states(self, write: Callable[..., None]) -> None:
        """The sources' new fetch states, in order; the states with the same columns in a
        row written by one statement (``write``: ``write_rows`` with its connection)."""
        start = 0
        while start < len(self.source_states):
            columns = tuple(self.source_states[start][1])
            end = start + 1
            while end < len(self.source_states) and \
                    tuple(self.source_states[end][1]) == columns:
                end += 1
            assignments = ", ".join(f"{column} = u.c{i + 1}"
                                    for i, column in enumerate(columns))
            write(f"UPDATE sources SET {assignments} FROM {{rows}} AS u "
                  "WHERE sources.id = u.c0",
                  [[source_id, *state.values()]
                   for source_id, state in self.source_states[start:end]])
            start = end


class StagedReads:
    """The store as the writer must see it: what the database holds, and what the writer
    staged that it does not hold yet.

    ``current``: staged and not written.  ``pending``: handed to ``WriteBehind`` and perhaps
    committed already; a read that counts (template lines, term counts, entries) takes the
    database and the pending groups from one snapshot, in which the newest article id tells
    which of them it holds.  Ids of new articles and stories are given here, on from the
    largest stored, since the rows staged before are not in the database.
    """

    def __init__(self, store: Store):
        self.store = store
        self.pending: list[StagedWrites] = []
        self.current: list[StagedWrites] = []
        self._next_article: int | None = None
        self._next_story: int | None = None

    def reset_ids(self) -> None:
        """New ids follow the largest stored again (the database holds all staged rows)."""
        if self.pending:
            raise RuntimeError("ids asked of the database with staged groups unwritten")
        self._next_article = self._next_story = None

    def new_article_id(self) -> int:
        if self._next_article is None:
            self._next_article = Store.next_article_id(self.store.db.conn)
        self._next_article += 1
        return self._next_article - 1

    def new_story_id(self) -> int:
        if self._next_story is None:
            self._next_story = Store.next_story_id(self.store.db.conn)
        self._next_story += 1
        return self._next_story - 1

    def _staged(self) -> list[StagedWrites]:
        return self.pending + self.current

    def _snapshot(self, read: Callable[[sqlite3.Connection], object]
                  ) -> tuple[object, list[StagedWrites]]:
        """``read(conn)``, and the staged writes that the database it read does not hold."""
        conn = self.store.db.conn
        if not self.pending:
            return read(conn), self.current
        conn.execute("BEGIN")
        try:
            newest = conn.execute("SELECT coalesce(max(id), 0) FROM articles").fetchone()[0]
            found = read(conn)
        finally:
            conn.execute("COMMIT")
        return found, [group for group in self.pending
                       if group.first_article_id is not None
                       and group.first_article_id > newest] + self.current

    def known_keys(self, keys: list[str]) -> set[str]:
        found = Store.known_keys(self.store.db.conn, keys)
        for staged in self._staged():
            found.update(key for key in keys if key in staged.key_set)
        return found

    def line_counts(self, source_id: int, keys: Iterable[str]) -> dict[str, int]:
        """How many articles of the source contain each line key."""
        keys = list(keys)
        stored, unwritten = self._snapshot(lambda conn: dict(select_in(
            conn, "SELECT line_key, articles FROM source_lines WHERE source_id = ? "
            "AND line_key IN ({})", keys, [source_id])))
        counts: dict[str, int] = stored  # type: ignore[assignment]
        for staged in unwritten:
            for key in keys:
                line = staged.lines.get((source_id, key))
                if line is not None:
                    counts[key] = counts.get(key, 0) + line[0]
        return counts

    def entries_since(self, source_id: int, since: datetime) -> int:
        """Articles of the source published since ``since`` (for adaptive polling)."""
        since_iso = to_iso(since)
        stored, unwritten = self._snapshot(lambda conn: conn.execute(
            "SELECT count(*) FROM articles WHERE source_id = ? AND published >= ?",
            [source_id, since_iso]).fetchone()[0])
        return stored + sum(staged.entries_since(source_id, since_iso)  # type: ignore
                            for staged in unwritten)

    def shingle_signatures(self, article_ids: list[int]) -> list[bytes]:
        """Shingle signatures of the articles, in the order given."""
        found: dict[int, bytes] = {}
        for staged in self._staged():
            found.update((i, staged.signatures[i]) for i in article_ids
                         if i in staged.signatures)
        missing = [i for i in article_ids if i not in found]
        if missing:
            found.update(zip(missing, self.store.shingle_signatures(missing), strict=True))
        return [found[i] for i in article_ids]

    def recall_terms(self, terms: list[str]) -> list[tuple[int, str, int, float, int]]:
        """The stored rows of those of ``terms`` that the store has, with the counts of the
        groups not yet written added (see ``Store.recall_terms``)."""
        return self._recall(terms, self.store.recall_terms, 1,
                            lambda staged, term: staged.term_row(term=term))

    def recall_term_ids(self, term_ids: list[int]) -> list[tuple[int, str, int, float, int]]:
        """The same as ``recall_terms``, by id."""
        return self._recall(term_ids, self.store.recall_term_ids, 0,
                            lambda staged, stored_id: staged.term_row(stored_id=stored_id))

    def _recall(self, wanted: list, recall: Callable[[list], list[tuple]], key: int,
                staged_row: Callable) -> list[tuple]:
        """``recall(wanted)`` (the store's rows; ``key``: the column ``wanted`` names) with
        the counts staged and not in the database it read added."""
        if not wanted:
            return []
        # ``recall`` reads through the writer's connection, the one the snapshot holds.
        stored, unwritten = self._snapshot(lambda _conn: recall(wanted))
        if not unwritten:
            return stored  # type: ignore[return-value]
        by_key = {row[key]: row for row in stored}  # type: ignore[union-attr]
        for staged in unwritten:
            for key in wanted:
                added = staged_row(staged, key)
                if added is None:
                    continue
                row = by_key.get(key)
                # As COUNT_TERMS writes it: a new term's row, or more documents.
                by_key[key] = added if row is None else (
                    row[0], row[1], row[2] + added[2], row[3], max(row[4], added[4]))
        return list(by_key.values())


# The write-behind process's connection (``WriteBehind``), opened as the process starts, and
# the writer's process id.
_behind_connection: sqlite3.Connection | None = None
_behind_writer: int | None = None


def _open_behind(path: str, writer: int, initializer: Callable[[], None] | None) -> None:
    global _behind_connection, _behind_writer
    if initializer is not None:
        initializer()
    _behind_connection, _behind_writer = writer_connection(path), writer


def _write_behind(rows: bytes) -> None:
    """One write group's transaction, in the write-behind process: ``rows`` is the pickled
    ``StagedWrites.rows_to_write``.

    Not committed once the writer is gone (killed): a writer restarted meanwhile has read
    the store without the group, and would never learn of it.  Rolled back, the group's
    sources are fetched again, as after any transaction lost with a killed writer.
    """
    conn = _behind_connection
    assert conn is not None, "the write-behind process has no connection"
    group = pickle.loads(rows)
    conn.execute("BEGIN IMMEDIATE")
    try:
        group.write(conn)
        if os.getppid() != _behind_writer:
            raise StoreError("the writer is gone: its write group is not committed")
        conn.execute("COMMIT")
    except BaseException:
        # After some errors (a full disk) SQLite has rolled back already.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _close_behind() -> None:
    global _behind_connection
    if _behind_connection is not None:
        _behind_connection.close()
        _behind_connection = None


class WriteBehind:
    """Writes staged write groups in a process of its own, each in one transaction, in the
    order given, through a connection of its own (the writer reads through its own).

    A process, not a thread: SQLite's work on a group (the rows, their indexes, the
    full-text index, the commit and the checkpoints) then runs on another core than the
    writer's decisions.  A thread shared the interpreter lock with the writer and gained
    nothing over writing in place.  A group's rows are pickled when it is handed over and
    let go here; what the writer's reads need of it (``StagedReads``) stays until it has
    committed.  If the process dies, the group's future raises ``BrokenProcessPool`` (the
    writer writes the group again itself) and the next group starts a fresh process.  If
    the writer dies, the group is rolled back (``_write_behind``).
    """

    def __init__(self, path: str, initializer: Callable[[], None] | None = None):
        self.path = path
        self._initializer = initializer
        self._process: ProcessPoolExecutor | None = None

    def submit(self, group: StagedWrites) -> Future:
        """The group's transaction, queued; its future raises what made it fail (it was
        rolled back)."""
        rows = pickle.dumps(group.rows_to_write(), protocol=pickle.HIGHEST_PROTOCOL)
        group.let_rows_go()
        try:
            return self._hand_over(rows)
        except BrokenProcessPool:
            # The process died with the group before: a fresh one for this group.
            return self._hand_over(rows)

    def _hand_over(self, rows: bytes) -> Future:
        try:
            return self._started().submit(_write_behind, rows)
        except Exception:
            # A broken process, or none could start (no more processes allowed): the next
            # group starts a fresh one.
            process, self._process = self._process, None
            if process is not None:
                with suppress(Exception):
                    process.shutdown(wait=False, cancel_futures=True)
            raise

    def _started(self) -> ProcessPoolExecutor:
        if self._process is None:
            # spawn, not fork: the daemon has threads, and a forked lock stays locked.
            self._process = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_open_behind,
                initargs=(self.path, os.getpid(), self._initializer))
        return self._process

    @property
    def pid(self) -> int | None:
        """The write-behind process's id, once it has started (for benchmarks)."""
        processes = getattr(self._process, "_processes", None) or {}
        return next(iter(processes), None)

    def close(self) -> None:
        """Wait for the groups handed over; close the process's connection (its last
        checkpoint) and the process."""
        if self._process is None:
            return
        with suppress(BrokenProcessPool):
            self._process.submit(_close_behind).result()
        self._process.shutdown(wait=True)
        self._process = None


class Store:
    def __init__(self, path: str):
        self.path = path
        # (rowid, title, text) of the articles inserted by the open transaction, for the
        # full-text index: written when it commits (see _m008_search_rows_at_commit).
        self._unindexed: list[tuple[int, str, str]] = []
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(writer_connection(path))
        self.migrate()

    def close(self) -> None:
        self.db.conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL back into the database where no reader still needs it (non-blocking)."""
        self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- schema ---------------------------------------------------------------------------

    def applied_migrations(self) -> list[str]:
        if "_migrations" not in self.db.table_names():
            return []
        return [row[0] for row in self.db.execute("SELECT name FROM _migrations ORDER BY name")]

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks; returns their names."""
        known = [name for name, _ in MIGRATIONS]
        try:
            applied = self.applied_migrations()
            unknown = [name for name in applied if name not in known]
            if unknown:
                raise SchemaTooNewError(
                    f"{self.path}: the database was migrated by a newer version of the "
                    f"aggregator ({', '.join(unknown)}); upgrade the aggregator to use it")
            done = []
            for name, migration in MIGRATIONS:
                if name in applied:
                    continue
                with self.transaction():
                    self.db.execute("CREATE TABLE IF NOT EXISTS _migrations "
                                    "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
                    migration(self.db)
                    self.db.execute("INSERT INTO _migrations VALUES (?, ?)",
                                    [name, to_iso(utcnow())])
                done.append(name)
            return done
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot migrate the database: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.begin()
        try:
            yield conn
            self.index_and_commit(conn)
        except BaseException:
            self.rollback(conn)
            raise

    def begin(self) -> sqlite3.Connection:
        """Open a transaction (``transaction`` where it cannot be one block): end it with
        ``index_and_commit`` or ``rollback``."""
        conn = self.db.conn
        # executescript() commits on its own; explicit BEGIN keeps migrations atomic.
        conn.execute("BEGIN IMMEDIATE")
        self._unindexed.clear()
        return conn

    def rollback(self, conn: sqlite3.Connection) -> None:
        self._unindexed.clear()
        # After some errors (a full disk, an I/O error) SQLite has rolled back already;
        # a failed COMMIT leaves the transaction open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def index_and_commit(self, conn: sqlite3.Connection) -> None:
        """The end of a ``transaction``: its new articles into the full-text index, then the
        commit."""
        self.index_new_articles(conn)
        conn.execute("COMMIT")

    def index_new_articles(self, conn: sqlite3.Connection) -> None:
        """The articles that the open transaction inserted so far into the full-text index,
        in one statement (outside any savepoint: see ``_m008_search_rows_at_commit``)."""
        if self._unindexed:
            conn.executemany("INSERT INTO articles_fts (rowid, title, text) "
                             "VALUES (?, ?, ?)", self._unindexed)
            self._unindexed.clear()

    def write_staged(self, conn: sqlite3.Connection, staged: StagedWrites) -> None:
        """Write what ``staged`` holds in the open transaction; its new articles enter the
        full-text index at ``index_new_articles``, or when the transaction commits."""
        staged.write(conn, self._unindexed)

    @contextmanager
    def savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Part of a transaction that can fail alone: on an exception what it wrote is
        rolled back and the exception raised again, the rest of the transaction kept.
        If SQLite gave up the whole transaction (a full disk), there is nothing to roll
        back to: the caller sees ``conn.in_transaction`` false."""
        unindexed = len(self._unindexed)
        conn.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO part")
                conn.execute("RELEASE part")
                del self._unindexed[unindexed:]
            raise
        conn.execute("RELEASE part")

    # -- sources ----------------------------------------------------------------------------

    def sync_sources(self, sources: Iterable) -> None:
        """Make the sources table match the configuration, keeping each source's fetch state."""
        now = to_iso(utcnow())
        names = []
        with self.transaction() as conn:
            for source in sources:
                names.append(source.name)
                row = conn.execute("SELECT id, config_url FROM sources WHERE name = ?",
                                   [source.name]).fetchone()
                tags = json.dumps(list(source.tags))
                if row is None:
                    conn.execute(
                        "INSERT INTO sources (name, config_url, url, priority, tags, enabled, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [source.name, source.url, source.url, source.priority, tags,
                         int(source.enabled), now])
                elif row[1] != source.url:
                    # A changed URL in the config is a new feed: start its state afresh.
                    conn.execute(
                        "UPDATE sources SET config_url = ?, url = ?, priority = ?, tags = ?, "
                        "enabled = ?, in_config = 1, etag = NULL, last_modified = NULL, "
                        "consecutive_errors = 0, next_check_at = NULL, cooldown_until = NULL, "
                        "disabled_reason = NULL WHERE id = ?",
                        [source.url, source.url, source.priority, tags, int(source.enabled),
                         row[0]])
                else:
                    conn.execute(
                        "UPDATE sources SET priority = ?, tags = ?, enabled = ?, in_config = 1 "
                        "WHERE id = ?", [source.priority, tags, int(source.enabled), row[0]])
            placeholders = ",".join("?" * len(names)) or "''"
            conn.execute(f"UPDATE sources SET in_config = 0 WHERE name NOT IN ({placeholders})",
                         names)

    def source(self, name: str) -> SourceRow:
        row = self.db.execute(
            "SELECT id, name, url, config_url, priority, enabled, etag, last_modified, "
            "consecutive_errors, next_check_at, cooldown_until, disabled_reason, "
            "redirect_target, redirect_sightings, icon_checked_at, "
            "EXISTS (SELECT 1 FROM source_icons i WHERE i.source_id = sources.id), "
            "last_checked_at FROM sources WHERE name = ?", [name]).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no source named {name!r}")
        return SourceRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7],
                         row[8], from_iso(row[9]), from_iso(row[10]), row[11], row[12], row[13],
                         from_iso(row[14]), bool(row[15]), from_iso(row[16]))

    def record_fetch(self, source_id: int, *, started: datetime, duration_ms: int, url: str,
                     status: int | None, outcome: str, error: str | None, size: int | None,
                     entries: int | None, new_articles: int | None,
                     state: dict[str, object], conn: sqlite3.Connection | None = None) -> None:
        """Log one fetch attempt and update the source's fetch state (``state`` columns):
        staged and written as a pass writes its fetches, counts included."""
        staged = StagedWrites()
        staged.record_fetch(source_id, started=started, duration_ms=duration_ms, url=url,
                            status=status, outcome=outcome, error=error, size=size,
                            entries=entries, new_articles=new_articles, state=state)
        if conn is not None:
            staged.write(conn)
        else:
            with self.transaction() as c:
                staged.write(c)

    # -- per-source template lines ------------------------------------------------------------

    def prune_lines(self, conn: sqlite3.Connection, before: datetime) -> int:
        """Forget lines seen in only one article and not since ``before``."""
        return conn.execute("DELETE FROM source_lines WHERE articles = 1 AND last_seen < ?",
                            [to_iso(before)]).rowcount

    # -- retention ---------------------------------------------------------------------------

    @staticmethod
    def expired_stories(conn: sqlite3.Connection, seen_before: datetime,
                        published_before: datetime, limit: int) -> list[int]:
        """Up to ``limit`` stories that may leave the store, the longest unseen first: none
        of their members fetched since ``seen_before`` nor published since
        ``published_before`` (``EXPIRED``)."""
        return [row[0] for row in conn.execute(
            f"SELECT id FROM stories WHERE {EXPIRED} ORDER BY last_seen LIMIT ?3",
            [to_iso(seen_before), to_iso(published_before), limit])]

    @staticmethod
    def count_expired(conn: sqlite3.Connection, seen_before: datetime,
                      published_before: datetime) -> tuple[int, int, int]:
        """What retention would delete now, all of it: stories (``expired_stories``), their
        articles, and fetch attempts started before ``seen_before``."""
        stories, articles = conn.execute(
            f"SELECT count(*), coalesce(sum(article_count), 0) FROM stories WHERE {EXPIRED}",
            [to_iso(seen_before), to_iso(published_before)]).fetchone()
        fetches = conn.execute("SELECT count(*) FROM fetch_attempts WHERE started_at < ?",
                               [to_iso(seen_before)]).fetchone()[0]
        return stories, articles, fetches

    @staticmethod
    def purge_stories(conn: sqlite3.Connection, story_ids: list[int], now: datetime) -> int:
        """Delete the stories ``story_ids``, their members and everything kept for them (the
        fingerprint rows, the full-text rows, the canonical history), in the open
        transaction; returns how many articles left.

        The members' identity keys move to ``retired_keys``, and their counts stay in the
        term statistics, recorded as purged (``_m013_retention``)."""
        if not story_ids:
            return 0
        stories = json.dumps(story_ids)
        members = conn.execute(
            "SELECT a.id, a.relation, a.counted_terms, f.article_id IS NOT NULL "
            "FROM articles a LEFT JOIN article_fingerprints f ON f.article_id = a.id "
            "WHERE a.story_id IN (SELECT value FROM json_each(?1))", [stories]).fetchall()
        articles = json.dumps([row[0] for row in members])
        conn.execute("INSERT OR IGNORE INTO retired_keys (key, retired_at) SELECT key, ?2 "
                     "FROM article_keys WHERE article_id IN (SELECT value FROM json_each(?1))",
                     [articles, to_iso(now)])
        conn.execute("DELETE FROM article_keys "
                     "WHERE article_id IN (SELECT value FROM json_each(?1))", [articles])
        # Articles stored with clustering off (no fingerprint) were never counted.
        counted = [row for row in members if row[3]]
        purged_terms = Counter(term for row in counted for term in row[2].split())
        conn.executemany("UPDATE term_stats SET purged_frequency = purged_frequency + ? "
                         "WHERE term = ?", [(count, term)
                                            for term, count in purged_terms.items()])
        for table in ("canonical_history", "webhook_deliveries"):
            conn.execute(f"DELETE FROM {table} "
                         "WHERE story_id IN (SELECT value FROM json_each(?1))", [stories])
        # The fingerprint rows go by cascade, the full-text rows and the sources' counts by
        # trigger (``articles_fts_delete``, ``articles_count_delete``).
        conn.execute("DELETE FROM articles WHERE story_id IN (SELECT value FROM json_each(?1))",
                     [stories])
        conn.execute("DELETE FROM stories WHERE id IN (SELECT value FROM json_each(?1))",
                     [stories])
        relations = Counter(row[1] for row in members)
        Store._add_to_totals(conn, {
            PURGED_ARTICLES: len(members), PURGED_DOCUMENTS: len(counted),
            PURGED_DUPLICATES: relations["duplicate"],
            PURGED_SAME_STORY: relations["same_story"]})
        return len(members)

    @staticmethod
    def purge_fetch_attempts(conn: sqlite3.Connection, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest fetch attempts started before ``before``;
        returns how many.  ``fetch_counts`` goes on counting them."""
        ids = [row[0] for row in conn.execute(
            "SELECT id FROM fetch_attempts WHERE started_at < ? ORDER BY started_at LIMIT ?",
            [to_iso(before), limit])]
        if not ids:
            return 0
        conn.execute("DELETE FROM fetch_attempts WHERE id IN (SELECT value FROM json_each(?1))",
                     [json.dumps(ids)])
        return len(ids)

    @staticmethod
    def _add_to_totals(conn: sqlite3.Connection, totals: Mapping[str, int]) -> None:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + ?2",
            [(key, count) for key, count in totals.items() if count])

    # -- articles ---------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """A separate read-only connection, for threads other than the writer's."""
        return read_only_connection(self.path)

    def readers_see_writes(self) -> bool:
        """Whether a ``reader`` sees what the writer's connection sees: not for a store in
        memory (a reader opens another, empty one), nor inside the writer's open
        transaction (``recluster``), whose rows only that connection sees."""
        return self.path != ":memory:" and not self.db.conn.in_transaction

    known_keys = staticmethod(stored_keys)

    @staticmethod
    def next_article_id(conn: sqlite3.Connection) -> int:
        """The id SQLite would give the next article (one more than the largest): the writer
        clusters an article under it before the row exists, so that the row is written once,
        complete.  Only the writer inserts, inside its transaction."""
        return conn.execute("SELECT coalesce(max(id), 0) + 1 FROM articles").fetchone()[0]

    @staticmethod
    def next_story_id(conn: sqlite3.Connection) -> int:
        """The id SQLite would give the next story (see ``next_article_id``)."""
        return conn.execute("SELECT coalesce(max(id), 0) + 1 FROM stories").fetchone()[0]

    def insert_solo_articles(self, conn: sqlite3.Connection, source_id: int, articles: list,
                             word_counts: list[int], decision: dict,
                             canonical_reason: str) -> list[int]:
        """Store articles as stories of one member each, without fingerprints (clustering
        off): what ``insert_article``, ``create_story`` and ``apply_story_outcome`` would
        write, in a few statements for the whole batch instead of several per article.

        The ids are the ones SQLite would give (one more than the largest), chosen here so
        that each row is written once, complete: only the writer inserts, inside this
        transaction.
        """
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '1')",
                     [UNCLUSTERED_MARK])
        first_article = self.next_article_id(conn)
        first_story = self.next_story_id(conn)
        article_ids = list(range(first_article, first_article + len(articles)))
        story_ids = list(range(first_story, first_story + len(articles)))
        decision_json = json.dumps(decision)
        # Each time is written three times; a batch's articles were mostly fetched together.
        fetched_iso = {fetched: to_iso(fetched) for fetched in {a.fetched for a in articles}}
        times = [(to_iso(a.published), fetched_iso[a.fetched]) for a in articles]
        conn.executemany(
            "INSERT INTO stories (id, canonical_article_id, title, first_seen, last_seen, "
            "first_published, last_published, article_count, source_count) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1)",
            [(story_id, article_id, a.title, fetched, fetched, published, published)
             for story_id, article_id, a, (published, fetched)
             in zip(story_ids, article_ids, articles, times, strict=True)])
        conn.executemany(
            "INSERT INTO articles (id, source_id, guid, url, canonical_url, identity_key, title, "
            "author, published, published_from_feed, fetched, text, content_hash, word_count, "
            "story_id, relation, similarity, decision, counted_terms) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'canonical',1.0,?,'')",
            [(article_id, source_id, a.guid, a.url, a.canonical_url, a.identity_key, a.title,
              a.author, published, int(a.has_published), fetched, a.text,
              a.content_hash, words, story_id, decision_json)
             for article_id, story_id, a, words, (published, fetched)
             in zip(article_ids, story_ids, articles, word_counts, times, strict=True)])
        write_rows(conn, COUNT_ARTICLES, [[source_id, len(article_ids), 0, 0]])
        write_rows(conn, COUNT_DAYS, day_counts((fetched, source_id, "canonical")
                                                for _published, fetched in times))
        self._unindexed.extend((article_id, a.title, a.text)
                               for article_id, a in zip(article_ids, articles, strict=True))
        conn.executemany("INSERT OR IGNORE INTO article_keys (key, article_id) VALUES (?, ?)",
                         [(key, article_id) for article_id, a in zip(article_ids, articles,
                                                                     strict=True)
                          for key in a.identity_keys])
        conn.executemany(
            "INSERT INTO canonical_history (story_id, article_id, previous_article_id, reason, "
            "changed_at) VALUES (?, ?, NULL, ?, ?)",
            [(story_id, article_id, canonical_reason, fetched)
             for story_id, article_id, (_published, fetched)
             in zip(story_ids, article_ids, times, strict=True)])
        return article_ids

    @staticmethod
    def count_terms(conn: sqlite3.Connection, counts: TermCounts) -> None:
        """Add a batch of articles to the term statistics, one statement per term however
        many articles contain it."""
        conn.executemany(
            "INSERT INTO term_stats (id, term, document_frequency, prior_fraction, "
            "last_article_id) VALUES (?, ?, ?, ?, ?) ON CONFLICT(term) DO UPDATE SET "
            "document_frequency = document_frequency + excluded.document_frequency, "
            "last_article_id = max(last_article_id, excluded.last_article_id)",
            (row for rows in counts.chunks() for row in rows))
        Store.count_documents(conn, counts.documents)

    @staticmethod
    def count_documents(conn: sqlite3.Connection, documents: int) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                     "WHERE key = 'documents'", [documents])

    # -- a reader's corrections (``corrections``) -------------------------------------------

    def request_correction(self, kind: str, article_ids: Sequence[int], now: datetime) -> int:
        """``corrections.request_correction`` through the store's connection."""
        return request_correction(self.db.conn, kind, article_ids, now)

    @staticmethod
    def corrections(conn: sqlite3.Connection, pending: bool) -> list[Correction]:
        """The corrections not carried out yet (``pending``), or those carried out without
        an error, in the order they were made."""
        where = ("applied_at IS NULL" if pending
                 else "applied_at IS NOT NULL AND error IS NULL")
        return [Correction(correction_id, kind, tuple(json.loads(article_ids)))
                for correction_id, kind, article_ids in conn.execute(
                    f"SELECT id, kind, article_ids FROM story_corrections WHERE {where} "
                    "ORDER BY id")]

    def correction_state(self, correction_id: int) -> tuple[str | None, int | None,
                                                             str | None]:
        """``(applied_at, story_id, error)`` of a correction: when it was carried out (None:
        not yet), the story its articles are in then, and why it could not be."""
        row = self.db.execute("SELECT applied_at, story_id, error FROM story_corrections "
                              "WHERE id = ?", [correction_id]).fetchone()
        if row is None:
            raise StoreError(f"no correction {correction_id}")
        return row[0], row[1], row[2]

    @staticmethod
    def record_correction(conn: sqlite3.Connection, correction_id: int, now: datetime,
                          story_id: int | None, error: str | None) -> None:
        conn.execute("UPDATE story_corrections SET applied_at = ?, story_id = ?, error = ? "
                     "WHERE id = ?", [to_iso(now), story_id, error, correction_id])

    @staticmethod
    def regroup_stories(conn: sqlite3.Connection, moves: Mapping[int, int], outcomes: list,
                        emptied: Mapping[int, int], note: str, now: datetime) -> None:
        """Write what the clusterer's ``regroup`` decided: the moved articles' stories (a
        story not stored yet is made), every changed story's canonical, relations and row
        (its times and counts read from its members), the canonical's history with the
        reason and ``note``; the stories left empty (``emptied``: each with the story that
        took its members) go, their webhook deliveries carried to that story so that it is
        not posted again."""
        # A story made here gets its row's values with the others' below.
        conn.executemany("INSERT OR IGNORE INTO stories (id, first_seen, last_seen, "
                         "first_published, last_published) VALUES (?, '', '', '', '')",
                         [[story_id] for story_id in dict.fromkeys(moves.values())])
        conn.executemany("UPDATE articles SET story_id = ? WHERE id = ?",
                         [[story_id, article_id] for article_id, story_id in moves.items()])
        write_rows(conn, UPDATE_RELATIONS, [[member, relation, similarity]
                                            for outcome in outcomes
                                            for member, (relation, similarity)
                                            in outcome.member_relations.items()])
        write_rows(conn, INSERT_HISTORY, [
            [outcome.story_id, outcome.canonical_id, outcome.previous_canonical_id,
             f"{outcome.canonical_reason} ({note})", to_iso(now)]
            for outcome in outcomes if outcome.canonical_reason is not None])
        conn.executemany(
            "UPDATE stories SET canonical_article_id = ?1, title = (SELECT title FROM "
            "articles WHERE id = ?1), first_seen = m.first_seen, last_seen = m.last_seen, "
            "first_published = m.first_published, last_published = m.last_published, "
            "article_count = m.articles, source_count = m.sources "
            "FROM (SELECT min(fetched) AS first_seen, max(fetched) AS last_seen, "
            "min(published) AS first_published, max(published) AS last_published, "
            "count(*) AS articles, count(DISTINCT source_id) AS sources FROM articles "
            "WHERE story_id = ?2) AS m WHERE stories.id = ?2",
            [[outcome.canonical_id, outcome.story_id] for outcome in outcomes])
        for story_id, taker in emptied.items():
            # Where the taker has a delivery of its own to a webhook, that one stays.
            conn.execute("UPDATE OR IGNORE webhook_deliveries SET story_id = ? "
                         "WHERE story_id = ?", [taker, story_id])
            for table in ("webhook_deliveries", "canonical_history"):
                conn.execute(f"DELETE FROM {table} WHERE story_id = ?", [story_id])
            conn.execute("DELETE FROM stories WHERE id = ?", [story_id])

    def detach_stories(self, conn: sqlite3.Connection,
                       since: datetime | None) -> list[ReplayArticle]:
        """Dissolve the stories with a member published since ``since`` (all when None).

        Their members lose their story and no longer count in the term statistics; they are
        returned oldest first, for the clusterer to place again.
        """
        since_iso = to_iso(since) if since else "0000"
        conn.execute("DROP TABLE IF EXISTS temp.detached")
        conn.execute("CREATE TEMP TABLE detached (story_id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO temp.detached SELECT DISTINCT story_id FROM articles "
                     "WHERE published >= ? AND story_id IS NOT NULL", [since_iso])
        rows = conn.execute(
            """SELECT a.id, a.source_id, s.name, s.priority, a.guid, a.url, a.canonical_url,
                      a.identity_key, a.title, a.author, a.published, a.published_from_feed,
                      a.fetched, a.text, a.content_hash, a.counted_terms,
                      f.article_id IS NOT NULL
               FROM articles a JOIN sources s ON s.id = a.source_id
               LEFT JOIN article_fingerprints f ON f.article_id = a.id
               WHERE a.story_id IN (SELECT story_id FROM temp.detached)
                  OR a.story_id IS NULL
               ORDER BY a.published, a.id""").fetchall()
        conn.execute("UPDATE articles SET story_id = NULL, relation = NULL, similarity = NULL "
                     "WHERE story_id IN (SELECT story_id FROM temp.detached)")
        conn.execute("DELETE FROM canonical_history "
                     "WHERE story_id IN (SELECT story_id FROM temp.detached)")
        # A dissolved story's webhook deliveries wait for the story its canonical lands in
        # (``carry_deliveries``): left under its id, they would be another story's once
        # a new story takes that id, and that story would never be posted.
        conn.execute("DROP TABLE IF EXISTS temp.carried_deliveries")
        conn.execute("CREATE TEMP TABLE carried_deliveries AS SELECT d.webhook, "
                     "s.canonical_article_id AS article_id, d.outcome, d.attempts, d.status, "
                     "d.error, d.last_attempt_at, d.delivered_at FROM webhook_deliveries d "
                     "JOIN stories s ON s.id = d.story_id "
                     "WHERE d.story_id IN (SELECT story_id FROM temp.detached)")
        conn.execute("DELETE FROM webhook_deliveries "
                     "WHERE story_id IN (SELECT story_id FROM temp.detached)")
        conn.execute("DELETE FROM stories WHERE id IN (SELECT story_id FROM temp.detached)")
        conn.execute("DROP TABLE temp.detached")
        removed: dict[str, int] = {}
        # Articles stored with clustering off (no fingerprint) were never counted.
        counted = [row for row in rows if row[16]]
        for row in counted:
            for term in row[15].split():
                removed[term] = removed.get(term, 0) + 1
        conn.executemany("UPDATE term_stats SET document_frequency = document_frequency - ? "
                         "WHERE term = ?", [(count, term) for term, count in removed.items()])
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) - ? "
                     "WHERE key = 'documents'", [len(counted)])
        return [ReplayArticle(row[0], row[1], row[3], NormalizedArticle(
            source=row[2], guid=row[4], url=row[5], canonical_url=row[6], title=row[8],
            author=row[9], published=from_iso(row[10]), has_published=bool(row[11]),
            fetched=from_iso(row[12]), text=row[13], content_hash=row[14],
            identity_keys=(row[7],))) for row in rows]

    @staticmethod
    def carry_deliveries(conn: sqlite3.Connection) -> None:
        """After ``detach_stories``' articles are placed again: each dissolved story's
        webhook deliveries go to the story its canonical is in now (a delivered one first,
        where two of them land in one story), so that nothing is posted twice."""
        conn.execute("INSERT OR IGNORE INTO webhook_deliveries (webhook, story_id, outcome, "
                     "attempts, status, error, last_attempt_at, delivered_at) "
                     "SELECT c.webhook, a.story_id, c.outcome, c.attempts, c.status, c.error, "
                     "c.last_attempt_at, c.delivered_at FROM temp.carried_deliveries c "
                     "JOIN articles a ON a.id = c.article_id "
                     "ORDER BY c.delivered_at IS NULL, c.rowid")
        conn.execute("DROP TABLE temp.carried_deliveries")

    # -- state for the clusterer -------------------------------------------------------------

    def term_statistics(self) -> tuple[int, list[tuple[int, str, int, float]]]:
        documents = int(self.db.execute(
            "SELECT value FROM meta WHERE key = 'documents'").fetchone()[0])
        rows = self.db.execute(
            "SELECT id, term, document_frequency, prior_fraction FROM term_stats").fetchall()
        return documents, rows

    def recent_term_statistics(self, first_article_id: int) -> tuple[
            int, int, Iterator[tuple[int, str, int, float, int]]]:
        """The term statistics a restart reads: the number of documents, the next free term
        id, and the rows ``(id, term, document frequency, prior, last article id)`` of the
        terms counted in an article from ``first_article_id`` on (the others' names:
        ``term_names_before``)."""
        documents = int(self.db.execute(
            "SELECT value FROM meta WHERE key = 'documents'").fetchone()[0])
        top = self.db.execute("SELECT coalesce(max(id), 0) FROM term_stats").fetchone()[0]
        rows = self.db.execute(
            f"SELECT {TERM_ROW} FROM term_stats WHERE last_article_id >= ?",
            [first_article_id])
        return documents, top + 1, rows

    @staticmethod
    def term_names_before(conn: sqlite3.Connection, first_article_id: int) -> Iterator[str]:
        """The names of the terms counted in no article from ``first_article_id`` on."""
        for (term,) in conn.execute("SELECT term FROM term_stats WHERE last_article_id < ?",
                                    [first_article_id]):
            yield term

    def recall_terms(self, terms: list[str]) -> list[tuple[int, str, int, float, int]]:
        """The stored rows of those of ``terms`` that the store has (see
        ``recent_term_statistics``), through the writer's connection: its own uncommitted
        counts included."""
        return select_in(self.db.conn, f"SELECT {TERM_ROW} FROM term_stats WHERE term IN "
                         "({})", terms)

    def recall_term_ids(self, term_ids: list[int]) -> list[tuple[int, str, int, float, int]]:
        """The same as ``recall_terms``, by id."""
        return select_in(self.db.conn, f"SELECT {TERM_ROW} FROM term_stats WHERE id IN ({{}})",
                         term_ids)

    def shingle_signatures(self, article_ids: list[int]) -> list[bytes]:
        """Stored shingle signatures of the articles, in the order given."""
        found = dict(select_in(self.db.conn, "SELECT article_id, shingle_signature FROM "
                               "article_fingerprints WHERE article_id IN ({})", article_ids))
        return [found[i] for i in article_ids]

    def salient_terms(self, article_ids: list[int]) -> list[tuple[str, ...]]:
        """Stored salient terms of the articles, in the order given."""
        rows = dict(self.db.execute(
            "SELECT article_id, salient_terms FROM article_fingerprints "
            f"WHERE article_id IN ({','.join('?' * len(article_ids))})",
            article_ids).fetchall()) if article_ids else {}
        return [tuple(json.loads(rows[i])) for i in article_ids]

    def source_names(self) -> dict[int, tuple[str, int]]:
        """Source id -> (name, priority)."""
        return {row[0]: (row[1], row[2])
                for row in self.db.execute("SELECT id, name, priority FROM sources")}

    def unclustered_since(self, since: datetime | None) -> int:
        """Articles published since ``since`` (ever, when None) that have no fingerprint:
        stored while clustering was off.  Counted only if any ever were (they scan)."""
        if self.db.execute("SELECT 1 FROM meta WHERE key = ?", [UNCLUSTERED_MARK]).fetchone() \
                is None:
            return 0
        return self.db.execute(
            "SELECT count(*) FROM articles a WHERE a.published >= ? AND NOT EXISTS "
            "(SELECT 1 FROM article_fingerprints f WHERE f.article_id = a.id)",
            [to_iso(since) if since else "0000"]).fetchone()[0]

    @staticmethod
    def forget_unclustered(conn: sqlite3.Connection) -> None:
        """Every article has its fingerprint again (after a full recluster)."""
        conn.execute("DELETE FROM meta WHERE key = ?", [UNCLUSTERED_MARK])

    def newest_published(self) -> datetime | None:
        row = self.db.execute("SELECT max(last_published) FROM stories").fetchone()
        return from_iso(row[0]) if row and row[0] else None

    def window_floor(self) -> datetime | None:
        """Stories whose newest article is older than this have left the window to keep it
        within its article limit; None if the limit has never been reached."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [WINDOW_FLOOR]).fetchone()
        return from_iso(row[0]) if row else None

    @staticmethod
    def raise_window_floor(conn: sqlite3.Connection, floor: datetime) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     [WINDOW_FLOOR, to_iso(floor)])

    def window_rows(self, since: datetime,
                    chunk: int | None = None) -> tuple[int, Iterator[WindowRows]]:
        """Articles of stories still live at ``since``, oldest first, with their signatures:
        how many, and the rows in chunks of ``chunk`` articles.

        Two reads that never touch the (large) article rows: the members of the live stories
        from the ``articles_story`` index, then their fingerprints from
        ``article_fingerprints`` (see ``_window_chunks``).  The chunks (``WINDOW_CHUNK`` unless
        given) bound the memory that the rows take on their way into the clusterer's arrays.
        """
        cursor = self.db.execute(
            """SELECT a.id, a.story_id, coalesce(st.canonical_article_id, -1)
               FROM stories st INDEXED BY stories_last_published
               JOIN articles a INDEXED BY articles_story ON a.story_id = st.id
               WHERE st.last_published >= ?
               ORDER BY a.id""", [to_iso(since)])
        # (article, story, canonical) rows in an array, read a part at a time: as Python
        # tuples and a dict they would take about 40 MB more at 100,000 articles, for as
        # long as the restart lasts.
        parts = []
        while fetched := cursor.fetchmany(WINDOW_CHUNK * 16):
            parts.append(np.array(fetched, dtype=np.int64))
        if not parts:
            return 0, iter(())
        members = np.concatenate(parts)
        return len(members), self._window_chunks(members, chunk or WINDOW_CHUNK)

    def _window_chunks(self, members: np.ndarray, chunk: int) -> Iterator[WindowRows]:
        """``members``: (article id, story id, canonical id) rows in article id order.

        Their fingerprints are read ``chunk`` members at a time: by a range scan where the
        members are most of their id range, else by id, so that a live story that began
        long ago does not make the restart read the store from there on.
        """
        parse = datetime.fromisoformat
        parts = [members[first:first + chunk] for first in range(0, len(members), chunk)]
        for part, rows in zip(parts, self._fingerprint_rows(parts), strict=True):
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            at = np.minimum(np.searchsorted(part[:, 0], ids), len(part) - 1)
            wanted = part[at, 0] == ids
            if not wanted.any():
                continue
            if not wanted.all():
                rows = [row for row, keep in zip(rows, wanted.tolist(), strict=True) if keep]
                at = at[wanted]
            window = WindowRows()
            (window.ids, window.source_ids, window.published_ts, window.has_author,
             window.word_counts, window.dated, window.shingle_signatures,
             window.salient_signatures, window.term_vectors) = map(list, zip(*rows,
                                                                               strict=True))
            window.story_ids = part[at, 1].tolist()
            window.canonical_ids = [c if c >= 0 else None for c in part[at, 2].tolist()]
            window.published_ts = [parse(p).timestamp() for p in window.published_ts]
            yield window

    def _fingerprint_rows(self, parts: list[np.ndarray]) -> Iterator[list[tuple]]:
        """The fingerprint rows of each part of the window, in order.

        In a long-lived store the window's fingerprint pages lie scattered among the
        article and full-text pages written at the same time, so a restart with a cold
        page cache waits on one small read after another.  So ``WINDOW_READERS`` read-only
        connections read the next part, a slice each, while this one is being restored:
        the disk has several reads to serve at once, and no more than two parts' rows are
        in memory.  Inside a transaction (``recluster``) the writer's own connection reads,
        sequentially: only it sees the uncommitted rows.
        """
        if not self.readers_see_writes() or len(parts) < 2:
            for part in parts:
                yield self._read_fingerprints(self.db.conn, part)
            return
        readers: list[sqlite3.Connection] = []
        local = threading.local()

        def read(part: np.ndarray) -> list[tuple]:
            if not hasattr(local, "conn"):
                local.conn = self.reader()
                # A range scan reads each page once: a page cache would only hold memory.
                local.conn.execute("PRAGMA cache_size = 16")
                readers.append(local.conn)
            return self._read_fingerprints(local.conn, part)

        try:
            with ThreadPoolExecutor(WINDOW_READERS, thread_name_prefix="window") as pool:
                def submit(part: np.ndarray) -> list[Future]:
                    return [pool.submit(read, piece)
                            for piece in np.array_split(part, WINDOW_READERS) if len(piece)]

                pending = submit(parts[0])
                for following in parts[1:]:
                    rows = [row for future in pending for row in future.result()]
                    pending = submit(following)
                    yield rows
                yield [row for future in pending for row in future.result()]
        finally:
            for conn in readers:
                conn.close()

    @staticmethod
    def _read_fingerprints(conn: sqlite3.Connection, part: np.ndarray) -> list[tuple]:
        columns = """SELECT article_id, source_id, published, has_author, word_count, dated,
                            shingle_signature, salient_signature, term_vector
                     FROM article_fingerprints"""
        low, high = int(part[0, 0]), int(part[-1, 0])
        if high - low < 2 * len(part):
            # Members dense in their id range (the usual case): one range scan.
            return conn.execute(f"{columns} WHERE article_id BETWEEN ? AND ? "
                                "ORDER BY article_id", [low, high]).fetchall()
        return conn.execute(
            f"{columns} WHERE article_id IN (SELECT value FROM json_each(?)) "
            "ORDER BY article_id", [json.dumps(part[:, 0].tolist())]).fetchall()

    # -- reads for the CLI and dashboards ------------------------------------------------------

    def stories(self, since: datetime | None = None, limit: int = 50,
                min_sources: int = 1, starred: bool = False) -> list[dict]:
        """The newest stories (by ``last_seen``) with their members and whether a reader has
        read or starred them (``reading``); ``starred``: only those starred."""
        since_iso = to_iso(since) if since else "0000"
        columns = ("id", "title", "first_seen", "last_seen", "article_count", "source_count",
                   "canonical_article_id")
        if starred:
            rows = self.db.execute(
                f"SELECT {', '.join(columns)} FROM stories "
                "WHERE id IN (SELECT value FROM json_each(?)) AND last_seen >= ? "
                "AND source_count >= ? ORDER BY last_seen DESC, id DESC LIMIT ?",
                [json.dumps(saved_story_ids(self.db.conn)), since_iso, min_sources,
                 limit]).fetchall()
        elif min_sources > 1:
            ids = newest_story_ids(self.db.conn, limit, min_sources, since_iso)
            position = {story_id: index for index, story_id in enumerate(ids)}
            rows = sorted(select_in(self.db.conn, f"SELECT {', '.join(columns)} FROM stories "
                                                  "WHERE id IN ({})", ids),
                          key=lambda row: position[row[0]])
        else:
            rows = self.db.execute(f"SELECT {', '.join(columns)} FROM stories "
                                   "WHERE last_seen >= ? ORDER BY last_seen DESC, id DESC "
                                   "LIMIT ?", [since_iso, limit]).fetchall()
        stories = [dict(zip(columns, row, strict=True)) for row in rows]
        ids = [story["id"] for story in stories]
        read = marked_story_ids(self.db.conn, ids, "read")
        saved = marked_story_ids(self.db.conn, ids, "saved")
        for story in stories:
            story["read"], story["starred"] = story["id"] in read, story["id"] in saved
            story["members"] = self.story_members(story["id"])
        return stories

    def story_members(self, story_id: int) -> list[dict]:
        return [dict(row) for row in self.db.query(
            "SELECT article_id, source, title, url, published, relation, similarity "
            "FROM article_stories WHERE story_id = ? ORDER BY is_canonical DESC, article_id",
            [story_id])]

    def story(self, story_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM stories WHERE id = ?", [story_id]))
        if not rows:
            return None
        story = dict(rows[0])
        story["members"] = self.story_members(story_id)
        story["canonical_history"] = list(self.db.query(
            "SELECT article_id, previous_article_id, reason, changed_at FROM canonical_history "
            "WHERE story_id = ? ORDER BY id", [story_id]))
        story["close_calls"] = close_calls(self.db.conn, story_id)
        return story

    def sources_overview(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM source_health ORDER BY name"))

    def search(self, query: str, limit: int = 20) -> tuple[list[dict], bool]:
        """Stories whose articles match an FTS5 query, best match first, one row per story;
        and whether only the newest ``SEARCH_NEWEST`` matching articles were ranked."""
        try:
            found = search_stories(self.db.conn, query, limit)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"invalid search query {query!r}: {exc}") from None
        matching = dict(found.stories)
        if not matching:
            return [], False
        details = {row["story_id"]: row for row in self.db.query(
            f"SELECT * FROM latest_stories WHERE story_id IN ({','.join('?' * len(matching))})",
            list(matching))}
        return [{**details[story_id], "matching_articles": count}
                for story_id, count in matching.items() if story_id in details], \
            found.newest_only

    def article(self, article_id: int) -> dict | None:
        rows = list(self.db.query(
            "SELECT a.*, s.name AS source, f.salient_terms FROM articles a "
            "JOIN sources s ON s.id = a.source_id "
            "LEFT JOIN article_fingerprints f ON f.article_id = a.id "
            "WHERE a.id = ?", [article_id]))
        return rows[0] if rows else None
