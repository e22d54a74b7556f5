"""The Fever API: reading apps list stories (one item a story), mark them read or saved,
and a mark holds for the whole story, through new versions, a recluster and retention."""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from conftest import DATA, SEED_FEEDS, write_config
from starlette.testclient import TestClient

from aggregator.cli import main
from aggregator.config import (
    AppAccount,
    ClusteringSettings,
    Config,
    HttpSettings,
    Source,
    load_config,
)
from aggregator.errors import ConfigError
from aggregator.fever import group_id
from aggregator.parse import ParsedEntry
from aggregator.pipeline import Aggregator
from aggregator.web import create_app

ACCOUNT = AppAccount(username="reader@example.org", password="correct horse")
KEY = hashlib.md5(b"reader@example.org:correct horse").hexdigest()
FEVER = f"""
[http.apps]
username = "{ACCOUNT.username}"
password = "{ACCOUNT.password}"
"""


def client(database: str, account: AppAccount | None = ACCOUNT) -> TestClient:
    return TestClient(create_app(database, None, "https://news.example", account))


def call(fever: TestClient, query: str, key: str = KEY, status: int = 200, **form) -> dict:
    response = fever.post(f"/fever/?api&{query}", data={"api_key": key, **form})
    assert response.status_code == status, response.text
    return response.json()


def ids(text: str) -> list[int]:
    return [int(i) for i in text.split(",") if i]


@pytest.fixture
def seeds(tmp_path, seed_dir):
    """The seeds (the Lavrov story in three write-ups, tagged "world") and five other
    stories from a wire (tagged "wire")."""
    shutil.copy(DATA / "other_topics.rss.xml", seed_dir / "other.rss.xml")
    sources = [{"name": n, "url": str(seed_dir / f), "tags": ["world"]}
               for n, f in SEED_FEEDS.items()]
    sources.append({"name": "Test Wire", "url": str(seed_dir / "other.rss.xml"),
                    "tags": ["wire"]})
    config = load_config(write_config(tmp_path / "fever.toml", sources, extra=FEVER),
                         environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()
    return config


def lavrov(database: str) -> tuple[int, int]:
    """The Lavrov story's id and its canonical's source id."""
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT s.id, c.source_id FROM stories s JOIN articles c "
            "ON c.id = s.canonical_article_id WHERE s.article_count = 3").fetchone()


@pytest.mark.parametrize(("key", "auth"), [
    (KEY, 1),
    (KEY.upper(), 1),
    (hashlib.md5(b"reader@example.org:wrong").hexdigest(), 0),
    ("", 0),
])
def test_only_the_accounts_key_opens_the_api(seeds, key, auth):
    answer = call(client(seeds.database), "items&unread_item_ids", key=key)
    assert answer["api_version"] == 3 and answer["auth"] == auth
    if auth:
        assert answer["last_refreshed_on_time"] > 0 and answer["items"]
    else:
        assert set(answer) == {"api_version", "auth"}


def test_without_an_account_there_is_no_api(seeds):
    response = client(seeds.database, None).post("/fever/?api", data={"api_key": KEY})
    assert response.status_code == 404


def test_feeds_are_the_sources_and_groups_their_tags(seeds):
    answer = call(client(seeds.database), "groups&feeds")
    assert sorted(g["title"] for g in answer["groups"]) == ["wire", "world"]
    feeds = {f["title"]: f for f in answer["feeds"]}
    assert set(feeds) == {*SEED_FEEDS, "Test Wire"}
    # Local files have no site; every feed was fetched in the pass.
    assert all(f["site_url"] == "" and f["last_updated_on_time"] > 0 for f in feeds.values())
    by_group = {g["group_id"]: set(ids(g["feed_ids"])) for g in answer["feeds_groups"]}
    assert by_group == {group_id("world"): {feeds[n]["id"] for n in SEED_FEEDS},
                        group_id("wire"): {feeds["Test Wire"]["id"]}}


def test_each_story_is_one_item_with_its_other_versions_under_the_canonical(seeds):
    answer = call(client(seeds.database), "items&since_id=0")
    assert answer["total_items"] == len(answer["items"]) == 6
    story_id, canonical_source = lavrov(seeds.database)
    [item] = [i for i in answer["items"] if i["id"] == story_id]
    assert item["feed_id"] == canonical_source
    assert "diplomat" in item["title"] and item["url"].startswith("https://")
    with sqlite3.connect(seeds.database) as conn:
        others = [row[0] for row in conn.execute(
            "SELECT src.name FROM articles a JOIN sources src ON src.id = a.source_id "
            "WHERE a.story_id = ? AND a.relation != 'canonical'", [story_id])]
    assert len(others) == 2 and all(name in item["html"] for name in others)
    assert f'href="https://news.example/story/{story_id}"' in item["html"]
    assert (item["is_read"], item["is_saved"]) == (0, 0)
    assert item["created_on_time"] > 0


