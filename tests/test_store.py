from __future__ import annotations

import json
import re
import sqlite3
from concurrent.futures import Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.errors import SchemaTooNewError, StoreError
from aggregator.store import MIGRATIONS, PAGE_SIZE, StagedWrites, Store


def test_migrations_are_recorded_and_running_them_again_does_nothing(tmp_path):
    path = str(tmp_path / "a.db")
    store = Store(path)
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert store.migrate() == []
    store.close()
    again = Store(path)
    assert again.migrate() == []
    assert "article_stories" in again.db.view_names()
    indexes = {row[0] for row in again.db.execute("SELECT name FROM sqlite_master "
                                                  "WHERE type = 'index'")}
    assert "articles_published" in indexes and "articles_content_hash" not in indexes
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_new_store_has_large_pages_and_an_old_one_keeps_its_own(tmp_path, monkeypatch):
    new = Store(str(tmp_path / "new.db"))
    assert new.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
    new.close()
    # A store made before with SQLite's default pages opens, reads and writes as it was.
    monkeypatch.setattr("aggregator.store.PAGE_SIZE", 4096)
    old = Store(str(tmp_path / "old.db"))
    with old.transaction() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('probe', 'kept')")
    old.close()
    monkeypatch.undo()
    reopened = Store(str(tmp_path / "old.db"))
    assert reopened.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    with reopened.transaction() as conn:
        conn.execute("UPDATE meta SET value = 'written' WHERE key = 'probe'")
    assert reopened.db.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone()[0] \
        == "written"
    assert reopened.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reopened.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    path = str(tmp_path / "a.db")
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO _migrations VALUES ('999_from_the_future', '2030-01-01')")
    with pytest.raises(SchemaTooNewError, match="newer version.*999_from_the_future"):
        Store(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        Store(str(path))


def test_a_failed_migration_leaves_nothing_half_done(tmp_path, monkeypatch):
    def broken(db):
        db.conn.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr("aggregator.store.MIGRATIONS", [*MIGRATIONS, ("002_broken", broken)])
    with pytest.raises(StoreError, match="boom"):
        Store(str(tmp_path / "a.db"))
    conn = sqlite3.connect(tmp_path / "a.db")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables and "articles" in tables
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == [
        name for name, _ in MIGRATIONS]


def test_article_stories_view_has_the_documented_columns(tmp_path):
    store = Store(str(tmp_path / "a.db"))
    columns = [row[1] for row in store.db.execute("PRAGMA table_info(article_stories)")]
    for column in ["article_id", "guid", "url", "source", "title", "published", "story_id",
                   "is_canonical", "relation", "similarity"]:
        assert column in columns


def _article(number: int, title: str, text: str):
    from datetime import UTC, datetime

    from aggregator.normalize import NormalizedArticle

    when = datetime(2026, 3, 1, number, tzinfo=UTC)
    return NormalizedArticle(
        source="desk", guid=f"g{number}", url=f"https://desk.example/{number}",
        canonical_url=f"https://desk.example/{number}", title=title, author=None,
        published=when, has_published=True, fetched=when, text=text,
        content_hash=f"h{number}", identity_keys=(f"guid:g{number}",))


def _store_migrated_to(path: str, migrations: int, monkeypatch) -> Store:
    """A store as a version with only the first ``migrations`` made it, holding source 1;
    opened again after ``monkeypatch.undo()``, it takes the rest."""
    monkeypatch.setattr("aggregator.store.MIGRATIONS", MIGRATIONS[:migrations])
    old = Store(path)
    with old.transaction() as conn:
        conn.execute("INSERT INTO sources (id, name, config_url, url, created_at) "
                     "VALUES (1, 'desk', 'u', 'u', 'now')")
    return old


def _old_solo_article(conn, article_id: int, title: str, text: str) -> None:
    """An article of source 1 alone in its story, stored with clustering off, as the versions
    before migration 021 wrote it (this version's writer counts into columns it adds); its
    source's ``article_count`` as the version's own rules keep it."""
    conn.execute("INSERT INTO stories (id, canonical_article_id, title, first_seen, last_seen, "
                 "first_published, last_published, article_count, source_count) "
                 "VALUES (?1, ?1, ?2, 'first', 'first', 'first', 'first', 1, 1)",
                 [article_id, title])
    conn.execute("INSERT INTO articles (id, source_id, identity_key, title, published, "
                 "published_from_feed, fetched, text, content_hash, word_count, story_id, "
                 "relation, similarity, counted_terms) VALUES (?1, 1, 'key:' || ?1, ?2, "
                 "'first', 1, 'first', ?3, 'h', 1, ?1, 'canonical', 1.0, '')",
                 [article_id, title, text])
    conn.execute("INSERT INTO article_keys (key, article_id) VALUES ('key:' || ?1, ?1)",
                 [article_id])
    conn.execute("INSERT INTO articles_fts (rowid, title, text) VALUES (?, ?, ?)",
                 [article_id, title, text])


def _count_violations(store: Store) -> list:
    """What ``aggregator check`` finds wrong with the store's kept counts."""
    from aggregator.check import check_store
    from aggregator.config import ClusteringSettings

    return [v for v in check_store(store, ClusteringSettings(), signatures=False)
            if "counts" in v.invariant]


def _migrated_again(old: Store, monkeypatch) -> tuple[Store, set[str]]:
    """``old`` (from ``_store_migrated_to``) opened with every migration, and its triggers."""
    old.close()
    monkeypatch.undo()
    store = Store(old.path)
    return store, {row[0] for row in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def test_the_search_index_merges_sixteen_segments_at_a_time_and_finds_what_it_found(
        tmp_path, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from aggregator.normalize import NormalizedArticle
    from aggregator.store import SEARCH_AUTOMERGE, SEARCH_HASH_BYTES

    words = ["harbour", "bridge", "ferry", "strike", "council", "budget", "river", "flood",
             "school", "runway", "tram", "museum"]

    def article(number: int) -> NormalizedArticle:
        when = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=number)
        picked = [words[(number * step) % len(words)] for step in (1, 3, 5, 7)]
        return NormalizedArticle(
            source="desk", guid=f"g{number}", url=f"https://desk.example/{number}",
            canonical_url=f"https://desk.example/{number}", title=" ".join(picked[:2]),
            author=None, published=when, has_published=True, fetched=when,
            text=" ".join(picked * (1 + number % 4)), content_hash=f"h{number}",
            identity_keys=(f"guid:g{number}",))

    def fill(store: Store, numbers: range, as_before: bool = False) -> None:
        # A transaction for every three articles: each writes a segment of its own, so
        # that both stores merge segments many times.
        for start in numbers[::3]:
            batch = [article(n) for n in range(start, min(start + 3, numbers.stop))]
            with store.transaction() as conn:
                if as_before:
                    for number, written in enumerate(batch, start):
                        _old_solo_article(conn, number, written.title, written.text)
                else:
                    store.insert_solo_articles(conn, 1, batch, [6] * len(batch), {}, "first")

    def settings(store: Store) -> dict:
        return dict(store.db.execute("SELECT k, v FROM articles_fts_config").fetchall())

    def matches(store: Store) -> list[list[tuple]]:
        return [store.db.execute("SELECT rowid, rank FROM articles_fts WHERE articles_fts "
                                 "MATCH ? ORDER BY rank, rowid", [word]).fetchall()
                for word in [*words, "harbour OR tram", "\"bridge ferry\""]]

    # A store made before the settings: SQLite's (merges of 4, 1 MB of pending terms).
    before = _store_migrated_to(str(tmp_path / "before.db"), 11, monkeypatch)
    assert "automerge" not in settings(before)
    fill(before, range(1, 121), as_before=True)
    monkeypatch.undo()
    # The same articles in a store that had the settings from the start ...
    after = Store(str(tmp_path / "after.db"))
    with after.transaction() as conn:
        conn.execute("INSERT INTO sources (id, name, config_url, url, created_at) "
                     "VALUES (1, 'desk', 'u', 'u', 'now')")
    assert settings(after)["automerge"] == SEARCH_AUTOMERGE == 16
    assert settings(after)["hashsize"] == SEARCH_HASH_BYTES
    fill(after, range(1, 241))
    # ... and in the old one, which takes them when it is opened again.
    old, _triggers = _migrated_again(before, monkeypatch)
    assert settings(old)["automerge"] == SEARCH_AUTOMERGE
    fill(old, range(121, 241))
    assert len(matches(old)[0]) > 20
    assert matches(old) == matches(after)
    for store in (old, after):
        store.db.execute("INSERT INTO articles_fts (articles_fts, rank) "
                         "VALUES ('integrity-check', 1)")
        store.close()


def test_new_articles_enter_the_search_index_when_their_transaction_commits(tmp_path,
                                                                             monkeypatch):
    from aggregator.check import check_store
    from aggregator.config import ClusteringSettings

    path = str(tmp_path / "a.db")
    old = _store_migrated_to(path, 7, monkeypatch)
    with old.transaction() as conn:
        # Indexed by the trigger that older stores have.
        conn.execute("INSERT INTO articles (id, source_id, identity_key, title, published, "
                     "published_from_feed, fetched, text, content_hash, word_count, "
                     "term_counts) VALUES (1, 1, 'guid:g1', 'Harbour bridge reopens', 'a', 1, "
                     "'a', 'Cables.', 'h1', 1, '{}')")
    store, triggers = _migrated_again(old, monkeypatch)
    assert "articles_fts_insert" not in triggers and "articles_fts_delete" in triggers
    with store.transaction() as conn:
        store.insert_solo_articles(conn, 1, [_article(2, "Ferries run again", "Strike over.")],
                                   [2], {}, "first")
        with pytest.raises(RuntimeError), store.savepoint(conn):
            store.insert_solo_articles(conn, 1, [_article(3, "Trams halted", "Rolledback.")],
                                       [1], {}, "first")
            raise RuntimeError("this source fails")
        # The id of the rolled-back article is given again, to an article of its own text.
        [third] = store.insert_solo_articles(
            conn, 1, [_article(4, "Airport expands", "A new runway.")], [3], {}, "first")
    assert third == 3

    def found(query: str) -> list[int]:
        return [row[0] for row in store.db.execute(
            "SELECT rowid FROM articles_fts WHERE articles_fts MATCH ? ORDER BY rowid",
            [query])]

    assert found("harbour") == [1] and found("ferries") == [2] and found("runway") == [3]
    assert found("rolledback") == [] and found("trams") == []
    store.db.execute("INSERT INTO articles_fts (articles_fts, rank) "
                     "VALUES ('integrity-check', 1)")

    def index_violations() -> list[str]:
        return [v.detail for v in check_store(store, ClusteringSettings(), signatures=False)
                if "full-text index" in v.invariant]

    assert index_violations() == []
    with store.transaction() as conn:
        conn.execute("INSERT INTO articles_fts (articles_fts, rowid, title, text) "
                     "VALUES ('delete', 2, 'Ferries run again', 'Strike over.')")
    assert index_violations() == ["article 2 is not in the full-text index (articles_fts)"]
    store.close()


def test_source_article_counts_are_kept_by_the_writer_after_migration_011(tmp_path,
                                                                          monkeypatch):

    path = str(tmp_path / "a.db")
    old = _store_migrated_to(path, 10, monkeypatch)
    with old.transaction() as conn:
        _old_solo_article(conn, 1, "Harbour bridge reopens", "Cables.")
    # Counted by the trigger before 011.
    assert old.db.execute("SELECT article_count FROM sources").fetchone() == (1,)
    store, triggers = _migrated_again(old, monkeypatch)
    assert "articles_count_insert" not in triggers and "articles_count_delete" in triggers
    with store.transaction() as conn:
        store.insert_solo_articles(conn, 1, [_article(n, f"Ferry {n}", "Runs.")
                                             for n in (2, 3)], [1, 1], {}, "first")
        with pytest.raises(RuntimeError), store.savepoint(conn):
            store.insert_solo_articles(conn, 1, [_article(4, "Tram", "Rolled back.")], [1],
                                       {}, "first")
            raise RuntimeError("this source fails")
    count = "SELECT article_count FROM sources WHERE id = 1"
    assert store.db.execute(count).fetchone() == (3,)
    assert _count_violations(store) == []
    store.close()


def test_sources_count_their_repeats_from_migration_021(tmp_path, monkeypatch):

    old = _store_migrated_to(str(tmp_path / "a.db"), 20, monkeypatch)
    with old.transaction() as conn:
        for number in (1, 2, 3, 4):
            _old_solo_article(conn, number, f"Ferry {number}", "Runs.")
        conn.execute("UPDATE sources SET article_count = 4")
        # Articles 2 and 3 joined article 1's story, as a copy and as another write-up.
        conn.execute("UPDATE articles SET story_id = 1, relation = CASE id WHEN 2 THEN "
                     "'duplicate' ELSE 'same_story' END WHERE id IN (2, 3)")
        conn.execute("DELETE FROM stories WHERE id IN (2, 3)")
        conn.execute("UPDATE stories SET article_count = 3 WHERE id = 1")
    store, triggers = _migrated_again(old, monkeypatch)
    assert "articles_relation_count" in triggers
    counts = "SELECT article_count, duplicate_count, same_story_count FROM sources"
    assert store.db.execute(counts).fetchone() == (4, 1, 1) and _count_violations(store) == []
    indexes = {row[0] for row in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "articles_same_story" not in indexes and "articles_duplicates" in indexes
    # A relation changed (a new canonical, a correction, recluster) and an article deleted
    # (retention) are counted by trigger; one written again unchanged is not counted twice.
    for statement, expected in [
        ("UPDATE articles SET relation = 'same_story' WHERE id = 2", (4, 0, 2)),
        ("UPDATE articles SET relation = 'same_story' WHERE id = 2", (4, 0, 2)),
        ("UPDATE articles SET relation = 'duplicate' WHERE id = 3", (4, 1, 1)),
        ("UPDATE articles SET relation = NULL WHERE id IN (2, 3)", (4, 0, 0)),
        ("UPDATE articles SET relation = 'duplicate' WHERE id IN (2, 3)", (4, 2, 0)),
        ("DELETE FROM article_keys WHERE article_id = 3; DELETE FROM articles WHERE id = 3",
         (3, 1, 0)),
    ]:
        with store.transaction() as conn:
            for one in statement.split("; "):
                conn.execute(one)
        assert store.db.execute(counts).fetchone() == expected, statement
    # New articles are counted by the writer, by their relation as written.
    staged = StagedWrites()
    for number, relation in [(5, "duplicate"), (6, "same_story"), (7, "same_story")]:
        staged.articles.append([number, 1, f"g{number}", None, None, f"key:{number}", "T",
                                None, "first", 1, "first", "x", "h", 1, 1, relation, 0.5,
                                "{}", ""])
    with store.transaction() as conn:
        staged.write(conn)
    assert store.db.execute(counts).fetchone() == (6, 2, 2)
    with store.transaction() as conn:
        conn.execute("UPDATE stories SET article_count = 5 WHERE id = 1")  # 1, 2 and 5-7
        conn.execute("UPDATE sources SET same_story_count = 5")
    [violation] = _count_violations(store)
    assert violation.detail == ("source 'desk': stored 6 articles, 2 duplicates, 5 other "
                                "write-ups; real 6, 2, 2")
    store.close()


def test_daily_ingest_reads_counts_kept_by_day_and_source_from_migration_023(tmp_path,
                                                                             monkeypatch):

    old = _store_migrated_to(str(tmp_path / "a.db"), 22, monkeypatch)
    grouped = ("SELECT substr(a.fetched, 1, 10) AS day, s.name AS source, count(*), "
               "sum(a.relation = 'canonical'), sum(a.relation = 'duplicate'), "
               "sum(a.relation = 'same_story') FROM articles a JOIN sources s "
               "ON s.id = a.source_id GROUP BY day, s.name")
    with old.transaction() as conn:
        conn.execute("INSERT INTO sources (id, name, config_url, url, created_at) "
                     "VALUES (2, 'wire', 'w', 'w', 'now')")
        for number in range(1, 7):
            _old_solo_article(conn, number, f"Ferry {number}", "Runs.")
        # Two days, two sources; 2 and 3 a copy and a write-up of 1, 5 a write-up of 4.
        conn.execute("UPDATE articles SET fetched = CASE WHEN id <= 3 "
                     "THEN '2026-03-01T23:59:59Z' ELSE '2026-03-02T00:00:00Z' END, "
                     "source_id = CASE WHEN id IN (3, 5) THEN 2 ELSE 1 END")
        conn.execute("UPDATE articles SET story_id = 1, relation = 'duplicate' WHERE id = 2")
        conn.execute("UPDATE articles SET story_id = 1, relation = 'same_story' WHERE id = 3")
        conn.execute("UPDATE articles SET story_id = 4, relation = 'same_story' WHERE id = 5")
        conn.execute("DELETE FROM stories WHERE id IN (2, 3, 5)")
        conn.execute("UPDATE stories SET article_count = 3, source_count = 2 WHERE id = 1")
        conn.execute("UPDATE stories SET article_count = 2, source_count = 2 WHERE id = 4")
        conn.execute("UPDATE sources SET article_count = CASE id WHEN 1 THEN 4 ELSE 2 END, "
                     "duplicate_count = id = 1, same_story_count = 2 * (id = 2)")
        before = conn.execute(grouped).fetchall()
    store, _triggers = _migrated_again(old, monkeypatch)
    assert store.db.execute("SELECT * FROM daily_ingest").fetchall() == before == [
        ("2026-03-01", "desk", 2, 1, 1, 0), ("2026-03-01", "wire", 1, 0, 0, 1),
        ("2026-03-02", "desk", 2, 2, 0, 0), ("2026-03-02", "wire", 1, 0, 0, 1)]
    assert _count_violations(store) == []
    # A new canonical and a deleted article are counted on the day the article was fetched.
    with store.transaction() as conn:
        conn.execute("UPDATE articles SET relation = 'canonical' WHERE id = 5")
        conn.execute("UPDATE articles SET relation = 'same_story' WHERE id = 4")
        conn.execute("DELETE FROM article_keys WHERE article_id = 6")
        conn.execute("DELETE FROM articles WHERE id = 6")
        conn.execute("DELETE FROM stories WHERE id = 6")
        conn.execute("UPDATE stories SET canonical_article_id = 5 WHERE id = 4")
    assert store.db.execute("SELECT * FROM daily_ingest").fetchall() == \
        store.db.execute(grouped).fetchall() == [
            ("2026-03-01", "desk", 2, 1, 1, 0), ("2026-03-01", "wire", 1, 0, 0, 1),
            ("2026-03-02", "desk", 1, 0, 0, 1), ("2026-03-02", "wire", 1, 1, 0, 0)]
    assert _count_violations(store) == []
    # Every article of a day deleted: the day leaves the view, as it did.
    with store.transaction() as conn:
        conn.execute("UPDATE ingest_counts SET articles = 0, canonical = 0 "
                     "WHERE day = '2026-03-02' AND source_id = 2")
    assert ("2026-03-02", "wire", 0, 0, 0, 0) not in store.db.execute(
        "SELECT * FROM daily_ingest").fetchall()
    [violation] = _count_violations(store)
    assert violation.detail == ("day 2026-03-02 of source 2: stored 0 articles (0 canonical, "
                                "0 duplicates, 0 other write-ups), real 1 (1, 0, 0)")
    store.close()


def test_daily_fetches_read_counts_kept_by_day_and_source_from_migration_023(tmp_path,
                                                                             monkeypatch):
    from datetime import UTC, datetime


    old = _store_migrated_to(str(tmp_path / "a.db"), 22, monkeypatch)
    grouped = ("SELECT substr(f.started_at, 1, 10) AS day, s.name AS source, count(*), "
               "sum(f.outcome = 'ok'), sum(f.outcome = 'not_modified'), "
               "sum(f.outcome NOT IN ('ok', 'not_modified')), sum(coalesce(f.new_articles, 0)), "
               "round(avg(f.duration_ms)) FROM fetch_attempts f JOIN sources s "
               "ON s.id = f.source_id GROUP BY day, s.name")
    with old.transaction() as conn:
        conn.executemany(
            "INSERT INTO fetch_attempts (source_id, started_at, duration_ms, url, status, "
            "outcome, new_articles) VALUES (1, ?, ?, 'u', ?, ?, ?)",
            [("2026-03-01T23:59:59Z", 10, 200, "ok", 3), ("2026-03-01T00:00:00Z", 21, 304,
                                                           "not_modified", None),
             ("2026-03-02T08:00:00Z", 7, 500, "http_error", None)])
        before = conn.execute(grouped).fetchall()
    store, triggers = _migrated_again(old, monkeypatch)
    assert "fetch_attempts_count_delete" in triggers
    assert store.db.execute("SELECT * FROM daily_fetches").fetchall() == before == [
        ("2026-03-01", "desk", 2, 1, 1, 0, 3, 16.0), ("2026-03-02", "desk", 1, 0, 0, 1, 0, 7.0)]
    # Recorded by the writer, alone and staged with a write group; deleted by retention.
    store.record_fetch(1, started=datetime(2026, 3, 2, 9, tzinfo=UTC), duration_ms=8, url="u",
                       status=200, outcome="ok", error=None, size=1, entries=1,
                       new_articles=1, state={})
    staged = StagedWrites()
    staged.record_fetch(1, started=datetime(2026, 3, 3, tzinfo=UTC), duration_ms=5, url="u",
                        status=304, outcome="not_modified", error=None, size=None,
                        entries=None, new_articles=None, state={})
    with store.transaction() as conn:
        staged.write(conn)
        store.purge_fetch_attempts(conn, datetime(2026, 3, 1, 12, tzinfo=UTC), 10)
    assert store.db.execute("SELECT * FROM daily_fetches").fetchall() == \
        store.db.execute(grouped).fetchall() == [
            ("2026-03-01", "desk", 1, 1, 0, 0, 3, 10.0),
            ("2026-03-02", "desk", 2, 1, 0, 1, 1, 8.0),
            ("2026-03-03", "desk", 1, 0, 1, 0, 0, 5.0)]
    assert _count_violations(store) == []
    with store.transaction() as conn:
        conn.execute("UPDATE fetch_days SET not_modified = 0 WHERE day = '2026-03-03'")
    [violation] = _count_violations(store)
    assert violation.detail == ("fetches on 2026-03-03 of source 1: stored 1 (0 ok, 0 not "
                                "modified, 0 new articles, 5 ms), real 1 (0, 1, 0, 5)")
    store.close()


def test_stories_count_their_read_versions_from_migration_024(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from aggregator.reading import mark_stories, unread_story_ids
    from aggregator.store import COUNT_DAYS_OF_ARTICLES

    old = _store_migrated_to(str(tmp_path / "a.db"), 23, monkeypatch)
    with old.transaction() as conn:
        for number in (1, 2, 3, 4):
            _old_solo_article(conn, number, f"Ferry {number}", "Runs.")
        conn.execute("UPDATE sources SET article_count = 4")
        conn.execute("UPDATE stories SET last_seen = '2026-03-0' || id || 'T00:00:00Z'")
        # Article 2 joined article 1's story; both versions read, article 3 only saved.
        conn.execute("UPDATE articles SET story_id = 1, relation = 'same_story' WHERE id = 2")
        conn.execute("DELETE FROM stories WHERE id = 2")
        conn.execute("UPDATE stories SET article_count = 2 WHERE id = 1")
        conn.executemany("INSERT INTO article_marks (article_id, read_at, saved_at) "
                         "VALUES (?, ?, ?)", [(1, "r", None), (2, "r", "s"), (3, None, "s")])
        # The daily counts as that version's writer keeps them.
        conn.execute(COUNT_DAYS_OF_ARTICLES)
    store, triggers = _migrated_again(old, monkeypatch)
    assert {"article_marks_read_insert", "article_marks_read_update",
            "article_marks_read_delete", "articles_read_delete",
            "articles_read_story"} <= triggers
    counts = "SELECT id, read_versions FROM stories ORDER BY id"
    assert store.db.execute(counts).fetchall() == [(1, 2), (3, 0), (4, 0)]
    assert _count_violations(store) == []
    since = datetime(2026, 3, 1, tzinfo=UTC)
    assert unread_story_ids(store.db.conn, since) == [3, 4]
    plan = [row[3] for row in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM stories INDEXED BY stories_unread "
        "WHERE last_seen >= ? AND read_versions = 0", ["x"])]
    assert plan == ["SEARCH stories USING COVERING INDEX stories_unread (last_seen>?)"]
    # A mark set, cleared, set again and deleted; an article moved to another story (a
    # correction, ``recluster``), out of every story and deleted (retention).
    store.db.conn.isolation_level = None
    now = datetime(2026, 3, 5, tzinfo=UTC)
    for change, expected, unread in [
        (lambda c: mark_stories(c, [3], "read", True, now), [(1, 2), (3, 1), (4, 0)], [4]),
        (lambda c: mark_stories(c, [3], "read", True, now), [(1, 2), (3, 1), (4, 0)], [4]),
        (lambda c: mark_stories(c, [1], "read", False, now), [(1, 0), (3, 1), (4, 0)],
         [1, 4]),
        (lambda c: mark_stories(c, [1, 4], "read", True, now), [(1, 2), (3, 1), (4, 1)], []),
        (lambda c: c.execute("UPDATE articles SET story_id = 4 WHERE id = 2"),
         [(1, 1), (3, 1), (4, 2)], []),
        (lambda c: c.execute("UPDATE article_marks SET read_at = NULL WHERE article_id = 1"),
         [(1, 0), (3, 1), (4, 2)], [1]),
        (lambda c: c.execute("DELETE FROM article_marks WHERE article_id = 3"),
         [(1, 0), (3, 0), (4, 2)], [1, 3]),
        (lambda c: c.execute("UPDATE articles SET story_id = NULL WHERE id = 4"),
         [(1, 0), (3, 0), (4, 1)], [1, 3]),
        (lambda c: c.execute("UPDATE articles SET story_id = 4 WHERE id = 4"),
         [(1, 0), (3, 0), (4, 2)], [1, 3]),
        (lambda c: (c.execute("DELETE FROM article_keys WHERE article_id = 2"),
                    c.execute("DELETE FROM articles WHERE id = 2")),
         [(1, 0), (3, 0), (4, 1)], [1, 3]),
    ]:
        change(store.db.conn)
        assert store.db.execute(counts).fetchall() == expected
        assert unread_story_ids(store.db.conn, since) == unread
    assert store.db.execute("SELECT count(*) FROM article_marks").fetchone() == (2,)
    with store.transaction() as conn:
        conn.execute("UPDATE articles SET story_id = 1 WHERE id = 4")
        conn.execute("UPDATE stories SET article_count = 2 WHERE id = 1")
        conn.execute("DELETE FROM stories WHERE id = 4")
        conn.execute("UPDATE stories SET read_versions = 0 WHERE id = 1")
    [violation] = _count_violations(store)
    assert violation.detail == "story 1: stored 0 versions read, real 1"
    store.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["read", "unread", "save", "unsave", "move",
                                           "detach", "delete"]),
                          st.integers(1, 6), st.integers(1, 4)), max_size=25))
