from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from feed_server import FeedServer  # noqa: E402

from aggregator.native import kernels  # noqa: E402

SEEDS = ROOT / "seeds"
# The tests of a compiled kernel compare it with its numpy counterpart; without a C
# compiler the package has none (``.ci/run`` requires them: test_the_kernels_were_built).
requires_kernels = pytest.mark.skipif(kernels is None,
                                      reason="built without a C compiler: numpy alone is used")
DATA = Path(__file__).resolve().parent / "data"


def start_daemon(config, tick: str = "1s") -> subprocess.Popen:
    """``aggregator run`` on ``config`` as a user starts it, looking for due sources every
    ``tick``; its output unbuffered, as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "run", "--config", str(config), "--tick", tick],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


@contextmanager
def killed_at_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``process``, killed on the way out if a failed check left it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()


@contextmanager
def daemon_running(config) -> Iterator[subprocess.Popen]:
    with killed_at_exit(start_daemon(config)) as process:
        yield process


def stop_daemon(process: subprocess.Popen) -> str:
    """SIGTERM, as ``docker stop`` sends it, and the end awaited; the daemon's stderr."""
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    return err


def wait_until_polling(process: subprocess.Popen) -> str:
    """The daemon's stderr up to the line saying it polls: its window is loaded and its
    lock held by then.  Returns that line ("" if the daemon ended first)."""
    line = process.stderr.readline()
    while line and not line.startswith("polling"):
        line = process.stderr.readline()
    return line
SEED_FEEDS = {
    "World Desk Daily": "world-desk.rss.xml",
    "News18 World": "news18-world.atom.xml",
    "Europe Brief": "europe-brief.feed.json",
}


def write_config(path: Path, sources: list[dict], database: str = "test.db",
                 extra: str = "") -> Path:
    lines = [f'database = "{database}"', extra]
    for source in sources:
        lines.append("[[sources]]")
        for key, value in source.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            elif isinstance(value, list):
                lines.append(f"{key} = {value!r}".replace("'", '"'))
            else:
                lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    """A private copy of the seed feeds, so tests may change them."""
    target = tmp_path / "seeds"
    target.mkdir()
    for name in SEED_FEEDS.values():
        shutil.copy(SEEDS / name, target / name)
    return target


@pytest.fixture
def seed_config(tmp_path: Path, seed_dir: Path) -> Path:
    return write_config(tmp_path / "aggregator.toml",
                        [{"name": name, "url": str(seed_dir / file)}
                         for name, file in SEED_FEEDS.items()])


@pytest.fixture
def feed_server():
    server = FeedServer().start()
    yield server
    server.stop()
