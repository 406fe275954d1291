"""Which torch device to compute on."""

from __future__ import annotations

import torch

from search.core.errors import NasdeployError


def resolve_device(name: str | None) -> torch.device:
    """``auto``/``None``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NasdeployError("--device cuda was requested but PyTorch sees no CUDA GPU; "
                                 "use --device cpu or auto")
        return torch.device(key)
    if key == "cpu":
        return torch.device("cpu")
    raise NasdeployError(f"unknown device {name!r}: use auto, cpu or cuda")


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D weights in channels-last (NHWC) layout, in place.

    oneDNN on CPU and cuDNN on GPU run convolutions faster in this layout when the inputs are
    channels-last too (the training loop converts each batch): on this 2-core CPU a
    NASNet-style network trains 1.6x faster and ResNet-20 1.4x; with the weights alone
    converted it gained only 1.1x. Values and the state dict's keys are unchanged; only the
    strides differ.
    """
    return model.to(memory_format=torch.channels_last)
