"""Pure text features: tokens, shingles, weighted terms, salient terms and their MinHashes.

Two fingerprints per article serve the two kinds of "same" that text can show:

* ``shingles``: word n-gram set -> MinHash.  Near-copies share most shingles; different
  write-ups of one story share almost none (0.003-0.019 Jaccard on the seed write-ups).
* ``salient``: a compact set of the article's most telling stemmed terms (all title terms plus
  the top TF-IDF terms) -> MinHash.  Different write-ups share a good part of it (0.25-0.33
  on the seeds), so a low-threshold LSH query over it finds same-story candidates.

Signatures are built with ``MinHash.bulk`` (one permutation set shared by every call) under an
explicit hashing scheme, so stored signatures stay comparable across versions of datasketch.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import snowballstemmer
from datasketch import LeanMinHash, MinHash
from wordfreq import zipf_frequency

MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_POSSESSIVE = re.compile(r"['’]s?$")

# Function words and newsroom filler; everything else is left to IDF to weigh.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been
before being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is
it its itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves said says say told
according also one two new would could may might must shall us mr ms mrs per via get got
monday tuesday wednesday thursday friday saturday sunday today yesterday tomorrow week weeks
year years day days time times last first since still even well much many like just
""".split())

_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _stemmer.stemWord(word)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, possessives folded (``Russia's`` -> ``russia``)."""
    return [_POSSESSIVE.sub("", match.group().lower()) for match in _WORD.finditer(text)]


def _is_content_word(token: str) -> bool:
    if token in STOPWORDS or len(token) < 2:
        return False
    return not (token.isdigit() and len(token) < 4)


def content_terms(title: str, text: str, title_weight: float,
                  phrase_weight: float = 0.0) -> dict[str, float]:
    """Stemmed content-term frequencies; title occurrences count ``title_weight`` times more.

    With ``phrase_weight`` > 0, pairs of adjacent content words ("select committee",
    "booster shot") count too, as terms of their own: a phrase names an event more
    precisely than either of its words.
    """
    counts: Counter[str] = Counter()
    for part, weight in ((text, 1.0), (title, title_weight)):
        previous = None
        for token in tokenize(part):
            if not _is_content_word(token):
                previous = None
                continue
            term = stem(token)
            counts[term] += weight
            if phrase_weight and previous is not None:
                counts[f"{previous}_{term}"] += weight * phrase_weight
            previous = term
    return dict(counts)


def title_terms(title: str) -> set[str]:
    return {stem(t) for t in tokenize(title) if _is_content_word(t)}


def shingles(text: str, size: int) -> set[bytes]:
    """Word ``size``-grams of the text (all tokens, stop words too: copies keep them)."""
    tokens = tokenize(text)
    if len(tokens) < size:
        return {" ".join(tokens).encode()} if tokens else set()
    return {" ".join(tokens[i:i + size]).encode() for i in range(len(tokens) - size + 1)}


@lru_cache(maxsize=200_000)
def prior_document_fraction(term: str) -> float:
    """Share of news articles expected to contain ``term`` before we have seen any.

    From the word's frequency in general English (wordfreq): a word of frequency ``f`` per
    token appears at least once in an article of ~400 tokens with probability 1-exp(-400 f).
    """
    zipf = zipf_frequency(term, "en")
    per_token = 10 ** (zipf - 9) if zipf > 0 else 1e-8
    return max(1e-7, 1.0 - math.exp(-400.0 * per_token))


class TermStatistics:
    """Online document frequencies with a prior from general English.

    ``idf(t) = ln((N + N0) / (df(t) + N0 * p0(t) + 0.5))`` where ``p0`` is the prior share of
    documents containing ``t`` and ``N0`` how many documents the prior is worth.  With an
    empty store it is the prior alone; after ``N >> N0`` articles the observed counts rule.
    Counts are kept per stem; the prior is looked up on the surface word the stem came from.
    """

    def __init__(self, prior_docs: float):
        self.prior_docs = prior_docs
        self.documents = 0
        self.document_frequency: Counter[str] = Counter()
        self._prior_fraction: dict[str, float] = {}

    def prior(self, term: str) -> float:
        prior = self._prior_fraction.get(term)
        if prior is not None:
            return prior
        if "_" in term:
            # A phrase is about as rare as its rarer word, and rarer still.
            return min(self.prior(word) for word in term.split("_")) * 0.1
        return prior_document_fraction(term)

    def restore(self, documents: int, rows: Iterable[tuple[str, int, float]]) -> None:
        """Load persisted ``(term, document_frequency, prior)`` rows."""
        self.documents = documents
        for term, frequency, prior in rows:
            if frequency:
                self.document_frequency[term] = frequency
            self._prior_fraction[term] = prior

    def idf(self, term: str) -> float:
        prior = self.prior(term)
        df = self.document_frequency.get(term, 0)
        return math.log((self.documents + self.prior_docs)
                        / (df + self.prior_docs * prior + 0.5))

    def learn_prior(self, surface_words: Iterable[str]) -> None:
        for word in surface_words:
            if _is_content_word(word):
                key = stem(word)
                if key not in self._prior_fraction:
                    self._prior_fraction[key] = prior_document_fraction(word)

    def add_document(self, terms: Iterable[str]) -> None:
        self.documents += 1
        self.document_frequency.update(set(terms))

    def remove_document(self, terms: Iterable[str]) -> None:
        self.documents = max(0, self.documents - 1)
        for term in set(terms):
            left = self.document_frequency.get(term, 0) - 1
            if left > 0:
                self.document_frequency[term] = left
            else:
                self.document_frequency.pop(term, None)


def tfidf_vector(term_counts: Mapping[str, float], stats: TermStatistics,
                 limit: int = 0) -> dict[str, float]:
    """Log-TF x IDF, L2-normalised; only the ``limit`` strongest terms when ``limit`` > 0.

    Truncation keeps a long article's vector about what it is about: the long tail of a full
    text is mostly words any article could use, and it dilutes the cosine between two
    write-ups of one event.
    """
    vector = {t: (1.0 + math.log(c)) * stats.idf(t) for t, c in term_counts.items() if c > 0}
    vector = {t: w for t, w in vector.items() if w > 0}
    if 0 < limit < len(vector):
        vector = dict(sorted(vector.items(), key=lambda item: (-item[1], item[0]))[:limit])
    norm = math.sqrt(sum(w * w for w in vector.values()))
    return {t: w / norm for t, w in vector.items()} if norm else {}


def unit_dot(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The cosine of two unit-length vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(t, 0.0) for t, w in a.items())


def cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    dot = sum(w * b.get(t, 0.0) for t, w in a.items())
    if not dot:
        return 0.0
    norm_a = math.sqrt(sum(w * w for w in a.values()))
    norm_b = math.sqrt(sum(w * w for w in b.values()))
    return dot / (norm_a * norm_b) if norm_a and norm_b else 0.0


def salient_terms(vector: Mapping[str, float], titles: set[str], limit: int) -> tuple[str, ...]:
    """Title terms plus the strongest TF-IDF terms, ``limit`` in all at most, sorted."""
    ranked = sorted(vector.items(), key=lambda item: (-item[1], item[0]))
    chosen = [t for t in titles if t in vector][:limit]
    for term, _weight in ranked:
        if len(chosen) >= limit:
            break
        if term not in chosen:
            chosen.append(term)
    return tuple(sorted(chosen))


class Signer:
    """Builds MinHash signatures in bulk with one fixed set of permutations."""

    def __init__(self, num_perm: int):
        self.num_perm = num_perm
        self._template = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)

    def sign(self, item_sets: list[Iterable[bytes]]) -> list[LeanMinHash]:
        """One signature per set; an empty set gets the empty signature."""
        sets = [list(items) or [b""] for items in item_sets]
        hashed = MinHash.bulk(sets, num_perm=self.num_perm, seed=MINHASH_SEED,
                              scheme=MINHASH_SCHEME,
                              permutations=self._template.permutations)
        return [LeanMinHash(m) for m in hashed]

    def from_bytes(self, data: bytes) -> LeanMinHash:
        return LeanMinHash.deserialize(bytearray(data))


