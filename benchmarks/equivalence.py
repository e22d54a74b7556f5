"""Equivalence: the same stream stored twice, once plainly and once with a variation that
must not change any decision (a restart, another compaction share, terms leaving memory
after every transaction), then the stored tables compared row for row.

    python benchmarks/equivalence.py --articles 30000 --restart-at 16000
    python benchmarks/equivalence.py --articles 30000 --compact-share 0.1
    python benchmarks/equivalence.py --articles 10000 --per-day 3000 --window-articles 3000 \
        --seed 3 --forget-always --restart-at 6000
    python benchmarks/equivalence.py --articles 30000 --keep /tmp/before   # on one commit
    python benchmarks/equivalence.py --articles 30000 --against /tmp/before/plain/stream.sqlite

``--against`` compares one plain run with a database stored earlier with the same stream
options (by another version of the code: a change meant only to be faster must store the
same rows).  Each variation applies to the second run only; the first keeps the defaults.  The last
line printed is one JSON object: rows differing per table, and the first
article whose row differs (null when none).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ingest, make_aggregator  # noqa: E402
from stream import SyntheticStream  # noqa: E402

from aggregator import cluster, pipeline  # noqa: E402
from aggregator.config import ClusteringSettings  # noqa: E402

TABLES = ("articles", "stories", "canonical_history", "term_stats", "article_fingerprints")
# Articles ingested at a time (a restart comes between two of them).
CHUNK = 1000


def store_stream(directory: Path, args: argparse.Namespace, varied: bool) -> Path:
    directory.mkdir(parents=True)
    stream = SyntheticStream(seed=args.seed, per_day=args.per_day)
    settings = ClusteringSettings(window_articles=args.window_articles)
    share, forget = cluster.COMPACT_AT_DEAD_SHARE, pipeline.Aggregator._forget_unseen_terms
    if varied and args.compact_share is not None:
        cluster.COMPACT_AT_DEAD_SHARE = args.compact_share
    if varied and args.forget_always:
        def after_every_transaction(aggregator: pipeline.Aggregator) -> None:
            aggregator._terms_kept = -1  # as if the vocabulary had just grown past its mark
            forget(aggregator)
        pipeline.Aggregator._forget_unseen_terms = after_every_transaction
    try:
        aggregator = make_aggregator(directory, "stream", stream, settings, args.write_behind)
        articles, done = iter(stream), 0
        while done < args.articles:
            batch = list(islice(articles, min(CHUNK, args.articles - done)))
            ingest(aggregator, batch)
            done += len(batch)
            if varied and done == args.restart_at:
                aggregator.close()
                aggregator = make_aggregator(directory, "stream", stream, settings,
                                             args.write_behind)
        aggregator.close()
    finally:
        cluster.COMPACT_AT_DEAD_SHARE = share
        pipeline.Aggregator._forget_unseen_terms = forget
    return directory / "stream.sqlite"


def shared_columns(db: sqlite3.Connection, table: str) -> str:
    """The columns of ``table`` that both stores have, in the first one's order: two
    versions compared across a migration that adds a column (``turns.py --against``) still
    compare every row on the rest."""
    def columns(schema: str) -> list[str]:
        return [row[1] for row in db.execute(f"PRAGMA {schema}.table_info({table})")]

    other = set(columns("varied"))
    return ", ".join(column for column in columns("main") if column in other)


def compare(plain: Path, varied: Path) -> dict:
    db = sqlite3.connect(plain)
    db.execute("ATTACH ? AS varied", [str(varied)])
    differing = {}
    for table in TABLES:
        shared = shared_columns(db, table)
        differing[table] = db.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {shared} FROM main.{table} EXCEPT "
            f"SELECT {shared} FROM varied.{table})) + (SELECT count(*) FROM (SELECT {shared} "
            f"FROM varied.{table} EXCEPT SELECT {shared} FROM main.{table}))").fetchone()[0]
    shared = shared_columns(db, "articles")
    first = db.execute(f"SELECT min(id) FROM (SELECT {shared} FROM main.articles EXCEPT "
                       f"SELECT {shared} FROM varied.articles)").fetchone()[0]
    rows = db.execute("SELECT count(*) FROM main.articles").fetchone()[0]
    db.close()
    return {"articles": rows, "differing_rows": differing, "first_differing_article": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write-behind", action="store_true",
                        help="both runs with write_behind (each write group written by a "
                             "process of its own)")
    parser.add_argument("--per-day", type=int, default=14_000)
    parser.add_argument("--window-articles", type=int,
                        default=ClusteringSettings().window_articles)
    parser.add_argument("--restart-at", type=int, default=None,
                        help="the varied run restarts after this many articles (a multiple "
                             f"of {CHUNK})")
    parser.add_argument("--compact-share", type=float, default=None,
                        help="the varied run's COMPACT_AT_DEAD_SHARE")
    parser.add_argument("--forget-always", action="store_true",
                        help="the varied run lets unused terms leave memory after every "
                             "transaction")
    parser.add_argument("--against", type=Path, default=None, metavar="DATABASE",
                        help="compare the plain run with this stored database instead of "
                             "with a varied run")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the stored databases under DIR (which must not exist)")
    args = parser.parse_args()
    if args.against is not None and not args.against.is_file():
        parser.error(f"--against: no database at {args.against}")
    if args.against is not None and (args.restart_at is not None or args.forget_always
                                     or args.compact_share is not None):
        parser.error("--against compares a plain run: no variation goes with it")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep: {args.keep} exists")
    if args.restart_at is not None and (args.restart_at % CHUNK
                                        or not 0 < args.restart_at < args.articles):
        parser.error(f"--restart-at: a multiple of {CHUNK} below --articles, not "
                     f"{args.restart_at}")
    with tempfile.TemporaryDirectory() as scratch:
        plain = store_stream(Path(scratch) / "plain", args, varied=False)
        if args.against is not None:
            result = compare(plain, args.against)
        else:
            result = compare(plain, store_stream(Path(scratch) / "varied", args, varied=True))
        if args.keep is not None:
            shutil.copytree(scratch, args.keep)
    for table, count in result["differing_rows"].items():
        print(f"{table:22s} {count} rows differ")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
