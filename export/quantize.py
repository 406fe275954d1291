"""fp16 and int8 (static QDQ) versions of an exported fp32 ONNX model, with their figures.

* fp16: ``onnxruntime.transformers.float16`` converts weights and activations to
  float16 and keeps the graph inputs and outputs float32 (``keep_io_types``), so callers
  feed the same preprocessed arrays and read float32 logits from every precision.
* int8: ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8
  weights and *symmetric* int8 activations (zero point 0), the form TensorRT's explicit
  quantization accepts; calibrated by a :class:`ImageCalibrationReader` over real images.

Each derived model is checked (``onnx.checker`` full check), carries the same model card
with its own ``precision``, and is compared with the fp32 model on held-out images:
top-1 agreement, max abs logit error and, when the labels fit the model, accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import retag_precision, write_card
from export.verify import compare_outputs, open_session, run_session, warn
from search.core.errors import NasdeployError
from search.runtime.tensorrt import convert_fp16 as runtime_fp16
from search.space.card import ModelCard

CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_FORMS = {
    "tensorrt": "QDQ, symmetric int8 activations (zero point 0), per-channel symmetric int8 weights: "
                "what TensorRT's explicit quantization builds",
    "cpu": "QOperator (QLinearConv, QLinearAdd, ...), asymmetric uint8 activations, per-channel int8 "
           "weights: ONNX Runtime's fastest CPU form on x86 without VNNI; TensorRT cannot build it",
}
"""``--int8-form``: which int8 graph ``export.onnx --int8`` writes."""
CALIB_BATCH = 32
RANDOM_SAMPLES = 64
EXCLUDED_OPS = {"BatchNormalization"}  # leftover BNs (after concat) stay float, as TensorRT fuses them


@dataclass(frozen=True)
class EvalData:
    """Normalised NCHW float32 images for calibration and comparison.

    Attributes:
        calib: calibration images (training split), or ``None`` without a dataset.
        eval_x: held-out images (or random inputs) to compare precisions on.
        eval_y: their labels when they match the model's classes, else ``None``.
        source: what ``eval_x`` is, for the report.
        calib_source: where the calibration images come from.
        select_x: images that choose what INT8 keeps float (training split, disjoint from
            ``calib``; the calibration images when the split has no others).
        select_source: what ``select_x`` is.
    """

    calib: np.ndarray | None
    eval_x: np.ndarray
    eval_y: np.ndarray | None
    source: str
    calib_source: str | None = None
    select_x: np.ndarray | None = None
    select_source: str | None = None


class ImageCalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over an image array."""

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH, input_name: str = "input",
                 fixed_batch: int | None = None, progress: bool = False):
        self.images = images
        self.batch = fixed_batch or batch
        self.fixed = fixed_batch is not None
        self.input_name = input_name
        self._start = 0
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(images), desc="calibrating", unit="img", disable=None, leave=False)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as an input feed, ``None`` when exhausted."""
        if self._start >= len(self.images):
            if self._bar is not None:
                self._bar.close()
                self._bar = None  # later passes (after rewind) stay silent
            return None
        if self._bar is not None:
            self._bar.update(min(self.batch, len(self.images) - self._start))
        chunk = self.images[self._start:self._start + self.batch]
        self._start += self.batch
        if self.fixed and len(chunk) < self.batch:  # a fixed-batch graph needs full batches
            chunk = np.concatenate([chunk, self.images[: self.batch - len(chunk)]])
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._start = 0


def _as_reader(reader: ImageCalibrationReader) -> Any:
    """Wrap in the ORT base class (some ORT versions check ``isinstance``)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    return _Reader()


# --- data ---------------------------------------------------------------------------------


