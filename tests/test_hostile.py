"""The hostile-input corpus (tests/data/hostile/README.md): each row, its outcome."""

from __future__ import annotations

import gzip
import os
import resource
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import DATA, write_config
from feed_server import Reply
from test_fetch import FEED, make_aggregator, source_state

import aggregator.pipeline as pipeline
from aggregator.config import load_config
from aggregator.errors import FetchError
from aggregator.fetch import refuse_private_address
from aggregator.pipeline import Aggregator

HOSTILE = DATA / "hostile"


def ingest_file(tmp_path, name):
    config = write_config(tmp_path / "h.toml", [{"name": "h", "url": str(HOSTILE / name)}])
    aggregator = Aggregator(load_config(config, environ={}))
    [report] = aggregator.run_pass()
    rows = list(aggregator.store.db.query("SELECT title, text FROM articles"))
    aggregator.close()
    return report, rows


def test_billion_laughs_are_not_expanded(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report, [row] = ingest_file(tmp_path, "billion_laughs.xml")
    assert report.outcome == "ok"
    assert "lollol" not in row["title"] + row["text"]
    assert len(row["title"]) <= 1000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_external_entities_read_no_file(tmp_path):
    _report, [row] = ingest_file(tmp_path, "external_entity.xml")
    assert "root:" not in row["title"] + row["text"]


def test_scripts_and_handlers_are_not_stored(tmp_path):
    _report, [row] = ingest_file(tmp_path, "scripts_and_handlers.xml")
    stored = (row["title"] + row["text"]).lower()
    assert "ferry timetable changes for winter" in stored
    for bad in ("<script", "alert(", "onerror", "onmouseover", "<iframe", "javascript:",
                "document.cookie"):
        assert bad not in stored


@pytest.mark.parametrize(("name", "expected"), [
    ("invalid_utf8.xml", "Café opens"), ("declared_latin1.xml", "München café news"),
])
def test_broken_and_declared_encodings(tmp_path, name, expected):
    report, [row] = ingest_file(tmp_path, name)
    assert report.outcome == "ok"
    assert expected in row["title"]
    (row["title"] + row["text"]).encode("utf-8")  # valid Unicode throughout


def test_gzip_bomb_stops_at_the_limit(tmp_path, feed_server):
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    feed_server.route("/bomb", Reply(200, bomb, {"Content-Encoding": "gzip"}))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/bomb", "/fine"],
                                 extra="max_body_bytes = 1_000_000")
    reports = {r.source: r for r in aggregator.run_pass()}
    assert "over the 1000000-byte limit" in reports["bomb"].error
    assert reports["fine"].new_articles == 5


def test_endless_body_stops_at_the_limit(tmp_path, feed_server):
    feed_server.route("/endless", Reply(endless=True))
    aggregator = make_aggregator(tmp_path, feed_server, ["/endless"],
                                 extra="max_body_bytes = 2_000_000")
    [report] = aggregator.run_pass()
    assert "limit" in report.error
    assert source_state(aggregator, "endless")["consecutive_errors"] == 1


def test_trickling_server_hits_the_total_timeout(tmp_path, feed_server):
    feed_server.route("/slow", Reply(trickle_s=0.3))
    aggregator = make_aggregator(tmp_path, feed_server, ["/slow"],
                                 extra='total_timeout = "2s"\nread_timeout = "5s"')
    [report] = aggregator.run_pass()
    assert "no complete answer within 2 s" in report.error


def test_enormous_title_is_cut(tmp_path, feed_server):
    title = "Headline " * 250_000
    body = (f"<rss version='2.0'><channel><title>x</title><item><title>{title}</title>"
            "<link>https://big.example/1</link><description>Short body about harbour "
            "cranes.</description></item></channel></rss>").encode()
    feed_server.route("/big", Reply(200, body))
    aggregator = make_aggregator(tmp_path, feed_server, ["/big"])
    [report] = aggregator.run_pass()
    [stored] = aggregator.store.db.execute("SELECT title FROM articles").fetchall()
    assert report.new_articles == 1 and len(stored[0]) == 1000


def test_enormous_entry_count_is_capped(tmp_path, feed_server, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_ENTRIES_PER_FETCH", 40)
    items = "".join(f"<item><title>Item {n} about topic {n}</title><link>https://many.example/"
                    f"{n}</link></item>" for n in range(2000))
    feed_server.route("/many", Reply(200, f"<rss version='2.0'><channel><title>m</title>"
                                          f"{items}</channel></rss>".encode()))
    aggregator = make_aggregator(tmp_path, feed_server, ["/many"])
    [report] = aggregator.run_pass()
    assert report.entries == 40 and report.new_articles == 40


def test_changing_guids_do_not_flood(tmp_path, feed_server):
    def fresh_guids() -> bytes:
        items = "".join(
            f"<item><title>Story {n}</title><link>https://shifty.example/story/{n}"
            f"?utm_source=feed&amp;r={uuid.uuid4().hex}</link><guid isPermaLink='false'>"
            f"{uuid.uuid4()}</guid><description>Body of story number {n} about "
            f"bridges.</description></item>" for n in range(5))
        return f"<rss version='2.0'><channel><title>s</title>{items}</channel></rss>".encode()

    feed_server.route("/shifty", Reply(200, body_factory=fresh_guids))
    aggregator = make_aggregator(tmp_path, feed_server, ["/shifty"])
    first = aggregator.run_pass(force=True)[0]
    later = [aggregator.run_pass(force=True)[0] for _ in range(3)]
    assert first.new_articles == 5
    assert [r.new_articles for r in later] == [0, 0, 0]


def test_private_addresses_are_refused_when_asked(tmp_path, feed_server):
    feed_server.route("/feed", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/feed"],
                                 extra="block_private_addresses = true")
    [report] = aggregator.run_pass()
    assert "non-public address 127.0.0.1" in report.error
    assert feed_server.requests_to("/feed") == []
    (tmp_path / "open").mkdir()
    allowed = make_aggregator(tmp_path / "open", feed_server, ["/feed"])
    assert allowed.run_pass()[0].new_articles == 5


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://10.1.2.3/", "http://[::1]/",
                                 "http://169.254.169.254/latest", "http://192.168.0.1/",
                                 "http://localhost/"])
