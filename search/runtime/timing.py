"""The one latency timer and the one percentile rule.

:func:`measure` runs untimed warm-ups, then timed runs with ``time.perf_counter``, under an
optional time cap; :func:`summarize` turns the per-run milliseconds into statistics with
numpy's default (``linear``) percentile rule. The search's latency meter, ``serve.bench``,
the app and the benchmarks all time through here, so their numbers mean the same thing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from search.core.errors import NasdeployError

PERCENTILE_METHOD = "linear"


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-run latencies in milliseconds (population std, ``linear`` percentiles)."""

    count: int
    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Median, mean, p10, p90, p99, min, max and std of ``samples_ms``.

    Raises:
        ValueError: no samples.
    """
    ms = np.asarray(samples_ms, dtype=np.float64)
    if ms.size == 0:
        raise ValueError("no latency samples to summarize")
    p10, p50, p90, p99 = np.percentile(ms, [10, 50, 90, 99], method=PERCENTILE_METHOD)
    return LatencyStats(count=int(ms.size), median_ms=float(p50), mean_ms=float(ms.mean()),
                        p10_ms=float(p10), p90_ms=float(p90), p99_ms=float(p99), min_ms=float(ms.min()),
                        max_ms=float(ms.max()), std_ms=float(ms.std()))


@dataclass(frozen=True)
class Measurement:
    """Timed runs of one callable, their statistics, and the settings that produced them.

    Attributes:
        samples_ms: every timed run, in order.
        stats: :func:`summarize` of the samples.
        warmup: warm-up runs asked for; ``warmup_runs``: how many ran (the cap may cut them).
        repeats: timed runs asked for (``None``: as many as ``max_time_s`` allows).
        min_repeats: timed runs made even when the cap is reached.
        max_time_s: the time cap of the timed phase (warm-up: half of it); ``None``: none.
        stopped_by_time: the cap ended the timed phase before ``repeats`` runs.
        provider, threads, batch_size: where and how the runs went (as the caller states).
        time_s: wall time of warm-up and timed runs together.
    """

    samples_ms: tuple[float, ...]
    stats: LatencyStats
    warmup: int
    warmup_runs: int
    repeats: int | None
    min_repeats: int
    max_time_s: float | None
    stopped_by_time: bool
    provider: str | None
    threads: int | None
    batch_size: int | None
    time_s: float

    @property
    def median_ms(self) -> float:
        """The headline number: the median run."""
        return self.stats.median_ms

    @property
    def throughput_ips(self) -> float:
        """Items per second over the timed runs (needs ``batch_size``)."""
        if self.batch_size is None:
            raise ValueError("throughput needs the batch size")
        return self.batch_size * len(self.samples_ms) / (sum(self.samples_ms) / 1000.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (samples as a list)."""
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        return out


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 5,
    repeats: int | None = 20,
    min_repeats: int = 3,
    max_time_s: float | None = None,
    provider: str | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    clock: Callable[[], float] | None = None,
) -> Measurement:
    """Time ``fn()``: ``warmup`` untimed runs, then up to ``repeats`` timed runs.

    With ``max_time_s`` the warm-up stops once half of it is spent (after at least one run),
    and the timed runs once all of it is spent (after at least ``min(min_repeats, repeats)``
    runs), so a very slow model costs seconds, not minutes. ``repeats=None`` times until
    the cap. ``provider``, ``threads`` and ``batch_size`` are recorded, not applied;
    ``clock`` (seconds) defaults to ``time.perf_counter``.

    Raises:
        NasdeployError: impossible settings (negative warm-up, no repeats, no bound at all).
    """
    if warmup < 0 or min_repeats < 1 or (repeats is not None and repeats < 1):
        raise NasdeployError(f"timing needs warmup >= 0, repeats >= 1 and min_repeats >= 1, got "
                             f"{warmup}/{repeats}/{min_repeats}")
    if repeats is None and max_time_s is None:
        raise NasdeployError("timing needs a number of repeats or a time limit")
    clock = clock or time.perf_counter
    cap = math.inf if max_time_s is None else max_time_s
    floor = min_repeats if repeats is None else min(min_repeats, repeats)
    began = clock()
    warmup_runs = 0
    while warmup_runs < warmup:
        fn()
        warmup_runs += 1
        if clock() - began >= cap / 2:
            break
    samples: list[float] = []
    stopped = False
    start = clock()
    while repeats is None or len(samples) < repeats:
        tick = clock()
        fn()
        tock = clock()
        samples.append((tock - tick) * 1000.0)
        if len(samples) >= floor and tock - start >= cap:
            stopped = repeats is not None and len(samples) < repeats
            break
    return Measurement(
        samples_ms=tuple(samples), stats=summarize(samples), warmup=warmup, warmup_runs=warmup_runs,
        repeats=repeats, min_repeats=min_repeats, max_time_s=max_time_s, stopped_by_time=stopped,
        provider=provider, threads=threads, batch_size=batch_size, time_s=clock() - began)