def normalise(images_uint8: Any, info: ModelCard) -> np.ndarray:
    """uint8 NCHW RGB -> float32 normalised with the model's own mean/std."""
    x = np.asarray(images_uint8, dtype=np.float32) / 255.0
    mean = np.asarray(info.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(info.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def dataset_arguments(calib_data: str, data_dir: str | None) -> tuple[str, str | None]:
    """``--calib-data`` as (dataset name, data dir): a dataset name, or an image folder."""
    from search.data.datasets import DATASETS

    if calib_data.strip().lower() in DATASETS:
        return calib_data.strip().lower(), data_dir
    if Path(calib_data).expanduser().is_dir():
        return "imagefolder", str(Path(calib_data).expanduser())
    raise NasdeployError(
        f"--calib-data {calib_data!r} is neither a dataset ({', '.join(DATASETS)}) nor an image folder")


def load_images(calib_data: str, data_dir: str | None, info: ModelCard, calib_size: int,
                eval_size: int, seed: int = 0, require_classes: bool = False) -> EvalData:
    """Calibration images from the training split, held-out ones from test (or validation).

    With ``require_classes`` (int8), data of other classes than the model's is refused: the
    ranges and the parts kept float would be chosen on images the model never classifies.
    """
    import torch

    from search.data.datasets import load_dataset

    name, folder = dataset_arguments(calib_data, data_dir)
    bundle = load_dataset(name, folder, image_size=info.image_size, augment=False, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train = bundle.train.images
    order = torch.randperm(len(train), generator=generator)
    calib_idx, select_idx = order[:calib_size], order[calib_size:calib_size + eval_size]
    if len(select_idx) == 0:
        select_idx = calib_idx
    held = bundle.test if bundle.test is not None else bundle.val
    split = "test" if bundle.test is not None else "validation"
    eval_idx = torch.randperm(len(held), generator=generator)[:eval_size]
    labels_fit = list(bundle.class_names) == list(info.class_names)
    if not labels_fit and require_classes:
        theirs, ours = list(bundle.class_names), list(info.class_names)
        raise NasdeployError(f"--calib-data {calib_data}: its {len(theirs)} classes ({', '.join(theirs[:4])}"
                             f"{', ...' if len(theirs) > 4 else ''}) are not the model's {len(ours)} "
                             f"({', '.join(ours[:4])}{', ...' if len(ours) > 4 else ''}); calibrate on "
                             "images of the model's classes")
    if not labels_fit:
        warn(f"{name} classes differ from the model's: accuracy is not reported, only agreement")
    return EvalData(
        calib=normalise(train[calib_idx].numpy(), info),
        eval_x=normalise(held.images[eval_idx].numpy(), info),
        eval_y=held.labels[eval_idx].numpy() if labels_fit else None,
        source=f"held-out {name} images ({split} split)",
        calib_source=f"{name} training split",
        select_x=normalise(train[select_idx].numpy(), info),
        select_source=f"{len(select_idx)} {name} training images" + (
            " (the calibration images)" if select_idx is calib_idx else " not used to calibrate"),
    )


def random_inputs(info: ModelCard, samples: int = RANDOM_SAMPLES, seed: int = 0) -> EvalData:
    """Seeded standard-normal inputs when no dataset is available (fp16 only)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 3, info.image_size, info.image_size)).astype(np.float32)
    return EvalData(None, x, None, "random standard-normal inputs")


def evaluation_data(config: Any, info: ModelCard, dataset: str | None, log: Any = print) -> EvalData:
    """Images for ``--fp16``/``--int8``: ``--calib-data``, else the checkpoint's dataset.

    int8 needs real images; fp16 falls back to random inputs (with a warning).
    """
    source = config.calib_data or dataset
    if source is None:
        if config.int8:
            raise NasdeployError("--int8 needs --calib-data (a dataset such as digits or cifar10, "
                                 "or an image folder) to calibrate on real images")
        warn("no dataset known: the fp16 agreement figure uses random inputs")
        return random_inputs(info, seed=config.seed)
    log(f"loading calibration / evaluation images from {source} ...")
    try:
        return load_images(source, config.data_dir, info, config.calib_size, config.eval_size, config.seed,
                           require_classes=config.int8)
    except NasdeployError as exc:
        if config.int8 or config.calib_data:
            raise
        warn(f"{exc}; the fp16 agreement figure uses random inputs")
        return random_inputs(info, seed=config.seed)


# --- conversions --------------------------------------------------------------------------


def convert_fp16(src: Path, dst: Path) -> None:
    """Write an fp16 copy of ``src`` with float32 inputs and outputs, tagged fp16."""
    runtime_fp16(src, dst)
    retag_precision(dst, "fp16")


def quantize_qdq(src: Path, dst: Path, images: np.ndarray, *, method: str = "minmax",
                 fixed_batch: int | None = None) -> None:
    """Static QDQ int8 of every quantizable node (see :class:`QdqQuantizer`)."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        QdqQuantizer(src, images, Path(tmp), method=method, fixed_batch=fixed_batch).write(dst)


class QdqQuantizer:
    """Static QDQ int8 of one fp32 model, calibrated once and written with any nodes left float.

    Per-channel symmetric int8 weights and symmetric int8 activations (zero point 0): the form
    TensorRT's explicit quantization accepts, for every node kept or not. The model is
    pre-processed (``quant_pre_process``) and calibrated on ``images`` once; every later
    :meth:`write` reuses the activation ranges (ONNX Runtime's calibration cache), so a
    sensitivity sweep or a mixed-precision search costs a graph rewrite per model, not a
    calibration.

    Attributes:
        quantized: names of the nodes a full quantization quantizes (the ones with an input
            that comes from a ``DequantizeLinear``), in graph order.
    """

    def __init__(self, src: Path, images: np.ndarray, workdir: Path, *, method: str = "minmax",
                 fixed_batch: int | None = None, form: str = "tensorrt"):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if method not in CALIB_METHODS:
            raise NasdeployError(f"unknown calibration method {method!r}: use {', '.join(CALIB_METHODS)}")
        if form not in INT8_FORMS:
            raise NasdeployError(f"unknown --int8-form {form!r}: use {', '.join(INT8_FORMS)}")
        self.method, self.images, self.fixed_batch, self.form = method, images, fixed_batch, form
        self.workdir = workdir
        self.pre = workdir / "pre.onnx"
        self.cache = workdir / "calibration.json"
        with _quiet():
            quant_pre_process(str(src), str(self.pre), skip_symbolic_shape=False)
        graph = onnx.load(str(self.pre)).graph
        self.ops = sorted({node.op_type for node in graph.node} - EXCLUDED_OPS)
        self._cached = _supports_calibration_cache()
        full = workdir / "full.int8.onnx"
        self.write(full, progress=True)
        if form == "tensorrt":
            self.quantized = quantized_nodes(full)
        else:  # QOperator renames what it replaces: every node of a quantizable type is a candidate
            self.quantized = [node.name for node in graph.node if node.op_type in self.ops]

    def write(self, dst: Path, *, exclude: list[str] | tuple[str, ...] = (),
              only: list[str] | tuple[str, ...] | None = None, progress: bool = False) -> None:
        """Write the QDQ model to ``dst`` with ``exclude`` left float (or only ``only`` quantized)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        reader = None
        if not (self._cached and self.cache.is_file()):
            reader = _as_reader(ImageCalibrationReader(self.images, fixed_batch=self.fixed_batch,
                                                       progress=progress))
        cache = {"calibration_cache_path": str(self.cache)} if self._cached else {}
        trt = self.form == "tensorrt"
        with _quiet():
            quantize_static(
                str(self.pre), str(dst), reader,
                quant_format=QuantFormat.QDQ if trt else QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                weight_type=QuantType.QInt8, op_types_to_quantize=self.ops,
                nodes_to_quantize=list(only) if only is not None else None,
                nodes_to_exclude=list(exclude), calibrate_method=methods[self.method],
                extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True}, **cache)
        retag_precision(dst, "int8")


def _supports_calibration_cache() -> bool:
    """Whether this ONNX Runtime's ``quantize_static`` reuses ranges (``calibration_cache_path``)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantized_nodes(path: Path) -> list[str]:
    """Names of the nodes of an int8 model that compute in int8, in graph order: in QDQ form
    the ones with an input from a ``DequantizeLinear``, in QOperator form the ``QLinear*`` /
    ``QGemm`` / ``*Integer`` operators."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.name for node in graph.node
            if _integer_op(node.op_type) or (node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                                             and any(name in dequantized for name in node.input))]


def _integer_op(op: str) -> bool:
    """An ONNX Runtime QOperator-form operator (computes on integers)."""
    return op.startswith("QLinear") or op == "QGemm" or op.endswith("Integer")


def int8_form(path: Path) -> str | None:
    """``tensorrt`` (QDQ), ``cpu`` (QOperator) or ``None`` (no int8 operators) for an ONNX file."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    if any(_integer_op(op) for op in ops):
        return "cpu"
    return "tensorrt" if "DequantizeLinear" in ops else None


@contextlib.contextmanager
def _quiet():
    """Silence the quantizer's root-logger chatter and warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# --- derive + compare -----------------------------------------------------------------------


def _finish(src: Path, dst: Path, info: ModelCard, data: EvalData, fixed_batch: int | None) -> dict[str, Any]:
    """Check ``dst``, write its model card and compare it with ``src`` on ``data``."""
    import onnx

    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NasdeployError(f"{info.precision} model fails onnx.checker: "
                             f"{str(exc).strip().splitlines()[0][:200]}") from None
    write_card(dst, info)
    return compare_models(src, dst, data, fixed_batch)


def compare_models(reference: Path, candidate: Path, data: EvalData,
                   fixed_batch: int | None = None) -> dict[str, Any]:
    """Agreement / error / accuracy of ``candidate`` against ``reference`` on ``data``."""
    ref = run_session(open_session(reference), data.eval_x, fixed_batch)
    got = run_session(open_session(candidate), data.eval_x, fixed_batch)
    section: dict[str, Any] = {"inputs": data.source, "samples": len(data.eval_x),
                               **compare_outputs(ref, got)}
    if data.eval_y is not None:
        section["accuracy_fp32"] = float((ref.argmax(1) == data.eval_y).mean())
        section["accuracy"] = float((got.argmax(1) == data.eval_y).mean())
    section["size_bytes"] = candidate.stat().st_size
    return section


def make_fp16(src: Path, dst: Path, info: ModelCard, data: EvalData,
              fixed_batch: int | None = None) -> dict[str, Any]:
    """fp16 model at ``dst`` (float32 I/O) and its comparison with ``src``."""
    convert_fp16(src, dst)
    section = _finish(src, dst, info, data, fixed_batch)
    section["io_dtype"] = "float32 (weights and activations float16)"
    return section


def make_int8(src: Path, dst: Path, info: ModelCard, data: EvalData, *, method: str = "minmax",
              fixed_batch: int | None = None, target: float = 0.99, sensitivity: bool = False,
              form: str = "tensorrt", log: Any = print) -> tuple[dict[str, Any], dict[str, Path]]:
    """QDQ int8 model at ``dst`` that agrees with ``src`` on at least ``target`` of the selection
    images (keeping the most sensitive parts float when a full quantization does not), and
    its comparison with ``src``; with ``sensitivity`` (or when parts were kept float) the
    per-part table and chart beside ``dst``.

    Returns the report section and the extra files written (name -> staged path). ``dst`` is
    not written when the target cannot be met with any part quantized (``section["written"]``).
    """
    from export import sensitivity as sens

    if data.calib is None:
        raise NasdeployError("--int8 needs real calibration images (--calib-data)")
    if not 0.0 < target <= 1.0:
        raise NasdeployError(f"--int8-agreement must be in (0, 1], got {target}")
    select = data.select_x if data.select_x is not None else data.calib
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        quantizer = QdqQuantizer(src, data.calib, Path(tmp), method=method, fixed_batch=fixed_batch,
                                 form=form)
        reference = sens.logits(src, select, fixed_batch)
        full = Path(tmp) / "all.int8.onnx"
        quantizer.write(full)
        full_agreement = sens.agreement(reference, sens.logits(full, select, fixed_batch))
        groups = sens.node_groups(quantizer.quantized, info)
        costs: list[sens.PartCost] = []
        if sensitivity or full_agreement < target:
            log(f"int8 of every node agrees with fp32 on {full_agreement:.3f} of the selection images "
                f"(target {target:g}); measuring each of {len(groups)} parts alone ...")
            costs = sens.measure_sensitivity(quantizer, groups, select, reference, fixed_batch=fixed_batch)
        mixed = sens.mixed_precision(quantizer, groups, costs, select, reference, target, dst,
                                     fixed_batch=fixed_batch, full_agreement=full_agreement, log=log)
        mixed_section = {"target_agreement": target,
                         "selection_images": data.select_source or data.calib_source,
                         "all_nodes_agreement": round(full_agreement, 4),
                         "agreement": round(mixed.agreement, 4), "reached": mixed.reached,
                         "parts": len(groups), "float_parts": mixed.float_parts,
                         "float_nodes": len(mixed.float_nodes),
                         "quantized_nodes": len(quantized_nodes(dst)) if mixed.reached else 0,
                         "nodes": len(quantizer.quantized),
                         "steps": [{"float_parts": k, "agreement": round(a, 4)} for k, a in mixed.steps]}
        calibration = {"source": data.calib_source, "images": len(data.calib), "method": method,
                       "form": form, "form_description": INT8_FORMS[form],
                       "activations": "int8 symmetric (zero point 0)" if form == "tensorrt"
                       else "uint8 asymmetric",
                       "weights": "int8 symmetric, per output channel",
                       "format": "QDQ" if form == "tensorrt" else "QOperator"}
        if not mixed.reached:
            dst.unlink(missing_ok=True)
            section: dict[str, Any] = {"written": False, "calibration": calibration,
                                       "mixed_precision": mixed_section,
                                       "reason": f"no int8 model reaches top-1 agreement {target:g} "
                                                 f"with fp32 while any part stays quantized (best "
                                                 f"{max(a for _, a in mixed.steps):.3f})"}
        else:
            section = {"written": True, **_finish(src, dst, info, data, fixed_batch),
                       "calibration": calibration, "mixed_precision": mixed_section}
            if mixed.float_parts:
                whole = compare_models(src, full, data, fixed_batch)
                section["all_nodes_int8"] = {k: whole[k] for k in ("top1_agreement", "max_abs_error",
                                                                    "accuracy") if k in whole}
        if costs:
            section["sensitivity"] = sens.sensitivity_rows(costs)
            stem = dst.name.removesuffix(".onnx") + ".sensitivity"
            for suffix, text in ((".csv", sens.sensitivity_csv(costs)),
                                 (".md", sens.sensitivity_markdown(costs, float_parts=mixed.float_parts))):
                path = dst.with_name(stem + suffix)
                path.write_text(text, encoding="utf-8")
                files[path.name] = path
            chart = dst.with_name(stem + ".png")
            what = info.scale or info.architecture or "the model"
            sens.sensitivity_chart(costs, chart, f"int8 sensitivity of {what} by part",
                                   float_parts=mixed.float_parts)
            files[chart.name] = chart
        if mixed.float_parts or sensitivity:
            section["latency_ms_batch1"] = _latencies(
                {"fp32": src, "int8 (every node)": full,
                 **({"int8 (mixed)": dst} if mixed.reached and mixed.float_parts else {})})
    return section, files


SENSITIVITY_SUFFIXES = (".csv", ".md", ".png")
"""The files ``make_int8`` writes beside ``model.int8.onnx`` as ``model.int8.sensitivity.*``."""


def _latencies(models: dict[str, Path]) -> dict[str, Any]:
    """Batch-1 p50 latency of each model on this machine (ONNX Runtime CPU, one thread)."""
    from search.runtime.repeatable import interleaved_medians

    timed = interleaved_medians(models, rounds=1, threads=1, warmup=5, repeats=30, max_time_s=2.0)
    out: dict[str, Any] = {name: round(ms[0], 3) for name, ms in timed.items()}
    out["timing"] = "ONNX Runtime CPU, 1 thread, batch 1, p50, measured during the export"
    return out
