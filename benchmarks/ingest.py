"""Ingest: a synthetic stream through normalize -> fingerprint -> cluster -> store.

The stream (``stream.py``, seeded) has stories with several write-ups and syndicated
near-copies, 14,000 articles a simulated day, so the 7-day window holds about 100,000
articles; stories that go on for days would keep it at 115,000, and the window's article
limit (``window_articles``, 100,000 by default) keeps it at 100,000.  Articles arrive as
feed passes do: grouped by source, the sources ready together written in one transaction.
Input is local; nothing goes over the network.

At each size it reports the ingest rate of the last stretch and the CPU it took an article
(in the writer's process and in the worker processes: with two cores, their sum bounds the
rate however the work is shared), the process's peak RSS, the
clustering index's bytes per article in the window, and the restart time: the process
stops (closing the store, as the daemon does on SIGTERM), a fresh process rebuilds the index
and statistics from the store, and then ingest goes on in a reopened one.  In the same run
a sample of the stream goes through the naive approach (per-token ``MinHash.update``,
datasketch ``MinHashLSH`` in memory, one transaction per article) and through ours, each on
a fresh store, for the speed ratio; ours with its worker processes already started, as in a
running daemon.

    python benchmarks/ingest.py                    # 10k and 100k articles
    python benchmarks/ingest.py --million          # and 1M (a 100k window streamed through)
    python benchmarks/ingest.py --sizes 5000 --naive-sample 500
    python benchmarks/ingest.py --write-behind     # with write_behind = true
    python benchmarks/ingest.py --sizes 250000 --window-articles 0   # no article limit
    python benchmarks/ingest.py --sizes 100000 --keep /tmp/stream      # keep the store, then
    python benchmarks/ingest.py --restart-only /tmp/stream/stream.sqlite --runs 5

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import wait
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import SyntheticStream  # noqa: E402

from aggregator.config import ClusteringSettings, Config, Source  # noqa: E402
from aggregator.pipeline import (  # noqa: E402
    FETCH_AHEAD,
    FETCH_AHEAD_ENTRIES,
    WRITE_GROUP_ENTRIES,
    WRITE_GROUP_SOURCES,
    Aggregator,
    fetch_more,
)

# Stream articles generated, then ingested, at a time (the writer benchmark writes them so too).
INGEST_CHUNK = 4000

RESTART_SCRIPT = """
import json, sys, time
from aggregator.config import ClusteringSettings
from aggregator.fingerprint import Signer
from aggregator.pipeline import load_clusterer
from aggregator.store import Store
store = Store(sys.argv[1])
settings = ClusteringSettings(index_backend=sys.argv[2])
started = time.perf_counter()
clusterer = load_clusterer(store, settings, Signer(settings.num_perm))
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss, which keeps the high-water mark of the parent forked before exec.
status = {line.split(":")[0]: int(line.split()[1]) / 1024
          for line in open("/proc/self/status") if line.startswith(("VmHWM:", "VmRSS:"))}
print(json.dumps({"seconds": elapsed, "articles": clusterer.window_size,
                  "terms": clusterer.vocabulary.seen,
                  "terms_in_memory": len(clusterer.vocabulary.ids),
                  "term_numbers": len(clusterer.vocabulary),
                  "rss_mb": round(status["VmRSS"], 1),
                  "peak_rss_mb": round(status["VmHWM"], 1)}))
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# Where the workers' CPU time is read (Linux); elsewhere it is reported as null.
HAS_PROC = os.path.exists("/proc/self/stat")


def worker_pids(aggregator: Aggregator) -> list[int]:
    pool = aggregator._workers
    return list(pool._processes) if pool is not None else []


def behind_pids(aggregator: Aggregator) -> list[int]:
    """The write-behind process (``write_behind = true``), once started."""
    pid = getattr(aggregator._write_behind, "pid", None)
    return [] if pid is None else [pid]


def cpu_s(pids: list[int]) -> dict[int, float]:
    """The CPU seconds each of the processes ``pids`` has used so far."""
    used = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cpu_since(pids: list[int], before: dict[int, float]) -> float:
    return sum(used - before.get(pid, 0.0) for pid, used in cpu_s(pids).items())