def test_read_versions_follow_any_order_of_marks_moves_and_deletes(tmp_path, steps):
    """Whatever the order of marks set and cleared, articles moved between stories, out of
    every story and deleted, each story's ``read_versions`` is its members' read marks."""
    from datetime import UTC, datetime

    from aggregator.reading import mark_stories

    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.db"
    store = Store(str(path))
    conn = store.db.conn
    conn.isolation_level = None
    conn.execute("INSERT INTO sources (id, name, config_url, url, created_at) "
                 "VALUES (1, 'desk', 'u', 'u', 'now')")
    for number in range(1, 5):
        conn.execute("INSERT INTO stories (id, first_seen, last_seen, first_published, "
                     "last_published) VALUES (?, 'x', 'x', 'x', 'x')", [number])
    for number in range(1, 7):
        conn.execute("INSERT INTO articles (id, source_id, identity_key, title, published, "
                     "published_from_feed, fetched, text, content_hash, word_count, "
                     "story_id, relation, similarity, counted_terms) VALUES (?1, 1, "
                     "'key:' || ?1, 't', 'x', 1, 'x', 'x', 'h', 1, ?2, 'canonical', 1.0, '')",
                     [number, (number - 1) % 4 + 1])
        conn.execute("INSERT INTO articles_fts (rowid, title, text) VALUES (?, 't', 'x')",
                     [number])
    now = datetime(2026, 3, 1, tzinfo=UTC)
    marks = "UPDATE article_marks SET {column} = {value} WHERE article_id = ?"
    for action, article, story in steps:
        if action in ("read", "unread", "save", "unsave"):
            column = "read_at" if action in ("read", "unread") else "saved_at"
            on = action in ("read", "save")
            # Through the apps' path (every version of a story), or one mark alone.
            if article % 2:
                mark_stories(conn, [story], "read" if column == "read_at" else "saved", on,
                             now)
            else:
                conn.execute("INSERT OR IGNORE INTO article_marks (article_id) "
                             "SELECT id FROM articles WHERE id = ?", [article])
                conn.execute(marks.format(column=column, value="'m'" if on else "NULL"),
                             [article])
                conn.execute("DELETE FROM article_marks WHERE read_at IS NULL "
                             "AND saved_at IS NULL")
        elif action == "move":
            conn.execute("UPDATE articles SET story_id = ? WHERE id = ?", [story, article])
        elif action == "detach":
            conn.execute("UPDATE articles SET story_id = NULL WHERE id = ?", [article])
        else:
            conn.execute("DELETE FROM article_keys WHERE article_id = ?", [article])
            conn.execute("DELETE FROM articles WHERE id = ?", [article])
    assert conn.execute(
        "SELECT s.id, s.read_versions FROM stories s ORDER BY s.id").fetchall() == \
        conn.execute("SELECT s.id, count(m.article_id) FROM stories s LEFT JOIN articles a "
                     "ON a.story_id = s.id LEFT JOIN article_marks m ON m.article_id = a.id "
                     "AND m.read_at IS NOT NULL GROUP BY s.id ORDER BY s.id").fetchall()
    store.close()


