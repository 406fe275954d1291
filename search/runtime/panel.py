"""Latency panels, read and timed on the target device without torch.

A panel (written by ``python -m search.latency panel``) is a folder of ONNX models of
random genotypes at the deployment scale plus ``manifest.json``; the device times every
model (``python -m serve.bench --panel DIR --json OUT``) and the measurements file goes
back to the search host, where a latency predictor is fitted. The formats are fixed in
``docs/latency.md``; :func:`read_manifest` checks a panel and :func:`measure_panel` times
it with the session factory and timer the search uses (:mod:`search.runtime.repeatable`),
or, on a TensorRT target, as fp16 engines (:mod:`search.runtime.tensorrt`). Torch-free.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.core.atomic import atomic_write_text
from search.core.errors import NasdeployError
from search.core.jsonio import JsonError, read_json
from search.runtime import repeatable
from search.runtime.host import cpu_model, host_name, onnxruntime_version

PANEL_FORMAT = "nasdeploy-latency-panel"
MEASUREMENTS_FORMAT = "nasdeploy-latency-measurements"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MEASUREMENTS_NAME = "measurements.json"
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
BACKENDS = ("onnxruntime", "tensorrt")
PANEL_KEYS = ("target_variant", "image_size", "num_classes", "blocks", "batch")
_MODEL_FILE = re.compile(r"^[\w.-]+\.onnx$")


def utc_now() -> str:
    """The current UTC time, ``2026-11-23T20:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PanelTiming:
    """How every model of a panel is timed (defaults: the search's latency settings).

    Attributes:
        backend: ``onnxruntime`` (fp32, ONNX Runtime on ``device``) or ``tensorrt`` (fp16
            engines built with one shared timing cache, timed natively).
        device: ONNX Runtime device (``cpu``, ``cuda``, ``tensorrt`` or ``auto``).
        threads: ONNX Runtime intra-op threads (``None``: every CPU this process may use).
        warmup, repeats, max_time_s: as :func:`search.runtime.timing.measure`.
        spread_limit, retries: re-measure rule of :func:`search.runtime.repeatable.measure_repeatable`.
        rounds: passes over the whole panel; a model's latency is the median of its per-round
            medians, so a busy spell of a shared machine falls on every model alike instead of
            on the few timed during it.
    """

    backend: str = "onnxruntime"
    device: str = "cpu"
    threads: int | None = 1
    warmup: int = 5
    repeats: int | None = 20
    max_time_s: float | None = 3.0
    spread_limit: float = repeatable.SPREAD_LIMIT
    retries: int = repeatable.RETRIES
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise NasdeployError(f"unknown panel backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.threads is not None and self.threads < 1:
            raise NasdeployError(f"threads must be at least 1, got {self.threads}")


def _bad(panel: Path, why: str) -> NasdeployError:
    return NasdeployError(f"{panel} is not a usable latency panel: {why}")


def read_manifest(panel: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``manifest.json`` of a panel folder.

    Raises:
        NasdeployError: no folder or manifest, another format or version, a missing or
            mistyped field, or a model file that is not there (one line).
    """
    folder = Path(panel)
    if not folder.is_dir():
        raise NasdeployError(f"latency panel folder not found: {folder}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise _bad(folder, f"no {MANIFEST_NAME} (write a panel with python -m search.latency panel)")
    try:
        manifest = read_json(path, MANIFEST_NAME, expect=dict, max_bytes=MANIFEST_MAX_BYTES)
    except JsonError as exc:
        raise _bad(folder, str(exc)) from None
    if manifest.get("format") != PANEL_FORMAT:
        raise _bad(folder, f"{MANIFEST_NAME} has format {manifest.get('format')!r}, "
                           f"expected {PANEL_FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise _bad(folder, f"{MANIFEST_NAME} has version {manifest.get('version')!r}; this nasdeploy reads "
                           f"version {FORMAT_VERSION}")
    for key, kind in (("target_variant", str), ("image_size", int), ("num_classes", int), ("blocks", int),
                      ("batch", int), ("models", list)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise _bad(folder, f"{MANIFEST_NAME} field {key!r} is missing or not a {kind.__name__}")
    if manifest["batch"] != 1:
        raise _bad(folder, f"batch {manifest['batch']}: panels are timed at batch 1")
    if not manifest["models"]:
        raise _bad(folder, f"{MANIFEST_NAME} lists no models")
    seen: set[str] = set()
    for number, model in enumerate(manifest["models"]):
        _check_model(folder, number, model, seen)
    return manifest


def _check_model(folder: Path, number: int, model: Any, seen: set[str]) -> None:
    where = f"model {number}"
    if not isinstance(model, dict):
        raise _bad(folder, f"{where} is not an object")
    for key, kind in (("id", str), ("file", str), ("genotype", dict), ("macs", int), ("params", int)):
        if not isinstance(model.get(key), kind) or isinstance(model.get(key), bool):
            raise _bad(folder, f"{where} field {key!r} is missing or not a {kind.__name__}")
    if model["id"] in seen:
        raise _bad(folder, f"model id {model['id']!r} appears twice")
    seen.add(model["id"])
    if not _MODEL_FILE.match(model["file"]):
        raise _bad(folder, f"{where} file {model['file']!r} is not a plain .onnx file name "
                           "in the panel folder")
    if not (folder / model["file"]).is_file():
        raise _bad(folder, f"model file {model['file']} is missing")


def device_info(timing: PanelTiming, provider: str, threads: int | None,
                extra: dict[str, Any]) -> dict[str, Any]:
    """The measurements file's ``device`` section."""
    trt = timing.backend == "tensorrt"
    info = {"host": host_name(), "cpu": cpu_model(), "runtime": timing.backend,
            "runtime_version": extra.get("tensorrt_version") if trt else onnxruntime_version(),
            "provider": provider, "threads": None if trt else threads,
            "precision": "fp16" if trt else "fp32"}
    if extra.get("gpu"):
        info["gpu"] = extra["gpu"]
    return info


ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""``(done, total, result)`` after each model."""


def measure_panel(panel: str | os.PathLike[str], timing: PanelTiming | None = None,
                  progress: ProgressFn | None = None) -> dict[str, Any]:
    """Time every model of a panel; return the measurements document (``docs/latency.md``).

    Raises:
        NasdeployError: a bad panel, or the backend or device not usable here.
    """
    timing = timing or PanelTiming()
    folder = Path(panel)
    manifest = read_manifest(folder)
    cache: Any = None
    if timing.backend == "tensorrt":
        from search.runtime import tensorrt

        tensorrt.require_tensorrt()
        cache = tensorrt.TimingCache(folder / "tensorrt.timing-cache")
    if timing.rounds < 1:
        raise NasdeployError(f"rounds must be at least 1, got {timing.rounds}")
    provider, threads, extra = "", timing.threads, {}
    models = manifest["models"]
    rounds: list[list[Any]] = [[] for _ in models]
    spent = [0.0 for _ in models]
    for round_index in range(timing.rounds):
        for index, model in enumerate(models):
            start = time.perf_counter()
            measured, extra = _time_one(folder / model["file"], timing, cache, extra)
            spent[index] += time.perf_counter() - start
            provider = measured.measurement.provider or provider
            threads = measured.measurement.threads
            rounds[index].append(measured)
            if progress is not None and round_index == timing.rounds - 1:
                progress(index + 1, len(models), _result(model, rounds[index], spent[index]))
    results = [_result(model, rounds[i], spent[i]) for i, model in enumerate(models)]
    return {
        "format": MEASUREMENTS_FORMAT, "version": FORMAT_VERSION,
        "panel": {key: manifest[key] for key in PANEL_KEYS},
        "device": device_info(timing, provider, threads, extra),
        "settings": {"warmup": timing.warmup, "repeats": timing.repeats, "rounds": timing.rounds,
                     "statistic": "median" if timing.rounds == 1 else "median of per-round medians",
                     "max_time_s": timing.max_time_s, "spread_limit": timing.spread_limit,
                     "retries": timing.retries},
        "results": results,
        "created": utc_now(),
    }


def _time_one(path: Path, timing: PanelTiming, cache: Any,
              extra: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """One timing pass of one model file (one line for a file the runtime rejects)."""
    try:
        if timing.backend == "tensorrt":
            from search.runtime import tensorrt

            engine = tensorrt.time_onnx_tensorrt(
                path, cache=cache, warmup=timing.warmup, repeats=timing.repeats,
                max_time_s=timing.max_time_s, spread_limit=timing.spread_limit, retries=timing.retries)
            return engine.timing, {"tensorrt_version": engine.tensorrt_version, "gpu": engine.gpu}
        return repeatable.time_onnx_model(
            path, device=timing.device, threads=timing.threads, warmup=timing.warmup,
            repeats=timing.repeats, max_time_s=timing.max_time_s,
            spread_limit=timing.spread_limit, retries=timing.retries), extra
    except NasdeployError:
        raise
    except Exception as exc:  # ONNX Runtime or TensorRT rejects one file
        raise NasdeployError(f"cannot time {path}: {' '.join(str(exc).split())[:300]}") from None


def _result(model: dict[str, Any], passes: list[Any], spent: float) -> dict[str, Any]:
    """A model's measurement row; several rounds combine by the median of their medians."""
    def mid(values: list[float]) -> float:
        return float(statistics.median(values))

    result = {"id": model["id"], "genotype": model["genotype"], "macs": model["macs"],
              "params": model["params"], "median_ms": mid([m.median_ms for m in passes]),
              "p10_ms": mid([m.p10_ms for m in passes]), "p90_ms": mid([m.p90_ms for m in passes]),
              "samples": sum(m.runs for m in passes), "attempts": sum(m.attempts for m in passes),
              "measure_time_s": round(spent, 3)}
    if len(passes) > 1:
        result["round_medians_ms"] = [m.median_ms for m in passes]
    return result


def progress_line(done: int, total: int, result: dict[str, Any]) -> str:
    """``[3/20] p002: 1.234 ms median (p10 1.201, p90 1.310; 20 runs, 0.4 s)``."""
    again = f", {result['attempts']} passes" if result.get("attempts", 1) > 1 else ""
    return (f"[{done}/{total}] {result['id']}: {result['median_ms']:.3f} ms median (p10 "
            f"{result['p10_ms']:.3f}, p90 {result['p90_ms']:.3f}; {result['samples']} runs{again}, "
            f"{result['measure_time_s']:.1f} s)")


def write_measurements(path: str | os.PathLike[str], measurements: dict[str, Any]) -> Path:
    """Write a measurements document atomically (strict JSON: no NaN)."""
    import json

    for row in measurements.get("results", []):
        for key in ("median_ms", "p10_ms", "p90_ms"):
            if not math.isfinite(row[key]):
                raise NasdeployError(f"model {row['id']}: {key} is not a finite number")
    target = Path(path)
    atomic_write_text(target, json.dumps(measurements, indent=2, allow_nan=False) + "\n")
    return target
