"""Child evaluation: train a small proxy network of a candidate's cells, score it on validation.

``evaluate_child`` never raises for a problem of the model itself: a NaN/inf loss gives
status ``"diverged"``, a model that fails to build or run (including CUDA out of memory)
gives ``"failed"`` with the reason on one line; both score accuracy 0. It does raise
:class:`~search.core.errors.NasdeployError` for settings the user must fix (e.g. ``--device
cuda`` without a GPU). The global torch RNG is left untouched, so a search strategy that
samples from it is not disturbed by the children it evaluates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from search.core.errors import NasdeployError, one_line
from search.data.datasets import DataBundle, ImageTensorDataset
from search.nn.cost import count_params
from search.nn.device import resolve_device
from search.space.genotype import Genotype
from search.training.loop import (
    DivergedError,
    TrainConfig,
    evaluate_accuracy,
    make_optimizer,
    make_scheduler,
    recalibrate_batchnorm,
    steps_per_epoch,
    train_epoch,
)

STATUSES = ("ok", "diverged", "failed")


@dataclass(frozen=True)
class ChildSettings:
    """How each candidate is trained and scored (the proxy task).

    Attributes:
        scale: proxy network size, ``N@F`` or a variant name (default one normal cell per
            stage, 192 penultimate filters = 8 channels per op for 5-block cells: about 5 s
            per epoch on digits on one core).
        image_size: input size; ``None`` uses the dataset's size (else images are resized).
        epochs: training epochs per child.
        train_size: train on at most this many images (seeded subset).
        batch_size: SGD batch size (32 gives enough steps on small proxy sets).
        lr: initial learning rate (cosine-decayed to zero).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: weight-init, data-order and subset seed (the same for every child).
        weight_decay: SGD weight decay.
        recalibrate_bn: recompute BatchNorm statistics before scoring (see
            :func:`search.training.loop.recalibrate_batchnorm`).
        cpu_threads: torch intra-op threads while training on the CPU (``None`` keeps
            torch's setting). Proxy networks are tiny, so extra threads only add
            synchronisation: on 2 cores shared with the latency measurement, NASNet-A 1@32
            on digits trained in 9.8 s on one thread and 61.7 s on two.
    """

    scale: str = "1@192"
    image_size: int | None = None
    epochs: int = 1
    train_size: int | None = None
    batch_size: int = 32
    lr: float = 0.05
    device: str = "auto"
    seed: int = 0
    weight_decay: float = 3e-4
    recalibrate_bn: bool = True
    cpu_threads: int | None = 1


@dataclass(frozen=True)
class AccuracyResult:
    """Outcome of one child: validation accuracy and how the run ended."""

    accuracy: float
    status: str
    error: str | None
    train_time_s: float
    params: int


def evaluate_child(genotype: Genotype, data: DataBundle, settings: ChildSettings
                   ) -> AccuracyResult:
    """Train the proxy network of ``genotype`` on ``data.train``, score it on ``data.val``.

    Deterministic on CPU for a given ``settings.seed``.
    """
    device = resolve_device(settings.device)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size,
                         lr=settings.lr, weight_decay=settings.weight_decay,
                         device=str(device), seed=settings.seed)
    train_set, val_set = _proxy_splits(data, settings)
    start = time.perf_counter()
    params = 0
    devices = [device.index or 0] if device.type == "cuda" else []
    threads = settings.cpu_threads if device.type == "cpu" else None
    with torch.random.fork_rng(devices=devices), _torch_threads(threads):
        torch.manual_seed(settings.seed)
        try:
            model = _build(genotype, data, settings).to(device)
            params = count_params(model)
            optimizer = make_optimizer(model, config)
            scheduler = make_scheduler(optimizer, config, steps_per_epoch(train_set,
                                                                          config.batch_size))
            for epoch in range(config.epochs):
                train_epoch(model, train_set, optimizer, scheduler, config, epoch, device)
            if settings.recalibrate_bn:
                recalibrate_batchnorm(model, train_set, device)
            accuracy = evaluate_accuracy(model, val_set, device)
        except DivergedError as exc:
            return AccuracyResult(0.0, "diverged", one_line(exc), _since(start), params)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return AccuracyResult(0.0, "failed", "CUDA out of memory", _since(start), params)
        except Exception as exc:  # any build/run failure of this candidate is recorded
            return AccuracyResult(0.0, "failed", one_line(exc), _since(start), params)
    return AccuracyResult(accuracy, "ok", None, _since(start), params)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, restoring the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _build(genotype: Genotype, data: DataBundle, settings: ChildSettings) -> torch.nn.Module:
    from search.nn.model import build_model

    return build_model(genotype, settings.scale, num_classes=data.num_classes,
                       image_size=settings.image_size or data.image_size)


def _proxy_splits(data: DataBundle, settings: ChildSettings
                  ) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """The child's training subset and the validation set, at the child image size."""
    train, val = data.train, data.val
    if len(val) == 0:
        raise NasdeployError("child evaluation needs a validation split (val_fraction > 0)")
    if settings.train_size is not None and settings.train_size < len(train):
        generator = torch.Generator().manual_seed(settings.seed)
        keep = torch.randperm(len(train), generator=generator)[:settings.train_size]
        train = train.subset(torch.sort(keep).values, train.augment)
    size = settings.image_size
    if size is not None and size != data.image_size:
        train, val = train.resized(size), val.resized(size)
    return train, val


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)
