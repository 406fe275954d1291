"""The whole repository is ruff-clean (rules and line length in pyproject.toml), enforced in CI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes_on_the_repository():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format=concise",
                             "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
