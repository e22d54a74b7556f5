"""Views, full-text search, the web pages, the deduplicated feeds, health and metrics."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from urllib.parse import urlencode

import feedparser
import httpx
import pytest
from click.testing import CliRunner
from conftest import DATA, ROOT, SEED_FEEDS, write_config
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from aggregator import readers
from aggregator.cli import main
from aggregator.config import load_config
from aggregator.corrections import request_correction
from aggregator.pipeline import Aggregator
from aggregator.readers import newest_story_ids, store_counts
from aggregator.reading import mark_stories, marks_connection
from aggregator.store import Store
from aggregator.web import DaemonStatus, StoreCollector, create_app, pass_recent

HOSTILE_FEED = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>Hostile</title>
<item><title>&lt;script&gt;alert('title')&lt;/script&gt;Harmless headline about tides</title>
<link>https://hostile.example/1</link><guid>https://hostile.example/1</guid>
<description>&lt;p onclick="alert('click')"&gt;Tides rise twice a day along the coast,
researchers said.&lt;/p&gt;&lt;script&gt;alert('body')&lt;/script&gt;&lt;iframe
src="https://evil.example/"&gt;&lt;/iframe&gt;&lt;img src=x onerror="alert('img')"&gt;</description>
</item></channel></rss>"""


@pytest.fixture
def filled(tmp_path, seed_dir):
    shutil.copy(DATA / "other_topics.rss.xml", seed_dir / "other.rss.xml")
    (seed_dir / "hostile.rss.xml").write_bytes(HOSTILE_FEED)
    sources = [{"name": n, "url": str(seed_dir / f), "tags": ["world"]}
               for n, f in SEED_FEEDS.items()]
    sources += [{"name": "Test Wire", "url": str(seed_dir / "other.rss.xml"), "tags": ["wire"]},
                {"name": "Hostile", "url": str(seed_dir / "hostile.rss.xml")}]
    config = write_config(tmp_path / "web.toml", sources)
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.run_pass()
    aggregator.close()
    return config, load_config(config, environ={}).database


def lavrov_story_id(database):
    store = Store(database)
    [row] = store.db.execute("SELECT DISTINCT story_id FROM article_stories WHERE source = "
                             "'News18 World'").fetchall()
    store.close()
    return row[0]


def test_views_show_the_seed_story(filled):
    _config, database = filled
    store = Store(database)
    story_id = lavrov_story_id(database)
    [story] = store.db.query("SELECT * FROM latest_stories WHERE story_id = ?", [story_id])
    assert story["article_count"] == 3 and story["source_count"] == 3
    assert story["sources"] == "Europe Brief, News18 World, World Desk Daily"
    assert story["canonical_url"].startswith("https://")
    health = {row["name"]: row for row in store.db.query("SELECT * FROM source_health")}
    assert all(row["status"] == "ok" for row in health.values())
    ingest = {row["source"]: row for row in store.db.query("SELECT * FROM daily_ingest")}
    assert ingest["Test Wire"]["articles"] == 5 and ingest["Test Wire"]["canonical"] == 5
    assert sum(row["same_story"] for row in ingest.values()) == 2
    fetches = list(store.db.query("SELECT * FROM daily_fetches"))
    assert sum(row["ok"] for row in fetches) == 5


def test_full_text_search_finds_stories_not_copies(filled):
    config, database = filled
    store = Store(database)
    found, newest_only = store.search("Lavrov")
    assert [s["story_id"] for s in found] == [lavrov_story_id(database)] and not newest_only
    assert found[0]["matching_articles"] == 3
    assert [s["title"] for s in store.search("snow")[0]] == [
        "Storm brings heavy snow and flight cancellations to northern Europe"]
    result = CliRunner().invoke(main, ["search", "--config", str(config), "Lavrov"])
    assert result.exit_code == 0 and result.output.count("story ") == 1
    bad = CliRunner().invoke(main, ["search", "--config", str(config), 'AND "'])
    assert bad.exit_code == 1 and "invalid search query" in bad.output


