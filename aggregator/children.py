"""The daemon's child processes (the worker processes, the write-behind process) end with it.

Imports nothing of the package: each child runs this as it starts, and a child that
imported more for it would carry that memory for nothing.
"""

from __future__ import annotations

import os
import threading
import time

# How often a child process looks whether the daemon is still there.
PARENT_CHECK_S = 1.0


def exit_with_parent(parent: int) -> None:
    """In a child process: exit once ``parent`` (the daemon) is gone.

    A daemon killed outright (SIGKILL, out of memory) cannot stop its children, and they
    would wait on their task queue for ever: each worker holds that queue's writing end
    too, so it never reads an end of file.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
