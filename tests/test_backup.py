"""`aggregator backup`: consistent copies of a real SQLite store while a writer writes to it,
and a failed backup that leaves the previous one in place."""

from __future__ import annotations

import random
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregator.check import check_store
from aggregator.cli import main
from aggregator.config import load_config
from aggregator.parse import ParsedEntry, text_as_html
from aggregator.pipeline import Aggregator
from aggregator.retention import holding_window
from aggregator.store import Store

WORDS = ("harbour council budget storm river election court vaccine rocket bridge strike "
         "festival drought museum railway summit tariff wildfire satellite orchestra").split()


def entries(batch: int, count: int) -> list[ParsedEntry]:
    """``count`` new entries: a few stories, each told in several wordings."""
    chance = random.Random(batch)
    made = []
    for number in range(count):
        topic = chance.sample(WORDS, 4)
        text = " ".join(chance.choice(topic + WORDS) for _ in range(120))
        made.append(ParsedEntry(
            guid=f"urn:test:{batch}:{number}", link=f"https://example.org/{batch}/{number}",
            title=" ".join(topic).title(),
            published=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=batch * 60 + number),
            content=text_as_html(text)))
    return made


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def counts(database: Path) -> tuple[int, int]:
    with sqlite3.connect(database) as conn:
        return (conn.execute("SELECT count(*) FROM articles").fetchone()[0],
                conn.execute("SELECT count(*) FROM stories").fetchone()[0])


def backed_up(seed_config, tmp_path) -> tuple:
    """The seeds stored, and a backup of them (``copy.db``)."""
    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()
    copy = tmp_path / "copy.db"
    assert cli("backup", str(copy), "--config", str(seed_config)).exit_code == 0
    return config, copy


def test_backups_taken_while_the_writer_writes_are_whole(seed_config, tmp_path):
    config = load_config(seed_config, environ={})
    Aggregator(config).close()  # the store, migrated
    writing = threading.Event()
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        aggregator = Aggregator(config)
        try:
            batch = 0
            while not stop.is_set() and batch < 200:
                aggregator.ingest_entries("World Desk Daily", 0, entries(batch, 20),
                                          datetime.now(UTC))
                batch += 1
                writing.set()
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)
        finally:
            aggregator.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert writing.wait(30)
        copies = []
        for number in range(4):
            before = counts(Path(config.database))[0]
            copy = tmp_path / f"copy{number}.db"
            result = cli("backup", str(copy), "--config", str(seed_config))
            assert result.exit_code == 0, result.output
            after = counts(Path(config.database))[0]
            articles, _stories = counts(copy)
            assert before <= articles <= after
            copies.append((copy, articles))
    finally:
        stop.set()
        writer.join(60)
    assert not failures
    assert [articles for _copy, articles in copies] == sorted(articles
                                                              for _copy, articles in copies)
    assert copies[-1][1] > copies[0][1], "the writer wrote between the first and last copy"
    for copy, _articles in copies:
        # Each copy is one snapshot: every invariant of the store holds in it.
        store = Store(str(copy))
        try:
            assert check_store(store, config.clustering) == []
        finally:
            store.close()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert not Path(f"{copy}-wal").exists()


def test_a_backup_into_a_folder_is_named_by_the_time_and_compact_is_smaller(seed_config,
                                                                           tmp_path):
    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.ingest_entries("World Desk Daily", 0, entries(1, 60), datetime.now(UTC))
    with aggregator.store.transaction() as conn:  # free pages for --compact to drop
        conn.execute("DELETE FROM fetch_attempts")
        conn.execute("UPDATE articles SET decision = '{}'")
    aggregator.close()
    folder = tmp_path / "backups"
    folder.mkdir()
    result = cli("backup", str(folder), "--config", str(seed_config))
    assert result.exit_code == 0, result.output
    [plain] = folder.iterdir()
    assert plain.name.startswith(Path(config.database).stem + "-") and plain.suffix == ".db"
    assert f"to {plain}: " in result.output and "60 articles" in result.output
    compacted = tmp_path / "compact.db"
    assert cli("backup", str(compacted), "--compact", "--config", str(seed_config)).exit_code == 0
    assert counts(compacted) == counts(plain)
    assert compacted.stat().st_size < plain.stat().st_size


