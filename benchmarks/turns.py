"""Two versions of the whole writer, timed on the same stream chunks, taking turns.

This machine's speed drifts by 10-25% between two runs of one benchmark, even back to
back: more than a change to the writer is worth, so two ``ingest.py`` runs, one per version,
cannot tell them apart.  ``propose.py`` compares one step in one process; this compares
everything the writer does (fingerprints, decisions, canonical elections, SQLite writes,
the full-text index, eviction, the workers) by running each version in a process of its
own, both restarted from copies of one store, and handing them the same chunks of the
synthetic stream in turns (A B, B A, A B, ...): only one works at a time, and the two
timings of a chunk are a minute apart, so that each chunk's ratio is the machine's speed
divided out.  The first chunk after the restart warms caches and is not counted.

    python benchmarks/turns.py --against ../before --store /tmp/k100/stream.sqlite
    python benchmarks/turns.py --against . --store /tmp/k100/stream.sqlite   # the noise
    python benchmarks/turns.py --against . --b-write-behind --store ...       # the modes
    python benchmarks/turns.py --against ../before --articles 20000           # builds a store

``--store``: a store of the first ``--skip`` articles (default: all it holds) of the stream
of ``--seed`` and ``--per-day``, as ``ingest.py --keep DIRECTORY`` leaves it
(``DIRECTORY/stream.sqlite``); it is copied, never written.  Without it the first
``--articles`` of the stream are stored first, by this tree (``equivalence.py``'s plain
run).  ``--against``: a checkout of the other version (B), with its compiled
kernels built in place (``pip install -e`` there, or the ``_kernels`` module of its wheel
copied into its ``aggregator/``); it is imported ahead of the installed package.  Both
versions run this tree's benchmark code (``stream.py``, ``ingest.py``), which must work with
B's ``aggregator``.

Per chunk it prints each version's wall time and CPU an article (the writer's process and
its worker processes) and B's time over A's; then the median of those ratios, their range,
and the ratio of the totals; then how many rows of the two stores differ at the end
(``equivalence.py``'s tables: a change meant only to be faster differs in none).  The last
line is one JSON object: ``speedup`` is B's total wall time over A's (above 1: this tree is
faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent


def serve(args: argparse.Namespace) -> None:
    """One version's side: restart on the store, then a chunk for each line ``chunk``
    read, its timings written back as one JSON line."""
    sys.path.insert(0, str(HERE))
    from ingest import (
        behind_pids,
        cpu_s,
        cpu_since,
        ingest,
        make_aggregator,
        peak_rss_mb,
        start_workers,
        worker_pids,
    )
    from stream import SyntheticStream

    import aggregator
    from aggregator.config import ClusteringSettings

    stream = SyntheticStream(seed=args.seed, per_day=args.per_day)
    articles = islice(iter(stream), args.skip, None)
    directory = Path(args.serve)
    started = time.perf_counter()
    runner = make_aggregator(directory, "stream", stream, ClusteringSettings(),
                             args.write_behind)
    start_workers(runner)
    reply({"ready": True, "package": str(Path(aggregator.__file__).parent),
           "restart_s": round(time.perf_counter() - started, 2),
           "window": runner.clusterer.window_size})
    for line in sys.stdin:
        if line.strip() != "chunk":
            break
        chunk = list(islice(articles, args.chunk))
        # The worker processes' CPU, and the write-behind process's with it.
        others_before = cpu_s(worker_pids(runner) + behind_pids(runner))
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        ingest(runner, chunk)
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        workers = cpu_since(worker_pids(runner) + behind_pids(runner), others_before)
        reply({"articles": len(chunk), "wall_s": wall, "cpu_s": cpu, "workers_cpu_s": workers,
               "peak_rss_mb": peak_rss_mb()})
    runner.close()


def reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


class Side:
    """A version's process, restarted on its own copy of the store."""

    def __init__(self, name: str, checkout: Path, store: Path, args: argparse.Namespace,
                 write_behind: bool, directory: Path):
        self.name = name
        place = directory / name
        place.mkdir()
        # ``make_aggregator`` names the database after the stream: ``stream.sqlite``.
        shutil.copyfile(store, place / "stream.sqlite")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(checkout)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH")
                               else []))
        command = [sys.executable, __file__, "--serve", str(place), "--seed", str(args.seed),
                   "--per-day", str(args.per_day), "--skip", str(args.skip),
                   "--chunk", str(args.chunk)]
        if write_behind:
            command.append("--write-behind")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=environment, cwd=str(checkout))
        self.ready = self._answer()
        self.chunks: list[dict] = []

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"side {self.name} stopped (exit status {self.process.wait()})")
        return json.loads(line)

    def run_chunk(self) -> dict:
        self.process.stdin.write("chunk\n")
        self.process.stdin.flush()
        return self._answer()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
            self.process.wait()


def build_store(args: argparse.Namespace, directory: Path) -> Path:
    """The first ``--articles`` of the stream stored by this tree, as ``equivalence.py``'s
    plain run stores them."""
    from equivalence import store_stream

    from aggregator.config import ClusteringSettings

    return store_stream(directory, argparse.Namespace(
        articles=args.articles, seed=args.seed, per_day=args.per_day,
        window_articles=ClusteringSettings().window_articles, write_behind=False),
        varied=False)


