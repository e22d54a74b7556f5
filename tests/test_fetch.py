"""Fetching against a real HTTP server on 127.0.0.1: what it receives and what we store."""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import random
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from html import escape

import httpx
import pytest
from click.testing import CliRunner
from conftest import DATA, write_config
from feed_server import Reply

import aggregator.pipeline as pipeline
from aggregator.cli import main
from aggregator.config import load_config
from aggregator.errors import StoreError
from aggregator.fetch import (
    FetchLimits,
    Outcome,
    classify_status,
    fetch_http,
    make_client,
    parse_http_date,
    parse_retry_after,
    server_now,
)
from aggregator.fingerprint import given_priors, prior_document_fraction
from aggregator.pipeline import Aggregator, fetch_more, worker_count
from aggregator.store import StagedWrites, WriteBehind, from_iso

FEED = (DATA / "other_topics.rss.xml").read_bytes()


def make_aggregator(tmp_path, server, paths, extra="") -> Aggregator:
    sources = [{"name": path.strip("/"), "url": server.url(path), "interval": "10m"}
               for path in paths]
    config = write_config(tmp_path / "http.toml", sources, extra=extra)
    return Aggregator(load_config(config, environ={}))


def fail_to_record(aggregator, source: str, error: str, monkeypatch) -> None:
    """Make staging the fetch of ``source`` raise a ``StoreError``."""
    record_fetch = StagedWrites.record_fetch

    def failing(staged, source_id, **kwargs):
        if source_id == aggregator.store.source(source).id:
            raise StoreError(error)
        return record_fetch(staged, source_id, **kwargs)

    monkeypatch.setattr(StagedWrites, "record_fetch", failing)


def count_transactions(aggregator, monkeypatch) -> list[int]:
    """A list that grows by one at each write transaction the aggregator opens, on its
    thread or in the write-behind process (a group handed to it)."""
    transactions = []
    original = aggregator.store.begin
    handed_over = WriteBehind.submit

    def counted():
        transactions.append(1)
        return original()

    def counted_behind(behind, group):
        transactions.append(1)
        return handed_over(behind, group)

    monkeypatch.setattr(aggregator.store, "begin", counted)
    monkeypatch.setattr(WriteBehind, "submit", counted_behind)
    return transactions


def source_state(aggregator, name):
    return {row["name"]: row for row in aggregator.store.sources_overview()}[name]


def test_conditional_get_sends_etag_and_a_304_costs_no_parsing(tmp_path, feed_server):
    feed_server.route("/feed", Reply(200, FEED, {"ETag": '"v1"',
                                                 "Content-Type": "application/rss+xml"}))
    aggregator = make_aggregator(tmp_path, feed_server, ["/feed"])
    [first] = aggregator.run_pass(force=True)
    [second] = aggregator.run_pass(force=True)
    requests = feed_server.requests_to("/feed")
    assert first.outcome == "ok" and first.new_articles == 5
    assert "If-None-Match" not in requests[0].headers
    assert requests[1].headers["If-None-Match"] == '"v1"'
    assert second.outcome == "not_modified" and second.entries == 0
    assert "aggregator" in requests[0].headers["User-Agent"]
    outcomes = [tuple(row) for row in aggregator.store.db.execute(
        "SELECT outcome, error FROM fetch_attempts ORDER BY id")]
    assert outcomes == [("ok", None), ("not_modified", None)]
    state = source_state(aggregator, "feed")
    assert state["consecutive_errors"] == 0 and state["last_error"] is None
    assert state["last_status"] == 304 and state["last_success_at"] == state["last_checked_at"]


def test_304_answers_keep_the_connection_for_the_next_request(feed_server):
    """An unread response closes its connection: a pass of 304s must not open one a feed."""
    feed_server.route("/feed", Reply(200, FEED, {"ETag": '"v1"'}))
    limits = FetchLimits(user_agent="test")
    with make_client(limits) as client:
        first = fetch_http(client, "s", feed_server.url("/feed"), None, None, limits)
        for _ in range(3):
            again = fetch_http(client, "s", feed_server.url("/feed"), first.etag, None, limits)
            assert again.outcome is Outcome.NOT_MODIFIED and again.body == b""
    assert len({r.client for r in feed_server.requests_to("/feed")}) == 1


def feeds_fetched_once(tmp_path, feed_server, count: int) -> tuple[Aggregator, list[str]]:
    """``count`` feeds ``/f0``, ``/f1``... with an ETag, each fetched once: the next pass of
    them is all 304s."""
    paths = [f"/f{n}" for n in range(count)]
    for path in paths:
        feed_server.route(path, Reply(200, FEED.replace(b"<title>", f"<title>{path} ".encode(),
                                                        1),
                                      {"ETag": '"v1"', "Content-Type": "application/rss+xml"}))
    aggregator = make_aggregator(tmp_path, feed_server, paths)
    aggregator.run_pass(force=True)
    return aggregator, paths


def first_fetch_slow(aggregator, monkeypatch) -> None:
    """The first source's fetch takes half a second, so that the others have all answered
    when the writer, which takes the sources in configuration order, gets to it: one
    write group."""
    fetch = aggregator._fetch_and_parse

    def slow(source, row):
        if source.name == "f0":
            time.sleep(0.5)
        return fetch(source, row)

    monkeypatch.setattr(aggregator, "_fetch_and_parse", slow)


def test_many_304s_are_recorded_together_and_a_failing_write_fails_alone(
        tmp_path, feed_server, monkeypatch):
    aggregator, paths = feeds_fetched_once(tmp_path, feed_server, 12)
    transactions = count_transactions(aggregator, monkeypatch)
    first_fetch_slow(aggregator, monkeypatch)
    reports = aggregator.run_pass(force=True)
    assert [r.outcome for r in reports] == ["not_modified"] * 12
    assert [r.source for r in reports] == [p.strip("/") for p in paths]  # config order
    assert len(transactions) < 12
    assert aggregator.store.db.execute(
        "SELECT count(*) FROM fetch_attempts WHERE outcome = 'not_modified'").fetchone() == (12,)

    fail_to_record(aggregator, "f3", "disk full", monkeypatch)
    transactions.clear()
    reports = aggregator.run_pass(force=True)
    assert [r.outcome for r in reports] == ["not_modified"] * 3 + ["store_error"] + \
        ["not_modified"] * 8
    assert len(transactions) < 12
    assert aggregator.store.db.execute(
        "SELECT count(*) FROM fetch_attempts").fetchone() == (24 + 11,)
    assert aggregator.store.db.execute(  # nothing of f3's failed write is left
        "SELECT count(*) FROM fetch_attempts a JOIN sources s ON s.id = a.source_id "
        "WHERE s.name = 'f3'").fetchone() == (2,)


