"""Where the writer's time goes: the farm's feeds stored and clustered without any HTTP.

Every feed of a loopback farm (``farm.py``, the same generator as the fetching benchmark) is
parsed and prepared first; then the writer stores the feeds as a pass does when they are
fetched ahead of it (32 feeds to a transaction, a savepoint each) while each of its steps is
timed.  The figures are milliseconds per article, averaged over the whole run, so they grow
with the window as a real pass does.

    python benchmarks/writer.py --feeds 1000          # 20,000 articles
    python benchmarks/writer.py --feeds 300 --off     # with clustering switched off
    python benchmarks/writer.py --stream 62000 --measure-last 12000

With ``--stream N``, the articles are the first N of the ingest benchmark's synthetic stream
(``stream.py``, realistic lengths and stories), written as ``ingest.py`` writes them
(prepared in a worker process while earlier ones are written); only the last
``--measure-last`` (rounded up to whole chunks of 4,000) are timed, so the figures are
those of a full window, not an average over its growth.

Steps: ``propose`` (near-copy and candidate search, verification), ``commit`` (index
insertion, canonical election), ``fingerprint`` (statistics-dependent weights, salient
terms and their signature), ``stage article`` (the article's rows, placed in its story,
its fingerprint and identity keys, staged), ``stage story outcome`` (the other members'
relations when the canonical changed, the story row), ``term counts`` (the term
statistics' rows, once per write group), ``write staged rows`` (every staged row in a
dozen statements, in the writer's transaction), ``settling write groups`` (where a pass
ends or a read needs the store settled: the commit of the transaction that groups share,
if one is open; a transaction that fills commits within the group that fills it); with
clustering off, ``insert_solo_articles`` (a batch of articles, each its own story, without
fingerprints).
``--detail`` times the parts of those steps as well (each part is also in its step's
figure), and what happens around them: template lines, identity keys, eviction.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402
from ingest import INGEST_CHUNK, ingest, make_aggregator, start_workers  # noqa: E402
from stream import SyntheticStream  # noqa: E402
from timing import timed_calls  # noqa: E402

import aggregator.fingerprint as fingerprint  # noqa: E402
import aggregator.pipeline as pipeline  # noqa: E402
from aggregator.cluster import ArticleRows, Clusterer  # noqa: E402
from aggregator.config import ClusteringSettings, load_config  # noqa: E402
from aggregator.fingerprint import TermStatistics  # noqa: E402
from aggregator.index import BandIndex  # noqa: E402
from aggregator.parse import parse_feed  # noqa: E402
from aggregator.store import (  # noqa: E402
    StagedReads,
    StagedWrites,
    Store,
    utcnow,
)

SPENT: dict[str, float] = {}


TARGETS = [(Clusterer, "propose", "propose"), (Clusterer, "commit", "commit"),
           (pipeline, "fingerprint_of", "fingerprint"),
           (StagedWrites, "insert_article", "stage article"),
           (StagedWrites, "apply_story_outcome", "stage story outcome"),
           (pipeline.Aggregator, "_take_tallies", "term counts"),
           (StagedWrites, "write", "write staged rows"),
           (pipeline.Aggregator, "_settle_in_flight", "settling write groups"),
           (Store, "insert_solo_articles", "insert_solo_articles")]

# With --detail: the parts of the steps above, and the rest of a transaction's work.
DETAIL_TARGETS = [
    (Clusterer, "near_copies", "propose: near_copies"),
    (Clusterer, "candidate_stories", "propose: candidate_stories"),
    (BandIndex, "query", "propose: band index searches"),
    (Clusterer, "closest_story_rows", "propose: ranking into the closest stories"),
    (Clusterer, "_story_scores", "propose: candidate stories scored (compiled)"),
    (Clusterer, "_term_products", "cosines with the canonical (commit)"),
    (ArticleRows, "put_one", "commit: the article's row"),
    (Clusterer, "_index_rows", "commit: index insertion"),
    (Clusterer, "_elect", "commit: canonical election"),
    (pipeline.StoreFingerprints, "shingle_signatures", "stored shingle signatures read"),
    (TermStatistics, "ids_of", "fingerprint: term numbers"),
    (TermStatistics, "learn_priors", "fingerprint: priors"),
    (fingerprint, "term_weights", "fingerprint: weights"),
    (fingerprint, "salient_terms", "fingerprint: salient terms"),
    (pipeline, "decision_record", "decision record"),
    (pipeline.Aggregator, "_strip_template_lines", "template lines"),
    (StagedReads, "known_keys", "identity keys look-up"),
    (pipeline.Aggregator, "_evict", "eviction"),
    (pipeline.Aggregator, "_forget_unseen_terms", "terms leaving memory"),
]


def write_farm(args: argparse.Namespace, directory: Path) -> tuple[int, float, float]:
    """The farm's feeds, parsed and prepared first, then written with each step timed."""
    farm = Farm(args.feeds, args.entries, seed=5)
    bodies, urls = list(farm.bodies.values()), farm.urls()
    farm.stop()
    config_path = directory / "farm.toml"
    write_farm_config(config_path, urls, str(directory / "farm.sqlite"))
    config = load_config(config_path)
    config = replace(config, clustering=replace(config.clustering, enabled=not args.off))
    aggregator = pipeline.Aggregator(config)
    now = utcnow()
    feeds = [parse_feed(body, source.name, "application/rss+xml").entries
             for body, source in zip(bodies, config.sources, strict=True)]
    prepared = [pipeline.prepare_entries(entries, source.name, now,
                                         aggregator._prepare_settings())
                for entries, source in zip(feeds, config.sources, strict=True)]
    with timed_calls(TARGETS + (DETAIL_TARGETS if args.detail else []), SPENT):
        started, cpu = time.perf_counter(), time.process_time()
        # Written as the daemon writes sources fetched ahead: several in one transaction.
        batches = [(source.name, source.priority, entries, now, ready)
                   for entries, ready, source in zip(feeds, prepared, config.sources,
                                                     strict=True)]
        written = [aggregator.submit_group(batches[first:first + pipeline.WRITE_GROUP_SOURCES])
                   for first in range(0, len(batches), pipeline.WRITE_GROUP_SOURCES)]
        failed = [report for group in written for report in group.result()
                  if report.outcome != "ok"]
        if failed:
            raise RuntimeError(f"{failed[0].source}: {failed[0].error}")
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    aggregator.close()
    return sum(len(entries) for entries in feeds), wall, cpu


