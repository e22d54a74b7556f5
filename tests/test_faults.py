"""Crash safety and a misbehaving environment: SIGKILL mid-pass, a full disk, a read-only
database, a dashboard holding a long read."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from behind_faults import (
    dies_in_first_write,
    groups_fail,
    pragma_on_connect,
    rows_of_guid_fail,
    write_behind_with,
)
from conftest import DATA, ROOT, SEED_FEEDS, write_config

import aggregator.pipeline as pipeline
import aggregator.store as store_module
from aggregator.check import check_store
from aggregator.config import Config, Source, load_config
from aggregator.parse import ParsedEntry
from aggregator.pipeline import Aggregator, load_clusterer
from aggregator.store import StagedWrites

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_fault_campaign_short(tmp_path, write_behind):
    from faults import campaign

    result = campaign(kills=3, feeds=6, entries=3, seed=11, workdir=tmp_path,
                      log=lambda *_: None, write_behind=write_behind)
    assert result["kills"] >= 3
    assert result["served"] > 0 and result["stored"] == result["served"]
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert result["check_failures"] == 0
    assert result["stories_equal_to_uninterrupted"]


def _on_every_writer(aggregator, monkeypatch, pragma):
    """``pragma`` on every connection that writes the store: the writer's, those it opens
    later, and the one of a fresh write-behind process."""
    opened = store_module.writer_connection

    def set_up(path):
        conn = opened(path)
        conn.execute(pragma)
        return conn
    monkeypatch.setattr(store_module, "writer_connection", set_up)
    aggregator.store.db.conn.execute(pragma)
    if aggregator._writes_behind():
        write_behind_with(aggregator, partial(pragma_on_connect, pragma))


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_full_disk_is_a_clear_error_and_the_next_pass_recovers(seed_config, monkeypatch,
                                                               write_behind):
    # With small pages every seed article needs a page that the full disk does not have
    # (with 16 KB pages they can all fit in the empty room every table starts with).
    monkeypatch.setattr(store_module, "PAGE_SIZE", 1024)
    aggregator = Aggregator(replace(load_config(seed_config, environ={}),
                                    write_behind=write_behind))
    conn = aggregator.store.db.conn
    conn.execute("VACUUM")  # no free pages: a write that needs a page finds the disk full
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    _on_every_writer(aggregator, monkeypatch, f"PRAGMA max_page_count = {pages}")
    reports = aggregator.run_pass()
    failed = [r for r in reports if r.outcome == "store_error"]
    assert len(failed) == 3
    assert all("full" in r.error for r in failed)
    assert conn.execute("SELECT count(*) FROM articles").fetchone() == (3 - len(failed),)
    _on_every_writer(aggregator, monkeypatch, "PRAGMA max_page_count = 1073741823")
    assert sum(r.new_articles for r in aggregator.run_pass()) == len(failed)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_read_only_database_is_a_clear_error_and_nothing_is_lost(seed_config, monkeypatch,
                                                                 write_behind):
    aggregator = Aggregator(replace(load_config(seed_config, environ={}),
                                    write_behind=write_behind))
    aggregator.run_pass()
    conn = aggregator.store.db.conn
    _on_every_writer(aggregator, monkeypatch, "PRAGMA query_only = ON")
    reports = aggregator.run_pass(force=True)
    assert {r.outcome for r in reports} == {"store_error"}
    assert "readonly" in reports[0].error
    _on_every_writer(aggregator, monkeypatch, "PRAGMA query_only = OFF")
    assert conn.execute("SELECT count(*) FROM articles").fetchone() == (3,)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def test_long_reader_does_not_block_the_writer_and_the_wal_shrinks_after(
        tmp_path, seed_dir, monkeypatch):
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", 64 * 1024)
    feeds = dict(SEED_FEEDS)
    (seed_dir / "other.rss.xml").write_bytes((DATA / "other_topics.rss.xml").read_bytes())
    feeds["Test Wire"] = "other.rss.xml"
    config = write_config(tmp_path / "wal.toml", [{"name": n, "url": str(seed_dir / f)}
                                                  for n, f in feeds.items()])
    aggregator = Aggregator(load_config(config, environ={}))
    database = aggregator.store.path
    reader = sqlite3.connect(database)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM articles").fetchone()  # holds its snapshot
    done = threading.Event()

    def write():
        aggregator.run_pass()
        aggregator.recluster()  # rewrites every story: plenty of WAL
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert done.wait(30), "the writer waited on the reader"
    writer.join()
    grown = os.path.getsize(database + "-wal")
    assert grown > 64 * 1024
    assert reader.execute("SELECT count(*) FROM articles").fetchone() == (0,)  # old snapshot
    reader.execute("COMMIT")
    reader.close()
    aggregator.recluster()  # the next writes restart the WAL from its beginning
    aggregator.store.checkpoint()
    aggregator.recluster()
    assert os.path.getsize(database + "-wal") <= max(64 * 1024, grown // 2)
    aggregator.close()


def _desk(tmp_path, name, sources=("desk",), write_behind=False):
    config = Config(path=str(tmp_path / f"{name}.toml"), database=str(tmp_path / f"{name}.db"),
                    write_behind=write_behind,
                    sources=tuple(Source(name=source, url=str(tmp_path / "f.xml"),
                                         interval_s=3600) for source in sources))
    return Aggregator(config)


def _entries(numbers, prefix="g"):
    start = datetime(2026, 3, 1, tzinfo=UTC)
    topics = ["glacier summit expedition", "harbour strike dockers", "orchard frost harvest"]
    return [ParsedEntry(guid=f"{prefix}{n}", link=None,
                        title=f"{topics[n % 3].title()} report {n}",
                        published=start + timedelta(hours=n),
                        content="<p>" + f"The {topics[n % 3]} story goes on. " * 12 + "</p>")
            for n in numbers]


def _fail_while_decided(aggregator, monkeypatch, guid):
    """The article ``guid`` fails while its source's rows are decided and staged."""
    staged = StagedWrites.insert_article

    def flaky(self, **columns):
        if columns["article"].guid == guid:
            raise sqlite3.OperationalError("disk I/O error")
        return staged(self, **columns)
    monkeypatch.setattr(StagedWrites, "insert_article", flaky)


