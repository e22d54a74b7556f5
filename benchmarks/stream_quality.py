"""Clustering quality at scale: the stories a stored synthetic stream was clustered into,
scored against the stories the generator wrote, as ``aggregator eval`` scores the dev files
(B-cubed and pairwise precision, recall and F1).

    python benchmarks/ingest.py --sizes 100000 --keep /tmp/stream
    python benchmarks/stream_quality.py /tmp/stream/stream.sqlite
    python benchmarks/stream_quality.py STORE --seed 3 --per-day 3000   # equivalence.py's

The stream is generated again from its seed and rate (those the store was made with) until
every stored article is found by its GUID.  The whole store is scored, then each tenth of it
in the order stored (a story cut by a tenth's edge counts in both, as two parts): with a
fixed stream, a tenth that scores lower than the first ones means that a fuller window, or
a longer-running store, clusters worse.  The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import SyntheticStream  # noqa: E402

from aggregator.evaluate import score_clustering  # noqa: E402

TENTHS = 10


def stored_articles(database: str) -> list[tuple[str, int, str]]:
    """``(guid, story id, link)`` of every stored article, in the order stored."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute("SELECT guid, story_id, url FROM articles ORDER BY id").fetchall()
    finally:
        db.close()


def written_stories(links: dict[str, str], seed: int, per_day: int) -> dict[str, int]:
    """The generator's story of each stored article (``links``: its link by GUID): the
    stream replayed until it has given them all.  Every stream numbers its GUIDs alike, so
    an article whose link differs (its outlet is drawn from the seed) is of another
    stream, and so is a GUID the stream does not give within ``limit`` articles."""
    found: dict[str, int] = {}
    limit = 2 * len(links) + 10_000
    for given, article in enumerate(SyntheticStream(seed=seed, per_day=per_day)):
        entry = article.entry
        if entry.guid in links:
            if links[entry.guid] != entry.link:
                raise SystemExit(f"stored article {entry.guid} is not in the stream of seed "
                                 f"{seed} and {per_day} a day (stored {links[entry.guid]}, "
                                 f"streamed {entry.link}): another stream?")
            found[entry.guid] = article.story
            if len(found) == len(links):
                break
        if given >= limit:
            missing = len(links) - len(found)
            raise SystemExit(f"{missing} stored articles are not in the stream of seed {seed} "
                             f"and {per_day} a day within {limit:,} articles: another stream?")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database", help="a store of the synthetic stream (ingest.py --keep)")
    parser.add_argument("--seed", type=int, default=7, help="the stream's seed")
    parser.add_argument("--per-day", type=int, default=14_000, help="the stream's rate")
    args = parser.parse_args()
    if not Path(args.database).is_file():
        parser.error(f"no database at {args.database}")
    started = time.perf_counter()
    stored = stored_articles(args.database)
    if not stored:
        parser.error(f"{args.database} holds no article")
    gold = written_stories({guid: link for guid, _story, link in stored}, args.seed,
                           args.per_day)
    rows = [(guid, story) for guid, story, _link in stored]
    print(f"{len(rows):,} stored articles, {len(set(gold.values())):,} written stories, "
          f"{len({story for _guid, story in rows}):,} found "
          f"({time.perf_counter() - started:.1f} s to replay the stream)")
    whole = score_clustering({guid: str(gold[guid]) for guid, _story in rows},
                             dict(rows)).as_dict()
    tenths = []
    for tenth in range(TENTHS):
        part = rows[tenth * len(rows) // TENTHS:(tenth + 1) * len(rows) // TENTHS]
        if part:
            tenths.append(score_clustering({guid: str(gold[guid]) for guid, _story in part},
                                           dict(part)).as_dict())
    print(f"whole store  B-cubed P {whole['bcubed_precision']:.4f} R "
          f"{whole['bcubed_recall']:.4f} F1 {whole['bcubed_f1']:.4f}  pairwise F1 "
          f"{whole['pairwise_f1']:.4f}")
    for number, scores in enumerate(tenths, 1):
        print(f"tenth {number:2d}     B-cubed P {scores['bcubed_precision']:.4f} R "
              f"{scores['bcubed_recall']:.4f} F1 {scores['bcubed_f1']:.4f}  pairwise F1 "
              f"{scores['pairwise_f1']:.4f}")
    print(json.dumps({"articles": len(rows), "stories_written": len(set(gold.values())),
                      "stories_found": len({story for _guid, story in rows}), **whole,
                      "bcubed_f1_by_tenth": [s["bcubed_f1"] for s in tenths],
                      "bcubed_precision_by_tenth": [s["bcubed_precision"] for s in tenths]}))


if __name__ == "__main__":
    main()
