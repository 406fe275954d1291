"""Run a command line from a benchmark with its output appended to a log (shared helper)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` in the repository with one intra-op thread, its output appended to ``log``;
    exit with one line naming the log when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed (exit {rc}); see {log}")
