"""The reading apps' APIs, Fever and Google Reader: apps list stories (one item a story),
mark them read or saved, and a mark holds for the whole story, through new versions, a
recluster and retention."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from conftest import DATA, SEED_FEEDS, daemon_running, stop_daemon, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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

READING_LIST = "user/-/state/com.google/reading-list"
READ = "user/-/state/com.google/read"
STARRED = "user/-/state/com.google/starred"
ACCOUNT = AppAccount(username="reader@example.org", password="correct horse")
KEY = hashlib.md5(b"reader@example.org:correct horse").hexdigest()
APPS = f"""
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
    config = load_config(write_config(tmp_path / "fever.toml", sources, extra=APPS),
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
    # Beyond SQLite's 64-bit integers: refused, not a failed query.
    ("items&since_id=" + "9" * 23, {}, "since_id"),
    ("items&max_id=" + "9" * 23, {}, "max_id"),
    ("items&since_id=-" + "9" * 23, {}, "since_id"),
    ("items&with_ids=1," + "9" * 23, {}, "with_ids"),
    ("", {"mark": "item", "as": "read", "id": "9" * 23}, "id"),
    ("", {"mark": "feed", "as": "read", "id": "1", "before": "9" * 18}, "before"),
])
def test_a_request_it_cannot_answer_names_the_parameter(many, query, form, named):
    answer = call(client(many.database), query, status=400, **form)
    assert answer["auth"] == 1 and answer["error"].startswith(f"{named}:")


def test_a_story_read_stays_read_when_a_new_version_joins_it(tmp_path, seed_dir):
    """Deduplication is for reading a story once: the third write-up of a story read as
    two does not bring it back."""
    feeds = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    path = write_config(tmp_path / "two.toml", feeds[:2], extra=APPS)
    aggregator = Aggregator(load_config(path, environ={}))
    aggregator.run_pass()
    aggregator.close()
    database = load_config(path, environ={}).database
    fever = client(database)
    [story] = ids(call(fever, "unread_item_ids")["unread_item_ids"])
    answer = call(fever, "", mark="item", **{"as": "read"}, id=str(story))
    assert answer["unread_item_ids"] == ""

    write_config(path, feeds, extra=APPS)
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
    # The stories' counts of read versions came along (the unread list reads them).
    with closing(sqlite3.connect(seeds.database)) as conn:
        assert conn.execute("SELECT id, read_versions FROM stories WHERE read_versions > 0"
                            ).fetchall() == [(story, 3)]


def test_the_items_text_is_cleaned(tmp_path, seed_dir):
    (seed_dir / "hostile.rss.xml").write_bytes(
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>H</title><item>'
        b"<title>&lt;script&gt;alert(1)&lt;/script&gt;Tides</title>"
        b"<link>https://hostile.example/1</link><description>&lt;img src=x "
        b"onerror=alert(2)&gt;Tides rise twice a day, researchers said.</description>"
        b"</item></channel></rss>")
    path = write_config(tmp_path / "h.toml", [{"name": "H", "url": str(seed_dir /
                                                                        "hostile.rss.xml")}],
                        extra=APPS)
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
def test_a_broken_apps_table_is_refused_with_where(tmp_path, table, environ, error):
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


def test_apps_sync_over_http_from_the_replica(seeds, tmp_path):
    """``aggregator serve`` answers real HTTP clients the way the apps ask: Fever's key in a
    form and the sections in the query; Google Reader's sign-in, then its token in a
    header.  A mark made through one API shows in the other."""
    import subprocess
    import sys

    import httpx
    from test_web import free_port

    port = free_port()
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

        base = f"http://127.0.0.1:{port}"
        login = httpx.post(f"{base}/accounts/ClientLogin",
                           data={"Email": ACCOUNT.username, "Passwd": ACCOUNT.password})
        token = dict(line.split("=", 1) for line in login.text.split())["Auth"]
        headers = {"Authorization": f"GoogleLogin auth={token}"}
        unread = httpx.get(f"{base}/reader/api/0/stream/items/ids",
                           params={"s": READING_LIST, "xt": READ, "n": "1000"},
                           headers=headers).json()
        assert len(unread["itemRefs"]) == 5 and str(story) not in \
            {ref["id"] for ref in unread["itemRefs"]}
        assert httpx.post(f"{base}/reader/api/0/edit-tag", headers=headers,
                          data={"i": str(story), "a": STARRED}).text == "OK"
        saved = httpx.post(f"http://127.0.0.1:{port}/fever/?api&saved_item_ids",
                           data={"api_key": KEY}).json()
        assert ids(saved["saved_item_ids"]) == [story]
    finally:
        server.terminate()
        server.wait(10)