def test_saved_marks_are_read_from_their_index_alone_after_migration_022(tmp_path,
                                                                         monkeypatch):
    from conftest import ROOT

    from aggregator.reading import saved_story_ids

    old = _store_migrated_to(str(tmp_path / "a.db"), 21, monkeypatch)
    with old.transaction() as conn:
        for number in (1, 2, 3):
            _old_solo_article(conn, number, f"Ferry {number}", "Runs.")
        conn.execute("UPDATE sources SET article_count = 3")
        conn.executemany("INSERT INTO article_marks (article_id, read_at, saved_at) "
                         "VALUES (?, ?, ?)", [(1, "r", "2026-03-01T00:00:01Z"),
                                              (2, None, "2026-03-01T00:00:02Z"),
                                              (3, "r", None)])
    store, _triggers = _migrated_again(old, monkeypatch)
    canned = json.loads((ROOT / "docker" / "datasette-metadata.json").read_text())[
        "databases"]["aggregator"]["queries"]["saved_stories"]["sql"]
    assert [(row[0], row[-1]) for row in store.db.execute(canned)] == [
        (2, "2026-03-01T00:00:02Z"), (1, "2026-03-01T00:00:01Z")]
    assert saved_story_ids(store.db.conn) == [1, 2]
    plan = [row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {canned}")]
    assert "SCAN m USING COVERING INDEX article_marks_saved" in plan
    store.close()


def test_fetch_counts_begin_from_the_stored_and_the_purged_attempts_after_migration_020(
        tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from aggregator.check import check_store
    from aggregator.config import ClusteringSettings

    old = _store_migrated_to(str(tmp_path / "a.db"), 19, monkeypatch)
    with old.transaction() as conn:
        conn.executemany(
            "INSERT INTO fetch_attempts (source_id, started_at, duration_ms, url, status, "
            "outcome) VALUES (1, '2026-04-01T00:00:00Z', 5, 'u', ?, ?)",
            [(200, "ok"), (200, "ok"), (304, "not_modified")])
        # What retention had deleted, as it kept the totals before 020.
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("purged_fetches:ok", "4"), ("purged_fetches:http_error", "2")])
    store, _triggers = _migrated_again(old, monkeypatch)
    counts = "SELECT outcome, attempts FROM fetch_counts ORDER BY outcome"
    assert store.db.execute(counts).fetchall() == [
        ("http_error", 2), ("not_modified", 1), ("ok", 6)]
    assert store.db.execute("SELECT count(*) FROM meta WHERE key LIKE 'purged_fetches%'"
                            ).fetchone() == (0,)
    with store.transaction() as conn:
        store.record_fetch(1, started=datetime(2026, 4, 2, tzinfo=UTC), duration_ms=5,
                           url="u", status=None, outcome="network_error", error="down",
                           size=None, entries=None, new_articles=None, state={}, conn=conn)
    assert store.db.execute(counts).fetchall()[1] == ("network_error", 1)
    assert [v for v in check_store(store, ClusteringSettings(), signatures=False)
            if "fetch" in v.invariant] == []
    # An attempt stored without being counted (an edit by hand) breaks the invariant.
    store.db.execute("INSERT INTO fetch_attempts (source_id, started_at, duration_ms, url, "
                     "outcome) VALUES (1, '2026-04-03T00:00:00Z', 5, 'u', 'gone')")
    assert [v.detail for v in check_store(store, ClusteringSettings(), signatures=False)
            if "fetch" in v.invariant] == ["outcome 'gone': 1 attempts stored, 0 counted"]
    store.close()