def _fail_while_written(aggregator, monkeypatch, guid):
    """Writing rows that include the article ``guid`` fails: in the write-behind process's
    transaction, and again in the source's own savepoint when the group is written again."""
    write = StagedWrites.write

    def flaky(self, conn, search_rows=None):
        write(self, conn, search_rows)
        if any(row[2] == guid for row in self.articles):
            raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(StagedWrites, "write", flaky)
    if aggregator._writes_behind():
        write_behind_with(aggregator, partial(rows_of_guid_fail, guid, "disk I/O error"))


def _fail_commit(aggregator, monkeypatch):
    def failing_commit(conn):
        # As a COMMIT that fails: the transaction is left open, to be rolled back.
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(aggregator.store, "index_and_commit", failing_commit)
    if aggregator._writes_behind():
        write_behind_with(aggregator, partial(groups_fail, "database or disk is full"))


@pytest.mark.parametrize("fail", [
    lambda aggregator, monkeypatch: _fail_while_decided(aggregator, monkeypatch, "g4"),
    lambda aggregator, monkeypatch: _fail_while_written(aggregator, monkeypatch, "g4"),
    _fail_commit], ids=["decided", "written", "commit"])
def test_a_failed_write_leaves_the_clusterer_as_the_store_is(tmp_path, monkeypatch, fail):
    straight = _desk(tmp_path, "straight")
    straight.ingest_entries("desk", 0, _entries(range(6)), datetime(2026, 3, 1, tzinfo=UTC))
    expected = straight.store.db.execute(
        "SELECT guid, story_id, relation FROM articles ORDER BY id").fetchall()
    straight.close()

    aggregator = _desk(tmp_path, "failing")
    aggregator.ingest_entries("desk", 0, _entries(range(3)), datetime(2026, 3, 1, tzinfo=UTC))
    with monkeypatch.context() as patch:
        fail(aggregator, patch)
        with pytest.raises(sqlite3.OperationalError):
            aggregator.ingest_entries("desk", 0, _entries(range(3, 6)),
                                      datetime(2026, 3, 1, tzinfo=UTC))
    # The rolled-back articles are gone from the index and the statistics too...
    assert sorted(aggregator.clusterer.window_article_ids()) == [1, 2, 3]
    assert aggregator.clusterer.stats.documents == 3
    # ...so that the same entries, written again, cluster as in an uninterrupted run.
    aggregator.ingest_entries("desk", 0, _entries(range(3, 6)), datetime(2026, 3, 1, tzinfo=UTC))
    assert aggregator.store.db.execute(
        "SELECT guid, story_id, relation FROM articles ORDER BY id").fetchall() == expected
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def _articles(aggregator):
    return aggregator.store.db.execute(
        "SELECT guid, story_id, relation FROM articles ORDER BY guid").fetchall()


