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
