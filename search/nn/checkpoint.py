"""Training checkpoints: the weights plus the model card that rebuilds and feeds them.

The card names a genotype and scale (a searched cell) or an ``architecture`` (a baseline);
:func:`build_from_card` rebuilds either.

The card (:class:`search.space.card.ModelCard`) is stored as the checkpoint's ``spec``;
checkpoints written before the card existed hold its version-1 form and still load.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError
from search.space.card import ModelCard

CHECKPOINT_FORMAT = "nasdeploy-checkpoint"
CHECKPOINT_VERSION = 1


def build_from_card(card: ModelCard) -> nn.Module:
    """A freshly initialised network of ``card`` (training mode): the baseline it names
    (:mod:`search.nn.baselines`), else its genotype at its scale."""
    from search.nn.model import build_model

    if card.architecture is not None:
        from search.nn.baselines import build_baseline

        return build_baseline(card.architecture, card.num_classes, card.image_size, card.width_mult)
    if card.genotype is None or not card.scale:
        raise NasdeployError("the model card names no genotype and scale to build a network from")
    return build_model(card.genotype, card.scale, num_classes=card.num_classes,
                       image_size=card.image_size, auxiliary=card.auxiliary)


def load_weights(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """``model.load_state_dict`` of saved tensors, with the module versions of ``model`` itself.

    A checkpoint stores a plain dict, without the ``_metadata`` (module versions) of a
    ``state_dict``; torchvision's MNASNet refuses weights without its version, and the
    freshly built network is the version the weights were trained in.
    """
    weights = OrderedDict(state_dict)
    metadata = getattr(model.state_dict(), "_metadata", None)
    if metadata is not None:
        weights._metadata = metadata  # type: ignore[attr-defined]
    model.load_state_dict(weights)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    spec: ModelCard,
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


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelCard, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode; return (model, card, raw dict)."""
    data = read_checkpoint(path)
    spec = ModelCard.from_dict(data.get("spec"), f"{path}: checkpoint spec")
    if spec.architecture is None and (spec.genotype is None or not spec.scale):
        raise NasdeployError(f"{path}: checkpoint spec names no genotype and scale")
    try:
        model = build_from_card(spec)
    except NasdeployError as exc:
        raise NasdeployError(f"{path}: {exc}") from None
    try:
        load_weights(model, data["state_dict"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise NasdeployError(f"{path}: weights do not match the recorded network ({first})") from None
    return model.eval(), spec, data
