"""Retention: a store that lets old stories go stops growing; what deleting them costs.

The synthetic stream (``stream.py``) is written day by day into two stores in this process,
one without retention (the baseline) and one with ``--retention-days``, whose daemon purges
at the end of each day (``Aggregator.purge_expired``, as its hourly pass does).  Per day it
prints the pages each store uses (the file less its free pages: SQLite reuses freed pages,
so a file stops growing once its used pages do), the time spent writing the day's articles
and the time spent purging, for the store with retention.

    python benchmarks/retention.py                       # 16 days of 2,000 articles
    python benchmarks/retention.py --days 30 --per-day 5000 --retention-days 10

The last line is one JSON object: ``used_mb_ratio`` is the store with retention over the
baseline at the end; ``purge_vs_ingest`` is the rate articles are deleted over the rate they
are written (both in this process, the same day's work).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from dataclasses import replace
from itertools import groupby
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import ingest, make_aggregator  # noqa: E402
from stream import SyntheticStream  # noqa: E402

from aggregator.config import ClusteringSettings  # noqa: E402


def used_mb(database: str) -> tuple[float, float]:
    """The pages a store uses and the size of its file, in MB."""
    conn = sqlite3.connect(database)
    try:
        pages, free, size = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
    finally:
        conn.close()
    return (pages - free) * size / 1e6, pages * size / 1e6


def table_mb(database: str) -> dict[str, float]:
    """The pages each table and index uses, in MB (SQLite's ``dbstat``)."""
    conn = sqlite3.connect(database)
    try:
        return {name: size / 1e6 for name, size in conn.execute(
            "SELECT name, sum(pgsize - unused) FROM dbstat GROUP BY name")}
    finally:
        conn.close()


def run(days: int, per_day: int, retention_days: float, seed: int,
        tables: bool = False) -> dict:
    settings = ClusteringSettings()
    stream = SyntheticStream(seed=seed, per_day=per_day)
    articles = []
    for article in stream:
        if len(articles) >= days * per_day:
            break
        articles.append(article)
    by_day = [list(day) for _day, day in groupby(articles,
                                                 key=lambda a: a.entry.published.date())]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        kept = make_aggregator(Path(directory), "kept", stream, settings)
        purged = make_aggregator(Path(directory), "purged", stream, settings)
        purged.config = replace(purged.config, retention_s=retention_days * 86400.0)
        first_purge: dict[str, float] | None = None
        totals = {"ingest_s": 0.0, "ingest_articles": 0, "purge_s": 0.0, "purged": 0,
                  "stories": 0}
        for number, day in enumerate(by_day, 1):
            ingest(kept, day)
            started = time.perf_counter()
            ingest(purged, day)
            ingest_s = time.perf_counter() - started
            started = time.perf_counter()
            report = purged.purge_expired(day[-1].entry.published, budget_s=float("inf"),
                                          force=True)
            purge_s = time.perf_counter() - started
            totals["ingest_s"] += ingest_s
            totals["ingest_articles"] += len(day)
            totals["purge_s"] += purge_s
            totals["purged"] += report.articles
            totals["stories"] += report.stories
            kept_used, kept_file = used_mb(kept.store.path)
            purged_used, purged_file = used_mb(purged.store.path)
            stored = purged.store.db.execute("SELECT count(*) FROM articles").fetchone()[0]
            if tables and report.articles and first_purge is None:
                first_purge = table_mb(purged.store.path)
            rows.append((number, len(day), stored, report.articles, kept_used, purged_used,
                         purged_file, ingest_s, purge_s))
            print(f"day {number:3d}: {len(day):6,} written, {stored:7,} kept, "
                  f"{report.articles:6,} deleted; used {kept_used:7.1f} MB without "
                  f"retention, {purged_used:7.1f} MB with it (file {purged_file:7.1f} MB); "
                  f"writing {ingest_s:6.2f} s, purging {purge_s:5.2f} s", flush=True)
        if tables and first_purge is not None:
            # What still grows while the articles kept stay level.
            grown = {name: size - first_purge.get(name, 0.0)
                     for name, size in table_mb(purged.store.path).items()}
            print("grown since the first purge (MB of used bytes): " + ", ".join(
                f"{name} {delta:+.2f}" for name, delta in
                sorted(grown.items(), key=lambda item: -abs(item[1]))[:8]))
        kept.close()
        purged.close()
    ingest_rate = totals["ingest_articles"] / totals["ingest_s"]
    purge_rate = totals["purged"] / totals["purge_s"] if totals["purged"] else None
    last = rows[-1]
    return {
        "days": days, "per_day": per_day, "retention_days": retention_days,
        "articles": totals["ingest_articles"], "kept_articles": last[2],
        "purged_articles": totals["purged"], "purged_stories": totals["stories"],
        "used_mb_without_retention": round(last[4], 1),
        "used_mb_with_retention": round(last[5], 1),
        "file_mb_with_retention": round(last[6], 1),
        "used_mb_ratio": round(last[5] / last[4], 3),
        "ingest_articles_per_s": round(ingest_rate, 1),
        "purge_articles_per_s": round(purge_rate, 1) if purge_rate else None,
        "purge_vs_ingest": round(purge_rate / ingest_rate, 2) if purge_rate else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=16)
    parser.add_argument("--per-day", type=int, default=2000)
    parser.add_argument("--retention-days", type=float, default=8.0,
                        help="at least the window (7 days) plus one")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tables", action="store_true",
                        help="also print which tables still grew after the first purge")
    args = parser.parse_args()
    window_days = ClusteringSettings().window_days
    if args.retention_days < window_days + 1:
        parser.error(f"--retention-days: at least the window plus one day ({window_days + 1:g})")
    print(json.dumps(run(args.days, args.per_day, args.retention_days, args.seed,
                         args.tables)))


if __name__ == "__main__":
    main()
