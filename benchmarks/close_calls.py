"""How far a reader is from mending the clusterer's misses with the close calls.

Each labelled file is streamed through ``aggregator eval``'s pipeline into a store kept for
the run; then, for every pair of articles of one gold story that the clusterer left in two
stories (a missed join), the pair counts as one click away when either story lists the
other among its close calls (``readers.close_calls``, what ``aggregator story`` and the
story page show, each with a merge button).  It also counts the close calls that are wrong
(the story listed tells another gold story), which a reader would pass over.

    python benchmarks/close_calls.py ../shared/eval/*.jsonl

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from aggregator.evaluate import evaluate_file, read_labelled
from aggregator.readers import close_calls


def measure(path: str) -> dict:
    articles = read_labelled(path)
    gold = {a.id: a.cluster for a in articles}
    with tempfile.TemporaryDirectory(prefix="close-calls-") as scratch:
        database = str(Path(scratch) / "eval.db")
        started = time.perf_counter()
        result = evaluate_file(path, database=database)
        conn = sqlite3.connect(database)
        try:
            # An article dropped as a repeat is "alone:ID", in no stored story.
            calls = {story_id: [c["story_id"] for c in close_calls(conn, story_id)]
                     for story_id in set(result.assignments.values())
                     if isinstance(story_id, int)}
        finally:
            conn.close()
        seconds = time.perf_counter() - started
    # Gold stories of each found story, and found stories of each gold story.
    gold_of_story: dict[object, set[str]] = defaultdict(set)
    stories_of_gold: dict[str, set[object]] = defaultdict(set)
    for article_id, story_id in result.assignments.items():
        gold_of_story[story_id].add(gold[article_id])
        stories_of_gold[gold[article_id]].add(story_id)
    missed = reachable = 0
    for found in stories_of_gold.values():
        for first, second in combinations(sorted(found, key=str), 2):
            missed += 1
            reachable += (second in calls.get(first, ())) or (first in calls.get(second, ()))
    top_right = sum(1 for story_id, listed in calls.items() if listed
                    and gold_of_story[story_id] & gold_of_story[listed[0]])
    listed = sum(len(listed) for listed in calls.values())
    right = sum(1 for story_id, listed in calls.items() for other in listed
                if gold_of_story[story_id] & gold_of_story[other])
    return {"file": Path(path).name, "articles": len(articles),
            "missed_story_pairs": missed, "one_click_away": reachable,
            "share_one_click_away": round(reachable / missed, 4) if missed else 1.0,
            "close_calls_listed": listed,
            "close_calls_right": right,
            "share_right": round(right / listed, 4) if listed else 1.0,
            "stories_with_close_calls": sum(1 for listed in calls.values() if listed),
            "closest_call_right": top_right,
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    rows = [measure(path) for path in args.files]
    for row in rows:
        print(f"{row['file']}: {row['one_click_away']} of {row['missed_story_pairs']} missed "
              f"story pairs one click away ({row['share_one_click_away']:.1%}); "
              f"{row['close_calls_right']} of {row['close_calls_listed']} close calls right "
              f"({row['share_right']:.1%}); the closest call right for "
              f"{row['closest_call_right']} of {row['stories_with_close_calls']} stories "
              f"with calls; {row['seconds']} s")
    print(json.dumps({"files": rows}))


if __name__ == "__main__":
    main()