def test_the_daemon_answers_apps_while_it_polls_and_takes_a_new_password(tmp_path, seed_dir):
    """A mark written while the daemon writes its passes (every second), and a password
    changed in the file taking effect at the next reload, without a restart."""

    import httpx
    from test_web import free_port, wait_for

    port = free_port()
    sources = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    http = f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
    path = write_config(tmp_path / "daemon.toml", sources, extra=http + APPS)
    url = f"http://127.0.0.1:{port}/fever/?api"
    with daemon_running(path) as process:
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
        write_config(path, sources, extra=http + APPS.replace(ACCOUNT.password, "another one"))
        deadline = time.monotonic() + 30
        while httpx.post(url, data={"api_key": new_key}).json()["auth"] != 1:
            assert time.monotonic() < deadline, "the new password never took effect"
            time.sleep(0.2)
        assert httpx.post(url, data={"api_key": KEY}).json()["auth"] == 0
        stop_daemon(process)
    assert process.returncode == 0


# The Google Reader API.


def reader(database: str, account: AppAccount | None = ACCOUNT) -> TestClient:
    """A client signed in as an app signs in: ClientLogin, then the token in a header."""
    app = client(database, account)
    login = app.post("/accounts/ClientLogin", data={"Email": ACCOUNT.username,
                                                    "Passwd": ACCOUNT.password})
    assert login.status_code == 200, login.text
    token = dict(line.split("=", 1) for line in login.text.split())["Auth"]
    app.headers["Authorization"] = f"GoogleLogin auth={token}"
    return app


def get(app: TestClient, path: str, status: int = 200, **params):
    response = app.get(f"/reader/api/0/{path}", params=params)
    assert response.status_code == status, response.text
    return response.json() if status == 200 and path != "token" else response.text


def post(app: TestClient, path: str, status: int = 200, **form) -> str:
    response = app.post(f"/reader/api/0/{path}", data=form)
    assert response.status_code == status, response.text
    return response.text


def ref_ids(answer: dict) -> list[int]:
    return [int(ref["id"]) for ref in answer["itemRefs"]]


@pytest.mark.parametrize(("email", "password", "status"), [
    (ACCOUNT.username, ACCOUNT.password, 200),
    (ACCOUNT.username, "wrong", 401),
    ("someone@example.org", ACCOUNT.password, 401),
    ("", "", 401),
])
def test_client_login_gives_a_token_for_the_account_only(seeds, email, password, status):
    response = client(seeds.database).post("/accounts/ClientLogin",
                                           data={"Email": email, "Passwd": password})
    assert response.status_code == status
    assert ("Auth=" in response.text) == (status == 200)
    if status == 401:
        assert response.text.startswith("Error=BadAuthentication")


def test_calls_need_the_token_and_a_new_password_ends_it(seeds):
    app = reader(seeds.database)
    assert get(app, "user-info")["userName"] == ACCOUNT.username
    assert get(app, "token").strip()
    anonymous = client(seeds.database)
    assert anonymous.get("/reader/api/0/user-info").status_code == 401
    anonymous.headers["Authorization"] = "GoogleLogin auth=reader@example.org/0000"
    assert anonymous.get("/reader/api/0/user-info").status_code == 401
    changed = client(seeds.database, AppAccount(ACCOUNT.username, "new password"))
    changed.headers["Authorization"] = app.headers["Authorization"]
    assert changed.get("/reader/api/0/user-info").status_code == 401
    off = client(seeds.database, None)
    assert off.post("/accounts/ClientLogin", data={"Email": "a", "Passwd": "b"}
                    ).status_code == 404
    assert off.get("/reader/api/0/user-info").status_code == 404