def _window_is_the_store(aggregator):
    stored = [row[0] for row in aggregator.store.db.execute(
        "SELECT id FROM articles WHERE story_id IS NOT NULL ORDER BY id")]
    return sorted(aggregator.clusterer.window_article_ids()) == stored


def _search_index_is_the_articles(aggregator):
    """The full-text index holds exactly the stored articles' titles and texts: FTS5's
    integrity check with rank 1 compares it with the content table, token by token."""
    db = aggregator.store.db
    db.execute("INSERT INTO articles_fts (articles_fts, rank) VALUES ('integrity-check', 1)")
    indexed = [row[0] for row in db.execute("SELECT id FROM articles_fts_docsize ORDER BY id")]
    return indexed == [row[0] for row in db.execute("SELECT id FROM articles ORDER BY id")]


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
@pytest.mark.parametrize("fail", [_fail_while_decided, _fail_while_written],
                         ids=["decided", "written"])
def test_a_group_keeps_the_sources_whose_writes_succeed(tmp_path, monkeypatch, fail,
                                                        write_behind):
    fetched = datetime(2026, 3, 1, tzinfo=UTC)
    sources = ("first", "second", "third")
    batches = [(name, 0, _entries(range(i * 3, i * 3 + 3), name), fetched, None)
               for i, name in enumerate(sources)]
    without_second = _desk(tmp_path, "straight", sources)
    without_second.ingest_group([batches[0], batches[2]])
    expected = _articles(without_second)
    without_second.close()

    aggregator = _desk(tmp_path, "grouped", sources, write_behind)
    # The second source's second article: after the first of its articles was placed.  The
    # group's transaction fails as one, and is written again source by source.
    fail(aggregator, monkeypatch, "second4")
    reports = aggregator.ingest_group(batches)
    assert [r.outcome for r in reports] == ["ok", "store_error", "ok"]
    assert "disk I/O error" in reports[1].error
    assert _articles(aggregator) == expected
    assert _window_is_the_store(aggregator)
    # The failed source's first article was held for the full-text index, which is written
    # at the commit: it was dropped with the rollback, and its id, given again to the
    # third source's first article, is indexed with that article's text.
    assert _search_index_is_the_articles(aggregator)
    assert check_store(aggregator.store, aggregator.settings) == []
    # The clusterer rebuilt after the failure kept the first source's term statistics.
    stored = load_clusterer(aggregator.store, aggregator.settings, aggregator.signer).stats
    assert aggregator.clusterer.stats.documents == stored.documents == 6
    assert aggregator.clusterer.stats.frequencies() == stored.frequencies()
    aggregator.close()


def _reader_count(path):
    """The articles that another connection (a dashboard's) sees."""
    reader = sqlite3.connect(path)
    try:
        return reader.execute("SELECT count(*) FROM articles").fetchone()[0]
    finally:
        reader.close()


_GROUPS = [("first", range(0, 3)), ("second", range(3, 6)), ("third", range(6, 9))]


def _submit(aggregator, name, numbers):
    return aggregator.submit_group([(name, 0, _entries(numbers, name),
                                     datetime(2026, 3, 1, tzinfo=UTC), None)])


def _terms(aggregator):
    return aggregator.store.db.execute(
        "SELECT * FROM term_stats ORDER BY term").fetchall()


