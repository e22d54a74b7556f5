"""A reader's corrections: articles split out of a story, stories merged; carried out by
the command alone or by the running daemon, kept through a recluster, and the window in
memory left as a restart would rebuild it."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import sqlite3
import time

import pytest
from click.testing import CliRunner
from conftest import (
    DATA,
    SEED_FEEDS,
    daemon_running,
    killed_at_exit,
    start_daemon,
    stop_daemon,
    wait_until_polling,
    write_config,
)
from starlette.testclient import TestClient

from aggregator.check import check_store
from aggregator.cli import main
from aggregator.cluster import Clusterer
from aggregator.config import AppAccount, load_config
from aggregator.corrections import (
    NEW_STORY,
    CorrectionError,
    NewCorrections,
    plan_merge,
    plan_split,
)
from aggregator.pipeline import Aggregator, load_clusterer
from aggregator.retention import window_to_self
from aggregator.store import Store, utcnow
from aggregator.web import create_app

# Two stories of the window: 1 (articles 10, 11, 12) and 2 (20, 21); 3 (30) alone.
STORY_OF = {10: 1, 11: 1, 12: 1, 20: 2, 21: 2, 30: 3}
MEMBERS_OF = {1: [10, 11, 12], 2: [20, 21], 3: [30]}


@pytest.mark.parametrize("articles, moves, losing", [
    ([11], {11: NEW_STORY}, (1,)),
    ([10, 12], {10: NEW_STORY, 12: NEW_STORY}, (1,)),
    ([21], {21: NEW_STORY}, (2,)),
])
def test_plan_split(articles, moves, losing):
    regrouping = plan_split(articles, STORY_OF, MEMBERS_OF)
    assert (regrouping.moves, regrouping.losing, regrouping.emptied) == (moves, losing, ())


@pytest.mark.parametrize("articles, moves, losing", [
    ([10, 20], {20: 1, 21: 1}, (2,)),
    ([21, 11], {20: 1, 21: 1}, (2,)),  # the oldest story takes the others, whatever the order
    ([30, 20, 12], {20: 1, 21: 1, 30: 1}, (2, 3)),
    ([30, 21], {30: 2}, (3,)),
])
def test_plan_merge(articles, moves, losing):
    regrouping = plan_merge(articles, STORY_OF, MEMBERS_OF)
    assert (regrouping.moves, regrouping.losing, regrouping.emptied) == (moves, losing, losing)


@pytest.mark.parametrize("plan, articles, message", [
    (plan_split, [10, 11, 12], "the named articles are the whole of story 1"),
    (plan_split, [30], "the named articles are the whole of story 3"),
    (plan_split, [10, 20], "articles 10 and 20 are in different stories (1 and 2)"),
    (plan_split, [11, 99], "article 99 is not in the clustering window"),
    (plan_split, [], "name at least one article"),
    (plan_merge, [10, 11], "the articles are all in story 1: nothing to merge"),
    (plan_merge, [10, 99], "article 99 is not in the clustering window"),
])
def test_corrections_that_cannot_be_carried_out_say_why(plan, articles, message):
    with pytest.raises(CorrectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(articles, STORY_OF, MEMBERS_OF)


@pytest.fixture
def seeds(tmp_path, seed_dir):
    """The Lavrov story's three write-ups and five other stories from a wire."""
    shutil.copy(DATA / "other_topics.rss.xml", seed_dir / "other.rss.xml")
    sources = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    sources.append({"name": "Test Wire", "url": str(seed_dir / "other.rss.xml")})
    path = write_config(tmp_path / "corrections.toml", sources)
    aggregator = Aggregator(load_config(path, environ={}))
    aggregator.run_pass()
    aggregator.close()
    return path


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def stories(database: str) -> dict[int, tuple[int, list[tuple[int, str]]]]:
    """Each story: its canonical, and its members with their relations."""
    with sqlite3.connect(database) as conn:
        canonical = dict(conn.execute("SELECT id, canonical_article_id FROM stories"))
        members: dict[int, list[tuple[int, str]]] = {}
        for article_id, story_id, relation in conn.execute(
                "SELECT id, story_id, relation FROM articles ORDER BY id"):
            members.setdefault(story_id, []).append((article_id, relation))
    return {story_id: (canonical[story_id], members[story_id]) for story_id in members}