def stories_store(tmp_path, count: int) -> Config:
    """A store of ``count`` stories that share no word, one article each."""
    rng = random.Random(7)
    words = {"".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(4))
             for _ in range(count * 12)}
    vocabulary = sorted(words)
    rng.shuffle(vocabulary)
    config = Config(path=str(tmp_path / "c.toml"), database=str(tmp_path / "many.db"),
                    sources=(Source(name="desk", url=str(tmp_path / "desk.xml"),
                                    interval_s=3600),),
                    clustering=ClusteringSettings(window_days=7),
                    http=HttpSettings(apps=ACCOUNT))
    aggregator = Aggregator(config)
    now = datetime.now(UTC)
    entries = []
    for number in range(count):
        topic = " ".join(vocabulary[number * 10:number * 10 + 10])
        entries.append(ParsedEntry(guid=f"g{number}", link=f"https://desk.example/{number}",
                                   title=f"Report {topic[:40]}", published=now,
                                   content=f"<p>{topic}. {topic}.</p>"))
    report = aggregator.ingest_entries("desk", 0, entries, now)
    aggregator.close()
    assert report.new_articles == count
    return config


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    config = stories_store(tmp_path_factory.mktemp("many"), 120)
    with sqlite3.connect(config.database) as conn:
        assert conn.execute("SELECT count(*) FROM stories").fetchone()[0] == 120
    return config


@pytest.mark.parametrize(("query", "expected"), [
    ("items", list(range(1, 51))),                        # the oldest first
    ("items&since_id=0", list(range(1, 51))),
    ("items&since_id=50", list(range(51, 101))),
    ("items&since_id=110", list(range(111, 121))),
    ("items&since_id=120", []),
    ("items&max_id=0", list(range(120, 70, -1))),         # the newest first
    ("items&max_id=71", list(range(70, 20, -1))),
    ("items&max_id=1", []),
    ("items&with_ids=5,3,999,4", [5, 3, 4]),              # in the order asked
])
def test_items_come_fifty_at_a_time_by_id(many, query, expected):
    answer = call(client(many.database), query)
    assert [item["id"] for item in answer["items"]] == expected
    assert answer["total_items"] == 120


@pytest.mark.parametrize(("query", "form", "named"), [
    ("items&since_id=new", {}, "since_id"),
    ("items&with_ids=" + ",".join(map(str, range(1, 52))), {}, "with_ids"),
    ("items&with_ids=1,x", {}, "with_ids"),
    ("", {"mark": "item", "as": "read", "id": "one"}, "id"),
    ("", {"mark": "item", "as": "starred", "id": "1"}, "as"),
    ("", {"mark": "feed", "as": "saved", "id": "1"}, "as"),
    ("", {"mark": "story", "as": "read", "id": "1"}, "mark"),
])
def test_a_request_it_cannot_answer_names_the_parameter(many, query, form, named):
    answer = call(client(many.database), query, status=400, **form)
    assert answer["auth"] == 1 and answer["error"].startswith(f"{named}:")


def test_a_story_read_stays_read_when_a_new_version_joins_it(tmp_path, seed_dir):
    """Deduplication is for reading a story once: the third write-up of a story read as
    two does not bring it back."""
    feeds = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    path = write_config(tmp_path / "two.toml", feeds[:2], extra=FEVER)
    aggregator = Aggregator(load_config(path, environ={}))
    aggregator.run_pass()
    aggregator.close()
    database = load_config(path, environ={}).database
    fever = client(database)
    [story] = ids(call(fever, "unread_item_ids")["unread_item_ids"])
    answer = call(fever, "", mark="item", **{"as": "read"}, id=str(story))
    assert answer["unread_item_ids"] == ""

    write_config(path, feeds, extra=FEVER)
    aggregator = Aggregator(load_config(path, environ={}))
    assert sum(report.new_articles for report in aggregator.run_pass()) == 1
    aggregator.close()
    assert lavrov(database)[0] == story
    assert call(fever, "unread_item_ids")["unread_item_ids"] == ""
    [item] = call(fever, f"items&with_ids={story}")["items"]
    assert item["is_read"] == 1 and len(item["html"].split("<li>")) == 3


