"""Fetching benchmark: our passes against lemon24's ``reader`` on one loopback feed farm.

Stage seconds add up the time of every thread and process in that stage, so they can sum to
more than the wall time: fetch (fetch threads), parse and prepare (feed parsing, then
normalising and text features, in worker processes as each document reports), cluster
(fingerprinting under the current statistics, LSH queries, verification and index updates,
in the writer), the writer's remaining time (staging rows, SQLite reads, and waiting for the
write group before to commit) and the write-behind process's CPU (SQLite writes).

The farm runs in its own process (ETag and If-None-Match honoured).  Measured, in one run:
our first pass (every feed 200: fetch, parse, cluster, store), the same with clustering off,
our forced second pass (every feed requested again, all 304), and ``reader`` (PyPI; it needs
``sgmllib3k`` beside it) doing its first update and a forced second one with parallel workers.
The all-304 passes, ours and ``reader``'s, are each the median of three in a row (ours
with the CPU its writer's thread took).  It also
counts the transactions our first passes wrote their sources in (``write_groups``).

    pip install reader sgmllib3k
    python benchmarks/fetch.py --feeds 2000 --entries 20     # the issue's size
    python benchmarks/fetch.py --feeds 300 --entries 20      # quicker
    python benchmarks/fetch.py --write-behind                # our passes written behind

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402
from ingest import behind_pids, cpu_s  # noqa: E402
from timing import timed_calls  # noqa: E402

import aggregator.pipeline as pipeline  # noqa: E402
from aggregator.config import load_config  # noqa: E402
from aggregator.pipeline import Aggregator, GroupWrite  # noqa: E402

STAGES: dict[str, float] = defaultdict(float)
# A forced all-304 pass takes a second or two, so one is a noisy sample: ours and reader's
# are each the median of this many.
NOT_MODIFIED_PASSES = 3


def serve_farm(feeds: int, entries: int, queue) -> None:
    farm = Farm(feeds, entries, seed=5)
    queue.put(farm.urls())
    while True:
        time.sleep(3600)


def stage_targets() -> list[tuple[object, str, str]]:
    """The functions whose time makes up each stage of our pipeline."""
    return [(pipeline.fetching, "fetch", "fetch"),
            (pipeline, "fingerprint_of", "cluster"), (pipeline.Clusterer, "propose", "cluster"),
            (pipeline.Clusterer, "commit", "cluster"), (Aggregator, "_store_fetched", "writer"),
            (Aggregator, "_submit_group", "writer"), (GroupWrite, "result", "writer")]


def our_passes(urls: list[str], workdir: Path, cluster: bool, write_behind: bool = False) -> dict:
    config_path = workdir / f"ours-{cluster}.toml"
    write_farm_config(config_path, urls, str(workdir / f"ours-{cluster}.db"))
    config = load_config(config_path)
    config = replace(config, clustering=replace(config.clustering, enabled=cluster),
                     write_behind=write_behind)
    aggregator = Aggregator(config)
    STAGES.clear()
    prepare_in_worker = aggregator._parsed_and_prepared

    def prepared_and_timed(*args):
        document = prepare_in_worker(*args)
        STAGES["parse"] += document.parse_s
        STAGES["prepare"] += document.prepare_s
        return document

    aggregator._parsed_and_prepared = prepared_and_timed
    # How many transactions the first pass wrote its sources in (fewer, larger ones cost the
    # writer less: each commit rewrites the pages it touched).
    groups = []

    def counted_group(names, writes):
        groups.append(len(names))
        return Aggregator._submit_group(aggregator, names, writes)  # as timed_calls made it

    aggregator._submit_group = counted_group
    with timed_calls(stage_targets(), STAGES):
        started = time.perf_counter()
        reports = aggregator.run_pass(force=True)
        first = time.perf_counter() - started
    del aggregator._submit_group
    stages = dict(STAGES)
    # The write-behind process starts with the pass's first group: all its CPU is the pass's.
    stages["written behind"] = sum(cpu_s(behind_pids(aggregator)).values())
    seconds, writer_cpu = [], []
    for _ in range(NOT_MODIFIED_PASSES):
        started, cpu_started = time.perf_counter(), time.thread_time()
        second_reports = aggregator.run_pass(force=True)
        seconds.append(time.perf_counter() - started)
        # The writer is this thread; the fetch threads take the rest of the process's CPU.
        writer_cpu.append(time.thread_time() - cpu_started)
    entries = sum(r.new_articles for r in reports)
    aggregator.close()
    return {"first": first, "second": statistics.median(seconds),
            "second_writer_cpu": statistics.median(writer_cpu), "entries": entries,
            "stages": stages, "write_groups": len(groups),
            "not_modified": sum(r.outcome == "not_modified" for r in second_reports)}


def reader_passes(urls: list[str], workdir: Path, workers: int) -> dict:
    from reader import make_reader

    reader = make_reader(str(workdir / "reader.sqlite"))
    for url in urls:
        reader.add_feed(url)
    started = time.perf_counter()
    reader.update_feeds(workers=workers)
    first = time.perf_counter() - started
    entries = reader.get_entry_counts().total
    seconds = []
    for _ in range(NOT_MODIFIED_PASSES):
        started = time.perf_counter()
        reader.update_feeds(workers=workers, scheduled=False)
        seconds.append(time.perf_counter() - started)
    reader.close()
    return {"first": first, "second": statistics.median(seconds), "entries": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--write-behind", action="store_true",
                        help="our passes with write_behind = true (each write group written "
                             "by a process of its own)")
    args = parser.parse_args()
    queue = multiprocessing.Queue()
    farm = multiprocessing.Process(target=serve_farm, args=(args.feeds, args.entries, queue),
                                   daemon=True)
    farm.start()
    urls = queue.get(timeout=300)
    try:
        with tempfile.TemporaryDirectory(prefix="fetch-bench-") as scratch:
            workdir = Path(scratch)
            ours = our_passes(urls, workdir, cluster=True, write_behind=args.write_behind)
            print(f"ours, first pass: {ours['first']:.1f} s for {ours['entries']} entries "
                  f"({ours['entries'] / ours['first']:.0f}/s); stage seconds "
                  + ", ".join(f"{k} {v:.1f}" for k, v in ours["stages"].items()))
            print(f"ours, all-304 pass: {ours['second']:.2f} s ({ours['not_modified']} x 304; "
                  f"the writer's thread {ours['second_writer_cpu']:.2f} s of CPU)")
            plain = our_passes(urls, workdir, cluster=False, write_behind=args.write_behind)
            print(f"ours without clustering, first pass: {plain['first']:.1f} s")
            print(f"write transactions of the first passes: {ours['write_groups']} with "
                  f"clustering, {plain['write_groups']} without")
            theirs = reader_passes(urls, workdir, args.workers)
            print(f"reader ({args.workers} workers): first {theirs['first']:.1f} s for "
                  f"{theirs['entries']} entries, second {theirs['second']:.2f} s")
    finally:
        farm.terminate()
    writer = ours["stages"].get("writer", 0.0)
    cluster = ours["stages"].get("cluster", 0.0)
    result = {
        "feeds": args.feeds, "entries": ours["entries"], "write_behind": args.write_behind,
        "first_pass_s": round(ours["first"], 2),
        "first_pass_no_cluster_s": round(plain["first"], 2),
        "reader_first_pass_s": round(theirs["first"], 2),
        "speedup_vs_reader": round(theirs["first"] / ours["first"], 3),
        "speedup_vs_reader_no_cluster": round(theirs["first"] / plain["first"], 3),
        "not_modified_pass_s": round(ours["second"], 2),
        "not_modified_writer_cpu_s": round(ours["second_writer_cpu"], 2),
        "reader_not_modified_pass_s": round(theirs["second"], 2),
        "not_modified_speedup_vs_reader": round(theirs["second"] / ours["second"], 3),
        "not_modified_speedup": round(ours["first"] / ours["second"], 3),
        "first_pass_share": {
            "fetching": round(ours["stages"].get("fetch", 0.0) / ours["first"], 3),
            "parsing": round(ours["stages"].get("parse", 0.0) / ours["first"], 3),
            "preparing": round(ours["stages"].get("prepare", 0.0) / ours["first"], 3),
            "clustering": round(cluster / ours["first"], 3),
            "storing": round(max(0.0, writer - cluster) / ours["first"], 3),
            "writing_behind": round(ours["stages"].get("written behind", 0.0)
                                    / ours["first"], 3),
        },
        "write_groups": ours["write_groups"],
        "write_groups_no_cluster": plain["write_groups"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
