"""Pure text features: tokens, shingles, weighted terms, salient terms and their MinHashes.

Two fingerprints per article serve the two kinds of "same" that text can show:

* ``shingles``: word n-gram set -> MinHash.  Near-copies share most shingles; different
  write-ups of one story share almost none (0.003-0.019 Jaccard on the seed write-ups).
* ``salient``: a compact set of the article's most telling stemmed terms (all title terms plus
  the top TF-IDF terms) -> MinHash.  Different write-ups share a good part of it (0.25-0.33
  on the seeds), so a low-threshold LSH query over it finds same-story candidates.

Signatures are datasketch ``MinHash`` values under an explicit hashing scheme (``affine32``),
so stored signatures stay comparable across versions of datasketch.  They are computed here in
numpy for a whole batch at once; datasketch itself is imported only where its objects are
needed (``lean_minhash``), because importing it loads scipy (about 53 MB, where the daemon's
own imports take about 60 MB).  Tests check every value and the serialised form against
datasketch's own ``MinHash`` and ``LeanMinHash``.
"""

from __future__ import annotations

import gzip
import logging
import math
import operator
import os
import re
import struct
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha1
from itertools import islice, repeat

import msgpack
import numpy as np
import Stemmer
import wordfreq

from .memory import enlarge
from .native import kernels
from .normalize import ascii_folded

log = logging.getLogger(__name__)

MINHASH_SEED = 1
SIGN_GROUP_ITEMS = 8192
# Without the compiled kernels, up to this many stored signatures are read back one by one
# (``Signer.from_bytes_many_numpy``).
FEW_SIGNATURES = 8
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

# A Snowball stemmer keeps state while it works: one per thread (fetch threads fingerprint).
_per_thread = threading.local()


def stem(word: str) -> str:
    """The Snowball English stem, from PyStemmer's C build of the Snowball algorithms: a word
    took 33 us in the pure-Python build, 2 us in C, and every text a fresh worker process
    prepares is full of words it has not seen.  Uncached: ``term_of`` is its cache."""
    stemmer = getattr(_per_thread, "stemmer", None)
    if stemmer is None:
        # No cache of its own (maxCacheSize 0): ``term_of``'s is in front of it.
        stemmer = _per_thread.stemmer = Stemmer.Stemmer("english", 0)
    stemmed = stemmer.stemWord(word)
    # Half the words a stream meets are their own stem: ``term_of``'s cache then holds one
    # string for both.
    return word if stemmed == word else stemmed


