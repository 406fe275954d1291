"""The deployment cost model: latency in ONNX Runtime, MACs and parameters.

The candidate's cells are stacked at the deployment scale (random weights: latency does
not depend on weight values), exported with :func:`search.nn.onnxio.export_onnx` at batch 1
and timed in ONNX Runtime on the target device through :mod:`search.runtime` (the session
factory and the timer that ``serve.bench`` and the app use too): warm-up runs, then the
median of repeated runs. Results are cached per canonical genotype JSON in memory and,
optionally, in an append-only JSONL file that a resumed search reads back.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.core.atomic import append_line
from search.core.errors import MeasurementError, NasdeployError, one_line
from search.core.jsonio import loads_json, read_limited
from search.runtime.sessions import SessionSettings, create_session, resolve_providers, session_provider
from search.runtime.timing import Measurement, measure
from search.space.genotype import Genotype

CACHE_MAX_BYTES = 256 * 1024 * 1024
"""Largest latency cache read (an entry is under 1 kB)."""


@dataclass(frozen=True)
class LatencySettings:
    """Where and how latency is measured.

    Attributes:
        scale: deployment variant or ``N@F`` (default: the CIFAR-size NASNet, 6@768).
        image_size: input size; ``None`` uses the variant's size.
        num_classes: classifier outputs of the deployment model.
        device: ``cpu`` (CPUExecutionProvider) or ``cuda`` (CUDAExecutionProvider).
        warmup: untimed runs before timing.
        repeats: timed runs; the median is reported.
        threads: ONNX Runtime intra-op threads (``None``: pinned to the CPUs this process
            may use, see :func:`search.runtime.sessions.default_threads`).
        max_time_s: cap on the timing phase: a slow candidate (far over any budget) stops
            after at least 3 timed runs once this much time is spent (warm-up: half of it).
    """

    scale: str = "cifar"
    image_size: int | None = None
    num_classes: int = 10
    device: str = "cpu"
    warmup: int = 5
    repeats: int = 20
    threads: int | None = None
    max_time_s: float = 3.0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise NasdeployError(f"latency needs repeats >= 1 and warmup >= 0, got "
                                 f"{self.repeats}/{self.warmup}")


@dataclass(frozen=True)
class DeploymentCost:
    """Cost of one candidate at the deployment scale."""

    latency_ms: float
    macs: int
    params: int
    measure_time_s: float
    provider: str
    latency_p90_ms: float = math.nan
    timed_runs: int = 0
    threads: int | None = None


class LatencyMeter:
    """Callable cost model ``genotype -> DeploymentCost`` with a persistent cache.

    Args:
        settings: deployment scale and timing settings.
        cache_path: optional JSONL file; entries measured under other settings are ignored.

    Raises:
        NasdeployError: the requested ONNX Runtime provider is not available.
    """

    def __init__(self, settings: LatencySettings, cache_path: str | os.PathLike[str] | None = None):
        from search.space.scale import parse_scale

        resolve_providers(settings.device)  # fail now, not after the first child
        scale = parse_scale(settings.scale, settings.image_size)
        self.settings = settings
        self.image_size = scale.image_size
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.measurements = 0
        self._fingerprint = _fingerprint(settings, self.image_size)
        self._cache: dict[str, DeploymentCost] = self._read_cache()

    def __call__(self, genotype: Genotype) -> DeploymentCost:
        """The cost of ``genotype``, measured once per canonical genotype."""
        key = genotype.to_json()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        cost = self.measure(genotype)
        self._cache[key] = cost
        self._append(key, cost)
        return cost

    def __len__(self) -> int:
        return len(self._cache)

    def measure(self, genotype: Genotype) -> DeploymentCost:
        """Build, export and time ``genotype`` now (no cache).

        Raises:
            MeasurementError: the deployment model could not be built, exported or run.
        """
        from search.nn.cost import count_macs, count_params
        from search.nn.model import build_model

        start = time.perf_counter()
        s = self.settings
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_model(genotype, s.scale, num_classes=s.num_classes,
                                    image_size=self.image_size).eval()
            params, macs = count_params(model), count_macs(model, self.image_size)
            with tempfile.TemporaryDirectory(prefix="nasdeploy-latency-") as tmp:
                path = Path(tmp) / "model.onnx"
                export_path = _export(model, path, self.image_size)
                timing = time_onnx(export_path, self.image_size, s.device, s.warmup,
                                   s.repeats, s.threads, s.max_time_s)
        except NasdeployError:
            raise
        except Exception as exc:  # one candidate's failure, reported on one line
            raise MeasurementError(f"cannot measure latency: {one_line(exc)}") from None
        self.measurements += 1
        return DeploymentCost(
            latency_ms=timing.stats.median_ms, macs=int(macs), params=int(params),
            measure_time_s=round(time.perf_counter() - start, 3), provider=timing.provider or "",
            latency_p90_ms=timing.stats.p90_ms, timed_runs=timing.stats.count, threads=timing.threads,
        )

    def _read_cache(self) -> dict[str, DeploymentCost]:
        cache: dict[str, DeploymentCost] = {}
        if self.cache_path is None or not self.cache_path.is_file():
            return cache
        data = read_limited(self.cache_path, max_bytes=CACHE_MAX_BYTES)
        for number, line in enumerate(data.splitlines(), start=1):
            try:  # NaN is allowed: an entry's p90 may be NaN
                entry = loads_json(line, f"{self.cache_path} line {number}", expect=dict, allow_nan=True)
                if entry.get("settings") == self._fingerprint:
                    cache[entry["genotype"]] = DeploymentCost(**entry["cost"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a kill, or a foreign line
        return cache

    def _append(self, key: str, cost: DeploymentCost) -> None:
        if self.cache_path is None:
            return
        entry = {"genotype": key, "settings": self._fingerprint, "cost": asdict(cost)}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.cache_path, json.dumps(entry, sort_keys=True))


def _fingerprint(settings: LatencySettings, image_size: int) -> dict[str, Any]:
    """Settings that change the measured numbers (a cache entry is valid only under them)."""
    return {"scale": settings.scale, "image_size": image_size,
            "num_classes": settings.num_classes, "device": settings.device,
            "threads": settings.threads, "repeats": settings.repeats}


def _export(model: torch.nn.Module, path: Path, image_size: int) -> Path:
    from search.nn.onnxio import export_onnx

    return export_onnx(model, path, image_size, dynamic_batch=False, batch_size=1)


def time_onnx(path: str | os.PathLike[str], image_size: int, device: str = "cpu",
              warmup: int = 5, repeats: int = 20, threads: int | None = None,
              max_time_s: float | None = None) -> Measurement:
    """Time an ONNX model at batch 1 on ``device`` with :func:`search.runtime.timing.measure`.

    With ``max_time_s`` the warm-up stops after half of it (at least one run) and the timed
    runs after all of it (at least ``min(3, repeats)`` runs), so a very slow candidate
    costs seconds, not minutes. The result records the provider and the thread count.
    """
    from search.nn.onnxio import INPUT_NAME

    settings = SessionSettings(device=device, threads=threads)
    session = create_session(path, settings)
    rng = np.random.default_rng(0)
    feed = {INPUT_NAME: rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32)}
    return measure(lambda: session.run(None, feed), warmup=warmup, repeats=repeats, min_repeats=3,
                   max_time_s=max_time_s, provider=session_provider(session),
                   threads=settings.intra_op_threads, batch_size=1)
