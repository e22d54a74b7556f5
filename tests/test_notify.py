"""Webhooks: each story posted once, when enough sources report it, to a real HTTP server
on 127.0.0.1; failures waited out, rejections recorded, nothing posted twice."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import DATA, SEED_FEEDS, write_config
from feed_server import Reply
from starlette.testclient import TestClient

from aggregator.check import check_store
from aggregator.cli import main
from aggregator.config import Webhook, load_config
from aggregator.errors import ConfigError
from aggregator.fetch import Delivery, classify_delivery
from aggregator.notify import RETRY_BASE_S, RETRY_MAX_S, marks_as_of_now, retry_delay
from aggregator.pipeline import Aggregator
from aggregator.store import Store, utcnow
from aggregator.web import create_app

LAVROV = "Russias top diplomat rejects key part of deal to end war with Ukraine"


@pytest.mark.parametrize("status, outcome", [
    (200, Delivery.DELIVERED), (202, Delivery.DELIVERED), (204, Delivery.DELIVERED),
    (400, Delivery.REJECTED), (413, Delivery.REJECTED), (415, Delivery.REJECTED),
    (422, Delivery.REJECTED),
    (301, Delivery.RETRY), (401, Delivery.RETRY), (403, Delivery.RETRY),
    (404, Delivery.RETRY), (408, Delivery.RETRY), (429, Delivery.RETRY),
    (500, Delivery.RETRY), (502, Delivery.RETRY), (503, Delivery.RETRY),
])
def test_classify_delivery(status, outcome):
    assert classify_delivery(status) is outcome


@pytest.mark.parametrize("failures, seconds", [
    (0, RETRY_BASE_S), (1, RETRY_BASE_S), (2, 2 * RETRY_BASE_S), (3, 4 * RETRY_BASE_S),
    (9, 256 * RETRY_BASE_S), (10, RETRY_MAX_S), (50, RETRY_MAX_S),
])
def test_retry_delay_doubles_up_to_a_ceiling(failures, seconds):
    assert retry_delay(failures) == min(seconds, RETRY_MAX_S)


@pytest.mark.parametrize(("since", "cursor", "expected"), [
    ("2026-01-01T00:00:00Z", "2026-03-01T11:00:00Z", ("2026-01-01T00:00:00Z",
                                                      "2026-03-01T11:00:00Z")),
    # A minute ahead: a small correction, left as it is.
    ("2026-01-01T00:00:00Z", "2026-03-01T12:01:00Z", ("2026-01-01T00:00:00Z",
                                                      "2026-03-01T12:01:00Z")),
    # The clock set back a day, then a year: from now.
    ("2026-01-01T00:00:00Z", "2026-03-02T12:00:00Z", ("2026-01-01T00:00:00Z",
                                                      "2026-03-01T12:00:00Z")),
    ("2027-03-01T00:00:00Z", "2027-03-01T12:00:00Z", ("2026-03-01T12:00:00Z",
                                                      "2026-03-01T12:00:00Z")),
])
def test_webhook_marks_ahead_of_the_clock_count_from_now(since, cursor, expected):
    from aggregator.store import from_iso

    assert marks_as_of_now(since, cursor, from_iso("2026-03-01T12:00:00Z")) == expected


def seeds_with_webhooks(tmp_path, seed_dir, webhooks: str):
    shutil.copy(DATA / "other_topics.rss.xml", seed_dir / "other.rss.xml")
    sources = [{"name": n, "url": str(seed_dir / f), "tags": ["world"]}
               for n, f in SEED_FEEDS.items()]
    sources.append({"name": "Test Wire", "url": str(seed_dir / "other.rss.xml"),
                    "tags": ["wire"]})
    return write_config(tmp_path / "hooks.toml", sources, extra=webhooks)


def hook(server, name, path, **settings) -> str:
    lines = [f'name = "{name}"', f'url = "{server.url(path)}"']
    lines += [f"{key} = " + ("{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}"
                                               for k, v in value.items()) + " }"
                            if isinstance(value, dict) else json.dumps(value))
              for key, value in settings.items()]
    return "[[webhooks]]\n" + "\n".join(lines) + "\n"


def posted(server, path):
    return [json.loads(r.body) for r in server.requests_to(path) if r.method == "POST"]


def test_each_story_is_posted_once_when_enough_sources_report_it(tmp_path, seed_dir,
                                                                  feed_server):
    feed_server.route("/three", Reply(204))
    feed_server.route("/all", Reply(200, b"ok"))
    feed_server.route("/wire", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, "".join([
        hook(feed_server, "three or more", "/three", min_sources=3,
             headers={"X-Token": "s3cret"}),
        hook(feed_server, "everything", "/all"),
        hook(feed_server, "wire only", "/wire", tags=["wire"])]) +
        '[http]\nbase_url = "https://news.example"\n')
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        aggregator.run_pass()
        assert (aggregator.last_delivery.delivered, aggregator.last_delivery.failed) == (12, 0)
        [lavrov] = posted(feed_server, "/three")
        assert lavrov["story"]["title"] == LAVROV and lavrov["webhook"] == "three or more"
        assert lavrov["story"]["source_count"] == 3 and len(lavrov["versions"]) == 3
        assert lavrov["versions"][0]["is_canonical"] == 1
        assert lavrov["story"]["page"] == f"https://news.example/story/{lavrov['story']['story_id']}"
        assert lavrov["text"].startswith(LAVROV) and "3 sources" in lavrov["text"]
        [request] = [r for r in feed_server.requests_to("/three")]
        assert request.headers["X-Token"] == "s3cret"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"].startswith("news-dedup-aggregator")
        assert len(posted(feed_server, "/all")) == 6  # one a story, not one an article
        assert len(posted(feed_server, "/wire")) == 5
        # Nothing new: nothing posted again, in this process or after a restart.
        aggregator.run_pass(force=True)
    finally:
        aggregator.close()
    again = Aggregator(load_config(config, environ={}))
    try:
        again.run_pass(force=True)
        assert again.last_delivery.delivered == 0
    finally:
        again.close()
    assert len(posted(feed_server, "/all")) == 6 and len(posted(feed_server, "/three")) == 1
    store = Store(load_config(config, environ={}).database)
    rows = list(store.db.query("SELECT webhook, outcome, attempts, status, delivered_at "
                               "FROM webhook_deliveries WHERE webhook = 'three or more'"))
    assert len(rows) == 1 and rows[0]["outcome"] == "delivered" and rows[0]["status"] == 204
    # Each webhook's cursor stands at the last update it went through: the next pass reads
    # only the stories updated since (less an hour's overlap), not the whole store.  That is
    # the newest update of the stories it was sent, which is the store's newest only for a
    # webhook that takes every story: the sources are fetched (and their stories updated)
    # within a second or two of each other.
    cursors = dict(store.db.execute("SELECT key, value FROM meta WHERE key LIKE "
                                    "'webhook_cursor:%'").fetchall())
    sent = dict(store.db.execute(
        "SELECT 'webhook_cursor:' || d.webhook, max(st.last_seen) FROM webhook_deliveries d "
        "JOIN stories st ON st.id = d.story_id GROUP BY d.webhook").fetchall())
    assert cursors == sent and len(cursors) == 3
    newest = store.db.execute("SELECT max(last_seen) FROM stories").fetchone()[0]
    assert cursors["webhook_cursor:everything"] == newest
    # A story that retention deletes takes its deliveries with it.
    with store.transaction() as conn:
        Store.purge_stories(conn, [lavrov["story"]["story_id"]], utcnow())
    assert store.db.execute("SELECT count(*) FROM webhook_deliveries WHERE story_id = ?",
                            [lavrov["story"]["story_id"]]).fetchone()[0] == 0
    assert check_store(store, load_config(config, environ={}).clustering) == []
    with store.transaction() as conn:  # what check finds when a delivery outlives its story
        conn.execute("INSERT INTO webhook_deliveries (webhook, story_id, outcome, attempts, "
                     "last_attempt_at) VALUES ('everything', 999999, 'delivered', 1, 'x')")
    [violation] = check_store(store, load_config(config, environ={}).clustering)
    assert violation.detail == ("webhook 'everything': a delivery of story 999999, "
                                "which does not exist")
    store.close()


def test_a_failing_receiver_is_waited_out_and_gets_every_story_in_order(tmp_path, seed_dir,
                                                                         feed_server):
    feed_server.route("/flaky", Reply(503, b"busy"), Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, hook(feed_server, "flaky", "/flaky"))
    clock = [1000.0]
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.notifier.clock = lambda: clock[0]
    try:
        aggregator.run_pass()
        report = aggregator.last_delivery
        assert (report.delivered, report.failed) == (0, 1)
        assert len(feed_server.requests_to("/flaky")) == 1  # it stopped at the failure
        aggregator.run_pass(force=True)
        assert aggregator.last_delivery.waiting == 1
        assert len(feed_server.requests_to("/flaky")) == 1  # nothing during the delay
        clock[0] += RETRY_BASE_S + 1
        aggregator.run_pass(force=True)
        assert aggregator.last_delivery.delivered == 6
        failed_first = posted(feed_server, "/flaky")[0]["story"]["story_id"]
        assert posted(feed_server, "/flaky")[1]["story"]["story_id"] == failed_first
        store = aggregator.store
        [row] = store.db.query("SELECT outcome, attempts FROM webhook_deliveries "
                               "WHERE story_id = ?", [failed_first])
        assert (row["outcome"], row["attempts"]) == ("delivered", 2)
    finally:
        aggregator.close()


def test_a_rejected_story_is_recorded_and_the_others_go_on(tmp_path, seed_dir, feed_server):
    feed_server.route("/picky", Reply(422, b"no"), Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, hook(feed_server, "picky", "/picky"))
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        aggregator.run_pass()
        report = aggregator.last_delivery
        assert (report.rejected, report.delivered, report.failed) == (1, 5, 0)
        aggregator.run_pass(force=True)
        assert len(feed_server.requests_to("/picky")) == 6  # the rejected one not again
        outcomes = dict(aggregator.store.db.execute(
            "SELECT outcome, count(*) FROM webhook_deliveries GROUP BY outcome").fetchall())
        assert outcomes == {"rejected": 1, "delivered": 5}
        shown = CliRunner().invoke(main, ["webhooks", "--config", str(config)])
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert lines[0] == "picky (stories from 1 sources)"
        assert lines[1].startswith("  5 delivered, 1 rejected, 0 waiting; last attempt 20")
        assert lines[2] == "  last error: HTTP 422: no"
        listed = json.loads(CliRunner().invoke(
            main, ["webhooks", "--config", str(config), "--json"]).output)
        assert [(w["name"], w["delivered"], w["rejected"], w["waiting"]) for w in listed] == [
            ("picky", 5, 1, 0)]
        assert feed_server.base not in shown.output
        metrics = TestClient(create_app(aggregator.store.path)).get("/metrics").text
        assert 'aggregator_webhook_stories{outcome="delivered",webhook="picky"} 5.0' in metrics
        assert 'aggregator_webhook_stories{outcome="rejected",webhook="picky"} 1.0' in metrics
    finally:
        aggregator.close()


def test_an_unreachable_receiver_never_stops_the_daemon(tmp_path, seed_dir):
    config = seeds_with_webhooks(tmp_path, seed_dir,
                                 '[[webhooks]]\nname = "gone"\nurl = "http://127.0.0.1:9/h"\n')
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        reports = aggregator.run_pass()
        assert sum(r.new_articles for r in reports) == 8
        assert aggregator.last_delivery.failed == 1
        [row] = aggregator.store.db.query("SELECT outcome, error FROM webhook_deliveries")
        assert row["outcome"] == "retry" and "ConnectError" in row["error"]
    finally:
        aggregator.close()


def test_a_new_webhook_posts_what_is_updated_after_it_not_the_past(tmp_path, seed_dir,
                                                                    feed_server):
    feed_server.route("/late", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, "")
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        aggregator.run_pass()  # every story stored before the webhook exists
        # ... a minute before: times in the store have whole seconds, and a story updated in
        # the second the daemon first sees a webhook is posted to it.
        with aggregator.store.transaction() as conn:
            conn.execute("UPDATE stories SET last_seen = ?",
                         [(utcnow() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")])
    finally:
        aggregator.close()
    text = config.read_text()
    config.write_text(text + hook(feed_server, "late", "/late"))
    later = Aggregator(load_config(config, environ={}))
    try:
        later.run_pass(force=True)
        assert posted(feed_server, "/late") == []
        # A story updated from now on is posted: a fourth outlet's version of it.
        store = later.store
        story_id = store.db.execute("SELECT id FROM stories WHERE source_count = 3"
                                    ).fetchone()[0]
        with store.transaction() as conn:
            conn.execute("UPDATE stories SET last_seen = ? WHERE id = ?",
                         [(utcnow() + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          story_id])
        later.run_pass(force=True)
        assert [p["story"]["story_id"] for p in posted(feed_server, "/late")] == [story_id]
    finally:
        later.close()
    # Taken out of the configuration, it forgets where it was: added again, it starts anew.
    config.write_text(text)
    removed = Aggregator(load_config(config, environ={}))
    try:
        removed.run_pass(force=True)
        assert not list(removed.store.db.query(
            "SELECT key FROM meta WHERE key LIKE 'webhook_%'"))
    finally:
        removed.close()


def test_a_clock_set_back_does_not_pass_over_the_stories_updated_since(tmp_path, seed_dir,
                                                                       feed_server, caplog):
    """A webhook's marks (when it was first seen, the last update it went through) were
    stamped by a clock later set back: moved a year ahead here, as such marks look.  A
    story updated now is posted all the same, not once the clock has caught up."""
    feed_server.route("/hook", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, hook(feed_server, "hook", "/hook",
                                                          min_sources=3))
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        aggregator.run_pass()
        [first] = posted(feed_server, "/hook")
        store = aggregator.store
        with store.transaction() as conn:
            conn.execute("UPDATE meta SET value = strftime('%Y-%m-%dT%H:%M:%SZ', value, "
                         "'+365 days') WHERE key LIKE 'webhook\\_%' ESCAPE '\\'")
            # Another story reaches three sources now.
            conn.execute("UPDATE stories SET source_count = 3, last_seen = ? WHERE id = "
                         "(SELECT max(id) FROM stories WHERE source_count < 3)",
                         [utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")])
        aggregator.run_pass(force=True)
        stories = [p["story"]["story_id"] for p in posted(feed_server, "/hook")]
        assert len(stories) == 2 and stories[0] == first["story"]["story_id"]
        assert "ahead of the clock" in caplog.text
        marks = dict(store.db.execute("SELECT key, value FROM meta WHERE key LIKE "
                                      "'webhook\\_%' ESCAPE '\\'").fetchall())
        assert max(marks.values()) <= utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    finally:
        aggregator.close()


def test_a_text_webhook_gets_the_line_alone(tmp_path, seed_dir, feed_server):
    feed_server.route("/ntfy", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, hook(feed_server, "phone", "/ntfy",
                                                          min_sources=3, format="text"))
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        aggregator.run_pass()
    finally:
        aggregator.close()
    [request] = feed_server.requests_to("/ntfy")
    assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert request.body.decode() == (
        f"{LAVROV} (3 sources: Europe Brief, News18 World, World Desk Daily) "
        "https://world-desk.example/world/russias-top-diplomat-rejects-key-part-of-deal")


def test_a_webhook_added_to_a_running_daemon_is_used_from_its_next_pass(tmp_path, seed_dir,
                                                                         feed_server):
    feed_server.route("/later", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, "")
    aggregator = Aggregator(load_config(config, environ={}))
    try:
        config.write_text(config.read_text() + hook(feed_server, "later", "/later",
                                                    min_sources=3))
        aggregator.reload(load_config(config, environ={}))  # what SIGHUP or an edit does
        aggregator.run_pass()
        assert [p["story"]["title"] for p in posted(feed_server, "/later")] == [LAVROV]
        config.write_text(config.read_text().split("[[webhooks]]")[0])
        aggregator.reload(load_config(config, environ={}))
        aggregator.run_pass(force=True)
        assert aggregator.last_delivery.delivered == 0
        assert len(feed_server.requests_to("/later")) == 1
    finally:
        aggregator.close()


def test_run_once_says_what_the_webhooks_got(tmp_path, seed_dir, feed_server):
    feed_server.route("/h", Reply(200, b"ok"))
    config = seeds_with_webhooks(tmp_path, seed_dir, hook(feed_server, "h", "/h",
                                                          min_sources=2))
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "webhooks: 1 delivered, 0 rejected, 0 to try again, 0 webhooks waiting" in \
        result.output


@pytest.mark.parametrize("table, message", [
    ('name = "a"', "webhooks[0].url': expected an http(s) URL"),
    ('name = "a"\nurl = "ftp://x.example/"', "expected an http(s) URL"),
    ('url = "https://x.example/"', "webhooks[0].name': is required"),
    ('name = "a"\nurl = "https://x.example/"\nmin_sources = 0', "min_sources"),
    ('name = "a"\nurl = "https://x.example/"\ntags = "world"', "expected a list"),
    ('name = "a"\nurl = "https://x.example/"\nheaders = { "Bad Name" = "x" }',
     "is not a header name"),
    ('name = "a"\nurl = "https://x.example/"\nsecret = 1', "unknown key"),
    ('name = "a"\nurl = "https://x.example/"\nformat = "xml"', 'expected "json" or "text"'),
    ('name = "a"\nurl = "https://x.example/"\n[[webhooks]]\nname = "a"\n'
     'url = "https://y.example/"', "another webhook is named 'a'"),
])
def test_webhooks_in_the_configuration_are_checked(tmp_path, table, message):
    path = tmp_path / "c.toml"
    path.write_text(f'database = "x.db"\n[[webhooks]]\n{table}\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, environ={})


def test_a_webhook_keeps_its_url_and_headers_out_of_logs(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('database = "x.db"\n[[webhooks]]\nname = "chat"\n'
                    'url = "https://hooks.example/T0/B0/token123"\n'
                    'min_sources = 2\ntags = ["world"]\nheaders = { Authorization = "x" }\n')
    [webhook] = load_config(path, environ={}).webhooks
    assert webhook == Webhook("chat", "https://hooks.example/T0/B0/token123", 2, ("world",),
                              (("Authorization", "x"),), "json")
    assert "token123" not in repr(webhook) and "Authorization" not in repr(webhook)


def test_a_recluster_posts_nothing_again_and_leaves_no_delivery_behind(tmp_path, seed_dir,
                                                                       feed_server):
    feed_server.route("/all", Reply(200, b"ok"))
    config = load_config(seeds_with_webhooks(tmp_path, seed_dir,
                                             hook(feed_server, "everything", "/all")),
                         environ={})
    # The wire's stories after the Lavrov story, which is stored first.
    wire = seed_dir / "other.rss.xml"
    wire.write_text(wire.read_text().replace(" Jan 2026", " Mar 2026"))
    aggregator = Aggregator(config)
    try:
        aggregator.run_pass()
        assert len(posted(feed_server, "/all")) == 6
        # Reclustered under settings that keep the Lavrov write-ups apart: the stories
        # are numbered anew (the wire's after three Lavrov stories), two of them new.
        aggregator.settings = replace(config.clustering, same_story_threshold=0.99,
                                      long_text_threshold=0.99)
        aggregator.recluster()
        assert check_store(aggregator.store, config.clustering) == []
        aggregator.run_pass(force=True)
        titles = [payload["story"]["title"] for payload in posted(feed_server, "/all")]
        assert len(titles) == 8 and len(set(titles)) == 8
        assert aggregator.store.db.execute(
            "SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 8
    finally:
        aggregator.close()