def test_the_fetches_of_a_group_s_304s_are_written_together_and_one_failing_alone(
        tmp_path, feed_server, monkeypatch):
    """A write group's sources that staged nothing but their fetch (a 304) are written in
    one write, a statement a table; if that write fails, each is written alone, so that
    only the source whose rows fail is reported failed, and the others' rows are kept."""
    aggregator, paths = feeds_fetched_once(tmp_path, feed_server, 8)
    write, writes = StagedWrites.write, []

    def counted(staged, conn, search_rows=None):
        writes.append(sorted(row[0] for row in staged.fetches))
        return write(staged, conn, search_rows)

    monkeypatch.setattr(StagedWrites, "write", counted)
    first_fetch_slow(aggregator, monkeypatch)
    reports = aggregator.run_pass(force=True)
    assert [r.outcome for r in reports] == ["not_modified"] * 8
    ids = {name: aggregator.store.source(name).id for name in (p.strip("/") for p in paths)}
    assert sorted(ids.values()) in writes and len(writes) < 8
    # A write that fails on the rows of f3, after writing them: rolled back to the
    # group's savepoint, the others are written again alone.
    failing = ids["f3"]

    def fails_on_f3(staged, conn, search_rows=None):
        counted(staged, conn, search_rows)
        if any(row[0] == failing for row in staged.fetches):
            raise sqlite3.OperationalError("constraint failed")

    monkeypatch.setattr(StagedWrites, "write", fails_on_f3)
    before = source_state(aggregator, "f3")["last_checked_at"]
    writes.clear()
    reports = aggregator.run_pass(force=True)
    assert [r.outcome for r in reports] == ["not_modified"] * 3 + ["store_error"] + \
        ["not_modified"] * 4
    assert "constraint failed" in reports[3].error
    assert [len(fetches) for fetches in writes if len(fetches) > 1] != []
    assert aggregator.store.db.execute(
        "SELECT s.name, count(*) FROM fetch_attempts a JOIN sources s ON s.id = a.source_id "
        "GROUP BY s.name ORDER BY s.name").fetchall() == \
        [(name, 2 if name == "f3" else 3) for name in sorted(ids)]
    assert source_state(aggregator, "f3")["last_checked_at"] == before


@pytest.mark.parametrize("extra", ["", "write_behind = true"], ids=["in place", "behind"])
def test_feeds_fetched_ahead_are_stored_together_and_a_failing_one_alone(
        tmp_path, feed_server, monkeypatch, extra):
    paths = [f"/f{n}" for n in range(6)]
    topics = ["glacier", "harbour", "orchard", "comet", "vineyard", "railway"]
    for n, path in enumerate(paths):
        items = "".join(
            f"<item><title>{topics[n]} report {k}</title><guid>{path}/{k}</guid>"
            f"<link>http://example.org{path}/{k}</link><description>"
            + f"The {topics[n]} news number {k} from {path}. " * 8 + "</description></item>"
            for k in range(2))
        body = (f"<?xml version='1.0'?><rss version='2.0'><channel><title>{path}</title>"
                f"{items}</channel></rss>").encode()
        feed_server.route(path, Reply(200, body, {"Content-Type": "application/rss+xml"}))
    aggregator = make_aggregator(tmp_path, feed_server, paths, extra)
    transactions = count_transactions(aggregator, monkeypatch)
    # The first fetch ends after all the others, so that they are all ready when it is.
    real_fetch, others_done, done = aggregator._fetch_and_parse, threading.Event(), []

    def fetch(source, row):
        if source.name == "f0":
            others_done.wait(timeout=30)
            return real_fetch(source, row)
        fetched = real_fetch(source, row)
        done.append(source.name)
        if len(done) == len(paths) - 1:
            others_done.set()
        return fetched

    monkeypatch.setattr(aggregator, "_fetch_and_parse", fetch)
    record = StagedWrites.record_fetch
    fail_to_record(aggregator, "f3", "disk I/O error", monkeypatch)
    reports = aggregator.run_pass(force=True)
    assert [r.source for r in reports] == [p.strip("/") for p in paths]  # config order
    assert [r.outcome for r in reports] == ["ok"] * 3 + ["store_error"] + ["ok"] * 2
    # One transaction for the six feeds, and one for the pass's housekeeping.
    assert len(transactions) == 2
    stored = aggregator.store.db.execute(
        "SELECT s.name, count(*) FROM articles a JOIN sources s ON s.id = a.source_id "
        "GROUP BY s.name ORDER BY s.name").fetchall()
    assert stored == [(f"f{n}", 2) for n in (0, 1, 2, 4, 5)]
    assert sorted(aggregator.clusterer.window_article_ids()) == [
        row[0] for row in aggregator.store.db.execute("SELECT id FROM articles ORDER BY id")]

    monkeypatch.setattr(StagedWrites, "record_fetch", record)
    reports = aggregator.run_pass(force=True)
    assert [r.new_articles for r in reports] == [0, 0, 0, 2, 0, 0]


def test_a_pass_commits_what_it_wrote_before_it_waits_for_a_slow_feed(
        tmp_path, feed_server, monkeypatch):
    """Groups share a transaction while the writer has sources ready; a dashboard sees the
    sources written so far while a slow one is still being fetched."""
    paths = ["/quick", "/slow"]
    for path in paths:
        feed_server.route(path, Reply(200, FEED, {"Content-Type": "application/rss+xml"}))
    aggregator = make_aggregator(tmp_path, feed_server, paths)
    real_fetch, seen_while_fetching = aggregator._fetch_and_parse, []

    def fetch(source, row):
        if source.name == "slow":
            # Until the quick feed's articles are visible to another connection (or 5 s).
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                reader = sqlite3.connect(aggregator.store.path)
                seen = reader.execute("SELECT count(*) FROM articles").fetchone()[0]
                reader.close()
                if seen:
                    break
                time.sleep(0.02)
            seen_while_fetching.append(seen)
        return real_fetch(source, row)

    monkeypatch.setattr(aggregator, "_fetch_and_parse", fetch)
    reports = aggregator.run_pass(force=True)
    assert [r.outcome for r in reports] == ["ok", "ok"]
    assert seen_while_fetching == [5]
    aggregator.close()


def test_gzip_body_is_decoded(tmp_path, feed_server):
    feed_server.route("/gz", Reply(200, FEED, {"Content-Type": "application/rss+xml"},
                                   gzip=True))
    aggregator = make_aggregator(tmp_path, feed_server, ["/gz"])
    [report] = aggregator.run_pass(force=True)
    assert report.outcome == "ok" and report.new_articles == 5


@pytest.mark.parametrize(("status", "moves"), [(301, True), (308, True), (302, False),
                                               (307, False)])
def test_only_permanent_redirects_seen_twice_move_the_feed(tmp_path, feed_server, status,
                                                           moves):
    feed_server.route("/old", Reply(status, b"", {"Location": "/new"}))
    feed_server.route("/new", Reply(200, FEED, honour_etag=False))
    aggregator = make_aggregator(tmp_path, feed_server, ["/old"])
    [report] = aggregator.run_pass(force=True)
    assert report.new_articles == 5
    state = source_state(aggregator, "old")
    assert state["config_url"] == state["url"] == feed_server.url("/old")  # once is not enough
    aggregator.run_pass(force=True)
    state = source_state(aggregator, "old")
    assert state["config_url"] == feed_server.url("/old")
    assert state["url"] == feed_server.url("/new" if moves else "/old")
    aggregator.run_pass(force=True)
    assert len(feed_server.requests_to("/old")) == (2 if moves else 3)