@pytest.mark.parametrize("newest", [1, 2, 3, 4, 5, 5000])
def test_a_search_ranks_only_its_newest_matching_articles(filled, monkeypatch, newest):
    config, database = filled
    query = "snow OR Lavrov"
    monkeypatch.setattr(readers, "SEARCH_NEWEST", newest)
    with closing(sqlite3.connect(database)) as conn:
        matches = [row[0] for row in conn.execute(
            "SELECT rowid FROM articles_fts WHERE articles_fts MATCH ? ORDER BY rowid DESC",
            [query])]
        ranked = matches[:newest]
        stories = {conn.execute("SELECT story_id FROM articles WHERE id = ?", [article]
                                ).fetchone()[0] for article in ranked}
        found = readers.search_stories(conn, query, 20)
    assert len(matches) == 4  # the three write-ups of the seed story, and the snow story
    assert found.ranked == len(ranked)
    assert {story for story, _count in found.stories} == stories
    assert sum(count for _story, count in found.stories) == len(ranked)
    assert found.newest_only == (newest <= len(matches))
    page = TestClient(create_app(database)).get("/search", params={"q": query}).text
    assert (escape(readers.newest_only_note()) in page) == found.newest_only
    assert page.count('<article class="story">') == len(stories)
    printed = CliRunner().invoke(main, ["search", "--config", str(config), "--json", query])
    assert printed.exit_code == 0
    assert len(json.loads(printed.stdout)) == len(stories)
    assert (readers.newest_only_note() in printed.stderr) == found.newest_only


@pytest.mark.parametrize("query", ["Lavrov", "snow OR Lavrov", "the", "zzzunknownword"])
def test_the_dashboards_search_finds_what_the_web_search_finds(filled, query):
    _config, database = filled
    canned = json.loads((ROOT / "docker" / "datasette-metadata.json").read_text())[
        "databases"]["aggregator"]["queries"]["search_stories"]["sql"]
    # The same bounds, written out in the dashboard's SQL.
    assert f"LIMIT {readers.SEARCH_NEWEST})" in canned
    assert f"LIMIT {readers.SEARCH_ARTICLES})" in canned
    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(canned, {"query": query}).fetchall()
        found = readers.search_stories(conn, query, 50)
    assert [(story, count) for story, _rank, count, _title in rows] == found.stories


def test_pages_show_stories_and_sanitize_feed_html(filled):
    _config, database = filled
    client = TestClient(create_app(database))
    home = client.get("/")
    assert home.status_code == 200
    assert "Also covered by" in home.text and "News18 World" in home.text
    assert "Harmless headline about tides" in home.text
    page = client.get(f"/story/{lavrov_story_id(database)}")
    assert page.status_code == 200
    assert page.text.count('class="relation"') == 3 and "same_story" in page.text
    assert "Why this canonical" in page.text
    for response in (home, page, client.get("/story/1"), client.get("/feed.atom"),
                     client.get("/feed.json")):
        lowered = response.text.lower()
        assert "<script" not in lowered and "onclick" not in lowered
        assert "onerror" not in lowered and "<iframe" not in lowered
        assert "alert(" not in lowered
    assert client.get("/story/99999").status_code == 404
    # Beyond SQLite's integers: no such story either, not a failed query.
    assert client.get("/story/" + "9" * 23).status_code == 404


def test_atom_feed_parses_and_links_the_other_versions(filled):
    _config, database = filled
    client = TestClient(create_app(database))
    response = client.get("/feed.atom")
    assert response.headers["content-type"].startswith("application/atom+xml")
    parsed = feedparser.parse(response.content)
    assert parsed.bozo == 0 and parsed.version == "atom10"
    assert len(parsed.entries) == 7  # one entry per story, not per copy
    lavrov = [e for e in parsed.entries if "diplomat" in e.title.lower()]
    assert len(lavrov) == 1
    related = [link for link in lavrov[0].links if link.rel == "related"]
    assert len(related) == 2
    for entry in parsed.entries:
        assert entry.id and entry.updated and entry.author and entry.link
    wire = feedparser.parse(client.get("/feed.atom?tag=wire").content)
    assert len(wire.entries) == 5
    by_source = feedparser.parse(client.get("/feed.atom", params={"source": "Europe Brief"})
                                 .content)
    assert len(by_source.entries) == 1


