"""Killing a featuretree command with SIGKILL part-way, for the resume tests."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path


def committed_images(db_path: Path) -> int:
    """Rows in the database's ``images`` table (0 while it does not exist yet)."""
    with contextlib.suppress(sqlite3.Error):
        if db_path.exists():
            with contextlib.closing(sqlite3.connect(db_path)) as conn:
                return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    return 0


def kill_after(command: list[str], env: dict[str, str], db_path: Path, images: int, timeout: float = 120) -> int:
    """Run ``command`` and kill -9 it (and its process group: decoding workers) once ``db_path`` has at least
    ``images`` image rows; returns the number committed. Fails if the command ended by itself first."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if committed_images(db_path) >= images:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    return committed_images(db_path)