def test_refuse_private_address(url):
    with pytest.raises(FetchError, match="non-public"):
        refuse_private_address("s", url)


def test_public_address_passes():
    refuse_private_address("s", "http://93.184.215.14/")


def test_a_worker_process_that_dies_fails_its_sources_not_the_daemon(tmp_path, feed_server):
    """Feeds are parsed in worker processes: one killed (out of memory, by an operator) costs
    the feeds it was given one failed check, no other feed, and the next ones have workers
    again."""
    paths = [f"/w{n}" for n in range(3)]
    for n, path in enumerate(paths):
        items = "".join(f"<item><title>Report {n}-{i} on harbour cranes and tide tables</title>"
                        f"<link>https://w{n}.example/{i}</link><description>"
                        f"{'Cranes lift containers at the harbour. ' * 20}</description></item>"
                        for i in range(6))
        body = f"<rss version='2.0'><channel><title>w</title>{items}</channel></rss>".encode()
        assert len(body) >= pipeline.WORKER_MIN_BYTES  # so that it goes to a worker
        feed_server.route(path, Reply(200, body))
    aggregator = make_aggregator(tmp_path, feed_server, paths, extra="workers = 1")
    assert {r.outcome for r in aggregator.run_pass()} == {"ok"}
    # Killed while idle: the next feeds go to a new pool, and none fails.
    pool = aggregator._workers
    for process in list(pool._processes.values()):
        process.kill()
        process.join()
    assert {r.outcome for r in aggregator.run_pass(force=True)} == {"ok"}
    assert aggregator._workers is not pool
    # Killed with a feed given to it: stopped first, so that the feed waits for it.
    pool = aggregator._workers
    [worker] = pool._processes.values()
    os.kill(worker.pid, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as running:
        passing = running.submit(aggregator.run_pass, force=True)
        deadline = time.monotonic() + 30
        while not pool._pending_work_items and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool._pending_work_items, "no feed was given to the stopped worker"
        worker.kill()
        reports = passing.result(timeout=60)
    failed = [r.source for r in reports if r.outcome != "ok"]
    assert failed
    for report in reports:
        if report.source in failed:
            assert report.outcome == "parse_error" and "worker process" in report.error
            assert aggregator.store.source(report.source).consecutive_errors == 1
    assert aggregator._workers is not pool
    again = aggregator.run_pass(force=True)
    assert {r.outcome for r in again} == {"ok"}
    assert {aggregator.store.source(f"w{n}").consecutive_errors for n in range(3)} == {0}
    assert aggregator.store.db.execute("SELECT count(*) FROM articles").fetchone()[0] == 18
    aggregator.close()


TTL_FEED = FEED.replace(b"<channel>", b"<channel><ttl>\xc2\xb2</ttl>", 1)


@pytest.mark.parametrize(("reply", "outcome"), [
    # Digits that are not ASCII ("2" as a superscript, in a header's Latin-1): str.isdigit
    # takes them, int and float do not.
    (Reply(429, b"", {"Retry-After": "\u00b2"}), "throttled"),
    (Reply(200, FEED, {"Cache-Control": "max-age=\u00b2"}), "ok"),
    (Reply(200, TTL_FEED), "ok"),
])
def test_numbers_in_digits_that_are_not_ascii_are_ignored(tmp_path, feed_server, reply,
                                                          outcome):
    feed_server.route("/odd", reply)
    aggregator = make_aggregator(tmp_path, feed_server, ["/odd"])
    [report] = aggregator.run_pass()
    assert report.outcome == outcome, report.error
    assert source_state(aggregator, "odd")["next_check_at"] is not None
    aggregator.close()


def test_a_redirect_to_an_address_that_cannot_be_read_is_an_error_of_that_source(
        tmp_path, feed_server):
    feed_server.route("/moved", Reply(301, b"", {"Location": "http://[::1"}))
    feed_server.route("/fine", Reply(200, FEED))
    aggregator = make_aggregator(tmp_path, feed_server, ["/moved", "/fine"])
    reports = {r.source: r for r in aggregator.run_pass()}
    assert reports["moved"].outcome == "error"
    assert "Invalid URL in location header" in reports["moved"].error
    assert reports["fine"].new_articles == 5
    aggregator.close()


@pytest.mark.parametrize("header", ["ETag", "Last-Modified"])
def test_a_validator_beyond_ascii_goes_back_byte_for_byte(tmp_path, feed_server, header):
    """A server's ETag or Last-Modified with bytes beyond ASCII (here Latin-1 "é"): the
    next conditional GET sends the same bytes back, and a matching ETag gets its 304."""
    value = '"caf\u00e9"' if header == "ETag" else "Fri, 30 Jan 2026 12:00:00 GMT \u00e9"
    feed_server.route("/odd", Reply(200, FEED, {header: value}))
    aggregator = make_aggregator(tmp_path, feed_server, ["/odd"])
    [first] = aggregator.run_pass(force=True)
    [second] = aggregator.run_pass(force=True)
    aggregator.close()
    asked = "If-None-Match" if header == "ETag" else "If-Modified-Since"
    assert feed_server.requests_to("/odd")[1].headers[asked] == value
    assert first.outcome == "ok"
    assert second.outcome == ("not_modified" if header == "ETag" else "ok"), second.error
