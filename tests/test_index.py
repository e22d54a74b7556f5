"""The compact index against datasketch: same signatures, same candidates, same decisions."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import wordfreq
from conftest import requires_kernels
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

from aggregator import fingerprint as fingerprint_module
from aggregator import index as index_module
from aggregator import store as store_module
from aggregator.cluster import ClusterArticle, Clusterer
from aggregator.config import ClusteringSettings
from aggregator.errors import StoreError
from aggregator.fingerprint import (
    FEW_SIGNATURES,
    MINHASH_SCHEME,
    MINHASH_SEED,
    SIGN_GROUP_ITEMS,
    EnglishFrequencies,
    Signer,
    TermStatistics,
    Vocabulary,
    affine32_permutations,
    fingerprint_batch,
    item_hashes,
    lean_minhash,
    shingle_hashes_python,
    shingles,
    text_features,
)
from aggregator.index import (
    KEY_DTYPE,
    BandIndex,
    DatasketchIndex,
    RecentBuckets,
    RecentTable,
    band_matches,
    band_matches_numpy,
    lsh_parameters,
    sort_part,
    sort_part_numpy,
    sorted_stably,
    split_by_part,
    split_by_part_numpy,
)
from aggregator.native import kernels
from aggregator.store import MIGRATIONS, Store, pack_vector, unpack_vectors, unpack_vectors_numpy

SIGNER = Signer(128)


def datasketch_minhash(items: list[bytes]) -> MinHash:
    minhash = MinHash(num_perm=128, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
    for item in items or [b""]:
        minhash.update(item)
    return minhash


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("sizes", [[0], [1], [3, 0, 7], [SIGN_GROUP_ITEMS + 5, 2],
                                   [500] * 40])
def test_bulk_signatures_equal_datasketch_minhash_and_its_serialisation(sizes, compiled,
                                                                        monkeypatch):
    if compiled and kernels is None:
        pytest.skip("built without a C compiler")
    if not compiled:
        monkeypatch.setattr(fingerprint_module, "kernels", None)
    sets = [[f"{n}-{i}".encode() for i in range(n)] for n in sizes]
    rows = SIGNER.sign(sets)
    for items, row in zip(sets, rows, strict=True):
        # One set alone (``sign_one``, as a salient set is signed) gives the same row.
        assert (SIGNER.sign_one(items) == row).all()
    for items, row in zip(sets, rows, strict=True):
        expected = datasketch_minhash(items)
        assert (row == expected.hashvalues).all()
        lean = LeanMinHash(expected)
        buffer = bytearray(lean.bytesize())
        lean.serialize(buffer)
        assert SIGNER.to_bytes(row) == bytes(buffer)
        assert (SIGNER.from_bytes(bytes(buffer)) == row).all()


# Shingles of every length SHA-1 pads differently: one 64-byte block with room for the
# length (up to 55 bytes), a second block for the length (56-63), two blocks and more.
LONG_WORDS = " ".join("x" * n for n in (17, 18, 19, 55, 56, 60, 63, 64, 65, 130))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(("title", "text"), [
    ("", ""),
    ("Lavrov", ""),  # fewer words than a shingle: one item of them all
    ("", "two words"),
    ("Lavrov says talks went well", "Talks went well, talks went well, Lavrov said."),
    ("Élan naïve café", "日本 の ニュース — Russia’s “talks” in Genève"),
    ("Long words", LONG_WORDS),
])
def test_shingle_signatures_equal_datasketch_minhash_of_the_shingles(title, text, compiled,
                                                                     monkeypatch):
    if compiled and kernels is None:
        pytest.skip("built without a C compiler")
    if not compiled:
        monkeypatch.setattr(fingerprint_module, "kernels", None)
    [features] = text_features([(title, text)], SIGNER, 3, 3.0)
    expected = datasketch_minhash(sorted(shingles(f"{title}\n{text}", 3)))
    assert features.shingle_signature.tolist() == expected.hashvalues.tolist()


@requires_kernels
@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_shingle_hashes_are_those_of_each_shingle_in_order(seed):
    generator = np.random.default_rng(seed)
    words = ["a", "the", "élan", "日本", "Russia’s", "x" * 55, "y" * 56, "z" * 64, "w" * 200]
    for _ in range(300):
        tokens = [str(word) for word in generator.choice(words, generator.integers(0, 12))]
        size = int(generator.integers(1, 6))
        runs = [tokens] if 0 < len(tokens) < size else [
            tokens[i:i + size] for i in range(len(tokens) - size + 1)]
        expected = item_hashes([" ".join(run).encode() for run in runs])
        compiled = kernels.shingle_hashes(tokens, size)
        assert np.frombuffer(compiled, dtype=np.uint32).tolist() == expected.tolist()
        # The CPU's SHA instructions (where it has them) and the portable SHA-1 agree.
        assert kernels.shingle_hashes(tokens, size, True) == compiled
        # The reference hashes each distinct shingle once.
        assert sorted(set(expected.tolist())) == sorted(
            shingle_hashes_python(tokens, size).tolist())


@requires_kernels
@pytest.mark.parametrize(("arguments", "error", "message"), [
    ((SIGNER._a, SIGNER._b[:5], np.ones(3, dtype=np.uint32), None,
      np.empty(128, dtype=np.uint32)), ValueError, "a and b differ in length"),
    ((SIGNER._a, SIGNER._b, np.ones(3, dtype=np.uint32), None,
      np.empty(64, dtype=np.uint32)), ValueError, "out is not one row"),
    ((SIGNER._a, SIGNER._b, np.ones(0, dtype=np.uint32), None,
      np.empty(128, dtype=np.uint32)), ValueError, "a set is empty"),
    ((SIGNER._a, SIGNER._b, np.ones(3, dtype=np.uint32), np.array([2, 2, 3]),
      np.empty((3, 128), dtype=np.uint32)), ValueError, "a set is empty"),
    ((SIGNER._a, SIGNER._b, np.ones(3, dtype=np.uint32), np.array([1, 2]),
      np.empty((2, 128), dtype=np.uint32)), ValueError, "does not end with hashes"),
    ((SIGNER._a, SIGNER._b, np.ones(3, dtype=np.int64), None,
      np.empty(128, dtype=np.uint32)), TypeError, "hashes"),
])
def test_the_compiled_min_hashes_refuse_what_they_cannot_sign(arguments, error, message):
    with pytest.raises(error, match=message):
        kernels.min_hashes(*arguments)


@requires_kernels
def test_the_compiled_hashes_of_known_terms_are_the_vocabularys():
    vocabulary = Vocabulary()
    numbers = [vocabulary.id(term) for term in ("lavrov", "geneva", "talks", "ceasefire")]
    out = np.empty(4, dtype=np.uint32)
    assert kernels.known_hashes(numbers, vocabulary.hashes, vocabulary.hashed, out) == [
        0, 1, 2, 3]
    expected = item_hashes([b"lavrov", b"geneva", b"talks", b"ceasefire"]).tolist()
    # The vocabulary hashes the terms named (a term's hash is kept from then on) ...
    assert vocabulary.hashes_of(numbers[:2]).tolist() == expected[:2]
    assert kernels.known_hashes(numbers, vocabulary.hashes, vocabulary.hashed, out) == [2, 3]
    assert out[:2].tolist() == expected[:2]
    # ... and reads those it holds, the same set twice over included.
    assert vocabulary.hashes_of(numbers[::-1] + numbers[2:]).tolist() == \
        expected[::-1] + expected[2:]
    assert kernels.known_hashes(numbers, vocabulary.hashes, vocabulary.hashed, out) == []
    assert out.tolist() == expected
    # Terms hashed whole, in order: not ASCII, a phrase (two words), a repeat.
    others = ["café", "новости", "new_york", "東京", "café"]
    assert vocabulary.hashes_of([vocabulary.id(term) for term in others]).tolist() == \
        item_hashes([term.encode() for term in others]).tolist()
    for arguments, error, message in [
        (([numbers[0], len(vocabulary.hashes)], np.empty(2, dtype=np.uint32)), IndexError,
         "number .* of term 1 is outside the vocabulary"),
        (([numbers[0], "a"], np.empty(2, dtype=np.uint32)), TypeError, "integer"),
        ((numbers[:2], np.empty(3, dtype=np.uint32)), ValueError, "differ in length"),
        ((7, np.empty(1, dtype=np.uint32)), TypeError, "must be a sequence"),
    ]:
        numbers_given, out = arguments
        with pytest.raises(error, match=message):
            kernels.known_hashes(numbers_given, vocabulary.hashes, vocabulary.hashed, out)


@requires_kernels
@pytest.mark.parametrize(("arguments", "error", "message"), [
    (("a b", 3), TypeError, "tokens must be a list of str"),
    ((["a", 2], 3), TypeError, "token 1 is not a str"),
    ((["a"], 0), ValueError, "size must be at least 1"),
    ((["a", "\udc80"], 1), UnicodeEncodeError, "surrogates"),
    ((["a"],), TypeError, r"takes 2 or 3 arguments \(1 given\)"),
])
def test_the_compiled_shingle_hashes_refuse_what_they_cannot_hash(arguments, error, message):
    with pytest.raises(error, match=message):
        kernels.shingle_hashes(*arguments)


@pytest.mark.parametrize("compiled", [True, False])
def test_salient_signatures_from_the_hashes_terms_keep_equal_datasketch_minhash(compiled,
                                                                                monkeypatch):
    if compiled and kernels is None:
        pytest.skip("built without a C compiler")
    if not compiled:
        monkeypatch.setattr(fingerprint_module, "kernels", None)
    # A salient set is signed from hashes kept per term number; a number given back by a
    # forgotten term and handed to another must not sign the new term with the old hash.
    stats = TermStatistics(prior_docs=10)
    stats.recall = lambda terms: []  # terms may leave memory
    articles = [("Lavrov talks", "lavrov said the talks in geneva went well"),
                ("Geneva talks", "diplomats met in geneva for talks on the ceasefire")]
    first = fingerprint_batch(articles, stats, SIGNER, 3, 3.0, salient_limit=8)
    for print_ in first:
        stats.add_document(print_.term_ids, article_id=1)
    assert stats.forget_unseen_since(2) > 0  # every term leaves; its number is free
    later = [("Ceasefire holds", "the ceasefire holds in the north, officials said")]
    for print_ in first + fingerprint_batch(later, stats, SIGNER, 3, 3.0, salient_limit=8):
        assert print_.salient
        expected = datasketch_minhash([term.encode() for term in print_.salient])
        assert (print_.salient_signature == expected.hashvalues).all()
    vocabulary = stats.vocabulary
    reused = [vocabulary.ids[term] for term in vocabulary.ids]
    assert vocabulary.hashed[reused].all()
    # What a fresh statistics object signs for the same text: the same values.
    fresh = fingerprint_batch(later, TermStatistics(prior_docs=10), SIGNER, 3, 3.0,
                              salient_limit=8)[0]
    assert SIGNER.sign_one([]).tolist() == datasketch_minhash([]).hashvalues.tolist()
    assert fresh.salient_signature.tolist() == datasketch_minhash(
        [term.encode() for term in fresh.salient]).hashvalues.tolist()


def test_a_signature_made_with_other_settings_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="other MinHash settings"):
        Signer(64).from_bytes(SIGNER.to_bytes(SIGNER.sign([[b"a"]])[0]))


@pytest.mark.parametrize("compiled", [True, False])
# Without the kernels read one by one, or at once.
@pytest.mark.parametrize("count", [5, FEW_SIGNATURES + 3])
@pytest.mark.parametrize("bad_at", [0, 2, 4])
@pytest.mark.parametrize("bad", ["other settings", "short", "header altered"])
def test_stored_signatures_are_read_together_and_one_bad_one_refuses_them_all(
        bad, bad_at, count, compiled, monkeypatch):
    if compiled and kernels is None:
        pytest.skip("built without a C compiler")
    if not compiled:
        monkeypatch.setattr(fingerprint_module, "kernels", None)
    rows = SIGNER.sign([[f"{n}".encode()] for n in range(count)])
    stored = [SIGNER.to_bytes(row) for row in rows]
    read = SIGNER.from_bytes_many(stored)
    assert read.dtype == np.uint32 and read.shape == rows.shape and (read == rows).all()
    assert SIGNER.from_bytes_many([]).shape == (0, SIGNER.num_perm)
    read[0, 0] += 1  # a copy of its own, which the caller may change
    if bad == "other settings":
        stored[bad_at] = Signer(64).to_bytes(Signer(64).sign([[b"a"]])[0])
    elif bad == "short":
        stored[bad_at] = stored[bad_at][:-4]
    else:
        stored[bad_at] = bytes([stored[bad_at][0] ^ 1]) + stored[bad_at][1:]
    with pytest.raises(ValueError, match="other MinHash settings"):
        SIGNER.from_bytes_many(stored)
    # A signature in a bytearray (sqlite3 gives bytes) is read as one in bytes.
    stored = [SIGNER.to_bytes(row) for row in rows]
    stored[bad_at] = bytearray(stored[bad_at])
    assert (SIGNER.from_bytes_many(stored) == rows).all()


@requires_kernels
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("count", [0, 1, 7, 300])
def test_the_compiled_band_keys_are_numpys(threshold, count):
    index = BandIndex(threshold, 128)
    generator = np.random.default_rng([count, int(threshold * 100)])
    signatures = generator.integers(0, 2**32, (count, 128), dtype=np.uint32)
    # Half the signatures begin with the largest values: folds of them overflow 64 bits.
    signatures[: count // 2, :8] = 0xFFFFFFFF
    keys = index.band_keys(signatures)
    expected = index.band_keys_numpy(signatures)
    assert keys.dtype == expected.dtype == KEY_DTYPE and keys.shape == (count, index.bands)
    assert keys.tobytes() == expected.tobytes()
    # A matrix laid out by columns (not C-contiguous) gives the same keys.
    assert index.band_keys(np.asfortranarray(signatures)).tobytes() == expected.tobytes()


@requires_kernels
def test_the_compiled_band_keys_refuse_a_matrix_of_another_shape():
    index = BandIndex(0.05, 128)
    signatures = np.zeros((2, 128), dtype=np.uint32)
    for out in (np.empty((3, index.bands), dtype=np.uint32),
                np.empty((2, index.bands + 1), dtype=np.uint32)):
        with pytest.raises(ValueError, match="a key a band"):
            kernels.band_keys(signatures, index.rows, index._band_ids, out)
    with pytest.raises(ValueError, match="fit in a signature"):
        kernels.band_keys(np.zeros((2, 16), dtype=np.uint32), index.rows, index._band_ids,
                          np.empty((2, index.bands), dtype=np.uint32))


@requires_kernels
def test_the_compiled_signature_reader_refuses_a_matrix_of_another_shape():
    stored = [SIGNER.to_bytes(row) for row in SIGNER.sign([[b"a"], [b"b"]])]
    for out in (np.empty((3, SIGNER.num_perm), dtype=np.uint32),
                np.empty(2 * SIGNER.num_perm, dtype=np.uint32)):
        with pytest.raises(ValueError, match="one row a signature"):
            kernels.signatures_from_bytes(stored, SIGNER.header, out)
    with pytest.raises(TypeError, match="out"):
        kernels.signatures_from_bytes(stored, SIGNER.header,
                                      np.empty((2, SIGNER.num_perm), dtype=np.int64))
    # Rows narrower than a stored signature: no item has the length, nothing is written.
    narrow = np.zeros((2, 64), dtype=np.uint32)
    assert kernels.signatures_from_bytes(stored, SIGNER.header, narrow) == 0
    assert not narrow.any()


@pytest.mark.parametrize("keys", [
    [], [7], [3, 1, 2], [5, 5, 5, 5], [2, 1, 2, 1, 0, 2], [0xFFFFFFFF, 0, 0xFFFFFFFF, 1],
    np.random.default_rng(4).integers(0, 50, 2000).tolist(),  # many equal keys
    np.random.default_rng(5).integers(0, 2**32, 5000).tolist(),
])
def test_sorted_stably_is_a_stable_argsort(keys):
    keys = np.asarray(keys, dtype=np.uint64).astype(KEY_DTYPE)
    order = np.argsort(keys, kind="stable")
    got_keys, got_order = sorted_stably(keys)
    assert got_keys.dtype == KEY_DTYPE
    assert got_keys.tolist() == keys[order].tolist()
    assert got_order.tolist() == order.tolist()


# Keys that differ in one 11-bit digit only leave the other passes of the radix sort
# with nothing to do; the top digit holds 10 bits.
PART_SORT_KEYS = [
    [], [7], [3, 1, 2], [5, 5, 5, 5], [2, 1, 2, 1, 0, 2], [0xFFFFFFFF, 0, 0xFFFFFFFF, 1],
    [5 << 11, 3 << 11, 5 << 11, 0], [(v % 4) << 22 | 9 for v in range(40)],
    [(v % 3) << 22 | (v % 5) for v in range(60)],
    np.random.default_rng(4).integers(0, 50, 2000).tolist(),  # many equal keys
    np.random.default_rng(5).integers(0, 2**32, 5000).tolist(),
    (np.random.default_rng(6).integers(0, 64, 3000) << 26).tolist(),  # one part's top bits
]


@requires_kernels
@pytest.mark.parametrize("keys", PART_SORT_KEYS)
def test_the_compiled_part_sort_is_a_stable_argsort(keys):
    keys = np.asarray(keys, dtype=np.uint64).astype(KEY_DTYPE)
    slots = np.random.default_rng(len(keys)).integers(0, 2**31, len(keys)).astype(np.int32)
    order = np.argsort(keys, kind="stable")
    results = []
    for sort in (sort_part, sort_part_numpy):
        # Into the middle of larger arrays, as a bulk load places each part after the last.
        keys_out = np.full(len(keys) + 5, 11, dtype=KEY_DTYPE)
        slots_out = np.full(len(keys) + 5, -1, dtype=np.int32)
        assert sort(keys.copy(), slots.copy(), keys_out, slots_out, 3) == len(keys)
        assert keys_out[3:3 + len(keys)].tolist() == keys[order].tolist()
        assert slots_out[3:3 + len(keys)].tolist() == slots[order].tolist()
        assert keys_out[:3].tolist() == [11] * 3 and keys_out[3 + len(keys):].tolist() == [11] * 2
        results.append((keys_out.tobytes(), slots_out.tobytes()))
    assert results[0] == results[1]


@requires_kernels
@pytest.mark.parametrize("bits", [1, 6, 8])
@pytest.mark.parametrize("keys", PART_SORT_KEYS)
def test_the_compiled_split_by_part_is_numpys(keys, bits):
    keys = np.asarray(keys, dtype=np.uint64).astype(KEY_DTYPE)
    slots = np.random.default_rng(len(keys)).integers(0, 2**31, len(keys)).astype(np.int32)
    compiled, reference = split_by_part(keys, slots, bits), split_by_part_numpy(keys, slots, bits)
    assert len(compiled) == len(reference) == 1 << bits
    for part, ((got_keys, got_slots), (want_keys, want_slots)) in enumerate(
            zip(compiled, reference, strict=True)):
        assert got_keys.dtype == KEY_DTYPE and got_slots.dtype == np.int32
        assert got_keys.tobytes() == want_keys.tobytes()
        assert got_slots.tobytes() == want_slots.tobytes()
        assert ((got_keys >> KEY_DTYPE(32 - bits)) == part).all()
    # Every key once, each part's in the order given.
    order = np.argsort(keys >> KEY_DTYPE(32 - bits), kind="stable")
    assert np.concatenate([k for k, _s in compiled]).tolist() == keys[order].tolist()
    assert np.concatenate([s for _k, s in compiled]).tolist() == slots[order].tolist()


@requires_kernels
def test_the_compiled_split_by_part_refuses_what_it_cannot_split():
    keys, slots = np.array([3, 1, 2], dtype=KEY_DTYPE), np.array([0, 1, 2], dtype=np.int32)
    for bits in (0, 9):
        with pytest.raises(ValueError, match="not 1 to 8"):
            kernels.split_by_part(keys, slots, bits)
    with pytest.raises(ValueError, match="unequal lengths"):
        kernels.split_by_part(keys, slots[:2], 6)
    with pytest.raises(TypeError, match="slots"):
        kernels.split_by_part(keys, slots.astype(np.int64), 6)


@requires_kernels
def test_the_compiled_part_sort_refuses_what_it_cannot_hold():
    keys, slots = np.array([3, 1, 2], dtype=KEY_DTYPE), np.array([0, 1, 2], dtype=np.int32)
    with pytest.raises(ValueError, match="unequal lengths"):
        kernels.sort_pairs(keys, slots, np.empty(4, dtype=KEY_DTYPE),
                           np.empty(3, dtype=np.int32))
    with pytest.raises(ValueError, match="unequal lengths"):
        kernels.sort_pairs(keys, slots[:2], np.empty(3, dtype=KEY_DTYPE),
                           np.empty(3, dtype=np.int32))
    with pytest.raises(TypeError, match="keys_out"):
        kernels.sort_pairs(keys, slots, np.empty(3, dtype=np.int64), np.empty(3, dtype=np.int32))
    with pytest.raises(ValueError, match="overlaps an input"):
        kernels.sort_pairs(keys, slots, keys, np.empty(3, dtype=np.int32))
    shared = np.zeros(5, dtype=np.int32)
    with pytest.raises(ValueError, match="overlaps an input"):
        kernels.sort_pairs(keys, shared[:3], np.empty(3, dtype=KEY_DTYPE), shared[2:])
    assert keys.tolist() == [3, 1, 2] and slots.tolist() == [0, 1, 2]


@requires_kernels
@pytest.mark.parametrize(("keys", "wanted"), [
    ([], [1, 2]),  # an empty part
    ([5], []),  # nothing wanted
    ([5], [4, 5, 6]),
    ([1, 1, 1, 3, 3, 9], [9, 1, 2, 1, 0, 10]),  # runs, a key wanted twice, keys between
    ([0, 0, 0xFFFFFFFF, 0xFFFFFFFF], [0xFFFFFFFF, 0, 0xFFFFFFFE]),  # the ends of the range
    (np.random.default_rng(6).integers(0, 40, 3000).tolist(), list(range(-2, 45))),
    (np.random.default_rng(7).integers(0, 2**32, 200_001).tolist(),
     np.random.default_rng(7).integers(0, 2**32, 200_001)[::6250].tolist() + [0, 2**32 - 1]),
])
def test_the_compiled_band_look_up_finds_what_numpy_finds(keys, wanted):
    keys = np.sort(np.asarray(keys, dtype=np.int64).astype(KEY_DTYPE))
    # Longer than the keys, as the index's arrays are (room to grow).
    slots = np.random.default_rng(len(keys)).integers(0, 10**6, len(keys) + 7).astype(np.int32)
    wanted = np.asarray([w % 2**32 for w in wanted], dtype=np.int64).astype(KEY_DTYPE)
    found = band_matches(keys, slots, wanted)
    assert found.dtype == np.int32
    assert found.tolist() == band_matches_numpy(keys, slots, wanted).tolist()


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.05, 128), (0.7, 128), (0.5, 64)])
def test_band_parameters_are_datasketchs(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert lsh_parameters(threshold, num_perm) == (lsh.b, lsh.r)


@pytest.mark.parametrize("num_perm", [16, 32, 64, 128, 256])
def test_band_parameters_match_datasketchs_optimiser_at_every_threshold(num_perm):
    thresholds = [round(0.05 * step, 2) for step in range(1, 20)]
    ours = [lsh_parameters(threshold, num_perm) for threshold in thresholds]
    assert ours == [_optimal_param(threshold, num_perm, 0.5, 0.5) for threshold in thresholds]


@pytest.mark.parametrize(("num_perm", "seed"), [(128, 1), (64, 1), (256, 42)])
def test_permutations_are_datasketchs(num_perm, seed):
    a, b = affine32_permutations(num_perm, seed)
    expected = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    assert (a == expected[0]).all() and (b == expected[1]).all()


def test_the_daemon_runs_without_loading_datasketch_and_scipy(tmp_path):
    # datasketch loads scipy (about 53 MB); only the datasketch backend needs it.
    script = """
