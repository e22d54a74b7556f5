"""Our online clustering against an offline TF-IDF greedy centroid clusterer, on labelled files.

The baseline sees the whole file in advance: scikit-learn's ``TfidfVectorizer`` (English stop
words, sublinear TF) is fitted on every article's title and text first, so its IDF is exact
from the first article on.  It then takes the articles one by one and puts each into the
cluster whose centroid (the sum of its members' vectors) has the highest cosine with it, or
into a new cluster when no cosine reaches the threshold.  Every threshold given is tried and
the best B-cubed F1 reported, so the baseline gets a choice that the online clusterer, with one
set of defaults for every file, does not.  Both take the articles in the order that
``aggregator eval`` uses (publication, undated last), unless ``--order file``.

    pip install -e '.[bench]'     # scikit-learn
    python benchmarks/offline_baseline.py ../shared/eval/*.jsonl

The scores are ``aggregator eval``'s (``score_clustering``); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from aggregator.evaluate import (
    LabelledArticle,
    evaluate_file,
    read_labelled,
    score_clustering,
    stream_order,
)
from aggregator.store import utcnow


def greedy_centroid(gram: np.ndarray, threshold: float) -> list[int]:
    """Cluster numbers, in order, of a greedy centroid clustering over the vectors whose
    inner products are ``gram``.

    A centroid's inner product with an article is the sum of its members' products with it,
    and its squared norm grows by twice that sum plus the article's own, so neither centroid
    vectors nor their norms are ever rebuilt.
    """
    size = gram.shape[0]
    clusters = np.zeros(size, dtype=np.int64)
    squared_norms: list[float] = []
    for position in range(size):
        if squared_norms:
            products = np.bincount(clusters[:position], weights=gram[:position, position],
                                   minlength=len(squared_norms))
            cosines = products / np.sqrt(np.asarray(squared_norms))
            best = int(np.argmax(cosines))
            if cosines[best] >= threshold:
                clusters[position] = best
                squared_norms[best] += 2.0 * products[best] + gram[position, position]
                continue
        clusters[position] = len(squared_norms)
        squared_norms.append(float(gram[position, position]))
    return clusters.tolist()


def baseline_scores(articles: list[LabelledArticle], thresholds: list[float]) -> list[dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(
        [f"{article.title}. {article.text}" for article in articles])
    gram = (vectors @ vectors.T).toarray()
    gold = {article.id: article.cluster for article in articles}
    rows = []
    for threshold in thresholds:
        clusters = greedy_centroid(gram, threshold)
        found = {article.id: cluster for article, cluster in zip(articles, clusters, strict=True)}
        rows.append({"threshold": threshold, "stories_found": len(set(clusters)),
                     **score_clustering(gold, found).as_dict()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="labelled JSONL files (aggregator eval's)")
    parser.add_argument("--thresholds", default="0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.5",
                        help="cosine thresholds tried for the baseline (comma-separated)")
    parser.add_argument("--order", choices=("published", "file"), default="published",
                        help="the order the baseline takes the articles in")
    args = parser.parse_args()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("the baseline needs scikit-learn: pip install -e '.[bench]'")
    thresholds = [float(value) for value in args.thresholds.split(",")]
    summary = {}
    for path in args.files:
        articles = read_labelled(path)
        if args.order == "published":
            articles = stream_order(articles, utcnow())
        started = time.perf_counter()
        rows = baseline_scores(articles, thresholds)
        baseline_s = time.perf_counter() - started
        print(f"{path}: {len(articles)} articles")
        for row in rows:
            print(f"  baseline at {row['threshold']:.2f}: B-cubed P {row['bcubed_precision']:.4f}"
                  f"  R {row['bcubed_recall']:.4f}  F1 {row['bcubed_f1']:.4f}"
                  f"  ({row['stories_found']} stories)")
        best = max(rows, key=lambda row: row["bcubed_f1"])
        ours = evaluate_file(path)
        print(f"  ours (online, defaults): B-cubed P {ours.scores.bcubed_precision:.4f}"
              f"  R {ours.scores.bcubed_recall:.4f}  F1 {ours.scores.bcubed_f1:.4f}"
              f"  ({ours.stories_found} stories, {ours.seconds:.1f} s;"
              f" the baseline's {len(rows)} thresholds took {baseline_s:.1f} s)")
        summary[path] = {"articles": len(articles), "baseline_threshold": best["threshold"],
                         "baseline_bcubed_f1": best["bcubed_f1"],
                         "baseline_bcubed_precision": best["bcubed_precision"],
                         "ours_bcubed_f1": round(ours.scores.bcubed_f1, 4),
                         "ours_bcubed_precision": round(ours.scores.bcubed_precision, 4),
                         "f1_gain": round(ours.scores.bcubed_f1 - best["bcubed_f1"], 4)}
    print(json.dumps({"order": args.order, "files": summary}))


if __name__ == "__main__":
    main()
