"""The daemon's worker processes as a user runs them: their memory and CPU in a real pass.

Runs ``aggregator run --once --all`` (the console script beside this interpreter, as the
Docker image and the README start the daemon) on a loopback farm (``farm.py``), and samples
from ``/proc`` the peak RSS and the CPU of each process the daemon starts: its worker
processes (``workers``, CPUs - 1 by default) and ``multiprocessing``'s resource tracker.
The benchmarks that run the pipeline in their own process (``ingest.py``, ``fetch.py``) do
not show a worker's memory as the daemon has it: under ``spawn`` a worker imports the
main script again, and theirs import the whole pipeline.

``--against CHECKOUT`` runs the same passes with another version's package (imported ahead
of the installed one, as ``turns.py`` does), alternating with this one.

    python benchmarks/workers.py --feeds 500 --rounds 2
    python benchmarks/workers.py --against ../before --feeds 500 --rounds 2

Linux only (``/proc``).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from farm import Farm, write_farm_config  # noqa: E402

CONSOLE_SCRIPT = Path(sys.executable).parent / "aggregator"
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SAMPLE_S = 0.05


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def peak_and_cpu(pid: int) -> tuple[float, float] | None:
    """A process's peak RSS (MB) and CPU (s) so far; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            peak = status.read().split("VmHWM:")[1].split()[0]
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone, or a zombie without its memory figures
        return None
    return int(peak) / 1024, (int(fields[11]) + int(fields[12])) / TICKS


def one_pass(package: Path | None, urls: list[str], directory: Path) -> dict:
    """A daemon's ``--once --all`` pass on a fresh store; its children's largest figures."""
    config = directory / "farm.toml"
    write_farm_config(config, urls, str(directory / f"{time.time_ns()}.db"))
    environment = dict(os.environ)
    if package is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(package)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH")
                              else []))
    started = time.perf_counter()
    daemon = subprocess.Popen([str(CONSOLE_SCRIPT), "run", "--once", "--all", "--config",
                               str(config)], env=environment, cwd=directory,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, tuple[float, float]] = {}
    while daemon.poll() is None:
        for child in children_of(daemon.pid):
            figures = peak_and_cpu(child)
            if figures is not None:
                seen[child] = figures  # both only grow
        time.sleep(SAMPLE_S)
    errors = daemon.stderr.read().decode(errors="replace") if daemon.stderr else ""
    if daemon.returncode != 0:
        raise SystemExit(f"the daemon failed ({daemon.returncode}): {errors[-500:]}")
    # The worker: the child that used the most CPU (the resource tracker hardly any).
    ranked = sorted(seen.values(), key=lambda figures: figures[1], reverse=True)
    return {"pass_s": round(time.perf_counter() - started, 2), "processes": len(ranked),
            "worker_peak_rss_mb": round(ranked[0][0], 1) if ranked else None,
            "worker_cpu_s": round(ranked[0][1], 2) if ranked else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=300)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", type=Path, help="another version's checkout")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("needs /proc (Linux)")
    if not CONSOLE_SCRIPT.exists():
        sys.exit(f"no console script at {CONSOLE_SCRIPT}: pip install -e . first")
    tree = Path(__file__).resolve().parent.parent
    versions = {"this": tree} | ({"against": args.against.resolve()} if args.against else {})
    farm = Farm(args.feeds, args.entries)
    results: dict[str, list[dict]] = {name: [] for name in versions}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for round_number in range(args.rounds):
                for name, package in versions.items():
                    result = one_pass(package, farm.urls(), Path(scratch))
                    results[name].append(result)
                    print(f"round {round_number + 1}, {name} ({package}): pass "
                          f"{result['pass_s']} s, worker peak RSS "
                          f"{result['worker_peak_rss_mb']} MB, CPU {result['worker_cpu_s']} s",
                          flush=True)
    finally:
        farm.stop()
    print(json.dumps({"feeds": args.feeds, "entries": args.entries, **{
        name: {"worker_peak_rss_mb": [r["worker_peak_rss_mb"] for r in runs],
               "worker_cpu_s": [r["worker_cpu_s"] for r in runs],
               "pass_s": [r["pass_s"] for r in runs]} for name, runs in results.items()}}))


if __name__ == "__main__":
    main()