@pytest.mark.parametrize(("statement", "one_row"), [
    ("INSERT INTO t (a, b) SELECT c0, c1 FROM {rows}", "INSERT INTO t (a, b) VALUES (?1, ?2)"),
    ("INSERT INTO t (a, b) SELECT c0, c1 FROM {rows} WHERE true ON CONFLICT(a) DO UPDATE "
     "SET b = b + excluded.b",
     "INSERT INTO t (a, b) VALUES (?1, ?2) ON CONFLICT(a) DO UPDATE SET b = b + excluded.b"),
    ("UPDATE t SET b = u.c1, c = (SELECT x FROM s WHERE id = u.c1), d = u.c10 "
     "FROM {rows} AS u WHERE t.id = u.c0",
     "UPDATE t SET b = ?2, c = (SELECT x FROM s WHERE id = ?2), d = ?11 WHERE t.id = ?1"),
])
def test_rows_written_one_at_a_time_use_statements_of_one_row(statement, one_row):
    from aggregator.store import _one_row

    assert _one_row(statement) == one_row


def test_every_statement_written_a_row_at_a_time_has_a_one_row_form():
    import aggregator.store as store_module
    from aggregator.store import _one_row

    statements = [value for name, value in vars(store_module).items()
                  if name.isupper() and isinstance(value, str) and "{rows}" in value]
    assert len(statements) >= 10
    store = Store(":memory:")
    for statement in statements:
        one_row = _one_row(statement)
        assert "{rows}" not in one_row and "SELECT c0" not in one_row and "u.c" not in one_row
        parameters = max(int(n) for n in re.findall(r"\?(\d+)", one_row))
        store.db.conn.execute("EXPLAIN " + one_row, [None] * parameters)  # valid here
    store.close()