def write_stream(args: argparse.Namespace, directory: Path) -> tuple[int, float, float]:
    """The synthetic stream as ``ingest.py`` writes it; only the last articles timed."""
    stream = SyntheticStream(seed=3)
    settings = replace(ClusteringSettings(), enabled=not args.off)
    aggregator = make_aggregator(directory, "stream", stream, settings)
    start_workers(aggregator)
    articles = iter(stream)
    # Whole chunks are timed: a source with little text in a chunk is prepared by the
    # writer itself (``WORKER_MIN_BYTES``), which a partial chunk would time.
    timed_chunks = max(1, -(-args.measure_last // INGEST_CHUNK))
    unmeasured = max(0, args.stream - timed_chunks * INGEST_CHUNK)
    streamed = 0
    while streamed < unmeasured:
        chunk = list(islice(articles, min(INGEST_CHUNK, unmeasured - streamed)))
        ingest(aggregator, chunk)
        streamed += len(chunk)
    measured, wall, cpu = 0, 0.0, 0.0
    with timed_calls(TARGETS + (DETAIL_TARGETS if args.detail else []), SPENT):
        for _chunk in range(timed_chunks):
            # Generated before the clock starts: the stream costs a few tenths of a
            # millisecond an article itself.
            chunk = list(islice(articles, INGEST_CHUNK))
            started, cpu_started = time.perf_counter(), time.process_time()
            ingest(aggregator, chunk)
            wall += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            measured += len(chunk)
    print(f"the last {measured:,} of {streamed + measured:,} stream articles timed; "
          f"window {aggregator.clusterer.window_size:,} articles")
    aggregator.close()
    return measured, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--off", action="store_true", help="clustering switched off")
    parser.add_argument("--stream", type=int, default=0, metavar="N",
                        help="the first N articles of the synthetic stream instead of the farm")
    parser.add_argument("--measure-last", type=int, default=10_000, metavar="M",
                        help="with --stream: time only the last M articles")
    parser.add_argument("--detail", action="store_true",
                        help="time the parts of each step too (see above)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        write = write_stream if args.stream else write_farm
        articles, wall, cpu = write(args, Path(directory))
    stages = {label: round(spent / articles * 1000, 3)
              for label, spent in sorted(SPENT.items(), key=lambda item: -item[1])}
    print(f"{articles} articles, clustering {'off' if args.off else 'on'}: "
          f"{wall / articles * 1000:.2f} ms per article ({cpu / articles * 1000:.2f} ms CPU)")
    for label, spent in stages.items():
        print(f"  {label:36s} {spent:.3f} ms")
    print(json.dumps({"articles": articles, "clustering": not args.off,
                      "source": f"stream {args.stream}" if args.stream else
                      f"farm {args.feeds}x{args.entries}",
                      "ms_per_article": round(wall / articles * 1000, 3),
                      "cpu_ms_per_article": round(cpu / articles * 1000, 3),
                      "stages_ms_per_article": stages}))


if __name__ == "__main__":
    main()