def test_read_unread_saved_unsaved(seeds):
    fever = client(seeds.database)
    story, _source = lavrov(seeds.database)
    everything = ids(call(fever, "unread_item_ids")["unread_item_ids"])
    assert story in everything and len(everything) == 6

    def mark(action):
        return call(fever, "", mark="item", id=str(story), **{"as": action})

    assert story not in ids(mark("read")["unread_item_ids"])
    assert ids(mark("saved")["saved_item_ids"]) == [story]
    [item] = call(fever, f"items&with_ids={story}")["items"]
    assert (item["is_read"], item["is_saved"]) == (1, 1)
    assert ids(mark("unread")["unread_item_ids"]) == everything
    assert ids(mark("unsaved")["saved_item_ids"]) == []
    # Marking twice changes nothing; a story with no marks left has no rows left.
    mark("read")
    with sqlite3.connect(seeds.database) as conn:
        first = conn.execute("SELECT article_id, read_at FROM article_marks "
                             "ORDER BY article_id").fetchall()
        assert len(first) == 3
        mark("read")
        assert conn.execute("SELECT article_id, read_at FROM article_marks "
                            "ORDER BY article_id").fetchall() == first
        mark("unread")
        assert conn.execute("SELECT count(*) FROM article_marks").fetchone()[0] == 0


def test_feeds_and_groups_are_marked_read_up_to_the_apps_list(seeds):
    fever = client(seeds.database)
    answer = call(fever, "feeds&unread_item_ids")
    wire = next(f["id"] for f in answer["feeds"] if f["title"] == "Test Wire")
    story, _source = lavrov(seeds.database)
    now = int(time.time())
    # A list older than every story: nothing is marked.
    left = call(fever, "", mark="feed", id=str(wire), before=str(now - 86400),
                **{"as": "read"})["unread_item_ids"]
    assert len(ids(left)) == 6
    left = call(fever, "", mark="feed", id=str(wire), before=str(now + 5),
                **{"as": "read"})["unread_item_ids"]
    assert ids(left) == [story]
    left = call(fever, "", mark="group", id=str(group_id("world")), before=str(now + 5),
                **{"as": "read"})["unread_item_ids"]
    assert left == ""
    call(fever, "", mark="item", id=str(story), **{"as": "unread"})
    left = call(fever, "", mark="group", id="0", before=str(now + 5),
                **{"as": "read"})["unread_item_ids"]
    assert left == ""


def test_stories_not_updated_for_unread_for_count_as_read(seeds):
    story, _source = lavrov(seeds.database)
    with sqlite3.connect(seeds.database) as conn:
        conn.execute("UPDATE stories SET last_seen = '2020-01-01T00:00:00Z' WHERE id != ?",
                     [story])
    assert ids(call(client(seeds.database), "unread_item_ids")["unread_item_ids"]) == [story]
    week = AppAccount(ACCOUNT.username, ACCOUNT.password, unread_for_s=0.5)
    time.sleep(1.1)
    assert call(client(seeds.database, week), "unread_item_ids")["unread_item_ids"] == ""


def test_a_mark_waits_for_the_daemons_transaction(seeds):
    """The daemon writes in long transactions; a mark made meanwhile waits for it to end
    and is then written, not refused."""
    story, _source = lavrov(seeds.database)
    writer = sqlite3.connect(seeds.database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE sources SET consecutive_errors = consecutive_errors")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(call(
        client(seeds.database), "", mark="item", id=str(story), **{"as": "saved"})))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and not answers
    writer.execute("COMMIT")
    thread.join(10)
    assert ids(answers[0]["saved_item_ids"]) == [story]
    writer.close()


def test_marks_follow_the_articles_through_a_recluster(seeds):
    fever = client(seeds.database)
    story, _source = lavrov(seeds.database)
    call(fever, "", mark="item", id=str(story), **{"as": "saved"})
    call(fever, "", mark="item", id=str(story), **{"as": "read"})
    result = CliRunner().invoke(main, ["recluster", "--config", seeds.path])
    assert result.exit_code == 0, result.output
    story, _source = lavrov(seeds.database)
    assert ids(call(fever, "saved_item_ids")["saved_item_ids"]) == [story]
    assert story not in ids(call(fever, "unread_item_ids")["unread_item_ids"])
    assert len(ids(call(fever, "unread_item_ids")["unread_item_ids"])) == 5