def test_the_dashboard_benchmark_builds_a_searchable_store(tmp_path):
    """``benchmarks/queries.py`` fills its store in bulk, past the writer: its full-text index
    must still hold every article, or its search latencies would time an empty index."""
    import sys

    from conftest import ROOT

    from aggregator.check import check_store
    from aggregator.config import ClusteringSettings

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from queries import build

    store = build(str(tmp_path / "queries.db"), 300)
    title, article_id = store.db.execute("SELECT title, id FROM articles LIMIT 1").fetchone()
    matches = [row[0] for row in store.db.execute(
        "SELECT rowid FROM articles_fts WHERE articles_fts MATCH ?", [f'"{title}"'])]
    assert article_id in matches
    # ... and its sources' counts, which the canned dashboards read.
    assert [v for v in check_store(store, ClusteringSettings(), signatures=False)
            if "full-text index" in v.invariant or "stored counts" in v.invariant] == []
    store.close()


def test_the_writer_benchmark_times_static_methods_as_static_methods(tmp_path):
    """``benchmarks/writer.py --detail`` times ``Store.known_keys`` and other static
    methods: wrapped, they must still be called without an instance, and be put back."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from timing import timed_calls

    store = Store(str(tmp_path / "timed.db"))
    original = vars(Store)["known_keys"]
    spent: dict[str, float] = {}
    with timed_calls([(Store, "known_keys", "keys"), (Store, "checkpoint", "checkpoint")],
                     spent):
        with store.transaction() as conn:
            assert store.known_keys(conn, ["nothing"]) == set()
        store.checkpoint()
    assert set(spent) == {"keys", "checkpoint"}
    assert vars(Store)["known_keys"] is original and "checkpoint" not in vars(store)
    store.close()


def test_a_clustered_article_row_is_written_once_with_its_story_and_relation(tmp_path):
    """The clusterer places an article under the id its row will have before the row is
    inserted, so the row is written once, complete: no UPDATE of the articles table when the
    canonical stays, and the check finds the store consistent."""
    from datetime import UTC, datetime, timedelta

    from aggregator.check import check_store
    from aggregator.config import Config, Source
    from aggregator.parse import ParsedEntry
    from aggregator.pipeline import Aggregator

    config = Config(path=str(tmp_path / "a.toml"), database=str(tmp_path / "a.db"),
                    sources=tuple(Source(name=name, url=str(tmp_path / f"{name}.xml"),
                                         interval_s=3600) for name in ("desk", "wire")))
    aggregator = Aggregator(config)
    published = datetime(2026, 3, 1, 8, tzinfo=UTC)
    text = "<p>" + "Dockers walked out at dawn and the harbour stood still by noon. " * 15 + "</p>"
    aggregator.ingest_entries("desk", 0, [ParsedEntry(
        guid="first", link=None, title="Harbour strike closes the docks", published=published,
        content=text)], published)
    statements: list[str] = []
    aggregator.store.db.conn.set_trace_callback(statements.append)
    report = aggregator.ingest_entries("wire", 0, [ParsedEntry(
        guid="copy", link=None, title="Harbour strike closes docks",
        published=published + timedelta(hours=1), content=text)], published)
    aggregator.store.db.conn.set_trace_callback(None)

    assert report.new_articles == 1
    rows = aggregator.store.db.execute(
        "SELECT guid, story_id, relation, similarity >= 0.7 FROM articles ORDER BY id").fetchall()
    assert rows == [("first", 1, "canonical", 1), ("copy", 1, "duplicate", 1)]
    written = [found.group(1).upper() for found in (
        re.match(r"\s*(INSERT INTO|UPDATE) articles[\s(]", s, re.IGNORECASE)
        for s in statements) if found]
    # A statement that fires triggers is traced once for each of them.
    assert set(written) == {"INSERT INTO"}
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


@pytest.mark.parametrize("where", ["file", ":memory:"])
def test_a_restart_reads_the_names_of_the_terms_it_leaves_in_the_store(tmp_path, where):
    from aggregator.pipeline import read_terms_left_by_restart

    store = Store(str(tmp_path / "terms.sqlite") if where == "file" else ":memory:")
    store.db.conn.executemany(
        "INSERT INTO term_stats (id, term, document_frequency, prior_fraction, "
        "last_article_id) VALUES (?, ?, 1, 0.001, ?)",
        [(n, f"term{n}", n) for n in range(1, 5001)])
    # Read by a thread through its own connection (the rows committed), or at once.
    reading: Future = Future()
    read_terms_left_by_restart(store, 4000, reading)
    left = reading.result(timeout=30)
    old = [f"term{n}" for n in range(1, 4000)]
    assert left.added == len(old) and left.among(old) == old
    # Held by chance only: three in a million that one is.
    assert left.among([f"term{n}" for n in range(4000, 5001)]) == []
    store.close()


def test_terms_counted_before_their_last_article_was_kept_count_as_seen_in_the_newest(
        tmp_path, seed_config):
    from aggregator.config import load_config
    from aggregator.pipeline import Aggregator

    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()
    # The store as the version before kept it.
    with sqlite3.connect(config.database) as conn:
        conn.execute("ALTER TABLE term_stats DROP COLUMN last_article_id")
        conn.execute("DELETE FROM _migrations WHERE name = '009_term_last_article'")
    store = Store(config.database)
    assert "009_term_last_article" in store.applied_migrations()
    newest = store.db.execute("SELECT max(id) FROM articles").fetchone()[0]
    assert newest == 3
    last = [row[0] for row in store.db.execute("SELECT last_article_id FROM term_stats")]
    assert set(last) == {newest}
    store.close()
    # The next restart reads every one of them.
    reopened = Aggregator(config)
    assert not reopened.clusterer.stats.incomplete
    assert len(reopened.clusterer.vocabulary.ids) == len(last)
    reopened.close()


def _staged_article(staged, number: int, text: str, source_id: int = 1, lines=None):
    """Stage a story and its one article (``number``), as the writer stages them."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from aggregator.cluster import StoryOutcome

    article = _article(number, f"Story {number}", text)
    staged.create_story(number, article.published, article.fetched)
    fingerprint = SimpleNamespace(word_count=len(text.split()), counted_terms="harbour",
                                  salient=("harbour",))
    staged.insert_article(article_id=number, source_id=source_id, article=article,
                          story_id=number, relation="canonical", similarity=1.0,
                          fingerprint=fingerprint, term_vector=b"",
                          shingle_bytes=bytes([number]) * 8, salient_bytes=b"\x00\x01",
                          decision={"new_story": True})
    ts = article.published.timestamp()
    staged.apply_story_outcome(number, StoryOutcome(number, number, None, "first", {
        number: ("canonical", 1.0)}, ts, ts), article.fetched)
    staged.count_lines(source_id, lines or {}, datetime(2026, 3, 1, tzinfo=UTC))
    return article