@pytest.mark.parametrize(("previous", "sightings", "target", "needed", "expected"), [
    (None, 0, None, 2, {"redirect_target": None, "redirect_sightings": 0}),
    (None, 0, "https://n/", 1, {"url": "https://n/", "redirect_target": None,
                                "redirect_sightings": 0}),
    (None, 0, "https://n/", 2, {"redirect_target": "https://n/", "redirect_sightings": 1}),
    ("https://n/", 1, "https://n/", 2, {"url": "https://n/", "redirect_target": None,
                                        "redirect_sightings": 0}),
    ("https://m/", 1, "https://n/", 2, {"redirect_target": "https://n/",
                                        "redirect_sightings": 1}),
    ("https://n/", 1, None, 2, {"redirect_target": None, "redirect_sightings": 0}),
])
def test_redirect_state(previous, sightings, target, needed, expected):
    from aggregator.pipeline import redirect_state
    from aggregator.store import SourceRow

    row = SourceRow(1, "s", "https://o/", "https://o/", 0, True, None, None, 0, None, None,
                    None, previous, sightings)
    assert redirect_state(row, target, needed) == expected


def test_throttled_source_cools_down_and_is_not_requested(tmp_path, feed_server):
    feed_server.route("/busy", Reply(429, b"slow down", {"Retry-After": "120"}))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/busy", "/fine"])
    reports = {r.source: r for r in aggregator.run_pass()}
    assert reports["busy"].outcome == "throttled" and reports["busy"].status == 429
    assert reports["fine"].new_articles == 5
    state = source_state(aggregator, "busy")
    assert state["consecutive_errors"] == 1
    cooldown = from_iso(state["cooldown_until"]) - from_iso(state["last_checked_at"])
    assert cooldown == timedelta(seconds=120)
    assert aggregator.run_pass() == []  # nothing is due, the throttled host is left alone
    assert len(feed_server.requests_to("/busy")) == 1


def test_a_clock_set_back_a_year_does_not_hold_the_feeds_back_a_year(tmp_path, feed_server):
    """The times a pass stores (the next check, a host's cooldown) were read off a clock
    that was later set back: here they are moved a year ahead instead, as the stored rows
    of such a pass look.  The feeds are polled at the next pass, not in a year; moved a
    minute ahead (a small correction), they wait as they were told."""
    feed_server.route("/busy", Reply(429, b"slow down", {"Retry-After": "120"}))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/busy", "/fine"])
    aggregator.run_pass()

    def move_ahead(modifier: str) -> None:
        with aggregator.store.transaction() as conn:
            conn.execute("UPDATE sources SET " + ", ".join(
                f"{column} = strftime('%Y-%m-%dT%H:%M:%SZ', {column}, '{modifier}')"
                for column in ("last_checked_at", "next_check_at", "cooldown_until")))

    move_ahead("+1 minute")
    assert aggregator.run_pass() == []
    move_ahead("+365 days")
    reports = {report.source: report.outcome for report in aggregator.run_pass()}
    assert reports == {"busy": "throttled", "fine": "ok"}
    assert len(feed_server.requests_to("/busy")) == len(feed_server.requests_to("/fine")) == 2
    # Their times are set again from the clock as it is: nothing is due now.
    assert aggregator.run_pass() == []
    aggregator.close()


def test_broken_feed_is_recorded_and_others_go_on(tmp_path, feed_server):
    feed_server.route("/broken", Reply(200, b"<html><body><p>not a feed"))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/broken", "/fine"])
    reports = {r.source: r for r in aggregator.run_pass()}
    assert reports["broken"].outcome == "parse_error"
    assert "not an RSS, Atom or JSON feed" in reports["broken"].error
    assert reports["fine"].new_articles == 5
    assert source_state(aggregator, "broken")["last_error"].startswith("not an RSS")


def test_errors_back_off_exponentially_and_keep_the_feed(tmp_path, feed_server):
    feed_server.route("/down", Reply(500, b"oops"))
    aggregator = make_aggregator(tmp_path, feed_server, ["/down"])
    delays = []
    for _ in range(3):
        aggregator.run_pass(force=True)
        state = source_state(aggregator, "down")
        delays.append((from_iso(state["next_check_at"])
                       - from_iso(state["last_checked_at"])).total_seconds())
    assert state["consecutive_errors"] == 3 and state["disabled_reason"] is None
    assert 600 <= delays[0] < 1200 <= delays[1] < 2400 <= delays[2] < 4800


def test_gone_feed_is_disabled_with_a_reason(tmp_path, feed_server):
    feed_server.route("/gone", Reply(410, b""))
    aggregator = make_aggregator(tmp_path, feed_server, ["/gone"])
    [report] = aggregator.run_pass()
    assert report.outcome == "gone"
    assert "410" in source_state(aggregator, "gone")["disabled_reason"]
    assert aggregator.due_sources(datetime.now(UTC) + timedelta(days=30)) == []


def test_a_gone_feed_is_requested_only_by_a_forced_pass_and_enabled_again_if_it_answers(
        tmp_path, feed_server):
    feed_server.route("/gone", Reply(410, b""), Reply(410, b""), Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/gone"])
    assert [r.outcome for r in aggregator.run_pass()] == ["gone"]
    assert aggregator.run_pass() == []  # not due, and never again on its own
    assert len(feed_server.requests_to("/gone")) == 1
    # An operator's forced pass (run --once --all) checks it: still gone, still disabled.
    assert [r.outcome for r in aggregator.run_pass(force=True)] == ["gone"]
    assert "410" in source_state(aggregator, "gone")["disabled_reason"]
    # Back: enabled again, and scheduled like any other feed.
    assert [r.new_articles for r in aggregator.run_pass(force=True)] == [5]
    state = source_state(aggregator, "gone")
    assert state["disabled_reason"] is None and state["consecutive_errors"] == 0
    later = datetime.now(UTC) + timedelta(days=1)
    assert [s.name for s in aggregator.due_sources(later)] == ["gone"]
    assert len(feed_server.requests_to("/gone")) == 3


def test_sources_command_shows_backoff_cooldown_a_move_and_a_gone_feed(tmp_path, feed_server):
    feed_server.route("/failing", Reply(500))
    feed_server.route("/throttled", Reply(429, headers={"Retry-After": "3600"}))
    feed_server.route("/old", Reply(301, headers={"Location": feed_server.url("/new")}))
    feed_server.route("/new", Reply(200, FEED))
    feed_server.route("/gone", Reply(410))
    sources = [{"name": name, "url": feed_server.url(path), "interval": "10m"}
               for name, path in [("backing-off", "/failing"), ("cooling", "/throttled"),
                                  ("moving", "/old"), ("gone", "/gone")]]
    config = write_config(tmp_path / "states.toml", sources, database=str(tmp_path / "s.db"))
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.run_pass()
    aggregator.run_pass(force=True)  # the same 301 twice moves the feed
    aggregator.close()
    result = CliRunner().invoke(main, ["sources", "--config", str(config)])
    assert result.exit_code == 0, result.output
    blocks: dict[str, str] = {}
    for line in result.output.splitlines():
        if not line.startswith(" "):
            name = line.split(" (")[0]
            blocks[name] = ""
        blocks[name] += line + "\n"
    assert "error (HTTP 500)" in blocks["backing-off"]
    assert "errors in a row 2" in blocks["backing-off"]
    assert "throttled (HTTP 429)" in blocks["cooling"]
    assert "cooling down until" in blocks["cooling"]
    assert (f"url {feed_server.url('/new')} (config: {feed_server.url('/old')})"
            in blocks["moving"])
    assert blocks["gone"].startswith("gone (disabled: ") and "410 Gone" in blocks["gone"]
    assert "next check only by run --once --all" in blocks["gone"]


def test_redirect_loop_is_an_error_for_that_source_only(tmp_path, feed_server):
    feed_server.route("/a", Reply(302, b"", {"Location": "/b"}))
    feed_server.route("/b", Reply(302, b"", {"Location": "/a"}))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/a", "/fine"])
    reports = {r.source: r for r in aggregator.run_pass()}
    assert "redirect loop" in reports["a"].error
    assert reports["fine"].new_articles == 5


def test_redirect_to_another_scheme_is_refused(feed_server):
    feed_server.route("/sneaky", Reply(301, b"", {"Location": "file:///etc/passwd"}))
    with httpx.Client() as client, pytest.raises(Exception) as caught:
        fetch_http(client, "s", feed_server.url("/sneaky"), None, None, FetchLimits("t"))
    assert "refused" in str(caught.value)


def test_body_over_the_limit_is_refused_after_decompression(feed_server):
    feed_server.route("/big", Reply(200, b"<rss>" + b" " * 200_000 + b"</rss>", gzip=True))
    with httpx.Client() as client, pytest.raises(Exception) as caught:
        fetch_http(client, "s", feed_server.url("/big"), None, None,
                   FetchLimits("t", max_body_bytes=50_000))
    assert "limit" in str(caught.value)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.OK), (203, Outcome.OK), (304, Outcome.NOT_MODIFIED), (404, Outcome.ERROR),
    (410, Outcome.GONE), (429, Outcome.THROTTLED), (503, Outcome.THROTTLED),
    (500, Outcome.ERROR), (403, Outcome.ERROR),
])
def test_classify_status(status, outcome):
    assert classify_status(status) is outcome


