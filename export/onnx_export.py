"""Export a genotype or a trained checkpoint to a verified, self-describing ONNX file.

One call, :func:`export_model`, does the whole job: rebuild the network, export it with
``search.nn.onnxio.export_onnx``, simplify it with onnxslim (kept only if ONNX Runtime gives
the same outputs), run the full ``onnx.checker`` and strict shape inference, write the
model card (:class:`search.space.card.ModelCard`) into ``metadata_props``, compare ONNX Runtime with
PyTorch at batch 1 and a larger batch, optionally derive fp16 / int8 models, and publish
``model.onnx`` (+ ``model.fp16.onnx`` / ``model.int8.onnx``) and ``export_report.json``
together. Everything is built in a staging folder first, so a failure leaves no files; the
staging folders of an export that was killed (``kill -9``) are removed by the next export
into the same folder.

Every number is checked before anything is built: the opset against the range the
installed exporter writes (:func:`supported_opsets`), the image size against the card's
:data:`~search.space.card.MAX_IMAGE_SIZE`, batch sizes against its ``MAX_BATCH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export import quantize
from export.metadata import write_card
from export.verify import compare_outputs, open_session, run_session, warn
from search.core.atomic import acquire_lock, is_locked
from search.core.errors import NasdeployError
from search.core.rundir import (
    CHECKPOINT_NAME,
    ENGINE_SUFFIX,
    EXPORT_REPORT_NAME,
    GENOTYPE_NAME,
    LOCK_NAME,
    MODEL_ONNX_NAME,
    ONNX_SUFFIX,
    sidecar_path,
    variant_path,
)
from search.nn.checkpoint import build_from_card, load_checkpoint
from search.nn.cost import count_macs, count_params
from search.nn.onnxio import MIN_OPSET, export_onnx
from search.space.card import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE, CardError, ModelCard
from search.space.genotype import Genotype
from search.space.scale import parse_scale
from search.trials.runinfo import RunTarget, resolve_run, trained_checkpoint

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".ckpt"}
FP32_TOLERANCE = 1e-4
SIMPLIFY_TOLERANCE = 1e-5
RANDOM_INIT_DIR = "random-init"
"""Where a search run's genotype is exported when no trained checkpoint exists yet."""
LOGIT_SCALE = 10.0  # up to this |logit|, the fp32 tolerance is absolute
REPORT_FORMAT = "nasdeploy-export-report"
ACCURACY_KEYS = ("test_accuracy", "accuracy", "val_accuracy")
STAGING_PREFIX = ".export-"
_PROCESS_START = time.time()  # staging folders older than this process may be stale


@dataclass(frozen=True)
class ExportConfig:
    """What ``python -m export.onnx`` was asked to do."""

    source: str
    weights: str | None = None
    variant: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    opset: int = MIN_OPSET
    out: str | None = None
    batch: int | None = None  # None: dynamic batch dimension
    fp16: bool = False
    int8: bool = False
    calib_data: str | None = None
    data_dir: str | None = None
    calib_size: int = 256
    eval_size: int = 500
    calib_method: str = "minmax"
    int8_agreement: float = 0.99
    sensitivity: bool = False
    qat: int | None = None  # epochs of quantization-aware training for the int8 model
    qat_lr: float = 0.005
    qat_images: int | None = None
    int8_form: str = "tensorrt"
    verify_batch: int = 8
    seed: int = 0


@dataclass
class LoadedModel:
    """A network ready to export, with the facts that go into its metadata."""

    model: nn.Module
    spec: ModelCard
    name: str
    trained: bool
    checkpoint: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None  # the search run it came from


@dataclass
class ExportResult:
    """Where the artifacts went and the report that was written next to them."""

    model_path: Path
    report_path: Path
    report: dict[str, Any]
    extra_models: dict[str, Path] = field(default_factory=dict)


# --- resolving the input ------------------------------------------------------------------