def signature_bytes(signature: LeanMinHash) -> bytes:
    buffer = bytearray(signature.bytesize())
    signature.serialize(buffer)
    return bytes(buffer)


def jaccard(a: LeanMinHash, b: LeanMinHash) -> float:
    return float(np.count_nonzero(a.hashvalues == b.hashvalues)) / len(a.hashvalues)


@dataclass(frozen=True)
class Fingerprint:
    """What clustering needs of an article, and what the store keeps to rebuild the index."""

    term_counts: dict[str, float]
    title_terms: frozenset[str]
    salient: tuple[str, ...]
    shingle_signature: LeanMinHash
    salient_signature: LeanMinHash
    word_count: int


def fingerprint_batch(articles: list[tuple[str, str]], stats: TermStatistics, signer: Signer,
                      shingle_size: int, title_weight: float,
                      salient_limit: int, phrase_weight: float = 0.0) -> list[Fingerprint]:
    """Fingerprints of ``(title, text)`` pairs, signatures built in one bulk call per kind."""
    partial = []
    for title, text in articles:
        stats.learn_prior(tokenize(f"{title}\n{text}"))
        counts = content_terms(title, text, title_weight, phrase_weight)
        titles = title_terms(title)
        vector = tfidf_vector(counts, stats)
        partial.append((counts, titles, salient_terms(vector, titles, salient_limit),
                        shingles(f"{title}\n{text}", shingle_size),
                        len(tokenize(text))))
    shingle_sigs = signer.sign([p[3] for p in partial])
    salient_sigs = signer.sign([[t.encode() for t in p[2]] for p in partial])
    return [
        Fingerprint(term_counts=counts, title_terms=frozenset(titles), salient=salient,
                    shingle_signature=shingle_sig, salient_signature=salient_sig,
                    word_count=words)
        for (counts, titles, salient, _sh, words), shingle_sig, salient_sig
        in zip(partial, shingle_sigs, salient_sigs, strict=True)
    ]