@pytest.mark.parametrize("text", [
    "Plain words.", "", "a NUL \x00 inside", "\x00", "non-ASCII: Zürich, Кремль, 北京, 🚢",
    'quotes " and \\ backslashes', "line\nbreaks\tand\rreturns", "\u2028\u2029 separators"])
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("behind", [False, True], ids=["in place", "behind"])
def test_staged_rows_are_stored_exactly_as_given(tmp_path, text, count, behind):
    """Staged rows reach SQLite as parameters, in the writer's transaction or pickled to the
    write-behind process (which indexes the full-text rows at once): every text, blob and
    number is stored as it was given, either way."""
    from aggregator.store import StagedWrites, WriteBehind

    store = Store(str(tmp_path / "a.db"))
    store.sync_sources(_sources())
    staged = StagedWrites()
    articles = [_staged_article(staged, number, text) for number in range(1, count + 1)]
    if behind:
        writer = WriteBehind(store.path)
        writer.submit(staged).result()
        writer.close()
    else:
        with store.transaction() as conn:
            store.write_staged(conn, staged)
    rows = store.db.execute("SELECT title, text, similarity, typeof(similarity), relation, "
                            "story_id, published FROM articles ORDER BY id").fetchall()
    assert rows == [(article.title, text, 1.0, "real", "canonical", number,
                     f"2026-03-01T{number:02}:00:00Z")
                    for number, article in enumerate(articles, 1)]
    blobs = store.db.execute(
        "SELECT term_vector, typeof(term_vector), shingle_signature, salient_signature "
        "FROM article_fingerprints ORDER BY article_id").fetchall()
    assert blobs == [(b"", "blob", bytes([number]) * 8, b"\x00\x01")
                     for number in range(1, count + 1)]
    assert store.db.execute("SELECT rowid FROM articles_fts WHERE articles_fts MATCH "
                            "'story' ORDER BY rowid").fetchall() == [
        (number,) for number in range(1, count + 1)]
    store.close()


