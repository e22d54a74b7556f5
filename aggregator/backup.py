"""A consistent copy of the store, made while the daemon writes to it (``aggregator backup``),
and the way back (``aggregator restore``).

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
    started = time.perf_counter()
    articles, stories = _copy_over(source_path, target, compact, check,
                                   f"backup of {database} to {destination}")
    return BackupReport(str(target), target.stat().st_size, articles, stories,
                        time.perf_counter() - started)


def _copy_over(source_path: Path, target: Path, compact: bool, check: bool,
               what: str) -> tuple[int, int]:
    """Copy the database ``source_path`` into a temporary file beside ``target``, check
    it, and rename it over ``target``; returns the copy's articles and stories.  A
    ``StoreError`` names ``what`` failed; ``target`` is unchanged then."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
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
                    raise StoreError(f"{what}: the copy failed SQLite's quick_check "
                                     f"({'; '.join(problems[:3])}); nothing was replaced")
            counts = (copy.execute("SELECT count(*) FROM articles").fetchone()[0],
                      copy.execute("SELECT count(*) FROM stories").fetchone()[0])
        finally:
            copy.close()
        # A -wal file left beside the file replaced would be read into the copy.
        for stale in _companions(target):
            stale.unlink(missing_ok=True)
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StoreError(f"{what} failed: {exc}") from None
    except OSError as exc:
        raise StoreError(f"{what} failed: {exc.strerror} ({exc.filename})") from None
    finally:
        for leftover in (partial, *_companions(partial)):
            leftover.unlink(missing_ok=True)
    return counts


@dataclass(frozen=True)
class RestoreReport:
    articles: int
    stories: int
    # Where the database replaced was kept (None: there was none).
    previous: str | None


def check_backup(backup: Path, known_migrations: list[str]) -> tuple[int, int]:
    """That ``backup`` is a whole store this code can open: SQLite's ``quick_check``, and
    no migration this code does not know (a backup of a newer version).  Returns its
    articles and stories; a ``StoreError`` says what is wrong."""
    if not backup.is_file():
        raise StoreError(f"{backup}: no backup there")
    try:
        conn = read_only_connection(str(backup))
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StoreError(f"{backup}: fails SQLite's quick_check "
                                 f"({'; '.join(problems[:3])})")
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"_migrations", "articles", "stories"} <= tables:
                raise StoreError(f"{backup}: not a store of this aggregator")
            unknown = [name for (name,) in conn.execute("SELECT name FROM _migrations")
                       if name not in known_migrations]
            if unknown:
                raise StoreError(f"{backup}: made by a newer version of the aggregator "
                                 f"({', '.join(unknown)}); upgrade it to restore this")
            return (conn.execute("SELECT count(*) FROM articles").fetchone()[0],
                    conn.execute("SELECT count(*) FROM stories").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{backup}: not a database SQLite can read ({exc})") from None


def restore(database: str, backup: Path, known_migrations: list[str],
            now: datetime) -> RestoreReport:
    """Put ``backup`` in the place of ``database``, which no daemon may hold (the caller
    makes sure).  The database replaced is kept first, as a backup of its own beside it
    (``NAME.before-restore-TIME.db``), and the copy goes in under a temporary name,
    renamed over the database once whole; its ``-wal`` and ``-shm`` files go, since they
    belong to the database replaced."""
    articles, stories = check_backup(backup, known_migrations)
    target = Path(database).resolve()
    if backup.resolve() in {target, *_companions(target)}:
        raise StoreError(f"{backup}: that is the database itself")
    previous = None
    if target.exists():
        kept = backup_path(str(target), str(target.parent), now)
        kept = kept.with_name(kept.name.replace(f"{target.stem}-",
                                                f"{target.stem}.before-restore-", 1))
        try:
            previous = back_up(str(target), kept, check=False).path
        except StoreError:
            # A database SQLite cannot copy (often why it is restored): its files are moved
            # aside as they are.
            for path, moved in zip([target, *_companions(target)],
                                   [kept, *_companions(kept)], strict=True):
                if path.exists():
                    os.replace(path, moved)
            previous = str(kept)
    _copy_over(backup.resolve(), target, False, False, f"restore of {backup} to {database}")
    return RestoreReport(articles, stories, previous)

