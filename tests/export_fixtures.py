"""Tiny real checkpoints and exports for the export tests (1@16 NASNet-A at 16 px)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from search.data.datasets import DataBundle, load_dataset
from search.nn.checkpoint import ModelSpec, save_checkpoint
from search.space.genotype import REFERENCE_GENOTYPES

IMAGE_SIZE = 16
SCALE = "1@16"


@functools.lru_cache(maxsize=1)
def digits() -> DataBundle:
    """The bundled digits data at 16 px (loaded once per test session)."""
    return load_dataset("digits", image_size=IMAGE_SIZE, augment=False)


def digits_spec() -> ModelSpec:
    """A NASNet-A spec for the bundled digits data at 16 px, with its real statistics."""
    data = digits()
    return ModelSpec(REFERENCE_GENOTYPES["nasnet-a"], SCALE, IMAGE_SIZE, data.num_classes,
                     data.class_names, data.mean, data.std, False, "digits")


@functools.lru_cache(maxsize=1)
def trained_model(steps: int = 30) -> torch.nn.Module:
    """A 1@16 NASNet-A trained for a few SGD steps on digits (~40% test accuracy), once."""
    spec = digits_spec()
    data = digits()
    torch.manual_seed(0)
    model = spec.build().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, far faster on busy cores
    try:
        for _ in range(steps):
            x, y = data.train.batch(torch.randint(0, len(data.train), (32,), generator=generator))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def make_checkpoint(path: Path, accuracy: float | None = 0.9) -> tuple[Path, ModelSpec]:
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
