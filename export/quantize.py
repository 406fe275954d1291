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
    """

    calib: np.ndarray | None
    eval_x: np.ndarray
    eval_y: np.ndarray | None
    source: str
    calib_source: str | None = None


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
                eval_size: int, seed: int = 0) -> EvalData:
    """Calibration images from the training split, held-out ones from test (or validation)."""
    import torch

    from search.data.datasets import load_dataset

    name, folder = dataset_arguments(calib_data, data_dir)
    bundle = load_dataset(name, folder, image_size=info.image_size, augment=False, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train = bundle.train.images
    calib_idx = torch.randperm(len(train), generator=generator)[:calib_size]
    held = bundle.test if bundle.test is not None else bundle.val
    split = "test" if bundle.test is not None else "validation"
    eval_idx = torch.randperm(len(held), generator=generator)[:eval_size]
    labels_fit = list(bundle.class_names) == list(info.class_names)
    if not labels_fit:
        warn(f"{name} classes differ from the model's: accuracy is not reported, only agreement")
    return EvalData(
        calib=normalise(train[calib_idx].numpy(), info),
        eval_x=normalise(held.images[eval_idx].numpy(), info),
        eval_y=held.labels[eval_idx].numpy() if labels_fit else None,
        source=f"held-out {name} images ({split} split)",
        calib_source=f"{name} training split",
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
        return load_images(source, config.data_dir, info, config.calib_size, config.eval_size, config.seed)
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
    """Static QDQ int8: per-channel symmetric weights, symmetric activations (TensorRT-ready)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise NasdeployError(f"unknown calibration method {method!r}: use {', '.join(CALIB_METHODS)}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        ops = {node.op_type for node in onnx.load(str(pre)).graph.node} - EXCLUDED_OPS
        quantize_static(
            str(pre), str(dst),
            _as_reader(ImageCalibrationReader(images, fixed_batch=fixed_batch, progress=True)),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, op_types_to_quantize=sorted(ops),
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            calibration_cache_path=None,
        )
    retag_precision(dst, "int8")


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
              fixed_batch: int | None = None) -> dict[str, Any]:
    """QDQ int8 model at ``dst`` and its comparison with ``src``."""
    if data.calib is None:
        raise NasdeployError("--int8 needs real calibration images (--calib-data)")
    quantize_qdq(src, dst, data.calib, method=method, fixed_batch=fixed_batch)
    section = _finish(src, dst, info, data, fixed_batch)
    section["calibration"] = {"source": data.calib_source, "images": len(data.calib), "method": method,
                              "activations": "int8 symmetric (zero point 0)",
                              "weights": "int8 symmetric, per output channel", "format": "QDQ"}
    return section
