"""LSH indexes over MinHash signatures, keyed by small integer slots.

Two backends answer the same questions:

* ``BandIndex`` (default): datasketch's banding (the same ``b`` bands of ``r`` rows that
  ``MinHashLSH`` picks for a threshold, by datasketch's own optimiser), kept in numpy arrays:
  a sorted array of 64-bit band keys with the slot of each, plus a small dict of recent
  insertions that is merged in when it grows.  About 12 bytes per band per article, where a
  datasketch ``MinHashLSH`` in memory takes kilobytes.  Removal is lazy: a slot that has
  left the window is skipped by the caller and purged at the next compaction.
* ``DatasketchIndex``: datasketch's ``MinHashLSH`` itself, with its ``storage_config``, so
  that several processes can share one index in Redis.

Both return candidate slots for a query signature; the same signatures give the same
candidates in both (two band keys are equal exactly when the band values are, up to a
2^-64 chance of a 64-bit hash collision).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
from datasketch import MinHashLSH
from datasketch.lsh import _optimal_param

from .fingerprint import lean_minhash

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FOLD = np.uint64(0x100000001B3)


def _splitmix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on 64-bit values that spreads every input bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * _MIX1
    values = values ^ (values >> np.uint64(27))
    values = values * _MIX2
    return values ^ (values >> np.uint64(31))


@lru_cache(maxsize=64)
def lsh_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` as datasketch's ``MinHashLSH`` chooses them (equal error weights)."""
    return _optimal_param(threshold, num_perm, 0.5, 0.5)


class SlotIndex(Protocol):
    def band_keys(self, signatures: np.ndarray) -> np.ndarray | None: ...

    def insert(self, slots: np.ndarray, signatures: np.ndarray,
               keys: np.ndarray | None = None) -> None: ...

    def query(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray: ...

    def remove(self, slots: np.ndarray) -> None: ...

    def compact(self, alive: np.ndarray) -> None: ...

    def merge_runs(self) -> None: ...

    def nbytes(self) -> int: ...


class BandIndex:
    """MinHash LSH bands in sorted numpy arrays."""

    def __init__(self, threshold: float, num_perm: int, merge_at: int = 16_384):
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        self._band_ids = (np.arange(self.bands, dtype=np.uint64) << np.uint64(56))
        self._keys = np.empty(0, dtype=np.uint64)
        self._slots = np.empty(0, dtype=np.int32)
        self._recent: dict[int, list[int]] = {}
        self._recent_count = 0
        self._merge_at = merge_at
        # Bulk-loaded runs (a restart's chunks), each sorted, merged in one go at first use.
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 64-bit key per band for each signature row: shape ``(n, bands)``.

        Computed for many rows at once where the caller can (a batch's shingle signatures):
        for one row, the numpy calls' own overhead is most of the cost.
        """
        rows = signatures.shape[0]
        values = signatures[:, :self.bands * self.rows].astype(np.uint64)
        values = values.reshape(rows, self.bands, self.rows)
        folded = values[:, :, 0]
        for column in range(1, self.rows):
            folded = _splitmix(folded * _FOLD ^ values[:, :, column])
        # The band number goes into the top byte, so equal values in different bands differ.
        return _splitmix(folded ^ self._band_ids)

    def insert(self, slots: np.ndarray, signatures: np.ndarray,
               keys: np.ndarray | None = None) -> None:
        """Index the signature rows under ``slots``; ``keys``: their band keys, if known."""
        if keys is None:
            keys = self.band_keys(np.atleast_2d(signatures))
        if keys.size >= self._merge_at:  # a bulk load (start-up): a sorted run, merged later
            keys = keys.ravel()
            order = np.argsort(keys, kind="stable")
            self._runs.append((keys[order], np.repeat(np.asarray(slots, dtype=np.int32),
                                                      self.bands)[order]))
            return
        recent = self._recent
        for slot, row in zip(np.asarray(slots).tolist(), keys.tolist(), strict=True):
            for key in row:
                bucket = recent.get(key)
                if bucket is None:
                    recent[key] = [slot]
                else:
                    bucket.append(slot)
        self._recent_count += keys.size
        if self._recent_count >= self._merge_at:
            self._merge()

    def merge_runs(self) -> None:
        """The bulk-loaded runs into the arrays: one stable sort of runs already sorted (a
        merge of runs, for numpy's timsort) and one insertion, however many chunks came."""
        if not self._runs:
            return
        keys = np.concatenate([keys for keys, _slots in self._runs])
        slots = np.concatenate([slots for _keys, slots in self._runs])
        self._runs = []
        self._merge_sorted(keys, slots)

    def _merge(self) -> None:
        self.merge_runs()
        if not self._recent:
            return
        sizes = [len(b) for b in self._recent.values()]
        keys = np.repeat(np.fromiter(self._recent.keys(), dtype=np.uint64,
                                     count=len(self._recent)), sizes)
        slots = np.fromiter((s for b in self._recent.values() for s in b), dtype=np.int32,
                            count=len(keys))
        self._recent = {}
        self._recent_count = 0
        self._merge_sorted(keys, slots)

    def _merge_sorted(self, keys: np.ndarray, slots: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, slots = keys[order], slots[order]
        if not self._keys.size:
            self._keys, self._slots = keys, slots
            return
        at = np.searchsorted(self._keys, keys, side="right")
        self._keys = np.insert(self._keys, at, keys)
        self._slots = np.insert(self._slots, at, slots)

    def query(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Slots sharing at least one band with ``signature`` (repeats and dead slots
        included: the caller filters with what it knows to be live); ``keys``: its band
        keys, if known."""
        if keys is None:
            keys = self.band_keys(signature[None, :])[0]
        self.merge_runs()
        found = []
        if self._keys.size:
            starts = np.searchsorted(self._keys, keys, side="left")
            lengths = np.searchsorted(self._keys, keys, side="right") - starts
            total = int(lengths.sum())
            if total:
                # The positions of every matching run, gathered in one indexing operation.
                offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
                found.append(self._slots[offsets + np.arange(total)])
        recent = self._recent
        for key in keys.tolist():
            bucket = recent.get(key)
            if bucket:
                found.append(np.asarray(bucket, dtype=np.int32))
        if not found:
            return np.empty(0, dtype=np.int32)
        return np.concatenate(found)

    def remove(self, slots: np.ndarray) -> None:
        """Nothing now: removed slots are skipped by the caller until ``compact``."""

    def compact(self, alive: np.ndarray) -> None:
        """Drop the entries of slots that are no longer alive; they may then be reused."""
        self._merge()
        keep = alive[self._slots]
        self._keys, self._slots = self._keys[keep], self._slots[keep]

    def nbytes(self) -> int:
        self.merge_runs()
        # A dict entry of the recent part costs about 100 bytes with its list.
        return self._keys.nbytes + self._slots.nbytes + 100 * self._recent_count


class DatasketchIndex:
    """datasketch's ``MinHashLSH``, for an index shared through Redis (``storage_config``).

    Its keys are the slots; removal is immediate.
    """

    def __init__(self, threshold: float, num_perm: int, storage_config: dict | None = None,
                 prefix: str = ""):
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