def test_subscriptions_are_the_sources_in_folders_of_their_tags(seeds):
    app = reader(seeds.database)
    subscriptions = {s["title"]: s for s in get(app, "subscription/list")["subscriptions"]}
    assert set(subscriptions) == {*SEED_FEEDS, "Test Wire"}
    assert subscriptions["Test Wire"]["categories"] == [{"id": "user/-/label/wire",
                                                         "label": "wire"}]
    assert all(s["id"].startswith("feed/") for s in subscriptions.values())
    assert get(app, "tag/list")["tags"] == [
        {"id": STARRED}, {"id": "user/-/label/wire", "type": "folder"},
        {"id": "user/-/label/world", "type": "folder"}]


@pytest.mark.parametrize(("params", "pages"), [
    # 20 a page unless asked, newest first: the pages go on until one is not full.
    ({}, [list(range(120 - 20 * n, 100 - 20 * n, -1)) for n in range(6)] + [[]]),
    ({"r": "o", "n": "50"}, [list(range(1, 51)), list(range(51, 101)),
                             list(range(101, 121))]),
    ({"n": "60"}, [list(range(120, 60, -1)), list(range(60, 0, -1)), []]),
    ({"n": "10000", "xt": READ}, [list(range(120, 0, -1))]),
    ({"it": STARRED}, [[]]),
    ({"s": READ}, [[]]),
])
def test_item_ids_come_in_pages_with_a_continuation(many, params, pages):
    app = reader(many.database)
    continuation = None
    for number, expected in enumerate(pages):
        answer = get(app, "stream/items/ids", **params,
                     **({"c": continuation} if continuation else {}))
        assert ref_ids(answer) == expected, number
        continuation = answer.get("continuation")
        assert (continuation is None) == (number == len(pages) - 1)


def test_item_ids_within_a_span_of_time(many):
    app = reader(many.database)
    now = int(time.time())
    assert len(ref_ids(get(app, "stream/items/ids", n="200", ot=str(now - 3600)))) == 120
    assert ref_ids(get(app, "stream/items/ids", ot=str(now + 3600))) == []
    assert ref_ids(get(app, "stream/items/ids", n="200", nt=str(now - 3600))) == []


def test_an_item_is_a_story_with_its_versions_state_and_folders(seeds):
    app = reader(seeds.database)
    story, canonical_source = lavrov(seeds.database)
    long_id = f"tag:google.com,2005:reader/item/{story:016x}"
    by_long = app.post("/reader/api/0/stream/items/contents", data={"i": long_id}).json()
    by_decimal = app.post("/reader/api/0/stream/items/contents", data={"i": str(story)}).json()
    # "updated" is the time of the answer: the two calls may fall either side of a second.
    assert abs(by_long.pop("updated") - by_decimal.pop("updated")) <= 1
    assert by_long == by_decimal
    [item] = by_long["items"]
    assert item["id"] == long_id
    assert item["origin"]["streamId"] == f"feed/{canonical_source}"
    assert item["categories"] == [READING_LIST, "user/-/label/world"]
    assert item["alternate"][0]["href"].startswith("https://")
    assert item["summary"]["content"].count("<li>") == 2
    assert int(item["timestampUsec"]) // 1_000_000 > time.time() - 3600

    assert post(app, "edit-tag", i=long_id, a=[READ, STARRED]) == "OK"
    [item] = app.post("/reader/api/0/stream/items/contents", data={"i": long_id}
                      ).json()["items"]
    assert item["categories"][:3] == [READING_LIST, READ, STARRED]
    assert ids(call(client(seeds.database), "saved_item_ids")["saved_item_ids"]) == [story]