def peak_rss_of_mb(pids: list[int]) -> float | None:
    """The largest peak RSS (VmHWM) of the processes ``pids``; None without any."""
    peaks = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                peaks += [int(line.split()[1]) / 1024 for line in status
                          if line.startswith("VmHWM:")]
        except OSError:
            continue
    return round(max(peaks), 1) if peaks else None


def make_aggregator(directory: Path, name: str, stream: SyntheticStream,
                    settings: ClusteringSettings, write_behind: bool = False) -> Aggregator:
    sources = tuple(Source(name=s, url=str(directory / "unused.xml"), interval_s=3600)
                    for s in stream.sources)
    config = Config(path=str(directory / f"{name}.toml"),
                    database=str(directory / f"{name}.sqlite"), clustering=settings,
                    write_behind=write_behind,
                    sources=sources)
    return Aggregator(config)


def start_workers(aggregator: Aggregator) -> None:
    """Start the aggregator's worker processes and wait until they run, as a running daemon
    has them (an older checkout, run by ``turns.py --against``, returns a future each)."""
    started = aggregator.start_workers()
    if not isinstance(started, bool):
        wait(started)


def ingest(aggregator: Aggregator, articles, one_by_one: bool = False) -> None:
    """Store articles as feed passes would: grouped by source, each source's entries
    prepared (in a worker process) while earlier ones are written, and the sources already
    prepared when the writer gets to them written as one write group, as ``run_pass`` does.
    ``one_by_one``: one transaction per article, prepared by the writer (the naive way)."""
    by_source: dict[str, list] = {}
    for article in articles:
        by_source.setdefault(article.source, []).append(article.entry)
    if one_by_one:
        for source, entries in by_source.items():
            for entry in entries:
                aggregator.ingest_entries(source, 0, [entry], entry.published)
        return
    upcoming = iter(by_source.items())
    pending: deque = deque()

    def prepare_next() -> None:
        # Sources prepared ahead of the writer, as fetch threads would have them ready, and
        # as far ahead as a pass fetches (here every source's entries are known at once).
        while fetch_more(len(pending), FETCH_AHEAD * aggregator.config.max_concurrency,
                         sum(len(entries) for _source, entries, _prepared in pending),
                         0, 0.0, FETCH_AHEAD_ENTRIES, 1):
            following = next(upcoming, None)
            if following is None:
                return
            source, entries = following
            pending.append((source, entries, aggregator.prepare_async(
                source, tuple(entries), entries[-1].published)))

    def check(written) -> None:
        failed = [report for report in written.result() if report.outcome != "ok"]
        if failed:
            raise RuntimeError(f"{failed[0].source}: {failed[0].error}")

    # A pass's reports list no decisions; older checkouts (``turns.py --against``) keep them.
    no_decisions = {"keep_decisions": False} \
        if "keep_decisions" in inspect.signature(aggregator.submit_group).parameters else {}
    prepare_next()
    # Groups whose transaction may not have committed yet: checked once it has, as a pass
    # keeps its groups' reports to its end without asking for them earlier.
    submitted: deque = deque()
    while pending:
        group = [pending.popleft()]
        size = len(group[0][1])
        while pending and len(group) < WRITE_GROUP_SOURCES and size < WRITE_GROUP_ENTRIES \
                and pending[0][2].done():
            group.append(pending.popleft())
            size += len(group[-1][1])
        prepare_next()
        # Written behind this thread while it decides the next group, or here, in a
        # transaction that the groups share, as in a pass.
        submitted.append(aggregator.submit_group([(source, 0, entries, entries[-1].published,
                                                   prepared.result())
                                                  for source, entries, prepared in group],
                                                 **no_decisions))
        while submitted and submitted[0].settled:
            check(submitted.popleft())
    for written in submitted:
        check(written)


