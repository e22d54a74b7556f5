"""Prepare: fetched documents and entries into articles with their text features.

    parse -> normalize -> text features (tokens, term counts, shingle signatures)

What does not depend on the store's statistics, computed in the worker processes (or in
the calling thread for small batches) ahead of the writer, which fingerprints and clusters.
A worker imports this module and what it needs only, not the writer's (the clusterer, the
store's schema, HTTP, the command line): each worker process holds that much less memory
and starts sooner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from .children import exit_with_parent
from .fingerprint import Signer, TextFeatures, count_words, give_priors_ahead, text_features
from .normalize import NormalizedArticle, normalize_entry
from .parse import ParsedEntry, parse_feed
from .readers import stored_keys, thread_reader

# A feed with more entries than this is truncated: no real feed needs more in one document.
MAX_ENTRIES_PER_FETCH = 10_000


@dataclass(frozen=True)
class PrepareSettings:
    num_perm: int
    shingle_size: int
    title_weight: float
    phrase_weight: float
    # False with clustering off: the writer needs no text features then.
    features: bool = True
    max_entries: int = MAX_ENTRIES_PER_FETCH


@dataclass
class Prepared:
    """Entries normalised, with the text features of those not already stored.

    ``features[i]`` is None for an article that was known when it was prepared (the writer
    checks again) or whose features are left to the writer.  With clustering off there are
    no features, and ``word_counts`` holds each text's word count instead.
    """

    articles: list[NormalizedArticle]
    features: list[TextFeatures | None]
    word_counts: list[int] | None = None


_signers: dict[int, Signer] = {}


def prepare_entries(entries: tuple[ParsedEntry, ...], source: str, fetched: datetime,
                    settings: PrepareSettings, signer: Signer | None = None) -> Prepared:
    """Normalise entries and compute what does not depend on the store: pure, so it runs in
    worker processes."""
    return prepare_articles(normalize_entries(entries, source, fetched), settings,
                            signer=signer)


def normalize_entries(entries: tuple[ParsedEntry, ...], source: str,
                      fetched: datetime) -> list[NormalizedArticle]:
    """The entries as articles, without those that have neither a title nor a text."""
    return [a for a in (normalize_entry(e, source, fetched) for e in entries)
            if a.title or a.text]


def prepare_articles(articles: list[NormalizedArticle], settings: PrepareSettings,
                     known: frozenset[str] = frozenset(),
                     signer: Signer | None = None) -> Prepared:
    if not settings.features:
        return _without_features(articles)
    if signer is None:
        signer = _signers.get(settings.num_perm)
        if signer is None:
            signer = _signers[settings.num_perm] = Signer(settings.num_perm)
    fresh = [i for i, a in enumerate(articles) if not known.intersection(a.identity_keys)]
    computed = text_features([(articles[i].title, articles[i].text) for i in fresh], signer,
                             settings.shingle_size, settings.title_weight,
                             settings.phrase_weight)
    features: list[TextFeatures | None] = [None] * len(articles)
    for i, feature in zip(fresh, computed, strict=True):
        features[i] = feature
    return Prepared(articles, features)


def _without_features(articles: list[NormalizedArticle]) -> Prepared:
    # Counted here, in a worker process: with clustering off the writer's own work is
    # little more than SQLite's, and counting took a twentieth of its process's time.
    return Prepared(articles, [None] * len(articles), [count_words(a.text) for a in articles])


@dataclass
class PreparedDocument:
    """A fetched document parsed and prepared (in a worker process, or a fetch thread)."""

    entries_in_feed: int
    prepared: Prepared
    ttl_minutes: int | None
    skip_hours: frozenset[int]
    skip_days: frozenset[str]
    # Seconds spent parsing, and normalising and computing features, by prepare_document
    # (for benchmarks: a worker's time is not visible from the daemon's process).
    parse_s: float = 0.0
    prepare_s: float = 0.0


def prepare_document(body: bytes, content_type: str | None, source: str, fetched: datetime,
                     settings: PrepareSettings, database: str,
                     url: str | None = None) -> PreparedDocument:
    """Parse a feed document (fetched from ``url``) and prepare its first
    ``settings.max_entries`` entries; ``database`` is read for the entries already stored,
    which need no features."""
    started = time.perf_counter()
    feed = parse_feed(body, source, content_type, url)
    parsed = time.perf_counter()
    prepared = prepare_new_entries(feed.entries[:settings.max_entries], source, fetched,
                                   settings, database)
    return PreparedDocument(len(feed.entries), prepared, feed.ttl_minutes, feed.skip_hours,
                            feed.skip_days, parse_s=parsed - started,
                            prepare_s=time.perf_counter() - parsed)


def prepare_new_entries(entries: tuple[ParsedEntry, ...], source: str, fetched: datetime,
                        settings: PrepareSettings, database: str) -> Prepared:
    """``prepare_articles`` with the articles already in ``database`` known."""
    articles = normalize_entries(entries, source, fetched)
    if not settings.features or not articles:
        return _without_features(articles)
    known = frozenset(stored_keys(thread_reader(database),
                                  [k for a in articles for k in a.identity_keys]))
    return prepare_articles(articles, settings, known)


def start_worker(parent: int) -> None:
    """A worker process's start: it exits with the daemon (``exit_with_parent``) and gives
    the priors of new terms with the articles it prepares (``give_priors_ahead``)."""
    exit_with_parent(parent)
    give_priors_ahead()
