"""A consistent copy of the store, made while the daemon writes to it (``aggregator backup``).

Copying the database file by hand while the daemon runs can give a torn copy: in WAL mode
the latest transactions are in the ``-wal`` file, and either file may change during the
copy.  SQLite's online backup copies the pages of one read snapshot instead: the daemon
writes on meanwhile (readers never block a WAL writer), and the copy holds every
transaction committed before it began and none after.  The copy is made under a temporary
name beside the destination, checked, and renamed over it only when whole, so a failed
backup leaves the previous one in place.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import StoreError
from .readers import read_only_connection


def _companions(database: Path) -> list[Path]:
    """The files SQLite keeps beside a database while it is open."""
    return [database.with_name(database.name + suffix)
            for suffix in ("-wal", "-shm", "-journal")]


@dataclass(frozen=True)
class BackupReport:
    path: str
    size: int
    articles: int
    stories: int
    seconds: float


def backup_path(database: str, destination: str, now: datetime) -> Path:
    """Where a backup of ``database`` goes: ``destination`` itself, or in a folder, a file
    named after the database and the time (``aggregator-20261207T120000Z.db``)."""
    target = Path(destination).expanduser()
    if target.is_dir():
        return target / f"{Path(database).stem}-{now.strftime('%Y%m%dT%H%M%SZ')}.db"
    return target


def back_up(database: str, destination: Path, compact: bool = False,
            check: bool = True) -> BackupReport:
    """Copy ``database`` to ``destination`` (see the module); ``compact``: rewrite it
    without free pages (``VACUUM INTO``: smaller, slower); ``check``: run SQLite's
    ``quick_check`` on the copy before it replaces anything.  A ``StoreError`` names what
    failed; nothing at ``destination`` changes then."""
    source_path = Path(database).resolve()
    if not source_path.is_file():
        raise StoreError(f"{database}: no database there")
    target = destination.resolve()
    if target in {source_path, *_companions(source_path)}:
        raise StoreError(f"{destination}: that is the database itself; back it up elsewhere")
    if not target.parent.is_dir():
        raise StoreError(f"{destination}: no folder {target.parent}")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    started = time.perf_counter()
    try:
        # Made empty first, readable by the owner alone: a source's URL can hold a token.
        os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        source = read_only_connection(str(source_path))
        try:
            if compact:
                source.execute("VACUUM INTO ?", [str(partial)])
            else:
                copy = sqlite3.connect(partial)
                try:
                    # All pages in one step, so in one snapshot: in steps, each write by the
                    # daemon between two of them would start the copy over.
                    source.backup(copy)
                finally:
                    copy.close()
        finally:
            source.close()
        copy = sqlite3.connect(partial)
        try:
            # One self-contained file (the store goes back to WAL when the daemon opens it).
            copy.execute("PRAGMA journal_mode = DELETE")
            if check:
                problems = [row[0] for row in copy.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreError(f"{destination}: the copy failed SQLite's quick_check "
                                     f"({'; '.join(problems[:3])}); nothing was replaced")
            articles = copy.execute("SELECT count(*) FROM articles").fetchone()[0]
            stories = copy.execute("SELECT count(*) FROM stories").fetchone()[0]
        finally:
            copy.close()
        # A -wal file left beside an earlier backup would be read into this one.
        for stale in _companions(target):
            stale.unlink(missing_ok=True)
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {database} to {destination} failed: {exc}") from None
    except OSError as exc:
        raise StoreError(f"backup of {database} to {destination} failed: {exc.strerror} "
                         f"({exc.filename})") from None
    finally:
        for leftover in (partial, *_companions(partial)):
            leftover.unlink(missing_ok=True)
    return BackupReport(str(target), target.stat().st_size, articles, stories,
                        time.perf_counter() - started)
