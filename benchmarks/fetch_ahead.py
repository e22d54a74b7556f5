"""What fetching ahead of the writer holds: a pass over large feeds, with and without the
entries budget.

A loopback farm of large feeds (``farm.py``; by default 48 feeds of 400 entries of 120
words), served from this process.  Each run is our first pass over it (clustering on, as
the daemon runs by default) in a fresh process, so that its peak RSS is its own: with
``FETCH_AHEAD_ENTRIES`` as shipped, and with the budget lifted, so that only the count of
sources (``FETCH_AHEAD`` x ``max_concurrency``) bounds what is fetched ahead, as before the
budget.  The two alternate, ``--runs`` each.  Per run: wall time, peak RSS of the pass's
process (its worker processes are apart), and the most entries fetched and not yet handed
to the writer (counted at the end of each fetch); then the medians and their ratios, the
budget's against the lifted one's.

    python benchmarks/fetch_ahead.py
    python benchmarks/fetch_ahead.py --feeds 64 --entries 1000 --runs 1

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402

LIFTED = 10**9


def one_pass(config_path: str, budget: int) -> dict:
    """Our first pass over the farm in ``config_path``, ``FETCH_AHEAD_ENTRIES`` = ``budget``."""
    import aggregator.pipeline as pipeline
    from aggregator.config import load_config

    pipeline.FETCH_AHEAD_ENTRIES = budget
    aggregator = pipeline.Aggregator(load_config(config_path))
    lock = threading.Lock()
    counted = {"fetched": 0, "handed": 0, "most_ahead": 0}
    entries_of: dict[str, int] = {}
    fetch_and_parse = aggregator._fetch_and_parse

    def fetched_and_counted(source, row):
        fetched = fetch_and_parse(source, row)
        with lock:
            entries_of[source.name] = fetched.entry_count
            counted["fetched"] += fetched.entry_count
            counted["most_ahead"] = max(counted["most_ahead"],
                                        counted["fetched"] - counted["handed"])
        return fetched

    submit_group = aggregator._submit_group

    def handed(names, writes):
        with lock:
            counted["handed"] += sum(entries_of.get(name, 0) for name in names)
        return submit_group(names, writes)

    aggregator._fetch_and_parse = fetched_and_counted
    aggregator._submit_group = handed
    started = time.perf_counter()
    reports = aggregator.run_pass(force=True)
    seconds = time.perf_counter() - started
    aggregator.close()
    failed = [report for report in reports if report.outcome != "ok"]
    if failed:
        raise RuntimeError(f"{failed[0].source}: {failed[0].error}")
    return {"seconds": seconds, "entries": sum(r.new_articles for r in reports),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "most_entries_ahead": counted["most_ahead"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=48)
    parser.add_argument("--entries", type=int, default=400)
    parser.add_argument("--runs", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--one-pass", nargs=2, metavar=("CONFIG", "BUDGET"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pass:
        print(json.dumps(one_pass(args.one_pass[0], int(args.one_pass[1]))))
        return

    import aggregator.pipeline as pipeline

    farm = Farm(args.feeds, args.entries, seed=5)
    print(f"{args.feeds} feeds x {args.entries} entries; entries budget "
          f"{pipeline.FETCH_AHEAD_ENTRIES:,}", flush=True)
    results: dict[str, list[dict]] = {"budget": [], "lifted": []}
    try:
        with tempfile.TemporaryDirectory() as directory:
            for run in range(args.runs):
                order = ("budget", "lifted") if run % 2 == 0 else ("lifted", "budget")
                for name in order:
                    config = Path(directory) / f"{name}{run}.toml"
                    write_farm_config(config, farm.urls(), str(Path(directory) /
                                                               f"{name}{run}.sqlite"))
                    budget = pipeline.FETCH_AHEAD_ENTRIES if name == "budget" else LIFTED
                    done = subprocess.run([sys.executable, __file__, "--one-pass",
                                           str(config), str(budget)],
                                          capture_output=True, text=True, check=True)
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    results[name].append(result)
                    print(f"  {name:6s} {result['seconds']:6.1f} s, {result['entries']:,} "
                          f"entries, peak RSS {result['peak_rss_mb']:.1f} MB, at most "
                          f"{result['most_entries_ahead']:,} entries ahead", flush=True)
    finally:
        farm.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(result[key] for result in results[name])

    summary = {"feeds": args.feeds, "entries_per_feed": args.entries,
               "entries_budget": pipeline.FETCH_AHEAD_ENTRIES, "runs": args.runs}
    for name in results:
        for key in ("seconds", "peak_rss_mb", "most_entries_ahead"):
            summary[f"{name}_{key}"] = round(median(name, key), 2)
    summary["peak_rss_ratio"] = round(median("budget", "peak_rss_mb")
                                      / median("lifted", "peak_rss_mb"), 3)
    summary["time_ratio"] = round(median("budget", "seconds") / median("lifted", "seconds"), 3)
    print(f"medians: peak RSS {summary['budget_peak_rss_mb']:.1f} MB with the budget against "
          f"{summary['lifted_peak_rss_mb']:.1f} lifted ({summary['peak_rss_ratio']:.3f}x), "
          f"{summary['budget_seconds']:.1f} s against {summary['lifted_seconds']:.1f} "
          f"({summary['time_ratio']:.3f}x)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
