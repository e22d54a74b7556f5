"""Faults in the write-behind process, for the tests that need one there.

The process is spawned: it imports the package afresh and sees none of a test's
monkeypatching.  ``write_behind_with`` gives an aggregator a write-behind process that runs
some of the functions below as it starts (the process imports them from this module by
name), each of which changes that process the way a test changes its own.
"""

from __future__ import annotations

import os
import sqlite3
import time
from functools import partial
from pathlib import Path

import aggregator.store as store_module
from aggregator.store import StagedWrites, WriteBehind


def write_behind_with(aggregator, *setup) -> None:
    """The aggregator's next write groups go to a fresh write-behind process that runs each
    of ``setup`` (module-level callables, or partials of them) before it opens its
    connection.  Groups already handed over are settled first."""
    aggregator._settle_in_flight()
    if aggregator._write_behind is not None:
        aggregator._write_behind.close()
    aggregator._write_behind = WriteBehind(aggregator.store.path, partial(_run_all, setup))


def _run_all(setup) -> None:
    for step in setup:
        step()


def pragma_on_connect(pragma: str) -> None:
    """Every connection that this process opens to write runs ``pragma`` first."""
    opened = store_module.writer_connection

    def set_up(path):
        conn = opened(path)
        conn.execute(pragma)
        return conn
    store_module.writer_connection = set_up


def groups_fail(message: str) -> None:
    """Every group's transaction fails with ``message`` (as a failed COMMIT would), and
    nothing of it is kept."""
    def failing(rows: bytes) -> None:
        raise sqlite3.OperationalError(message)
    store_module._write_behind = failing


def rows_of_guid_fail(guid: str, message: str) -> None:
    """Writing rows that include the article ``guid`` fails with ``message``."""
    write = StagedWrites.write

    def flaky(self, conn, search_rows=None):
        write(self, conn, search_rows)
        if any(row[2] == guid for row in self.articles):
            raise sqlite3.OperationalError(message)
    StagedWrites.write = flaky


def pause_in_write(inside: str, release: str) -> None:
    """Each group's rows are written, then the transaction waits, still open, until the
    file ``release`` exists (at most 10 s); the file ``inside`` says that it waits."""
    write = StagedWrites.write

    def slow(self, conn, search_rows=None):
        write(self, conn, search_rows)
        Path(inside).touch()
        deadline = time.monotonic() + 10
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    StagedWrites.write = slow


def dies_in_first_write(flag: str) -> None:
    """The first such process to write a group dies as it starts (as if killed), leaving the
    file ``flag``; the later ones write as usual."""
    write_group = store_module._write_behind

    def dying(rows: bytes) -> None:
        if not Path(flag).exists():
            Path(flag).touch()
            os._exit(3)
        write_group(rows)
    store_module._write_behind = dying