def test_edit_tag_reads_unreads_stars_and_unstars_whole_stories(seeds):
    app = reader(seeds.database)
    story, _source = lavrov(seeds.database)
    everything = ref_ids(get(app, "stream/items/ids", xt=READ))
    assert len(everything) == 6

    def unread():
        return ref_ids(get(app, "stream/items/ids", xt=READ))

    post(app, "edit-tag", i=str(story), a=READ)
    assert story not in unread()
    assert ref_ids(get(app, "stream/items/ids", s=READ)) == [story]
    post(app, "edit-tag", i=str(story), a="user/-/state/com.google/kept-unread", r=READ)
    assert unread() == everything
    post(app, "edit-tag", i=str(story), a=STARRED)
    assert ref_ids(get(app, "stream/items/ids", s=STARRED)) == [story]
    assert ref_ids(get(app, "stream/items/ids", it=STARRED, xt=READ)) == [story]
    post(app, "edit-tag", i=str(story), r=STARRED)
    assert ref_ids(get(app, "stream/items/ids", s=STARRED)) == []
    # Labels on items are not kept here: refused, nothing changed.
    assert "not kept here" in post(app, "edit-tag", status=400, i=str(story),
                                   a="user/-/label/later")
    assert unread() == everything


def test_streams_of_a_feed_and_a_folder_and_their_unread_counts(seeds):
    app = reader(seeds.database)
    story, canonical_source = lavrov(seeds.database)
    wire = next(s["id"] for s in get(app, "subscription/list")["subscriptions"]
                if s["title"] == "Test Wire")
    assert len(ref_ids(get(app, "stream/items/ids", s=wire))) == 5
    assert ref_ids(get(app, "stream/items/ids", s="user/-/label/world")) == [story]
    assert ref_ids(get(app, "stream/items/ids", s=f"feed/{canonical_source}")) == [story]
    counts = {c["id"]: c["count"] for c in get(app, "unread-count")["unreadcounts"]}
    assert counts == {READING_LIST: 6, "user/-/label/world": 1, "user/-/label/wire": 5,
                      wire: 5, f"feed/{canonical_source}": 1}
    contents = get(app, "stream/contents/user/-/label/world")
    assert [item["id"] for item in contents["items"]] == \
        [f"tag:google.com,2005:reader/item/{story:016x}"]


def test_mark_all_as_read_leaves_what_came_after_the_apps_list(seeds):
    app = reader(seeds.database)
    story, _source = lavrov(seeds.database)
    before = int((time.time() - 3600) * 1_000_000)
    after = int((time.time() + 5) * 1_000_000)
    assert post(app, "mark-all-as-read", s="user/-/label/wire", ts=str(before)) == "OK"
    assert len(ref_ids(get(app, "stream/items/ids", xt=READ))) == 6
    post(app, "mark-all-as-read", s="user/-/label/wire", ts=str(after))
    assert ref_ids(get(app, "stream/items/ids", xt=READ)) == [story]
    post(app, "mark-all-as-read", s=READING_LIST)
    assert ref_ids(get(app, "stream/items/ids", xt=READ)) == []
    assert get(app, "unread-count")["unreadcounts"] == []


