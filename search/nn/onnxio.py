"""The project's one PyTorch -> ONNX wrapper (sessions: :mod:`search.runtime.sessions`)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError
from search.nn.cost import device_of

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17
DEFAULT_OPSET = 17


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    simplify: bool = True,
) -> Path:
    """Export ``model`` in eval mode to ``path`` atomically; return the path.

    The graph has one NCHW float32 input ``input`` and one output ``logits``; with
    ``dynamic_batch`` the batch dimension is symbolic (``batch``), otherwise it is
    fixed to ``batch_size``. Uses the TorchScript-based exporter (a fraction of a second,
    where the dynamo exporter takes tens), then ``onnxslim`` folds the constant
    sub-graphs it leaves (e.g. the pads of a factorized reduction become one static
    ``Pad``), so search measures latency on the same graph that ships.
    """
    if opset < MIN_OPSET:
        raise NasdeployError(f"opset {opset} is too old; nasdeploy exports opset >= {MIN_OPSET}")
    was_training = model.training
    model.eval()
    device = device_of(model)
    example = torch.zeros(batch_size, 3, image_size, image_size, device=device)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
            if simplify:
                _simplify_in_place(tmp)
    finally:
        model.train(was_training)
    return Path(path)


def _simplify_in_place(path: Path) -> None:
    """Fold constants and drop no-op nodes with onnxslim, keeping the file's interface."""
    import onnx
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(str(path))
    onnx.save(slim, str(path))
