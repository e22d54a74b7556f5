"""Prepare: what a worker process does to fetched entries before the writer sees them,
timed with the compiled kernels and without them, in one process.

Each source's entries of the synthetic stream (``stream.py``, the first ``--articles``) go
through ``prepare.prepare_entries`` as a worker runs it: normalised, tokenised, their
terms counted, the priors of terms new to the worker looked up, their shingles hashed and
signed.  Rounds alternate between the kernels (``aggregator/native.py``; the shingle
hashes, ``fingerprint.shingle_hashes``) and the Python code that runs without them, after
one round of each that is not counted; each round starts with no prior given yet, as a new
worker does, and with the caches that a running worker has warm.  The two must give the
same signatures.

Then the tokens and term counts of the same articles' titles and texts, in alternating
rounds: as ``fingerprint.text_features`` makes them (``tokenize``: ASCII text split on the
characters no token holds; ``terms_of_tokens``: each distinct token's term looked up once,
the counts made by ``Counter``) and by their definitions (``tokenize_regex``, the loops of
``first_surface_words`` and ``_content_terms``).  The two must give the same tokens, first
words, counts and title terms.

    python benchmarks/prepare.py
    python benchmarks/prepare.py --articles 8000 --rounds 10

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import SyntheticStream  # noqa: E402

from aggregator import fingerprint  # noqa: E402
from aggregator.config import ClusteringSettings  # noqa: E402
from aggregator.normalize import normalize_entry  # noqa: E402
from aggregator.pipeline import PrepareSettings, prepare_entries  # noqa: E402


def terms_as_made(pairs: list[tuple[str, str]], title_weight: float) -> list:
    made = []
    for title, text in pairs:
        title_tokens, text_tokens = fingerprint.tokenize(title), fingerprint.tokenize(text)
        made.append((title_tokens + text_tokens, *fingerprint.terms_of_tokens(
            title_tokens, text_tokens, title_weight)))
    return made


def terms_by_definition(pairs: list[tuple[str, str]], title_weight: float) -> list:
    made = []
    for title, text in pairs:
        title_tokens = fingerprint.tokenize_regex(title)
        text_tokens = fingerprint.tokenize_regex(text)
        first: dict[str, str] = {}
        for token in title_tokens + text_tokens:
            term = fingerprint.term_of(token)
            if term is not None and term not in first:
                first[term] = token
        made.append((title_tokens + text_tokens, first, fingerprint._content_terms(
            title_tokens, text_tokens, title_weight, 0.0),
            frozenset(t for t in map(fingerprint.term_of, title_tokens) if t is not None)))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per version")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    compiled = fingerprint.kernels
    if compiled is None:
        sys.exit("the compiled kernels are not built here: nothing to compare")

    by_source: dict[str, list] = {}
    for article in islice(SyntheticStream(seed=args.seed), args.articles):
        by_source.setdefault(article.source, []).append(article.entry)
    batches = [(source, tuple(entries), entries[-1].published)
               for source, entries in by_source.items()]
    clustering = ClusteringSettings()
    settings = PrepareSettings(clustering.num_perm, clustering.shingle_size,
                               clustering.title_weight, clustering.phrase_weight)
    fingerprint.give_priors_ahead()  # as a worker process does

    def prepare_all() -> list:
        fingerprint._priors_given.clear()
        return [prepare_entries(entries, source, fetched, settings)
                for source, entries, fetched in batches]

    versions = {"kernels": compiled, "python": None}
    times: dict[str, list[float]] = {name: [] for name in versions}
    signatures: dict[str, list] = {}
    for number in range(args.rounds + 1):
        for name, kernels in (versions.items() if number % 2 == 0
                              else reversed(versions.items())):
            fingerprint.kernels = kernels
            started = time.perf_counter()
            prepared = prepare_all()
            elapsed = time.perf_counter() - started
            if number == 0:  # the caches warmed, the results kept
                signatures[name] = [feature.shingle_signature.tobytes()
                                    for batch in prepared for feature in batch.features]
            else:
                times[name].append(elapsed * 1000 / args.articles)
    fingerprint.kernels = compiled
    if signatures["kernels"] != signatures["python"]:
        sys.exit("the kernels' signatures differ from the Python ones")

    pairs = [(article.title, article.text)
             for source, entries, fetched in batches
             for article in (normalize_entry(entry, source, fetched) for entry in entries)]
    ways = {"as made": terms_as_made, "by definition": terms_by_definition}
    term_times: dict[str, list[float]] = {name: [] for name in ways}
    results = {}
    for number in range(args.rounds + 1):
        for name, way in (ways.items() if number % 2 == 0 else reversed(ways.items())):
            started = time.perf_counter()
            results[name] = way(pairs, clustering.title_weight)
            if number:
                term_times[name].append((time.perf_counter() - started) * 1e6 / len(pairs))
    for made, defined in zip(results["as made"], results["by definition"], strict=True):
        # The counts to the bit, in the same order; the first words as a mapping.
        if made[0] != defined[0] or made[1] != defined[1] \
                or list(made[2].items()) != list(defined[2].items()) or made[3] != defined[3]:
            sys.exit("the tokens or term counts differ from their definitions")

    for name, values in times.items():
        print(f"{name:8} {statistics.median(values):.3f} ms an article (median of "
              f"{len(values)} rounds; {', '.join(f'{v:.3f}' for v in values)})")
    kernels_ms = statistics.median(times["kernels"])
    python_ms = statistics.median(times["python"])
    print(f"with the kernels: {python_ms / kernels_ms:.2f}x "
          f"(the CPU's SHA instructions used: {compiled.SHA_INSTRUCTIONS})")
    made_us = statistics.median(term_times["as made"])
    defined_us = statistics.median(term_times["by definition"])
    print(f"tokens and term counts: {made_us:.1f} us an article as made, {defined_us:.1f} "
          f"by their definitions: {defined_us / made_us:.2f}x (the same tokens, first words, "
          "counts and title terms)")
    print(json.dumps({"articles": args.articles, "rounds": args.rounds,
                      "kernels_ms_per_article": round(kernels_ms, 4),
                      "python_ms_per_article": round(python_ms, 4),
                      "speedup": round(python_ms / kernels_ms, 2),
                      "sha_instructions": compiled.SHA_INSTRUCTIONS,
                      "same_signatures": True,
                      "terms_us_per_article": round(made_us, 1),
                      "terms_by_definition_us_per_article": round(defined_us, 1),
                      "terms_speedup": round(defined_us / made_us, 2),
                      "same_terms": True}))


if __name__ == "__main__":
    main()
