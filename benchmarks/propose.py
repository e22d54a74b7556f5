"""Propose: the clusterer's decision for new articles, timed against another checkout's
code on one and the same window, in one process.

This machine's speed drifts by a quarter from one run to the next, more than most changes to
the writer are worth; two runs, one per version, cannot tell them apart.  Here the window is
built once (the first ``--window`` articles of the synthetic stream, stored as
``ingest.py`` stores them), the next ``--probe`` articles are prepared and fingerprinted,
and then ``Clusterer.propose`` is timed over them in rounds that alternate between this
tree's ``Clusterer`` methods and those of ``--against``'s ``aggregator/cluster.py``, so
that both see the same state, the same articles and the same machine.  Nothing is
committed: the window stays as it was built.  The decisions of the two must be equal, as
the store keeps them (``pipeline.decision_record``: among them the five best candidates).

    python benchmarks/propose.py --against /path/to/other/checkout
    python benchmarks/propose.py --against ../base --window 100000 --probe 2000 --rounds 10
    python benchmarks/propose.py --against-numpy

The other checkout's methods run on this tree's window, so they must read it as it is (the
same attributes): the tool is for changes to how the clusterer decides, not to what it holds.
They also run on this tree's band index.  Where ``--against`` was built with its compiled
kernels (``pip install -e`` there, or the ``_kernels`` module of its wheel copied into its
``aggregator/``), its methods and the index's look-ups call them: so a change to a kernel
is timed too; else both versions call this tree's.
``--against-numpy`` times this tree with its compiled kernels (``aggregator/native.py``)
against this tree without them; the band indexes' table of their newest keys
(``index.RecentTable``) was built with the kernels and keeps them.  Without either only this
tree is timed.

``--step fingerprint`` times the writer's step before the decision instead: each probe's
fingerprint under the window's statistics (``fingerprint_of``: term numbers, priors, TF-IDF
weights, salient terms and their signature) and its vector (``Clusterer.vector``); the
results of the two versions must be equal to the last bit.  It takes ``--against-numpy``
or nothing.

    python benchmarks/propose.py --against-numpy --step fingerprint

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import INGEST_CHUNK, ingest, make_aggregator, start_workers  # noqa: E402
from stream import SyntheticStream  # noqa: E402

from aggregator import cluster, fingerprint, index  # noqa: E402
from aggregator.cluster import ClusterArticle, Clusterer  # noqa: E402
from aggregator.config import ClusteringSettings  # noqa: E402
from aggregator.pipeline import decision_record, prepare_entries  # noqa: E402


def methods_of(cls: type) -> dict[str, object]:
    return {name: value for name, value in vars(cls).items() if callable(value)}


def other_kernels(checkout: Path):
    """The compiled kernels built in another checkout (``pip install -e`` there), or None
    where it has none: loaded under a name of their own, beside this tree's."""
    built = sorted((checkout / "aggregator").glob("_kernels.*.so"))
    if not built:
        return None
    # The module's name must end in ``_kernels``: its init function is named after it.
    spec = importlib.util.spec_from_file_location("_other_checkout._kernels", built[0])
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def other_clusterer(checkout: Path, compiled) -> type:
    """The ``Clusterer`` class of another checkout, loaded beside this tree's package (its
    relative imports resolve to this tree's modules), calling the kernels ``compiled``."""
    name = "aggregator._other_cluster"
    spec = importlib.util.spec_from_file_location(name, checkout / "aggregator" / "cluster.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{checkout}: no aggregator/cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    module.kernels = compiled
    return module.Clusterer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout's root")
    parser.add_argument("--against-numpy", action="store_true",
                        help="against this tree without its compiled kernels")
    parser.add_argument("--window", type=int, default=30_000,
                        help="stream articles stored before the timing (default 30,000)")
    parser.add_argument("--probe", type=int, default=1_500,
                        help="the articles after them, proposed in each round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per version")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--step", choices=("propose", "fingerprint"), default="propose",
                        help="the step timed (default propose)")
    args = parser.parse_args()

    if args.against and args.against_numpy:
        parser.error("--against and --against-numpy: one of them")
    if args.against and args.step == "fingerprint":
        parser.error("--step fingerprint: with --against-numpy or alone")
    kernels = cluster.kernels
    if args.against_numpy and kernels is None:
        parser.error("--against-numpy: this tree was built without its compiled kernels")
    # Each version: the clusterer's methods, and the kernels that they and the index use.
    versions = {"this": (methods_of(Clusterer), kernels)}
    if args.against:
        compiled = other_kernels(args.against) if kernels is not None else None
        if compiled is None:
            compiled = kernels
        else:
            print(f"{args.against}: its own compiled kernels", flush=True)
        versions["against"] = (methods_of(other_clusterer(args.against, compiled)), compiled)
    elif args.against_numpy:
        versions["against"] = (methods_of(Clusterer), None)
    with tempfile.TemporaryDirectory() as directory:
        stream = SyntheticStream(seed=args.seed)
        aggregator = make_aggregator(Path(directory), "stream", stream, ClusteringSettings())
        start_workers(aggregator)
        articles = iter(stream)
        stored = 0
        while stored < args.window:
            chunk = list(islice(articles, min(INGEST_CHUNK, args.window - stored)))
            ingest(aggregator, chunk)
            stored += len(chunk)
        clusterer, settings = aggregator.clusterer, aggregator.settings
        prepare = aggregator._prepare_settings()

        def fingerprint_of(features):
            return fingerprint.fingerprint_of(features, clusterer.stats, aggregator.signer,
                                              settings.salient_terms)

        probes = []
        for article in islice(articles, args.probe):
            prepared = prepare_entries((article.entry,), article.source,
                                       article.entry.published, prepare)
            normalized, features = prepared.articles[0], prepared.features[0]
            probes.append((article.source, normalized, features, fingerprint_of(features)))

        def candidate(source, normalized, article_print) -> ClusterArticle:
            return ClusterArticle(None, source, 0, normalized.published.timestamp(),
                                  normalized.author is not None, article_print,
                                  dated=normalized.has_published)

        def propose_all() -> list:
            return [clusterer.propose(candidate(source, normalized, article_print))
                    for source, normalized, _features, article_print in probes]

        def fingerprint_all() -> list:
            # Nothing is committed, so the statistics are the same in every round; the
            # first round numbered and learned the probes' new terms.
            done = []
            for source, normalized, features, _print in probes:
                article_print = fingerprint_of(features)
                ids, weights = clusterer.vector(candidate(source, normalized, article_print))
                done.append((article_print.salient, article_print.term_ids.tobytes(),
                             article_print.weights.tobytes(),
                             article_print.weighted_ids.tobytes(),
                             article_print.salient_signature.tobytes(), ids, weights))
            return done

        step = propose_all if args.step == "propose" else fingerprint_all

        def use(name: str) -> None:
            methods, compiled = versions[name]
            for attribute, value in methods.items():
                setattr(Clusterer, attribute, value)
            cluster.kernels = index.kernels = fingerprint.kernels = compiled

        seconds: dict[str, list[float]] = {name: [] for name in versions}
        decisions: dict[str, list] = {}
        try:
            # A first round each, untimed: what a version works out once is not timed.
            for name in versions:
                use(name)
                results = step()
                decisions[name] = (list(map(decision_record, results))
                                   if args.step == "propose" else results)
            for round_number in range(args.rounds):
                order = list(versions) if round_number % 2 == 0 else list(reversed(versions))
                for name in order:
                    use(name)
                    started = time.perf_counter()
                    step()
                    seconds[name].append(time.perf_counter() - started)
        finally:
            use("this")
        window = clusterer.window_size
        aggregator.close()

    figures = {}
    for name, spent in seconds.items():
        spent = sorted(spent)
        figures[name] = {"min_ms": round(spent[0] / args.probe * 1000, 4),
                         "median_ms": round(spent[len(spent) // 2] / args.probe * 1000, 4)}
        print(f"{name:8s} {figures[name]['median_ms']:.4f} ms an article (median of "
              f"{len(spent)} rounds; fastest {figures[name]['min_ms']:.4f})")
    result = {"step": args.step, "window_articles": window, "probe": args.probe,
              "rounds": args.rounds, "ms_per_article": figures["this"]}
    if "against" in figures:
        same = decisions["this"] == decisions["against"]
        ratio = figures["against"]["median_ms"] / figures["this"]["median_ms"]
        print(f"against / this: {ratio:.3f}; the same results: {same}")
        result.update(against_ms_per_article=figures["against"], speedup=round(ratio, 3),
                      same_decisions=same)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