def test_groups_written_in_place_share_a_transaction_until_it_is_full(tmp_path, monkeypatch):
    alone = _desk(tmp_path, "alone", [name for name, _ in _GROUPS])
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "SHARED_TRANSACTION_ENTRIES", 1)  # every group commits
        for name, numbers in _GROUPS:
            assert _submit(alone, name, numbers).settled
    expected_articles, expected_terms = _articles(alone), _terms(alone)
    alone.close()

    monkeypatch.setattr(pipeline, "SHARED_TRANSACTION_ENTRIES", 6)
    aggregator = _desk(tmp_path, "shared", [name for name, _ in _GROUPS])
    path = aggregator.store.path
    first = _submit(aggregator, *_GROUPS[0])
    # Not committed: no report is final and a dashboard sees nothing yet.
    assert not first.settled
    assert _reader_count(path) == 0
    second = _submit(aggregator, *_GROUPS[1])
    # Six entries: the transaction is full and commits with both groups.
    assert first.settled and second.settled
    assert [r.outcome for r in first.result() + second.result()] == ["ok", "ok"]
    assert _reader_count(path) == 6
    third = _submit(aggregator, *_GROUPS[2])
    assert not third.settled and _reader_count(path) == 6
    # Asking for a report commits what is open.
    assert [r.new_articles for r in third.result()] == [3]
    assert _reader_count(path) == 9
    # The same rows and term statistics as a transaction per group.
    assert _articles(aggregator) == expected_articles
    assert _terms(aggregator) == expected_terms
    assert _window_is_the_store(aggregator) and _search_index_is_the_articles(aggregator)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def _give_up_in_third(aggregator, monkeypatch):
    """SQLite gives up the whole transaction (a full disk) while the third group is written,
    the second waiting in it for the commit."""
    write = StagedWrites.write

    def giving_up(self, conn, search_rows=None):
        if any(row[2].startswith("third") for row in self.articles):
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        write(self, conn, search_rows)
    monkeypatch.setattr(StagedWrites, "write", giving_up)


@pytest.mark.parametrize("fail", [_fail_commit, _give_up_in_third],
                         ids=["commit", "given up"])
def test_a_shared_transaction_that_fails_fails_every_group_in_it(tmp_path, monkeypatch, fail):
    monkeypatch.setattr(pipeline, "SHARED_TRANSACTION_ENTRIES", 100)
    straight = _desk(tmp_path, "straight", [name for name, _ in _GROUPS])
    for name, numbers in _GROUPS:
        straight.ingest_group([(name, 0, _entries(numbers, name),
                                datetime(2026, 3, 1, tzinfo=UTC), None)])
    expected = _articles(straight)
    straight.close()

    aggregator = _desk(tmp_path, "failing", [name for name, _ in _GROUPS])
    _submit(aggregator, *_GROUPS[0]).result()
    before = _articles(aggregator)
    with monkeypatch.context() as patch:
        fail(aggregator, patch)
        groups = [_submit(aggregator, name, numbers) for name, numbers in _GROUPS[1:]]
        reports = [report for group in groups for report in group.result()]
    assert [(r.source, r.outcome) for r in reports] == [("second", "store_error"),
                                                        ("third", "store_error")]
    assert "disk is full" in reports[0].error
    assert _articles(aggregator) == before
    assert _window_is_the_store(aggregator) and _search_index_is_the_articles(aggregator)
    assert aggregator.clusterer.stats.documents == 3
    # Written again, they cluster as if nothing had failed.
    for name, numbers in _GROUPS[1:]:
        assert [r.outcome for r in _submit(aggregator, name, numbers).result()] == ["ok"]
    assert _articles(aggregator) == expected
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_a_group_whose_commit_fails_fails_as_one(tmp_path, monkeypatch, write_behind):
    fetched = datetime(2026, 3, 1, tzinfo=UTC)
    aggregator = _desk(tmp_path, "grouped", ("first", "second"), write_behind)
    aggregator.ingest_group([("first", 0, _entries(range(3), "first"), fetched, None)])
    before = _articles(aggregator)
    with monkeypatch.context() as patch:
        _fail_commit(aggregator, patch)
        reports = aggregator.ingest_group([
            ("first", 0, _entries(range(3, 6), "first"), fetched, None),
            ("second", 0, _entries(range(6, 9), "second"), fetched, None)])
    if write_behind:
        write_behind_with(aggregator)  # a write-behind process whose commits succeed
    assert [r.outcome for r in reports] == ["store_error", "store_error"]
    assert _articles(aggregator) == before
    assert _window_is_the_store(aggregator)
    assert _search_index_is_the_articles(aggregator)
    # Nothing of the failed group is held over for the next transaction's index rows.
    aggregator.ingest_group([("second", 0, _entries(range(6, 9), "second"), fetched, None)])
    assert _search_index_is_the_articles(aggregator)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def _behind_desk_and_expected(tmp_path):
    """A desk of two sources written behind, and the articles that writing their two groups
    in place stores."""
    fetched = datetime(2026, 3, 1, tzinfo=UTC)
    straight = _desk(tmp_path, "straight", ("first", "second"))
    for name, numbers in (("first", range(3)), ("second", range(3, 6))):
        straight.ingest_group([(name, 0, _entries(numbers, name), fetched, None)])
    expected = _articles(straight)
    straight.close()
    return _desk(tmp_path, "behind", ("first", "second"), write_behind=True), expected