@pytest.mark.parametrize(("method", "path", "params", "status", "says"), [
    ("get", "stream/items/ids", {"n": "0"}, 400, "n: "),
    ("get", "stream/items/ids", {"n": "many"}, 400, "n: "),
    ("get", "stream/items/ids", {"n": "²"}, 400, "n: "),
    ("get", "stream/items/ids", {"c": "٣"}, 400, "c: "),
    ("get", "stream/items/ids", {"s": "feed/²"}, 400, "s: "),
    ("get", "stream/items/ids", {"c": "next-page"}, 400, "c: "),
    ("get", "stream/items/ids", {"s": "feed/https://a.example/rss"}, 400, "s: "),
    ("get", "stream/items/ids", {"ot": "yesterday"}, 400, "ot: "),
    ("post", "stream/items/contents", {"i": "tag:google.com,2005:reader/item/zz"}, 400, "i: "),
    ("post", "edit-tag", {"a": READ}, 400, "i: no item"),
    ("get", "edit-tag", {"i": "1", "a": READ}, 405, "POST only"),
    ("post", "mark-all-as-read", {"s": "user/-/state/com.google/like"}, 400, "s: "),
    ("post", "subscription/quickadd", {"quickadd": "https://a.example/rss"}, 400,
     "aggregator add URL"),
    ("get", "friend/list", {}, 404, "not a call of this server"),
    ("get", "stream/items/ids", {"c": "9" * 23}, 400, "c: "),
    ("get", "stream/items/ids", {"s": "feed/" + "9" * 23}, 400, "s: "),
    ("post", "stream/items/contents", {"i": "9" * 23}, 400, "i: "),
    ("post", "stream/items/contents", {"i": "tag:google.com,2005:reader/item/" + "f" * 20},
     400, "i: "),
    ("post", "edit-tag", {"i": "-1", "a": READ}, 400, "i: "),
])
def test_a_call_it_cannot_answer_says_why(many, method, path, params, status, says):
    app = reader(many.database)
    response = (app.get(f"/reader/api/0/{path}", params=params) if method == "get"
                else app.post(f"/reader/api/0/{path}", data=params))
    assert response.status_code == status and says in response.text


def test_a_store_that_cannot_be_written_refuses_marks_and_keeps_serving(seeds, monkeypatch):
    """A replica given a read-only file: marks are refused with a 503 and nothing else
    changes; the lists are still served."""
    import aggregator.fever
    import aggregator.greader

    def read_only(database):
        return sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)

    story, _source = lavrov(seeds.database)
    app = reader(seeds.database)
    for module in (aggregator.fever, aggregator.greader):
        monkeypatch.setattr(module, "marks_connection", read_only)
    answer = call(client(seeds.database), "", status=503, mark="item", id=str(story),
                  **{"as": "read"})
    assert "cannot be changed now" in answer["error"]
    response = app.post("/reader/api/0/edit-tag", data={"i": str(story), "a": READ})
    assert response.status_code == 503 and "cannot be changed now" in response.text
    assert len(ref_ids(get(app, "stream/items/ids", xt=READ))) == 6
    with sqlite3.connect(seeds.database) as conn:
        assert conn.execute("SELECT count(*) FROM article_marks").fetchone() == (0,)


def test_check_finds_marks_of_nothing_and_of_missing_articles(seeds):
    from aggregator.check import check_store
    from aggregator.store import Store

    story, _source = lavrov(seeds.database)
    call(client(seeds.database), "", mark="item", id=str(story), **{"as": "saved"})
    store = Store(seeds.database)

    def violations() -> list[str]:
        return [v.detail for v in check_store(store, ClusteringSettings())
                if "mark" in v.invariant]

    assert violations() == []
    with store.transaction() as conn:
        conn.execute("UPDATE article_marks SET saved_at = NULL WHERE article_id = "
                     "(SELECT min(article_id) FROM article_marks)")
    first = store.db.execute("SELECT min(article_id) FROM article_marks").fetchone()[0]
    store.db.conn.execute("PRAGMA foreign_keys = OFF")
    store.db.conn.execute("INSERT INTO article_marks (article_id, read_at) "
                          "VALUES (99999, '2026-01-01T00:00:00Z')")
    assert violations() == [f"mark of article {first}: neither read nor saved",
                            "mark of article 99999: the article does not exist"]
    store.close()


def test_freshrss_address_and_preferences_that_apps_read_at_sign_in(seeds):
    """Users of FreshRSS give their apps its address of the API; some apps read the
    preferences first, of which there are none."""
    app = client(seeds.database)
    login = app.post("/api/greader.php/accounts/ClientLogin",
                     data={"Email": ACCOUNT.username, "Passwd": ACCOUNT.password})
    token = dict(line.split("=", 1) for line in login.text.split())["Auth"]
    app.headers["Authorization"] = f"GoogleLogin auth={token}"
    assert app.get("/api/greader.php/reader/api/0/preference/stream/list").json() == \
        {"streamprefs": {}}
    assert app.get("/reader/api/0/preference/list").json() == {"prefs": []}
    answer = app.get("/api/greader.php/reader/api/0/stream/items/ids",
                     params={"xt": READ}).json()
    assert len(answer["itemRefs"]) == 6


