"""Tiny real checkpoints and exports for the export tests (1@48 NASNet-A at 16 px)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from search.data.datasets import DataBundle, load_dataset
from search.nn.checkpoint import build_from_card, save_checkpoint
from search.space.card import ModelCard
from search.space.genotype import REFERENCE_GENOTYPES

IMAGE_SIZE = 16
SCALE = "1@48"


@functools.lru_cache(maxsize=1)
def digits() -> DataBundle:
    """The bundled digits data at 16 px (loaded once per test session)."""
    return load_dataset("digits", image_size=IMAGE_SIZE, augment=False)


def digits_spec() -> ModelCard:
    """A NASNet-A card for the bundled digits data at 16 px, with its real statistics."""
    data = digits()
    return ModelCard(genotype=REFERENCE_GENOTYPES["nasnet-a"], scale=SCALE, image_size=IMAGE_SIZE,
                     num_classes=data.num_classes, class_names=data.class_names, mean=data.mean,
                     std=data.std, dataset="digits")


TARGET_ACCURACY = 0.85
"""Held-out accuracy (the whole digits test split) the fixture model is trained to."""
MAX_STEPS = 600
CHECK_EVERY = 10


@functools.lru_cache(maxsize=1)
def trained_model() -> torch.nn.Module:
    """A 1@48 NASNet-A trained on digits until it clears :data:`TARGET_ACCURACY`, once.

    Trained to a criterion rather than for a fixed number of steps: another CPU's
    floating-point path changes the course of a short run (after 30 fixed SGD steps one
    x86 machine scored 0.36, another 0.175), not whether it gets there. About 60 steps.

    Raises:
        RuntimeError: The target was not reached within :data:`MAX_STEPS` steps.
    """
    spec, data = digits_spec(), digits()
    assert data.test is not None
    x_held, y_held = data.test.batch(torch.arange(len(data.test)))
    torch.manual_seed(0)
    model = build_from_card(spec).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, far faster on busy cores
    best = 0.0
    try:
        for step in range(1, MAX_STEPS + 1):
            x, y = data.train.batch(torch.randint(0, len(data.train), (32,), generator=generator))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % CHECK_EVERY == 0:
                with torch.no_grad():
                    accuracy = (model.eval()(x_held).argmax(1) == y_held).float().mean().item()
                model.train()
                if accuracy >= TARGET_ACCURACY:
                    return model.eval()
                best = max(best, accuracy)
    finally:
        torch.set_num_threads(threads)
    raise RuntimeError(f"the fixture model reached only {best:.3f} held-out accuracy in {MAX_STEPS} "
                       f"steps (target {TARGET_ACCURACY}); raise MAX_STEPS or change the optimiser")


def guaranteed_accuracy(samples: int) -> float:
    """The lowest accuracy :func:`trained_model` can have on any ``samples`` test images.

    It is right on at least ``TARGET_ACCURACY`` of the N test images, so any subset of
    ``samples`` of them holds at most ``N - correct`` of its mistakes.
    """
    count = len(digits().test)
    correct = math.ceil(TARGET_ACCURACY * count)
    return max(0.0, (correct - (count - samples)) / samples)


def make_checkpoint(path: Path, accuracy: float | None = 0.9) -> tuple[Path, ModelCard]:
    """Save the trained tiny model as a real checkpoint at ``path``."""
    spec = digits_spec()
    metrics = {"test_accuracy": accuracy} if accuracy is not None else {}
    save_checkpoint(path, trained_model(), spec, metrics=metrics)
    return path, spec


def digits_test_images(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised held-out digits images and labels."""
    data = digits()
    assert data.test is not None
    return data.test.batch(torch.arange(count))
