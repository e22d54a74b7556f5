"""The daemon as a user runs it: a real process, stopped by a signal."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from aggregator.config import load_config


def test_daemon_polls_then_stops_cleanly_on_sigterm(seed_config):
    database = load_config(seed_config, environ={}).database
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "run", "--config", str(seed_config),
         "--tick", "1s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
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
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "SIGTERM" in err
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(DISTINCT story_id) FROM articles").fetchone() == (1,)