@pytest.mark.parametrize("destination, message", [
    ("missing/folder/copy.db", "no folder"),
    ("{database}", "that is the database itself"),
    ("{database}-wal", "that is the database itself"),
])
def test_a_backup_that_cannot_be_made_says_why(seed_config, tmp_path, destination, message):
    config = load_config(seed_config, environ={})
    Aggregator(config).close()
    result = cli("backup", destination.format(database=config.database), "--config",
                 str(seed_config))
    assert result.exit_code == 1 and message in result.output


def test_a_failed_backup_leaves_the_previous_one_in_place(seed_config, tmp_path):
    config, copy = backed_up(seed_config, tmp_path)
    previous = copy.read_bytes()
    Path(config.database).write_bytes(b"not a database " * 1000)  # the store ruined
    for suffix in ("-wal", "-shm"):
        Path(config.database + suffix).unlink(missing_ok=True)
    result = cli("backup", str(copy), "--config", str(seed_config))
    assert result.exit_code == 1 and "failed" in result.output
    assert copy.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy.db")] == []


def test_a_backup_is_restored_in_place_of_the_database_which_is_kept(seed_config, tmp_path):
    config, copy = backed_up(seed_config, tmp_path)
    # Later changes, lost by the restore but kept aside.
    aggregator = Aggregator(config)
    aggregator.ingest_entries("World Desk Daily", 0, entries(2, 10), datetime.now(UTC))
    aggregator.close()
    assert counts(Path(config.database))[0] == 13
    result = cli("restore", str(copy), "--config", str(seed_config))
    assert result.exit_code == 0, result.output
    assert counts(Path(config.database)) == (3, 1)
    [kept] = Path(config.database).parent.glob("*.before-restore-*.db")
    assert counts(kept)[0] == 13
    assert f"restored {copy} to {config.database}: 3 articles in 1 stories; the database " \
           f"replaced is kept at {kept}" in result.output
    assert cli("check", "--config", str(seed_config)).exit_code == 0
    # The daemon goes on from the restored store.
    aggregator = Aggregator(config)
    aggregator.ingest_entries("World Desk Daily", 0, entries(3, 5), datetime.now(UTC))
    aggregator.close()
    assert counts(Path(config.database))[0] == 8


def test_a_restore_refuses_what_is_no_backup_and_a_running_daemon(seed_config, tmp_path):
    config, _copy = backed_up(seed_config, tmp_path)
    before = Path(config.database).read_bytes()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 100)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    for backup, message in [(tmp_path / "missing.db", "no backup there"),
                            (junk, "not a database SQLite can read"),
                            (other, "not a store of this aggregator")]:
        result = cli("restore", str(backup), "--config", str(seed_config))
        assert result.exit_code == 1 and message in result.output, result.output
    newer = tmp_path / "newer.db"
    assert cli("backup", str(newer), "--config", str(seed_config)).exit_code == 0
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO _migrations (name, applied_at) VALUES "
                     "('999_from_the_future', '2027-01-01T00:00:00Z')")
    result = cli("restore", str(newer), "--config", str(seed_config))
    assert "made by a newer version of the aggregator (999_from_the_future)" in result.output
    with holding_window(config.database):  # as a running daemon does
        result = cli("restore", str(newer), "--config", str(seed_config))
    assert result.exit_code == 1 and "a daemon is running on it" in result.output
    assert Path(config.database).read_bytes() == before
    assert list(Path(config.database).parent.glob("*.before-restore-*")) == []


def test_a_ruined_database_is_moved_aside_as_it_is_and_the_backup_restored(seed_config,
                                                                          tmp_path):
    config, copy = backed_up(seed_config, tmp_path)
    ruined = b"not a database " * 1000
    Path(config.database).write_bytes(ruined)
    result = cli("restore", str(copy), "--config", str(seed_config))
    assert result.exit_code == 0, result.output
    assert counts(Path(config.database)) == (3, 1)
    [kept] = Path(config.database).parent.glob("*.before-restore-*.db")
    assert kept.read_bytes() == ruined