def test_parse_retry_after_both_forms():
    now = datetime(2026, 1, 30, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Fri, 30 Jan 2026 12:05:00 GMT", now) == 300
    assert parse_retry_after("Fri, 30 Jan 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("tomorrow", now) is None
    assert parse_retry_after(None, now) is None


def feed_named(name: str) -> bytes:
    """The test feed, its entries under a host of their own (``name``.example)."""
    return FEED.replace(b"test-wire.example", name.encode() + b".example")


def test_sources_are_fetched_concurrently_but_at_most_two_per_host(tmp_path, feed_server):
    """Replies are held until four requests have been in flight together (or five seconds
    have passed), and a moment more for any request beyond what the limits allow to arrive,
    so that the overlap the limits allow is what the server sees however slow the machine."""
    port = feed_server.httpd.server_address[1]
    paths = [f"/slow{n}" for n in range(8)]
    four_seen: list[float] = []  # when the server first had four in flight

    def held_feed(path: str):
        def feed() -> bytes:
            deadline = time.monotonic() + 5
            while not four_seen and time.monotonic() < deadline:
                if feed_server.max_in_flight.get("*", 0) >= 4:
                    four_seen.append(time.monotonic())
                time.sleep(0.01)
            if four_seen:
                time.sleep(max(0.0, four_seen[0] + 0.3 - time.monotonic()))
            return feed_named(path[1:])
        return feed

    for path in paths:
        feed_server.route(path, Reply(200, body_factory=held_feed(path)))
    sources = [{"name": path.strip("/"),
                "url": f"http://{'127.0.0.1' if n % 2 else 'localhost'}:{port}{path}"}
               for n, path in enumerate(paths)]
    config = write_config(tmp_path / "many.toml", sources, extra="max_concurrency = 8")
    aggregator = Aggregator(load_config(config, environ={}))
    reports = aggregator.run_pass()
    assert [r.source for r in reports] == [p.strip("/") for p in paths]  # configuration order
    assert all(r.new_articles == 5 for r in reports)
    assert feed_server.max_in_flight["127.0.0.1"] == feed_server.max_in_flight["localhost"] == 2
    assert feed_server.max_in_flight["*"] == 4


def test_sources_fetched_a_moment_apart_are_written_in_one_transaction(tmp_path, feed_server,
                                                                       monkeypatch):
    """A writer that keeps up would commit every source alone; it waits a moment for the
    ones behind (WRITE_GROUP_LINGER_S), and not for a slow one: the slow one answers only
    once the first group is being written (or after half a minute, when the group that
    waited for it fails the test), so a loaded machine cannot make it look prompt."""
    first_group_written = threading.Event()

    def slow_feed() -> bytes:
        first_group_written.wait(timeout=30)
        return feed_named("slow")

    feed_server.route("/first", Reply(200, feed_named("first")))
    feed_server.route("/moment", Reply(200, feed_named("moment"), delay_s=0.05))
    feed_server.route("/slow", Reply(200, body_factory=slow_feed))
    aggregator = make_aggregator(tmp_path, feed_server, ["/first", "/moment", "/slow"])
    groups = []
    submit_group = Aggregator._submit_group

    def recorded(self, names, writes):
        groups.append(list(names))
        first_group_written.set()
        return submit_group(self, names, writes)

    monkeypatch.setattr(Aggregator, "_submit_group", recorded)
    reports = aggregator.run_pass()
    assert [r.new_articles for r in reports] == [5, 5, 5]
    assert groups == [["first", "moment"], ["slow"]]


@pytest.mark.parametrize(
    ("sources_ahead", "fetched_entries", "unfinished", "mean", "expected"), [
        (0, 0, 0, None, True),        # nothing fetched yet: as many as fetch at once ...
        (7, 0, 7, None, True),
        (8, 0, 8, None, False),       # ... (max_concurrency 8), until one has been
        (63, 0, 63, 20.0, True),      # feeds of 20 entries: 63 x 20 ahead is under 2,000
        (64, 1280, 0, 20.0, False),   # 64 sources ahead at most, whatever they hold
        (40, 1990, 0, 20.0, True),    # the entries fetched are under the budget
        (40, 2000, 0, 20.0, False),   # at the budget: no more until the writer takes some
        (2, 0, 2, 1000.0, False),     # two large feeds under way fill the budget
        (2, 500, 1, 1000.0, True),
        (39, 0, 39, 0.0, True),       # a pass of 304 answers: no entries wait
    ])
def test_fetching_ahead_stops_at_the_sources_or_the_entries_budget(
        sources_ahead, fetched_entries, unfinished, mean, expected):
    # 64 sources ahead (8 x max_concurrency 8), a budget of 2,000 entries.
    assert fetch_more(sources_ahead, 64, fetched_entries, unfinished, mean, 2000,
                      8) is expected


def large_feed(name: str, entries: int) -> bytes:
    """An RSS feed of ``entries`` items of about 60 words each, its own words."""
    rng = random.Random(name)
    words = [f"{name}w{n}" for n in range(300)] + ["the", "a", "report", "said", "today"]
    items = "".join(
        f"<item><title>{' '.join(rng.choices(words, k=8))}</title>"
        f"<link>https://{name}.example/{number}</link><guid>{name}-{number}</guid>"
        f"<description>{' '.join(rng.choices(words, k=60))}</description></item>"
        for number in range(entries))
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title>'
            f"<link>https://{name}.example/</link>{items}</channel></rss>").encode()


def test_a_pass_over_large_feeds_holds_only_the_entries_budget_ahead_of_the_writer(
        tmp_path, feed_server, monkeypatch):
    """24 feeds of 60 entries, fetched from loopback far faster than the writer clusters
    them.  Counting the entries fetched and not yet handed to the writer at each fetch's
    end: with a budget of 100 entries ahead they stay within the budget, one feed more (a
    feed started under it) and a write group being gathered (groups of 120 entries here).
    By the count of sources alone (8 x max_concurrency = 16 feeds ahead) they reached 360
    in a run here."""
    feeds, entries, budget, group_entries = 24, 60, 100, 120
    monkeypatch.setattr(pipeline, "FETCH_AHEAD_ENTRIES", budget)
    monkeypatch.setattr(pipeline, "WRITE_GROUP_ENTRIES", group_entries)
    paths = [f"/large{n}" for n in range(feeds)]
    for path in paths:
        feed_server.route(path, Reply(200, large_feed(path.strip("/"), entries)))
    aggregator = make_aggregator(tmp_path, feed_server, paths, extra="max_concurrency = 2")
    lock = threading.Lock()
    counted = {"fetched": 0, "handed": 0, "most_ahead": 0}
    fetch_and_parse = aggregator._fetch_and_parse

    def fetched_and_counted(source, row):
        fetched = fetch_and_parse(source, row)
        with lock:
            counted["fetched"] += fetched.entry_count
            counted["most_ahead"] = max(counted["most_ahead"],
                                        counted["fetched"] - counted["handed"])
        return fetched

    submit_group = Aggregator._submit_group

    def handed(self, names, writes):
        with lock:
            counted["handed"] += entries * len(names)
        return submit_group(self, names, writes)

    aggregator._fetch_and_parse = fetched_and_counted
    monkeypatch.setattr(Aggregator, "_submit_group", handed)
    reports = aggregator.run_pass()
    assert [r.source for r in reports] == [p.strip("/") for p in paths]
    assert [r.new_articles for r in reports] == [entries] * feeds
    assert counted["fetched"] == counted["handed"] == feeds * entries
    assert counted["most_ahead"] <= budget + entries + group_entries


@pytest.mark.parametrize(("configured", "cpus", "clustering", "expected"), [
    (-1, 2, True, 1),    # the writer clusters on one core, a worker parses on the other
    (-1, 2, False, 2),   # the writer hardly works: parsing takes every core
    (-1, 1, True, 0),    # one core: a worker would only add a process to switch to
    (-1, 1, False, 0),
    (-1, 16, True, 4),   # at most 4 by default
    (-1, 16, False, 4),
    (3, 2, True, 3),     # configured: as given
    (0, 8, False, 0),
])
def test_worker_processes_by_default_leave_the_writer_a_core_only_when_it_clusters(
        configured, cpus, clustering, expected):
    assert worker_count(configured, cpus, clustering) == expected


def test_a_reloaded_worker_count_replaces_the_pool(tmp_path):
    sources = [{"name": "wire", "url": "http://127.0.0.1:9/feed"}]
    one = load_config(write_config(tmp_path / "one.toml", sources, extra="workers = 1"),
                      environ={})
    two = load_config(write_config(tmp_path / "two.toml", sources, extra="workers = 2"),
                      environ={})
    aggregator = Aggregator(one)
    try:
        pool = aggregator._worker_pool()
        assert aggregator.reload(one) == []
        assert aggregator._worker_pool() is pool
        assert aggregator.reload(two) == ["worker processes: 2"]
        replaced = aggregator._worker_pool()
        assert replaced is not pool and replaced._max_workers == 2
    finally:
        aggregator.close()


def test_workers_started_ahead_are_all_running_before_the_first_pass(tmp_path):
    sources = [{"name": "wire", "url": "http://127.0.0.1:9/feed"}]
    config = load_config(write_config(tmp_path / "two.toml", sources, extra="workers = 2"),
                         environ={})
    aggregator = Aggregator(config)
    before = set(multiprocessing.active_children())
    try:
        assert aggregator.start_workers()
        assert len(set(multiprocessing.active_children()) - before) == 2
        # Workers give the priors of the terms they prepare; this, the writer's process,
        # works them out itself.
        positions, priors = aggregator._worker_pool().submit(
            given_priors, ["talk"], ["talks"]).result()
        assert positions.tolist() == [0] and priors.tolist() == [prior_document_fraction("talks")]
        assert given_priors(["talk"], ["talks"])[0].tolist() == []
    finally:
        aggregator.close()
    one_cpu = load_config(write_config(tmp_path / "none.toml", sources, extra="workers = 0"),
                          environ={})
    without = Aggregator(one_cpu)
    assert not without.start_workers()
    without.close()


def test_feeds_are_prepared_in_the_daemon_while_worker_processes_cannot_start(
        tmp_path, feed_server, monkeypatch, caplog):
    """A container whose process limit is reached, or without a /dev/shm for the workers'
    queues: here no process can start because Python cannot be found where spawn looks."""
    feed_server.route("/wire", Reply(200, FEED, {"Content-Type": "application/rss+xml"}))
    assert len(FEED) >= pipeline.WORKER_MIN_BYTES  # a document a worker would prepare
    aggregator = make_aggregator(tmp_path, feed_server, ["/wire"], extra="workers = 2")
    python = multiprocessing.spawn.get_executable()
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe",
                        os.fsencode(tmp_path / "no-python"))
    before = set(multiprocessing.active_children())
    try:
        # Started by the first feed that needs them (as `run --once` starts them): the feed
        # given to them is prepared here once they are found not to start.
        [report] = aggregator.run_pass(force=True)
        assert (report.outcome, report.new_articles) == ("ok", FEED.count(b"<item>"))
        assert caplog.text.count("worker processes cannot start") == 1
        assert not aggregator.start_workers()  # not tried again so soon
        assert "failed unexpectedly" not in caplog.text
        assert set(multiprocessing.active_children()) == before
        # Python is back; once the retry time has come, the workers start again.
        monkeypatch.setattr(multiprocessing.spawn, "_python_exe", python)
        assert aggregator._worker_pool() is None  # not before
        aggregator._workers_retry_at = time.monotonic()
        assert aggregator.start_workers()
        assert len(set(multiprocessing.active_children()) - before) == 2
        [report] = aggregator.run_pass(force=True)
        assert (report.outcome, report.new_articles) == ("ok", 0)  # its entries known
        assert caplog.text.count("worker processes cannot start") == 1
    finally:
        aggregator.close()


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_when_every_source_is_unreachable_the_feeds_are_not_blamed(tmp_path):
    sources = [{"name": f"down{n}", "url": f"http://127.0.0.1:{closed_port()}/feed",
                "interval": "10m"} for n in range(3)]
    config = write_config(tmp_path / "outage.toml", sources)
    aggregator = Aggregator(load_config(config, environ={}))
    for _ in range(2):
        reports = aggregator.run_pass(force=True)
        assert all(r.unreachable for r in reports)
    for n in range(3):
        state = source_state(aggregator, f"down{n}")
        assert state["consecutive_errors"] == 0
        assert "cannot fetch" in state["last_error"]
        delay = from_iso(state["next_check_at"]) - from_iso(state["last_checked_at"])
        assert timedelta(minutes=10) <= delay <= timedelta(minutes=11)


