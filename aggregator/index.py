"""LSH indexes over MinHash signatures, keyed by small integer slots.

Two backends answer the same questions:

* ``BandIndex`` (default): datasketch's banding (the same ``b`` bands of ``r`` rows that
  ``MinHashLSH`` picks for a threshold, by the same optimisation), kept in numpy arrays:
  a sorted array of 32-bit band keys with the slot of each, plus a small table of recent
  insertions that is merged in when it grows.  8 bytes per band per article, where a
  datasketch ``MinHashLSH`` in memory takes kilobytes.  Removal is lazy: a slot that has
  left the window is skipped by the caller and purged at the next compaction.
* ``DatasketchIndex``: datasketch's ``MinHashLSH`` itself, with its ``storage_config``, so
  that several processes can share one index in Redis.

Both return candidate slots for a query signature.  ``BandIndex``'s keys are 32 bits: a
query's key meets an unequal band's key by chance with a probability of 2^-32 for each key
indexed (every band's keys are in one array), which in a 100,000-article window is about
one spurious slot in 40 queries of the candidate index and one in 200 of the near-copy
index.  The clusterer drops such a slot when it compares the slots found with the query
(a near-copy must hold a whole band of the shingle signature; a candidate must agree in a
value of the salient one, which a spurious slot does once in 512), so both backends give
the same candidates to verification but for that; where a query finds more slots than are
kept (those sharing the most bands), a spurious one sharing a single band can take the
place of the oldest genuine one sharing a single band before it is dropped.  Keys of 64
bits took 18 MB more at 100,000 articles, 6% of the process's peak.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np

from .fingerprint import lean_minhash
from .memory import enlarge, release_free_memory
from .native import kernels

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FOLD = np.uint64(0x100000001B3)
# Band keys: see the module's docstring for what 32 bits cost and save.
KEY_DTYPE = np.uint32
KEY_BITS = np.dtype(KEY_DTYPE).itemsize * 8
# A key is the top KEY_BITS of a 64-bit value; below it, the bits this shift skips.
_KEY_SHIFT = np.uint64(64 - KEY_BITS)
_BELOW_KEY = np.uint64((1 << (64 - KEY_BITS)) - 1)


def sorted_stably(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` (fewer than 2^32) sorted, and the positions that sort them, equal keys in
    their order: what ``np.argsort(keys, kind="stable")`` gives.  Each key and its position
    are packed into one 64-bit value and those are sorted, all different, so any sort gives
    the same order; numpy sorts 64-bit integers four to six times faster than it sorts
    32-bit keys stably (a start-up sorts every band key of the window)."""
    packed = keys.astype(np.uint64) << _KEY_SHIFT
    packed |= np.arange(len(keys), dtype=np.uint64)
    packed.sort()
    return (packed >> _KEY_SHIFT).astype(KEY_DTYPE), (packed & _BELOW_KEY).astype(np.intp)


def sort_part(keys: np.ndarray, slots: np.ndarray, keys_out: np.ndarray,
              slots_out: np.ndarray, at: int) -> int:
    """``keys`` sorted stably into ``keys_out`` from position ``at``, and ``slots`` in the
    same order into ``slots_out``; returns how many.  Compiled where the package was built
    with a C compiler (``kernels.sort_pairs``, a radix sort: a restart sorts every band key
    of the window); ``sort_part_numpy`` is the reference."""
    if kernels is None:
        return sort_part_numpy(keys, slots, keys_out, slots_out, at)
    end = at + len(keys)
    kernels.sort_pairs(keys, slots, keys_out[at:end], slots_out[at:end])
    return len(keys)


def sort_part_numpy(keys: np.ndarray, slots: np.ndarray, keys_out: np.ndarray,
                    slots_out: np.ndarray, at: int) -> int:
    keys, order = sorted_stably(keys)
    keys_out[at:at + len(keys)] = keys
    slots_out[at:at + len(keys)] = slots[order]
    return len(keys)


