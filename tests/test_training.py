"""The shared training loop on real tiny networks and the digits data."""

from __future__ import annotations

import pytest
import torch

from search.core.errors import NasdeployError
from search.data.datasets import load_dataset
from search.nn.device import resolve_device
from search.nn.model import build_model
from search.space.genotype import REFERENCE_GENOTYPES
from search.training.loop import (
    DivergedError,
    TrainConfig,
    evaluate_accuracy,
    iterate_batches,
    make_optimizer,
    make_scheduler,
    recalibrate_batchnorm,
    steps_per_epoch,
    train_epoch,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8, train_size=400, seed=0)


def _model(auxiliary: bool = False, drop_path: float = 0.0):
    return build_model(REFERENCE_GENOTYPES["lite"], "1@48", num_classes=10, image_size=8,
                       auxiliary=auxiliary, drop_path_prob=drop_path)


def _fit(model, dataset, config: TrainConfig) -> list:
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch(dataset, config.batch_size))
    return [train_epoch(model, dataset, optimizer, scheduler, config, epoch, CPU)
            for epoch in range(config.epochs)]


def test_training_learns_digits(digits) -> None:
    model = _model()
    untrained = evaluate_accuracy(model, digits.val, CPU)
    stats = _fit(model, digits.train, TrainConfig(epochs=3, batch_size=32, lr=0.1))
    assert stats[-1].loss < stats[0].loss
    assert all(s.samples == len(digits.train) for s in stats)
    assert stats[-1].lr < 0.1 * 0.5  # cosine decay reached the last third
    accuracy = evaluate_accuracy(model, digits.val, CPU)
    # relative, not absolute: where 3 short epochs land depends on the CPU's float path
    assert untrained < accuracy <= 1.0


def test_training_is_deterministic_for_a_seed(digits) -> None:
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        losses.append(_fit(_model(), digits.train, TrainConfig(epochs=1, batch_size=64))[0].loss)
    assert losses[0] == losses[1]


def test_auxiliary_head_and_drop_path_are_used(digits) -> None:
    model = _model(auxiliary=True, drop_path=0.3)
    config = TrainConfig(epochs=2, batch_size=64, drop_path_prob=0.3, aux_weight=0.4)
    stats = _fit(model, digits.train, config)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in stats)
    # ScheduledDropPath was advanced to epoch 1 of 2 for the last epoch
    assert model.cells[-1].drop_prob == pytest.approx(0.3 * 0.5)
    assert model.aux_head.classifier.weight.grad is not None
    model.eval()
    assert model(digits.val.batch(torch.arange(2))[0]).shape == (2, 10)


def test_absurd_learning_rate_diverges(digits) -> None:
    with pytest.raises(DivergedError):
        _fit(_model(), digits.train, TrainConfig(epochs=1, lr=1e8, grad_clip=0.0))


def test_recalibrated_batchnorm_statistics(digits) -> None:
    model = _model()
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    recalibrate_batchnorm(model, digits.train, CPU)
    assert norm.momentum == 0.1 and model.training
    assert norm.num_batches_tracked.item() == steps_per_epoch(digits.train, 256)
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))


def test_batches_cover_the_data_once_in_a_seeded_order(digits) -> None:
    def labels(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [y for _, ys in iterate_batches(digits.val, 50, shuffle=True, generator=gen)
                for y in ys.tolist()]

    assert sorted(labels(1)) == sorted(digits.val.labels.tolist())
    assert labels(1) == labels(1) and labels(1) != labels(2)


def test_evaluate_accuracy_restores_mode_and_rejects_empty(digits) -> None:
    model = _model().train()
    accuracy = evaluate_accuracy(model, digits.val, CPU, batch_size=7)
    assert 0.0 <= accuracy <= 1.0 and model.training
    loader = torch.utils.data.DataLoader(digits.val, batch_size=16)
    assert evaluate_accuracy(model, loader, CPU) == accuracy
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(model, digits.val.subset(torch.tensor([], dtype=torch.long)), CPU)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    with pytest.raises(NasdeployError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_one_line_error() -> None:
    with pytest.raises(NasdeployError, match="--device") as info:
        resolve_device("cuda")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": 1, "lr": -1.0},
                                    {"epochs": 1, "batch_size": 0},
                                    {"epochs": 1, "label_smoothing": 1.0}])
def test_train_config_validation(kwargs: dict) -> None:
    with pytest.raises(NasdeployError):
        TrainConfig(**kwargs)