def test_one_unreachable_source_among_working_ones_backs_off(tmp_path, feed_server):
    feed_server.route("/fine", Reply(200, FEED))
    sources = [{"name": "down", "url": f"http://127.0.0.1:{closed_port()}/feed"},
               {"name": "fine", "url": feed_server.url("/fine")}]
    config = write_config(tmp_path / "partial.toml", sources)
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.run_pass(force=True)
    aggregator.run_pass(force=True)
    assert source_state(aggregator, "down")["consecutive_errors"] == 2


def test_a_throttled_host_cools_down_for_every_feed_on_it(tmp_path, feed_server):
    port = feed_server.httpd.server_address[1]
    feed_server.route("/busy", Reply(429, b"", {"Retry-After": "600"}))
    feed_server.route("/sibling", Reply(200, FEED))
    feed_server.route("/elsewhere", Reply(200, FEED.replace(b"test-wire", b"other-wire")))
    sources = [{"name": "busy", "url": f"http://127.0.0.1:{port}/busy"},
               {"name": "sibling", "url": f"http://127.0.0.1:{port}/sibling"},
               {"name": "elsewhere", "url": f"http://localhost:{port}/elsewhere"}]
    config = write_config(tmp_path / "cool.toml", sources)
    aggregator = Aggregator(load_config(config, environ={}))
    busy = aggregator.refresh(aggregator.config.source("busy"))
    assert busy.outcome == "throttled"
    due = [s.name for s in aggregator.due_sources(datetime.now(UTC))]
    assert due == ["elsewhere"]  # the sibling on the throttled host waits too
    later = datetime.now(UTC) + timedelta(seconds=700)
    assert [s.name for s in aggregator.due_sources(later)] == ["sibling", "elsewhere"]


