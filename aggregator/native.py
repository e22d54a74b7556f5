"""The compiled kernels of the clusterer (``aggregator/_kernels.c``), or None.

The package builds them where a C compiler is at hand (``pip install`` does it; the
extension is optional, so an install without a compiler succeeds without it).  Each
kernel has a numpy counterpart that gives the same result, to the last bit, and is used
when they are missing; the tests hold the two equal:

* ``band_matches``: the band index's look-up of a signature's keys (``BandIndex.query``);
* ``closest_story_rows``: from the slots found to the closest stories
  (``Clusterer.closest_story_rows``);
* ``term_products``: an article's cosines with the members of stories, term by term
  (``Clusterer._term_products``; the cosines of a story's members with its canonical);
* ``story_scores``: every live candidate story scored exactly, as ``Clusterer._score``
  scores one (cosines, time factor, threshold, member support, breadth), and the best
  kept (``Clusterer._story_scores``; ``Clusterer._best_candidates_numpy`` is the reference,
  which scores exactly only the stories that its rough numpy margins put first);
* ``log_tf_idf``: the TF-IDF weights of an article's terms (``fingerprint.log_tf_idf``;
  the C library's logarithm, as ``math.log`` computes it, where numpy's may differ by an
  ulp and move a decision);
* ``strongest``: the strongest terms of an article, ties broken by name
  (``fingerprint.strongest``: its salient terms and its vector);
* ``recent_insert`` and ``recent_matches``: the band index's table of its newest keys
  (``index.RecentTable``; ``index.RecentBuckets``, a dict of lists, without them);
* ``shingle_hashes``: the SHA-1 item hashes of an article's word 3-grams, with the CPU's SHA
  instructions where it has them (``fingerprint.shingle_hashes``, in the worker processes).
* ``merge_sorted``: the band index's merge of a sorted run into its main arrays, in place
  (``BandIndex._merge_sorted``; ``_merge_sorted_numpy`` is the reference).
* ``term_numbers``, ``term_keys``, ``table_insert`` and ``table_remove``: the vocabulary's
  table of term numbers by key (``fingerprint.TermTable``), in which the writer looks up an
  article's terms at once (``TermStatistics.ids_of``; without it, ``Vocabulary.ids``, a
  dictionary, by name, which the table mirrors).
* ``min_hashes``: MinHash signatures from items' hashes (``Signer.sign_hashes``, an
  article's salient signature, and ``Signer.sign_hashed``, the workers' shingle
  signatures; ``Signer.sign_hashes_numpy`` and ``_sign_group`` are the references);
* ``count_document``: an article counted in the term statistics
  (``TermStatistics.add_document``);
* ``tf_idf_weights``: an article's weights with its terms' frequencies and priors looked up
  by id in the same pass (``TermStatistics.weights_of``; ``term_weights`` weighs the
  general way where a prior is not learned yet);
* ``known_hashes``: the item hashes that a salient set's terms keep, and which of them
  are still to be hashed (``Vocabulary.hashes_of``).
* ``band_keys``: a signature's key in each band of an index (``BandIndex.band_keys``;
  ``band_keys_numpy`` is the reference), for an article and for a window at a restart;
* ``unpack_vectors`` and ``signatures_from_bytes``: stored term vectors and signatures
  into the window's matrices at a restart (``store.unpack_vectors``,
  ``Signer.from_bytes_many``; ``unpack_vectors_numpy`` and ``from_bytes_many_numpy`` are
  the references, and decide what the kernels refuse);
* ``split_by_part`` and ``sort_pairs``: a restart's band keys, with their slots, split
  into parts of their range chunk by chunk, then each part sorted (``index.split_by_part``
  and ``index.sort_part``, a radix sort; ``split_by_part_numpy`` and ``sort_part_numpy``
  are the references).

The first three take the clusterer's decision from about 0.98 to 0.59 ms an article in a
30,000-article window, ``story_scores`` from 0.56 to 0.45 ms (``benchmarks/propose.py
--against`` the code before it), ``log_tf_idf`` and ``strongest`` the fingerprint and
vector from 0.29 to 0.20 ms (``benchmarks/propose.py --against-numpy [--step
fingerprint]``), and the table an article's insertion into both indexes from 0.15-0.22 to
0.08-0.09 ms in the writer (``benchmarks/writer.py --detail``), and ``shingle_hashes`` a
worker's preparation of an article from 1.31 to 0.90 ms (``benchmarks/prepare.py``;
docs/performance.md).
"""

from __future__ import annotations

try:
    from . import _kernels as kernels
except ImportError:  # built without a C compiler
    kernels = None
