"""Finding model files and run directories, and loading them once per process.

Model files are the ``*.onnx`` / ``*.engine`` files under the runs folder (``runs/``, or
``$NASDEPLOY_RUNS``), and the CIFAR-10 model shipped with the package (:mod:`serve.bundled`).
Runtimes are cached with ``st.cache_resource`` keyed on the file's
path, modification time and backend, so re-exporting a model reloads it.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import numpy as np
import streamlit as st

from search.core.errors import NasdeployError
from search.core.rundir import ENGINE_SUFFIX, HISTORY_NAME, ONNX_SUFFIX
from search.runtime.timing import Measurement, measure
from serve.runtime import BACKENDS, Runtime, available_backends, load_runtime

RUNS_ENV = "NASDEPLOY_RUNS"
DEFAULT_RUNS = "runs"
MODEL_SUFFIXES = (ONNX_SUFFIX, ENGINE_SUFFIX)
MAX_DEPTH = 4
MAX_FILES = 20_000
"""Stop looking after this many files (a runs folder set to ``/`` must not hang the page)."""
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def runs_root() -> str:
    """The default runs folder: ``$NASDEPLOY_RUNS`` or ``runs`` (relative to the cwd)."""
    return os.environ.get(RUNS_ENV) or DEFAULT_RUNS


def _walk(root: Path, depth: int = 0):
    """Files under ``root`` (hidden folders skipped, at most ``MAX_DEPTH`` levels)."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and depth < MAX_DEPTH:
            yield from _walk(entry, depth + 1)
        elif entry.is_file():
            yield entry


def discover_models(root: str | Path) -> list[Path]:
    """Model files under ``root`` (an empty list for a missing folder).

    Newest export folder first; within a folder the precision its export report names
    fastest on the export machine (among those that agree with fp32) first, then the fp32
    ``model.onnx`` before its fp16 and INT8 siblings and engines, since those pay off on GPUs
    rather than on a CPU.
    """
    from search.core.rundir import MODEL_ONNX_NAME
    from search.trials.runinfo import fastest_precision

    found = [p for p in islice(_walk(Path(root)), MAX_FILES) if p.suffix.lower() in MODEL_SUFFIXES]
    fastest = {fastest_precision(p.parent / MODEL_ONNX_NAME) for p in found if p.name == MODEL_ONNX_NAME}
    return sorted(found, key=lambda p: (-_mtime(p.parent), p not in fastest, _variant_rank(p.name), str(p)))


def _variant_rank(name: str) -> int:
    """0 for a plain ONNX file, 1 for ``*.fp16.onnx``, 2 for ``*.int8.onnx``, 3 for engines."""
    if name.endswith(".engine"):
        return 3
    return 2 if name.endswith(".int8.onnx") else 1 if name.endswith(".fp16.onnx") else 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed while we looked
        return 0.0


def discover_runs(root: str | Path) -> list[Path]:
    """Search run directories (those holding ``trials.jsonl``) under ``root``, by name."""
    return sorted({p.parent for p in islice(_walk(Path(root)), MAX_FILES) if p.name == HISTORY_NAME})


def discover_tables(root: str | Path) -> list[Path]:
    """Model tables (``table.json`` written by ``python -m serve.bench --table ... --out DIR``) under
    ``root``, newest first."""
    from serve.table_render import JSON_NAME

    found = [p for p in islice(_walk(Path(root)), MAX_FILES) if p.name == JSON_NAME]
    return sorted(found, key=lambda p: (-_mtime(p), str(p)))


def bundled_model() -> Path | None:
    """The bundled CIFAR-10 model's file (its fastest precision), or ``None`` when this install lacks it."""
    from search.trials.runinfo import exported_model
    from serve.bundled import BUNDLED_DIR

    try:
        return exported_model(BUNDLED_DIR)
    except NasdeployError:
        return None


def bundled_card() -> str | None:
    """The bundled model's ``MODEL.md`` (what it is, how it was trained), or ``None``."""
    from serve.bundled import BUNDLED_CARD, BUNDLED_DIR

    try:
        return (BUNDLED_DIR / BUNDLED_CARD).read_text(encoding="utf-8")
    except OSError:
        return None


def cifar_samples() -> list[str]:
    """Names of the bundled CIFAR-10 test photos (``cifar-<class>.png``), one per class."""
    return [name for name in sample_images() if name.startswith("cifar-")]


def backends_for(path: str | Path) -> list[str]:
    """Backends available on this machine that read ``path``'s file type."""
    suffix = Path(path).suffix.lower()
    return [name for name in available_backends() if suffix in BACKENDS[name].suffixes]


def sample_images() -> dict[str, Path]:
    """The bundled sample images, by file name."""
    if not SAMPLES_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SAMPLES_DIR.iterdir()) if p.suffix.lower() in SAMPLE_SUFFIXES}


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def _cached_runtime(path: str, backend: str, mtime_ns: int) -> Runtime:
    runtime = load_runtime(path, backend=backend)
    runtime.warmup()
    return runtime


def _file_key(path: str | Path) -> tuple[str, int]:
    """Absolute path and modification time (0 for a missing file): a cache key."""
    resolved = Path(path).expanduser().resolve()
    return str(resolved), resolved.stat().st_mtime_ns if resolved.is_file() else 0


def get_runtime(path: str | Path, backend: str = "auto") -> Runtime:
    """Load (once per file version and backend) and warm up a runtime.

    Raises:
        ServeError: Missing or unreadable model, or a backend that cannot run here.
    """
    resolved, mtime = _file_key(path)
    return _cached_runtime(resolved, backend, mtime)


def measure_latency(runtime: Runtime, runs: int = 30) -> Measurement:
    """Time ``runs`` batch-1 inferences of a zero image (the runtime is warm already).

    Timed by :func:`search.runtime.timing.measure`, the timer the search and ``serve.bench``
    use, so the median shown here means what theirs does.
    """
    size = runtime.info.image_size
    batch = np.zeros((1, 3, size, size), dtype=np.float32)
    describe = runtime.describe()
    return measure(lambda: runtime.predict(batch), warmup=0, repeats=runs,
                   provider=describe.get("provider"), threads=describe.get("intra_op_threads"),
                   batch_size=1)


@st.cache_data(show_spinner="Timing the model…", max_entries=16)
def _cached_latency(path: str, backend: str, mtime_ns: int, _runtime: Runtime) -> Measurement:
    return measure_latency(_runtime)


def model_latency(runtime: Runtime, backend: str) -> Measurement:
    """:func:`measure_latency`, once per model file version and backend."""
    path, mtime = _file_key(runtime.path)
    return _cached_latency(path, backend, mtime, runtime)