# ASCII letters and digits (``_WORD``'s word characters in ASCII) and the apostrophe kept,
# everything else (the underscore too) a space.
_TOKEN_CHARACTERS = "".join(chr(c) if chr(c).isalnum() or c == ord("'") else " "
                            for c in range(128))


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, possessives folded (``Russia's`` -> ``russia``).

    ASCII text (nearly every text) is split on the characters that no token holds, which
    takes a fifth of the time of the regular expression over the whole text; only a chunk
    with an apostrophe goes through it.  ``tokenize_regex`` is the reference."""
    if not text.isascii():
        return tokenize_regex(text)
    chunks = text.lower().translate(_TOKEN_CHARACTERS).split()
    if "'" not in text:
        return chunks
    tokens = []
    for chunk in chunks:
        if "'" in chunk:
            # The tokens of a chunk are the expression's matches within it: none crosses
            # a space, which is no word character.
            tokens.extend(_POSSESSIVE.sub("", t) if "'" in t else t
                          for t in _WORD.findall(chunk))
        else:
            tokens.append(chunk)
    return tokens


def tokenize_regex(text: str) -> list[str]:
    """``tokenize`` by its definition: the regular expression's matches, lower-cased."""
    tokens = [token.lower() for token in _WORD.findall(text)]
    if "'" in text or "’" in text:
        # An apostrophe only ever sits inside a token, so only "’s" at the end can go.
        tokens = [_POSSESSIVE.sub("", t) if ("'" in t or "’" in t) else t for t in tokens]
    return tokens


# For counting ``_WORD``'s tokens in ASCII text: a letter or digit becomes "a", an apostrophe
# stays, everything else (the underscore too) becomes a space.
_WORD_BYTES = bytes(ord("a") if c < 128 and chr(c).isalnum() else c if chr(c) == "'" else ord(" ")
                    for c in range(256))


def count_words(text: str) -> int:
    """How many tokens ``tokenize`` finds in the text, without making them."""
    data = ascii_folded(text)
    if data is None:
        return len(_WORD.findall(text))
    # A token is a run of letters and digits, joined to the next run by one apostrophe
    # between them: tokens = runs - joins. Counted with bytes.count, because the regular
    # expression makes a string of every token (18 us an article, about 8% of the daemon
    # process's time with clustering off). None of the patterns counted overlaps itself.
    marks = data.translate(_WORD_BYTES)
    runs = marks.count(b" a") + marks.count(b"'a") + marks.startswith(b"a")
    joins = (marks.count(b"'a") - marks.count(b" 'a") - marks.count(b"''a")
             - marks.startswith(b"'a"))
    return runs - joins


def _is_content_word(token: str) -> bool:
    if token in STOPWORDS or len(token) < 2:
        return False
    return not (token.isdigit() and len(token) < 4)


# token -> its stem, or None for a token that is no content word.  Bounded: cleared when full.
# A stream of news meets about 66,000 distinct tokens in its first 100,000 articles and 0.3
# new ones an article after that; the cache holds a worker's common words again a few
# thousand articles after it is cleared, where 500,000 entries took about 55 MB.
_TERM_OF: dict[str, str | None] = {}
_TERM_CACHE_SIZE = 100_000


def term_of(token: str) -> str | None:
    """The stemmed term a token counts as, or None when it is not a content word."""
    term = _TERM_OF.get(token, "")
    if term == "":
        if len(_TERM_OF) >= _TERM_CACHE_SIZE:
            _TERM_OF.clear()
        term = _TERM_OF[token] = stem(token) if _is_content_word(token) else None
    return term


def _term_counts(title_tokens: list[str], text_tokens: list[str], title_weight: float,
                 term_by_token: dict[str, str | None]) -> dict[str, float]:
    """``_content_terms`` without phrases, from the term of each token: counted by
    ``Counter`` in C, in the same order and to the same bit (a text's count is a whole
    number, to which each title occurrence adds ``title_weight`` in turn)."""
    counted = Counter(map(term_by_token.__getitem__, text_tokens))
    counted.pop(None, None)
    counts = dict(zip(counted, map(float, counted.values()), strict=True))
    for term in map(term_by_token.__getitem__, title_tokens):
        if term is not None:
            counts[term] = counts.get(term, 0.0) + title_weight
    return counts


def _content_terms(title_tokens: list[str], text_tokens: list[str], title_weight: float,
                   phrase_weight: float) -> dict[str, float]:
    """Each content term's weighted count, text first, then title (``title_weight`` an
    occurrence), with word pairs where ``phrase_weight`` is set: the definition, and the
    path of phrases."""
    counts: dict[str, float] = {}
    lookup = _TERM_OF.get
    for tokens, weight in ((text_tokens, 1.0), (title_tokens, title_weight)):
        previous = None
        for token in tokens:
            term = lookup(token, "")
            if term == "":
                term = term_of(token)
            if term is None:
                previous = None
                continue
            counts[term] = counts.get(term, 0.0) + weight
            if phrase_weight and previous is not None:
                phrase = f"{previous}_{term}"
                counts[phrase] = counts.get(phrase, 0.0) + weight * phrase_weight
            previous = term
    return counts


def shingles(text: str, size: int) -> set[bytes]:
    """Word ``size``-grams of the text (all tokens, stop words too: copies keep them)."""
    return shingles_of_tokens(tokenize(text), size)


def shingles_of_tokens(tokens: list[str], size: int) -> set[bytes]:
    """``shingles`` of a text already tokenized; fewer tokens than ``size`` make one
    shingle of them all."""
    if len(tokens) < size:
        return {" ".join(tokens).encode()} if tokens else set()
    return {" ".join(tokens[i:i + size]).encode() for i in range(len(tokens) - size + 1)}


def shingle_hashes(tokens: list[str], size: int) -> np.ndarray:
    """The MinHash item hashes (``item_hashes``) of the word ``size``-grams of ``tokens``,
    as many as the shingles or fewer (a repeated shingle may be hashed once or each time:
    a signature is the same either way); none for no tokens.  Compiled where the package
    was built with a C compiler (``kernels.shingle_hashes``, with the CPU's SHA
    instructions where it has them); ``shingle_hashes_python`` is the reference."""
    if kernels is None:
        return shingle_hashes_python(tokens, size)
    return np.frombuffer(kernels.shingle_hashes(tokens, size), dtype=np.uint32)


def shingle_hashes_python(tokens: list[str], size: int) -> np.ndarray:
    """The item hashes of the distinct shingles of ``tokens``."""
    shingle_set = shingles_of_tokens(tokens, size)
    return item_hashes(list(shingle_set)) if shingle_set else np.zeros(0, dtype=np.uint32)


class EnglishFrequencies:
    """wordfreq's English word frequencies, held in 3 MB instead of 33.

    ``zipf(word)`` is ``wordfreq.zipf_frequency(word, "en")``, computed the way wordfreq
    computes it (its tokeniser, digit handling and rounding, through its own functions),
    but its word list is held as sorted 64-bit hashes of the words' UTF-8 bytes, each with
    its centibel bucket: wordfreq's cached dictionary of 321,180 strings takes 33 MB of a
    daemon that needs the list only to look up the words it has not seen before.
    """

    def __init__(self) -> None:
        hashed, sizes = [], []
        for bucket in _english_buckets():
            hashed.append(np.fromiter(map(_key, bucket), dtype=np.int64, count=len(bucket)))
            sizes.append(len(bucket))
        hashes = np.concatenate(hashed)
        buckets = np.repeat(np.arange(len(sizes), dtype=np.uint16), sizes)
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._buckets = hashes[order], buckets[order]
        self._bucket_frequency = [wordfreq.cB_to_freq(-index) for index in range(len(sizes))]
        self._minimum = wordfreq.zipf_to_freq(0.0)
        # A plain word (``_plain``) is its own one token, so its value follows its bucket
        # alone: worked out once for each bucket, and for a word not listed, by ``zipf``.
        self._zipf_by_bucket = [self._zipf_of([frequency])
                                for frequency in self._bucket_frequency]
        self._zipf_unlisted = self._zipf_of([None])

    def _buckets_of(self, words: list[str]) -> list[int | None]:
        """The bucket of each word in the list, None for a word not listed: one search for
        them all."""
        keys = np.fromiter(map(_key, words), dtype=np.int64, count=len(words))
        # The last of equal keys: a word listed twice has its later (rarer) bucket, as in
        # wordfreq's dictionary, where the later entry overwrites the earlier.
        at = np.maximum(np.searchsorted(self._hashes, keys, side="right") - 1, 0)
        listed = (self._hashes[at] == keys).tolist()
        return [bucket if found else None
                for bucket, found in zip(self._buckets[at].tolist(), listed, strict=True)]

    def _frequency(self, token: str) -> float | None:
        [bucket] = self._buckets_of([token])
        return None if bucket is None else self._bucket_frequency[bucket]

    def zipf(self, word: str) -> float:
        frequencies = []
        for token in wordfreq.lossy_tokenize(word, "en"):
            smashed = wordfreq.smash_numbers(token)
            frequency = self._frequency(smashed)
            if frequency is None:
                frequencies.append(None)
                break
            if smashed != token:
                frequency *= wordfreq.digit_freq(token)
            frequencies.append(frequency)
        return self._zipf_of(frequencies)

    def _zipf_of(self, frequencies: list[float | None]) -> float:
        """wordfreq's value for a word of tokens of ``frequencies`` (None: a token not
        listed, which makes the word unlisted)."""
        minimum = self._minimum
        one_over = 0.0
        for frequency in frequencies:
            if frequency is None:
                one_over = 0.0
                break
            one_over += 1.0 / frequency
        frequency = max(1.0 / one_over, minimum) if one_over else minimum
        frequency = round(frequency, math.floor(-math.log(frequency, 10)) + 3)
        return round(wordfreq.freq_to_zipf(frequency), 2)

    def zipf_many(self, words: list[str]) -> list[float]:
        """``zipf`` of each word; the plain ones (nearly all) by one search of the list for
        them all, without wordfreq's tokeniser, which takes most of a word's time."""
        values = [self._zipf_unlisted] * len(words)
        plain = []
        for number, word in enumerate(words):
            if _plain(word):
                plain.append(number)
            else:
                values[number] = self.zipf(word)
        by_bucket = self._zipf_by_bucket
        for number, bucket in zip(plain, self._buckets_of([words[n] for n in plain]),
                                  strict=True):
            if bucket is not None:
                values[number] = by_bucket[bucket]
        return values


def _plain(word: str) -> bool:
    """Whether wordfreq's English tokeniser leaves ``word`` one token, itself, with no digit
    to smash: lower-case ASCII letters (checked against every such word of its list)."""
    return word.isascii() and word.isalpha() and word.islower()


def _english_buckets() -> Iterator[list[str]]:
    """wordfreq's English word list (``wordfreq.read_cBpack``'s lists: bucket ``i`` holds
    the words of ``-i`` centibels), read as a stream, a bucket at a time.  Read whole, its
    321,180 strings took 20 MB that the heap of every process that reads it kept after they
    were freed: the writer's and each worker's."""
    path = wordfreq.available_languages("best")["en"]
    with gzip.open(path, "rb") as packed:
        unpacker = msgpack.Unpacker(packed, raw=False)
        lists = unpacker.read_array_header()
        header = unpacker.unpack()
        if not isinstance(header, dict) or header.get("format") != "cB" \
                or header.get("version") != 1:
            raise ValueError(f"{path}: not a cBpack file of version 1: {header!r}")
        for _bucket in range(lists - 1):
            yield unpacker.unpack()


def _key(word: str) -> int:
    # Of the UTF-8 bytes: ``hash(str)`` hashes the internal buffer, so "kp" (two Latin-1
    # bytes) and "火" (one two-byte code unit) hash alike, and 16 of wordfreq's words collide.
    return hash(word.encode())


_english: EnglishFrequencies | None = None
_english_lock = threading.Lock()


def english_frequencies() -> EnglishFrequencies:
    """The compact list, loaded on first use."""
    global _english
    if _english is None:
        with _english_lock:
            if _english is None:
                _english = EnglishFrequencies()
    return _english


def english_zipf(word: str) -> float:
    """``wordfreq.zipf_frequency(word, "en")`` from the compact list."""
    return english_frequencies().zipf(word)


# Bounded small: a term's prior is kept by ``TermStatistics`` once it is learned, so the
# words asked for again are few (the parts of phrases whose stems were not seen alone).
@lru_cache(maxsize=20_000)
def prior_document_fraction(term: str) -> float:
    """Share of news articles expected to contain ``term`` before we have seen any.

    From the word's frequency in general English (wordfreq): a word of frequency ``f`` per
    token appears at least once in an article of ~400 tokens with probability 1-exp(-400 f).
    """
    return _prior_of_zipf(english_zipf(term))


def prior_document_fractions(words: list[str]) -> list[float]:
    """``prior_document_fraction`` of each word, the English list searched once for them
    all (a new worker looks up nearly every word it meets)."""
    return list(map(_prior_of_zipf, english_frequencies().zipf_many(words)))


def _prior_of_zipf(zipf: float) -> float:
    per_token = 10 ** (zipf - 9) if zipf > 0 else 1e-8
    return max(1e-7, 1.0 - math.exp(-400.0 * per_token))


# A term as ``term_stats`` keeps it: (id, term, document frequency, prior, last article id).
TermRow = tuple[int, str, int, float, int]
# Term rows taken in at a time by a restore (a start-up reads tens of thousands).
RESTORE_CHUNK = 4096


# The kernels that keep a ``TermTable`` whole, whatever the module's ``kernels`` is set to
# later (``benchmarks/propose.py`` sets it to None to time the reference).
_TABLE_KERNELS = kernels


class TermTable:
    """The numbers of the terms in memory by a key of each name, in one compiled
    open-addressing table (``kernels.term_numbers``), beside ``Vocabulary.ids``.

    ``TermStatistics.ids_of`` looks up all of an article's terms in one call, reading them
    from the prepared article's string of terms: a dictionary look-up of each of its ~180
    terms took 0.10 ms of the writer's 1.3 an article (a fresh string is hashed, and the
    dictionary's index, entry and key are each a cache miss).  A key is 96 bits of
    MurmurHash3_x64_128 under a seed drawn for each process, so no text can be made to give
    another term's key; two of a process's terms sharing one, which would give the second
    the first's number, is a chance of about n^2 / 2^97 for n terms.  A slot is 16 bytes,
    and the table at most half full: 32-64 bytes a term in memory.
    """

    def __init__(self, terms: list[str]) -> None:
        self.seed = int.from_bytes(os.urandom(16), "little")
        # The vocabulary's names by number ("" where free), to put every key back when the
        # table grows.
        self._terms = terms
        self.slots = np.zeros(2 * 1024, dtype=np.uint64)
        self.size = 0

    def look_up(self, text: str, count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The numbers of the ``count`` terms of ``text`` (separated by single spaces), -1
        for each not in the table; their keys; how many were not."""
        numbers = np.empty(count, dtype=np.int32)
        keys = np.empty((count, 2), dtype=np.uint64)
        absent = _TABLE_KERNELS.term_numbers(text, self.seed, self.slots, numbers, keys)
        return numbers, keys, absent

    def keys_of(self, terms: Sequence[str]) -> np.ndarray:
        keys = np.empty((len(terms), 2), dtype=np.uint64)
        _TABLE_KERNELS.term_keys(" ".join(terms), self.seed, keys)
        return keys

    def add(self, keys: np.ndarray, numbers: Sequence[int]) -> None:
        """Enter terms (none of them in the table) by their keys, with their numbers."""
        self.size += len(numbers)
        if 2 * self.size > len(self.slots) // 2:
            self._grow()
        else:
            _TABLE_KERNELS.table_insert(self.slots, keys, np.asarray(numbers, dtype=np.int32))

    def remove(self, terms: Sequence[str]) -> None:
        """Take out ``terms`` (each in the table)."""
        if terms:
            self.size -= _TABLE_KERNELS.table_remove(self.slots, self.keys_of(terms))

    def _grow(self) -> None:
        """Twice the slots or more, at most half full: every key put back (their names
        already numbered)."""
        capacity = len(self.slots)
        while capacity < 2 * self.size:
            capacity *= 2
        self.slots = np.zeros(2 * capacity, dtype=np.uint64)
        numbers = [number for number, term in enumerate(self._terms) if term]
        _TABLE_KERNELS.table_insert(self.slots, self.keys_of([self._terms[n] for n in numbers]),
                                   np.asarray(numbers, dtype=np.int32))
        self.size = len(numbers)


class TermsLeftInStore:
    """The names of the terms that the store holds and memory does not (left there by
    ``TermStatistics.forget_unseen_since``, or not read at a restart), as a Bloom filter.

    ``TermStatistics.ids_of`` asks the store only for those of an article's terms new to
    memory that the filter may hold: nearly all of them are new to the store as well (on a
    full window, 2,628 of 2,629 asked for in 8,000 articles), and each question took a
    hundred microseconds of B-tree pages that the writer's other work had pushed out of
    SQLite's cache.  A name added is always held, so no stored term is missed; a name never
    added is held by chance only, and is then asked for in vain, as before.

    Its size is fixed, so memory stays flat over an endless stream: 1 MB, under one chance
    in a thousand of a false "held" up to 290,000 names (a million-article stream leaves
    220,000), one in a hundred at 670,000, one in eight at 1.9 million.
    Keys are Python's own string hashes (64 bits, the name's hash being cached on the
    string), salted for each process: the filter is built afresh at every start and never
    leaves its process.
    """

    BITS = 1 << 23
    PROBES = 3
    _LOW = (1 << 32) - 1

    def __init__(self, bits: int = BITS) -> None:
        if bits < 8 or bits & (bits - 1):
            raise ValueError(f"a Bloom filter of {bits} bits: a power of two, 8 or more")
        self._mask = bits - 1
        # Made at the first name added: most stores never leave a term behind.
        self._bytes: bytearray | None = None
        self.added = 0

    def __bool__(self) -> bool:
        """Whether any name was added."""
        return self.added > 0

    def __reduce__(self):
        raise TypeError("TermsLeftInStore is keyed by this process's salted string hashes; "
                        "build one in the other process from the store")

    def add(self, names: Iterable[str]) -> None:
        """Hold ``names`` from now on."""
        names = iter(names)
        while chunk := list(islice(names, RESTORE_CHUNK)):
            if self._bytes is None:
                self._bytes = bytearray((self._mask + 1) // 8)
            hashes = np.fromiter(map(hash, chunk), dtype=np.int64, count=len(chunk))
            keys = hashes.view(np.uint64)
            first, step = keys & np.uint64(self._LOW), (keys >> np.uint64(32)) | np.uint64(1)
            at = (first[:, None] + step[:, None] * np.arange(self.PROBES, dtype=np.uint64)
                  ) & np.uint64(self._mask)
            np.bitwise_or.at(np.frombuffer(self._bytes, dtype=np.uint8), at >> np.uint64(3),
                             np.left_shift(1, at & np.uint64(7)).astype(np.uint8))
            self.added += len(chunk)

    def merge(self, other: TermsLeftInStore) -> None:
        """Hold what ``other`` (of the same size) holds as well."""
        if other._mask != self._mask:
            raise ValueError("Bloom filters of different sizes cannot be merged")
        if other._bytes is None:
            return
        if self._bytes is None:
            self._bytes = bytearray(other._bytes)
        else:
            mine = np.frombuffer(self._bytes, dtype=np.uint8)
            np.bitwise_or(mine, np.frombuffer(other._bytes, dtype=np.uint8), out=mine)
        self.added += other.added

    def hold_everything(self) -> None:
        """Hold every name from now on: where the names left in the store are not known,
        every term new to memory must be looked up."""
        self._bytes = bytearray(b"\xff" * ((self._mask + 1) // 8))
        self.added = max(self.added, 1)

    def among(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that the filter holds: all of those added, and few others."""
        held = self._bytes
        if held is None:
            return []
        mask, low, probes = self._mask, self._LOW, self.PROBES
        kept = []
        for name in names:
            key = hash(name) & 0xFFFF_FFFF_FFFF_FFFF
            first, step = key & low, key >> 32 | 1
            for probe in range(probes):
                at = (first + probe * step) & mask
                if not held[at >> 3] >> (at & 7) & 1:
                    break
            else:
                kept.append(name)
        return kept


class Vocabulary:
    """Term <-> number, for the terms in memory; number 0 pads short rows.

    The numbers index the statistics' arrays and the window's vectors.  They are not the
    terms' ids in the store (``term_stats.id``, given once and kept for good): a number is
    handed to another term once its term has left memory (``forget``), so that what memory
    holds per term follows the terms in memory, not every term the stream ever used.
    ``stored`` gives each number's store id.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.terms: list[str] = [""]
        self.stored = np.zeros(1024, dtype=np.int64)
        # Each numbered term's MinHash item hash (``item_hashes``), worked out once while it
        # has its number (``hashes_of``): salient sets are signed from these.
        self.hashes = np.zeros(1024, dtype=np.uint32)
        self.hashed = np.zeros(1024, dtype=bool)
        # Numbers given back by ``forget``, handed out again before new ones.
        self._free: list[int] = []
        # The same numbers by key, for ``TermStatistics.ids_of`` (compiled only).
        self.table = TermTable(self.terms) if kernels is not None else None
        # The store id of the next term never seen before (0 pads, as number 0 does).
        self.next_stored = 1

    def id(self, term: str) -> int:
        """The number of ``term``; a term never seen before gets one, and a store id."""
        found = self.ids.get(term)
        if found is None:
            found = self._place(term)
            self._enter([term], [found])
        return found

    def _enter(self, terms: Sequence[str], numbers: Sequence[int],
               keys: np.ndarray | None = None) -> None:
        """Terms just placed into the table too (``keys``: theirs, if known)."""
        if self.table is not None and len(numbers):
            self.table.add(self.table.keys_of(terms) if keys is None else keys, numbers)

    def _place(self, term: str, stored_id: int | None = None) -> int:
        """Number ``term`` (not in memory), with its store id (None: a term never seen
        before, which takes the next one); ``_enter`` it after."""
        if stored_id is None:
            stored_id = self.next_stored
            self.next_stored += 1
        else:
            self.reserve(stored_id + 1)
        if self._free:
            number = self._free.pop()
            self.terms[number] = term
        else:
            number = len(self.terms)
            self.terms.append(term)
            if number >= len(self.stored):
                capacity = max(1024, number + number // 4 + 1)
                for name in ("stored", "hashes", "hashed"):
                    enlarge(self, name, capacity)
        self.stored[number] = stored_id
        self.hashed[number] = False
        self.ids[term] = number
        return number

    def number_missing(self, terms: Sequence[str], positions: list[int],
                       keys: np.ndarray | None = None) -> list[int]:
        """The numbers of the terms of ``terms`` at ``positions`` (in that order), which the
        caller did not find: each is looked up again (a term brought back meanwhile has one),
        else numbered as new.  ``keys``: the keys of ``terms`` in the table, if known."""
        get, numbers, placed = self.ids.get, [], []
        for position in positions:
            term = terms[position]
            number = get(term)
            if number is None:
                number = self._place(term)
                placed.append(len(numbers))
            numbers.append(number)
        if placed:
            self._enter([terms[positions[at]] for at in placed],
                        [numbers[at] for at in placed],
                        None if keys is None else keys[[positions[at] for at in placed]])
        return numbers

    def restore(self, stored_id: int, term: str) -> int:
        """Bring back a stored term (id ``stored_id``); its number."""
        found = self.ids.get(term)
        if found is not None:
            return found
        number = self._place(term, stored_id)
        self._enter([term], [number])
        return number

    def restore_many(self, stored_ids: Sequence[int], terms: Sequence[str]) -> list[int]:
        """``restore`` of each ``(stored id, term)`` pair, in order: their numbers.  Rows of
        terms all new to memory, each once, with no number free (what a start-up or a
        recall brings back) are numbered in one pass and their arrays written at once;
        other rows go one by one."""
        numbers = list(map(self.ids.get, terms))
        if None not in numbers:
            return numbers
        if self._free or not numbers.count(None) == len(terms) == len(set(terms)):
            placed = []
            for position, (stored_id, term) in enumerate(zip(stored_ids, terms, strict=True)):
                number = self.ids.get(term)
                if number is None:
                    number = self._place(term, stored_id)
                    placed.append(position)
                numbers[position] = number
            self._enter([terms[position] for position in placed],
                        [numbers[position] for position in placed])
            return numbers
        first = len(self.terms)
        numbers = list(range(first, first + len(terms)))
        self.ids.update(zip(terms, numbers, strict=True))
        self.terms.extend(terms)
        capacity = len(self.stored)
        while len(self.terms) > capacity:  # through the sizes that ``_place`` grows to
            capacity = max(1024, capacity + capacity // 4 + 1)
        if capacity > len(self.stored):
            for name in ("stored", "hashes", "hashed"):
                enlarge(self, name, capacity)
        self.stored[first:len(self.terms)] = stored_ids
        self.hashed[first:len(self.terms)] = False
        self.reserve(max(stored_ids) + 1)
        self._enter(terms, numbers)
        return numbers

    def reserve(self, next_stored: int) -> None:
        """Store ids below ``next_stored`` are taken (by terms restored later, or left in
        the store): new terms get ids from ``next_stored`` on."""
        self.next_stored = max(self.next_stored, next_stored)

    def forget(self, numbers: list[int]) -> tuple[list[int], list[str]]:
        """Drop the terms of ``numbers`` from memory (their store ids stay taken) and give
        their numbers back; those that named a term (the others were free already), and
        their terms."""
        terms, ids = self.terms, self.ids
        dropped, names = [], []
        for number in numbers:
            term = terms[number]
            if term:
                del ids[term]
                terms[number] = ""
                dropped.append(number)
                names.append(term)
        self.stored[dropped] = 0
        self._free.extend(dropped)
        if self.table is not None:
            self.table.remove(names)
        return dropped, names

    def hashes_of(self, numbers: list[int]) -> np.ndarray:
        """The item hashes of the terms numbered ``numbers``: each term is hashed (SHA-1)
        the first time it is asked for, not in every article that names it.  Compiled where
        the package was built with a C compiler (``kernels.known_hashes`` reads the known
        ones and names the others)."""
        if kernels is not None:
            known = np.empty(len(numbers), dtype=np.uint32)
            unknown = kernels.known_hashes(numbers, self.hashes, self.hashed, known)
            if unknown:
                known[unknown] = self._hash([numbers[position] for position in unknown])
            return known
        at = np.asarray(numbers, dtype=np.int64)
        fresh = at[~self.hashed[at]]
        if fresh.size:
            self._hash(fresh.tolist())
        return self.hashes[at]

    def _hash(self, numbers: list[int]) -> np.ndarray:
        """Hash the terms numbered ``numbers`` (none hashed yet) and keep their hashes."""
        names = [self.terms[number] for number in numbers]
        if kernels is not None:
            # A term is a shingle of one token: one compiled pass, in order, with the CPU's
            # SHA instructions where it has them (Python's SHA-1 and the finalizer's numpy
            # steps took most of this method's time).
            values = np.frombuffer(kernels.shingle_hashes(names, 1), dtype=np.uint32)
        else:
            values = item_hashes([name.encode() for name in names])
        self.hashes[numbers] = values
        self.hashed[numbers] = True
        return values

    def stored_ids(self, numbers: np.ndarray | list[int]) -> np.ndarray:
        """The store ids of the terms numbered ``numbers`` (0 for 0, the padding)."""
        return self.stored[numbers]

    def numbers_by_stored(self, size: int) -> np.ndarray:
        """A table of the terms' numbers by store id, at least ``size`` long: -1 for a term
        not in memory, 0 for 0 (the padding)."""
        numbered = np.flatnonzero(self.stored[:len(self.terms)])
        table = np.full(max(size, self.next_stored), -1, dtype=np.int64)
        table[self.stored[numbered]] = numbered
        table[0] = 0
        return table

    @property
    def seen(self) -> int:
        """How many terms have had a store id since the store began."""
        return self.next_stored - 1

    def __len__(self) -> int:
        """How far the numbers go (the statistics' arrays are at least that long)."""
        return len(self.terms)


class TermStatistics:
    """Online document frequencies with a prior from general English.

    ``idf(t) = ln((N + N0) / (df(t) + N0 * p0(t) + 0.5))`` where ``p0`` is the prior share of
    documents containing ``t`` and ``N0`` how many documents the prior is worth.  With an
    empty store it is the prior alone; after ``N >> N0`` articles the observed counts rule.
    Counts are kept per stem; the prior is looked up on the surface word the stem came from.

    Both are arrays indexed by the vocabulary's term ids: an article's terms are looked up
    once (``ids_of``), and learning, weighing and counting them are then
    array operations, where dictionaries keyed by name took five lookups a term of every
    article.
    """

    # In ``_prior``: no prior learned for the term yet (a prior is never 0: see
    # ``prior_document_fraction``).
    UNKNOWN = 0.0

    def __init__(self, prior_docs: float, vocabulary: Vocabulary | None = None):
        self.prior_docs = prior_docs
        self.documents = 0
        self.vocabulary = vocabulary or Vocabulary()
        self._frequency = np.zeros(0, dtype=np.int32)
        self._prior = np.zeros(0, dtype=np.float64)
        # The id of the newest article counted with each term (``add_document``).
        self._last_article = np.zeros(0, dtype=np.int64)
        # Where terms that are not in memory are looked up by name (``recall``), those that
        # ``left_in_store`` may hold: the terms left in the store (``forget_unseen_since``,
        # or a restart that read only the window's terms).
        self.recall: Callable[[list[str]], list[TermRow]] | None = None
        self.left_in_store = TermsLeftInStore()
        # The names a restart left in the store, while a thread still reads them
        # (``restore_recent``): until they are in ``left_in_store``, every term new to
        # memory is looked up.
        self._left_by_restart: Future[TermsLeftInStore] | None = None
        # The same by store id (a restart's window vectors name their terms by store id).
        self.recall_ids: Callable[[list[int]], list[TermRow]] | None = None
        # The largest article id counted (``add_document``) or restored.
        self.newest_article = 0
        self._fit(len(self.vocabulary))

    def _fit(self, size: int) -> None:
        """Room in the arrays for term ids below ``size``."""
        if size > len(self._frequency):
            capacity = max(size, 1024, len(self._frequency) + len(self._frequency) // 4)
            enlarge(self, "_frequency", capacity)
            enlarge(self, "_prior", capacity)
            enlarge(self, "_last_article", capacity)

    def ids_of(self, terms: list[str], text: str | None = None) -> np.ndarray:
        """The term ids of ``terms``; terms not seen before get ids (and no counts yet).

        A term that is not in memory but in the store (forgotten, or not read at a restart)
        comes back with its stored id, counts and prior first, so that it weighs exactly
        what it would have weighed had it never left.

        ``text``: the same terms separated by single spaces (``TextFeatures.terms``), for
        the compiled table (``TermTable``), which finds them all in one call; only the terms
        it lacks are looked up by name.
        """
        vocabulary = self.vocabulary
        if text is not None and vocabulary.table is not None and kernels is not None:
            numbers, keys, absent = vocabulary.table.look_up(text, len(terms))
            if absent:
                missing = np.flatnonzero(numbers < 0).tolist()
                self._recall([terms[position] for position in missing])
                numbers[missing] = vocabulary.number_missing(terms, missing, keys)
            # Also where the vocabulary grew by another way (a term named before it counts).
            self._fit(len(vocabulary))
            return numbers
        found = list(map(vocabulary.ids.get, terms))
        if None in found:
            missing = [position for position, number in enumerate(found) if number is None]
            self._recall([terms[position] for position in missing])
            for position, number in zip(missing, vocabulary.number_missing(terms, missing),
                                        strict=True):
                found[position] = number
        self._fit(len(vocabulary))
        return np.array(found, dtype=np.int32)

    @property
    def incomplete(self) -> bool:
        """Whether the store holds terms that memory does not (once a restart's names are
        read)."""
        if self._left_by_restart is not None:
            wait([self._left_by_restart])
            self._take_restart_names()
        return bool(self.left_in_store)

    def _recall(self, terms: list[str]) -> None:
        """Bring back from the store those of ``terms`` (none in memory) that it has: a
        quarter of the articles on a full window miss a term or two, and only those that
        may have been left in the store are looked up, not every term of the article."""
        if self.recall is None:
            return
        if self._left_by_restart is not None and not self._take_restart_names():
            asked = list(dict.fromkeys(terms))
        elif self.left_in_store:
            asked = self.left_in_store.among(dict.fromkeys(terms))
        else:
            return
        if asked:
            self._restore_rows(self.recall(asked))

    def _take_restart_names(self) -> bool:
        """Whether the names that a restart left in the store are in ``left_in_store``:
        put there now if they have just been read."""
        future = self._left_by_restart
        if future is None:
            return True
        if not future.done():
            return False
        self._left_by_restart = None
        try:
            self.left_in_store.merge(future.result())
        except Exception as exc:  # a store that cannot be read: the writer's reads tell
            log.warning("the names of the terms left in the store could not be read (%s); "
                        "every term new to memory is looked up in the store", exc)
            self.left_in_store.hold_everything()
        return True

    def prior(self, term: str) -> float:
        term_id = self.vocabulary.ids.get(term)
        if term_id is not None and term_id < len(self._prior):
            learned = float(self._prior[term_id])
            if learned != self.UNKNOWN:
                return learned
        if "_" in term:
            # A phrase is about as rare as its rarer word, and rarer still.
            return min(self.prior(word) for word in term.split("_")) * 0.1
        return prior_document_fraction(term)

    def priors_of(self, ids: np.ndarray, terms: list[str]) -> np.ndarray:
        """The priors of the terms ``terms`` (of ids ``ids``), learned or not."""
        priors = self._prior[ids]
        unknown = np.flatnonzero(priors == self.UNKNOWN)
        for position in unknown.tolist():
            priors[position] = self.prior(terms[position])
        return priors

    def frequency(self, term: str) -> int:
        """How many documents counted contain ``term``."""
        term_id = self.vocabulary.ids.get(term)
        if term_id is None or term_id >= len(self._frequency):
            return 0
        return int(self._frequency[term_id])

    def weights_of(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """``log_tf_idf`` of the terms ``ids`` counted ``counts`` times under the statistics
        as they are, in one compiled pass (``kernels.tf_idf_weights``) where every count is
        positive and every prior learned, as in nearly every article; None otherwise, or
        where the package was built without a C compiler (``term_weights`` then weighs the
        terms the general way)."""
        if kernels is None:
            return None
        weights = np.empty(len(ids))
        general = kernels.tf_idf_weights(
            np.ascontiguousarray(ids, dtype=np.int32),
            np.ascontiguousarray(counts, dtype=np.float64), self._frequency, self._prior,
            float(self.documents + self.prior_docs), float(self.prior_docs), weights)
        return None if general >= 0 else weights

    def frequencies_of(self, ids: np.ndarray) -> np.ndarray:
        return self._frequency[ids]

    def frequencies(self) -> dict[str, int]:
        """The document frequency of every counted term in memory (for checks and tests)."""
        counted = np.flatnonzero(self._frequency[:len(self.vocabulary)])
        terms = self.vocabulary.terms
        return {terms[term_id]: int(self._frequency[term_id]) for term_id in counted.tolist()
                if terms[term_id]}

    def restore(self, documents: int, rows: Iterable[tuple[int, str, int, float]]) -> None:
        """Load persisted ``(id, term, document_frequency, prior)`` rows: every term."""
        self.documents = documents
        self._restore_rows((*row, 0) for row in rows)

    def restore_recent(self, documents: int, next_id: int, rows: Iterable[TermRow],
                       left_in_store: Iterable[str] | Future[TermsLeftInStore]) -> None:
        """Load persisted ``(id, term, document_frequency, prior, last article id)`` rows:
        some of the stored terms, or all of them; the others (``left_in_store``: their
        names, or a filter of them that a thread is still reading) are recalled when they
        are used (``recall``).  Stored ids go up to ``next_id`` (excluded)."""
        self.documents = documents
        self.vocabulary.reserve(next_id)
        self._restore_rows(rows)
        if isinstance(left_in_store, Future):
            self._left_by_restart = left_in_store
        else:
            self.left_in_store.add(left_in_store)

    def _restore_rows(self, rows: Iterable[TermRow]) -> None:
        ids, frequencies, priors, last = array("q"), array("q"), array("d"), array("q")
        rows = iter(rows)
        while chunk := list(islice(rows, RESTORE_CHUNK)):
            term_ids, terms, chunk_frequencies, chunk_priors, chunk_last = zip(*chunk,
                                                                               strict=True)
            ids.extend(self.vocabulary.restore_many(term_ids, terms))
            frequencies.extend(chunk_frequencies)
            priors.extend(chunk_priors)
            last.extend(chunk_last)
        self._fit(len(self.vocabulary))
        at = np.frombuffer(ids, dtype=np.int64)
        self._frequency[at] = np.frombuffer(frequencies, dtype=np.int64)
        self._prior[at] = np.frombuffer(priors, dtype=np.float64)
        self._last_article[at] = np.frombuffer(last, dtype=np.int64)
        if len(last):
            self.newest_article = max(self.newest_article, max(last))

    def last_articles_of(self, ids: np.ndarray) -> np.ndarray:
        return self._last_article[ids]

    def forget_unseen_since(self, article_id: int, held: np.ndarray | None = None) -> int:
        """Drop from memory the terms counted in no article from ``article_id`` on (they stay
        in the store, and ``ids_of`` brings one back when an article uses it again), except
        those that ``held`` marks (by number: the terms of the window's vectors, which hold
        numbers, not names); how many were dropped.

        A stream's vocabulary keeps growing (names, places, rare words): kept whole in memory
        it grows without end, where the window's own vocabulary does not.  Their counts
        must be in the store already: call this between transactions, after counting.
        """
        if self.recall is None:
            return 0
        size = len(self.vocabulary)
        unseen = self._last_article[:size] < article_id
        if held is not None:
            reach = min(size, len(held))
            unseen[:reach] &= ~held[:reach]
        dropped, names = self.vocabulary.forget(np.flatnonzero(unseen).tolist())
        # Their numbers go to new terms, which start uncounted.
        self._frequency[dropped] = 0
        self._prior[dropped] = self.UNKNOWN
        self._last_article[dropped] = 0
        self.left_in_store.add(names)
        return len(dropped)

    def numbers_of_stored(self, stored_ids: np.ndarray) -> np.ndarray:
        """``stored_ids`` (store ids, 0 for padding, any shape) as the numbers of their
        terms in memory, terms not in memory brought back by id (``recall_ids``) first.  A
        store id that the store does not have (a store edited by hand) becomes padding."""
        size = int(stored_ids.max(initial=0)) + 1
        numbers = self.vocabulary.numbers_by_stored(size)[stored_ids]
        absent = numbers < 0
        if absent.any() and self.recall_ids is not None:
            self._restore_rows(self.recall_ids(np.unique(stored_ids[absent]).tolist()))
            numbers = self.vocabulary.numbers_by_stored(size)[stored_ids]
            absent = numbers < 0
        if absent.any():
            log.warning("%d terms of stored vectors are missing from term_stats; they count "
                        "as absent", len(np.unique(stored_ids[absent])))
            numbers[absent] = 0
        return numbers.astype(stored_ids.dtype)

    def learn_priors(self, ids: np.ndarray, terms: Sequence[str], first_words: str,
                     given_at: np.ndarray | None = None, given: np.ndarray | None = None) -> None:
        """Learn the prior of each term of ``ids`` (``terms``) not learned before, from the
        first word that gave it (``first_words``, one per term, as ``TextFeatures`` has them:
        see ``first_word``).

        ``given``: the priors of the terms at positions ``given_at`` (``given_priors``),
        worked out ahead; the others are worked out here.  A phrase has no word of its own:
        its prior follows its words' (``prior``).
        """
        new = np.flatnonzero(self._prior[ids] == self.UNKNOWN)
        if not new.size:
            return
        ahead = ({} if given_at is None or not len(given_at) else
                 dict(zip(given_at.tolist(), given.tolist(), strict=True)))
        words = first_words.split(" ")
        for position in new.tolist():
            word = first_word(terms[position], words[position])
            if word:
                prior = ahead.get(position)
                self._prior[ids[position]] = (prior_document_fraction(word) if prior is None
                                              else prior)

    def add_document(self, ids: np.ndarray, article_id: int = 0) -> None:
        """Count one document (the article ``article_id``) with the terms ``ids`` (each
        once)."""
        self.documents += 1
        if kernels is not None:
            kernels.count_document(np.ascontiguousarray(ids), self._frequency,
                                   self._last_article, article_id)
        else:
            self._frequency[ids] += 1
            # The largest, not the latest: ``recluster`` counts older articles again.
            self._last_article[ids] = np.maximum(self._last_article[ids], article_id)
        self.newest_article = max(self.newest_article, article_id)


# Whether this process gives priors ahead (a worker process, ``give_priors_ahead``), and
# the terms whose prior it has given with an article (``given_priors``).
_giving_priors = False
_priors_given: set[str] = set()
PRIORS_GIVEN_LIMIT = 200_000
_NONE_GIVEN = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64))


def give_priors_ahead() -> None:
    """Make this process (a worker) give priors with the articles it prepares.  The writer's
    own process does not: it works them out itself when it learns them, and the terms it
    gave would only be held twice.

    The English list is loaded now, as the process starts, not with the first article it
    prepares: it takes about 0.2 s, and the writer would wait that long for the first
    source of its first pass."""
    global _giving_priors
    _giving_priors = True
    english_frequencies()


def first_word(term: str, kept: str) -> str:
    """The first word that gave ``term``, from what ``TextFeatures.first_words`` keeps for
    it (``kept``): none (an empty string) for a phrase, whose terms are joined by "_" (no
    word holds one); a term that was its own first word keeps nothing (half of them)."""
    return kept or ("" if "_" in term else term)


def given_priors(terms: list[str], first_words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The priors of an article's terms (with the first word of each, as ``TextFeatures``),
    as ``TermStatistics.learn_priors`` works them out, for the terms this process has not
    given before: ``(positions in terms, priors)``; none outside worker processes.

    Worked out where the article is prepared (a worker process), so that the writer looks
    up in general English only the new terms it was not given; an English lookup costs tens
    of microseconds, and a stream's new names keep coming.  A term given with an article
    that the writer never learns from (a repeat) is worked out there when it comes again.
    """
    if not _giving_priors or not terms:
        return _NONE_GIVEN
    given = _priors_given
    if len(given) > PRIORS_GIVEN_LIMIT:
        given.clear()
    positions = [number for number, (term, word) in enumerate(zip(terms, first_words,
                                                                  strict=True))
                 if word and term not in given]
    given.update(terms[number] for number in positions)
    priors = prior_document_fractions([first_words[number] for number in positions])
    return np.asarray(positions, dtype=np.int32), np.asarray(priors, dtype=np.float64)


def first_surface_words(words: Iterable[str]) -> dict[str, str]:
    """Each content term with the first word (in text order) that stems to it: that word's
    frequency in general English gives the term's prior."""
    first, _terms = _first_words_and_terms(words)
    return first


def _first_words_and_terms(tokens: Iterable[str]) -> tuple[dict[str, str],
                                                          dict[str, str | None]]:
    """``first_surface_words`` of ``tokens``, and the term of each distinct token (None for
    no content word)."""
    distinct = list(dict.fromkeys(tokens))
    terms = list(map(_TERM_OF.get, distinct, repeat("")))
    if "" in terms:
        terms = [term_of(word) if term == "" else term
                 for word, term in zip(distinct, terms, strict=True)]
    # Read backwards, a term's first word is the last one written: it stays.
    first = dict(zip(reversed(terms), reversed(distinct), strict=True))
    first.pop(None, None)
    return first, dict(zip(distinct, terms, strict=True))


def term_weights(terms: list[str], counts: np.ndarray, stats: TermStatistics,
                 ids: np.ndarray | None = None, weights: np.ndarray | None = None
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Log-TF x IDF of each term, unnormalised: ``(terms, weights, ids)`` in the order given,
    terms of no weight left out.  ``ids``: the terms' ids in the statistics, if known;
    ``weights``: what ``stats.weights_of`` gave for them, if it was asked already.

    The class's idf formula, written out for a whole article at once: this runs for every
    article.  The logarithms are ``math.log``'s, so that a weight is the same to the last bit
    whichever way it is computed (ties between terms are broken by name, and must stay ties).
    """
    if ids is None:
        ids = stats.ids_of(terms)
    if weights is None:
        weights = stats.weights_of(ids, counts) if terms else None
    if weights is None:
        positive = counts > 0
        if not positive.all():
            terms = [term for term, keep in zip(terms, positive.tolist(), strict=True) if keep]
            counts, ids = counts[positive], ids[positive]
        if not terms:
            return [], np.zeros(0), ids[:0]
        weights = log_tf_idf(counts, stats.frequencies_of(ids), stats.priors_of(ids, terms),
                             stats.documents + stats.prior_docs, stats.prior_docs)
    # One reduction where nearly every article has no weightless term (a NaN is not above
    # 0 either way).
    if not len(weights) or weights.min() > 0:
        return terms, weights, ids
    weighty = weights > 0
    return ([term for term, keep in zip(terms, weighty.tolist(), strict=True) if keep],
            weights[weighty], ids[weighty])


def log_tf_idf(counts: np.ndarray, frequency: np.ndarray, priors: np.ndarray,
               numerator: float, prior_docs: float) -> np.ndarray:
    """``(1 + log(count)) * log(numerator / (frequency + prior_docs * prior + 0.5))`` of
    each term: compiled where the package was built with a C compiler
    (``kernels.log_tf_idf``, the same operations and the C library's logarithm, as
    ``math.log`` computes it); ``log_tf_idf_python`` is the reference."""
    if kernels is None:
        return log_tf_idf_python(counts, frequency, priors, numerator, prior_docs)
    weights = np.empty(len(counts))
    kernels.log_tf_idf(np.ascontiguousarray(counts, dtype=np.float64),
                       np.ascontiguousarray(frequency, dtype=np.int32),
                       np.ascontiguousarray(priors, dtype=np.float64),
                       float(numerator), float(prior_docs), weights)
    return weights


def log_tf_idf_python(counts: np.ndarray, frequency: np.ndarray, priors: np.ndarray,
                      numerator: float, prior_docs: float) -> np.ndarray:
    ratio = numerator / (frequency.astype(np.float64) + prior_docs * priors + 0.5)
    log = math.log
    return (1.0 + np.fromiter(map(log, counts.tolist()), dtype=np.float64,
                              count=len(counts))) * np.fromiter(
        map(log, ratio.tolist()), dtype=np.float64, count=len(counts))


def strongest(terms: list[str], values: np.ndarray, limit: int) -> list[int]:
    """The positions of the ``limit`` largest values, largest first, equal values in order of
    their terms: ``sorted`` by ``(-value, term)``, cut at ``limit``, but only the few values
    that can make the cut are sorted.  Compiled where the package was built with a C
    compiler (``kernels.strongest``); ``strongest_python`` is the reference."""
    if kernels is None:
        return strongest_python(terms, values, limit)
    return kernels.strongest(np.ascontiguousarray(values, dtype=np.float64),
                             terms if type(terms) is list else list(terms), limit)


def strongest_python(terms: list[str], values: np.ndarray, limit: int) -> list[int]:
    if limit <= 0:
        return []
    if limit < len(values):
        cut = np.partition(values, len(values) - limit)[len(values) - limit]
        contenders = np.flatnonzero(values >= cut).tolist()
    else:
        contenders = range(len(values))
    ranked = values.tolist()
    return sorted(contenders, key=lambda i: (-ranked[i], terms[i]))[:limit]


def l2_norm(values: list[float]) -> float:
    """The Euclidean length of ``values``, summed in Python in the order given, as stored
    vectors and salient sets always were (numpy's pairwise sum can differ in the last bit)."""
    return math.sqrt(sum(map(operator.mul, values, values)))


def normalised_positions(terms: list[str], weights: np.ndarray,
                         limit: int = 0) -> tuple[Sequence[int], list[float]]:
    """The terms of an article's vector, as positions in ``terms``, with their L2-normalised
    weights: only the ``limit`` strongest (strongest first) when ``limit`` > 0, else all in
    the order given; nothing when every weight is 0."""
    if 0 < limit < len(weights):
        chosen: Sequence[int] = strongest(terms, weights, limit)
        kept = weights[chosen].tolist()
    else:
        chosen, kept = range(len(weights)), weights.tolist()
    norm = l2_norm(kept)
    if not norm:
        return [], []
    return chosen, [weight / norm for weight in kept]


def salient_terms(terms: list[str], weights: np.ndarray, titles: Sequence[str],
                  limit: int, titles_weighted: bool = False) -> tuple[str, ...]:
    """Title terms (the first ``limit`` of ``titles``, in its order, that are among
    ``terms``) plus the strongest TF-IDF terms, ``limit`` in all at most, sorted.
    ``titles_weighted``: the caller knows every title term is among ``terms`` (a set of
    the hundred-odd terms to find them cost as much as the rest of the choice)."""
    if titles_weighted:
        chosen = list(titles[:limit])
    else:
        weighted = set(terms)
        chosen = [t for t in titles if t in weighted][:limit]
    if not len(weights):
        return tuple(sorted(chosen))
    # Ranked by the weights normalised over every term, as salient sets always were (the
    # division can make two weights equal, and then the name decides).
    norm = l2_norm(weights.tolist())
    values = weights / norm if norm else weights
    room = limit - len(chosen)
    if room > 0:
        # ``strongest`` gives each term once; only the title terms can be there already.
        taken = set(chosen)
        chosen += [term for term in map(terms.__getitem__,
                                        strongest(terms, values, limit + len(chosen)))
                   if term not in taken][:room]
    return tuple(sorted(chosen))


class Signer:
    """Builds MinHash signatures of many sets at once with one fixed set of permutations.

    The values are exactly those of datasketch's ``MinHash`` (SHA-1 32-bit hashes, the
    ``affine32`` permutations of seed ``MINHASH_SEED``), computed for a whole batch of sets
    in one numpy pass instead of one ``MinHash`` object per set.  A signature is a row of
    ``num_perm`` uint32 values; ``to_bytes`` stores it in ``LeanMinHash``'s format.
    """

    def __init__(self, num_perm: int):
        self.num_perm = num_perm
        a, b = affine32_permutations(num_perm, MINHASH_SEED)
        # Columns, so that one permutation's values over all items lie together in memory.
        self._a = a[:, None].copy()
        self._b = b[:, None].copy()
        self.header = lean_minhash_header(num_perm, MINHASH_SEED)

    def sign(self, item_sets: list[Iterable[bytes]]) -> np.ndarray:
        """One signature row per set; an empty set is signed as the set of one empty item."""
        sets = [list(items) for items in item_sets]
        sizes = [len(items) for items in sets]
        hashed = item_hashes([item for items in sets for item in items])
        return self.sign_hashed(np.split(hashed, np.cumsum(sizes)[:-1]) if sets else [])

    def sign_shingles(self, token_lists: list[list[str]], size: int) -> np.ndarray:
        """One signature row per list of tokens: that of its word ``size``-grams
        (``shingle_hashes``)."""
        return self.sign_hashed([shingle_hashes(tokens, size) for tokens in token_lists])

    def sign_hashed(self, hash_sets: list[np.ndarray]) -> np.ndarray:
        """One signature row per set given by its items' hashes (``item_hashes``); an empty
        set is signed as the set of one empty item."""
        sets = [hashes if len(hashes) else _EMPTY_ITEM_HASH for hashes in hash_sets]
        rows = np.empty((len(sets), self.num_perm), dtype=np.uint32)
        # Sets are signed in groups of about SIGN_GROUP_ITEMS items, which bounds the
        # (num_perm x items) working array at a few megabytes (and the compiled kernel's
        # copy of the group's hashes: a feed may bring thousands of articles at once).
        start = 0
        while start < len(sets):
            end, items = start, 0
            while end < len(sets) and (end == start or items + len(sets[end]) <= SIGN_GROUP_ITEMS):
                items += len(sets[end])
                end += 1
            if kernels is not None:
                # The same rows as numpy's, in one pass and no working array.
                group = sets[start:end]
                kernels.min_hashes(self._a, self._b,
                                   np.concatenate(group).astype(np.uint32, copy=False),
                                   np.cumsum([len(hashes) for hashes in group], dtype=np.int64),
                                   rows[start:end])
            else:
                rows[start:end] = self._sign_group(sets[start:end])
            start = end
        return rows

    def sign_one(self, items: list[bytes]) -> np.ndarray:
        """``sign([items])[0]``, without the grouping that a batch needs."""
        return self.sign_hashes(item_hashes(items) if items else _EMPTY_ITEM_HASH)

    def sign_hashes(self, hashed: np.ndarray) -> np.ndarray:
        """The signature of one set given by its items' hashes (``item_hashes``, at least
        one): the salient set of each article is signed alone, when the statistics have
        chosen its terms, from hashes its terms keep (``Vocabulary.hashes_of``).  Compiled
        where the package was built with a C compiler (``kernels.min_hashes``)."""
        if kernels is not None:
            signature = np.empty(self.num_perm, dtype=np.uint32)
            kernels.min_hashes(self._a, self._b, np.ascontiguousarray(hashed, dtype=np.uint32),
                               None, signature)
            return signature
        return self.sign_hashes_numpy(hashed)

    def sign_hashes_numpy(self, hashed: np.ndarray) -> np.ndarray:
        permuted = self._a * hashed[None, :]
        permuted += self._b
        return permuted.min(axis=1)

    def _sign_group(self, sets: list[np.ndarray]) -> np.ndarray:
        sizes = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
        hashed = np.concatenate(sets)
        permuted = self._a * hashed[None, :]  # wraps modulo 2^32, as datasketch's does
        permuted += self._b
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        return np.minimum.reduceat(permuted, starts, axis=1).T

    def to_bytes(self, signature: np.ndarray) -> bytes:
        return self.header + np.asarray(signature, dtype=np.uint32).tobytes()

    def from_bytes(self, data: bytes) -> np.ndarray:
        """A stored signature; one written with other permutation settings is refused."""
        if len(data) != len(self.header) + 4 * self.num_perm or \
                not data.startswith(self.header):
            raise ValueError("the stored signature was made with other MinHash settings "
                             f"(expected {self.num_perm} affine32 values of seed "
                             f"{MINHASH_SEED}); run `aggregator recluster`")
        return np.frombuffer(data, dtype=np.uint32, offset=len(self.header))

    def from_bytes_many(self, stored: list[bytes]) -> np.ndarray:
        """Stored signatures as the rows of one array: the window's at a start-up, or a few
        that the clusterer reads back (a story's canonical, most often one).  Each checked
        and copied by the compiled ``signatures_from_bytes`` where the package was built
        with a C compiler; ``from_bytes_many_numpy`` is the same in numpy, and the
        reference, which decides what the kernel refuses (it raises for a signature made
        with other settings, and reads a ``bytearray`` as ``bytes``)."""
        if kernels is None:
            return self.from_bytes_many_numpy(stored)
        rows = np.empty((len(stored), self.num_perm), dtype=np.uint32)
        if kernels.signatures_from_bytes(stored, self.header, rows) >= 0:
            return self.from_bytes_many_numpy(stored)
        return rows

    def from_bytes_many_numpy(self, stored: list[bytes]) -> np.ndarray:
        """``from_bytes_many`` without the compiled kernels."""
        size = len(self.header) + 4 * self.num_perm
        if len(stored) <= FEW_SIGNATURES:
            # Checked one by one: the array operations below cost several times more than
            # the copy itself for a signature or two.
            for data in stored:
                if len(data) != size or not data.startswith(self.header):
                    self.from_bytes(data)  # raises
            start = len(self.header)
            values = bytearray().join([memoryview(data)[start:] for data in stored])
            return np.frombuffer(values, dtype=np.uint32).reshape(len(stored), self.num_perm)
        if set(map(len, stored)) - {size}:
            self.from_bytes(next(data for data in stored if len(data) != size))  # raises
        joined = b"".join(stored)
        matrix = np.frombuffer(joined, dtype=np.uint8).reshape(len(stored), size)
        headers = matrix[:, :len(self.header)]
        if not (headers == np.frombuffer(self.header, dtype=np.uint8)).all():
            self.from_bytes(next(data for data in stored if not data.startswith(self.header)))
        return np.ascontiguousarray(matrix[:, len(self.header):]).view(np.uint32)


def affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of datasketch's ``affine32`` permutations ``h -> a * h + b mod 2^32``,
    drawn as ``MinHash(num_perm, seed, scheme="affine32")`` draws them (``a`` odd)."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# ``LeanMinHash.serialize``'s layout for the affine schemes: seed, negated length, scheme code
# (1 for affine32), then the values, native byte order and alignment.
_AFFINE32_CODE = 1


def lean_minhash_header(num_perm: int, seed: int) -> bytes:
    """What ``LeanMinHash.serialize`` writes before the values of an ``affine32`` signature."""
    layout = f"@qiB{num_perm}I"
    packed = struct.pack(layout, seed, -num_perm, _AFFINE32_CODE, *([0] * num_perm))
    return packed[:len(packed) - 4 * num_perm]


def lean_minhash(signature: np.ndarray):
    """A signature as a datasketch ``LeanMinHash`` (for datasketch's own indexes)."""
    from datasketch import LeanMinHash  # only the datasketch backend needs its objects

    return LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)


def item_hashes(items: list[bytes]) -> np.ndarray:
    """The 32-bit hash that datasketch's ``MinHash`` gives each item (the first four bytes
    of its SHA-1, little-endian) after the ``affine32`` scheme's finalizer."""
    digests = b"".join([sha1(item).digest()[:4] for item in items])
    return _fmix32(np.frombuffer(digests, dtype="<u4").astype(np.uint32))


_FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


def _fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 finalizer that datasketch's ``affine32`` scheme applies first."""
    s1, m1, s2, m2 = _FMIX
    values = values ^ (values >> s1)
    values = values * m1
    values = values ^ (values >> s2)
    values = values * m2
    return values ^ (values >> s1)


# An empty set is signed as the set of one empty item (a text of no words still gets an
# ordinary signature, not one of 2^32 - 1 everywhere that every empty text would share).
_EMPTY_ITEM_HASH = item_hashes([b""])


@dataclass(frozen=True)
class TextFeatures:
    """What an article's text gives before any statistics are consulted.

    Compact, because prepared articles wait in memory (often a thousand or more) until the
    writer places them: the terms as one string and their counts as an array take a fifth
    of the memory of a dictionary of strings and floats.
    """

    terms: str  # the content terms, separated by single spaces, in the order counted
    # The first word (in text order) that gave each term, in the order of ``terms``, or
    # nothing (an empty string) where it is the term itself or the term is a phrase
    # (``first_word``).  Its frequency in general English gives the prior.
    first_words: str
    counts: np.ndarray  # their weighted counts
    # The title's content terms, each once, in title order, separated by single spaces (a
    # string takes a tenth of the memory of a set of the same strings).
    title_terms: str
    shingle_signature: np.ndarray
    word_count: int
    # Priors given ahead (``given_priors``): positions in terms, and values.
    prior_positions: np.ndarray
    priors: np.ndarray

    @classmethod
    def of(cls, first_words: dict[str, str], term_counts: dict[str, float],
           title_terms: Sequence[str], shingle_signature: np.ndarray,
           word_count: int) -> TextFeatures:
        terms = list(term_counts)
        words = list(map(first_words.get, terms, repeat("")))
        kept = ["" if word == term else word for term, word in zip(terms, words, strict=True)]
        return cls(" ".join(terms), " ".join(kept),
                   np.fromiter(term_counts.values(), dtype=np.float64, count=len(terms)),
                   " ".join(title_terms), shingle_signature, word_count,
                   *given_priors(terms, words))

    @property
    def term_list(self) -> list[str]:
        return self.terms.split(" ") if self.terms else []

    @property
    def title_term_list(self) -> list[str]:
        return self.title_terms.split(" ") if self.title_terms else []

    @property
    def first_word_list(self) -> list[str]:
        return [first_word(term, kept) for term, kept in
                zip(self.term_list, self.first_words.split(" "), strict=True)] \
            if self.terms else []

    @property
    def term_counts(self) -> dict[str, float]:
        return dict(zip(self.term_list, self.counts.tolist(), strict=True))


@dataclass(frozen=True)
class Fingerprint:
    """What clustering needs of an article, and what the store keeps to rebuild the index."""

    # The terms the article counts in the statistics, as ``articles.counted_terms`` holds
    # them (separated by single spaces, in the order counted), and their vocabulary ids.
    counted_terms: str
    term_ids: np.ndarray
    salient: tuple[str, ...]
    shingle_signature: np.ndarray
    salient_signature: np.ndarray
    word_count: int
    # Log-TF x IDF of every term of some weight, under the statistics the fingerprint was
    # made with (``term_weights``), and their vocabulary ids.
    weighted_terms: list[str]
    weights: np.ndarray
    weighted_ids: np.ndarray


def text_features(articles: list[tuple[str, str]], signer: Signer, shingle_size: int,
                  title_weight: float, phrase_weight: float = 0.0) -> list[TextFeatures]:
    """Features of ``(title, text)`` pairs that do not depend on the statistics.

    Each text is tokenized once; the shingle signatures of the whole batch are built in one
    call.
    """
    partial = []
    for title, text in articles:
        title_tokens, text_tokens = tokenize(title), tokenize(text)
        partial.append((*terms_of_tokens(title_tokens, text_tokens, title_weight,
                                         phrase_weight),
                        title_tokens + text_tokens, len(text_tokens)))
    signatures = signer.sign_shingles([p[3] for p in partial], shingle_size)
    return [TextFeatures.of(words, counts, titles, signature, word_count)
            for (words, counts, titles, _tokens, word_count), signature
            in zip(partial, signatures, strict=True)]


def terms_of_tokens(title_tokens: list[str], text_tokens: list[str], title_weight: float,
                    phrase_weight: float = 0.0) -> tuple[dict[str, str], dict[str, float],
                                                         list[str]]:
    """An article's terms from its tokens: the first word of each (``first_surface_words``),
    their weighted counts (``_content_terms``) and the title's terms, each once, in title
    order (where a title has more than the salient terms hold, the first are kept)."""
    first_words, term_by_token = _first_words_and_terms(title_tokens + text_tokens)
    title_terms = dict.fromkeys(map(term_by_token.__getitem__, title_tokens))
    title_terms.pop(None, None)
    counts = (_content_terms(title_tokens, text_tokens, title_weight, phrase_weight)
              if phrase_weight else
              _term_counts(title_tokens, text_tokens, title_weight, term_by_token))
    return first_words, counts, list(title_terms)


def fingerprint_of(features: TextFeatures, stats: TermStatistics, signer: Signer,
                   salient_limit: int) -> Fingerprint:
    """The fingerprint of one article under the statistics as they are now.

    The statistics learn the prior of the article's new words first; the salient terms are
    chosen by the weights that follow.
    """
    terms = features.term_list
    ids = stats.ids_of(terms, features.terms)
    # On a full window three articles in four bring no term new to memory: the compiled
    # weighing finds that every prior is learned as it reads them, where a check of its
    # own first cost a numpy gather of priors that were out of every cache.
    weights = stats.weights_of(ids, features.counts) if terms else None
    if weights is None:
        stats.learn_priors(ids, terms, features.first_words, features.prior_positions,
                           features.priors)
    weighted, weights, weighted_ids = term_weights(terms, features.counts, stats, ids, weights)
    # Every title term is counted (``terms_of_tokens``): where no term was left out for
    # want of weight, each is among the weighted.
    salient = salient_terms(weighted, weights, features.title_term_list, salient_limit,
                            titles_weighted=len(weighted) == len(terms))
    if salient:
        vocabulary = stats.vocabulary
        salient_signature = signer.sign_hashes(vocabulary.hashes_of(
            list(map(vocabulary.ids.__getitem__, salient))))
    else:
        salient_signature = signer.sign_one([])
    return Fingerprint(counted_terms=features.terms, term_ids=ids, salient=salient,
                       shingle_signature=features.shingle_signature,
                       salient_signature=salient_signature, word_count=features.word_count,
                       weighted_terms=weighted, weights=weights, weighted_ids=weighted_ids)


def fingerprint_batch(articles: list[tuple[str, str]], stats: TermStatistics, signer: Signer,
                      shingle_size: int, title_weight: float,
                      salient_limit: int, phrase_weight: float = 0.0) -> list[Fingerprint]:
    """Fingerprints of ``(title, text)`` pairs, all under the statistics as they are now."""
    return [fingerprint_of(features, stats, signer, salient_limit)
            for features in text_features(articles, signer, shingle_size, title_weight,
                                          phrase_weight)]
