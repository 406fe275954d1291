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


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch):
    """Final training stops as on Ctrl-C right after its first epoch is saved; calling the
    returned function lets the next training run to the end."""
    from search.training import final

    real_line = final._epoch_line

    def stop_after_first_epoch(row, epochs):  # the checkpoint of epoch 1 is already saved
        real_line(row, epochs)
        raise KeyboardInterrupt

    monkeypatch.setattr(final, "_epoch_line", stop_after_first_epoch)
    return lambda: monkeypatch.setattr(final, "_epoch_line", real_line)
