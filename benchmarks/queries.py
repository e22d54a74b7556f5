"""Dashboard queries on a large store: median and p95 latency of each.

The store is made with the daemon's own schema (all migrations) and filled in bulk with
synthetic articles: 200 sources, stories of one to eight articles over 70 days, short texts
(the query plans, not the text length, decide these latencies).
The queries are those the web pages, ``aggregator`` commands and the Datasette canned
queries run.  Each runs ``--runs`` times with random parameters on a second, read-only
connection, as a dashboard would.

    python benchmarks/queries.py                     # 1,000,000 articles
    python benchmarks/queries.py --articles 100000

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wordfreq import top_n_list  # noqa: E402

from aggregator.readers import (  # noqa: E402
    MATCHING_ARTICLES,
    NEWEST_MATCHING_STORIES,
    SEARCH_ARTICLES,
    SEARCH_NEWEST,
    SEARCH_STORIES,
    SOURCE_COUNTS,
    newest_matching_story_ids,
    newest_story_ids,
    search_stories,
    select_in,
)
from aggregator.reading import (  # noqa: E402
    StreamQuery,
    mark_read_before,
    mark_stories,
    marks_connection,
    saved_story_ids,
    story_ids_after,
    story_items,
    stream_story_ids,
    unread_counts,
    unread_story_ids,
)
from aggregator.store import (  # noqa: E402
    COUNT_DAYS_OF_ARTICLES,
    COUNT_FETCH_DAYS_OF_ATTEMPTS,
    Store,
    from_iso,
    to_iso,
)
from aggregator.web import scrape_figures  # noqa: E402

# Canned queries of the Datasette dashboards, as they run them.
CANNED = json.loads((Path(__file__).resolve().parent.parent / "docker" /
                     "datasette-metadata.json").read_text(encoding="utf-8")
                    )["databases"]["aggregator"]["queries"]
SAVED_STORIES = CANNED["saved_stories"]["sql"]

# The searches by best match: their statement's plan is not the feed's (``PLANS``).
SEARCH_NAMES = ("full-text search, stories by best match (`aggregator search`, web `/search`)",
                "the same for a common term (eight words OR'ed, in about 4.4% of the articles)")

QUERIES = {
    "latest stories (web /, `aggregator stories`)":
        ("SELECT id, title, first_seen, last_seen, article_count, source_count, "
         "canonical_article_id FROM stories WHERE last_seen >= :since "
         "ORDER BY last_seen DESC, id DESC LIMIT 50", "since"),
    "latest_stories view, newest 50 with sources":
        ("SELECT * FROM latest_stories ORDER BY last_updated DESC LIMIT 50", None),
    "latest stories covered by N or more sources (web `/?min_sources=N`; N from 2 to 9, "
    "9 more than any story has)":
        (lambda reader, bound: covered_stories(
            reader, bound, "SELECT * FROM latest_stories WHERE story_id IN ({}) "
                           "ORDER BY last_updated DESC, story_id DESC"), "min_sources"),
    "the same, `aggregator stories --min-sources N`":
        (lambda reader, bound: covered_stories(
            reader, bound, "SELECT id, title, first_seen, last_seen, article_count, "
                           "source_count, canonical_article_id FROM stories WHERE id IN ({})"),
         "min_sources"),
    "canned stories_today (Datasette)":
        ("SELECT story_id, title, canonical_source, source_count, article_count, sources, "
         "last_updated FROM latest_stories WHERE last_updated >= :since "
         "ORDER BY source_count DESC, last_updated DESC LIMIT 200", "day"),
    "one story's members (canned story_versions, /story/ID)":
        ("SELECT article_id, source, title, url, published, relation, similarity, "
         "is_canonical FROM article_stories WHERE story_id = :story_id "
         "ORDER BY is_canonical DESC, published", "story"),
    SEARCH_NAMES[0]: (lambda reader, bound: search_stories(reader, bound["query"], 20), "query"),
    SEARCH_NAMES[1]: (lambda reader, bound: search_stories(reader, bound["query"], 20),
                      "common"),
    "canned search_stories (Datasette)": (CANNED["search_stories"]["sql"], "query"),
    "the same for a common term": (CANNED["search_stories"]["sql"], "common"),
    "feed of a search, newest 50 matching stories (`/feed.atom?q=`)":
        (lambda reader, bound: matching_stories(reader, bound), "query"),
    "stories starred in a reading app, latest 200 (canned saved_stories)":
        (SAVED_STORIES, None),
    "each source's share of repeated news (canned duplicate_share_by_source)":
        (CANNED["duplicate_share_by_source"]["sql"], None),
    "daily_ingest view, Datasette's page of it (its first 101 rows)":
        ("SELECT * FROM daily_ingest LIMIT 101", None),
    "daily_ingest view, its rows counted (as Datasette counts them)":
        ("SELECT count(*) FROM daily_ingest", None),
    "daily_fetches view, Datasette's page of it":
        ("SELECT * FROM daily_fetches LIMIT 101", None),
    "daily_fetches view, its rows counted":
        ("SELECT count(*) FROM daily_fetches", None),
    "source_health view (canned failing_sources, `aggregator sources`)":
        ("SELECT name, status, consecutive_errors, last_error, last_success_at, articles "
         "FROM source_health ORDER BY name", None),
    "what a scrape of /metrics reads (fetches and articles by outcome, stories by size, "
    "sources by state)":
        (lambda reader, _bound: scrape_figures(reader), "metrics"),
}


def covered_stories(reader: sqlite3.Connection, bound: dict, sql: str) -> list:
    """What the web and ``aggregator stories`` run for ``min_sources``: the ids per source
    count (``readers.newest_story_ids``), then the rows."""
    ids = newest_story_ids(reader, 50, bound["min_sources"])
    return select_in(reader, sql, ids)


def matching_stories(reader: sqlite3.Connection, bound: dict) -> list:
    """What the feeds run for ``?q=``: the newest 50 stories of the newest matching articles
    (``readers.newest_matching_story_ids``), then their rows."""
    ids = newest_matching_story_ids(reader, bound["query"], 50)
    return select_in(reader, "SELECT * FROM latest_stories WHERE story_id IN ({})", ids)


# What a reading app asks at each sync, through the Fever API (``aggregator/fever.py``) or
# the Google Reader API (``aggregator/greader.py``): not dashboard queries, timed apart.
# Each is given the connection, the store's newest time, and a random story id.
APP_CALLS = {
    "Fever unread_item_ids (stories updated in the last 30 days, none of whose versions "
    "is read)":
        lambda reader, newest, _story: unread_story_ids(reader, newest - timedelta(days=30)),
    "Fever saved_item_ids":
        lambda reader, _newest, _story: saved_story_ids(reader),
    "Fever items&since_id=ID (the 50 stories after ID, with their versions and marks)":
        lambda reader, _newest, story: story_items(reader, story_ids_after(reader, story, 50)),
    "Google Reader stream/items/ids, unread (xt=read), n=1000":
        lambda reader, newest, _story: stream_story_ids(
            reader, StreamQuery(limit=1000, read=False), newest - timedelta(days=30)),
    "Google Reader stream/items/ids, reading list before ID (c=ID), n=1000":
        lambda reader, newest, story: stream_story_ids(
            reader, StreamQuery(limit=1000, after_id=story), newest - timedelta(days=30)),
    "Google Reader unread-count":
        lambda reader, newest, _story: unread_counts(reader, newest - timedelta(days=30)),
}


# "Mark all as read" changes thousands of marks: timed a few times, not ``runs // 10``.
MARK_ALL_RUNS = 3


def mark_as_a_daily_reader(path: str) -> None:
    """Marks as a reader who reads every day leaves them: every story last updated a day or
    more before the newest read, and one article in 500 saved (when the store has none)."""
    conn = marks_connection(path)
    try:
        if conn.execute("SELECT count(*) FROM article_marks").fetchone()[0]:
            return
        newest = conn.execute("SELECT max(last_seen) FROM stories").fetchone()[0]
        day_before = to_iso(from_iso(newest) - timedelta(days=1))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO article_marks (article_id, read_at) SELECT a.id, ?1 "
                     "FROM articles a JOIN stories s ON s.id = a.story_id "
                     "WHERE s.last_seen < ?1", [day_before])
        conn.execute("INSERT INTO article_marks (article_id, saved_at) SELECT id, ?1 "
                     "FROM articles WHERE id % 500 = 0 ON CONFLICT (article_id) "
                     "DO UPDATE SET saved_at = excluded.saved_at", [day_before])
        conn.execute("COMMIT")
    finally:
        conn.close()


# The statements the functions above run, for their query plans: each with how its
# parameters come from those the query is timed with.
PLANS = {
    "min_sources": [(SOURCE_COUNTS.replace("?", ":min_sources"), dict),
                    ("SELECT last_seen, id FROM stories WHERE source_count = :min_sources "
                     "AND last_seen >= '0000' ORDER BY last_seen DESC, id DESC LIMIT 50",
                     dict)],
    "query": [(NEWEST_MATCHING_STORIES.format(where=""),
               lambda bound: [bound["query"], MATCHING_ARTICLES, 1, 50])],
    "metrics": [("SELECT count(*) FROM articles WHERE relation = 'duplicate'", dict),
                ("SELECT article_count, count(*) FROM stories WHERE article_count > 2 "
                 "GROUP BY article_count", dict),
                ("SELECT count(*) FROM stories", dict), ("SELECT count(*) FROM articles", dict),
                ("SELECT outcome, attempts FROM fetch_counts ORDER BY outcome", dict),
                ("SELECT status, count(*) FROM source_health WHERE in_config GROUP BY status",
                 dict)],
}

for search_name in SEARCH_NAMES:
    PLANS[search_name] = [(SEARCH_STORIES, lambda bound: {
        "query": bound["query"], "newest": SEARCH_NEWEST, "articles": SEARCH_ARTICLES,
        "limit": 20})]


# The benchmark store's articles span 70 days up to this time; its sources are polled every
# quarter of an hour over them (``add_fetch_attempts``).
BUILT_AT = datetime(2026, 3, 1, tzinfo=UTC)
BUILT_SPAN = timedelta(days=70)
POLLS_A_DAY = 96


def build(path: str, articles: int, seed: int = 3) -> Store:
    """A store of ``articles`` synthetic articles, written in bulk."""
    rng = random.Random(seed)
    words = [w for w in top_n_list("en", 20_000) if w.isalpha()]
    store = Store(path)
    db = store.db.conn
    now, span = BUILT_AT, BUILT_SPAN
    with store.transaction():
        db.executemany(
            "INSERT INTO sources (id, name, config_url, url, created_at, last_checked_at, "
            "last_success_at, consecutive_errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, f"outlet-{i:03d}", f"https://outlet-{i:03d}.example/feed",
              f"https://outlet-{i:03d}.example/feed", to_iso(now), to_iso(now),
              to_iso(now), int(i % 17 == 0)) for i in range(1, 201)])
    article_id, story_id = 0, 0
    started = time.perf_counter()
    while article_id < articles:
        story_rows, article_rows = [], []
        while len(article_rows) < 20_000 and article_id < articles:
            story_id += 1
            size = min(8, 1 + int(rng.expovariate(0.7)))
            published = now - span * (1 - article_id / articles)
            title = " ".join(rng.choices(words[:8000], k=9))
            sources = rng.sample(range(1, 201), size)
            first = article_id + 1
            for position, source in enumerate(sources):
                article_id += 1
                text = " ".join(rng.choices(words, k=40))
                when = to_iso(published + timedelta(minutes=20 * position))
                article_rows.append((
                    article_id, source, f"urn:bench:{article_id}",
                    f"https://outlet-{source:03d}.example/{article_id}", f"key:{article_id}",
                    title, when, when, text, f"hash{article_id}", 40, story_id,
                    "canonical" if position == 0 else "same_story",
                    1.0 if position == 0 else 0.3))
            story_rows.append((story_id, first, title, to_iso(published),
                               to_iso(published + timedelta(minutes=20 * (size - 1))),
                               size, size))
        with store.transaction():
            db.executemany(
                "INSERT INTO stories (id, canonical_article_id, title, first_seen, last_seen, "
                "first_published, last_published, article_count, source_count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s, c, t, f, last, f, last, n, m) for s, c, t, f, last, n, m in story_rows])
            db.executemany(
                "INSERT INTO articles (id, source_id, guid, url, identity_key, title, "
                "published, published_from_feed, fetched, text, content_hash, word_count, "
                "story_id, relation, similarity, counted_terms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, '')",
                article_rows)
            db.executemany("INSERT INTO article_keys (key, article_id) VALUES (?, ?)",
                           [(row[4], row[0]) for row in article_rows])
        print(f"  {article_id:,} articles written ({time.perf_counter() - started:.0f} s)",
              flush=True)
    # The rows went in with plain INSERTs, not through the writer: the full-text index is
    # built once, from the table, as `docs/schema.md` tells an operator to.
    with store.transaction():
        db.execute("INSERT INTO articles_fts(articles_fts) VALUES ('rebuild')")
        db.execute("UPDATE sources SET (article_count, duplicate_count, same_story_count) = "
                   "(SELECT count(*), total(relation = 'duplicate'), "
                   "total(relation = 'same_story') FROM articles WHERE source_id = sources.id)")
        db.execute(COUNT_DAYS_OF_ARTICLES)
    db.execute("ANALYZE")
    print(f"  full-text index built ({time.perf_counter() - started:.0f} s)", flush=True)
    return store


def add_fetch_attempts(store: Store, polls: int) -> int:
    """``polls`` fetch attempts of every source a quarter of an hour apart from the start of
    the store's 70 days, one in five with new articles, where the store has none; past the
    writer, so their counts are begun from them as the migrations begin them."""
    db = store.db.conn
    if db.execute("SELECT count(*) FROM fetch_attempts").fetchone()[0]:
        return 0
    with store.transaction():
        db.execute(
            "INSERT INTO fetch_attempts (source_id, started_at, duration_ms, url, status, "
            "outcome, new_articles) WITH RECURSIVE polls(i) AS (SELECT 0 UNION ALL "
            "SELECT i + 1 FROM polls WHERE i < ? - 1) "
            "SELECT s.id, strftime('%Y-%m-%dT%H:%M:%SZ', ?, '+' || (polls.i * 15) || "
            "' minutes'), 100 + (polls.i + s.id) % 150, s.url, "
            "CASE WHEN polls.i % 5 THEN 304 ELSE 200 END, "
            "CASE WHEN polls.i % 5 THEN 'not_modified' ELSE 'ok' END, "
            "CASE WHEN polls.i % 5 THEN NULL ELSE 3 END FROM sources s, polls",
            [polls, to_iso(BUILT_AT - BUILT_SPAN)])
        db.execute("DELETE FROM fetch_days")
        db.execute(COUNT_FETCH_DAYS_OF_ATTEMPTS)
        db.execute("DELETE FROM fetch_counts")
        db.execute("INSERT INTO fetch_counts (outcome, attempts) SELECT outcome, count(*) "
                   "FROM fetch_attempts GROUP BY outcome")
    return db.execute("SELECT count(*) FROM fetch_attempts").fetchone()[0]


def parameters(kind: str | None, rng: random.Random, stories: int, newest: str,
               words: list[str]) -> dict:
    if kind == "since":
        return {"since": "0000"}
    if kind == "day":
        day = datetime.fromisoformat(newest) - timedelta(days=1)
        return {"since": to_iso(day)}
    if kind == "story":
        return {"story_id": rng.randint(1, stories)}
    if kind == "min_sources":
        return {"min_sources": rng.randint(2, 9)}
    if kind == "query":
        return {"query": rng.choice(words)}
    if kind == "common":
        # The store's words are equally frequent: several at once stand for a common one.
        return {"query": " OR ".join(rng.sample(words, 8))}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", help="build the store at this path and keep it")
    parser.add_argument("--fetch-polls", type=int, default=BUILT_SPAN.days * POLLS_A_DAY,
                        help="fetch attempts of each source (default: every quarter of an "
                             "hour for 70 days, 1,344,000 in all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = args.keep or str(Path(directory) / "queries.sqlite")
        if not Path(path).exists():
            print(f"building a store of {args.articles:,} articles ...", flush=True)
            build(path, args.articles).close()
        # A store kept from before takes the indexes made since, and the fetch attempts.
        store = Store(path)
        added = add_fetch_attempts(store, args.fetch_polls)
        store.close()
        if added:
            print(f"  {added:,} fetch attempts added", flush=True)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        articles = reader.execute("SELECT count(*) FROM articles").fetchone()[0]
        stories = reader.execute("SELECT max(id) FROM stories").fetchone()[0]
        newest = reader.execute("SELECT max(last_seen) FROM stories").fetchone()[0]
        words = [w for w in top_n_list("en", 3000) if w.isalpha()][200:]
        rng = random.Random(5)
        results = {}
        print(f"{articles:,} articles, {stories:,} stories; {args.runs} runs per query")
        for name, (sql, kind) in QUERIES.items():
            timings = []
            for _ in range(args.runs):
                bound = parameters(kind, rng, stories, newest, words)
                started = time.perf_counter()
                if callable(sql):
                    sql(reader, bound)
                else:
                    reader.execute(sql, bound).fetchall()
                timings.append((time.perf_counter() - started) * 1000)
            results[name] = timed(timings)
            bound = parameters(kind, rng, stories, newest, words)
            plan = [row[3] for statement, arguments in (PLANS.get(name) or PLANS[kind]
                                                         if callable(sql) else [(sql, dict)])
                    for row in reader.execute(f"EXPLAIN QUERY PLAN {statement}",
                                              arguments(bound))]
            print(f"{name}: median {results[name]['median_ms']:.2f} ms, "
                  f"p95 {results[name]['p95_ms']:.2f} ms")
            for step in plan:
                print(f"    {step}")
        reader.close()
        apps = app_calls(path, args.runs, rng)
    print(json.dumps({"articles": articles, "stories": stories,
                      "worst_p95_ms": max(r["p95_ms"] for r in results.values()),
                      "queries": results,
                      "apps_worst_p95_ms": max(r["p95_ms"] for r in apps.values()),
                      "app_calls": apps}))


def timed(timings: list[float]) -> dict:
    """The median and the 95th percentile (nearest rank: of ten calls, the slowest; of 200,
    the 190th) of ``timings``, in milliseconds."""
    timings = sorted(timings)
    return {"median_ms": round(statistics.median(timings), 2),
            "p95_ms": round(timings[math.ceil(0.95 * len(timings)) - 1], 2)}


def app_calls(path: str, runs: int, rng: random.Random) -> dict:
    """The reading apps' reads and a mark, on the store marked as a daily reader would."""
    Store(path).close()  # a store kept from before the marks takes their migration
    mark_as_a_daily_reader(path)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    newest = from_iso(reader.execute("SELECT max(last_seen) FROM stories").fetchone()[0])
    stories = reader.execute("SELECT max(id) FROM stories").fetchone()[0]
    unread = unread_story_ids(reader, newest - timedelta(days=30))
    saved = len(saved_story_ids(reader))
    print(f"Reading apps' calls ({len(unread):,} stories unread, {saved:,} saved; "
          f"{runs // 10} runs each):")
    results = {}
    for name, call in APP_CALLS.items():
        timings = []
        for _ in range(runs // 10):
            story = rng.randint(1, stories)
            started = time.perf_counter()
            call(reader, newest, story)
            timings.append((time.perf_counter() - started) * 1000)
        results[name] = timed(timings)
        print(f"{name}: median {results[name]['median_ms']:.2f} ms, "
              f"p95 {results[name]['p95_ms']:.2f} ms")
    reader.close()
    writer, timings = marks_connection(path), []
    # An unread story marked read, then unread again: the store is left as it was.
    for story in rng.sample(unread, min(len(unread), runs // 10)):
        started = time.perf_counter()
        mark_stories(writer, [story], "read", True, newest)
        timings.append((time.perf_counter() - started) * 1000)
        mark_stories(writer, [story], "read", False, newest)
    name = "a story marked read (every version of it, one transaction)"
    results[name] = timed(timings)
    # Every unread story marked read at once (an app's "mark all as read"), then unread
    # again: the store is left as it was.
    marked, unmarked = [], []
    for _ in range(MARK_ALL_RUNS):
        started = time.perf_counter()
        mark_read_before(writer, newest + timedelta(days=1), newest - timedelta(days=30),
                         newest)
        marked.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        mark_stories(writer, unread, "read", False, newest)
        unmarked.append((time.perf_counter() - started) * 1000)
    writer.close()
    results["every unread story marked read (mark all as read)"] = timed(marked)
    results["the same stories marked unread again"] = timed(unmarked)
    for name in list(results)[-3:]:
        print(f"{name}: median {results[name]['median_ms']:.2f} ms, "
              f"p95 {results[name]['p95_ms']:.2f} ms")
    return results


if __name__ == "__main__":
    main()