import sys
from aggregator.cli import main
from aggregator.cluster import Clusterer
from aggregator.config import ClusteringSettings
from aggregator.fingerprint import Signer
from aggregator.index import make_index
from aggregator.pipeline import Aggregator
Signer(128)
Clusterer(ClusteringSettings())
make_index("compact", 0.5, 128)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("datasketch", "scipy")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert done.stdout.strip() == "[]"


# Digits, years, apostrophes, hyphens, casing, non-Latin scripts, several tokens, nothing;
# "kp" and "火" have one ``hash(str)`` (the same two bytes inside CPython).
TRICKY_WORDS = ["2026", "1990s", "don't", "aren’t", "NATO", "café", "straße", "İstanbul",
                "ﬁne", "Ｆｕｌｌ", "e-mail", "co-op", "9/11", "3.14", "100,000", "$5", "2nd",
                "covid19", "x1000", "the cat", "lavrov", "moscow", "qwzxv", "", "kp", "火",
                "に", "日本"]


def test_english_frequencies_are_wordfreqs_to_the_hundredth():
    english = EnglishFrequencies()
    listed = sorted(wordfreq.get_frequency_dict("en"))[::20]
    for word in TRICKY_WORDS + listed:
        assert english.zipf(word) == wordfreq.zipf_frequency(word, "en"), word