def test_expires_header_sets_the_next_check(tmp_path, feed_server):
    from email.utils import format_datetime

    expires = format_datetime(datetime.now(UTC) + timedelta(hours=3), usegmt=True)
    feed_server.route("/cached", Reply(200, FEED, {"Expires": expires}))
    aggregator = make_aggregator(tmp_path, feed_server, ["/cached"])
    aggregator.run_pass()
    state = source_state(aggregator, "cached")
    delay = from_iso(state["next_check_at"]) - from_iso(state["last_checked_at"])
    assert timedelta(hours=2, minutes=55) <= delay <= timedelta(hours=3, minutes=20)


@pytest.mark.parametrize("server_ahead", [
    timedelta(0),
    timedelta(days=-365),     # this machine's clock a year ahead of the server's
    timedelta(hours=-5),
    timedelta(hours=1),       # this machine's clock behind
])
def test_expires_and_retry_after_dates_count_from_the_servers_own_clock(
        tmp_path, feed_server, server_ahead):
    """An Expires or Retry-After date is a time on the server's clock: counted from the
    response's Date, as HTTP caches count it, the wait is the one the server meant however
    far this machine's clock is off.  Counted from the local clock, a clock 5 hours ahead
    read a 2-hour Expires as past (polled again in 10 minutes), and one an hour behind read a
    20-minute Retry-After as 80 minutes."""
    from email.utils import format_datetime

    feed_server.clock_ahead_s = server_ahead.total_seconds()
    servers_now = datetime.now(UTC) + server_ahead
    feed_server.route("/cached", Reply(200, FEED, {"Expires": format_datetime(
        servers_now + timedelta(hours=2), usegmt=True)}))
    feed_server.route("/busy", Reply(429, b"slow down", {"Retry-After": format_datetime(
        servers_now + timedelta(minutes=20), usegmt=True)}))
    aggregator = make_aggregator(tmp_path, feed_server, ["/cached", "/busy"])
    aggregator.run_pass()
    delays = {}
    for name in ("cached", "busy"):
        state = source_state(aggregator, name)
        delays[name] = from_iso(state["next_check_at"]) - from_iso(state["last_checked_at"])
    assert timedelta(hours=1, minutes=58) <= delays["cached"] <= timedelta(hours=2, minutes=15)
    assert timedelta(minutes=18) <= delays["busy"] <= timedelta(minutes=24)
    # And what the server's clock says of this one's, which retention heeds.
    limits = FetchLimits(user_agent="test")
    with make_client(limits) as client:
        result = fetch_http(client, "s", feed_server.url("/cached"), None, None, limits)
    assert abs(result.clock_ahead_s + server_ahead.total_seconds()) <= 2
    aggregator.close()


def test_a_caches_answer_is_judged_by_its_date_and_age(feed_server):
    """A cache answers with the Date of the answer it stored, an hour old, and an Age of an
    hour: the server's clock is not taken to be an hour behind, and the Expires it keeps
    (two hours after that Date) has an hour left."""
    from email.utils import format_datetime

    feed_server.clock_ahead_s = -3600.0
    feed_server.route("/cached", Reply(200, FEED, {"Age": "3600", "Expires": format_datetime(
        datetime.now(UTC) + timedelta(hours=1), usegmt=True)}))
    limits = FetchLimits(user_agent="test")
    with make_client(limits) as client:
        result = fetch_http(client, "s", feed_server.url("/cached"), None, None, limits)
    assert abs(result.clock_ahead_s) <= 2
    assert 3590 <= result.max_age_s <= 3601


NOON = datetime(2026, 1, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("date", "age", "expected"), [
    (None, None, NOON),                                   # no Date: the local clock
    (None, "60", NOON),
    (NOON - timedelta(hours=5), None, NOON - timedelta(hours=5)),
    (NOON - timedelta(hours=5), "3600", NOON - timedelta(hours=4)),
    (NOON, " 30 ", NOON + timedelta(seconds=30)),
    (NOON, "-30", NOON),                                  # not an Age
    (NOON, "soon", NOON),
    (NOON, "9" * 5000, NOON + timedelta(seconds=2 ** 31)),  # too large: 2^31 s
    (datetime(9999, 12, 31, tzinfo=UTC), "99999", datetime(9999, 12, 31, tzinfo=UTC)),
])
def test_expires_and_retry_after_count_from_the_answers_date_and_age(date, age, expected):
    assert server_now(date, age, NOON) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("Fri, 30 Jan 2026 12:05:00 GMT", datetime(2026, 1, 30, 12, 5, tzinfo=UTC)),
    ("Friday, 30-Jan-26 12:05:00 GMT", datetime(2026, 1, 30, 12, 5, tzinfo=UTC)),  # RFC 850
    ("Fri Jan 30 12:05:00 2026", datetime(2026, 1, 30, 12, 5, tzinfo=UTC)),       # asctime
    ("Fri, 30 Jan 2026 14:05:00 +0200", datetime(2026, 1, 30, 12, 5, tzinfo=UTC)),
    ("  Fri, 30 Jan 2026 12:05:00 GMT ", datetime(2026, 1, 30, 12, 5, tzinfo=UTC)),
    ("0", None),
    ("yesterday", None),
    ("", None),
    (None, None),
])
def test_http_dates_are_read_in_each_form_the_protocol_allows(value, expected):
    assert parse_http_date(value) == expected


