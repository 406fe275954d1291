"""Every registered op builds, keeps channels, halves resolution at stride 2 and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from search.nn.onnxio import export_onnx
from search.nn.ops import COMBINES, OP_NAMES, OPS, build_op
from search.runtime.sessions import SessionSettings, create_session

PAPER_OPS = {
    "identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3",
    "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
    "sep_conv_7x7",
}


def _randomise_batchnorm(module: nn.Module) -> None:
    """Give BN layers non-trivial running statistics so eval mode is not the identity."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def test_registry_is_the_thirteen_nasnet_ops():
    assert set(OP_NAMES) == PAPER_OPS and len(OP_NAMES) == 13
    assert COMBINES == ("add", "concat")


def test_unknown_op_names_the_choices():
    with pytest.raises(KeyError, match="sep_conv_3x3"):
        build_op("sep_conv_9x9", 4, 1)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("stride", [1, 2])
def test_op_shape(name, size, stride):
    op = build_op(name, 6, stride).eval()
    out = op(torch.randn(2, 6, size, size))
    expected = -(-size // stride)
    assert out.shape == (2, 6, expected, expected)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_op_exports_and_matches_onnxruntime(tmp_path, name, stride):
    op = OPS[name](4, stride)
    _randomise_batchnorm(op)
    op.eval()
    # Ops see C=4 channels; wrap so the exported graph has the 3-channel model input.
    model = nn.Sequential(nn.Conv2d(3, 4, 1), op).eval()
    path = export_onnx(model, tmp_path / "op.onnx", image_size=9)
    x = torch.randn(3, 3, 9, 9)  # batch 3 exercises the dynamic batch axis
    with torch.no_grad():
        expected = model(x).numpy()
    got = create_session(path, SessionSettings(device="cpu")).run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_average_pool_excludes_padding():
    op = build_op("avg_pool_3x3", 1, 1)
    out = op(torch.ones(1, 1, 4, 4))
    assert torch.allclose(out, torch.ones_like(out))  # corners average 4 ones, not 4/9
