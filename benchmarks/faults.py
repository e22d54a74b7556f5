"""Fault campaign: kill the daemon with SIGKILL at random moments during passes over a
loopback feed farm, restart it, and check that nothing is lost, nothing is stored twice,
every invariant holds and the stories equal those of an uninterrupted run.

    python benchmarks/faults.py --kills 100            # the long campaign
    python benchmarks/faults.py --kills 5 --feeds 8    # a quick one
    python benchmarks/faults.py --write-behind         # groups written by their own process

Work goes in rounds: a fresh database; passes started and killed at a random moment until one
completes on its own; then the round is verified.  ``served`` counts the entries the farm sent
in full 200 responses, summed over rounds.  The last line printed is one JSON object with
kills, restarts, rounds, served, stored, lost, duplicates, check_failures and
stories_equal_to_uninterrupted.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402

from aggregator.check import check_store  # noqa: E402
from aggregator.config import load_config  # noqa: E402
from aggregator.store import Store  # noqa: E402


def run_once(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aggregator.cli", "run", "--once", "--all",
                             "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stories_by_guid(database: str) -> set[frozenset[str]]:
    with sqlite3.connect(database) as conn:
        groups: dict[int, set[str]] = {}
        for story_id, guid in conn.execute("SELECT story_id, guid FROM articles"):
            groups.setdefault(story_id, set()).add(guid)
    return {frozenset(members) for members in groups.values()}


def campaign(kills: int, feeds: int, entries: int, seed: int, workdir: Path,
             log=print, write_behind: bool = False) -> dict:
    """``write_behind``: the daemon runs with ``write_behind = true`` (the reference run
    too), so that a kill can come while its write-behind process holds a transaction."""
    extra = "write_behind = true" if write_behind else ""
    rng = random.Random(seed)
    farm = Farm(feeds, entries, seed=seed)
    try:
        # The uninterrupted reference run, also timing one full pass.
        reference = workdir / "reference.toml"
        write_farm_config(reference, farm.urls(), str(workdir / "reference.db"), extra)
        started = time.monotonic()
        process = run_once(reference)
        _out, err = process.communicate()
        assert process.returncode == 0, err.decode()
        full_pass_s = time.monotonic() - started
        log(f"uninterrupted pass: {full_pass_s:.2f} s")

        # Rounds: a fresh database, passes killed at random moments until one pass completes
        # on its own; then that round is verified against the reference.
        totals = {"kills": 0, "restarts": 0, "rounds": 0, "served": 0, "stored": 0, "lost": 0,
                  "duplicates": 0, "check_failures": 0}
        all_equal = True
        reference_stories = stories_by_guid(str(workdir / "reference.db"))
        while totals["kills"] < kills:
            totals["rounds"] += 1
            config = workdir / f"round-{totals['rounds']}.toml"
            database = str(workdir / f"round-{totals['rounds']}.db")
            write_farm_config(config, farm.urls(), database, extra)
            farm.served.clear()
            while True:
                process = run_once(config)
                totals["restarts"] += 1
                time.sleep(rng.uniform(0.05, full_pass_s))
                if process.poll() is not None:
                    _out, err = process.communicate()
                    assert process.returncode == 0, err.decode()
                    break
                process.send_signal(signal.SIGKILL)
                process.wait()
                totals["kills"] += 1
                if totals["kills"] % 10 == 0:
                    log(f"{totals['kills']} kills")
            store = Store(database)
            violations = check_store(store, load_config(config).clustering)
            stored_rows = store.db.execute("SELECT count(*) FROM articles").fetchone()[0]
            stored = {row[0] for row in store.db.execute("SELECT guid FROM articles")}
            store.close()
            for violation in violations:
                log(f"round {totals['rounds']}: {violation.invariant}: {violation.detail}")
            totals["served"] += len(farm.served)
            totals["stored"] += len(stored)
            totals["lost"] += len(farm.served - stored)
            totals["duplicates"] += stored_rows - len(stored)
            totals["check_failures"] += len(violations)
            equal = stories_by_guid(database) == reference_stories
            all_equal = all_equal and equal
            if not equal:
                log(f"round {totals['rounds']}: stories differ from the uninterrupted run")
        return {**totals, "feeds": feeds, "entries_per_feed": entries,
                "write_behind": write_behind,
                "stories_equal_to_uninterrupted": all_equal,
                "uninterrupted_pass_s": round(full_pass_s, 2)}
    finally:
        farm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--feeds", type=int, default=40)
    parser.add_argument("--entries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-behind", action="store_true",
                        help="the daemon with write_behind = true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faults-") as workdir:
        result = campaign(args.kills, args.feeds, args.entries, args.seed, Path(workdir),
                          write_behind=args.write_behind)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