def split_by_part(keys: np.ndarray, slots: np.ndarray,
                  bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``keys`` (``KEY_DTYPE``) and their ``slots`` (int32) in ``2 ** bits`` parts by the
    keys' top ``bits`` bits, each part in the order given, each its own arrays (so that a
    part's memory goes as soon as it is merged, whatever becomes of the others).  Compiled
    where the package was built with a C compiler (``kernels.split_by_part``: one pass to
    count, one to place); ``split_by_part_numpy`` is the reference."""
    if kernels is None:
        return split_by_part_numpy(keys, slots, bits)
    return [(np.frombuffer(part_keys, dtype=KEY_DTYPE), np.frombuffer(part_slots, np.int32))
            for part_keys, part_slots in kernels.split_by_part(keys, slots, bits)]


def split_by_part_numpy(keys: np.ndarray, slots: np.ndarray,
                        bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    # A stable sort of one byte is a radix sort.
    part_of = (keys >> KEY_DTYPE(KEY_BITS - bits)).astype(np.uint8)
    order = np.argsort(part_of, kind="stable")
    keys, slots = keys[order], slots[order]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(part_of, minlength=1 << bits))))
    # Copies, not views of the chunk's arrays.
    return [(keys[low:high].copy(), slots[low:high].copy())
            for low, high in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def band_matches(keys: np.ndarray, slots: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The ``slots`` of every position whose key in ``keys`` (sorted) equals one of
    ``wanted``: each wanted key's run of positions, in turn.  Compiled where the package was
    built with a C compiler (``native.kernels``: the searches of all the keys advance
    together, so that their cache misses overlap); ``band_matches_numpy`` is the reference."""
    if kernels is None:
        return band_matches_numpy(keys, slots, wanted)
    return np.frombuffer(kernels.band_matches(keys, slots, wanted), dtype=np.int32)


def band_matches_numpy(keys: np.ndarray, slots: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    starts = np.searchsorted(keys, wanted, side="left")
    lengths = np.searchsorted(keys, wanted, side="right") - starts
    total = int(lengths.sum())
    # The positions of every matching run, gathered in one indexing operation.
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return slots[offsets + np.arange(total)]


def _splitmix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on 64-bit values that spreads every input bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * _MIX1
    values = values ^ (values >> np.uint64(27))
    values = values * _MIX2
    return values ^ (values >> np.uint64(31))


@lru_cache(maxsize=64)
def lsh_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` as datasketch's ``MinHashLSH`` chooses them (equal error weights).

    datasketch minimises the false-positive plus false-negative area of each ``b x r <=
    num_perm`` with scipy's ``quad``; importing it would load scipy for this one start-up
    computation.  Both integrands are polynomials of degree ``b * r <= num_perm``, which
    Gauss-Legendre quadrature with ``num_perm // 2 + 1`` nodes integrates exactly, so the
    same minimum is found with numpy alone (tests compare with datasketch's choice).
    """
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _r in pairs], dtype=float)[:, None]
    rows = np.array([r for _b, r in pairs], dtype=float)[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(low: float, high: float, collide: bool) -> np.ndarray:
        similarity = (high - low) / 2 * nodes + (high + low) / 2
        missed = (1 - similarity ** rows) ** bands  # no band collides
        return ((1 - missed) if collide else missed) @ weights * (high - low) / 2

    error = 0.5 * area(0.0, threshold, True) + 0.5 * area(threshold, 1.0, False)
    return pairs[int(np.argmin(error))]


class SlotIndex(Protocol):
    def band_keys(self, signatures: np.ndarray) -> np.ndarray | None: ...

    def insert(self, slots: np.ndarray, signatures: np.ndarray,
               keys: np.ndarray | None = None) -> None: ...

    def query(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray: ...

    def remove(self, slots: np.ndarray) -> None: ...

    def compact(self, alive: np.ndarray) -> None: ...

    def merge_runs(self) -> None: ...

    def nbytes(self) -> int: ...


class RecentBuckets:
    """The band index's recent insertions as a dict of lists, key to slots: the reference
    for ``RecentTable``, and what runs where the package was built without a C compiler."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[int]] = {}
        self.count = 0

    def insert(self, slots: np.ndarray, keys: np.ndarray) -> None:
        """Add the rows of ``keys`` (one row of band keys for each of ``slots``)."""
        buckets = self._buckets
        for slot, row in zip(np.asarray(slots).tolist(), keys.tolist(), strict=True):
            for key in row:
                bucket = buckets.get(key)
                if bucket is None:
                    buckets[key] = [slot]
                else:
                    bucket.append(slot)
        self.count += keys.size

    def matches(self, wanted: np.ndarray) -> np.ndarray:
        """The slots inserted with each of ``wanted`` in turn, each key's in the order
        inserted (int32)."""
        found: list[int] = []
        for bucket in map(self._buckets.get, wanted.tolist()):
            if bucket:
                found += bucket
        return np.asarray(found, dtype=np.int32)

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """Every insertion, sorted by key and among equal keys in the order inserted (keys,
        slots), and the part emptied."""
        buckets, self._buckets, self.count = self._buckets, {}, 0
        sizes = [len(bucket) for bucket in buckets.values()]
        keys = np.repeat(np.fromiter(buckets.keys(), dtype=KEY_DTYPE, count=len(buckets)),
                         sizes)
        slots = np.fromiter((s for bucket in buckets.values() for s in bucket),
                            dtype=np.int32, count=len(keys))
        keys, order = sorted_stably(keys)
        return keys, slots[order]

    def nbytes(self) -> int:
        # A list, two integers and a dict entry for each insertion, about.
        return 100 * self.count


class RecentTable:
    """``RecentBuckets`` in arrays kept by the compiled kernels (``recent_insert``,
    ``recent_matches``): each insertion an entry in order, chained to the next of its
    bucket.  The dict cost a probe, a list and two integer objects for each band key, most
    of them cache misses in a table of thousands of keys; here the entries are written in
    sequence, and a bucket's head and tail are 4 bytes each.  In the writer an article's
    rows and index insertions took 0.08-0.09 ms with the table against 0.15-0.22 with the
    dict (docs/performance.md)."""

    def __init__(self, capacity: int) -> None:
        # The kernels that keep the table, kept with it: its entries are theirs to read.
        self._kernels = kernels
        if self._kernels is None:
            raise RuntimeError("RecentTable needs the compiled kernels (aggregator/native.py)")
        self.count = 0
        self._keys = np.empty(capacity, dtype=KEY_DTYPE)
        self._slots = np.empty(capacity, dtype=np.int32)
        self._next = np.empty(capacity, dtype=np.int32)
        buckets = 1 << max(0, capacity - 1).bit_length()
        self._heads = np.full(buckets, -1, dtype=np.int32)
        self._tails = np.full(buckets, -1, dtype=np.int32)

    def insert(self, slots: np.ndarray, keys: np.ndarray) -> None:
        self.count = self._kernels.recent_insert(
            self._keys, self._slots, self._next, self._heads, self._tails, self.count,
            np.ascontiguousarray(keys, dtype=KEY_DTYPE).ravel(),
            np.asarray(slots, dtype=np.int32))

    def matches(self, wanted: np.ndarray) -> np.ndarray:
        if not self.count:
            return np.empty(0, dtype=np.int32)
        return np.frombuffer(self._kernels.recent_matches(
            self._keys, self._slots, self._next, self._heads,
            np.ascontiguousarray(wanted, dtype=KEY_DTYPE)), dtype=np.int32)

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        keys, order = sorted_stably(self._keys[:self.count])
        slots = self._slots[:self.count][order]
        self.count = 0
        self._heads.fill(-1)
        self._tails.fill(-1)
        return keys, slots

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._keys, self._slots, self._next, self._heads,
                                      self._tails))


class BandIndex:
    """MinHash LSH bands in sorted numpy arrays.

    Three parts, oldest first: the main run (sorted arrays), the middle run (smaller sorted
    arrays) and a table of the latest insertions (``RecentTable``, or ``RecentBuckets``
    without the compiled kernels).  The table is merged into the middle run when it grows,
    and the middle run into the main one once it holds a sixteenth of it: merging moves
    every element of the run merged into, and merging each few hundred articles straight
    into the main run cost time in proportion to the window (85 µs an article at 60,000
    articles for the candidate index; 39 µs with the middle run).

    The main arrays keep spare capacity and are merged into and compacted in place, a block
    at a time: rebuilding them instead would hold a second copy of the index (about 37 MB at
    100,000 articles) every few thousand articles.
    """

    # Elements moved per numpy call when merging or compacting in place.
    BLOCK = 1 << 16
    # A bulk load's keys are kept in parts by their top BULK_PART_BITS bits (at most 8: a
    # part number is one byte), so that sorting them holds one part at a time besides the
    # index.
    BULK_PART_BITS = 6
    BULK_PARTS = 1 << BULK_PART_BITS
    # The middle run is merged into the main one when it holds this share of it (and at
    # least MIDDLE_MERGES merges of recent insertions).
    MIDDLE_SHARE = 16
    MIDDLE_MERGES = 4

    def __init__(self, threshold: float, num_perm: int, merge_at: int = 16_384):
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        self._band_ids = (np.arange(self.bands, dtype=np.uint64) << np.uint64(56))
        self._keys = np.empty(0, dtype=KEY_DTYPE)
        self._slots = np.empty(0, dtype=np.int32)
        self._size = 0
        self._middle_keys = np.empty(0, dtype=KEY_DTYPE)
        self._middle_slots = np.empty(0, dtype=np.int32)
        # An insertion below ``merge_at`` keys may take the recent part to twice that.
        self._recent: RecentBuckets | RecentTable = (
            RecentBuckets() if kernels is None else RecentTable(2 * merge_at))
        self._merge_at = merge_at
        # A bulk load (a restart's chunks): each chunk sorted and cut into BULK_PARTS parts
        # by key range; the parts are merged in at first use.
        self._bulk: list[list[tuple[np.ndarray, np.ndarray]]] = []

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 32-bit key per band for each signature row: shape ``(n, bands)``.

        Compiled where the package was built with a C compiler (``native.kernels``), for
        uint32 signatures; ``band_keys_numpy`` is the same in numpy, and the reference.
        """
        if kernels is not None and signatures.dtype == np.uint32:
            keys = np.empty((signatures.shape[0], self.bands), dtype=KEY_DTYPE)
            kernels.band_keys(np.ascontiguousarray(signatures), self.rows, self._band_ids, keys)
            return keys
        return self.band_keys_numpy(signatures)

    def band_keys_numpy(self, signatures: np.ndarray) -> np.ndarray:
        """``band_keys`` in numpy, for many rows at once where the caller can (a batch's
        shingle signatures): for one row, the numpy calls' own overhead is most of it."""
        rows = signatures.shape[0]
        values = signatures[:, :self.bands * self.rows].astype(np.uint64)
        values = values.reshape(rows, self.bands, self.rows)
        folded = values[:, :, 0]
        for column in range(1, self.rows):
            folded = _splitmix(folded * _FOLD ^ values[:, :, column])
        # The band number goes into the top byte, so equal values in different bands differ;
        # the key is the mixed value's top half.
        return (_splitmix(folded ^ self._band_ids) >> _KEY_SHIFT).astype(KEY_DTYPE)

    def insert(self, slots: np.ndarray, signatures: np.ndarray,
               keys: np.ndarray | None = None) -> None:
        """Index the signature rows under ``slots``; ``keys``: their band keys, if known."""
        if keys is None:
            keys = self.band_keys(np.atleast_2d(signatures))
        if keys.size >= self._merge_at:  # a bulk load (start-up): merged at first use
            self._add_bulk(keys.ravel(), np.repeat(np.asarray(slots, dtype=np.int32),
                                                   self.bands))
            return
        self._recent.insert(slots, keys)
        if self._recent.count >= self._merge_at:
            self._merge()

    def _add_bulk(self, keys: np.ndarray, slots: np.ndarray) -> None:
        # Only split by part here, in the chunk's order: each key is then sorted once, in
        # merge_runs, not once here and again there.
        self._bulk.append(split_by_part(keys, slots, self.BULK_PART_BITS))

    def merge_runs(self) -> None:
        """The bulk-loaded chunks into the arrays, part by part: each part's pieces (one per
        chunk, in the order of the chunks and of the keys within them) are sorted by one
        stable sort, so keys and their order are those of one stable sort of everything,
        however many chunks came."""
        if not self._bulk:
            return
        self._merge_middle()  # older than the bulk load: its entries go first
        chunks, self._bulk = self._bulk, []
        total = sum(len(keys) for chunk in chunks for keys, _slots in chunk)
        # With room for a quarter more, as the article rows have: pages not yet written
        # cost nothing, where growing at the first insertion would copy the index.
        keys_out = np.empty(total + total // 4, dtype=KEY_DTYPE)
        slots_out = np.empty(total + total // 4, dtype=np.int32)
        at = 0
        for part in range(self.BULK_PARTS):
            pieces = [chunk[part] for chunk in chunks]
            for chunk in chunks:
                chunk[part] = None  # each part is freed as soon as it is placed
            at += sort_part(np.concatenate([keys for keys, _slots in pieces]),
                            np.concatenate([slots for _keys, slots in pieces]),
                            keys_out, slots_out, at)
            if part % 16 == 15:
                # The merged parts' memory is in the heap among live objects: without this
                # the restart's peak holds it beside the merged arrays (35 MB at 100,000).
                release_free_memory()
        if not self._size:
            self._keys, self._slots, self._size = keys_out, slots_out, total
        else:
            self._merge_sorted(keys_out[:total], slots_out[:total])

    def _merge(self) -> None:
        """The recent insertions into the middle run, and that into the main run when it
        has grown to its share."""
        self.merge_runs()
        if self._recent.count:
            keys, slots = self._recent.drain()
            # After the equal keys already there, as in the main run: oldest first.
            at = np.searchsorted(self._middle_keys, keys, side="right")
            self._middle_keys = np.insert(self._middle_keys, at, keys)
            self._middle_slots = np.insert(self._middle_slots, at, slots)
        if len(self._middle_keys) >= max(self.MIDDLE_MERGES * self._merge_at,
                                         self._size // self.MIDDLE_SHARE):
            self._merge_middle()

    def _merge_middle(self) -> None:
        if len(self._middle_keys):
            keys, slots = self._middle_keys, self._middle_slots
            self._middle_keys = np.empty(0, dtype=KEY_DTYPE)
            self._middle_slots = np.empty(0, dtype=np.int32)
            self._merge_sorted(keys, slots)

    def _reserve(self, size: int) -> None:
        if size <= len(self._keys):
            return
        capacity = max(size, len(self._keys) + len(self._keys) // 4)
        enlarge(self, "_keys", capacity)
        enlarge(self, "_slots", capacity)

    def _merge_sorted(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Merge sorted ``keys`` in place, after equal keys already there: in one pass from
        the end down where the package was built with a C compiler (``kernels.merge_sorted``,
        without the interpreter lock); ``_merge_sorted_numpy`` is the reference."""
        size, added = self._size, len(keys)
        self._reserve(size + added)
        if kernels is None:
            self._merge_sorted_numpy(size, keys, slots)
        else:
            kernels.merge_sorted(self._keys, self._slots, size,
                                 np.ascontiguousarray(keys, dtype=KEY_DTYPE),
                                 np.ascontiguousarray(slots, dtype=np.int32))
        self._size = size + added

    def _merge_sorted_numpy(self, size: int, keys: np.ndarray, slots: np.ndarray) -> None:
        """``_merge_sorted``'s moves in numpy, into arrays with room for them after the
        first ``size`` entries.  Old element ``j`` moves up by the number of new keys placed
        before it; moving the blocks from the last one down never overwrites an element not
        yet moved."""
        added = len(keys)
        old_keys, old_slots = self._keys, self._slots
        at = np.searchsorted(old_keys[:size], keys, side="right")
        for start in range((size - 1) // self.BLOCK * self.BLOCK, -1, -self.BLOCK):
            end = min(start + self.BLOCK, size)
            positions = np.arange(start, end)
            target = positions + np.searchsorted(at, positions, side="right")
            old_keys[target] = old_keys[start:end].copy()
            old_slots[target] = old_slots[start:end].copy()
        placed = at + np.arange(added)
        old_keys[placed] = keys
        old_slots[placed] = slots

    def query(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Slots whose band keys equal one of ``signature``'s (repeats and dead slots
        included: the caller filters with what it knows to be live); ``keys``: its band
        keys, if known.  A key may be shared by chance (see the module's docstring)."""
        if keys is None:
            keys = self.band_keys(signature[None, :])[0]
        self.merge_runs()
        found = []
        for stored, slots in ((self._keys[:self._size], self._slots),
                              (self._middle_keys, self._middle_slots)):
            if len(stored):
                found.append(band_matches(stored, slots, keys))
        in_recent = self._recent.matches(keys)
        if in_recent.size:
            found.append(in_recent)
        if not found:
            return np.empty(0, dtype=np.int32)
        return np.concatenate(found)

    def remove(self, slots: np.ndarray) -> None:
        """Nothing now: removed slots are skipped by the caller until ``compact``."""

    def compact(self, alive: np.ndarray) -> None:
        """Drop the entries of slots that are no longer alive (in place, front to back: an
        element only ever moves down); the slots may then be reused."""
        self._merge()
        self._merge_middle()
        kept = 0
        for start in range(0, self._size, self.BLOCK):
            end = min(start + self.BLOCK, self._size)
            keep = alive[self._slots[start:end]]
            count = int(np.count_nonzero(keep))
            self._keys[kept:kept + count] = self._keys[start:end][keep]
            self._slots[kept:kept + count] = self._slots[start:end][keep]
            kept += count
        self._size = kept

    def nbytes(self) -> int:
        """What the index holds, spare capacity included."""
        self.merge_runs()
        return (self._keys.nbytes + self._slots.nbytes + self._middle_keys.nbytes
                + self._middle_slots.nbytes + self._recent.nbytes())


class DatasketchIndex:
    """datasketch's ``MinHashLSH``, for an index shared through Redis (``storage_config``).

    Its keys are the slots; removal is immediate.
    """

    def __init__(self, threshold: float, num_perm: int, storage_config: dict | None = None,
                 prefix: str = ""):
        from datasketch import MinHashLSH  # imported here: it loads scipy

        options = {}
        if storage_config:
            options["storage_config"] = dict(storage_config)
            options["prepickle"] = True
            if prefix and "basename" not in options["storage_config"]:
                options["storage_config"]["basename"] = prefix.encode()
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, **options)

    def band_keys(self, signatures: np.ndarray) -> None:
        """None: datasketch hashes the bands itself."""
        return None

    def insert(self, slots: np.ndarray, signatures: np.ndarray,
               keys: np.ndarray | None = None) -> None:
        with self.lsh.insertion_session() as session:
            for slot, signature in zip(np.asarray(slots).tolist(), np.atleast_2d(signatures),
                                       strict=True):
                session.insert(slot, lean_minhash(signature), check_duplication=False)

    def query(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        return np.fromiter(self.lsh.query(lean_minhash(signature)), dtype=np.int32)

    def remove(self, slots: np.ndarray) -> None:
        for slot in np.asarray(slots).tolist():
            if slot in self.lsh:
                self.lsh.remove(slot)

    def compact(self, alive: np.ndarray) -> None:
        pass

    def merge_runs(self) -> None:
        pass

    def nbytes(self) -> int:
        return 0


def make_index(backend: str, threshold: float, num_perm: int,
               storage_config: dict | None = None, prefix: str = "") -> SlotIndex:
    if backend == "datasketch":
        return DatasketchIndex(threshold, num_perm, storage_config, prefix)
    return BandIndex(threshold, num_perm)
