"""Load: a configuration of 10,000 sources on a loopback feed farm.

Reports the start-up time (configuration validated, sources synchronised into the database,
clustering index loaded), the process's memory after start-up and at the end, and the time
of one full pass over every source (fetch, parse, cluster, store).

    python benchmarks/load.py                 # 10,000 sources, 1 entry each
    python benchmarks/load.py --sources 2000 --entries 2

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402

from aggregator.config import load_config  # noqa: E402
from aggregator.pipeline import Aggregator  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=1)
    args = parser.parse_args()
    farm = Farm(args.sources, args.entries, seed=3, words=60)
    baseline_mb = rss_mb()
    with tempfile.TemporaryDirectory(prefix="load-") as workdir:
        config_path = Path(workdir) / "load.toml"
        write_farm_config(config_path, farm.urls(), str(Path(workdir) / "load.db"))
        started = time.perf_counter()
        config = load_config(config_path)
        aggregator = Aggregator(config)
        startup_s = time.perf_counter() - started
        startup_mb = rss_mb()
        print(f"start-up with {args.sources} sources: {startup_s:.2f} s, "
              f"RSS {startup_mb:.0f} MB (farm and interpreter before: {baseline_mb:.0f} MB)")
        started = time.perf_counter()
        reports = aggregator.run_pass()
        pass_s = time.perf_counter() - started
        new = sum(r.new_articles for r in reports)
        failed = sum(1 for r in reports if r.error)
        print(f"full pass: {len(reports)} sources, {new} new articles, {failed} failures, "
              f"{pass_s:.1f} s ({len(reports) / pass_s:.0f} sources/s)")
        started = time.perf_counter()
        second = aggregator.run_pass(force=True)
        second_s = time.perf_counter() - started
        print(f"second pass (all 304): {second_s:.1f} s")
        restart_started = time.perf_counter()
        aggregator.close()
        again = Aggregator(config)
        restart_s = time.perf_counter() - restart_started
        again.close()
        result = {
            "sources": args.sources, "entries_per_source": args.entries,
            "startup_s": round(startup_s, 2), "startup_rss_mb": round(startup_mb, 1),
            "full_pass_s": round(pass_s, 1), "new_articles": new, "failures": failed,
            "not_modified_pass_s": round(second_s, 1), "restart_s": round(restart_s, 2),
            "final_rss_mb": round(rss_mb(), 1),
            "not_modified": sum(1 for r in second if r.outcome == "not_modified"),
        }
    farm.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