def restart(database: str, backend: str = "compact") -> dict:
    done = subprocess.run([sys.executable, "-c", RESTART_SCRIPT, database, backend],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def naive_comparison(sample_size: int, seed: int, write_behind: bool = False) -> dict:
    """The same sample through ours and through the naive approach, each on a fresh store."""
    from naive import naive_aggregator

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in ("ours", "naive"):
            stream = SyntheticStream(seed=seed + 1)
            sample = list(islice(stream, sample_size))
            if name == "ours":
                aggregator = make_aggregator(Path(directory), name, stream, ClusteringSettings(),
                                             write_behind)
                # With its worker processes started, as a running daemon has them (their
                # start-up, about a second, is a tenth of a 2,000-article sample).
                start_workers(aggregator)
            else:
                aggregator = naive_aggregator(make_aggregator, Path(directory), stream)
            started = time.perf_counter()
            for start in range(0, len(sample), INGEST_CHUNK):
                ingest(aggregator, sample[start:start + INGEST_CHUNK], one_by_one=name == "naive")
            results[name] = len(sample) / (time.perf_counter() - started)
            if name == "naive" and not aggregator.signer.updates:
                raise RuntimeError("the naive signer was never asked to sign: the pipeline "
                                   "signs shingles by another path than Signer.sign_shingles")
            aggregator.close()
    return results


def restarts_at_rest(database: str, runs: int) -> None:
    """Restart times on a store that nothing is writing, each in a fresh process."""
    results = []
    for run in range(runs):
        back = restart(database)
        results.append(back)
        print(f"restart {run + 1}: {back['seconds']:.2f} s for {back['articles']:,} articles "
              f"({back['articles'] / back['seconds']:,.0f}/s), RSS {back['rss_mb']:.0f} MB, "
              f"peak {back['peak_rss_mb']:.0f} MB", flush=True)
    median = sorted(r["seconds"] for r in results)[len(results) // 2]
    print(json.dumps({"articles": results[0]["articles"], "restart_s": round(median, 3),
                      "restart_articles_per_s": round(results[0]["articles"] / median),
                      "runs_s": [round(r["seconds"], 3) for r in results],
                      "terms_in_memory": results[0]["terms_in_memory"],
                      "term_numbers": results[0]["term_numbers"],
                      "rss_mb": max(r["rss_mb"] for r in results),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}))


def positive(text: str) -> int:
    """An argument of at least 1 (a rate over no articles divides by zero)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000",
                        help="comma-separated article counts to report at")
    parser.add_argument("--million", action="store_true", help="also run to 1,000,000")
    parser.add_argument("--naive-sample", type=positive, default=2000,
                        help="articles pushed through both ours and the naive approach")
    parser.add_argument("--window-articles", type=int,
                        default=ClusteringSettings().window_articles,
                        help="the window's article limit (0: none, time alone bounds it)")
    parser.add_argument("--chunk", type=int, default=INGEST_CHUNK,
                        help="articles generated, then ingested, at a time")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write-behind", action="store_true",
                        help="write each write group in a process of its own (write_behind)")
    parser.add_argument("--keep", metavar="DIRECTORY",
                        help="write the stream's store here (stream.sqlite) and keep it")
    parser.add_argument("--restart-only", metavar="DATABASE",
                        help="only time restarts (fresh processes) on a store made with --keep")
    parser.add_argument("--runs", type=int, default=5, help="restarts with --restart-only")
    parser.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_only:
        print(json.dumps(naive_comparison(args.naive_sample, args.seed, args.write_behind)))
        return
    if args.restart_only:
        restarts_at_rest(args.restart_only, args.runs)
        return
    sizes = sorted({int(s) for s in args.sizes.split(",")} | ({1_000_000} if args.million
                                                             else set()))

    print(f"naive comparison on {args.naive_sample} articles ...", flush=True)
    # In a process of its own, so that its memory does not count in this one's peak.
    done = subprocess.run([sys.executable, __file__, "--naive-only", "--naive-sample",
                           str(args.naive_sample), "--seed", str(args.seed)]
                          + (["--write-behind"] if args.write_behind else []),
                          capture_output=True, text=True, check=True)
    comparison = json.loads(done.stdout.strip().splitlines()[-1])
    speedup = comparison["ours"] / comparison["naive"]
    print(f"  ours {comparison['ours']:.0f} articles/s, naive {comparison['naive']:.0f} "
          f"articles/s: {speedup:.1f}x")

    stream = SyntheticStream(seed=args.seed)
    settings = ClusteringSettings(window_articles=args.window_articles)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or scratch
        Path(directory).mkdir(parents=True, exist_ok=True)
        aggregator = make_aggregator(Path(directory), "stream", stream, settings,
                                     args.write_behind)
        done, busy, since_report = 0, 0.0, 0
        articles = iter(stream)
        for size in sizes:
            stretch_busy, stretch_done, stretch_cpu, stretch_worker_cpu = 0.0, 0, 0.0, 0.0
            stretch_behind_cpu = 0.0
            while done < size:
                batch = list(islice(articles, min(args.chunk, size - done)))
                workers_before = cpu_s(worker_pids(aggregator))
                behind_before = cpu_s(behind_pids(aggregator))
                cpu_before = time.process_time()
                started = time.perf_counter()
                ingest(aggregator, batch)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_before
                worker_cpu = cpu_since(worker_pids(aggregator), workers_before)
                behind_cpu = cpu_since(behind_pids(aggregator), behind_before)
                busy += elapsed
                done += len(batch)
                # The rate reported is that of the last tenth of the way to this size, so
                # that it is measured with the window as full as it gets.
                if done > size - max(args.chunk, (size - since_report) // 10):
                    stretch_busy += elapsed
                    stretch_done += len(batch)
                    stretch_cpu += cpu
                    stretch_worker_cpu += worker_cpu
                    stretch_behind_cpu += behind_cpu
            since_report = size
            clusterer = aggregator.clusterer
            window = clusterer.window_size
            index_bytes = clusterer.index_bytes()
            terms = clusterer.vocabulary.seen
            terms_in_memory = len(clusterer.vocabulary.ids)
            term_numbers = len(clusterer.vocabulary)
            rss_now = current_rss_mb()
            worker_peak = peak_rss_of_mb(worker_pids(aggregator))
            behind_peak = peak_rss_of_mb(behind_pids(aggregator))
            del clusterer
            aggregator.close()
            aggregator = None  # gone before its successor is built, as in a real restart
            back = restart(str(Path(directory) / "stream.sqlite"))
            aggregator = make_aggregator(Path(directory), "stream", stream, settings,
                                         args.write_behind)
            row = {
                "articles": done,
                "articles_per_s": round(stretch_done / stretch_busy, 1),
                "mean_articles_per_s": round(done / busy, 1),
                # CPU an article in the same stretch: the writer's process (all its threads)
                # and the worker processes that prepare the entries.
                "cpu_ms_per_article": round(stretch_cpu * 1000 / stretch_done, 3),
                "worker_cpu_ms_per_article": round(stretch_worker_cpu * 1000 / stretch_done, 3)
                if HAS_PROC else None,
                # The write-behind process's (``write_behind = true``).
                "behind_cpu_ms_per_article": round(stretch_behind_cpu * 1000 / stretch_done, 3)
                if HAS_PROC and args.write_behind else None,
                "window_articles": window,
                "peak_rss_mb": round(peak_rss_mb(), 1),
                # The other processes' own peaks: the largest worker's, the write-behind's.
                "worker_peak_rss_mb": worker_peak,
                "behind_peak_rss_mb": behind_peak,
                "rss_mb": round(rss_now, 1),
                "index_bytes_per_article": round(index_bytes / max(1, window)),
                "terms": terms,
                "terms_in_memory": terms_in_memory,
                "term_numbers": term_numbers,
                "restart_s": round(back["seconds"], 3),
                "restart_articles_per_s": round(back["articles"] / back["seconds"]),
            }
            rows.append(row)
            workers_cpu = ("unknown" if row["worker_cpu_ms_per_article"] is None
                           else f"{row['worker_cpu_ms_per_article']:.2f}")
            if row["behind_cpu_ms_per_article"] is not None:
                workers_cpu += (f", {row['behind_cpu_ms_per_article']:.2f} writing behind "
                                f"(peak RSS {row['behind_peak_rss_mb']} MB)")
            print(f"{done:>9,} articles: {row['articles_per_s']:,.0f}/s "
                  f"(mean {row['mean_articles_per_s']:,.0f}/s; CPU {row['cpu_ms_per_article']:.2f} "
                  f"ms an article in the writer's process, {workers_cpu} in workers), "
                  f"window {window:,}, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB (now {row['rss_mb']:.0f} MB), "
                  f"index {row['index_bytes_per_article']} B/article, "
                  f"restart {row['restart_s']:.2f} s "
                  f"({row['restart_articles_per_s']:,}/s)", flush=True)
        aggregator.close()

    last = rows[-1]
    print(json.dumps({
        **last,
        "naive_articles_per_s": round(comparison["naive"], 1),
        "ours_sample_articles_per_s": round(comparison["ours"], 1),
        "speedup_vs_naive": round(speedup, 1),
        "window_limit": settings.window_articles, "write_behind": args.write_behind,
        "sizes": rows,
    }))


if __name__ == "__main__":
    main()
