"""The model table: every model's size, cost, depth, recorded accuracy and latency measured here.

``python -m serve.bench --table MODEL... --out DIR`` (and the demo app) call :func:`make_table`:

1. every model argument (an ONNX file, an export folder, a search run or ``bundled``) is
   resolved as the serving CLIs resolve it; a folder stands for its fp32 ``model.onnx`` and the
   fp16/int8 siblings its ``export_report.json`` lists (``--precisions`` picks among them);
2. each file is loaded once in ONNX Runtime with pinned intra-op threads, and its card and graph
   give the row's name, kind, size, parameters, MACs (:mod:`serve.graphfacts` when the card
   records none) and depth; accuracies are the ones recorded at export;
3. every (model, precision) is timed at batch 1 by :func:`search.runtime.timing.measure` (the
   one timer), in ``rounds`` passes that take the models in turn, so a busy spell of a shared
   machine falls on all of them; p50/p90 are of every timed run of every pass;
4. :mod:`serve.table_render` renders the document as Markdown, CSV, JSON and an
   accuracy-vs-latency plot (searched cells highlighted) and writes them atomically into the
   output folder.

Torch-free; matplotlib is imported only to draw the plot.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from search.core.errors import NasdeployError
from search.core.jsonio import JsonError, read_json
from search.core.rundir import EXPORT_REPORT_NAME, ONNX_SUFFIX
from search.runtime.host import cpu_model, host_name, onnxruntime_version
from search.runtime.timing import measure, summarize
from search.space.baselines import model_title
from search.space.card import PRECISIONS, CardError, ModelCard
from search.space.genotype import REFERENCE_GENOTYPES
from search.trials.runinfo import exported_model
from serve.bundled import resolve_model_arg
from serve.errors import ServeError
from serve.graphfacts import GraphFacts, graph_facts
from serve.metadata import from_props
from serve.runtime import Runtime
from serve.table_render import check_out_dir, require_matplotlib, write_outputs

TABLE_FORMAT = "nasdeploy-model-table"
TABLE_VERSION = 1
MIN_RUNS = 5
"""Timed runs per model, precision and round even when ``duration_s`` is spent."""
MAX_REPORT_BYTES = 16 * 1024 * 1024
REFERENCE_TITLES = {"nasnet-a": "NASNet-A", "lite": "Lite cell"}
KINDS = ("searched", "baseline", *REFERENCE_GENOTYPES, "other")
"""Row kinds: a searched cell, a hand-designed baseline, a built-in reference cell, or a model
whose card names neither a genotype nor an architecture."""
TABLE_KEYS = frozenset({"name", "kind", "source", "dataset", "image_size", "size_mb", "params",
                        "params_source", "macs", "macs_source", "depth", "precisions"})
"""What every model of a ``table.json`` holds (:func:`read_table` checks it)."""
DEFINITIONS = {
    "model": "the card's network: a cell's title and N@F scale, or a baseline's name and width multiplier",
    "kind": "searched (a searched cell), baseline (a hand-designed network, search.train --model), "
            "or the name of a built-in reference cell (nasnet-a, lite)",
    "size": "the fp32 ONNX file (or the one file given), MB = 10^6 bytes",
    "params": "the trained network's parameters as the model card records them; '(ONNX)': weight elements "
              "of the ONNX graph (BatchNorm folded), where the card records none",
    "MACs": "multiply-accumulates of one image as the card records them; '(ONNX)': counted in the graph's "
            "Conv/Gemm/MatMul nodes, where the card records none",
    "depth": "the most weighted layers (Conv, Gemm, MatMul) that one path from the input to the output "
             "of the ONNX graph passes through",
    "accuracy": "as recorded at export: fp32 from the model card (the test accuracy of training); fp16 and "
                "int8 on the n held-out images export.onnx compared the precisions on, with fp32's score on "
                "the same images",
    "p50/p90": "batch-1 latency on this machine (Runtime.predict of a random image, preprocessing "
               "excluded): 50th and 90th percentile of every timed run of every round",
}


@dataclass(frozen=True)
class TableSettings:
    """How the table times its models.

    Attributes:
        precisions: the precisions to time (``None``: every one each model's export holds).
        threads: ONNX Runtime intra-op threads (1: the most repeatable on a shared machine).
        device: ONNX Runtime device (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
        warmup: untimed runs before a model's first round (later rounds: one).
        iters: timed runs per model, precision and round (``None``: timed by ``duration_s``).
        duration_s: wall time of timed runs per model and precision, shared by the rounds
            (at least :data:`MIN_RUNS` runs per round).
        rounds: passes over all models; each takes every model and precision in turn.
        seed: seed of the random input image.
    """

    precisions: tuple[str, ...] | None = None
    threads: int | None = 1
    device: str = "auto"
    warmup: int = 10
    iters: int | None = None
    duration_s: float = 2.0
    rounds: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precisions is not None:
            unknown = [p for p in self.precisions if p not in PRECISIONS]
            if unknown or not self.precisions:
                raise ServeError(f"unknown precision {', '.join(unknown) or 'none'}; choose from "
                                 f"{', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise ServeError(f"threads must be at least 1, got {self.threads}")
        if self.rounds < 1 or self.warmup < 0 or (self.iters is not None and self.iters < 1):
            raise ServeError(f"the table needs rounds >= 1, warmup >= 0 and iters >= 1, got "
                             f"{self.rounds}/{self.warmup}/{self.iters}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ServeError(f"the timing duration must be a positive number of seconds, got "
                             f"{self.duration_s}")


def parse_precisions(text: str) -> tuple[str, ...]:
    """``fp32,int8`` -> ``("fp32", "int8")`` (known names, in the order of :data:`PRECISIONS`)."""
    names = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise ServeError(f"unknown precision {', '.join(unknown) or repr(text)}; choose from "
                         f"{', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in names)


# --- which files a model argument stands for -------------------------------------------------


@dataclass
class TableModel:
    """One row before timing: the files of each precision and what the fp32 file says."""

    source: str
    path: Path
    files: dict[str, Path]
    missing: dict[str, str]
    card: ModelCard
    facts: GraphFacts
    report: dict[str, Any] | None
    runtimes: dict[str, Runtime] = field(default_factory=dict)


def export_report(folder: Path) -> dict[str, Any] | None:
    """The folder's ``export_report.json`` (``None``: none, or not a report)."""
    path = folder / EXPORT_REPORT_NAME
    if not path.is_file():
        return None
    try:
        report = read_json(path, EXPORT_REPORT_NAME, expect=dict, max_bytes=MAX_REPORT_BYTES)
    except (JsonError, OSError):
        return None
    return report if isinstance(report.get("model"), str) else None


def listed_precisions(folder: Path, report: dict[str, Any] | None) -> dict[str, Path]:
    """``{precision: file}`` of the export: its fp32 model and the siblings the report lists
    as written and that are there."""
    if report is None or not (folder / report["model"]).is_file():
        return {}
    files = {"fp32": folder / report["model"]}
    for precision in PRECISIONS[1:]:
        section = report.get(precision)
        if not isinstance(section, dict) or not section.get("written", True):
            continue
        name = section.get("model")
        if isinstance(name, str) and Path(name).name == name and (folder / name).is_file():
            files[precision] = folder / name
    return files


def resolve_files(model: str | os.PathLike[str]
                  ) -> tuple[Path, dict[str, Path] | None, dict[str, Any] | None]:
    """The row's main file, its precisions (``None``: the one file alone) and its export report.

    A folder, a search run or ``bundled`` stands for its export: the fp32 ``model.onnx`` and the
    siblings the report lists. The fp32 file of an export stands for the same; any other file
    (e.g. ``model.int8.onnx`` given by name) for itself alone.

    Raises:
        ServeError: no such file, not an ONNX file, or a folder without an exported model.
    """
    try:
        path = resolve_model_arg(model)
        picked = exported_model(path) if path.is_dir() else path
    except NasdeployError as exc:
        raise ServeError(str(exc)) from None
    if picked.exists() and not picked.is_file():
        raise ServeError(f"{picked} is not a regular file; a model is a .onnx file")
    if not picked.is_file():
        raise ServeError(f"model file not found: {picked}")
    if picked.suffix.lower() != ONNX_SUFFIX:
        raise ServeError(f"{picked} is not an ONNX model: the table times .onnx files in ONNX Runtime "
                         "(give the model.onnx a TensorRT engine was built from, or its folder)")
    report = export_report(picked.parent)
    listed = listed_precisions(picked.parent, report)
    if listed and (path.is_dir() or listed["fp32"] == picked):
        return listed["fp32"], listed, report
    return picked, None, report


def read_model(path: Path) -> tuple[ModelCard, GraphFacts]:
    """The card and graph facts of an ONNX file (one line when it is not a nasdeploy model)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others on garbage
        raise ServeError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    try:
        card = from_props({p.key: p.value for p in proto.metadata_props})
    except CardError as exc:
        raise ServeError(f"{path}: {exc}") from None
    return card, graph_facts(proto)


def prepare(models: Sequence[str | os.PathLike[str]], settings: TableSettings) -> list[TableModel]:
    """Resolve, read and load every model (all errors surface here, before anything is timed).

    Raises:
        ServeError: no models, a bad model, or no model holding a requested precision.
    """
    if not models:
        raise ServeError("give at least one model: an ONNX file, an export folder, a search run or bundled")
    rows: list[TableModel] = []
    seen: set[Path] = set()
    for model in models:
        path, files, report = resolve_files(model)
        if path.resolve() in seen:
            continue  # the same model named twice is one row
        seen.add(path.resolve())
        card, facts = read_model(path)
        files = files or {card.precision: path}
        wanted = settings.precisions or tuple(p for p in PRECISIONS if p in files)
        missing = {p: "not in its export" for p in wanted if p not in files}
        files = {p: files[p] for p in wanted if p in files}
        rows.append(TableModel(str(model), path, files, missing, card, facts, report))
    if settings.precisions and not any(row.files for row in rows):
        raise ServeError(f"no model holds {', '.join(settings.precisions)}: export it with "
                         "python -m export.onnx --fp16 --int8, or leave out --precisions")
    for row in rows:
        for precision, path in row.files.items():
            row.runtimes[precision] = load_onnx(path, settings)
    return rows


def load_onnx(path: Path, settings: TableSettings) -> Runtime:
    """``path`` in ONNX Runtime with the table's device and pinned threads."""
    from serve import ort_backend

    return ort_backend.load(path, settings.device, threads=settings.threads)


# --- naming a row -----------------------------------------------------------------------------


def reference_name(card: ModelCard) -> str | None:
    """The built-in genotype the card's genotype is (``nasnet-a``, ``lite``), or ``None``."""
    if card.genotype is None:
        return None
    for name, genotype in REFERENCE_GENOTYPES.items():
        if card.genotype == genotype or card.genotype.to_dict() == genotype.to_dict():
            return name
    return None


def kind_of(card: ModelCard) -> str:
    """``baseline``, a reference cell's name, ``searched`` or ``other`` (see :data:`KINDS`)."""
    if card.architecture is not None:
        return "baseline"
    reference = reference_name(card)
    if reference is not None:
        return reference
    return "searched" if card.genotype is not None else "other"


def title_of(card: ModelCard, path: Path) -> str:
    """``Searched cell 2@240``, ``NASNet-A 1@48``, ``MobileNetV2 ×0.5`` or the file's name."""
    if card.architecture is not None:
        return model_title(card.architecture, card.width_mult)
    reference = reference_name(card)
    scale = f" {card.scale}" if card.scale else ""
    if reference is not None:
        return REFERENCE_TITLES.get(reference, reference) + scale
    if card.genotype is not None:
        return "Searched cell" + scale
    return path.parent.name + "/" + path.name if path.parent.name else path.name


# --- timing -----------------------------------------------------------------------------------


Progress = Callable[[str], None]


def time_rows(rows: list[TableModel], settings: TableSettings,
              progress: Progress | None = None) -> dict[tuple[int, str], dict[str, Any]]:
    """Batch-1 p50/p90 of every (row, precision), the rounds taking all of them in turn."""
    slots = [(i, p) for i, row in enumerate(rows) for p in row.runtimes]
    rng = np.random.default_rng(settings.seed)
    inputs = {}
    for i, precision in slots:
        size = rows[i].runtimes[precision].info.image_size
        inputs[i, precision] = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    samples: dict[tuple[int, str], list[float]] = {s: [] for s in slots}
    medians: dict[tuple[int, str], list[float]] = {s: [] for s in slots}
    cap = None if settings.iters is not None else settings.duration_s / settings.rounds
    results: dict[tuple[int, str], dict[str, Any]] = {}
    for round_index in range(settings.rounds):
        for done, slot in enumerate(slots, start=1):
            runtime = rows[slot[0]].runtimes[slot[1]]
            measured = measure(_predictor(runtime, inputs[slot]),
                               warmup=settings.warmup if round_index == 0 else min(settings.warmup, 1),
                               repeats=settings.iters, min_repeats=MIN_RUNS, max_time_s=cap,
                               threads=settings.threads, batch_size=1)
            samples[slot].extend(measured.samples_ms)
            medians[slot].append(measured.median_ms)
            if round_index == settings.rounds - 1:
                stats = summarize(samples[slot])
                described = runtime.describe()
                results[slot] = {"p50_ms": stats.median_ms, "p90_ms": stats.p90_ms, "runs": stats.count,
                                 "round_medians_ms": medians[slot], "provider": described.get("provider"),
                                 "threads": described.get("intra_op_threads")}
                if progress is not None:
                    rounds = f"{settings.rounds} round{'s' if settings.rounds != 1 else ''}"
                    progress(f"[{done}/{len(slots)}] {title_of(rows[slot[0]].card, rows[slot[0]].path)} "
                             f"{slot[1]}: p50 {stats.median_ms:.3f} ms, p90 {stats.p90_ms:.3f} ms "
                             f"({stats.count} runs in {rounds})")
    return results


def _predictor(runtime: Runtime, batch: np.ndarray) -> Callable[[], Any]:
    return lambda: runtime.predict(batch)


# --- the document ---------------------------------------------------------------------------


def accuracy_of(row: TableModel, precision: str) -> dict[str, Any]:
    """The accuracy recorded at export for ``precision`` of ``row``, and where it comes from."""
    path = row.files.get(precision)
    if precision == "fp32":
        if row.card.accuracy is None:
            return {"accuracy": None, "accuracy_source": None, "accuracy_images": None}
        return {"accuracy": row.card.accuracy, "accuracy_source": "model card", "accuracy_images": None}
    section = (row.report or {}).get(precision)
    if (path is not None and isinstance(section, dict) and section.get("model") == path.name
            and isinstance(section.get("accuracy"), int | float)):
        images = section.get("samples") if isinstance(section.get("samples"), int) else None
        fp32 = section.get("accuracy_fp32") if isinstance(section.get("accuracy_fp32"), int | float) else None
        return {"accuracy": float(section["accuracy"]),
                "accuracy_source": f"export report: {section.get('inputs') or 'held-out images'}",
                "accuracy_images": images, "accuracy_fp32_same_images": fp32}
    return {"accuracy": None, "accuracy_source": None, "accuracy_images": None}


def model_entry(row: TableModel, timed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model of the document."""
    card, facts = row.card, row.facts
    size = row.path.stat().st_size
    precisions: dict[str, Any] = {}
    for precision, path in row.files.items():
        precisions[precision] = {"file": path.name, "size_bytes": path.stat().st_size,
                                 **accuracy_of(row, precision), **timed[precision]}
    for precision, why in row.missing.items():
        precisions[precision] = {"missing": why}
    return {
        "name": title_of(card, row.path), "kind": kind_of(card), "source": row.source,
        "path": str(row.path), "dataset": card.dataset, "image_size": card.image_size,
        "num_classes": card.num_classes, "scale": card.scale or None, "architecture": card.architecture,
        "width_mult": card.width_mult, "precision": card.precision,
        "size_bytes": size, "size_mb": size / 1e6,
        "params": card.params if card.params is not None else facts.weights,
        "params_source": "model card" if card.params is not None else "ONNX graph",
        "params_onnx": facts.weights,
        "macs": card.macs if card.macs is not None else facts.macs,
        "macs_source": "model card" if card.macs is not None else ("ONNX graph" if facts.macs is not None
                                                                     else None),
        "macs_onnx": facts.macs,
        "depth": facts.depth, "onnx_nodes": facts.nodes,
        "precisions": {p: precisions[p] for p in PRECISIONS if p in precisions},
    }


def build_document(rows: list[TableModel], settings: TableSettings,
                   timed: dict[tuple[int, str], dict[str, Any]]) -> dict[str, Any]:
    """The JSON-ready table: host, timing settings, column definitions and one entry per model."""
    columns = settings.precisions or tuple(p for p in PRECISIONS if any(p in row.files for row in rows))
    providers = sorted({str(t["provider"]) for t in timed.values()})
    pinned = sorted({t["threads"] for t in timed.values() if t.get("threads") is not None})
    models = [model_entry(row, {p: timed[i, p] for p in row.files}) for i, row in enumerate(rows)]
    return {
        "format": TABLE_FORMAT, "version": TABLE_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"name": host_name(), "cpu": cpu_model(), "cores": os.cpu_count(),
                 "os": platform.platform(), "python": platform.python_version(),
                 "onnxruntime": onnxruntime_version()},
        "timing": {"backend": "onnxruntime", "device": settings.device, "provider": ", ".join(providers),
                   "threads": settings.threads if settings.threads is not None else (pinned or [None])[0],
                   "batch_size": 1, "warmup": settings.warmup,
                   "iters": settings.iters, "duration_s": None if settings.iters else settings.duration_s,
                   "rounds": settings.rounds, "inputs": f"standard normal, seed {settings.seed}",
                   "timer": "search.runtime.timing.measure",
                   "statistic": "p50 and p90 of every timed run of every round (numpy's linear percentiles); "
                                "each round times every model and precision in turn"},
        "precisions": list(columns),
        "definitions": DEFINITIONS,
        "models": models,
    }


# --- the one call ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TableResult:
    """The table document and the files written (empty without an output folder)."""

    document: dict[str, Any]
    written: tuple[Path, ...] = ()


def make_table(models: Sequence[str | os.PathLike[str]], settings: TableSettings | None = None, *,
               out: str | os.PathLike[str] | None = None, plot: bool = True,
               progress: Progress | None = None) -> TableResult:
    """Resolve, load, time and describe every model; write the table into ``out`` when given.

    Every check (the output folder, matplotlib, each model) runs before the first timing, so bad
    input costs nothing and leaves nothing half-written.

    Raises:
        ServeError: bad input, with a one-line message.
    """
    settings = settings or TableSettings()
    if out is not None:
        check_out_dir(out)
        if plot:
            require_matplotlib()
    rows = prepare(models, settings)
    try:
        timed = time_rows(rows, settings, progress)
    finally:
        for row in rows:
            for runtime in row.runtimes.values():
                runtime.close()
    document = build_document(rows, settings, timed)
    written = write_outputs(document, out, plot) if out is not None else ()
    return TableResult(document, written)


def read_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``table.json`` written by :func:`make_table` (the app shows it).

    Raises:
        ServeError: missing, not JSON, or not a model table of a version this reads.
    """
    try:
        document = read_json(path, str(path), expect=dict, max_bytes=MAX_REPORT_BYTES)
    except JsonError as exc:
        raise ServeError(str(exc)) from None
    except OSError as exc:
        raise ServeError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if document.get("format") != TABLE_FORMAT or document.get("version") != TABLE_VERSION:
        raise ServeError(f"{path} is not a model table (format {TABLE_FORMAT!r} version {TABLE_VERSION}); "
                         "write one with python -m serve.bench --table MODEL... --out DIR")
    models, precisions = document.get("models"), document.get("precisions")
    if not isinstance(models, list) or not isinstance(precisions, list) or not all(
            isinstance(m, dict) and isinstance(m.get("precisions"), dict) and TABLE_KEYS <= set(m)
            for m in models):
        raise ServeError(f"{path} is not a complete model table: a model lacks one of "
                         f"{', '.join(sorted(TABLE_KEYS))}")
    return document