def test_english_frequencies_read_the_list_a_bucket_at_a_time(monkeypatch):
    """The list is streamed, not read whole (``read_cBpack``), whose 321,180 strings at
    once left 20 MB in the heap of each process; the compact list holds the same words."""
    def whole(_path):
        raise AssertionError("the word list read whole")
    monkeypatch.setattr(wordfreq, "read_cBpack", whole)
    english = EnglishFrequencies()
    assert len(english._hashes) == len(wordfreq.get_frequency_dict("en"))
    assert english.zipf("lavrov") == wordfreq.zipf_frequency("lavrov", "en")


def test_english_frequencies_of_many_words_at_once_are_the_ones_of_each():
    english = EnglishFrequencies()
    listed = sorted(wordfreq.get_frequency_dict("en"))[7::20]
    # Plain words listed and not (made up), among words that take wordfreq's tokeniser.
    words = TRICKY_WORDS + listed + ["zzqxv", "lavrovian", "blinkenesque", "a", "zz"]
    assert english.zipf_many(words) == [wordfreq.zipf_frequency(w, "en") for w in words]
    assert fingerprint_module.prior_document_fractions(words) == [
        fingerprint_module.prior_document_fraction(w) for w in words]
    assert english.zipf_many([]) == []


def test_a_plain_word_is_its_own_only_token_for_wordfreq():
    # What lets zipf_many skip wordfreq's tokeniser: true of every plain word of its list.
    plain = [w for w in wordfreq.get_frequency_dict("en") if fingerprint_module._plain(w)]
    assert len(plain) > 250_000
    assert all(wordfreq.lossy_tokenize(w, "en") == [w] for w in plain[::10])
    assert not any(map(fingerprint_module._plain, ["Lavrov", "don't", "x2", "café", ""]))


