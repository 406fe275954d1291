"""Shared test settings: deterministic, small, CPU-only."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same random state."""
    try:
        import torch
    except ImportError:  # serve tests may run without torch
        yield
        return
    torch.manual_seed(0)
    yield