def lavrov(database: str) -> tuple[int, list[int]]:
    """The Lavrov story's id and its members, the canonical first."""
    with sqlite3.connect(database) as conn:
        story_id, canonical = conn.execute(
            "SELECT id, canonical_article_id FROM stories WHERE article_count = 3").fetchone()
        others = [a for (a,) in conn.execute("SELECT id FROM articles WHERE story_id = ? "
                                             "AND id != ? ORDER BY id", [story_id, canonical])]
    return story_id, [canonical, *others]


def window(clusterer) -> dict[int, tuple]:
    """What the clusterer keeps of each story of the window (its members in slot order)."""
    rows = clusterer.rows
    return {story_id: (clusterer.members(story_id), story.canonical_id,
                       int(rows.article_id[story.canonical_slot]), story.first_ts,
                       story.last_ts, story.dated_first_ts, story.dated_last_ts,
                       int(clusterer.story_columns.size[story.row]))
            for story_id, story in clusterer.stories.items()}


def test_a_split_and_a_merge_leave_the_window_as_a_restart_rebuilds_it(seeds):
    config = load_config(seeds, environ={})
    aggregator = Aggregator(config)
    try:
        story_id, [canonical, second, third] = lavrov(config.database)
        before = window(aggregator.clusterer)
        # The canonical leaves: the story elects another, the new story is the canonical's.
        aggregator.store.request_correction("split", [canonical], utcnow())
        [(_correction, new_story, error)] = aggregator.apply_corrections()
        assert error is None and new_story not in before
        after = stories(config.database)
        assert after[new_story] == (canonical, [(canonical, "canonical")])
        new_canonical, members = after[story_id]
        assert new_canonical in (second, third)
        assert sorted(members) == sorted([(new_canonical, "canonical"),
                                          ({second, third}.difference([new_canonical]).pop(),
                                           "same_story")])
        assert window(aggregator.clusterer) == window(load_clusterer(
            aggregator.store, config.clustering, aggregator.signer))
        assert check_store(aggregator.store, config.clustering) == []
        with sqlite3.connect(config.database) as conn:
            reasons = [r for (r,) in conn.execute(
                "SELECT reason FROM canonical_history WHERE story_id IN (?, ?) ORDER BY id",
                [story_id, new_story])]
        note = f"(correction 1: article(s) {canonical} split out of their story)"
        assert reasons[-2].startswith("more complete text") and reasons[-2].endswith(note)
        assert reasons[-1] == f"first version of the story {note}"
        # Merged back: one story of three again, under the same canonical as at first.
        aggregator.store.request_correction("merge", [second, canonical], utcnow())
        [(_correction, merged, error)] = aggregator.apply_corrections()
        assert error is None and merged == story_id
        assert window(aggregator.clusterer) == window(load_clusterer(
            aggregator.store, config.clustering, aggregator.signer))
        restored = window(aggregator.clusterer)
        assert restored[story_id][:3] == before[story_id][:3]
        assert new_story not in restored
        assert stories(config.database)[story_id][0] == canonical
        assert check_store(aggregator.store, config.clustering) == []
    finally:
        aggregator.close()


def test_the_commands_carry_corrections_out_and_recluster_keeps_them(seeds):
    database = load_config(seeds, environ={}).database
    story_id, [canonical, second, third] = lavrov(database)
    result = cli("split", str(third), "--config", str(seeds))
    assert result.exit_code == 0, result.output
    [new_story] = [s for s, (c, _m) in stories(database).items() if c == third]
    assert result.output == f"correction 1: the articles are in story {new_story} now\n"
    explained = cli("explain", str(third), "--config", str(seeds)).output
    assert f"story {new_story}, relation now canonical" in explained
    assert "moved by a reader since: correction 1 (split, " in explained
    # Without the correction, recluster joins the three again (they did at first).
    result = cli("recluster", "--config", str(seeds))
    assert result.exit_code == 0, result.output
    after = stories(database)
    assert [members for _c, members in after.values() if (third, "canonical") in members] \
        == [[(third, "canonical")]]
    assert sorted(len(members) for _c, members in after.values()) == [1, 1, 1, 1, 1, 1, 2]
    # Then merged with the story of the other two, and that too survives a recluster.
    story_id, _ = next((s, m) for s, (c, m) in after.items() if len(m) == 2)
    alone = next(s for s, (c, m) in after.items() if c == third)
    result = cli("merge", str(alone), str(story_id), "--config", str(seeds))
    assert result.exit_code == 0, result.output
    assert cli("recluster", "--config", str(seeds)).exit_code == 0
    assert sorted(len(m) for _c, m in stories(database).values()) == [1, 1, 1, 1, 1, 3]
    result = cli("corrections", "--config", str(seeds), "--json")
    made = [json.loads(line) for line in result.output.splitlines()]
    assert [(c["id"], c["kind"], c["error"]) for c in made] == [(1, "split", None),
                                                                (2, "merge", None)]
    assert made[0]["article_ids"] == [third]
    assert cli("check", "--config", str(seeds)).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["split", "999"], "error: no article 999\n"),
    (["merge", "1", "999"], "error: no story 999\n"),
    (["split", "0"], "Invalid value for 'ARTICLE_ID...'"),
    (["merge", "1"], "name two stories or more"),
    (["merge", "1", "1"], "name two stories or more"),
    (["split", "1", "--wait", "soon"], "Invalid value for --wait"),
])
def test_a_correction_that_names_nothing_stored_is_refused(seeds, args, message):
    result = cli(*args, "--config", str(seeds))
    assert result.exit_code != 0 and message in result.output
    with sqlite3.connect(load_config(seeds, environ={}).database) as conn:
        assert conn.execute("SELECT count(*) FROM story_corrections").fetchone() == (0,)


