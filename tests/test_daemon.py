"""The daemon as a user runs it: a real process, stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import daemon_running, stop_daemon

from aggregator.config import load_config


def test_daemon_polls_then_stops_cleanly_on_sigterm(seed_config):
    database = load_config(seed_config, environ={}).database
    with daemon_running(seed_config) as process:
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline and stored < 3:
            time.sleep(0.2)
            if os.path.exists(database):
                try:
                    with sqlite3.connect(database, timeout=1) as conn:
                        stored = conn.execute("SELECT count(*) FROM articles").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        assert stored == 3, "the daemon stored the three seed articles"
        err = stop_daemon(process)
    assert process.returncode == 0, err
    assert "SIGTERM" in err
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(DISTINCT story_id) FROM articles").fetchone() == (1,)


def test_daemon_serves_pages_while_it_polls(tmp_path, seed_dir):
    import httpx
    from conftest import SEED_FEEDS, write_config
    from test_web import free_port, wait_for

    port = free_port()
    config = write_config(
        tmp_path / "http.toml", [{"name": n, "url": str(seed_dir / f)}
                                 for n, f in SEED_FEEDS.items()],
        extra=f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n')
    with daemon_running(config) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/healthz")
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the daemon never became ready"
            time.sleep(0.2)
        metrics = httpx.get(f"{base}/metrics").text
        assert "aggregator_index_articles 3.0" in metrics
        assert "aggregator_index_article_limit 100000.0" in metrics
        terms = re.search(r"^aggregator_vocabulary_terms (\S+)$", metrics, re.M)
        in_memory = re.search(r"^aggregator_vocabulary_terms_in_memory (\S+)$", metrics, re.M)
        # The seeds' vocabulary is far below the size at which names leave memory.
        assert float(terms.group(1)) == float(in_memory.group(1)) > 100
        assert "Also covered by" in httpx.get(f"{base}/").text
        stop_daemon(process)
    assert process.returncode == 0


def test_the_daemon_stops_before_polling_when_it_cannot_serve_its_pages(tmp_path, seed_dir):
    """[http] enabled on a port another process holds: one line naming host and port, exit
    1, nothing polled (not a daemon that runs on without the pages it was asked for)."""
    import socket

    from conftest import SEED_FEEDS, write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "http.toml", [{"name": n, "url": str(seed_dir / f)}
                                     for n, f in SEED_FEEDS.items()],
            extra=f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n')
        done = subprocess.run([sys.executable, "-m", "aggregator.cli", "run", "--config",
                               str(config), "--tick", "1s"], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot serve on 127.0.0.1:{port}" in done.stderr
    with sqlite3.connect(tmp_path / "test.db") as conn:
        assert conn.execute("SELECT count(*) FROM articles").fetchone() == (0,)


def test_config_changes_are_applied_without_a_restart(tmp_path, seed_dir, caplog):
    from conftest import SEED_FEEDS, write_config

    from aggregator.cli import ConfigWatcher
    from aggregator.pipeline import Aggregator

    names = list(SEED_FEEDS)
    path = tmp_path / "live.toml"

    def write(sources, extra=""):
        write_config(path, [{"name": n, "url": str(seed_dir / SEED_FEEDS[n])} for n in sources],
                     extra=extra)
        stat = path.stat()
        os.utime(path, (stat.st_atime, stat.st_mtime + 10))

    write(names[:2])
    aggregator = Aggregator(load_config(path, environ={}))
    watcher = ConfigWatcher(str(path))
    assert len(aggregator.run_pass()) == 2
    assert watcher.reload_if_changed(aggregator) is None  # nothing changed, nothing done

    write(names[1:], extra="[clustering]\nsame_story_threshold = 0.2\n")
    changes = watcher.reload_if_changed(aggregator)
    assert f"added {names[2]}" in changes and f"removed {names[0]}" in changes
    assert "clustering settings" in changes
    assert aggregator.clusterer.settings.same_story_threshold == 0.2
    reports = aggregator.run_pass()
    assert [r.source for r in reports] == [names[2]]  # the kept source keeps its schedule

    path.write_text("database = 5\n")
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 20))
    assert watcher.reload_if_changed(aggregator) is None
    assert "configuration not reloaded" in caplog.text
    assert [s.name for s in aggregator.config.sources] == names[1:]

    write(names)
    watcher.mtime = path.stat().st_mtime  # as if the change had been seen already...
    watcher.request()                     # ...SIGHUP still reloads
    assert f"added {names[0]}" in watcher.reload_if_changed(aggregator)
    aggregator.close()


@pytest.mark.parametrize("told_by", ["SIGHUP", "the file's time of change"])
def test_a_changed_configuration_is_applied_at_once_not_at_the_next_tick(tmp_path, seed_dir,
                                                                         told_by):
    """A source added to the file: it is polled within seconds, where the daemon would
    otherwise look again only at its next tick (a minute here).  SIGHUP reloads a file
    whose time of change did not move (put back here); the daemon looks at that time every
    second."""
    from conftest import SEED_FEEDS, killed_at_exit, start_daemon, wait_until_polling, write_config

    names = list(SEED_FEEDS)
    path = tmp_path / "live.toml"

    def write(sources):
        write_config(path, [{"name": n, "url": str(seed_dir / SEED_FEEDS[n])} for n in sources])

    def stored_within(seconds: float, count: int) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(tmp_path / "test.db", timeout=1) as conn:
                    if conn.execute("SELECT count(*) FROM articles").fetchone()[0] >= count:
                        return True
            except sqlite3.OperationalError:
                pass
            time.sleep(0.1)
        return False

    write(names[:2])
    first = path.stat()
    with killed_at_exit(start_daemon(path, tick="60s")) as process:
        assert wait_until_polling(process)
        assert stored_within(30, 2), "the first pass stored the two seed articles"
        time.sleep(1.5)  # its watch has looked at the file since
        write(names)
        if told_by == "SIGHUP":
            os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
            process.send_signal(signal.SIGHUP)
        else:
            os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns + 10**9))
        assert stored_within(15, 3), f"the source added was polled after {told_by}"
        err = stop_daemon(process)
    assert process.returncode == 0, err
    assert f"configuration reloaded: added {names[2]}" in err


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_group_written_behind_is_not_committed_once_the_daemon_is_killed(seed_config):
    """The daemon killed while its write-behind process holds a write group's transaction:
    the group is rolled back, not committed after the daemon's end, where a daemon restarted
    meanwhile would have read the store without it.  (Its sources are fetched again.)"""
    from conftest import ROOT

    inside, release = seed_config.parent / "inside", seed_config.parent / "release"
    script = ("import sys, threading, time\n"
              "from dataclasses import replace\n"
              "from functools import partial\n"
              f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
              "from behind_faults import pause_in_write, write_behind_with\n"
              "from aggregator.config import load_config\n"
              "from aggregator.pipeline import Aggregator\n"
              "aggregator = Aggregator(replace(load_config(sys.argv[1], environ={}),\n"
              "                                write_behind=True))\n"
              "write_behind_with(aggregator, partial(pause_in_write, sys.argv[2], sys.argv[3]))\n"
              "threading.Thread(target=aggregator.run_pass, daemon=True).start()\n"
              "while aggregator._write_behind.pid is None or not __import__('os').path.exists(\n"
              "        sys.argv[2]):\n"
              "    time.sleep(0.01)\n"
              "print(aggregator._write_behind.pid, flush=True)\n"
              "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(seed_config), str(inside),
                                str(release)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        behind = int(process.stdout.readline())
        assert _running(behind)
    finally:
        process.kill()
        process.wait(timeout=30)
    try:
        release.touch()  # the group's rows are written: the transaction would commit now
        database = load_config(seed_config, environ={}).database
        conn = sqlite3.connect(database, timeout=30, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # once the write-behind transaction has ended
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM articles").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sources WHERE etag IS NOT NULL "
                            "OR last_status IS NOT NULL").fetchone() == (0,)
        conn.close()
    finally:
        # This process was not told to exit with the daemon (the daemon's are:
        # test_worker_processes_exit_when_the_daemon_is_killed).
        os.kill(behind, signal.SIGKILL)


def test_worker_processes_exit_when_the_daemon_is_killed(seed_config):
    """SIGKILL (or the kernel's out-of-memory killer) gives the daemon no chance to stop its
    workers; they must not wait for work for ever."""
    script = ("import sys\n"
              "from aggregator.config import load_config\n"
              "from aggregator.pipeline import Aggregator\n"
              "aggregator = Aggregator(load_config(sys.argv[1], environ={}))\n"
              "pool = aggregator._worker_pool()\n"
              "pool.submit(int, 1).result()\n"
              "print(' '.join(str(pid) for pid in pool._processes), flush=True)\n"
              "sys.stdin.read()\n")
    config = seed_config.read_text(encoding="utf-8").replace(
        "\n", "\nworkers = 2\n", 1)  # the first line is the database: top-level keys follow
    seed_config.write_text(config, encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-c", script, str(seed_config)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in process.stdout.readline().split()]
        assert workers and all(_running(pid) for pid in workers)
    finally:
        process.kill()
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)