def _joined(staged, number: int, story_id: int, canonical: int, previous: int | None,
            members: int):
    """Article ``number`` staged into stored or staged story ``story_id``, which has
    ``members`` articles after it, with ``canonical`` its canonical from now on."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from aggregator.cluster import StoryOutcome

    article = _article(number, f"Story {number}", "Harbour news.")
    staged.insert_article(article_id=number, source_id=1, article=article, story_id=story_id,
                          relation="canonical" if canonical == number else "same_story",
                          similarity=0.5, fingerprint=SimpleNamespace(
                              word_count=2, counted_terms="harbour", salient=("harbour",)),
                          term_vector=b"", shingle_bytes=bytes([number]) * 8,
                          salient_bytes=b"\x00\x01", decision={"joined": story_id})
    relations = {member: ("canonical", 1.0) if member == canonical else ("same_story", 0.5)
                 for member in range(story_id, number + 1)}
    staged.apply_story_outcome(number, StoryOutcome(
        story_id, canonical, previous, None if previous == canonical else "better",
        relations, datetime(2026, 3, 1, story_id, tzinfo=UTC).timestamp(),
        article.published.timestamp(), members, 1), article.fetched)


@pytest.mark.parametrize("behind", [False, True], ids=["in place", "behind"])
def test_a_story_row_holds_its_last_canonical_title_and_counts(tmp_path, behind):
    """A story created and joined in one write is stored with what the last join left; a
    later write's join keeps the title while the canonical stays and takes the new
    canonical's title, staged with it or stored before, when it changes."""
    from aggregator.check import check_store
    from aggregator.config import ClusteringSettings
    from aggregator.store import StagedWrites, WriteBehind

    store = Store(str(tmp_path / "a.db"))
    store.sync_sources(_sources())
    writer = WriteBehind(store.path) if behind else None

    def write(staged):
        if writer is not None:
            writer.submit(staged).result()
        else:
            with store.transaction() as conn:
                store.write_staged(conn, staged)

    def story():
        return store.db.execute(
            "SELECT canonical_article_id, title, article_count, first_published, "
            "last_published FROM stories").fetchall()

    first = StagedWrites()
    _staged_article(first, 1, "Harbour news.")
    _joined(first, 2, story_id=1, canonical=2, previous=1, members=2)
    write(first)
    assert story() == [(2, "Story 2", 2, "2026-03-01T01:00:00Z", "2026-03-01T02:00:00Z")]
    kept = StagedWrites()
    _joined(kept, 3, story_id=1, canonical=2, previous=2, members=3)
    write(kept)
    assert story() == [(2, "Story 2", 3, "2026-03-01T01:00:00Z", "2026-03-01T03:00:00Z")]
    back = StagedWrites()
    _joined(back, 4, story_id=1, canonical=1, previous=2, members=4)
    write(back)
    assert story() == [(1, "Story 1", 4, "2026-03-01T01:00:00Z", "2026-03-01T04:00:00Z")]
    if writer is not None:
        writer.close()

    def title_violations():
        return [v.detail for v in check_store(store, ClusteringSettings(), signatures=False)
                if "title" in v.invariant]

    assert title_violations() == []
    store.db.execute("UPDATE stories SET title = 'Story 2'")
    assert title_violations() == ["story 1 has title 'Story 2', its canonical 'Story 1'"]
    store.close()


def _sources():
    from aggregator.config import Source

    return [Source(name="desk", url="https://desk.example/feed", interval_s=3600)]


def _counted(term: str, stored_id: int, last_article: int):
    """One article counted, with ``term`` in it."""
    import numpy as np

    from aggregator.store import TermCounts

    return TermCounts(1, np.array([stored_id]), [term], np.array([1]), np.array([0.001]),
                      np.array([last_article]))


def test_reads_count_a_group_written_behind_once_before_and_after_its_commit(tmp_path):
    """The writer reads the store with the staged groups not yet written added: a group
    handed to the write-behind process counts once, whether the snapshot read holds it or
    not, and ids go on after its rows."""
    from datetime import UTC, datetime

    from aggregator.store import StagedReads, StagedWrites, WriteBehind

    store = Store(str(tmp_path / "a.db"))
    store.sync_sources(_sources())
    reads = StagedReads(store)
    assert (reads.new_article_id(), reads.new_story_id()) == (1, 1)
    group = StagedWrites()
    _staged_article(group, 1, "Harbour news.", lines={"subscribe": 1, "harbour": 1})
    group.count_terms(_counted("harbour", 7, last_article=1))
    reads.pending.append(group)
    since = datetime(2026, 3, 1, tzinfo=UTC)

    def seen():
        return (reads.line_counts(1, ["subscribe", "other"]), reads.entries_since(1, since),
                reads.recall_terms(["harbour", "other"]), reads.recall_term_ids([7]),
                reads.known_keys(["guid:g1", "guid:g9"]),
                reads.shingle_signatures([1]))

    expected = ({"subscribe": 1}, 1, [(7, "harbour", 1, 0.001, 1)],
                [(7, "harbour", 1, 0.001, 1)], {"guid:g1"}, [b"\x01" * 8])
    assert seen() == expected  # staged only
    behind = WriteBehind(store.path)
    behind.submit(group).result()
    assert seen() == expected  # committed, still pending: counted once
    assert (reads.new_article_id(), reads.new_story_id()) == (2, 2)
    reads.pending.clear()
    assert seen() == expected  # the store alone
    # A later group's counts add to the stored ones.
    later = StagedWrites()
    _staged_article(later, 2, "More harbour news.", lines={"subscribe": 1})
    later.count_terms(_counted("harbour", 7, last_article=2))
    reads.pending.append(later)
    assert reads.line_counts(1, ["subscribe"]) == {"subscribe": 2}
    assert reads.recall_terms(["harbour"]) == [(7, "harbour", 2, 0.001, 2)]
    assert reads.entries_since(1, since) == 2
    with pytest.raises(RuntimeError, match="staged groups unwritten"):
        reads.reset_ids()
    behind.close()
    store.close()