def stored_articles(store: Path) -> int:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM articles").fetchone()[0]
    finally:
        conn.close()


def per_article_ms(chunk: dict) -> tuple[float, float]:
    """Wall and CPU (the writer's process and its workers) milliseconds an article."""
    return (chunk["wall_s"] / chunk["articles"] * 1000,
            (chunk["cpu_s"] + chunk["workers_cpu_s"]) / chunk["articles"] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required="--serve" not in sys.argv,
                        help="a checkout of the other version (B)")
    parser.add_argument("--store", type=Path, help="a store of the stream's first articles")
    parser.add_argument("--articles", type=int, default=20_000,
                        help="without --store: articles to store first")
    parser.add_argument("--skip", type=int, default=-1,
                        help="the stream's articles the store holds (default: its count)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--per-day", type=int, default=14_000,
                        help="the stream's articles a day (as the store was made with)")
    parser.add_argument("--chunk", type=int, default=2000, help="articles a turn")
    parser.add_argument("--rounds", type=int, default=6, help="chunks counted, each side")
    parser.add_argument("--write-behind", action="store_true", help="both write behind")
    parser.add_argument("--b-write-behind", action="store_true", help="B writes behind")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        store = args.store
        if store is None:
            print(f"storing the stream's first {args.articles:,} articles ...", flush=True)
            store = build_store(args, directory / "built")
        if args.skip < 0:
            args.skip = stored_articles(store)
        sides = []
        try:
            sides.append(Side("A", TREE, store, args, args.write_behind, directory))
            sides.append(Side("B", args.against.resolve(), store, args,
                              args.write_behind or args.b_write_behind, directory))
            for side in sides:
                print(f"{side.name}: {side.ready['package']}, restart {side.ready['restart_s']} s, "
                      f"window {side.ready['window']:,}", flush=True)
            summary = compare(sides, args)
        finally:
            for side in sides:
                side.stop()
        summary["differing_rows"] = differing_rows(directory)
        print(f"rows differing between the two stores: {summary['differing_rows']}")
        print(json.dumps(summary))


def differing_rows(directory: Path) -> dict[str, int] | str:
    """The rows of each compared table that one side stored and the other did not."""
    from equivalence import compare as compare_stores

    try:
        return compare_stores(directory / "A" / "stream.sqlite",
                              directory / "B" / "stream.sqlite")["differing_rows"]
    except sqlite3.Error as exc:  # another schema: nothing to compare row for row
        return f"not compared: {exc}"


def compare(sides: list[Side], args: argparse.Namespace) -> dict:
    a, b = sides
    ratios = []
    print(f"{'chunk':>5} {'A ms/article':>13} {'B ms/article':>13} {'B/A':>6}   "
          f"{'A CPU':>6} {'B CPU':>6}")
    for number in range(args.rounds + 1):
        order = (a, b) if number % 2 == 0 else (b, a)
        results = {side.name: side.run_chunk() for side in order}
        if number == 0:
            continue  # warming up after the restart
        a.chunks.append(results["A"])
        b.chunks.append(results["B"])
        (a_wall, a_cpu), (b_wall, b_cpu) = per_article_ms(results["A"]), per_article_ms(
            results["B"])
        ratios.append(b_wall / a_wall)
        print(f"{number:>5} {a_wall:13.3f} {b_wall:13.3f} {ratios[-1]:6.3f}   "
              f"{a_cpu:6.3f} {b_cpu:6.3f}", flush=True)
    totals = {}
    for side in sides:
        articles = sum(chunk["articles"] for chunk in side.chunks)
        wall = sum(chunk["wall_s"] for chunk in side.chunks)
        cpu = sum(chunk["cpu_s"] + chunk["workers_cpu_s"] for chunk in side.chunks)
        totals[side.name] = {"articles": articles,
                             "articles_per_s": round(articles / wall, 1),
                             "ms_per_article": round(wall / articles * 1000, 3),
                             "cpu_ms_per_article": round(cpu / articles * 1000, 3),
                             "peak_rss_mb": round(side.chunks[-1]["peak_rss_mb"], 1)}
    speedup = totals["B"]["ms_per_article"] / totals["A"]["ms_per_article"]
    own_spread = [per_article_ms(chunk)[0] for chunk in a.chunks]
    print(f"B/A: median {statistics.median(ratios):.3f}, from {min(ratios):.3f} to "
          f"{max(ratios):.3f}; totals {speedup:.3f} (A {totals['A']['articles_per_s']}/s, "
          f"B {totals['B']['articles_per_s']}/s); A's own chunks from "
          f"{min(own_spread):.3f} to {max(own_spread):.3f} ms an article")
    return {"against": str(args.against), "skip": args.skip, "chunk": args.chunk,
            "rounds": args.rounds, "write_behind": args.write_behind,
            "b_write_behind": args.b_write_behind,
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_low": round(min(ratios), 3), "ratio_high": round(max(ratios), 3),
            "speedup": round(speedup, 3), "a": totals["A"], "b": totals["B"]}


if __name__ == "__main__":
    main()