@pytest.mark.parametrize("query, stories", [
    ("", 7), ("?min_sources=1", 7), ("?min_sources=2", 1), ("?min_sources=3", 1),
    ("?min_sources=4", 0), ("?min_sources=2&tag=world", 1), ("?min_sources=2&tag=wire", 0),
])
def test_stories_covered_by_several_sources(filled, query, stories):
    config, database = filled
    client = TestClient(create_app(database))
    atom = feedparser.parse(client.get(f"/feed.atom{query}").content)
    assert len(atom.entries) == stories
    assert len(client.get(f"/feed.json{query}").json()["items"]) == stories
    home = client.get(f"/{query}").text
    assert home.count('class="story"') == stories
    if query == "?min_sources=2&tag=world":  # the other choices keep the tag
        assert 'href="/?tag=world&amp;min_sources=3"' in home
        assert 'href="/?tag=world"' in home and "· 2+ sources ·" in home
    if stories < 7:
        assert all("diplomat" in e.title.lower() for e in atom.entries)
    minimum = query.split("min_sources=")[1].split("&")[0] if "min_sources" in query else "1"
    if "tag" not in query:
        listed = CliRunner().invoke(main, ["stories", "--config", str(config), "--json",
                                           "--min-sources", minimum])
        assert listed.exit_code == 0 and len(json.loads(listed.output)) == stories
        text = CliRunner().invoke(main, ["stories", "--config", str(config),
                                         "--min-sources", minimum]).output
        assert text.count("\nstory ") + text.startswith("story ") == stories
        assert ("no story matches" in text) == (stories == 0)


@pytest.fixture
def mirrored(tmp_path, seed_dir):
    """The seeds, the wire, and a syndicated mirror of the wire (other addresses, the same
    texts), which gives each of the wire's five stories a second source."""
    wire = (DATA / "other_topics.rss.xml").read_text(encoding="utf-8")
    (seed_dir / "wire.rss.xml").write_text(wire, encoding="utf-8")
    (seed_dir / "mirror.rss.xml").write_text(
        wire.replace("test-wire.example", "wire-mirror.example"), encoding="utf-8")
    sources = [{"name": n, "url": str(seed_dir / f), "tags": ["world"]}
               for n, f in SEED_FEEDS.items()]
    sources += [{"name": "Test Wire", "url": str(seed_dir / "wire.rss.xml"), "tags": ["wire"]},
                {"name": "Wire Mirror", "url": str(seed_dir / "mirror.rss.xml")}]
    config = load_config(write_config(tmp_path / "web.toml", sources), environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()
    return config.database


def test_several_stories_of_several_sources_are_listed_newest_first(mirrored):
    """With the Lavrov story, six stories reach two sources."""
    with closing(sqlite3.connect(mirrored)) as conn:
        expected = [row[0] for row in conn.execute(
            "SELECT id FROM stories WHERE source_count >= 2 ORDER BY last_seen DESC, id DESC")]
    assert len(expected) == 6
    client = TestClient(create_app(mirrored))
    home = client.get("/?min_sources=2")
    assert home.status_code == 200
    assert [int(i) for i in re.findall(r'<a href="/story/(\d+)">', home.text)] == expected
    assert client.get("/?min_sources=2&tag=wire").text.count('class="story"') == 5
    assert client.get("/?min_sources=3").text.count('class="story"') == 1
    assert len(client.get("/feed.json?min_sources=2").json()["items"]) == 6


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "", "\u0663", "9" * 30])
def test_a_bad_min_sources_is_a_400_naming_it(filled, value):
    _config, database = filled
    client = TestClient(create_app(database))
    for path in ("/", "/feed.atom", "/feed.json"):
        response = client.get(path, params={"min_sources": value})
        if value == "":
            assert response.status_code == 200  # an empty field is no filter
            continue
        assert response.status_code == 400 and "min_sources" in response.text