def test_the_items_text_is_cleaned(tmp_path, seed_dir):
    (seed_dir / "hostile.rss.xml").write_bytes(
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>H</title><item>'
        b"<title>&lt;script&gt;alert(1)&lt;/script&gt;Tides</title>"
        b"<link>https://hostile.example/1</link><description>&lt;img src=x "
        b"onerror=alert(2)&gt;Tides rise twice a day, researchers said.</description>"
        b"</item></channel></rss>")
    path = write_config(tmp_path / "h.toml", [{"name": "H", "url": str(seed_dir /
                                                                        "hostile.rss.xml")}],
                        extra=FEVER)
    aggregator = Aggregator(load_config(path, environ={}))
    aggregator.run_pass()
    aggregator.close()
    [item] = call(client(load_config(path, environ={}).database), "items")["items"]
    assert "<script" not in item["html"] and "onerror" not in item["html"]
    assert "Tides rise twice a day" in item["html"]


@pytest.mark.parametrize(("table", "environ", "error"), [
    ('username = "a"', {}, "key 'http.apps.password': give password or password_env"),
    ('username = "a"\npassword = "p"\npassword_env = "P"', {},
     "key 'http.apps.password': give password or password_env"),
    ('password = "p"', {}, "key 'http.apps.username': is required"),
    ('username = "a"\npassword_env = "APPS_PASSWORD"', {},
     "key 'http.apps.password_env': environment variable APPS_PASSWORD is not set"),
    ('username = "a"\npassword = ""', {}, "key 'http.apps.password': must not be empty"),
    ('username = "a"\npassword = "p"\nunread_for = "soon"', {}, "key 'http.apps.unread_for'"),
    ('username = "a"\npassword = "p"\nkey = "k"', {}, "key 'http.apps.key': unknown key"),
])
def test_a_broken_fever_table_is_refused_with_where(tmp_path, table, environ, error):
    path = write_config(tmp_path / "c.toml", [], extra=f"[http.apps]\n{table}")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=environ)
    assert error in str(raised.value)


def test_the_password_may_come_from_the_environment(tmp_path):
    path = write_config(tmp_path / "c.toml", [], extra='[http.apps]\nusername = "a"\n'
                                                     'password_env = "APPS_PASSWORD"\n'
                                                     'unread_for = "7d"')
    account = load_config(path, environ={"APPS_PASSWORD": "s3cr3t-value"}).http.apps
    assert account == AppAccount("a", "s3cr3t-value", 7 * 86400.0)
    assert "s3cr3t" not in repr(account)
    # Commands that only edit the configuration run without the daemon's secrets.
    assert load_config(path, environ={}, secrets=False).http.apps.password == ""


def test_an_app_syncs_over_http_from_the_daemons_server(seeds, tmp_path):
    """``aggregator serve`` answers a real HTTP client the way an app asks: the key in a
    form, the sections in the query."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "serve", "--config", seeds.path, "--port",
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/fever/?api&items&unread_item_ids"
        for _ in range(100):
            try:
                answer = httpx.post(url, data={"api_key": KEY}, timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer["auth"] == 1 and len(answer["items"]) == 6
        story, _source = lavrov(seeds.database)
        marked = httpx.post(f"http://127.0.0.1:{port}/fever/?api",
                            data={"api_key": KEY, "mark": "item", "as": "read",
                                  "id": str(story)}, timeout=5).json()
        assert story not in ids(marked["unread_item_ids"])
    finally:
        server.terminate()
        server.wait(10)


def test_the_daemon_answers_apps_while_it_polls_and_takes_a_new_password(tmp_path, seed_dir):
    """A mark written while the daemon writes its passes (every second), and a password
    changed in the file taking effect at the next reload, without a restart."""
    import signal
    import subprocess
    import sys

    import httpx
    from test_web import free_port, wait_for

    port = free_port()
    sources = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    http = f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
    path = write_config(tmp_path / "daemon.toml", sources, extra=http + FEVER)
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "run", "--config", str(path), "--tick", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/fever/?api"
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        deadline = time.monotonic() + 30
        while not (answer := httpx.post(url + "&unread_item_ids", data={"api_key": KEY})
                   .json()).get("unread_item_ids"):
            assert time.monotonic() < deadline, "no story came"
            time.sleep(0.2)
        [story] = ids(answer["unread_item_ids"])
        marked = httpx.post(url, data={"api_key": KEY, "mark": "item", "as": "saved",
                                       "id": str(story)}).json()
        assert ids(marked["saved_item_ids"]) == [story]

        new_key = hashlib.md5(f"{ACCOUNT.username}:another one".encode()).hexdigest()
        write_config(path, sources, extra=http + FEVER.replace(ACCOUNT.password, "another one"))
        deadline = time.monotonic() + 30
        while httpx.post(url, data={"api_key": new_key}).json()["auth"] != 1:
            assert time.monotonic() < deadline, "the new password never took effect"
            time.sleep(0.2)
        assert httpx.post(url, data={"api_key": KEY}).json()["auth"] == 0
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