def is_checkpoint_path(path: Path) -> bool:
    """A file that looks like a ``torch.save`` checkpoint (by suffix or zip magic)."""
    if not path.is_file():
        return False
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    if path.suffix.lower() == ".json":
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def resolve_source(source: str, weights: str | None, log: Any = print
                   ) -> tuple[Path | None, Genotype | None, str, RunTarget | None]:
    """Split the positional argument into (checkpoint, genotype to check, name, run target).

    A training directory stands for its ``checkpoint.pt``. A search run (its directory or
    its ``genotype.json``) stands for the run's trained checkpoint of the selected genotype
    when final training has produced one (``<run>/train/checkpoint.pt``); otherwise for the
    genotype at the run's recorded target variant, image size and class count.
    """
    path = Path(source).expanduser()
    if path.is_dir() and (path / CHECKPOINT_NAME).is_file() and weights is None:
        path = path / CHECKPOINT_NAME
    if weights is not None:
        ckpt = Path(weights).expanduser()
        if not ckpt.exists():
            raise NasdeployError(f"checkpoint not found: {ckpt}")
        genotype = None if is_checkpoint_path(path) else resolve_run(source).genotype
        return ckpt, genotype, _name_of(ckpt), None
    if is_checkpoint_path(path):
        return path, None, _name_of(path), None
    if not path.exists() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise NasdeployError(f"checkpoint not found: {path}")
    target = resolve_run(source)
    if target.from_run:
        trained = trained_checkpoint(target)
        if trained is not None:
            log(f"using the run's trained weights: {trained}")
            return trained, target.genotype, target.name, target
        log(f"no trained checkpoint in {target.run_dir} yet (train it: python -m search.train "
            f"{target.run_dir}); exporting the genotype at the run's target")
    return None, target.genotype, target.name, target


def _name_of(path: Path) -> str:
    """``runs/abc/checkpoint.pt`` -> ``abc``; ``best.json`` -> ``best``."""
    run_files = (Path(CHECKPOINT_NAME).stem, Path(GENOTYPE_NAME).stem)
    return path.parent.name if path.stem in run_files and path.parent.name else path.stem


def load_model(config: ExportConfig, log: Any = print) -> LoadedModel:
    """Rebuild the network of ``config.source`` (trained weights or random init)."""
    checkpoint, genotype, name, target = resolve_source(config.source, config.weights, log)
    if checkpoint is None:
        assert genotype is not None
        return _random_model(genotype, name, config, target)
    model, spec, raw = load_checkpoint(checkpoint)
    _check_matches(spec, genotype, config, checkpoint)
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    done, planned = training.get("epoch"), training.get("epochs")
    if isinstance(done, int) and isinstance(planned, int) and done < planned:
        warn(f"{checkpoint} has finished {done} of {planned} epochs (training was interrupted); continue it "
             f"with python -m search.train --resume {checkpoint.parent}, then export again")
    return LoadedModel(model.eval(), spec, name, True, checkpoint, dict(raw.get("metrics") or {}),
                       run_dir=target.run_dir if target else None)


def _random_model(genotype: Genotype, name: str, config: ExportConfig,
                  target: RunTarget | None = None) -> LoadedModel:
    recorded = target or RunTarget(source=name, name=name, genotype=genotype)
    variant = config.variant or recorded.variant or "cifar"
    scale = parse_scale(variant, config.image_size or recorded.image_size_for(config.variant))
    num_classes = config.num_classes or recorded.num_classes or 10
    if num_classes < 1:
        raise NasdeployError(f"--num-classes must be positive, got {num_classes}")
    spec = ModelCard(genotype=genotype, scale=variant, image_size=scale.image_size,
                     num_classes=num_classes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     dataset=recorded.dataset)
    model = build_from_card(spec).eval()
    return LoadedModel(model, spec, name, trained=False, run_dir=recorded.run_dir)


def _check_matches(spec: ModelCard, genotype: Genotype | None, config: ExportConfig, ckpt: Path) -> None:
    """Options given together with a checkpoint must agree with it."""
    if genotype is not None and (spec.genotype is None or genotype.to_dict() != spec.genotype.to_dict()):
        raise NasdeployError(f"genotype {config.source!r} does not match the genotype stored in {ckpt}")
    if spec.architecture is not None and config.variant is not None:
        raise NasdeployError(f"--variant does not apply to {ckpt}: it holds the baseline {spec.architecture}")
    if config.variant is not None:
        trained = parse_scale(spec.scale, spec.image_size)
        asked = parse_scale(config.variant, config.image_size or spec.image_size)
        if (asked.notation, asked.layout) != (trained.notation, trained.layout):
            raise NasdeployError(f"--variant {config.variant} does not match the checkpoint ({spec.scale})")
    if config.image_size is not None and config.image_size != spec.image_size:
        raise NasdeployError(
            f"--image-size {config.image_size} does not match the checkpoint ({spec.image_size} px)")
    if config.num_classes is not None and config.num_classes != spec.num_classes:
        raise NasdeployError(
            f"--num-classes {config.num_classes} does not match the checkpoint ({spec.num_classes})")


