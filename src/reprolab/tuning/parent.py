"""A spawned tune worker's tie to the stage that started it, armed first thing in the new
process: before its arguments are unpickled or torch and optuna imported (seconds), in which
time the stage may already have died. This module imports nothing of the pipeline.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the pid that spawned it) ends, however it ends
    (SIGKILL included), and at once if it has ended already (this process was reparented):
    no orphan keeps training and writing to the study after DVC reported the stage failed.
    Linux: the kernel's parent-death signal; elsewhere a thread watching the parent pid."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):  # no prctl (macOS)
        armed = False
    if os.getppid() != parent:  # the stage died before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def spawned(parent: int, target: str, payload: bytes) -> None:
    """A spawned process's entry: tie it to ``parent``, then import ``target``
    ("module:function") and call it with the arguments pickled in ``payload``."""
    die_with_parent(parent)
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(*pickle.loads(payload))
