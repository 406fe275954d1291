"""Quantization-aware training: a trained network fine-tuned with fake int8, exported as QDQ.

``export.onnx CHECKPOINT --int8 --qat EPOCHS`` writes ``model.int8.onnx`` from this module
instead of post-training quantization:

1. Each BatchNorm that follows a convolution is folded into it (:func:`fold_batchnorm`),
   then every ``Conv2d`` and ``Linear`` of the copy of the network is wrapped in
   :class:`FakeQuant`: its input is fake-quantized per tensor and its weight per output
   channel, both symmetric int8 (zero point 0), the form TensorRT's explicit quantization
   takes, with PyTorch's own ``torch.fake_quantize_per_tensor_affine`` /
   ``torch.fake_quantize_per_channel_affine`` (straight-through gradients).
2. Activation ranges start from the calibration images (max of ``|x|``), then follow the
   training batches (an exponential moving average); weight scales are the per-channel
   ``max |w|`` of the weights as they train. The scales in the file therefore come from
   training, not from a separate calibration of the final weights.
3. The network is fine-tuned on the dataset's training split with the project's training
   loop (``search.training.loop``): SGD, a cosine schedule from ``--qat-lr``.
4. The fine-tuned network is exported with ``search.nn.onnxio.export_onnx``: the exporter
   turns each fake quantizer into a ``QuantizeLinear`` / ``DequantizeLinear`` pair with
   constant scales, so ONNX Runtime and TensorRT run exactly what was trained.

Imports: torch, :mod:`search.training`, :mod:`search.data`, :mod:`search.nn`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search.core.errors import NasdeployError

QMIN, QMAX = -128, 127
EMA = 0.02
"""Weight of a training batch's ``max |x|`` in an activation range (moving average)."""
MAX_QAT_EPOCHS = 100


@dataclass(frozen=True)
class QatSettings:
    """How the fine-tuning runs."""

    epochs: int
    lr: float = 0.005
    batch_size: int = 64
    seed: int = 0
    train_size: int | None = None  # fine-tune on at most this many training images

    def __post_init__(self) -> None:
        epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_QAT_EPOCHS:
            raise NasdeployError(f"--qat takes 1 to {MAX_QAT_EPOCHS} epochs, got {self.epochs!r}"[:120])
        if not (0 < self.lr <= 1.0):
            raise NasdeployError(f"--qat-lr must be above 0 and at most 1, got {self.lr}")


class FakeQuant(nn.Module):
    """A ``Conv2d`` or ``Linear`` whose input and weight are fake-quantized to symmetric int8.

    Attributes:
        layer: the wrapped module (its weights train as usual).
        amax: the input's range (``max |x|``): set by calibration, then a moving average
            over training batches; fixed in eval mode.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.layer = layer
        self.register_buffer("amax", torch.zeros(()))
        self.calibrating = False

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.amax = torch.maximum(self.amax, x.detach().abs().max())
            return x
        if self.training:
            batch = x.detach().abs().max()
            self.amax = batch if self.amax <= 0 else (1 - EMA) * self.amax + EMA * batch
        scale = (self.amax / QMAX).clamp(min=1e-8)
        return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32), QMIN, QMAX)

    def _weight(self) -> torch.Tensor:
        w = self.layer.weight
        dims = tuple(range(1, w.dim()))
        scale = (w.detach().abs().amax(dim=dims) / QMAX).clamp(min=1e-8)
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, QMIN, QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        if self.calibrating:
            return self.layer(x)
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, self._weight(), layer.bias, layer.stride, layer.padding, layer.dilation,
                            layer.groups)
        return F.linear(x, self._weight(), layer.bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold each ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into
    that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``); return how many.

    The int8 weights are then the ones the deployed graph multiplies with: a QDQ weight in
    front of a convolution would otherwise keep every BatchNorm a separate float node.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    was_training = model.training
    model.eval()
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                count += 1
    model.train(was_training)
    return count


def prepare(model: nn.Module) -> int:
    """Wrap every ``Conv2d`` (zero padding) and ``Linear`` of ``model`` in place; return how many."""
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, FakeQuant):
            continue
        for name, child in list(parent.named_children()):
            conv = isinstance(child, nn.Conv2d) and child.padding_mode == "zeros"
            if isinstance(child, nn.Linear) or conv:
                setattr(parent, name, FakeQuant(child))
                count += 1
    return count


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Set every input range to ``max |x|`` over ``images`` (float forward passes)."""
    quants = [m for m in model.modules() if isinstance(m, FakeQuant)]
    model.eval()
    for q in quants:
        q.calibrating, q.amax = True, torch.zeros(())
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        for q in quants:
            q.calibrating = False