def network_label(spec: ModelCard) -> str:
    """What the network is, briefly: its N@F scale, or the baseline's title (``MobileNetV2 ×0.5``)."""
    if spec.architecture is not None:
        from search.space.baselines import model_title

        return model_title(spec.architecture, spec.width_mult)
    return spec.scale


def output_path(config: ExportConfig, loaded: LoadedModel) -> Path:
    """``--out`` (a folder or an ``.onnx`` file), else next to the checkpoint or runs/export-<name>/."""
    if config.out:
        out = Path(config.out).expanduser()
        return out if out.suffix.lower() == ONNX_SUFFIX else out / MODEL_ONNX_NAME
    if loaded.checkpoint is not None:
        return loaded.checkpoint.parent / MODEL_ONNX_NAME
    if loaded.run_dir is not None:
        return loaded.run_dir / RANDOM_INIT_DIR / MODEL_ONNX_NAME
    return Path("runs") / f"export-{loaded.name}" / MODEL_ONNX_NAME


# --- metadata -----------------------------------------------------------------------------


def model_card(loaded: LoadedModel, precision: str = "fp32") -> ModelCard:
    """The checkpoint's card completed with the export's facts, as written into the ONNX file.

    Raises:
        CardError: The completed card breaks a card rule (e.g. a recorded accuracy that is not
            a fraction): the export refuses to write a card its readers would reject.
    """
    found = [loaded.metrics[k] for k in ACCURACY_KEYS if k in loaded.metrics]
    try:
        accuracy = float(found[0]) if found else None
        return replace(loaded.spec, precision=precision, params=count_params(loaded.model),
                       macs=count_macs(loaded.model, loaded.spec.image_size), accuracy=accuracy,
                       weights="trained" if loaded.trained else "random-init")
    except (CardError, TypeError, ValueError) as exc:
        where = loaded.checkpoint or loaded.name
        raise CardError(f"{where}: cannot write its model card: {exc}") from None


# --- checks -------------------------------------------------------------------------------


