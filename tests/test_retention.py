"""Retention: old stories leave the store whole, their entries never come back as new, the
window and the statistics are untouched, and readers see a consistent store throughout."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from conftest import write_config
from feed_server import FeedServer, Reply
from test_store import _migrated_again, _old_solo_article, _store_migrated_to

from aggregator import retention
from aggregator.check import check_store
from aggregator.config import ClusteringSettings, Config, Source, load_config
from aggregator.errors import ConfigError
from aggregator.parse import ParsedEntry
from aggregator.pipeline import Aggregator
from aggregator.reading import mark_stories, marks_connection
from aggregator.retention import Cutoffs, holding_window, purge_cutoffs, window_to_self
from aggregator.web import StoreCollector

DAY = timedelta(days=1)
START = datetime(2026, 3, 1, tzinfo=UTC)
NOW = START + 100 * DAY
WORDS = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
# Topics that share no word, so that each is a story of its own.
TOPICS = [" ".join(WORDS[n * 4:n * 4 + 4]) for n in range(16)]


@pytest.mark.parametrize(("retention_days", "newest_day", "floor_day", "expected"), [
    (0, 100, None, None),                  # retention off
    (30, None, None, None),                # an empty store
    # Fetched over 30 days ago, and the window (7 days before the newest) a day behind.
    (30, 100, None, (70, 70)),
    # The store has been idle: nothing published for 100 days, so the window still holds
    # the last week of what it has, and a story must have left it.
    (30, 0, None, (70, -8)),
    # The article limit cut the window short: it starts at the floor.
    (30, 100, 95, (70, 70)),
    (8, 100, 98, (92, 92)),
    (8, 100, None, (92, 92)),
    (8, 95, None, (92, 87)),
])
def test_what_may_leave_the_store_is_older_than_retention_and_outside_the_window(
        retention_days, newest_day, floor_day, expected):
    def day(n):
        return None if n is None else START + n * DAY

    cutoffs = purge_cutoffs(NOW, retention_days * 86400.0, day(newest_day), day(floor_day),
                            window_days=7)
    assert cutoffs == (None if expected is None else Cutoffs(day(expected[0]),
                                                             day(expected[1])))


def config_for(tmp_path, retention_days: float = 30) -> Config:
    return Config(path=str(tmp_path / "c.toml"), database=str(tmp_path / "r.db"),
                  sources=tuple(Source(name=name, url=str(tmp_path / f"{name}.xml"),
                                       interval_s=3600) for name in ("desk", "wire")),
                  retention_s=retention_days * 86400.0,
                  clustering=ClusteringSettings(window_days=7))


def entry(number: int, topic: str, published: datetime, lead: str = "Report") -> ParsedEntry:
    return ParsedEntry(guid=f"g{number}", link=f"https://news.example/{number}",
                       title=f"{lead} {topic}", published=published,
                       content=f"<p>{lead}: {topic} {topic}. {topic}.</p>")


def add(aggregator: Aggregator, number: int, day: float, topic: str, source: str = "desk",
        lead: str = "Report", fetched_day: float | None = None) -> int:
    """Store one article; returns its story id."""
    published = START + day * DAY
    fetched = START + (day if fetched_day is None else fetched_day) * DAY
    report = aggregator.ingest_entries(source, 0, [entry(number, topic, published, lead)],
                                       fetched)
    assert report.new_articles == 1
    return aggregator.store.db.execute("SELECT story_id FROM articles WHERE guid = ?",
                                       [f"g{number}"]).fetchone()[0]


def filled(tmp_path, retention_days: float = 30) -> tuple[Aggregator, dict[str, int]]:
    """Stories by topic: two write-ups of one (days 0 and 1), then one a story on days 10,
    60, 60, 100, and last a late entry published and fetched on day 1: due by its dates,
    but it holds the newest article and story ids, which must never be given again."""
    aggregator = Aggregator(config_for(tmp_path, retention_days))
    stories = {"twice": add(aggregator, 1, 0, TOPICS[0])}
    assert add(aggregator, 2, 1, TOPICS[0], "wire", "Update") == stories["twice"]
    for number, (name, day) in enumerate([("day10", 10), ("day60", 60), ("day60b", 60),
                                          ("day100", 100), ("late", 1)], start=3):
        stories[name] = add(aggregator, number, day, TOPICS[number])
    return aggregator, stories


def rows(aggregator: Aggregator, sql: str, params=()) -> list[tuple]:
    return aggregator.store.db.execute(sql, params).fetchall()


def counters(database: str) -> dict[str, float]:
    return {sample.name: sample.value for family in StoreCollector(database, None).collect()
            for sample in family.samples if sample.name.endswith("_total")
            and "fetches" not in sample.name}


def test_old_stories_leave_whole_and_the_rest_of_the_store_stays_as_it_was(tmp_path):
    aggregator, stories = filled(tmp_path)
    statistics = rows(aggregator, "SELECT term, document_frequency FROM term_stats")
    documents = rows(aggregator, "SELECT value FROM meta WHERE key = 'documents'")
    before = counters(aggregator.store.path)
    gone = [stories[name] for name in ("twice", "day10", "day60", "day60b")]
    members = rows(aggregator, "SELECT id FROM articles WHERE story_id IN (?, ?, ?, ?)", gone)
    keys = rows(aggregator, "SELECT key FROM article_keys WHERE article_id IN "
                            f"({','.join('?' * len(members))})", [m[0] for m in members])

    report = aggregator.purge_expired(NOW + timedelta(hours=1))

    assert (report.stories, report.articles, report.complete) == (4, 5, True)
    assert {row[0] for row in rows(aggregator, "SELECT id FROM stories")} == \
        {stories["day100"], stories["late"]}
    for table in ("articles", "article_fingerprints", "articles_fts_docsize"):
        key = "article_id" if table == "article_fingerprints" else "id"
        assert rows(aggregator, f"SELECT count(*) FROM {table} WHERE {key} IN "
                                f"({','.join('?' * len(members))})",
                    [m[0] for m in members]) == [(0,)], table
    assert rows(aggregator, "SELECT count(*) FROM articles_fts WHERE articles_fts MATCH ?",
                [TOPICS[0].split()[0]]) == [(0,)]
    assert rows(aggregator, "SELECT count(*) FROM canonical_history WHERE story_id IN "
                            "(?, ?, ?, ?)", gone) == [(0,)]
    assert sorted(rows(aggregator, "SELECT key FROM retired_keys")) == sorted(keys)
    assert rows(aggregator, "SELECT name, article_count FROM sources ORDER BY name") == \
        [("desk", 2), ("wire", 0)]
    # The window is the last week's (the purge evicted the rest first, as a restart
    # would), and the statistics and the counters of /metrics are what they were.
    window = aggregator.clusterer.window_article_ids()
    assert window == {row[0] for row in rows(
        aggregator, "SELECT id FROM articles WHERE story_id = ?", [stories["day100"]])}
    assert rows(aggregator, "SELECT term, document_frequency FROM term_stats") == statistics
    assert rows(aggregator, "SELECT value FROM meta WHERE key = 'documents'") == documents
    after = counters(aggregator.store.path)
    assert after.pop("aggregator_articles_purged_total") == 5
    assert before.pop("aggregator_articles_purged_total") == 0
    assert after == before
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()
    # A restart rebuilds the same window.
    restarted = Aggregator(config_for(tmp_path))
    assert restarted.clusterer.window_article_ids() == window
    restarted.close()


def test_an_entry_whose_article_has_left_is_not_stored_again(tmp_path):
    aggregator, stories = filled(tmp_path)
    aggregator.purge_expired(NOW)
    again = aggregator.ingest_entries("desk", 0, [entry(1, TOPICS[0], START)], NOW)
    assert again.new_articles == 0
    # Nor through a worker's read-only connection, which decides what is new before the
    # writer sees it.
    from aggregator.normalize import identity_keys
    from aggregator.readers import read_only_connection, stored_keys

    reader = read_only_connection(aggregator.store.path)
    keys = list(identity_keys("desk", "g1", "https://news.example/1", "x"))
    assert stored_keys(reader, keys)
    reader.close()
    assert rows(aggregator, "SELECT count(*) FROM articles WHERE guid = 'g1'") == [(0,)]
    aggregator.close()


def test_a_story_in_the_window_or_that_the_window_holds_stays(tmp_path):
    aggregator, stories = filled(tmp_path, retention_days=8)
    # Fetched over eight days before, but published within the window: it stays.
    fetched_early = add(aggregator, 20, 97, TOPICS[12], fetched_day=90)
    store = aggregator.store
    with store.transaction() as conn:
        report = retention.purge_batch(store, conn, NOW, 8 * 86400.0, 7,
                                       held={stories["day60"]})
    # The late story no longer holds the newest ids: it goes.
    assert report.stories == 4
    left = {row[0] for row in rows(aggregator, "SELECT id FROM stories")}
    assert left == {stories["day60"], stories["day100"], fetched_early}
    aggregator.close()


def test_a_saved_story_stays_and_a_read_one_goes_with_its_marks(tmp_path):
    """A reader's saved story is kept however old (as feed readers keep starred entries);
    being read keeps nothing, and the marks of what goes go with it."""
    aggregator, stories = filled(tmp_path)
    with closing(marks_connection(aggregator.store.path)) as conn:
        mark_stories(conn, [stories["day10"]], "saved", True, NOW)
        mark_stories(conn, [stories["twice"], stories["day10"]], "read", True, NOW)
    report = aggregator.purge_expired(NOW + timedelta(hours=1))
    assert (report.stories, report.articles) == (3, 4)
    assert {row[0] for row in rows(aggregator, "SELECT id FROM stories")} == \
        {stories["day10"], stories["day100"], stories["late"]}
    assert rows(aggregator, "SELECT a.story_id, m.read_at IS NOT NULL, m.saved_at IS NOT NULL "
                            "FROM article_marks m JOIN articles a ON a.id = m.article_id") == \
        [(stories["day10"], 1, 1)]
    assert rows(aggregator, "SELECT count(*) FROM article_marks") == [(1,)]
    assert check_store(aggregator.store, aggregator.settings) == []
    aggregator.close()


def test_the_daemon_purges_once_an_hour_and_a_long_purge_goes_on_at_the_next_pass(
        tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "PURGE_STORIES_AT_ONCE", 2)
    aggregator, stories = filled(tmp_path)
    # Two stories a transaction, and out of time after the first.
    first = aggregator.purge_expired(NOW, budget_s=0)
    assert (first.stories, first.complete) == (2, False)
    second = aggregator.purge_expired(NOW + timedelta(minutes=1), budget_s=0)
    assert (second.stories, second.complete) == (2, False)
    third = aggregator.purge_expired(NOW + timedelta(minutes=2))
    assert (third.stories, third.complete) == (0, True)
    # Due 15 minutes later, but not purged until an hour after the last complete purge;
    # then with the late story, which no longer holds the newest ids.
    due_later = add(aggregator, 30, 70.01, TOPICS[13])
    add(aggregator, 31, 100, TOPICS[14])
    assert aggregator.purge_expired(NOW + timedelta(minutes=32)).stories == 0
    assert aggregator.purge_expired(NOW + timedelta(minutes=63)).stories == 2
    assert not rows(aggregator, "SELECT id FROM stories WHERE id IN (?, ?)",
                    [due_later, stories["late"]])
    aggregator.close()


def test_a_clock_set_back_after_a_purge_does_not_hold_the_next_one_back(tmp_path):
    """The last purge ran by a clock a year ahead, since set back: the next is due at once,
    not in a year."""
    aggregator, _stories = filled(tmp_path)
    aggregator._last_purge = NOW + 365 * DAY
    assert aggregator.purge_expired(NOW + timedelta(hours=1)).stories == 4
    aggregator.close()


def test_without_retention_nothing_leaves(tmp_path):
    aggregator, _stories = filled(tmp_path, retention_days=0)
    count = rows(aggregator, "SELECT count(*) FROM articles")
    assert aggregator.purge_expired(NOW + 1000 * DAY, force=True).stories == 0
    assert rows(aggregator, "SELECT count(*) FROM articles") == count
    aggregator.close()


def test_old_fetch_attempts_leave_and_the_fetch_counters_keep_counting(tmp_path):
    aggregator, _stories = filled(tmp_path)
    with aggregator.store.transaction() as conn:
        for started, status, outcome in [
                ("2026-04-01", 200, "ok"), ("2026-04-02", 304, "not_modified"),
                ("2026-04-03", 500, "http_error"), ("2026-04-01", 200, "ok"),
                ("2026-06-09", 200, "ok")]:
            aggregator.store.record_fetch(
                1, started=datetime.fromisoformat(f"{started}T00:00:00+00:00"),
                duration_ms=5, url="u", status=status, outcome=outcome, error=None, size=None,
                entries=None, new_articles=None, state={}, conn=conn)

    def fetches():
        return {sample.labels["outcome"]: sample.value
                for family in StoreCollector(aggregator.store.path, None).collect()
                for sample in family.samples if sample.name == "aggregator_fetches_total"}

    before = fetches()
    assert aggregator.purge_expired(NOW).fetch_attempts == 4
    assert rows(aggregator, "SELECT started_at FROM fetch_attempts") == \
        [("2026-06-09T00:00:00Z",)]
    assert fetches() == before == {"ok": 3, "not_modified": 1, "http_error": 1}
    aggregator.close()


def test_a_reader_sees_the_store_before_or_after_a_purge_never_between(tmp_path):
    aggregator, _stories = filled(tmp_path)
    reader = sqlite3.connect(aggregator.store.path, isolation_level=None)
    totals = ("SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM stories), "
              "(SELECT sum(article_count) FROM stories), "
              "(SELECT count(*) FROM article_fingerprints)")
    reader.execute("BEGIN")
    before = reader.execute(totals).fetchone()
    aggregator.purge_expired(NOW)
    # Its snapshot holds while the purge commits, and nothing blocks it.
    assert reader.execute(totals).fetchone() == before == (7, 6, 7, 7)
    reader.execute("COMMIT")
    assert reader.execute(totals).fetchone() == (2, 2, 2, 2)
    reader.close()
    aggregator.close()


def test_a_store_from_before_retention_takes_it_and_keeps_its_invariants(tmp_path,
                                                                         monkeypatch):
    path = str(tmp_path / "a.db")
    old = _store_migrated_to(path, 12, monkeypatch)
    with old.transaction() as conn:
        _old_solo_article(conn, 1, "Harbour bridge reopens", "Cables.")
        conn.execute("UPDATE sources SET article_count = 1")  # by the writer since 011
    store, _triggers = _migrated_again(old, monkeypatch)
    indexes = {row[0] for row in store.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "article_keys_article" in indexes
    assert store.db.execute("SELECT count(*) FROM retired_keys").fetchone() == (0,)
    assert check_store(store, ClusteringSettings(), signatures=False) == []
    store.close()


@pytest.mark.parametrize(("value", "error"), [
    ('"0"', None), ("0", None), ('"90d"', None), ('"8d"', None),
    ('"7d"', "at least clustering.window_days plus one day (8d)"),
    ('"soon"', "expected a duration"),
])
def test_retention_is_off_or_longer_than_the_window(tmp_path, value, error):
    path = write_config(tmp_path / "c.toml", [], extra=f"retention = {value}")
    if error is None:
        assert load_config(path).retention_s in (0, 8 * 86400, 90 * 86400)
        return
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "retention" in str(raised.value) and error in str(raised.value)


def filled_config(tmp_path):
    """``filled``'s store, closed, and a configuration file naming it and its sources."""
    aggregator, _stories = filled(tmp_path)
    aggregator.close()
    return write_config(tmp_path / "c.toml", [{"name": "desk", "url": "d.xml"},
                                              {"name": "wire", "url": "w.xml"}],
                        database=str(tmp_path / "r.db"))