def finetune(model: nn.Module, data: Any, settings: QatSettings, progress: bool = True,
             log: Any = print) -> list[dict[str, Any]]:
    """Fine-tune the prepared ``model`` on ``data.train``; one row per epoch."""
    from search.training.loop import (
        TrainConfig,
        evaluate_accuracy,
        make_optimizer,
        make_scheduler,
        steps_per_epoch,
        train_epoch,
    )

    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                         seed=settings.seed, aux_weight=0.0)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch(data.train, config.batch_size))
    history = []
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        stats = train_epoch(model, data.train, optimizer, scheduler, config, epoch, torch.device("cpu"))
        row = {"epoch": epoch + 1, "loss": round(stats.loss, 4), "train_accuracy": round(stats.accuracy, 4),
               "val_accuracy": round(evaluate_accuracy(model, data.val), 4),
               "seconds": round(time.perf_counter() - started, 1)}
        history.append(row)
        log(f"  qat epoch {row['epoch']}/{settings.epochs}: loss {row['loss']:.4f} train_acc "
            f"{row['train_accuracy']:.4f} val_acc {row['val_accuracy']:.4f} ({row['seconds']:.0f}s)")
    model.eval()
    return history


def qat_model(model: nn.Module, card: Any, calib: Any, source: str, data_dir: str | None,
              settings: QatSettings, log: Any = print) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned fake-quantized copy of ``model`` and what the report says about it.

    Raises:
        NasdeployError: the dataset is not available, or its classes are not the model's.
    """
    from export.quantize import dataset_arguments
    from search.data.datasets import load_dataset

    name, folder = dataset_arguments(source, data_dir)
    data = load_dataset(name, folder, image_size=card.image_size, seed=settings.seed, download=False,
                        train_size=settings.train_size)
    if list(data.class_names) != list(card.class_names):
        raise NasdeployError(f"--qat trains on labels: {name}'s classes are not the model's "
                             f"({len(data.class_names)} vs {len(card.class_names)} classes)")
    student = copy.deepcopy(model).cpu()
    if getattr(student, "aux_head", None) is not None:
        student.aux_head = None  # not exported; its loss would only slow the fine-tuning
    folded = fold_batchnorm(student)
    wrapped = prepare(student)
    if wrapped == 0:
        raise NasdeployError("--qat found no convolution or linear layer to quantize")
    calibrate(student, torch.from_numpy(calib))
    log(f"quantization-aware training: {wrapped} layers fake-quantized, {settings.epochs} epoch(s) on "
        f"{len(data.train)} {name} training images, lr {settings.lr:g} ...")
    started = time.perf_counter()
    history = finetune(student, data, settings, log=log)
    return student, {"method": "qat", "epochs": settings.epochs, "lr": settings.lr,
                     "batch_size": settings.batch_size, "train_images": len(data.train),
                     "fake_quantized_layers": wrapped, "batchnorms_folded": folded, "history": history,
                     "seconds": round(time.perf_counter() - started, 1),
                     "activations": "int8 symmetric per tensor, range from calibration then a moving "
                                    "average over training batches",
                     "weights": "int8 symmetric per output channel, from the trained weights"}


def export_qat(model: nn.Module, dst: Path, image_size: int, *, opset: int, batch: int | None) -> None:
    """Export the fake-quantized model as a QDQ ONNX graph."""
    from search.nn.onnxio import export_onnx

    export_onnx(model, dst, image_size, opset=opset, dynamic_batch=batch is None, batch_size=batch or 1)