@pytest.mark.parametrize("query, titles, note", [
    ("Lavrov", ["diplomat"], None),
    ('"security guarantees" AND Ukraine', ["diplomat"], None),
    ("snow OR Lavrov", ["snow", "diplomat"], None),
    # not FTS5 syntax: searched as its words
    ("Lavrov (security", ["diplomat"], '"Lavrov" "security"'),
    ("Lavrov's", ["diplomat"], '"Lavrov" "s"'),
    ('"', [], "No words to search for"),
    ("<script>alert(1)</script>", [], '"script" "alert" "1" "script"'),
    ("zzzunknownword", [], None),
])
def test_search_page_finds_stories_and_reads_free_text_as_words(filled, query, titles, note):
    _config, database = filled
    client = TestClient(create_app(database))
    response = client.get("/search", params={"q": query})
    assert response.status_code == 200
    page = response.text
    found = [h.lower() for h in re.findall(r'<article class="story"><h2>(?:<a [^>]*>)?([^<]*)',
                                           page)]
    assert len(found) == len(titles)
    assert all(word in title for word, title in zip(titles, found, strict=True))
    assert (f"{escape(note)}" in page) if note else "Searched for the words" not in page
    assert "<script>" not in page and f'value="{escape(query)}"' in page
    if titles == ["diplomat"] and note is None and query == "Lavrov":
        assert "(3 matching)" in page
    if not titles:
        assert "No story matches" in page
    empty = client.get("/search")
    assert empty.status_code == 200 and 'name="q"' in empty.text
    assert 'action="/search"' in client.get("/").text


@pytest.mark.parametrize("params, titles", [
    ({"q": "Lavrov"}, ["diplomat"]),
    ({"q": "Lavrov's"}, ["diplomat"]),  # not FTS5 syntax: its words
    ({"q": "snow OR Lavrov"}, ["snow", "diplomat"]),
    ({"q": "Lavrov", "tag": "wire"}, []),
    ({"q": "snow OR Lavrov", "min_sources": "3"}, ["diplomat"]),
    ({"q": "zzzunknownword"}, []),
    ({"q": '"'}, []),
])
def test_feeds_of_a_search_follow_its_newest_matches(filled, params, titles):
    _config, database = filled
    client = TestClient(create_app(database))
    atom = feedparser.parse(client.get("/feed.atom", params=params).content)
    document = client.get("/feed.json", params=params).json()
    assert f"matching {params['q']!r}" in atom.feed.title == document["title"]
    for found in ([e.title for e in atom.entries], [i["title"] for i in document["items"]]):
        assert len(found) == len(titles)
        assert all(any(word in title.lower() for title in found) for word in titles)
    if titles == ["snow", "diplomat"]:
        updated = [e.updated for e in atom.entries]
        assert updated == sorted(updated, reverse=True)  # newest first, not best match
    search = client.get("/search", params={"q": params["q"]}).text
    assert f'href="/feed.atom?{escape(urlencode({"q": params["q"]}))}"' in search


def test_json_feed_is_valid_json_feed_1_1(filled):
    _config, database = filled
    client = TestClient(create_app(database))
    document = client.get("/feed.json").json()
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert isinstance(document["title"], str) and document["items"]
    for item in document["items"]:
        assert isinstance(item["id"], str) and item["id"]
        assert "content_html" in item or "content_text" in item
        assert item["url"].startswith("http")
        assert all(key in item for key in ("title", "date_published", "authors"))
    [lavrov] = [i for i in document["items"] if i["_aggregator"]["also_covered_by"]]
    assert {c["source"] for c in lavrov["_aggregator"]["also_covered_by"]} == {
        "News18 World", "Europe Brief"}
    parsed = feedparser.parse(client.get("/feed.json").content)
    assert client.get("/feed.json?tag=world").json()["items"][0]["title"] == lavrov["title"]
    assert parsed is not None


