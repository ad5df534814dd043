"""Stopping the processes a test started, so none outlives it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any


def stop_all(procs: Iterable[subprocess.Popen[Any]], grace_s: float = 15.0) -> None:
    """SIGTERM every process still running, SIGKILL what is left after `grace_s` (together,
    not one after the other); idempotent."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