def test_the_purge_command_counts_then_deletes(tmp_path):
    config = filled_config(tmp_path)

    def purge(*args):
        return subprocess.run([sys.executable, "-m", "aggregator.cli", "purge", "--config",
                               str(config), *args], capture_output=True, text=True)

    with holding_window(str(tmp_path / "r.db")):
        running = purge("--older-than", "30d")
    assert running.returncode == 1 and "a daemon is running on it" in running.stderr
    refused = purge()
    assert refused.returncode == 2 and "retention is 0" in refused.stderr
    too_short = purge("--older-than", "3d")
    assert too_short.returncode == 2 and "plus one day (8d)" in too_short.stderr
    # The articles are from March to June 2026: every story but the newest two is over 30
    # days old at any date this test runs.
    dry = purge("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would delete 4 stories (5 articles) and 0 fetch attempts"
    done = purge("--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted 4 stories (5 articles) and 0 fetch attempts"
    again = Aggregator(load_config(config))
    assert check_store(again.store, again.settings) == []
    assert again.store.db.execute("SELECT count(*) FROM articles").fetchone() == (2,)
    again.close()


def test_the_window_lock_is_shared_by_daemons_and_refused_to_a_purge(tmp_path):
    database = str(tmp_path / "w.db")
    with holding_window(database), holding_window(database), window_to_self(database) as alone:
        assert not alone
    with window_to_self(database) as alone:
        assert alone


def test_the_newest_article_and_story_ids_are_never_given_again(tmp_path):
    aggregator, stories = filled(tmp_path)
    # A late write-up of the day-10 story holds the newest article id; the late story of
    # day 1 holds the newest story id.
    assert add(aggregator, 9, 10.2, TOPICS[3], "wire", "Follow-up") == stories["day10"]
    newest_article = rows(aggregator, "SELECT max(id) FROM articles")[0][0]
    newest_story = rows(aggregator, "SELECT max(id) FROM stories")[0][0]
    assert aggregator.purge_expired(NOW).stories == 3
    assert {row[0] for row in rows(aggregator, "SELECT id FROM stories")} == \
        {stories["day10"], stories["day100"], stories["late"]}
    conn = aggregator.store.db.conn
    assert aggregator.store.next_article_id(conn) == newest_article + 1
    assert aggregator.store.next_story_id(conn) == newest_story + 1
    aggregator.close()


def test_recluster_refuses_while_a_daemon_keeps_a_window_of_the_store(tmp_path):
    # The daemon's window would keep the stories that recluster dissolves, and under new
    # settings their ids go to other stories.
    config = filled_config(tmp_path)
    def stories():
        with closing(sqlite3.connect(tmp_path / "r.db")) as reader:
            return reader.execute("SELECT id, canonical_article_id FROM stories").fetchall()

    before = stories()
    with holding_window(str(tmp_path / "r.db")):
        refused = subprocess.run([sys.executable, "-m", "aggregator.cli", "recluster",
                                  "--config", str(config)], capture_output=True, text=True)
    assert refused.returncode == 1 and "a daemon is running on it" in refused.stderr
    assert stories() == before
    done = subprocess.run([sys.executable, "-m", "aggregator.cli", "recluster", "--config",
                           str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def stored_in_march(tmp_path, sources: list[dict]):
    """A configuration of ``sources`` with 30 days of retention, its store holding three
    stories of the source "desk" published and fetched in March (``g1`` to ``g3``)."""
    config = write_config(tmp_path / "c.toml", sources, database=str(tmp_path / "r.db"),
                          extra='retention = "30d"')
    old = Aggregator(load_config(config))
    for number in range(1, 4):
        old.ingest_entries("desk", 0, [entry(number, TOPICS[number], START + number * DAY)],
                           START + number * DAY)
    old.close()
    return config


def run_daemon_once(config) -> subprocess.CompletedProcess:
    """``aggregator run --once --all`` in a process of its own, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "aggregator.cli", "run", "--once", "--all",
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_the_daemon_lets_old_stories_go_and_a_feed_that_still_lists_them_adds_nothing(
        tmp_path, feed_server):
    # Old stories stored in March; the daemon, with 30 days of retention, polls a real feed
    # that lists one of them again beside a new entry, twice.
    from email.utils import format_datetime

    from aggregator.store import Store

    config = stored_in_march(tmp_path, [{"name": "desk", "url": feed_server.url("/desk")}])
    now = datetime.now(UTC)
    items = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><link>https://news.example/{guid}"
        f"</link><pubDate>{format_datetime(when)}</pubDate><description>{title}: {text}"
        f"</description></item>"
        for guid, title, text, when in [
            ("g1", f"Report {TOPICS[1]}", TOPICS[1], START + DAY),
            ("fresh", f"Report {TOPICS[9]}", TOPICS[9], now)])
    feed_server.route("/desk", Reply(200, (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Desk</title>'
        f"{items}</channel></rss>").encode()))

    def run_once():
        return run_daemon_once(config).stdout

    assert "2 entries, 1 new" in run_once()
    store = Store(str(tmp_path / "r.db"))
    guids = "SELECT guid FROM articles ORDER BY id"
    assert store.db.execute(guids).fetchall() == [("fresh",)]
    assert store.db.execute("SELECT count(*) FROM retired_keys").fetchone()[0] > 0
    store.close()
    assert "2 entries, 0 new" in run_once()
    store = Store(str(tmp_path / "r.db"))
    assert store.db.execute(guids).fetchall() == [("fresh",)]
    assert check_store(store, ClusteringSettings()) == []
    store.close()


def test_a_clock_far_ahead_of_the_feeds_servers_deletes_nothing_until_it_is_corrected(
        tmp_path):
    """Stories stored in March, 30 days of retention, and three real feed servers whose Date
    headers say that this machine's clock is a year ahead of theirs: the daemon deletes
    nothing and says why, where it would otherwise have deleted every old story for being
    older than a clock that is wrong.  Once the servers' clocks agree with it, it purges."""
    from aggregator.web import DaemonStatus, StoreCollector

    servers = [FeedServer().start() for _ in range(3)]
    try:
        for number, server in enumerate(servers):
            server.clock_ahead_s = -365 * 86400.0
            server.route("/feed", Reply(200, (
                '<?xml version="1.0"?><rss version="2.0"><channel><title>Wire</title><item>'
                f"<guid>new{number}</guid><title>Report {TOPICS[10 + number]}</title>"
                f"<description>{TOPICS[10 + number]}</description></item></channel></rss>"
            ).encode()))
        config = stored_in_march(tmp_path, [{"name": "desk", "url": str(tmp_path / "d.xml")}]
                                 + [{"name": f"wire{number}", "url": server.url("/feed")}
                                    for number, server in enumerate(servers)])

        def run_once() -> str:
            return run_daemon_once(config).stderr

        def stored() -> list[str]:
            with closing(sqlite3.connect(tmp_path / "r.db")) as conn:
                return sorted(row[0] for row in conn.execute("SELECT guid FROM articles"))

        said = run_once()
        assert stored() == ["g1", "g2", "g3", "new0", "new1", "new2"]
        assert ("the system clock is 365.0 days ahead of the feeds' servers (the median of "
                "3 servers' Date headers): retention deletes nothing") in said
        # Dashboards see it too.
        daemon = Aggregator(load_config(config))
        daemon.run_pass(force=True)
        samples = {sample.name: sample.value for family in StoreCollector(
            daemon.store.path, DaemonStatus(clock_ahead_s=daemon.server_clocks.ahead_s),
        ).collect() for sample in family.samples}
        assert abs(samples["aggregator_clock_ahead_of_servers_seconds"] - 365 * 86400) < 5
        daemon.close()

        for server in servers:
            server.clock_ahead_s = 0.0
        said = run_once()
        assert stored() == ["new0", "new1", "new2"]
        assert "system clock" not in said
    finally:
        for server in servers:
            server.stop()