def test_metrics_parse_with_the_prometheus_parser(filled):
    _config, database = filled
    status = DaemonStatus(last_pass_finished=time.time(), last_pass_seconds=0.5,
                          index_articles=lambda: 9, index_article_limit=lambda: 100_000,
                          vocabulary_terms=lambda: (50_000, 31_000))
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE sources SET consecutive_errors = 3 WHERE name = 'Hostile'")
        conn.execute("INSERT INTO story_corrections (kind, article_ids, requested_at) "
                     "VALUES ('split', '[1]', '2026-12-07T12:00:00Z')")
    client = TestClient(create_app(database, status))
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
               for f in families.values() for s in f.samples}
    assert samples['aggregator_fetches_total{"outcome": "ok"}'] == 5
    assert samples["aggregator_articles_ingested_total{}"] == 9
    assert samples["aggregator_same_story_joins_total{}"] == 2
    assert samples["aggregator_story_size_count{}"] == 7
    assert samples["aggregator_index_articles{}"] == 9
    assert samples["aggregator_index_article_limit{}"] == 100_000
    assert samples["aggregator_vocabulary_terms{}"] == 50_000
    assert samples["aggregator_vocabulary_terms_in_memory{}"] == 31_000
    assert samples["aggregator_pass_duration_seconds{}"] == 0.5
    assert "aggregator_sources_due" in families
    assert samples['aggregator_sources{"status": "ok"}'] == 4
    assert samples['aggregator_sources{"status": "backoff"}'] == 1
    assert samples['aggregator_corrections{"state": "waiting"}'] == 1


def test_a_slow_read_holds_no_other_request(filled, monkeypatch):
    """A scrape that waits (here, until the story page has been answered) keeps a thread of
    the pool, not the event loop: with the loop held, the page could not be answered while
    the scrape waits, and the scrape would give up waiting."""
    _config, database = filled
    collecting, answered, waited = threading.Event(), threading.Event(), []
    collect = StoreCollector.collect

    def waiting_collect(self):
        collecting.set()
        waited.append(answered.wait(30))
        yield from collect(self)

    monkeypatch.setattr(StoreCollector, "collect", waiting_collect)

    async def scrape_and_read() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(database))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            scrape = asyncio.create_task(client.get("/metrics"))
            assert await asyncio.to_thread(collecting.wait, 30)
            page = await client.get(f"/story/{lavrov_story_id(database)}")
            answered.set()
            return await scrape, page

    scrape, page = asyncio.run(scrape_and_read())
    assert page.status_code == 200 and "Lavrov" in page.text
    assert scrape.status_code == 200 and "aggregator_story_size" in scrape.text
    assert waited == [True]