def check_onnx(path: Path, num_classes: int) -> dict[str, Any]:
    """Full ``onnx.checker`` pass and strict shape inference (saved into the file)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise NasdeployError(f"exported graph fails the ONNX checks: {first}") from None
    out_dims = [d.dim_value or d.dim_param for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 2 or out_dims[1] != num_classes:
        raise NasdeployError(f"exported graph has output shape {out_dims}, expected [batch, {num_classes}]")
    onnx.save(inferred, str(path))
    return {"checker": "full_check", "shape_inference": "strict", "output_shape": out_dims,
            "nodes": len(inferred.graph.node), "opset": _opset_of(inferred)}


def _opset_of(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def verification_batches(config: ExportConfig) -> list[int]:
    """Batch sizes to verify: 1 and a larger one (dynamic), or the fixed batch."""
    if config.batch is not None:
        return [config.batch]
    return sorted({1, max(2, config.verify_batch)})


def verify_against_torch(model: nn.Module, path: Path, image_size: int, batches: list[int],
                         seed: int, tolerance: float = FP32_TOLERANCE) -> list[dict[str, Any]]:
    """Compare ONNX Runtime with PyTorch on seeded random inputs; raise beyond the tolerance.

    The tolerance is ``tolerance`` (1e-4) absolute while logits stay within +-10, and grows
    in proportion beyond that (float32 rounding is relative), e.g. 1e-3 for logits of 100.
    """
    session = open_session(path)
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        scale = float(np.abs(expected).max())
        allowed = tolerance * max(1.0, scale / LOGIT_SCALE)
        row = {"batch": batch, **compare_outputs(expected, run_session(session, x)),
               "max_abs_logit": scale, "allowed": allowed}
        rows.append(row)
        if row["max_abs_error"] > allowed:
            raise NasdeployError(
                f"ONNX Runtime differs from PyTorch by {row['max_abs_error']:.3g} (> {allowed:g}) "
                f"at batch {batch}; nothing was written")
    return rows


def simplify_verified(raw: Path, out: Path, x: np.ndarray) -> dict[str, Any]:
    """onnxslim ``raw`` into ``out``; keep the slim graph only if its outputs match."""
    import onnx
    import onnxslim

    before = len(onnx.load(str(raw)).graph.node)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx.save(onnxslim.slim(str(raw)), str(out))
        diff = float(np.abs(run_session(open_session(raw), x) - run_session(open_session(out), x)).max())
    except Exception as exc:  # a simplifier failure must not block the export
        shutil.copyfile(raw, out)
        return {"tool": "onnxslim", "applied": False, "reason": f"{type(exc).__name__}: {exc}"[:200]}
    after = len(onnx.load(str(out)).graph.node)
    applied = diff <= SIMPLIFY_TOLERANCE
    if not applied:
        shutil.copyfile(raw, out)
    return {"tool": "onnxslim", "version": onnxslim.__version__, "applied": applied,
            "nodes_before": before, "nodes_after": after if applied else before,
            "max_abs_change": diff}


# --- staging and publishing ----------------------------------------------------------------


@contextlib.contextmanager
def staging_dir(target_dir: Path) -> Iterator[Path]:
    """A temp folder inside ``target_dir``; removed (with any folders we created) on failure.

    The folder holds a lock (``flock`` on ``.lock``) while in use; stale staging folders left
    in ``target_dir`` by a killed export are removed first (:func:`remove_stale_staging`).
    """
    missing = [p for p in [target_dir, *target_dir.parents] if not p.exists()]
    target_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target_dir)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target_dir))
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(acquire_lock(tmp / LOCK_NAME))
            yield tmp
        except BaseException:
            held.close()
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in missing:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(target_dir: Path) -> list[Path]:
    """Remove the ``.export-*`` folders of killed exports from ``target_dir``; return them.

    A folder is stale when it is older than this process and no live process holds its lock
    (the kernel drops an ``flock`` when its holder dies, ``kill -9`` included).
    """
    removed = []
    for folder in sorted(target_dir.glob(STAGING_PREFIX + "*")):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_mtime >= _PROCESS_START:
                continue
            if is_locked(folder / LOCK_NAME):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def publish(files: dict[Path, Path]) -> None:
    """Move staged files (``staged -> final``) into place, each with an atomic rename."""
    for staged, final in files.items():
        os.replace(staged, final)


# --- the pipeline -------------------------------------------------------------------------


def export_model(config: ExportConfig, log: Any = print) -> ExportResult:
    """Export, check, verify and (optionally) quantize; see the module docstring."""
    _validate(config)
    loaded = load_model(config, log)
    if not loaded.trained:
        warn(f"no trained weights: exporting {loaded.name} with RANDOMLY INITIALISED weights "
             "(fine for format and latency checks, useless for predictions)")
    final = output_path(config, loaded)
    spec = loaded.spec
    info = model_card(loaded)
    with staging_dir(final.parent) as stage:
        staged = stage / final.name
        log(f"exporting {loaded.name} ({network_label(spec)}, {spec.image_size} px, {spec.num_classes} "
            f"classes, opset {config.opset}) ...")
        started = time.perf_counter()
        export_onnx(loaded.model, stage / "raw.onnx", spec.image_size, opset=config.opset,
                    dynamic_batch=config.batch is None, batch_size=config.batch or 1, simplify=False)
        probe = np.random.default_rng(config.seed + 1).standard_normal(
            (config.batch or 2, 3, spec.image_size, spec.image_size)).astype(np.float32)
        simplify = simplify_verified(stage / "raw.onnx", staged, probe)
        checks = check_onnx(staged, spec.num_classes)
        kind = "baseline" if spec.architecture is not None else "NASNet"
        write_card(staged, info, doc=f"nasdeploy {kind} {loaded.name} {network_label(spec)}")
        log("verifying ONNX Runtime against PyTorch ...")
        verification = verify_against_torch(loaded.model, staged, spec.image_size,
                                            verification_batches(config), config.seed)
        report = _report(config, loaded, final, info, checks, simplify, verification,
                         time.perf_counter() - started)
        files = {staged: final}
        extra = _derive_precisions(config, loaded, staged, final, info, report, files, log)
        if extra:
            report["precisions"] = time_precisions(staged, report, log)
        report_path = final.parent / EXPORT_REPORT_NAME
        (stage / EXPORT_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        files[stage / EXPORT_REPORT_NAME] = report_path
        publish(files)
    _remove_stale(final, extra, log)
    return ExportResult(final, report_path, report, extra)


def supported_opsets() -> tuple[int, int]:
    """The ONNX opsets this install exports: nasdeploy's minimum to the lower of the TorchScript
    exporter's maximum (``torch.onnx``) and the installed ``onnx`` package's."""
    import onnx

    try:
        from torch.onnx import _constants

        high = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):
        high = MIN_OPSET
    return MIN_OPSET, max(MIN_OPSET, min(high, onnx.defs.onnx_opset_version()))


def _validate(config: ExportConfig) -> None:
    low, high = supported_opsets()
    if config.opset < low:
        raise NasdeployError(f"--opset {config.opset} is too old: nasdeploy exports opset >= {low}")
    if config.opset > high:
        raise NasdeployError(f"--opset {config.opset} is not supported: this install (torch "
                             f"{torch.__version__}) exports opsets {low} to {high}")
    if config.batch is not None and not 1 <= config.batch <= MAX_BATCH:
        raise NasdeployError(f"--batch must be 1 to {MAX_BATCH} or 'dynamic', got {config.batch}")
    if not 1 <= config.verify_batch <= MAX_BATCH:
        raise NasdeployError(f"--verify-batch must be 1 to {MAX_BATCH}, got {config.verify_batch}")
    if config.image_size is not None and not 1 <= config.image_size <= MAX_IMAGE_SIZE:
        raise NasdeployError(f"--image-size must be 1 to {MAX_IMAGE_SIZE} px, got {config.image_size}")
    if config.num_classes is not None and not 1 <= config.num_classes <= MAX_CLASSES:
        raise NasdeployError(f"--num-classes must be 1 to {MAX_CLASSES}, got {config.num_classes}")
    if config.calib_size < 1 or config.eval_size < 1:
        raise NasdeployError("--calib-size and --eval-size must be positive")
    if not 0.0 < config.int8_agreement <= 1.0:
        raise NasdeployError(f"--int8-agreement must be in (0, 1], got {config.int8_agreement}")
    if config.sensitivity and not config.int8:
        raise NasdeployError("--sensitivity measures the int8 model: add --int8")
    if config.int8_form not in quantize.INT8_FORMS:
        raise NasdeployError(f"unknown --int8-form {config.int8_form!r}: use "
                             f"{', '.join(quantize.INT8_FORMS)}")
    if config.qat is not None:
        from export.qat import QatSettings

        if config.int8_form != "tensorrt":
            raise NasdeployError("--qat writes the TensorRT (QDQ) form; drop --int8-form cpu")
        if not config.int8:
            raise NasdeployError("--qat trains the int8 model: add --int8")
        if config.sensitivity:
            raise NasdeployError("--sensitivity analyses post-training quantization; drop it with --qat")
        QatSettings(epochs=config.qat, lr=config.qat_lr)  # bounds checked before anything is built


def _derive_precisions(config: ExportConfig, loaded: LoadedModel, staged: Path, final: Path,
                       info: ModelCard, report: dict[str, Any], files: dict[Path, Path],
                       log: Any) -> dict[str, Path]:
    """fp16 / int8 siblings of the staged fp32 model; fills ``report`` and ``files``."""
    if not (config.fp16 or config.int8):
        return {}
    data = quantize.evaluation_data(config, info, loaded.spec.dataset, log)
    extra: dict[str, Path] = {}
    for precision, wanted in (("fp16", config.fp16), ("int8", config.int8)):
        if not wanted:
            continue
        target = variant_path(staged, precision)
        log(f"deriving the {precision} model ...")
        if precision == "fp16":
            section = quantize.make_fp16(staged, target, replace(info, precision="fp16"), data,
                                         fixed_batch=config.batch)
        elif config.qat:
            section = _int8_by_qat(config, loaded, staged, target, info, data, log)
            _warn_int8(section, config.int8_agreement, qat=True)
        else:
            section, written = quantize.make_int8(
                staged, target, replace(info, precision="int8"), data, method=config.calib_method,
                fixed_batch=config.batch, target=config.int8_agreement, sensitivity=config.sensitivity,
                form=config.int8_form, log=log)
            for name, path in written.items():
                files[path] = final.parent / name
            if not section["written"]:
                warn(f"{section['reason']}: {variant_path(final, precision).name} was not written; "
                     "lower --int8-agreement to accept the loss")
                report[precision] = section
                continue
            _warn_int8(section, config.int8_agreement)
        section["model"] = variant_path(final, precision).name
        report[precision] = section
        files[target] = variant_path(final, precision)
        extra[precision] = variant_path(final, precision)
    return extra


FASTEST_AGREEMENT = 0.99
"""A derived precision may be served by default only if its top-1 agreement with fp32 reaches this."""


def time_precisions(staged: Path, report: dict[str, Any], log: Any) -> dict[str, Any]:
    """Batch-1 latency of every precision written, on this machine, and the fastest one that
    agrees with fp32 on at least ``FASTEST_AGREEMENT`` of the held-out images (fp32 always
    qualifies); ``serve`` and the app load that one when given the folder."""
    from search.runtime.repeatable import interleaved_medians

    models = {"fp32": staged}
    for precision in ("fp16", "int8"):
        section = report.get(precision)
        if section and section.get("written", True) and variant_path(staged, precision).is_file():
            models[precision] = variant_path(staged, precision)
    log(f"timing {', '.join(models)} at batch 1 on this machine ...")
    rounds = interleaved_medians(models, rounds=3, threads=1, warmup=3, repeats=20, max_time_s=1.0)
    latency = {name: round(sorted(v)[1], 4) for name, v in rounds.items()}
    eligible = [name for name in models
                if name == "fp32" or report[name].get("top1_agreement", 0.0) >= FASTEST_AGREEMENT]
    fastest = min(eligible, key=lambda name: latency[name])
    return {"latency_ms_batch1": latency, "fastest": fastest,
            "rule": f"the fastest precision whose top-1 agreement with fp32 on the held-out images is at "
                    f"least {FASTEST_AGREEMENT} (fp32 always qualifies)",
            "timing": "ONNX Runtime CPU, 1 thread, batch 1, median of 3 interleaved rounds, on the "
                      "export machine"}


def _int8_by_qat(config: ExportConfig, loaded: LoadedModel, staged: Path, target: Path, info: ModelCard,
                 data: quantize.EvalData, log: Any) -> dict[str, Any]:
    """``model.int8.onnx`` by quantization-aware training (:mod:`export.qat`) and its figures."""
    from export import qat

    if not loaded.trained:
        raise NasdeployError("--qat fine-tunes trained weights: export a checkpoint, not a genotype")
    source = config.calib_data or loaded.spec.dataset
    if source is None or data.calib is None:
        raise NasdeployError("--qat needs the model's training data: give --calib-data")
    settings = qat.QatSettings(epochs=config.qat, lr=config.qat_lr, seed=config.seed,
                               train_size=config.qat_images)
    model, facts = qat.qat_model(loaded.model, info, data.calib, source, config.data_dir, settings, log)
    qat.export_qat(model, target, info.image_size, opset=config.opset, batch=config.batch)
    section = quantize._finish(staged, target, replace(info, precision="int8"), data, config.batch)
    probe = data.eval_x[: config.batch or 64]
    with torch.no_grad():
        expected = model(torch.from_numpy(probe)).numpy()
    got = run_session(open_session(target), probe, config.batch)
    facts["onnx_vs_pytorch_max_abs_error"] = float(np.abs(got - expected).max())
    facts["onnx_vs_pytorch_top1_agreement"] = float((got.argmax(1) == expected.argmax(1)).mean())
    return {"written": True, **section, "calibration": {**facts, "format": "QDQ",
                                                        "source": data.calib_source,
                                                        "images": len(data.calib)}}


def _warn_int8(section: dict[str, Any], target: float, qat: bool = False) -> None:
    """One warning line when the int8 model falls short on the held-out images.

    A QAT model is a fine-tuned network, not an approximation of the fp32 one: with labels
    only its accuracy counts.
    """
    held = section["top1_agreement"]
    drop = (section["accuracy_fp32"] - section["accuracy"]) if "accuracy" in section else None
    short = drop > 0.01 if (qat and drop is not None) else held < target or (drop is not None and drop > 0.01)
    if short:
        lost = f", accuracy {section['accuracy']:.3f} against fp32 {section['accuracy_fp32']:.3f}" \
            if drop is not None else ""
        warn(f"int8 agrees with fp32 on {held:.3f} of {section['samples']} held-out images (target "
             f"{target:g}){lost}; " + ("train longer (--qat) or use post-training quantization"
                                       if qat else "see the sensitivity table (--sensitivity) or raise "
                                                   "--int8-agreement"))


def _remove_stale(final: Path, written: dict[str, Path], log: Any) -> None:
    """Drop ``model.fp16/int8.onnx`` and TensorRT engines left by an earlier export.

    They were derived from the previous ``model.onnx`` and no longer match it; a runtime
    would otherwise serve the old weights under the new metadata.
    """
    for precision in ("fp16", "int8"):
        old = variant_path(final, precision)
        if precision not in written and old.exists():
            old.unlink()
            log(f"removed stale {old.name} (derived from an earlier export)")
    int8 = variant_path(final, "int8")
    for suffix in quantize.SENSITIVITY_SUFFIXES:
        table = int8.with_name(int8.name.removesuffix(".onnx") + ".sensitivity" + suffix)
        if table.exists() and table.stat().st_mtime < _PROCESS_START:
            table.unlink()  # from an earlier export; this one wrote none
    for engine in sorted(final.parent.glob(f"{final.stem}*{ENGINE_SUFFIX}")):
        engine.unlink()
        sidecar_path(engine).unlink(missing_ok=True)
        log(f"removed stale {engine.name} (built from an earlier export; rebuild it)")


def _report(config: ExportConfig, loaded: LoadedModel, final: Path, info: ModelCard,
            checks: dict[str, Any], simplify: dict[str, Any], verification: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "format": REPORT_FORMAT, "version": 1,
        "model": final.name,
        "source": {"name": loaded.name, "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
                   "weights": "trained" if loaded.trained else "random-init"},
        "opset": config.opset, "batch": config.batch if config.batch is not None else "dynamic",
        "checks": checks, "simplifier": simplify,
        "verification": {"reference": "PyTorch eager (CPU, eval mode)", "runtime": "onnxruntime CPU",
                         "inputs": f"standard normal, seed {config.seed}",
                         "tolerance_max_abs": FP32_TOLERANCE, "batches": verification},
        "model_info": info.to_dict(),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]},
        "export_seconds": round(seconds, 3),
    }


def summary_lines(result: ExportResult) -> list[str]:
    """Human-readable lines for the CLI: files, verification and quantization figures."""
    report = result.report
    lines = [f"wrote {result.model_path} and {result.report_path.name}"]
    for row in report["verification"]["batches"]:
        lines.append(f"  fp32 vs PyTorch  batch {row['batch']:>3}: max abs error {row['max_abs_error']:.2e}, "
                     f"top-1 agreement {row['top1_agreement']:.3f}")
    for precision in ("fp16", "int8"):
        if precision in report and report[precision].get("written", True):
            section = report[precision]
            acc = section.get("accuracy")
            acc_text = (f", accuracy {acc:.3f} (fp32 {section['accuracy_fp32']:.3f})"
                        if acc is not None else "")
            lines.append(f"  {precision} vs fp32 ({section['samples']} {section['inputs']}): top-1 agreement "
                         f"{section['top1_agreement']:.3f}, max abs error {section['max_abs_error']:.2e}"
                         f"{acc_text} -> {section['model']}")
            qat = section.get("calibration", {})
            if qat.get("method") == "qat":
                lines.append(f"  int8 by quantization-aware training: {qat['epochs']} epoch(s), "
                             f"{qat['fake_quantized_layers']} layers, {qat['seconds']:.0f} s")
            mixed = section.get("mixed_precision")
            if mixed and mixed["float_parts"]:
                lines.append(f"  int8 mixed precision: {len(mixed['float_parts'])} of {mixed['parts']} parts "
                             f"kept float ({', '.join(mixed['float_parts'])}); every node int8 agreed "
                             f"{section['all_nodes_int8']['top1_agreement']:.3f} on the held-out images")
            if "latency_ms_batch1" in section:
                lat = section["latency_ms_batch1"]
                lines.append("  batch-1 latency here: " + ", ".join(
                    f"{k} {v:.2f} ms" for k, v in lat.items() if k != "timing"))
    if "precisions" in report:
        lat = report["precisions"]["latency_ms_batch1"]
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items())
        lines.append(f"  batch-1 latency on this machine: {timed}; served by default: "
                     f"{report['precisions']['fastest']}")
    lines.append(f"next: python -m serve.predict {result.model_path} IMAGE...")
    return lines
