from __future__ import annotations

import sqlite3

import pytest

from aggregator.errors import SchemaTooNewError, StoreError
from aggregator.store import MIGRATIONS, PAGE_SIZE, Store


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
