"""Arrays of the window grow in place where they can, and keep their contents either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.memory import enlarge


class Holder:
    pass


@pytest.mark.parametrize(("shape", "rows", "hold_view"), [
    ((0,), 5, False),
    ((4,), 9, False),
    ((4,), 9, True),
    ((3, 7), 8, False),
    ((3, 7), 8, True),
    ((200_000, 4), 250_000, False),
])
def test_enlarge_keeps_rows_and_zeroes_the_new_ones(shape, rows, hold_view):
    holder = Holder()
    holder.values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) + 1
    expected = holder.values.copy()
    view = holder.values[:2] if hold_view else None
    enlarge(holder, "values", rows)
    assert holder.values.shape == (rows, *shape[1:])
    assert np.array_equal(holder.values[:shape[0]], expected)
    assert not holder.values[shape[0]:].any()
    if view is not None:  # a view keeps what it saw: the array was copied, not moved
        assert np.array_equal(view, expected[:2])


def _huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


GROW_256_MB = """
import numpy as np
from aggregator.memory import enlarge, keep_large_arrays_movable
keep_large_arrays_movable()
class Holder: pass
holder = Holder()
holder.values = np.ones((1 << 25, 8), dtype=np.uint8)  # 256 MB, every page written
enlarge(holder, "values", (1 << 25) + (1 << 23))      # + 64 MB
assert holder.values[: 1 << 25].all() and not holder.values[1 << 25:].any()
# VmHWM, not ru_maxrss: that one keeps the high-water mark of the process before exec (the
# test runner, forked).
status = {line.split(":")[0]: int(line.split()[1]) // 1024
          for line in open("/proc/self/status") if line.startswith(("VmHWM:", "VmRSS:"))}
print(status["VmHWM"], status["VmRSS"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or _huge_pages_always(),
                    reason="glibc's remapping realloc, without system-wide huge pages")
def test_a_large_array_grows_without_a_second_copy():
    """Growing 256 MB by 64 MB peaks near 320 MB (a copy would hold 576 MB at once), and
    the 64 MB of new zero rows are not resident afterwards."""
    peak_mb, rss_mb = map(int, subprocess.run([sys.executable, "-c", GROW_256_MB], check=True,
                                              capture_output=True, text=True).stdout.split())
    # The interpreter and numpy take about 40 MB.
    assert peak_mb < 256 + 64 + 100
    assert rss_mb < 256 + 50


FREE_AFTER_A_LARGER_ONE = """
import numpy as np
from aggregator.memory import keep_large_arrays_movable
keep_large_arrays_movable()
def rss():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status")
                if line.startswith("VmRSS:"))
larger = np.ones(24 << 20, dtype=np.uint8)  # 24 MB: glibc raises its threshold to this
del larger
array = np.ones(1 << 24, dtype=np.uint8)   # 16 MB
held = rss()
del array
print(held - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_freed_array_goes_back_to_the_system_even_after_a_larger_one():
    """Without a fixed threshold the 16 MB would come from the heap and stay there."""
    returned_mb = int(subprocess.run([sys.executable, "-c", FREE_AFTER_A_LARGER_ONE],
                                     check=True, capture_output=True, text=True).stdout)
    assert returned_mb >= 15