def test_a_correction_that_cannot_be_carried_out_is_recorded_with_why(seeds):
    database = load_config(seeds, environ={}).database
    _story, members = lavrov(database)
    before = stories(database)
    result = cli("split", *map(str, members), "--config", str(seeds))
    assert result.exit_code == 1
    assert "correction 1 not carried out: the named articles are the whole of story" \
        in result.output
    assert stories(database) == before
    result = cli("corrections", "--config", str(seeds))
    assert "1: split of articles" in result.output and "not carried out" in result.output


def test_merged_stories_keep_their_webhook_deliveries(seeds):
    config = load_config(seeds, environ={})
    store = Store(config.database)
    story_id, [canonical, *_] = lavrov(config.database)
    other = next(s for s in stories(config.database) if s != story_id)
    with store.transaction() as conn:
        conn.execute("INSERT INTO webhook_deliveries (webhook, story_id, outcome, attempts, "
                     "last_attempt_at, delivered_at) VALUES ('hook', ?, 'delivered', 1, 'x', "
                     "'x')", [max(story_id, other)])
    store.close()
    assert cli("merge", str(story_id), str(other), "--config", str(seeds)).exit_code == 0
    with sqlite3.connect(config.database) as conn:
        assert conn.execute("SELECT story_id FROM webhook_deliveries").fetchall() == [
            (min(story_id, other),)]
    assert cli("check", "--config", str(seeds)).exit_code == 0


def test_the_running_daemon_carries_out_a_correction(seeds):
    database = load_config(seeds, environ={}).database
    story_id, [_canonical, second, _third] = lavrov(database)
    with daemon_running(seeds) as daemon:
        assert wait_until_polling(daemon).startswith("polling"), daemon.communicate(timeout=30)
        started = time.monotonic()
        result = cli("split", str(second), "--config", str(seeds), "--wait", "30s")
        assert result.exit_code == 0, result.output
        new_story = stories(database)[story_id][0] != second and next(
            s for s, (c, _m) in stories(database).items() if c == second)
        assert result.output == f"correction 1: the articles are in story {new_story} now\n"
        assert time.monotonic() - started < 30
        # A daemon that is slow to come round leaves the correction waiting.
        daemon.send_signal(signal.SIGSTOP)
        result = cli("merge", str(story_id), str(new_story), "--config", str(seeds),
                     "--wait", "1s")
        assert result.exit_code == 0, result.output
        assert result.output.startswith("correction 2 kept: the running daemon carries it out")
        assert "waiting for the daemon" in cli("corrections", "--config", str(seeds)).output
        daemon.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(stories(database)[story_id][1]) != 3:
            time.sleep(0.2)
        assert len(stories(database)[story_id][1]) == 3
        err = stop_daemon(daemon)
        assert daemon.returncode == 0, err
    assert cli("check", "--config", str(seeds)).exit_code == 0


