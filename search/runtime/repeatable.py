"""Latency you can repeat: the median, its p10/p90 spread, and a re-measure when it is wide.

A busy machine makes single runs slow, not fast, so the median of repeated runs is the
headline number and (p90 - p10) / median says how much to trust it. When that spread is
over :data:`SPREAD_LIMIT` the model is timed again (up to ``retries`` times) and the run
with the narrower spread is kept. :func:`time_onnx_model` is the one way the search's
latency meter and ``serve.bench --panel`` time an ONNX model at batch 1, with the session
factory of :mod:`search.runtime.sessions` and the timer of :mod:`search.runtime.timing`.
Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.runtime.timing import Measurement, measure

SPREAD_LIMIT = 0.25
"""Largest (p90 - p10) / median accepted without timing the model again."""
RETRIES = 1
"""Extra timing passes when the spread is over the limit."""
MIN_REPEATS = 3
"""Timed runs made even when the time cap is reached."""


@dataclass(frozen=True)
class RepeatableMeasurement:
    """The kept timing pass and how it was obtained.

    Attributes:
        measurement: the pass with the narrowest spread (samples, stats, settings).
        p10_ms, p90_ms: its 10th and 90th percentiles (numpy's ``linear`` rule).
        spread: ``(p90 - p10) / median`` of that pass.
        attempts: timing passes made (1: the first was narrow enough).
        spread_limit: the limit the passes were held to.
    """

    measurement: Measurement
    p10_ms: float
    p90_ms: float
    spread: float
    attempts: int
    spread_limit: float

    @property
    def median_ms(self) -> float:
        return self.measurement.stats.median_ms

    @property
    def runs(self) -> int:
        return self.measurement.stats.count


def relative_spread(m: Measurement) -> float:
    """``(p90 - p10) / median`` (``inf`` for a zero median)."""
    p10, p90, median = m.stats.p10_ms, m.stats.p90_ms, m.stats.median_ms
    return (p90 - p10) / median if median > 0 else math.inf


def measure_repeatable(fn: Callable[[], Any], *, warmup: int, repeats: int | None,
                       max_time_s: float | None, spread_limit: float = SPREAD_LIMIT,
                       retries: int = RETRIES, **record: Any) -> RepeatableMeasurement:
    """Time ``fn`` with :func:`search.runtime.timing.measure`; re-time while the spread is wide.

    ``record`` (``provider``, ``threads``, ``batch_size``, ``clock``) goes to ``measure``.
    A re-measure runs no warm-up of its own beyond one run (the model is warm already).
    """
    best: tuple[float, Measurement] | None = None
    attempts = 0
    while True:
        m = measure(fn, warmup=warmup if attempts == 0 else min(warmup, 1), repeats=repeats,
                    min_repeats=MIN_REPEATS, max_time_s=max_time_s, **record)
        attempts += 1
        spread = relative_spread(m)
        if best is None or spread < best[0]:
            best = (spread, m)
        if best[0] <= spread_limit or attempts > retries:
            break
    spread, kept = best
    return RepeatableMeasurement(kept, kept.stats.p10_ms, kept.stats.p90_ms, spread, attempts, spread_limit)


def random_feed(session: Any, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 inputs for every input of an ONNX Runtime session.

    A symbolic dimension (a dynamic batch) takes ``batch``.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for node in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in node.shape]
        feed[node.name] = rng.standard_normal(shape, dtype=np.float32)
    return feed


def time_onnx_model(path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = 1,
                    warmup: int = 5, repeats: int | None = 20, max_time_s: float | None = 3.0,
                    spread_limit: float = SPREAD_LIMIT, retries: int = RETRIES
                    ) -> RepeatableMeasurement:
    """Time an ONNX model at batch 1 in ONNX Runtime on ``device`` with ``threads`` intra-op
    threads (``None``: every CPU this process may use).

    Raises:
        NasdeployError: onnxruntime missing or the device's provider absent.
    """
    from search.runtime.sessions import SessionSettings, create_session, session_provider

    settings = SessionSettings(device=device, threads=threads)
    session = create_session(path, settings)
    feed = random_feed(session)
    return measure_repeatable(lambda: session.run(None, feed), warmup=warmup, repeats=repeats,
                              max_time_s=max_time_s, spread_limit=spread_limit, retries=retries,
                              provider=session_provider(session), threads=settings.intra_op_threads,
                              batch_size=1)


def interleaved_medians(models: dict[str, str | os.PathLike[str]], *, rounds: int = 3,
                        **timing: Any) -> dict[str, list[float]]:
    """Batch-1 median latency (ms) of each ONNX model, once per round, the models taken in turn
    within every round so a change in the host's load hits them alike; ``timing`` goes to
    :func:`time_onnx_model`."""
    seen: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            seen[name].append(time_onnx_model(path, **timing).median_ms)
    return seen
