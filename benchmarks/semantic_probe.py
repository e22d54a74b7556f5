"""What a small sentence embedding adds to TF-IDF for telling stories apart, on labelled files.

The optional semantic verifier of the clustering issue, probed before it is built: the
offline greedy centroid clusterer of ``offline_baseline.py`` (the whole file's TF-IDF in
advance, the best of several thresholds) runs on a mix of two similarities, the TF-IDF
cosine and the cosine of WordLlama embeddings (``wordllama``, whose 256-dimension model
ships inside the PyPI package: numpy and ``tokenizers``, no PyTorch, nothing downloaded).
A share of 1.0 is TF-IDF alone, 0.0 the embedding alone.  If no mix beats TF-IDF alone,
the embedding would not help our verifier either, which works from the same TF-IDF cosine.

    pip install -e '.[bench]' wordllama
    python benchmarks/semantic_probe.py ../shared/eval/*.jsonl

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from offline_baseline import greedy_centroid

from aggregator.evaluate import read_labelled, score_clustering, stream_order
from aggregator.store import utcnow

SHARES = (1.0, 0.75, 0.5, 0.25, 0.0)
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def wordllama_model():
    """WordLlama's bundled model, loaded from the package's own files: ``WordLlama.load``
    looks for the tokenizer in a folder the wheel does not have, then tries the network."""
    import wordllama
    from safetensors import safe_open
    from tokenizers import Tokenizer
    from wordllama.inference import WordLlamaInference

    package = Path(wordllama.__file__).parent
    with safe_open(str(package / "weights" / "l2_supercat_256.safetensors"),
                   framework="np", device="cpu") as weights:
        embedding = weights.get_tensor("embedding.weight")
    tokenizer = Tokenizer.from_file(
        str(package / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    return WordLlamaInference(embedding, tokenizer)


def best_threshold(gram: np.ndarray, gold: dict[str, str], ids: list[str]) -> dict:
    best: dict = {}
    for threshold in THRESHOLDS:
        clusters = greedy_centroid(gram, float(threshold))
        scores = score_clustering(gold, dict(zip(ids, clusters, strict=True))).as_dict()
        if not best or scores["bcubed_f1"] > best["bcubed_f1"]:
            best = {"threshold": float(threshold), **scores}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="labelled JSONL files (aggregator eval's)")
    args = parser.parse_args()
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        model = wordllama_model()
    except ImportError as exc:
        sys.exit(f"the probe needs scikit-learn and wordllama ({exc}): "
                 "pip install -e '.[bench]' wordllama")
    summary = {}
    for path in args.files:
        articles = stream_order(read_labelled(path), utcnow())
        texts = [f"{article.title}. {article.text}" for article in articles]
        vectors = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform(texts)
        tf_idf = (vectors @ vectors.T).toarray()
        started = time.perf_counter()
        embeddings = model.embed(texts, norm=True)
        embed_ms = (time.perf_counter() - started) / len(texts) * 1e3
        semantic = embeddings @ embeddings.T
        gold = {article.id: article.cluster for article in articles}
        ids = [article.id for article in articles]
        print(f"{path}: {len(articles)} articles, embedded in {embed_ms:.2f} ms an article")
        rows = []
        for share in SHARES:
            best = best_threshold(share * tf_idf + (1 - share) * semantic, gold, ids)
            rows.append({"tf_idf_share": share, **best})
            print(f"  TF-IDF share {share:.2f}: best threshold {best['threshold']:.2f},"
                  f" B-cubed P {best['bcubed_precision']:.4f} R {best['bcubed_recall']:.4f}"
                  f" F1 {best['bcubed_f1']:.4f}", flush=True)
        summary[path] = {"articles": len(articles), "embed_ms_per_article": round(embed_ms, 3),
                         "mixes": [{key: row[key] for key in ("tf_idf_share", "threshold",
                                                               "bcubed_precision",
                                                               "bcubed_f1")}
                                   for row in rows]}
    print(json.dumps({"files": summary}))


if __name__ == "__main__":
    main()
