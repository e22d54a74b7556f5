"""Restart: the window's index and statistics loaded from a store, with the compiled steps
of a restart and with their numpy references, in one process, taking turns.

A restart (``pipeline.load_clusterer``) turns the window's stored rows into the clusterer's
arrays and band indexes.  Five of its steps have a compiled kernel and a numpy reference
(``aggregator/native.py``): each signature's band keys (``BandIndex.band_keys``), the
stored term vectors into padded rows (``store.unpack_vectors``), the stored signatures
checked and copied (``Signer.from_bytes_many``), each chunk's band keys split into parts of
their range (``index.split_by_part``) and each part sorted (``index.sort_part``).  Rounds
alternate between the two (A B, B A, ...), so that the machine's drift between rounds is
divided out of each round's ratio; each load's five steps are timed too.  The two loads
must give the same window: the same rows and the same band keys, byte for byte.

    python benchmarks/restart.py --store /tmp/k100/stream.sqlite --rounds 8
    python benchmarks/restart.py --articles 3000 --rounds 2     # stores a stream first

``--store``: a store as ``ingest.py --keep DIRECTORY`` leaves it
(``DIRECTORY/stream.sqlite``); it is only read.  Without it the first ``--articles`` of
the synthetic stream are stored in a temporary directory first.  The last line printed is
one JSON object; ``speedup`` is the numpy references' median load over the kernels'.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregator import index, pipeline, store  # noqa: E402
from aggregator.config import ClusteringSettings  # noqa: E402
from aggregator.fingerprint import Signer  # noqa: E402
from aggregator.index import BandIndex  # noqa: E402
from aggregator.native import kernels  # noqa: E402
from aggregator.store import Store  # noqa: E402

# Each step: where the restart looks it up, its name there, the compiled version (as the
# package has it) and the numpy reference.
STEPS = {
    "band keys": (BandIndex, "band_keys", BandIndex.band_keys, BandIndex.band_keys_numpy),
    "vectors": (pipeline, "unpack_vectors", store.unpack_vectors, store.unpack_vectors_numpy),
    "signatures": (Signer, "from_bytes_many", Signer.from_bytes_many,
                   Signer.from_bytes_many_numpy),
    "index parts": (index, "split_by_part", index.split_by_part, index.split_by_part_numpy),
    "index sort": (index, "sort_part", index.sort_part, index.sort_part_numpy),
}


def timed(function, step: str, spent: Counter):
    @functools.wraps(function)
    def step_timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[step] += time.perf_counter() - started
    return step_timed


def use(side: str, spent: Counter) -> None:
    """Route the steps to the kernels ("compiled") or to the references ("numpy")."""
    for step, (owner, name, compiled, reference) in STEPS.items():
        setattr(owner, name, timed(reference if side == "numpy" else compiled, step, spent))


def window_bytes(clusterer) -> dict[str, bytes]:
    """What a restart builds, as bytes: the rows' arrays and both band indexes."""
    rows = clusterer.rows
    built = {name: getattr(rows, name)[:rows.used].tobytes() for name in rows.ARRAYS}
    for label, band_index in (("duplicate", clusterer.duplicate_index),
                              ("candidate", clusterer.candidate_index)):
        built[label + " keys"] = band_index._keys[:band_index._size].tobytes()
        built[label + " slots"] = band_index._slots[:band_index._size].tobytes()
    return built


def store_stream(directory: Path, articles: int) -> str:
    from ingest import ingest, make_aggregator
    from stream import SyntheticStream

    stream = SyntheticStream(seed=7)
    aggregator = make_aggregator(directory, "stream", stream, ClusteringSettings())
    ingest(aggregator, list(islice(iter(stream), articles)))
    aggregator.close()
    return str(directory / "stream.sqlite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a store made by ingest.py --keep (read only)")
    parser.add_argument("--articles", type=int, default=3000,
                        help="without --store: stream articles stored first")
    parser.add_argument("--rounds", type=int, default=8, help="loads of each side")
    args = parser.parse_args()
    if kernels is None:
        parser.error("the compiled kernels are not built: nothing to compare")
    with tempfile.TemporaryDirectory() as directory:
        path = args.store or store_stream(Path(directory), args.articles)
        source = Store(path)
        settings = ClusteringSettings()
        times: dict[str, list[float]] = {"compiled": [], "numpy": []}
        spent = {"compiled": Counter(), "numpy": Counter()}
        built: dict[str, dict[str, bytes]] = {}
        window = 0
        print(f"{'round':>5} {'compiled s':>11} {'numpy s':>9} {'numpy/compiled':>15}")
        for round_number in range(args.rounds):
            sides = ("compiled", "numpy") if round_number % 2 == 0 else ("numpy", "compiled")
            for side in sides:
                use(side, spent[side])
                gc.collect()
                started = time.perf_counter()
                clusterer = pipeline.load_clusterer(source, settings, Signer(settings.num_perm))
                times[side].append(time.perf_counter() - started)
                window = clusterer.window_size
                if round_number == 0:
                    built[side] = window_bytes(clusterer)
                del clusterer
                gc.unfreeze()
                gc.collect()
            print(f"{round_number + 1:5d} {times['compiled'][-1]:11.3f} "
                  f"{times['numpy'][-1]:9.3f} "
                  f"{times['numpy'][-1] / times['compiled'][-1]:15.3f}", flush=True)
        source.close()
    differing = [name for name in built["compiled"]
                 if built["compiled"][name] != built["numpy"][name]]
    compiled, reference = statistics.median(times["compiled"]), statistics.median(times["numpy"])
    ratios = sorted(b / a for a, b in zip(times["compiled"], times["numpy"], strict=True))
    steps = {step: {side: round(spent[side][step] / args.rounds, 4) for side in spent}
             for step in STEPS}
    print(f"window {window:,} articles: medians {compiled:.3f} s compiled, {reference:.3f} s "
          f"numpy ({reference / compiled:.3f}x); a round's ratio from {ratios[0]:.3f} to "
          f"{ratios[-1]:.3f}")
    for step, seconds in steps.items():
        print(f"  {step}: {seconds['compiled']:.4f} s compiled, {seconds['numpy']:.4f} s numpy "
              "a load")
    print(f"the two windows differ in: {', '.join(differing) or 'nothing'}")
    print(json.dumps({"articles": window, "rounds": args.rounds,
                      "compiled_s": round(compiled, 4), "numpy_s": round(reference, 4),
                      "speedup": round(reference / compiled, 3),
                      "ratio_low": round(ratios[0], 3), "ratio_high": round(ratios[-1], 3),
                      "steps_s": steps, "differing": differing}))
    if differing:
        sys.exit(1)


if __name__ == "__main__":
    main()