def test_a_write_behind_process_that_dies_loses_no_group(tmp_path, caplog):
    """A write-behind process killed while it writes: the writer writes the group again
    itself, and the next group goes to a fresh process."""
    aggregator, expected = _behind_desk_and_expected(tmp_path)
    fetched = datetime(2026, 3, 1, tzinfo=UTC)
    write_behind_with(aggregator, partial(dies_in_first_write, str(tmp_path / "died")))
    reports = aggregator.ingest_group([("first", 0, _entries(range(3), "first"), fetched,
                                        None)])
    assert [r.outcome for r in reports] == ["ok"]
    assert (tmp_path / "died").exists() and "written again" in caplog.text
    assert _reader_count(aggregator.store.path) == 3
    dead = aggregator._write_behind.pid
    caplog.clear()
    reports = aggregator.ingest_group([("second", 0, _entries(range(3, 6), "second"),
                                        fetched, None)])
    assert [r.outcome for r in reports] == ["ok"]
    assert "written again" not in caplog.text
    assert aggregator._write_behind.pid not in (None, dead)
    assert _articles(aggregator) == expected
    assert _window_is_the_store(aggregator) and _search_index_is_the_articles(aggregator)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def test_a_write_behind_process_that_cannot_start_leaves_the_group_to_the_writer(
        tmp_path, monkeypatch, caplog):
    """No process can be started (a limit on processes): the writer writes the group
    itself, and tries a process again for the next."""
    aggregator, expected = _behind_desk_and_expected(tmp_path)
    fetched = datetime(2026, 3, 1, tzinfo=UTC)
    starts = []

    class NoProcesses(store_module.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            starts.append(1)
            raise OSError(11, "Resource temporarily unavailable")
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "ProcessPoolExecutor", NoProcesses)
        reports = aggregator.ingest_group([("first", 0, _entries(range(3), "first"),
                                            fetched, None)])
    assert [r.outcome for r in reports] == ["ok"] and starts
    assert "written here" in caplog.text
    assert _window_is_the_store(aggregator) and not aggregator._reads.pending
    reports = aggregator.ingest_group([("second", 0, _entries(range(3, 6), "second"),
                                        fetched, None)])
    assert [r.outcome for r in reports] == ["ok"]
    assert aggregator._write_behind.pid is not None
    assert _articles(aggregator) == expected
    assert _search_index_is_the_articles(aggregator)
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def test_a_damaged_term_vector_is_named_at_the_restart(tmp_path):
    aggregator = _desk(tmp_path, "damaged")
    aggregator.ingest_entries("desk", 0, _entries(range(4)), datetime(2026, 3, 1, tzinfo=UTC))
    conn = aggregator.store.db.conn
    [vector] = conn.execute("SELECT term_vector FROM article_fingerprints "
                            "WHERE article_id = 3").fetchone()
    conn.execute("UPDATE article_fingerprints SET term_vector = ? WHERE article_id = 3",
                 [vector + b"\x00"])
    with pytest.raises(store_module.StoreError, match="article 3's stored term vector is"):
        load_clusterer(aggregator.store, aggregator.settings, aggregator.signer)
    aggregator.close()
