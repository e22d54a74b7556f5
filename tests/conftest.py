from __future__ import annotations

import shutil
import sys
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