def test_new_corrections_are_told_once_each_while_another_connection_keeps_them(tmp_path):
    """What the daemon asks every second: a correction kept since it last asked, by another
    connection (``aggregator split`` or a replica's page), on a real store file."""
    store = Store(str(tmp_path / "kept.db"))
    new = NewCorrections(store.path)
    steps = [
        (None, False),                     # none kept
        (("split", [1]), True),            # one kept: tell it
        (None, False),                     # still waiting: not told again
        (("merge", [1, 2]), True),         # another kept
        ("carry out 1", False),            # the newest is the same one
        ("carry out 2", False),            # none waiting
        (("split", [3]), True),
    ]
    for step, told in steps:
        if isinstance(step, tuple):
            store.request_correction(*step, utcnow())
        elif step is not None:
            with store.transaction() as conn:
                store.record_correction(conn, int(step.split()[-1]), utcnow(), 1, None)
        assert new() is told, step
    new.close()
    store.close()
    assert NewCorrections(":memory:")() is False


def test_a_correction_kept_by_the_command_is_carried_out_within_seconds_not_at_the_next_tick(
        seeds):
    database = load_config(seeds, environ={}).database
    story_id, [_canonical, second, _third] = lavrov(database)
    with killed_at_exit(start_daemon(seeds, tick="60s")) as daemon:
        assert wait_until_polling(daemon).startswith("polling"), daemon.communicate(timeout=30)
        started = time.monotonic()
        result = cli("split", str(second), "--config", str(seeds), "--wait", "20s")
        assert result.output.startswith("correction 1: the articles are in story "), \
            result.output
        assert time.monotonic() - started < 10
        err = stop_daemon(daemon)
        assert daemon.returncode == 0, err


def test_a_correction_from_the_page_of_a_running_daemon_is_carried_out_at_once(seeds):
    """A split asked for from a story page of the daemon's own web server is carried out
    within seconds (the daemon looks for new corrections every second), not at the next
    tick (a minute here)."""
    import httpx
    from test_web import free_port, wait_for

    port = free_port()
    seeds.write_text(seeds.read_text(encoding="utf-8").replace(
        '"\n', f'"\n[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
                f'[http.apps]\nusername = "{ACCOUNT.username}"\n'
                f'password = "{ACCOUNT.password}"\n', 1), encoding="utf-8")
    database = load_config(seeds, environ={}).database
    story_id, [_canonical, second, _third] = lavrov(database)
    with killed_at_exit(start_daemon(seeds, tick="60s")) as daemon:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/healthz")
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/readyz").status_code != 200:  # its first pass is over
            assert time.monotonic() < deadline, "the daemon never became ready"
            time.sleep(0.1)
        asked = httpx.post(f"{base}/story/{story_id}/split",
                           data={"article_id": str(second)}, headers=SIGNED)
        assert asked.status_code == 303, asked.text
        deadline = time.monotonic() + 15
        while "Correction 1: carried out" not in httpx.get(
                base + asked.headers["location"]).text:
            assert time.monotonic() < deadline, "the correction waits for the next tick"
            time.sleep(0.1)
        err = stop_daemon(daemon)
        assert daemon.returncode == 0, err
    assert second not in stories(database)[story_id][1]


def test_a_daemon_that_starts_during_a_correction_loads_the_corrected_window(seeds):
    config = load_config(seeds, environ={})
    story_id, [_canonical, second, _third] = lavrov(config.database)
    with window_to_self(config.database) as alone:
        assert alone
        daemon = start_daemon(seeds)
        time.sleep(3)  # long enough for it to start, and to load a window it could
        aggregator = Aggregator(config)
        try:
            aggregator.store.request_correction("split", [second], utcnow())
            [(_correction, new_story, error)] = aggregator.apply_corrections()
            assert error is None
        finally:
            aggregator.close()
    with killed_at_exit(daemon):
        wait_until_polling(daemon)
        # Its window has the split: the merge it carries out finds two stories.
        result = cli("merge", str(story_id), str(new_story), "--config", str(seeds),
                     "--wait", "30s")
        assert result.output == f"correction 2: the articles are in story {story_id} now\n"
        stop_daemon(daemon)


ACCOUNT = AppAccount(username="reader@example.org", password="correct horse")
SIGNED = {"Authorization": "Basic " + base64.b64encode(b"reader@example.org:correct horse")
          .decode()}


