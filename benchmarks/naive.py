"""The naive approach the ingest benchmark compares against.

The same pipeline with the choices a first version makes: one ``MinHash`` object per set,
updated token by token with ``MinHash.update``; datasketch's ``MinHashLSH`` in memory as the
index; one transaction per article (``ingest.py`` passes entries one at a time).  The
decisions are the same as ours, so only the cost differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasketch import MinHash

from aggregator.config import ClusteringSettings
from aggregator.fingerprint import MINHASH_SCHEME, MINHASH_SEED, Signer, shingles_of_tokens


class NaiveSigner(Signer):
    # Items passed to ``MinHash.update``: the comparison checks that the naive path ran.
    updates = 0

    def sign_shingles(self, token_lists, size):
        return self.sign([shingles_of_tokens(tokens, size) for tokens in token_lists])

    def sign(self, item_sets):
        rows = []
        for items in item_sets:
            minhash = MinHash(num_perm=self.num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
            for item in list(items) or [b""]:
                minhash.update(item)
                self.updates += 1
            rows.append(minhash.hashvalues)
        return np.asarray(rows, dtype=np.uint32).reshape(len(rows), self.num_perm)


def naive_aggregator(make_aggregator, directory: Path, stream):
    aggregator = make_aggregator(directory, "naive", stream,
                                 ClusteringSettings(index_backend="datasketch"))
    aggregator.signer = NaiveSigner(aggregator.settings.num_perm)
    return aggregator