def test_groups_written_behind_store_the_rows_that_groups_written_in_place_store(tmp_path,
                                                                               monkeypatch):
    """The same stream through write groups decided while the group before is written
    behind (a database file) and written in place (an in-memory database, which has no
    second connection): every table the same.  Terms leave memory after every group, and a
    group holds more articles than the window (100), so that terms counted in a group still
    being written leave memory and come back from the store."""
    import sys

    from conftest import ROOT

    from aggregator import pipeline
    from aggregator.config import ClusteringSettings, Config, Source

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stream import SyntheticStream

    monkeypatch.setattr(pipeline, "EVICT_EVERY", 10)
    monkeypatch.setattr(pipeline, "FORGET_TERMS_MIN", 0)
    forget = pipeline.Aggregator._forget_unseen_terms

    def after_every_group(aggregator):
        aggregator._terms_kept = -1  # as if the vocabulary had just grown past its mark
        forget(aggregator)
    monkeypatch.setattr(pipeline.Aggregator, "_forget_unseen_terms", after_every_group)
    stored = {}
    for database in (str(tmp_path / "behind.db"), ":memory:"):
        stream = SyntheticStream(seed=5, per_day=2000)
        articles = [next(iter_stream) for iter_stream in [iter(stream)] for _ in range(600)]
        config = Config(path=str(tmp_path / "c.toml"), database=database, write_behind=True,
                        clustering=ClusteringSettings(window_articles=100),
                        sources=tuple(Source(name=s, url="https://x.example/f",
                                             interval_s=3600) for s in stream.sources))
        aggregator = pipeline.Aggregator(config)
        written = []
        for start in range(0, len(articles), 250):
            by_source: dict[str, list] = {}
            for article in articles[start:start + 250]:
                by_source.setdefault(article.source, []).append(article.entry)
            written.append(aggregator.submit_group([
                (source, 0, entries, entries[-1].published, None)
                for source, entries in by_source.items()]))
        assert all(r.outcome == "ok" for group in written for r in group.result())
        assert (aggregator._write_behind is not None) == (database != ":memory:")
        db = aggregator.store.db
        stored[database] = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                            for table in ("articles", "stories", "canonical_history",
                                          "term_stats", "article_fingerprints", "article_keys",
                                          "source_lines", "meta")}
        aggregator.close()
    behind, in_place = stored.values()
    assert len(behind["articles"]) == 600 and len(behind["stories"]) < 600
    for table in behind:
        assert behind[table] == in_place[table], table


def test_term_counts_become_the_terms_each_article_counted(tmp_path, seed_config):
    from aggregator.check import check_store
    from aggregator.config import load_config
    from aggregator.pipeline import Aggregator

    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()
    with sqlite3.connect(config.database) as conn:
        counted = conn.execute("SELECT id, counted_terms FROM articles ORDER BY id").fetchall()
        # The store as the version before kept it: each article's terms with their counts,
        # and '{}' for one stored with clustering off.
        conn.execute("ALTER TABLE articles ADD COLUMN term_counts TEXT NOT NULL DEFAULT '{}'")
        conn.executemany("UPDATE articles SET term_counts = ? WHERE id = ?", [
            (json.dumps({term: 1.0 + 2 * n for n, term in enumerate(terms.split(" "))}),
             article_id) for article_id, terms in counted])
        conn.execute("ALTER TABLE articles DROP COLUMN counted_terms")
        conn.execute("INSERT INTO articles (id, source_id, identity_key, title, published, "
                     "published_from_feed, fetched, text, content_hash, word_count) "
                     "SELECT 99, source_id, 'guid:off', 'Off', published, 1, fetched, 'x', "
                     "'h', 1 FROM articles WHERE id = 1")
        # Counted as that version's trigger counted it (since 011 the writer counts), and
        # by day as this version's writer counts.
        conn.execute("UPDATE sources SET article_count = article_count + 1 "
                     "WHERE id = (SELECT source_id FROM articles WHERE id = 99)")
        conn.execute("UPDATE ingest_counts SET articles = articles + 1 WHERE (day, source_id) "
                     "= (SELECT substr(fetched, 1, 10), source_id FROM articles WHERE id = 99)")
        conn.execute("DELETE FROM _migrations WHERE name = '010_counted_terms'")
    store = Store(config.database)
    assert "010_counted_terms" in store.applied_migrations()
    columns = {row[1] for row in store.db.execute("PRAGMA table_info(articles)")}
    assert "term_counts" not in columns
    assert store.db.execute("SELECT id, counted_terms FROM articles ORDER BY id").fetchall() \
        == [*counted, (99, "")]
    with store.transaction() as conn:
        conn.execute("DELETE FROM articles WHERE id = 99")
    assert check_store(store, config.clustering) == []
    store.close()


def test_staged_term_rows_are_found_by_name_and_by_id_the_last_counts_winning():
    import numpy as np

    from aggregator.store import StagedWrites, TermCounts

    staged = StagedWrites()
    staged.count_terms(TermCounts(2, np.array([7, 8]), ["harbour", "ferry"], np.array([2, 1]),
                                  np.array([0.001, 0.002]), np.array([3, 4])))
    staged.count_terms(TermCounts(1, np.array([9, 7]), ["tram", "harbour"], np.array([1, 1]),
                                  np.array([0.003, 0.001]), np.array([5, 5])))
    assert staged.term_row(term="ferry") == (8, "ferry", 1, 0.002, 4)
    assert staged.term_row(term="harbour") == (7, "harbour", 1, 0.001, 5)
    assert staged.term_row(stored_id=9) == (9, "tram", 1, 0.003, 5)
    assert staged.term_row(stored_id=7) == (7, "harbour", 1, 0.001, 5)
    assert staged.term_row(term="comet") is None and staged.term_row(stored_id=1) is None
    # Counts staged later are found too.
    staged.count_terms(TermCounts(1, np.array([10]), ["comet"], np.array([1]),
                                  np.array([0.004]), np.array([6])))
    assert staged.term_row(term="comet") == (10, "comet", 1, 0.004, 6)