def test_the_form_parser_is_installed_with_the_package():
    """Starlette reads forms only with python-multipart, which the development extras bring
    in by way of other packages: the package must ask for it itself, or the APIs fail with
    a 500 on an installation without them."""
    import tomllib

    from conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(requirement.startswith("python-multipart")
               for requirement in project["project"]["dependencies"])


FEVER_NAMES = ["items", "since_id", "max_id", "with_ids", "mark", "as", "id", "before",
               "groups", "feeds", "unread_item_ids", "saved_item_ids", "links", "favicons"]
READER_NAMES = ["s", "xt", "it", "ot", "nt", "r", "n", "c", "i", "a", "r", "ts", "output", "T"]
READER_CALLS = ["stream/items/ids", "stream/items/contents", "stream/contents/feed/1",
                "stream/contents/user/-/label/wire", "edit-tag", "mark-all-as-read",
                "unread-count", "subscription/list", "tag/list", "token", "user-info"]
hostile_values = st.one_of(
    st.text(max_size=30), st.integers(-2**70, 2**70).map(str),
    st.sampled_from(["", "0", "-1", "1,2,x", ",,,", "9" * 40, READ, STARRED, READING_LIST,
                     "feed/", "feed/1", "user/-/label/", "tag:google.com,2005:reader/item/",
                     "tag:google.com,2005:reader/item/-1", "1e9", "nan", "\x00", "😀"]))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A store of its own, for requests that mark what they like."""
    return stories_store(tmp_path_factory.mktemp("fuzzed"), 30)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fever=st.dictionaries(st.sampled_from(FEVER_NAMES), hostile_values, max_size=6),
       call=st.sampled_from(READER_CALLS),
       greader=st.lists(st.tuples(st.sampled_from(READER_NAMES), hostile_values), max_size=6))
def test_whatever_an_app_sends_the_answer_is_an_answer_or_a_named_refusal(
        fuzzed, fever, call, greader):
    """No request makes the server fail (a 500): it answers, or refuses naming why."""
    answer = client(fuzzed.database).post("/fever/?api", data={"api_key": KEY, **fever})
    assert answer.status_code in (200, 400), answer.text
    assert "error" in answer.json() or answer.status_code == 200
    app = reader(fuzzed.database)
    for method in (app.get, app.post):
        response = (method(f"/reader/api/0/{call}", params=greader) if method == app.get
                    else method(f"/reader/api/0/{call}", content=urlencode(greader),
                                headers={"Content-Type": "application/x-www-form-urlencoded"}))
        assert response.status_code in (200, 400, 405), response.text


def test_the_stories_command_shows_the_marks_and_lists_the_starred(seeds):
    story, _source = lavrov(seeds.database)
    fever = client(seeds.database)
    call(fever, "", mark="item", id=str(story), **{"as": "saved"})
    call(fever, "", mark="item", id=str(story), **{"as": "read"})
    listed = CliRunner().invoke(main, ["stories", "--config", seeds.path, "--json"])
    marks = {s["id"]: (s["read"], s["starred"]) for s in json.loads(listed.output)}
    assert marks.pop(story) == (True, True) and set(marks.values()) == {(False, False)}
    starred = CliRunner().invoke(main, ["stories", "--config", seeds.path, "--starred"])
    assert starred.exit_code == 0, starred.output
    assert starred.output.startswith(f"story {story}: ") and "(read, starred)" in starred.output
    assert sum(line.startswith("story ") for line in starred.output.splitlines()) == 1
    none = CliRunner().invoke(main, ["stories", "--config", seeds.path, "--starred",
                                     "--min-sources", "4"])
    assert none.output.strip() == "no story matches"