@pytest.mark.parametrize("change", [
    None,
    # The newest version moved into the oldest story as a duplicate: stories of 1, 2 and 4
    # articles, and both relations.
    "UPDATE articles SET story_id = (SELECT min(id) FROM stories), relation = 'duplicate' "
    "WHERE id = (SELECT max(id) FROM articles)",
])
def test_metrics_count_from_indexes_what_a_scan_counts(mirrored, change):
    with closing(sqlite3.connect(mirrored)) as conn:
        if change:
            # The stored counts follow, as the writer keeps them.
            conn.execute(change)
            conn.execute("UPDATE stories SET article_count = (SELECT count(*) FROM articles "
                         "WHERE story_id = stories.id)")
            conn.execute("DELETE FROM stories WHERE article_count = 0")
            conn.commit()
        scanned_sizes = dict(conn.execute(
            "SELECT article_count, count(*) FROM stories GROUP BY article_count"))
        scanned = conn.execute(
            "SELECT count(*), total(relation = 'duplicate'), total(relation = 'same_story') "
            "FROM articles").fetchone()
        counts = store_counts(conn)
        plans = " ".join(row[3] for sql in (
            "SELECT count(*) FROM articles WHERE relation = 'duplicate'",
            "SELECT article_count, count(*) FROM stories WHERE article_count > 2 "
            "GROUP BY article_count") for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert counts == {"articles": scanned[0], "duplicates": scanned[1],
                      "same_story": scanned[2], "story_sizes": scanned_sizes}
    assert sorted(scanned_sizes) == ([2, 3] if change is None else [1, 2, 4])
    assert "articles_duplicates" in plans and "stories_of_three_or_more" in plans
    samples = {s.name: s.value for f in text_string_to_metric_families(
        TestClient(create_app(mirrored)).get("/metrics").text) for s in f.samples}
    assert samples["aggregator_story_size_sum"] == scanned[0]
    assert samples["aggregator_duplicates_total"] == scanned[1]


def test_health_and_readiness(filled):
    _config, database = filled
    assert TestClient(create_app(database)).get("/healthz").text == "ok\n"
    assert TestClient(create_app(database)).get("/readyz").status_code == 200
    never = TestClient(create_app(database, DaemonStatus()))
    assert never.get("/readyz").status_code == 503
    status = DaemonStatus()
    status.pass_finished(0.5)
    recent = TestClient(create_app(database, status))
    assert recent.get("/readyz").status_code == 200
    # The system clock set forward an hour since the pass: it is as recent as it was.
    status.last_pass_finished -= 3600
    assert recent.get("/readyz").status_code == 200
    status.last_pass_ended -= 301
    assert recent.get("/readyz").status_code == 503
    missing = TestClient(create_app(str(Path(database).with_name("missing.db"))))
    assert missing.get("/readyz").status_code == 503


@pytest.mark.parametrize(("ended", "tick_s", "ready"), [
    (None, 30.0, False),          # no pass yet
    (1000.0, 30.0, True),
    (1000.0 - 300, 30.0, True),
    (1000.0 - 301, 30.0, False),
    (1000.0 - 500, 200.0, True),  # three ticks of a long tick
    (1000.0 - 601, 200.0, False),
])
def test_a_pass_is_recent_within_three_ticks_and_five_minutes_at_least(ended, tick_s, ready):
    assert pass_recent(ended, 1000.0, tick_s) is ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def test_datasette_serves_views_and_canned_queries(filled):
    pytest.importorskip("datasette", reason="datasette is a dev dependency")
    _config, database = filled
    target = Path(database).with_name("aggregator.db")
    shutil.copy(database, target)  # Datasette names the database after the file
    saved = lavrov_story_id(str(target))
    with closing(marks_connection(str(target))) as conn:
        mark_stories(conn, [saved], "saved", True, datetime.now(UTC))
        request_correction(conn, "split", [1], datetime.now(UTC))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(target), "--metadata",
         str(ROOT / "docker" / "datasette-metadata.json"), "--host", "127.0.0.1", "--port",
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/aggregator"
        wait_for(base + ".json")
        stories = httpx.get(f"{base}/latest_stories.json?_shape=array").json()
        assert len(stories) == 7
        assert max(s["source_count"] for s in stories) == 3
        story_id = lavrov_story_id(str(target))
        versions = httpx.get(f"{base}/story_versions.json",
                             params={"story_id": story_id, "_shape": "array"}).json()
        assert sorted(v["relation"] for v in versions) == ["canonical", "same_story",
                                                           "same_story"]
        found = httpx.get(f"{base}/search_stories.json",
                          params={"query": "Lavrov", "_shape": "array"}).json()
        assert [f["story_id"] for f in found] == [story_id]
        assert httpx.get(f"{base}/failing_sources.json?_shape=array").json() == []
        [correction] = httpx.get(f"{base}/corrections.json?_shape=array").json()
        assert (correction["kind"], correction["state"]) == ("split", "waiting")
        # Counted from the partial indexes by relation: what the daily figures add up to.
        shares = httpx.get(f"{base}/duplicate_share_by_source.json?_shape=array").json()
        with closing(sqlite3.connect(target)) as conn:
            daily = conn.execute(
                "SELECT source, sum(articles), sum(duplicates), sum(same_story) FROM "
                "daily_ingest GROUP BY source ORDER BY source").fetchall()
        assert sorted((s["source"], s["articles"], s["duplicates"], s["same_story"])
                      for s in shares) == daily
        assert shares[0]["repeated_share"] == max(s["repeated_share"] for s in shares) > 0
        starred = httpx.get(f"{base}/saved_stories.json?_shape=array").json()
        assert [(row["story_id"], row["source_count"]) for row in starred] == [(saved, 3)]
        for minimum, expected in (("3", [story_id]), ("4", []), ("1", None)):
            covered = httpx.get(f"{base}/covered_today.json",
                                params={"min_sources": minimum, "_shape": "array"}).json()
            assert [c["story_id"] for c in covered] == expected or (
                expected is None and len(covered) == 7)
    finally:
        process.terminate()
        process.wait(10)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (.ci/run installs "
                                               "Debian's chromium)")
def test_pages_in_a_real_browser(filled, tmp_path):
    config, database = filled
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "serve", "--config", str(config), "--port",
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}"]
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        home = subprocess.run([*browser, "--dump-dom", f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True, timeout=60).stdout
        assert "Latest stories" in home
        assert "Russias top diplomat rejects key part of deal to end war with Ukraine" in home
        assert "Also covered by" in home and "News18 World" in home
        story_url = f"http://127.0.0.1:{port}/story/{lavrov_story_id(database)}"
        page = subprocess.run([*browser, "--dump-dom", story_url], capture_output=True,
                              text=True, timeout=60).stdout
        assert page.count("same_story") == 2 and "canonical" in page
        shot = Path(os.environ.get("STORY_SCREENSHOT", tmp_path / "story.png"))
        subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1100,700",
                        "--hide-scrollbars", story_url], capture_output=True, timeout=60)
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_newest_story_ids_are_what_a_scan_by_time_finds(tmp_path, seed):
    """Read per source count through the index, the newest stories reaching a threshold are
    exactly those a plain scan of every story finds, ties on the time broken by id."""
    rng = random.Random(seed)
    store = Store(str(tmp_path / "s.db"))
    rows = [(i, f"2026-12-0{rng.randint(1, 3)}T{rng.randint(0, 2):02d}:00:00Z",
             rng.choice([1, 1, 1, 2, 2, 3, 5, 12])) for i in range(1, 1501)]
    with store.transaction():
        store.db.conn.executemany(
            "INSERT INTO stories (id, first_seen, last_seen, first_published, "
            "last_published, source_count) VALUES (?, ?2, ?2, ?2, ?2, ?3)", rows)
    conn = store.db.conn
    for limit, threshold, since, where, params in [
            (50, 2, "0000", "", ()), (50, 5, "0000", "", ()), (500, 2, "0000", "", ()),
            (20, 13, "0000", "", ()), (30, 3, "2026-12-02", "", ()),
            (10, 2, "0000", " AND stories.id % 7 = ?", (3,))]:
        scanned = [r[0] for r in conn.execute(
            f"SELECT id FROM stories WHERE source_count >= ? AND last_seen >= ? {where} "
            "ORDER BY last_seen DESC, id DESC LIMIT ?", [threshold, since, *params, limit])]
        assert newest_story_ids(conn, limit, threshold, since, where, params) == scanned
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT last_seen, id FROM stories WHERE source_count = 3 AND "
        "last_seen >= '0000' ORDER BY last_seen DESC, id DESC LIMIT 50"))
    assert "stories_sources_last_seen" in plan and "TEMP B-TREE" not in plan
    store.close()


def test_sources_page_shows_health_without_addresses_or_error_texts(tmp_path, seed_dir,
                                                                     feed_server):
    from feed_server import Reply

    feed_server.route("/private?token=s3cret", Reply(500, b"oops"))
    sources = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    sources.append({"name": "Private", "url": feed_server.url("/private?token=s3cret")})
    config = write_config(tmp_path / "health.toml", sources)
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.run_pass()
    aggregator.close()
    client = TestClient(create_app(load_config(config, environ={}).database))
    page = client.get("/sources")
    assert page.status_code == 200
    rows = re.findall(r"<tr><td><a [^>]*>([^<]*)</a></td><td class=\"relation\">([^<]*)",
                      page.text)
    assert rows == [("Private", "backoff"), ("Europe Brief", "ok"), ("News18 World", "ok"),
                    ("World Desk Daily", "ok")]
    assert "4 sources, 1 not ok" in page.text and "(HTTP 500)" in page.text
    assert "s3cret" not in page.text and "127.0.0.1" not in page.text
    assert 'href="/sources"' in client.get("/").text
