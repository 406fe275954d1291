"""The deployment cost model: latency in ONNX Runtime or TensorRT, MACs and parameters.

The candidate's cells are stacked at the deployment scale (random weights: latency does
not depend on weight values), exported with :func:`search.nn.onnxio.export_onnx` at batch 1
and timed on the target device: in ONNX Runtime through :mod:`search.runtime` (the session
factory and the timer that ``serve.bench`` and the app use too), or, with device
``tensorrt``, as an fp16 TensorRT engine (:mod:`search.runtime.tensorrt`, one timing cache
shared by every candidate). The latency is the median of repeated runs after warm-ups; its
p10/p90 spread is recorded, and a pass whose (p90 - p10) / median is over the spread limit
is timed again, keeping the narrower pass (:mod:`search.runtime.repeatable`).

Results are cached per canonical genotype JSON in memory and, optionally, in an
append-only JSONL file that a resumed search reads back. A cache line is reused only under
the same measurement key (:func:`measurement_key`: runtime and package versions, provider,
CPU or GPU model, threads, precision, batch, warm-up, repeats, target variant, image size,
classes); lines written under another key, or before the key was complete, are ignored.
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
from search.runtime.host import cpu_model, onnxruntime_version, package_version
from search.runtime.repeatable import RETRIES, SPREAD_LIMIT, time_onnx_model
from search.runtime.sessions import (
    SessionSettings,
    create_session,
    default_threads,
    resolve_providers,
    session_provider,
)
from search.runtime.timing import Measurement, measure
from search.space.genotype import Genotype

LATENCY_DEVICES = ("cpu", "cuda", "tensorrt")
"""``cpu``/``cuda``: ONNX Runtime's CPU or CUDA provider; ``tensorrt``: native fp16 engines."""
DEFAULT_THREADS = 1
"""Intra-op threads of the latency session. One pinned thread is the most repeatable figure on
a shared multi-core host (the 2-core search host timed NASNet-A at 20.2 ms with one thread and
45.3 ms, min 26.5, max 71.8, with every core, as other work came and went) and a per-core
figure; users whose device runs the model on several cores set ``--latency-threads``."""
KEY_VERSION = 2
"""Version of :func:`measurement_key`; cache lines of older keys are never reused."""
CACHE_MAX_BYTES = 256 * 1024 * 1024
"""Largest latency cache read (an entry is under 1 kB)."""