ARTICLE_PAGE = b"""<html><head><title>Bridge reopens</title></head><body>
<nav>Home | World | Sport | Weather</nav>
<article><h1>Harbour bridge reopens after eight months</h1>
<p>The harbour bridge reopened to traffic on Monday after eight months of repairs to its steel
cables and deck, the city council said in a statement.</p>
<p>Engineers replaced 120 cables and resurfaced the deck. Cyclists get a new protected lane on
the eastern side, and buses return to their old route from Wednesday.</p>
<p>The repairs cost 48 million, four million more than planned, because corrosion inside the
anchorages was worse than the first survey had found.</p></article>
<footer>Copyright 2026 Example News. Subscribe to our newsletter.</footer></body></html>"""


def test_full_text_fetches_each_new_entry_page_once(tmp_path, feed_server):
    link = feed_server.url("/news/bridge")
    feed = (f"<rss version='2.0'><channel><title>Summaries</title><item><title>Harbour bridge "
            f"reopens</title><link>{link}</link><guid>{link}</guid><description>The bridge is "
            f"open again.</description></item></channel></rss>").encode()
    feed_server.route("/summaries", Reply(200, feed))
    feed_server.route("/news/bridge", Reply(200, ARTICLE_PAGE,
                                            {"Content-Type": "text/html; charset=utf-8"}))
    config = write_config(tmp_path / "full.toml", [
        {"name": "summaries", "url": feed_server.url("/summaries"), "full_text": True}])
    aggregator = Aggregator(load_config(config, environ={}))
    [report] = aggregator.run_pass()
    assert report.new_articles == 1
    [text] = aggregator.store.db.execute("SELECT text FROM articles").fetchone()
    assert "corrosion inside the anchorages" in text
    assert "Subscribe to our newsletter" not in text and "Home | World" not in text
    aggregator.run_pass(force=True)
    assert len(feed_server.requests_to("/news/bridge")) == 1  # known entries are not refetched
    assert "aggregator" in feed_server.requests_to("/news/bridge")[0].headers["User-Agent"]


def full_text_of(tmp_path, feed_server, link: str) -> Aggregator:
    """A ``full_text`` source whose one entry, a summary, links to ``link``."""
    feed = (f"<rss version='2.0'><channel><title>S</title><item><title>Ferry strike ends"
            f"</title><link>{escape(link)}</link><guid>g1</guid><description>Ferries run again "
            f"after a two-day strike.</description></item></channel></rss>").encode()
    feed_server.route("/summaries", Reply(200, feed))
    config = write_config(tmp_path / "full.toml", [
        {"name": "summaries", "url": feed_server.url("/summaries"), "full_text": True}])
    return Aggregator(load_config(config, environ={}))


def test_full_text_failure_keeps_the_summary(tmp_path, feed_server):
    aggregator = full_text_of(tmp_path, feed_server, feed_server.url("/news/missing"))
    [report] = aggregator.run_pass()
    assert report.new_articles == 1 and report.error is None
    [text] = aggregator.store.db.execute("SELECT text FROM articles").fetchone()
    assert text == "Ferries run again after a two-day strike."
    aggregator.close()


@pytest.mark.parametrize("link", ["http://[::1/news", "http://news.example:99999/a",
                                  "https://news.example/a\x7fb"])
def test_full_text_passes_over_a_link_that_is_no_url(tmp_path, feed_server, link):
    """A feed's links are the feed's to write: one that is no URL at all keeps its summary,
    and no request is made for it."""
    aggregator = full_text_of(tmp_path, feed_server, link)
    [report] = aggregator.run_pass()
    assert report.outcome == "ok" and report.new_articles == 1, report.error
    # The feed, then its site's icon (``icons``): nothing for the entry's link.
    assert [r.path for r in feed_server.requests] == ["/summaries", "/", "/favicon.ico"]
    aggregator.close()


