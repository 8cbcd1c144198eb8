"""Test helper: kill -9 a writer process at a chosen moment (crash-consistency tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def sigkill_when_ready(proc: subprocess.Popen, ready: Path, never: str,
                       timeout: float = 30.0) -> None:
    """Wait until *proc* creates *ready* (it must stay alive until then; *never* is the
    failure message if it does not within *timeout* s), then SIGKILL it and reap it."""
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, never
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