@dataclass(frozen=True)
class LatencySettings:
    """Where and how latency is measured.

    Attributes:
        scale: deployment variant or ``N@F`` (default: the CIFAR-size NASNet, 6@768).
        image_size: input size; ``None`` uses the variant's size.
        num_classes: classifier outputs of the deployment model.
        device: ``cpu`` (CPUExecutionProvider), ``cuda`` (CUDAExecutionProvider) or
            ``tensorrt`` (an fp16 TensorRT engine per candidate, timed natively).
        warmup: untimed runs before timing.
        repeats: timed runs; the median is reported.
        threads: ONNX Runtime intra-op threads (default :data:`DEFAULT_THREADS`; ``None``:
            every CPU this process may use, see :func:`search.runtime.sessions.default_threads`).
        max_time_s: cap on the timing phase: a slow candidate (far over any budget) stops
            after at least 3 timed runs once this much time is spent (warm-up: half of it).
        spread_limit: largest (p90 - p10) / median accepted without timing again.
        retries: extra timing passes when the spread is over the limit.
    """

    scale: str = "cifar"
    image_size: int | None = None
    num_classes: int = 10
    device: str = "cpu"
    warmup: int = 5
    repeats: int = 20
    threads: int | None = DEFAULT_THREADS
    max_time_s: float = 3.0
    spread_limit: float = SPREAD_LIMIT
    retries: int = RETRIES

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise NasdeployError(f"latency needs repeats >= 1 and warmup >= 0, got "
                                 f"{self.repeats}/{self.warmup}")
        if self.device not in LATENCY_DEVICES:
            raise NasdeployError(f"unknown latency device {self.device!r}; choose from "
                                 f"{', '.join(LATENCY_DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise NasdeployError(f"latency threads must be at least 1, got {self.threads}")
        if self.retries < 0 or not self.spread_limit > 0:
            raise NasdeployError(f"latency needs retries >= 0 and a spread limit > 0, got "
                                 f"{self.retries}/{self.spread_limit}")

    @property
    def precision(self) -> str:
        """``fp16`` for TensorRT engines, ``fp32`` for ONNX Runtime."""
        return "fp16" if self.device == "tensorrt" else "fp32"


@dataclass(frozen=True)
class DeploymentCost:
    """Cost of one candidate at the deployment scale (latency: the median run)."""

    latency_ms: float
    macs: int
    params: int
    measure_time_s: float
    provider: str
    latency_p90_ms: float = math.nan
    timed_runs: int = 0
    threads: int | None = None
    latency_p10_ms: float = math.nan
    attempts: int = 1
    precision: str = "fp32"


def build_deployment_model(genotype: Genotype, scale: str, num_classes: int,
                           image_size: int) -> tuple[torch.nn.Module, int, int]:
    """The candidate at the deployment scale with seeded random weights, its MACs and params."""
    from search.nn.cost import count_macs, count_params
    from search.nn.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(genotype, scale, num_classes=num_classes, image_size=image_size).eval()
    return model, int(count_macs(model, image_size)), int(count_params(model))


def export_deployment_model(model: torch.nn.Module, path: Path, image_size: int) -> Path:
    """Export at batch 1 with static shapes, the graph the latency is measured on."""
    from search.nn.onnxio import export_onnx

    return export_onnx(model, path, image_size, dynamic_batch=False, batch_size=1)


class LatencyMeter:
    """Callable cost model ``genotype -> DeploymentCost`` with a persistent cache.

    Args:
        settings: deployment scale and timing settings.
        cache_path: optional JSONL file; entries measured under another key are ignored.
            With device ``tensorrt`` the builder's timing cache is kept beside it
            (``<name>.tensorrt-timing``), so a resumed search keeps it too.

    Raises:
        NasdeployError: the requested ONNX Runtime provider, or TensorRT and a GPU, are not
            available.
    """

    def __init__(self, settings: LatencySettings, cache_path: str | os.PathLike[str] | None = None):
        from search.space.scale import parse_scale

        self._trt_cache: Any = None
        if settings.device == "tensorrt":  # fail now, not after the first child
            from search.runtime import tensorrt

            tensorrt.require_tensorrt()
            self._trt_cache = tensorrt.TimingCache(
                None if cache_path is None else Path(cache_path).with_suffix(".tensorrt-timing"))
        else:
            resolve_providers(settings.device)
        scale = parse_scale(settings.scale, settings.image_size)
        self.settings = settings
        self.image_size = scale.image_size
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.measurements = 0
        self.key = measurement_key(settings, self.image_size)
        self._cache: dict[str, DeploymentCost] = self._read_cache()

    def __call__(self, genotype: Genotype) -> DeploymentCost:
        """The cost of ``genotype``, measured once per canonical genotype."""
        key = genotype.key()
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
        s = self.settings
        def build() -> tuple[torch.nn.Module, int, int]:
            return build_deployment_model(genotype, s.scale, s.num_classes, self.image_size)

        cost = measure_module(build, s, self.image_size, trt_cache=self._trt_cache)
        self.measurements += 1
        return cost

    def _read_cache(self) -> dict[str, DeploymentCost]:
        cache: dict[str, DeploymentCost] = {}
        if self.cache_path is None or not self.cache_path.is_file():
            return cache
        data = read_limited(self.cache_path, max_bytes=CACHE_MAX_BYTES)
        for number, line in enumerate(data.splitlines(), start=1):
            try:  # NaN is allowed: an entry's p10/p90 may be NaN
                entry = loads_json(line, f"{self.cache_path} line {number}", expect=dict, allow_nan=True)
                if entry.get("settings") == self.key:
                    cache[entry["genotype"]] = DeploymentCost(**entry["cost"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a kill, or a foreign line
        return cache

    def _append(self, key: str, cost: DeploymentCost) -> None:
        if self.cache_path is None:
            return
        entry = {"genotype": key, "settings": self.key, "cost": asdict(cost)}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.cache_path, json.dumps(entry, sort_keys=True))


class PredictedMeter:
    """Callable cost model like :class:`LatencyMeter`, with latency from a fitted predictor.

    The latency is predicted from the genotype's structure (well under a millisecond).
    Params are exact without building anything (:func:`search.space.scale.estimate_size`).
    MACs are counted on the built model when ``exact_macs`` (about a second at the ``cifar``
    target, more than a one-shot evaluator spends on the candidate: a search passes it only
    with a MAC budget), otherwise they are the predictor's analytic count (within 20 % of
    torch's, tested in tests/test_predictor.py). Nothing is cached
    on disk: a prediction is cheaper than reading one back.

    Raises:
        NasdeployError: the predictor was made for another target variant, image size or
            class count (one line).
    """

    def __init__(self, predictor: Any, settings: LatencySettings, blocks: int | None = None,
                 *, exact_macs: bool = True):
        from search.space.scale import parse_scale

        scale = parse_scale(settings.scale, settings.image_size)
        self.scale = scale
        self.exact_macs = exact_macs
        predictor.check_target(settings.scale, scale.image_size, settings.num_classes, blocks)
        predictor.check_device(settings.device, settings.threads)
        self.predictor = predictor
        self.settings = settings
        self.image_size = scale.image_size
        self._costs: dict[str, DeploymentCost] = {}

    def __call__(self, genotype: Genotype) -> DeploymentCost:
        key = genotype.key()
        if key not in self._costs:
            start = time.perf_counter()
            latency = self.predictor.predict(genotype)
            if not math.isfinite(latency) or latency <= 0:
                raise MeasurementError(f"the latency predictor gives {latency:.3g} ms for this genotype: "
                                       "it lies outside what the predictor was fitted on")
            if self.exact_macs:
                _, macs, params = build_deployment_model(genotype, self.settings.scale,
                                                         self.settings.num_classes, self.image_size)
            else:
                from search.evaluation.predictor import FEATURE_NAMES, features
                from search.space.scale import estimate_size

                macs = int(features(genotype, self.scale)[FEATURE_NAMES.index("total_macs")])
                params = estimate_size(genotype, self.scale, self.settings.num_classes).params
            self._costs[key] = DeploymentCost(latency, macs, params, time.perf_counter() - start,
                                              f"predicted ({self.predictor.kind})",
                                              threads=self.predictor.target.device.get("threads"),
                                              precision=str(self.predictor.target.device.get("precision")
                                                            or "fp32"))
        return self._costs[key]

    def __len__(self) -> int:
        return len(self._costs)


def measure_module(build: Any, settings: LatencySettings, image_size: int, *,
                   trt_cache: Any = None) -> DeploymentCost:
    """Build a deployment model with ``build() -> (module, macs, params)``, export it at batch 1
    and time it on ``settings.device`` (ONNX Runtime, or a TensorRT fp16 engine with the
    builder's ``trt_cache``). The one measuring path of :class:`LatencyMeter` and of automatic
    scaling (:mod:`search.evaluation.autoscale`), for genotypes and baselines alike.

    Raises:
        MeasurementError: the model could not be built, exported or run (one line).
    """
    start = time.perf_counter()
    s = settings
    try:
        model, macs, params = build()
        with tempfile.TemporaryDirectory(prefix="nasdeploy-latency-") as tmp:
            path = export_deployment_model(model, Path(tmp) / "model.onnx", image_size)
            if s.device == "tensorrt":
                from search.runtime.tensorrt import time_onnx_tensorrt

                timing = time_onnx_tensorrt(path, cache=trt_cache, warmup=s.warmup, repeats=s.repeats,
                                            max_time_s=s.max_time_s, spread_limit=s.spread_limit,
                                            retries=s.retries, workdir=Path(tmp)).timing
            else:
                timing = time_onnx_model(path, device=s.device, threads=s.threads, warmup=s.warmup,
                                         repeats=s.repeats, max_time_s=s.max_time_s,
                                         spread_limit=s.spread_limit, retries=s.retries)
    except NasdeployError as exc:
        if isinstance(exc, MeasurementError) or s.device != "tensorrt":
            raise
        raise MeasurementError(str(exc)) from None  # TensorRT rejected this model
    except Exception as exc:  # one model's failure, reported on one line
        raise MeasurementError(f"cannot measure latency: {one_line(exc)}") from None
    m = timing.measurement
    return DeploymentCost(
        latency_ms=m.stats.median_ms, macs=int(macs), params=int(params),
        measure_time_s=round(time.perf_counter() - start, 3), provider=m.provider or "",
        latency_p90_ms=timing.p90_ms, timed_runs=m.stats.count, threads=m.threads,
        latency_p10_ms=timing.p10_ms, attempts=timing.attempts, precision=s.precision,
    )


def _gpu_name(device: str) -> str | None:
    if device == "tensorrt":
        from search.runtime.tensorrt import gpu_name

        return gpu_name()
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return None


def measurement_key(settings: LatencySettings, image_size: int) -> dict[str, Any]:
    """Everything that changes a measured latency; a cache line is valid only under an equal key.

    Runtime and package versions (onnxruntime, torch, onnxslim, onnx; TensorRT for its
    engines), provider, CPU model (and GPU name), the thread count actually used, precision,
    batch, warm-up, repeats, time cap, spread rule, target variant, image size and classes.
    """
    from search.nn.onnxio import DEFAULT_OPSET

    trt = settings.device == "tensorrt"
    versions = {"onnxruntime": onnxruntime_version(), "torch": torch.__version__,
                "onnxslim": package_version("onnxslim"), "onnx": package_version("onnx")}
    if trt:
        from search.runtime.tensorrt import tensorrt_version

        versions["tensorrt"] = tensorrt_version()
    threads = None if trt else settings.threads if settings.threads is not None else default_threads()
    return {
        "key_version": KEY_VERSION, "runtime": "tensorrt" if trt else "onnxruntime", "versions": versions,
        "device": settings.device, "provider": "TensorRT" if trt else resolve_providers(settings.device)[0],
        "cpu": cpu_model(), "gpu": _gpu_name(settings.device), "threads": threads,
        "precision": settings.precision, "batch": 1, "opset": DEFAULT_OPSET,
        "warmup": settings.warmup, "repeats": settings.repeats, "max_time_s": settings.max_time_s,
        "spread_limit": settings.spread_limit, "retries": settings.retries,
        "target_variant": settings.scale, "image_size": image_size, "num_classes": settings.num_classes,
    }


def time_onnx(path: str | os.PathLike[str], image_size: int, device: str = "cpu",
              warmup: int = 5, repeats: int = 20, threads: int | None = DEFAULT_THREADS,
              max_time_s: float | None = None) -> Measurement:
    """Time an ONNX model at batch 1 on ``device`` with :func:`search.runtime.timing.measure`
    (one pass, no re-measure: the meter's rule is :func:`search.runtime.repeatable.measure_repeatable`).

    With ``max_time_s`` the warm-up stops after half of it (at least one run) and the timed
    runs after all of it (at least ``min(3, repeats)`` runs), so a very slow candidate
    costs seconds, not minutes. The result records the provider and the thread count.
    """
    settings = SessionSettings(device=device, threads=threads)
    session = create_session(path, settings)
    rng = np.random.default_rng(0)
    feed = {session.get_inputs()[0].name: rng.standard_normal((1, 3, image_size, image_size),
                                                               dtype=np.float32)}
    return measure(lambda: session.run(None, feed), warmup=warmup, repeats=repeats, min_repeats=3,
                   max_time_s=max_time_s, provider=session_provider(session),
                   threads=settings.intra_op_threads, batch_size=1)