def test_a_service_group_shares_one_limit_spacing_and_cooldown(tmp_path, feed_server):
    port = feed_server.httpd.server_address[1]
    for n in range(4):
        feed_server.route(f"/g{n}", Reply(200, FEED.replace(b"test-wire", f"g{n}".encode())))
    feed_server.route("/busy", Reply(429, b"", {"Retry-After": "7200"}))
    sources = [{"name": f"g{n}", "url": f"http://{'127.0.0.1' if n % 2 else 'localhost'}:"
                                        f"{port}/g{n}"} for n in range(4)]
    config = write_config(
        tmp_path / "group.toml", sources + [{"name": "busy",
                                             "url": f"http://localhost:{port}/busy"}],
        extra='min_host_interval = "0.3s"\n[service_groups]\nloop = ["localhost", "127.0.*"]')
    aggregator = Aggregator(load_config(config, environ={}))
    assert aggregator.host_key(f"http://127.0.0.1:{port}/") == "group:loop"
    reports = aggregator.run_pass()
    assert feed_server.max_in_flight["*"] <= 2  # one limit for the two hosts of the group
    starts = sorted(r.at for r in feed_server.requests)
    assert all(b - a >= 0.25 for a, b in zip(starts, starts[1:], strict=False))
    assert {r.source: r.outcome for r in reports}["busy"] == "throttled"
    # The 429 from localhost cools the whole group, 127.0.0.1 included, for its two hours.
    assert aggregator.due_sources(datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(aggregator.due_sources(datetime.now(UTC) + timedelta(hours=3))) == 5


BASIC_ANN = "Basic " + __import__("base64").b64encode(b"ann:s3cret").decode()


def test_credentials_go_with_every_request_to_the_sources_own_site_and_nowhere_else(
        feed_server):
    from aggregator.config import Credentials
    from aggregator.errors import FetchError

    feed_server.route("/private", Reply(200, FEED, requires={"Authorization": BASIC_ANN,
                                                             "X-Api-Key": "k1"}))
    # A redirect to the same feed on another site (another host name for this server).
    elsewhere = feed_server.url("/private").replace("127.0.0.1", "localhost")
    feed_server.route("/away", Reply(302, b"", {"Location": elsewhere}))
    feed_server.route("/here", Reply(302, b"", {"Location": "/private"}))
    limits = FetchLimits(user_agent="test")
    credentials = Credentials(site=feed_server.url("/here"), username="ann", password="s3cret",
                              headers=(("X-Api-Key", "k1"), ("User-Agent", "custom/1")))
    with make_client(limits) as client:
        # On its own site, across a redirect there too.
        result = fetch_http(client, "s", feed_server.url("/here"), None, None, limits,
                            credentials)
        assert result.outcome is Outcome.OK and result.body == FEED
        # Without them: a 401 that says what to do.
        with pytest.raises(FetchError, match="wants credentials"):
            fetch_http(client, "s", feed_server.url("/private"), None, None, limits)
        # Redirected to another site, the request there carries none of them.
        with pytest.raises(FetchError, match="answered HTTP 401"):
            fetch_http(client, "s", feed_server.url("/away"), None, None, limits, credentials)
    sent = [(r.headers.get("Host", "").split(":")[0], r.headers.get("Authorization"),
             r.headers.get("X-Api-Key"), r.headers.get("User-Agent"))
            for r in feed_server.requests_to("/private")]
    assert sent == [("127.0.0.1", BASIC_ANN, "k1", "custom/1"),
                    ("127.0.0.1", None, None, "test"),
                    ("localhost", None, None, "test")]


def test_a_source_with_credentials_is_polled_with_them_and_its_moved_feed_without(
        tmp_path, feed_server):
    # Configured credentials reach the feed through the daemon; once the feed has moved
    # for good to another site, they stay behind.
    feed_server.route("/private", Reply(200, FEED, requires={"Authorization": BASIC_ANN}))
    config = write_config(tmp_path / "c.toml", [{
        "name": "private", "url": feed_server.url("/private"), "username": "ann",
        "password_env": "FEED_PASSWORD"}])
    aggregator = Aggregator(load_config(config, environ={"FEED_PASSWORD": "s3cret"}))
    try:
        report = aggregator.refresh(aggregator.config.source("private"))
        assert report.outcome == "ok" and report.new_articles > 0
        assert "s3cret" not in repr(aggregator.config.source("private"))
        moved = feed_server.url("/private").replace("127.0.0.1", "localhost")
        with aggregator.store.transaction() as conn:
            conn.execute("UPDATE sources SET url = ? WHERE name = 'private'", [moved])
        again = aggregator.refresh(aggregator.config.source("private"))
        assert again.outcome == "error" and "wants credentials" in again.error
    finally:
        aggregator.close()
    assert [r.headers.get("Authorization") for r in feed_server.requests_to("/private")] == \
        [BASIC_ANN, None]


@pytest.mark.parametrize(("keys", "environ", "error"), [
    ({"username": "ann", "password": "s3cret"}, {}, None),
    ({"username": "ann", "password_env": "P"}, {"P": "s3cret"}, None),
    ({"headers": {"X-Api-Key": "k1", "User-Agent": "mine/1"}}, {}, None),
    ({"username": "ann"}, {}, "key 'password': username and password come together"),
    ({"password": "s3cret"}, {}, "key 'username': username and password come together"),
    ({"username": "ann", "password_env": "P"}, {}, "environment variable P is not set"),
    ({"username": "ann", "password": "a", "password_env": "P"}, {"P": "b"}, "not both"),
    ({"headers": {"If-None-Match": "x"}}, {}, "If-None-Match is set by the fetcher"),
    ({"username": "ann", "password": "a", "headers": {"Authorization": "x"}}, {},
     "from username and password"),
    ({"headers": {"Bad Name": "x"}}, {}, "'Bad Name' is not a header name"),
    ({"headers": {"X-Key": "a\nInjected: b"}}, {}, "X-Key: expected a string on one line"),
    ({"headers": {"X-Key": "caf\u00e9"}}, {}, "X-Key: expected ASCII text"),
    ({"headers": "X-Key: a"}, {}, "key 'headers': expected a table"),
])
def test_credentials_in_the_configuration_are_checked(tmp_path, keys, environ, error):
    from aggregator.errors import ConfigError

    lines = ['database = "t.db"', "[[sources]]", 'name = "private"',
             'url = "https://feeds.example/private.xml"']
    for key, value in keys.items():
        if isinstance(value, dict):
            lines.append(f"{key} = {{ " + ", ".join(
                f'"{name}" = {json_string(text)}' for name, text in value.items()) + " }")
        else:
            lines.append(f"{key} = {json_string(value)}")
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    if error is None:
        credentials = load_config(path, environ=environ).source("private").credentials
        assert credentials.site == "https://feeds.example/private.xml"
        assert "s3cret" not in repr(credentials) and "k1" not in repr(credentials)
        return
    with pytest.raises(ConfigError, match=error):
        load_config(path, environ=environ)


def json_string(value: str) -> str:
    return __import__("json").dumps(value)


def test_credentials_for_a_local_file_are_refused(tmp_path):
    from aggregator.errors import ConfigError

    config = write_config(tmp_path / "c.toml", [{"name": "local", "url": "feed.xml",
                                                 "username": "ann", "password": "x"}])
    with pytest.raises(ConfigError, match="credentials apply to http"):
        load_config(config, environ={})


@pytest.mark.parametrize(("include", "exclude", "title", "link", "kept"), [
    ((), (), "Harbour bridge reopens", "https://n.example/a", True),
    ((), ("(?i)sponsored",), "SPONSORED: a better mattress", "https://n.example/b", False),
    ((), ("(?i)sponsored",), "Harbour bridge reopens", "https://n.example/sponsored/c", False),
    ((), ("(?i)sponsored",), "Harbour bridge reopens", None, True),
    (("(?i)bridge|ferry",), (), "Ferry strike ends", "https://n.example/d", True),
    (("(?i)bridge|ferry",), (), "Election results", "https://n.example/e", False),
    (("/world/",), ("(?i)live:",), "Live: election results", "https://n.example/world/f",
     False),
    (("/world/",), ("(?i)live:",), "Election results", "https://n.example/world/g", True),
])
def test_an_entry_is_kept_when_an_include_pattern_matches_and_no_exclude_pattern(
        include, exclude, title, link, kept):
    from aggregator.config import EntryFilter

    assert EntryFilter(include, exclude).keeps(title, link) is kept


def _items(*entries: tuple[str, str]) -> bytes:
    return ("<rss version='2.0'><channel><title>Desk</title>" + "".join(
        f"<item><title>{title}</title><link>{link}</link><guid>{link}</guid>"
        f"<description>{title}, reported at length by the desk.</description></item>"
        for title, link in entries) + "</channel></rss>").encode()


def test_filtered_entries_are_not_stored_and_their_pages_are_not_fetched(tmp_path,
                                                                         feed_server):
    base = feed_server.url("/news")
    feed_server.route("/desk", Reply(200, _items(
        ("Harbour bridge reopens", f"{base}/bridge"),
        ("Sponsored: a better mattress", f"{base}/mattress"),
        ("Ferry strike ends", f"{base}/promo/ferry"))))
    for page in ("bridge", "mattress", "promo/ferry"):
        feed_server.route(f"/news/{page}", Reply(200, ARTICLE_PAGE,
                                                 {"Content-Type": "text/html"}))
    config = write_config(tmp_path / "c.toml", [
        {"name": "desk", "url": feed_server.url("/desk"), "full_text": True,
         "exclude": ["/promo/"]}], extra='exclude = ["(?i)^sponsored"]')
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "desk: ok, 3 entries, 1 new, 2 filtered out" in result.output
    result = CliRunner().invoke(main, ["run", "--once", "--all", "--config", str(config)])
    assert "desk: ok, 3 entries, 0 new, 2 filtered out" in result.output
    aggregator = Aggregator(load_config(config, environ={}))
    assert aggregator.store.db.execute("SELECT url FROM articles").fetchall() == \
        [(f"{base}/bridge",)]
    aggregator.close()
    assert len(feed_server.requests_to("/news/bridge")) == 1
    assert feed_server.requests_to("/news/mattress") == []
    assert feed_server.requests_to("/news/promo/ferry") == []


@pytest.mark.parametrize(("extra", "source_keys", "error"), [
    ('exclude = ["(unclosed"]', {}, "key 'exclude': '(unclosed' is not a regular expression"),
    ("", {"include": ["ok", 3]}, "expected a list of regular expressions"),
    ("", {"exclude": "(?i)sponsored"}, "key 'exclude': expected a list"),
])
def test_entry_patterns_are_checked_when_the_configuration_loads(tmp_path, extra,
                                                                  source_keys, error):
    from aggregator.errors import ConfigError

    config = write_config(tmp_path / "c.toml", [{"name": "desk", "url": "https://n.example/f",
                                                 **source_keys}], extra=extra)
    with pytest.raises(ConfigError) as raised:
        load_config(config, environ={})
    assert error in str(raised.value)
