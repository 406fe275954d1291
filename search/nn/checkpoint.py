"""Training checkpoints that carry everything needed to rebuild and preprocess a model."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError
from search.space.genotype import Genotype, GenotypeError

CHECKPOINT_FORMAT = "nasdeploy-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a trained network and feed it images."""

    genotype: Genotype
    scale: str
    image_size: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    auxiliary: bool = False
    dataset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["genotype"] = self.genotype.to_dict()
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        values = dict(data)
        values["genotype"] = Genotype.from_dict(values["genotype"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)

    def build(self) -> nn.Module:
        """A freshly initialised network of this spec (training mode)."""
        from search.nn.model import build_model

        return build_model(self.genotype, self.scale, num_classes=self.num_classes,
                           image_size=self.image_size, auxiliary=self.auxiliary)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelSpec,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "training": training or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check the raw checkpoint dict; one-line errors for bad files."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NasdeployError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise NasdeployError(f"{path} is a directory, not a checkpoint") from None
    except Exception as exc:  # torch raises many kinds on corrupt or foreign files
        raise NasdeployError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise NasdeployError(f"{path} is not a nasdeploy checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise NasdeployError(f"{path}: unsupported checkpoint version {data.get('version')!r}")
    return data


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode; return (model, spec, raw dict)."""
    data = read_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(data["spec"])
    except (GenotypeError, KeyError, TypeError) as exc:
        raise NasdeployError(f"{path}: checkpoint spec is malformed ({exc})") from None
    model = spec.build()
    try:
        model.load_state_dict(data["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise NasdeployError(f"{path}: weights do not match the recorded genotype/scale ({first})") from None
    return model.eval(), spec, data