def test_a_pass_does_not_keep_wordfreqs_dictionary(tmp_path, seed_config):
    # wordfreq's cached English dictionary takes 33 MB; the compact list is enough.
    script = f"""
import wordfreq
from aggregator.config import load_config
from aggregator.pipeline import Aggregator
Aggregator(load_config({str(seed_config)!r}, environ={{}})).run_pass()
print(wordfreq.get_frequency_dict.cache_info().currsize)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert done.stdout.strip() == "0"


def random_sets(rng: np.random.Generator, count: int) -> list[list[bytes]]:
    # Sets drawn from a small vocabulary, so that many pairs overlap a little or a lot.
    return [[f"w{w}".encode() for w in rng.choice(300, size=int(rng.integers(5, 40)),
                                                  replace=False)] for _ in range(count)]


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7])
def test_band_index_finds_exactly_what_minhashlsh_finds(threshold):
    rng = np.random.default_rng(4)
    signatures = SIGNER.sign(random_sets(rng, 600))
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    # A small merge size: most entries go through the sorted arrays, some stay recent.
    index = BandIndex(threshold, 128, merge_at=500)
    for slot, signature in enumerate(signatures[:500]):
        lsh.insert(slot, lean_minhash(signature))
        index.insert(np.asarray([slot]), signature[None, :])
    for query in signatures[500:]:
        assert set(index.query(query).tolist()) == set(lsh.query(lean_minhash(query)))


def test_band_index_drops_dead_slots_at_compaction_and_bulk_loads_like_inserts():
    rng = np.random.default_rng(5)
    signatures = SIGNER.sign(random_sets(rng, 300))
    one_by_one, bulk = BandIndex(0.05, 128, merge_at=64), BandIndex(0.05, 128, merge_at=64)
    for slot, signature in enumerate(signatures):
        one_by_one.insert(np.asarray([slot]), signature[None, :])
    for start in (0, 100, 200):  # as a restart loads its chunks
        bulk.insert(np.arange(start, start + 100), signatures[start:start + 100])
    for query in signatures[:20]:
        assert set(one_by_one.query(query).tolist()) == set(bulk.query(query).tolist())
    alive = np.ones(300, dtype=bool)
    alive[::2] = False
    for index in (one_by_one, bulk):
        index.compact(alive)
    for query in signatures[:20]:
        found = set(one_by_one.query(query).tolist())
        assert found == set(bulk.query(query).tolist())
        assert found and all(slot % 2 == 1 for slot in found)


def test_the_band_index_holds_eight_bytes_a_band_per_article_with_a_quarter_to_spare():
    rng = np.random.default_rng(6)
    signatures = SIGNER.sign(random_sets(rng, 2000))
    index = BandIndex(0.05, 128)
    index.insert(np.arange(2000), signatures)  # a bulk load, as at a restart
    index.merge_runs()
    entries = 2000 * index.bands
    assert index._size == entries
    # A 4-byte key and a 4-byte slot an entry, and room for a quarter more entries; beside
    # them the recent insertions' part, whose size does not grow with the window.
    assert index.nbytes() - index._recent.nbytes() == 8 * (entries + entries // 4)
    assert index._recent.nbytes() <= 1 << 20


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=requires_kernels), False])
@pytest.mark.parametrize(("seed", "block", "distinct_keys"),
                         [(1, 1, 5), (2, 7, 50), (3, 64, 2**31), (4, 1 << 16, 3), (5, 3, 2)])
def test_in_place_merges_and_compaction_equal_rebuilding_the_arrays(seed, block, distinct_keys,
                                                                     compiled, monkeypatch):
    """The compiled merge (``kernels.merge_sorted``) and the numpy one (``block``: the
    entries it moves at a time) both give what inserting into fresh arrays gives."""
    if not compiled:
        monkeypatch.setattr(index_module, "kernels", None)
    # Few distinct keys give long runs of equal keys, where order (oldest first) matters.
    rng = np.random.default_rng(seed)
    # Never merged by an insertion (the test merges by hand).  Not 10**9: the recent
    # insertions' table is sized to twice ``merge_at``, and its bucket heads are filled at
    # once (16 GB at 10**9).
    index = BandIndex(0.05, 128, merge_at=1 << 16)
    index.BLOCK = block
    keys = np.empty(0, dtype=KEY_DTYPE)
    slots = np.empty(0, dtype=np.int32)
    for _round in range(6):
        new_keys = np.sort(rng.integers(0, distinct_keys, int(rng.integers(0, 300)))
                           * (2**31 // distinct_keys + 1)).astype(KEY_DTYPE)
        new_slots = rng.integers(0, 1000, len(new_keys)).astype(np.int32)
        at = np.searchsorted(keys, new_keys, side="right")
        keys, slots = np.insert(keys, at, new_keys), np.insert(slots, at, new_slots)
        index._merge_sorted(new_keys, new_slots)
        assert (index._keys[:index._size] == keys).all()
        assert (index._slots[:index._size] == slots).all()
    alive = rng.random(1000) < 0.5
    index.compact(alive)
    assert (index._keys[:index._size] == keys[alive[slots]]).all()
    assert (index._slots[:index._size] == slots[alive[slots]]).all()


@requires_kernels
@pytest.mark.parametrize(("size", "room", "new_slots", "message"), [
    (3, 4, 2, "no room for the new entries"),  # 3 + 2 entries in room for 4
    (3, 8, 1, "unequal lengths"),  # two new keys, one slot
    (-1, 8, 2, "no room"),
])
def test_the_compiled_merge_refuses_what_it_cannot_hold(size, room, new_slots, message):
    keys, slots = np.zeros(room, dtype=KEY_DTYPE), np.zeros(room, dtype=np.int32)
    with pytest.raises(ValueError, match=message):
        index_module.kernels.merge_sorted(keys, slots, size, np.array([1, 2], dtype=KEY_DTYPE),
                                          np.zeros(new_slots, dtype=np.int32))
    with pytest.raises(TypeError, match="keys"):
        index_module.kernels.merge_sorted(keys.astype(np.int64), slots, 0,
                                          np.array([1, 2], dtype=KEY_DTYPE),
                                          np.zeros(2, dtype=np.int32))


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=requires_kernels), False])
def test_a_bulk_load_sorts_like_one_stable_sort_of_all_its_chunks(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(index_module, "kernels", None)
    rng = np.random.default_rng(9)
    index = BandIndex(0.05, 128, merge_at=32)
    chunks = [rng.integers(0, 2**32 - 1, (int(rng.integers(1, 40)), index.bands),
                           dtype=KEY_DTYPE, endpoint=True) for _ in range(5)]
    chunks.append(np.repeat(chunks[0][:1], 3, axis=0))  # equal keys in several chunks
    first = 0
    all_slots = []
    for chunk in chunks:
        chunk_slots = np.arange(first, first + len(chunk))
        index.insert(chunk_slots, None, chunk)
        all_slots.append(np.repeat(chunk_slots, index.bands))
        first += len(chunk)
    keys = np.concatenate([chunk.ravel() for chunk in chunks])
    order = np.argsort(keys, kind="stable")
    index.merge_runs()
    assert (index._keys[:index._size] == keys[order]).all()
    assert (index._slots[:index._size] == np.concatenate(all_slots)[order]).all()


@pytest.mark.parametrize(("seed", "merge_at"), [(1, 40), (2, 100), (3, 1000)])
def test_recent_middle_and_main_runs_answer_as_one_list_of_insertions(seed, merge_at):
    """Insertions pass from the recent dict to the middle run to the main run; whichever
    part holds them, a query finds every live insertion of its keys, once each, and a
    compaction leaves the main run as one stable sort of the live insertions."""
    rng = np.random.default_rng(seed)
    index = BandIndex(0.05, 128, merge_at=merge_at)
    inserted_keys, inserted_slots = [], []
    alive = np.ones(600, dtype=bool)
    queried_all_parts = 0
    for slot in range(600):
        # Few distinct values: many equal keys, in every part at once.
        keys = rng.integers(0, 50, (1, index.bands)).astype(KEY_DTYPE)
        index.insert(np.asarray([slot]), None, keys)
        inserted_keys.append(keys[0])
        inserted_slots.append(np.full(index.bands, slot, dtype=np.int32))
        if slot % 150 == 149:
            alive[rng.integers(0, slot, 40)] = False
            index.compact(alive)
            every_key = np.concatenate(inserted_keys)
            every_slot = np.concatenate(inserted_slots)
            live = alive[every_slot]
            order = np.argsort(every_key[live], kind="stable")
            assert (index._keys[:index._size] == every_key[live][order]).all()
            assert (index._slots[:index._size] == every_slot[live][order]).all()
        if slot % 7 == 0:
            query = keys[0] if slot % 2 else rng.integers(0, 50, index.bands).astype(KEY_DTYPE)
            every_key = np.concatenate(inserted_keys)
            every_slot = np.concatenate(inserted_slots)
            expected = np.concatenate([every_slot[every_key == key] for key in query])
            queried_all_parts += bool(index._size and len(index._middle_keys))
            found = index.query(None, query)
            found = found[alive[found]]
            assert sorted(found.tolist()) == sorted(expected[alive[expected]].tolist())
    # Queries met the main and the middle run at once (with the smaller merge sizes).
    assert queried_all_parts > 0 or merge_at == 1000


def stream_decisions(settings: ClusteringSettings) -> list[tuple[str, int | None]]:
    clusterer = Clusterer(settings)
    topics = ["glacier avalanche sherpa crampon icefall summit expedition oxygen",
              "vineyard harvest grape fermentation cellar barrel sommelier vintage",
              "parliament budget deficit minister vote coalition tax reform"]
    decisions = []
    for number in range(30):
        topic = topics[number % 3].split()
        words = [topic[(number * 7 + k) % len(topic)] for k in range(12)]
        text = " ".join(words * 2) + f" item{number}"
        [fingerprint] = fingerprint_batch([(" ".join(words[:4]), text)], clusterer.stats,
                                          SIGNER, 3, 3.0, 24)
        article = ClusterArticle(None, f"s{number % 4}", 0, number * 3600.0, True,
                                 fingerprint)
        decision = clusterer.propose(article)
        article.article_id = number + 1
        clusterer.commit(article, decision.story_id or 1000 + number)
        decisions.append((decision.relation, decision.story_id))
    return decisions


def test_both_index_backends_make_the_same_decisions():
    compact = stream_decisions(ClusteringSettings())
    assert compact == stream_decisions(ClusteringSettings(index_backend="datasketch"))
    assert {relation for relation, _story in compact} >= {"new_story", "same_story"}


def test_datasketch_backend_removes_evicted_slots():
    index = DatasketchIndex(0.5, 128)
    [signature] = SIGNER.sign([[b"a", b"b", b"c"]])
    index.insert(np.asarray([3]), signature[None, :])
    assert index.query(signature).tolist() == [3]
    index.remove(np.asarray([3]))
    assert index.query(signature).tolist() == []


def test_evicted_rows_are_reused_only_after_the_index_forgot_them():
    settings = ClusteringSettings(window_days=1)
    clusterer = Clusterer(settings)
    day = 86400.0
    for number in range(1100):
        [fingerprint] = fingerprint_batch([(f"title {number}", f"text about item{number}")],
                                          clusterer.stats, SIGNER, 3, 3.0, 24)
        article = ClusterArticle(number + 1, "s", 0, number * 10.0, True, fingerprint)
        clusterer.commit(article, number + 1)
    clusterer.evict_before(2 * day)  # everything: the compaction runs, the rows come back
    assert clusterer.rows.free and not clusterer.rows.released
    [fingerprint] = fingerprint_batch([("title 5", "text about item5")], clusterer.stats,
                                      SIGNER, 3, 3.0, 24)
    late = ClusterArticle(None, "s", 0, 3 * day, True, fingerprint)
    assert clusterer.propose(late).relation == "new_story"  # nothing stale is found


def test_text_features_are_the_same_from_many_threads():
    texts = [(f"Title {n}", " ".join(f"running{n % 7} cities' councils voted {n}" for _ in
                                     range(30))) for n in range(40)]
    expected = text_features(texts, SIGNER, 3, 3.0)
    results: list = [None] * 4

    def work(slot: int) -> None:
        results[slot] = text_features(texts, SIGNER, 3, 3.0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert [f.term_counts for f in result] == [f.term_counts for f in expected]
        assert all((a.shingle_signature == b.shingle_signature).all()
                   for a, b in zip(result, expected, strict=True))


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def vector_kernels(request, monkeypatch):
    """Stored vectors unpacked by the compiled kernel, then by numpy alone."""
    if request.param and kernels is None:
        pytest.skip("built without a C compiler")
    if not request.param:
        monkeypatch.setattr(store_module, "kernels", None)
    return request.param


def test_vectors_pack_and_unpack_exactly(vector_kernels):
    [ids], [weights] = unpack_vectors([pack_vector([3, 1, 99], [0.5, 0.25, 1 / 3])])
    assert ids.tolist() == [3, 1, 99] and weights.tolist() == [0.5, 0.25, 1 / 3]


@pytest.mark.parametrize("size", [13, 11, 24 + 6])
def test_a_stored_vector_that_is_not_twelve_bytes_a_term_is_refused(vector_kernels, size):
    good = pack_vector([3, 1], [0.5, 0.25])
    stored = [good, b"\x01" * size, good]
    with pytest.raises(StoreError, match=f"article 17's stored term vector is {size} bytes: "
                                         "not 12 bytes a term"):
        unpack_vectors(stored, [4, 17, 23])
    with pytest.raises(StoreError, match="stored term vector 2 of 3 is"):
        unpack_vectors(stored)
    # A vector in a bytearray (sqlite3 gives bytes) is read as one in bytes.
    ids, weights = unpack_vectors([good, bytearray(good)])
    assert ids.tolist() == [[3, 1]] * 2 and weights.tolist() == [[0.5, 0.25]] * 2


@requires_kernels
@pytest.mark.parametrize("widths", [[60] * 50, [60] * 49 + [59], [0, 3, 0], [1], [], [0]])
def test_the_compiled_vectors_are_numpys_byte_for_byte(widths):
    rng = np.random.default_rng(len(widths))
    stored = [pack_vector(rng.integers(-5, 2**31 - 1, n).tolist(),
                          (rng.standard_normal(n) * 1e3).tolist()) for n in widths]
    compiled, reference = unpack_vectors(stored), unpack_vectors_numpy(stored)
    for got, expected in zip(compiled, reference, strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()


@requires_kernels
def test_the_compiled_vector_reader_refuses_before_it_writes():
    stored = [pack_vector([1, 2], [0.5, 0.5]), pack_vector([1, 2, 3], [0.5, 0.5, 0.5])]
    ids, weights = np.zeros((2, 2), dtype=np.int32), np.zeros((2, 2))
    # The second vector is wider than the rows: nothing of the first is written either.
    assert kernels.unpack_vectors(stored, ids, weights) == 1
    assert not ids.any() and not weights.any()
    assert kernels.unpack_vectors([stored[0], "text"], ids, weights) == 1
    with pytest.raises(ValueError, match="one row a vector"):
        kernels.unpack_vectors(stored, np.zeros((2, 3), dtype=np.int32), weights)
    with pytest.raises(ValueError, match="one row a vector"):
        kernels.unpack_vectors(stored[:1], ids, weights)
    with pytest.raises(TypeError, match="weights"):
        kernels.unpack_vectors(stored, ids, np.zeros((2, 2), dtype=np.float32))


def test_many_vectors_unpack_into_zero_padded_rows(vector_kernels):
    rng = np.random.default_rng(3)
    vectors = [([], [])] + [(rng.integers(1, 50_000, size=n).tolist(), rng.random(n).tolist())
                            for n in (1, 60, 7, 0, 33)]
    ids, weights = unpack_vectors([pack_vector(i, w) for i, w in vectors])
    assert ids.shape == weights.shape == (6, 60)
    for row, (expected_ids, expected_weights) in enumerate(vectors):
        width = len(expected_ids)
        assert ids[row, :width].tolist() == expected_ids
        assert weights[row, :width].tolist() == expected_weights
        assert not ids[row, width:].any() and not weights[row, width:].any()
    empty_ids, empty_weights = unpack_vectors([pack_vector([], [])])
    assert empty_ids.shape == (1, 1) and not empty_ids.any() and not empty_weights.any()
    # Vectors all of one width take a shorter path to the same rows.
    full = vectors[2:3] * 3
    ids, weights = unpack_vectors([pack_vector(i, w) for i, w in full])
    assert ids.tolist() == [full[0][0]] * 3 and weights.tolist() == [full[0][1]] * 3
    assert ids.dtype == np.int32 and weights.dtype == np.float64 and ids.flags.writeable
    assert unpack_vectors([])[0].shape == (0, 1)


def test_a_version_4_store_is_migrated_to_the_fingerprints_table(tmp_path):
    path = tmp_path / "old.db"
    store = Store.__new__(Store)
    store.path = str(path)
    conn = sqlite3.connect(path, isolation_level=None)
    import sqlite_utils

    store.db = sqlite_utils.Database(conn)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for name, migration in MIGRATIONS[:4]:
        migration(store.db)
        conn.execute("INSERT INTO _migrations VALUES (?, '2026-01-01T00:00:00Z')", [name])
    conn.execute("INSERT INTO sources (id, name, config_url, url, created_at) "
                 "VALUES (1, 's', 'u', 'u', 'now')")
    conn.execute("INSERT INTO stories (id, canonical_article_id, first_seen, last_seen, "
                 "first_published, last_published) VALUES (1, 1, 'a', 'a', 'a', 'a')")
    signature = SIGNER.to_bytes(SIGNER.sign([[b"x"]])[0])
    conn.execute(
        "INSERT INTO articles (id, source_id, identity_key, title, published, "
        "published_from_feed, fetched, text, content_hash, word_count, story_id, relation, "
        "term_counts, vector, salient_terms, shingle_signature, salient_signature) VALUES "
        "(1, 1, 'k', 't', 'a', 1, 'a', 'x', 'h', 1, 1, 'canonical', '{\"alpha\":1,\"beta\":2}',"
        " ?, '[\"alpha\"]', ?, ?)",
        [json.dumps({"beta": 0.8, "alpha": 0.6}), signature, signature])
    conn.executemany("INSERT INTO term_stats VALUES (?, 1, 0.001)", [("alpha",), ("beta",)])
    conn.close()

    migrated = Store(str(path))
    assert "005_article_fingerprints" in migrated.applied_migrations()
    ids = dict(migrated.db.execute("SELECT term, id FROM term_stats"))
    salient, vector, shingle = migrated.db.execute(
        "SELECT salient_terms, term_vector, shingle_signature FROM article_fingerprints "
        "WHERE article_id = 1").fetchone()
    [term_ids], [weights] = unpack_vectors([vector])
    assert term_ids.tolist() == [ids["beta"], ids["alpha"]]
    assert weights.tolist() == [0.8, 0.6]
    assert json.loads(salient) == ["alpha"] and shingle == signature
    columns = {row[1] for row in migrated.db.execute("PRAGMA table_info(articles)")}
    assert "vector" not in columns and "shingle_signature" not in columns
    migrated.close()


def with_one_worker(tmp_path):
    """An aggregator with one worker process (not started yet), and twelve entries whose
    text is long enough to be prepared in it."""
    from aggregator.config import Config, Source
    from aggregator.parse import ParsedEntry
    from aggregator.pipeline import Aggregator

    config = Config(path=str(tmp_path / "c.toml"), database=str(tmp_path / "w.db"),
                    workers=1, sources=(Source(name="s", url="x.xml", interval_s=60),))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    entries = tuple(ParsedEntry(guid=f"g{n}", link=f"https://e.example/{n}",
                                title=f"Story {n}", published=start + timedelta(minutes=n),
                                content=f"<p>Councils voted on budget {n} today.</p>" * 10)
                    for n in range(12))
    return Aggregator(config), entries, start


def test_worker_processes_prepare_what_the_writer_would(tmp_path):
    from aggregator.pipeline import WORKER_MIN_BYTES, text_size
    from aggregator.prepare import prepare_entries

    aggregator, entries, start = with_one_worker(tmp_path)
    inline = prepare_entries(entries, "s", start, aggregator._prepare_settings())
    try:
        # A batch of little text is prepared at once, here: no worker is started for it.
        headline = (replace(entries[0], content=None),)
        assert text_size(headline) < WORKER_MIN_BYTES <= text_size(entries)
        aggregator.prepare_async("s", headline, start).result(timeout=0)
        assert aggregator._workers is None
        prepared = aggregator.prepare_async("s", entries, start).result(timeout=120)
        assert aggregator._workers is not None  # it ran in a worker process
        assert [a.identity_keys for a in prepared.articles] == \
            [a.identity_keys for a in inline.articles]
        assert [f.term_counts for f in prepared.features] == \
            [f.term_counts for f in inline.features]
        report = aggregator.ingest_entries("s", 0, entries, start, prepared)
        assert report.new_articles == 12
        # Each article keeps the terms it counted in the statistics, in the order counted.
        stored = [terms for (terms,) in aggregator.store.db.execute(
            "SELECT counted_terms FROM articles ORDER BY id")]
        assert [terms.split(" ") for terms in stored] == \
            [list(f.term_counts) for f in prepared.features]
        assert all(stored)
    finally:
        aggregator.close()


# The writer's part of the package, and what only it uses: a worker process that imported
# them would hold their memory for nothing.
WRITER_ONLY_MODULES = {"aggregator.pipeline", "aggregator.store", "aggregator.cluster",
                       "aggregator.index", "aggregator.fetch", "aggregator.schedule",
                       "httpx", "sqlite_utils", "apscheduler"}


def test_worker_processes_import_only_what_preparing_needs(tmp_path):
    import subprocess
    import sys

    aggregator, entries, start = with_one_worker(tmp_path)
    try:
        aggregator.prepare_async("s", entries, start).result(timeout=120)
        # In a worker too, reading which entries the store holds already.
        assert len(aggregator._prepare_entries("s", entries, start).articles) == 12
        assert aggregator._workers is not None
        # ``eval`` travels by name, so the worker lists its own modules.
        in_worker = set(aggregator._worker_pool().submit(
            eval, "list(__import__('sys').modules)").result(timeout=60))
    finally:
        aggregator.close()
    assert {"aggregator.prepare", "aggregator.fingerprint", "aggregator.readers"} <= in_worker
    assert not WRITER_ONLY_MODULES & in_worker
    # A worker of the daemon also imports its main script again (spawn), which imports the
    # command line's module.
    with_cli = subprocess.run(
        [sys.executable, "-c", "import sys, aggregator.cli; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert "aggregator.cli" in with_cli
    assert not WRITER_ONLY_MODULES & set(with_cli)


def test_clustering_settings_name_the_index_backend(tmp_path):
    from aggregator.config import load_config
    from aggregator.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text('database = "x.db"\n[clustering]\nindex_backend = "faiss"\n')
    with pytest.raises(ConfigError, match="index_backend"):
        load_config(path, environ={})
    path.write_text('database = "x.db"\n[clustering]\nindex_storage = { type = "redis" }\n')
    with pytest.raises(ConfigError, match="index_storage"):
        load_config(path, environ={})
    path.write_text('database = "x.db"\n[clustering]\nindex_backend = "datasketch"\n'
                    'index_storage = { type = "dict" }\n')
    settings = load_config(path, environ={}).clustering
    assert settings.index_backend == "datasketch"
    assert dict(settings.index_storage) == {"type": "dict"}
    assert replace(settings, index_backend="compact").index_backend == "compact"


def test_a_large_candidate_set_keeps_the_slots_sharing_the_most_bands():
    clusterer = Clusterer(ClusteringSettings())
    rng = np.random.default_rng(9)
    base = SIGNER.sign([[f"w{w}".encode() for w in range(40)]])[0]
    signatures = np.repeat(base[None, :], 50, axis=0)
    # Slot k keeps the first k of the 32 band values of the query and loses the rest.
    for slot in range(50):
        signatures[slot, slot % 32:] = rng.integers(0, 2**32, size=128 - slot % 32,
                                                    dtype=np.uint64).astype(np.uint32)
    slots = clusterer.rows.allocate(50)
    clusterer.rows.alive[slots] = True
    clusterer.candidate_index.insert(slots, signatures)
    kept = clusterer._candidate_slots(clusterer.candidate_index, base, limit=5)
    assert sorted(kept.tolist()) == [27, 28, 29, 30, 31]
    assert len(clusterer._candidate_slots(clusterer.candidate_index, base)) == 48


@requires_kernels
@pytest.mark.parametrize(("seed", "capacity", "distinct", "rows_per_insert", "bands"), [
    (1, 64, 8, 1, 4),          # few keys: long chains of equal keys
    (2, 64, 2**32, 1, 4),      # random keys: short chains
    (3, 256, 40, 3, 7),        # several rows an insertion
    (4, 1024, 2**32, 1, 32),   # an article's worth of bands at a time
    (5, 16, 3, 2, 8),          # the table filled to the last entry
])
def test_the_compiled_recent_table_answers_as_the_dict_of_buckets(seed, capacity, distinct,
                                                                   rows_per_insert, bands):
    rng = np.random.default_rng(seed)
    table, buckets = RecentTable(capacity), RecentBuckets()
    # Keys whose low bits agree share a bucket of the table without being equal.
    spread = rng.integers(0, 2**32, distinct if distinct < 64 else 64, dtype=np.uint64)
    for _ in range(3):  # the table is used again after each drain
        slot = 0
        while table.count + rows_per_insert * bands <= capacity:
            if distinct < 64:
                keys = spread[rng.integers(0, len(spread), (rows_per_insert, bands))]
            else:
                keys = rng.integers(0, 2**32, (rows_per_insert, bands), dtype=np.uint64)
            keys = (keys & np.uint64(0xFFFFFFFF)).astype(KEY_DTYPE)
            keys[:, 0] = (keys[:, 0] & KEY_DTYPE(0xFFFF0000)) | KEY_DTYPE(5)
            slots = np.arange(slot, slot + rows_per_insert)
            slot += rows_per_insert
            table.insert(slots, keys)
            buckets.insert(slots, keys)
            assert table.count == buckets.count
            wanted = np.concatenate([keys[0], keys[0][:2],
                                     rng.integers(0, 2**32, 3, dtype=np.uint64).astype(KEY_DTYPE)])
            assert table.matches(wanted).tolist() == buckets.matches(wanted).tolist()
        for got, expected in zip(table.drain(), buckets.drain(), strict=True):
            assert got.tolist() == expected.tolist()
        assert table.count == buckets.count == 0
        assert table.matches(keys[0]).size == 0


@requires_kernels
@pytest.mark.parametrize(("change", "message"), [
    (dict(count=15), "the table is full"),
    (dict(new_keys=np.ones(3, dtype=KEY_DTYPE), new_slots=np.zeros(2, dtype=np.int32)),
     "not a whole number"),
    (dict(heads=np.full(12, -1, dtype=np.int32)), "power-of-two"),
    (dict(new_keys=np.ones(2, dtype=np.int64)), "items of 4 bytes"),
    (dict(keys=np.empty(16, dtype=KEY_DTYPE)[::2]), "contiguous"),
])
def test_the_compiled_recent_table_refuses_what_it_cannot_hold(change, message):
    arguments = dict(keys=np.empty(16, dtype=KEY_DTYPE), slots=np.empty(16, dtype=np.int32),
                     next=np.empty(16, dtype=np.int32), heads=np.full(16, -1, dtype=np.int32),
                     tails=np.full(16, -1, dtype=np.int32), count=0,
                     new_keys=np.ones(2, dtype=KEY_DTYPE), new_slots=np.zeros(1, dtype=np.int32))
    arguments.update(change)
    with pytest.raises((ValueError, TypeError, BufferError), match=message):
        kernels.recent_insert(*arguments.values())


@requires_kernels
@pytest.mark.parametrize("merge_at", [16, 200, 16_384])
def test_the_band_index_answers_the_same_with_its_compiled_recent_table_as_without(
        monkeypatch, merge_at):
    rng = np.random.default_rng(merge_at)
    compiled = BandIndex(0.05, 128, merge_at=merge_at)
    monkeypatch.setattr(index_module, "kernels", None)
    reference = BandIndex(0.05, 128, merge_at=merge_at)
    with pytest.raises(RuntimeError, match="compiled kernels"):
        RecentTable(16)
    monkeypatch.undo()
    assert isinstance(compiled._recent, RecentTable)
    assert isinstance(reference._recent, RecentBuckets)
    for slot in range(400):
        keys = rng.integers(0, 60, (1, compiled.bands)).astype(KEY_DTYPE)
        for index in (compiled, reference):
            index.insert(np.asarray([slot]), None, keys)
        query = rng.integers(0, 60, compiled.bands).astype(KEY_DTYPE)
        assert compiled.query(None, query).tolist() == reference.query(None, query).tolist()
    for index in (compiled, reference):
        index._merge()  # the newest keys into the sorted runs
    assert compiled._recent.count == reference._recent.count == 0
    assert compiled._size == reference._size
    for name, size in (("_keys", compiled._size), ("_slots", compiled._size),
                       ("_middle_keys", None), ("_middle_slots", None)):
        assert getattr(compiled, name)[:size].tolist() == getattr(reference, name)[:size].tolist()