def test_a_story_page_asks_for_corrections_signed_by_the_apps_account(seeds):
    config = load_config(seeds, environ={})
    story_id, [canonical, second, _third] = lavrov(config.database)
    web = TestClient(create_app(config.database, apps=ACCOUNT))
    page = web.get(f"/story/{story_id}").text
    assert page.count(f'action="/story/{story_id}/split"') == 3
    assert f'action="/story/{story_id}/merge"' in page
    split = {"article_id": str(second)}
    assert web.post(f"/story/{story_id}/split", data=split).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"reader@example.org:guess").decode()}
    assert web.post(f"/story/{story_id}/split", data=split, headers=wrong).status_code == 401
    # Another site's page cannot post it with the browser's credentials.
    refused = web.post(f"/story/{story_id}/split", data=split,
                       headers={**SIGNED, "Origin": "https://elsewhere.example"})
    assert refused.status_code == 403
    # Behind a proxy the server sees a host of its own: base_url names the public one.
    proxied = TestClient(create_app(config.database, None, "https://news.example", ACCOUNT))
    assert proxied.post(f"/story/{story_id}/split", data={"article_id": "x"},
                        headers={**SIGNED, "Origin": "https://news.example"}).status_code == 400
    assert proxied.post(f"/story/{story_id}/split", data={"article_id": "x"},
                        headers={**SIGNED, "Origin": "https://elsewhere.example"}
                        ).status_code == 403
    for data, message in [({"article_id": "99"}, f"article 99 is not a version of story "
                                                 f"{story_id}"),
                          ({"article_id": "x"}, "article_id: expected an id, got 'x'"),
                          ({}, "article_id: name the versions to take out")]:
        answer = web.post(f"/story/{story_id}/split", data=data, headers=SIGNED)
        assert (answer.status_code, message in answer.text) == (400, True)
    assert web.post(f"/story/{story_id}/undo", data=split, headers=SIGNED).status_code == 404
    with sqlite3.connect(config.database) as conn:
        assert conn.execute("SELECT count(*) FROM story_corrections").fetchone() == (0,)
    answer = web.post(f"/story/{story_id}/split", data=split,
                      headers={**SIGNED, "Origin": "http://testserver"},
                      follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/story/{story_id}?correction=1"
    assert "Correction 1: waiting: the daemon carries it out" in web.get(
        answer.headers["location"]).text
    # The daemon's next tick.
    aggregator = Aggregator(config)
    try:
        aggregator.run_pass()
    finally:
        aggregator.close()
    [new_story] = [s for s, (c, _m) in stories(config.database).items() if c == second]
    assert (f'Correction 1: carried out: the articles are in <a href="/story/{new_story}">'
            in web.get(f"/story/{story_id}?correction=1").text)
    # Merged back from the page.
    for data, message in [({"story_id": str(new_story)}, "a story other than this one"),
                          ({"story_id": "999"}, "story_id: no story 999")]:
        answer = web.post(f"/story/{new_story}/merge", data=data, headers=SIGNED)
        assert (answer.status_code, message in answer.text) == (400, True)
    answer = web.post(f"/story/{new_story}/merge", data={"story_id": str(story_id)},
                      headers=SIGNED, follow_redirects=False)
    assert answer.headers["location"] == f"/story/{new_story}?correction=2"
    with sqlite3.connect(config.database) as conn:
        assert json.loads(conn.execute("SELECT article_ids FROM story_corrections WHERE id = 2")
                          .fetchone()[0]) == [second, canonical]


def test_without_the_apps_account_the_story_page_offers_no_corrections(seeds):
    config = load_config(seeds, environ={})
    story_id, [_canonical, second, _third] = lavrov(config.database)
    web = TestClient(create_app(config.database))
    assert "Not this story" not in web.get(f"/story/{story_id}").text
    answer = web.post(f"/story/{story_id}/split", data={"article_id": str(second)},
                      headers=SIGNED)
    assert answer.status_code == 404 and "[http.apps]" in answer.text


def test_a_correction_that_fails_unexpectedly_stops_neither_polling_nor_the_next(
        seeds, monkeypatch, caplog):
    config = load_config(seeds, environ={})
    story_id, [_canonical, second, third] = lavrov(config.database)
    before = stories(config.database)
    aggregator = Aggregator(config)
    try:
        real_regroup = Clusterer.regroup
        calls = []

        def regroup_failing_once(self, moves, losing):
            calls.append(moves)
            if len(calls) == 1:
                real_regroup(self, moves, losing)  # the window changed, then the failure
                raise RuntimeError("disk on fire")
            return real_regroup(self, moves, losing)

        monkeypatch.setattr(Clusterer, "regroup", regroup_failing_once)
        aggregator.store.request_correction("split", [second], utcnow())
        aggregator.store.request_correction("split", [third], utcnow())
        reports = aggregator.run_pass(force=True)
        assert len(reports) == 4 and all(report.error is None for report in reports)
        after = stories(config.database)
        # The first rolled back: the second version is still in the story; the second done.
        assert [a for a, _relation in after[story_id][1]] == sorted(
            set(a for a, _relation in before[story_id][1]) - {third})
        assert next(m for c, m in after.values() if c == third) == [(third, "canonical")]
        # The failed one was rolled back, window and all, and is not tried again.
        assert window(aggregator.clusterer) == window(load_clusterer(
            aggregator.store, config.clustering, aggregator.signer))
        aggregator.run_pass(force=True)
        assert len(calls) == 2
    finally:
        aggregator.close()
    result = cli("corrections", "--config", str(seeds), "--json")
    made = [json.loads(line) for line in result.output.splitlines()]
    assert made[0]["error"] == "failed: RuntimeError: disk on fire"
    assert made[1]["error"] is None
    assert "disk on fire" in caplog.text
    assert cli("check", "--config", str(seeds)).exit_code == 0


def test_close_calls_name_the_stories_a_story_nearly_joined(seeds):
    config = load_config(seeds, environ={})
    story_id, [_canonical, _second, third] = lavrov(config.database)
    assert cli("split", str(third), "--config", str(seeds)).exit_code == 0
    [alone] = [s for s, (c, _m) in stories(config.database).items() if c == third]
    # The split version had joined the Lavrov story: it stays its closest call.
    found = json.loads(cli("story", str(alone), "--json", "--config", str(seeds)).output)
    [closest, *_others] = found["close_calls"]
    assert (closest["story_id"], closest["article_id"]) == (story_id, third)
    assert closest["closeness"] >= 1 and closest["article_count"] == 2
    assert all(c["closeness"] <= closest["closeness"] for c in found["close_calls"])
    assert all(c["story_id"] != alone for c in found["close_calls"])
    text = cli("story", str(alone), "--config", str(seeds)).output
    assert f"close calls (stories its versions nearly joined; `aggregator merge {alone} ID`" \
        in text
    assert f"  story {story_id} (2 articles), " in text
    web = TestClient(create_app(config.database, apps=ACCOUNT))
    page = web.get(f"/story/{alone}").text
    assert "<h2>Close calls</h2>" in page
    assert (f'<input type="hidden" name="story_id" value="{story_id}"> <button '
            'type="submit">Same story: merge</button>') in page
    assert "Same story: merge" not in TestClient(create_app(config.database)).get(
        f"/story/{alone}").text
    answer = web.post(f"/story/{alone}/merge", data={"story_id": str(story_id)},
                      headers=SIGNED, follow_redirects=False)
    assert answer.status_code == 303
    aggregator = Aggregator(config)
    try:
        [(_correction, merged, error)] = aggregator.apply_corrections()
    finally:
        aggregator.close()
    assert (merged, error) == (story_id, None)
    assert len(stories(config.database)[story_id][1]) == 3


def test_corrections_with_writes_behind_the_writer(tmp_path, seed_dir):
    path = write_config(tmp_path / "behind.toml",
                        [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()],
                        extra="write_behind = true\nworkers = 1")
    config = load_config(path, environ={})
    aggregator = Aggregator(config)
    try:
        aggregator.run_pass()
        story_id, [_canonical, second, _third] = lavrov(config.database)
        aggregator.store.request_correction("split", [second], utcnow())
        aggregator.run_pass(force=True)
        assert len(stories(config.database)[story_id][1]) == 2
        assert window(aggregator.clusterer) == window(load_clusterer(
            aggregator.store, config.clustering, aggregator.signer))
        assert check_store(aggregator.store, config.clustering) == []
    finally:
        aggregator.close()


def test_a_correction_asked_while_the_store_is_held_too_long_is_a_503(seeds, monkeypatch):
    config = load_config(seeds, environ={})
    story_id, [_canonical, second, _third] = lavrov(config.database)
    monkeypatch.setattr("aggregator.reading.BUSY_TIMEOUT_MS", 200)
    writer = sqlite3.connect(config.database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        web = TestClient(create_app(config.database, apps=ACCOUNT))
        answer = web.post(f"/story/{story_id}/split", data={"article_id": str(second)},
                          headers=SIGNED)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert answer.status_code == 503 and "the store cannot be changed now" in answer.text
