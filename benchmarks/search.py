"""The ranked search, bounded to the newest matches, against ranking every match.

FTS5 works out ``rank`` (BM25) match by match, so a search that ranked every match took
as long as its word is common.  ``readers.search_stories`` ranks the newest
``SEARCH_NEWEST`` matching articles; the baseline is the same statement without that bound,
which ranks every match as the search did before it.  Both run on each query in turn, in
this process, on a read-only connection: one random word at a time, then eight OR'ed (in
the synthetic store of ``queries.py`` every word is in about 0.6% of the articles, so eight
stand for a common one), then any words given with ``--word``, each timed several times.

    python benchmarks/search.py --store /tmp/q1m.sqlite        # a store kept by queries.py
    python benchmarks/search.py --store stream.sqlite --word the --word said
    python benchmarks/search.py --articles 100000              # builds a store first

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from queries import build  # noqa: E402
from queries import timed as figures  # noqa: E402
from wordfreq import top_n_list  # noqa: E402

from aggregator.readers import SEARCH_ARTICLES, SEARCH_NEWEST, SEARCH_STORIES  # noqa: E402

# The bound that ranks every match: SQLite reads a negative LIMIT as none.
EVERY_MATCH = -1


def timed(conn: sqlite3.Connection, query: str, newest: int) -> tuple[float, list]:
    """The time of one search ranking the ``newest`` matches, in milliseconds, and the
    stories it found."""
    parameters = {"query": query, "newest": newest, "articles": SEARCH_ARTICLES, "limit": 20}
    started = time.perf_counter()
    found = conn.execute(SEARCH_STORIES, parameters).fetchall()
    return (time.perf_counter() - started) * 1000, [tuple(row[:2]) for row in found]


def compare(conn: sqlite3.Connection, queries: list[str]) -> dict:
    """Both statements on each query, taking turns; and how many of the queries that match
    fewer articles than the bound found other stories (none should)."""
    every, newest, differing = [], [], 0
    for query in queries:
        every_time, every_found = timed(conn, query, EVERY_MATCH)
        newest_time, newest_found = timed(conn, query, SEARCH_NEWEST)
        every.append(every_time)
        newest.append(newest_time)
        matches = conn.execute("SELECT count(*) FROM articles_fts WHERE articles_fts MATCH ?",
                               [query]).fetchone()[0]
        differing += matches < SEARCH_NEWEST and every_found != newest_found
    result = {"every_match": figures(every), "newest": figures(newest),
              "differing_below_the_bound": differing}
    result["median_ratio"] = round(result["newest"]["median_ms"]
                                   / result["every_match"]["median_ms"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a store to search (never written)")
    parser.add_argument("--articles", type=int, default=100_000,
                        help="without --store: build a store of this many (queries.py's)")
    parser.add_argument("--runs", type=int, default=60, help="random queries of each kind")
    parser.add_argument("--word", action="append", default=[],
                        help="a query to time as well (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = args.store
        if path is None:
            path = str(Path(directory) / "search.sqlite")
            print(f"building a store of {args.articles:,} articles ...", flush=True)
            build(path, args.articles).close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        articles = conn.execute("SELECT count(*) FROM articles").fetchone()[0]
        words = [w for w in top_n_list("en", 3000) if w.isalpha()][200:]
        rng = random.Random(7)
        results = {
            "one word": compare(conn, [rng.choice(words) for _ in range(args.runs)]),
            "eight words OR'ed": compare(conn, [" OR ".join(rng.sample(words, 8))
                                                for _ in range(args.runs)]),
        }
        for word in args.word:
            matches = conn.execute("SELECT count(*) FROM articles_fts WHERE articles_fts "
                                   "MATCH ?", [word]).fetchone()[0]
            results[word] = {"matches": matches, **compare(conn, [word] * 5)}
        conn.close()
    print(f"{articles:,} articles; the newest {SEARCH_NEWEST:,} matches ranked, against every "
          "match")
    for name, result in results.items():
        matches = f" ({result['matches']:,} matches)" if "matches" in result else ""
        print(f"{name}{matches}: every match {result['every_match']['median_ms']} / "
              f"{result['every_match']['p95_ms']} ms (median / p95), the newest "
              f"{result['newest']['median_ms']} / {result['newest']['p95_ms']} ms: "
              f"{result['median_ratio']}x the time; below the bound, "
              f"{result['differing_below_the_bound']} found other stories")
    print(json.dumps({"articles": articles, "newest": SEARCH_NEWEST, "queries": results}))


if __name__ == "__main__":
    main()
