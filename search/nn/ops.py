"""The one registry of NASNet operations.

Every op is a factory ``(channels, stride) -> nn.Module`` that keeps the channel count
and divides the spatial size by ``stride`` (rounding up), following the conventions of
the NASNet paper: ReLU-conv-BN ordering, separable convolutions applied twice, and a
factorized reduction where an identity must halve the resolution. Padding is static and
symmetric so the exported graph has no run-time padding arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from search.space.opnames import COMBINES, OP_NAMES  # noqa: F401  (re-exported)

OpFactory = Callable[[int, int], nn.Module]


class ReLUConvBN(nn.Module):
    """ReLU, a ``k x k`` convolution, batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedConv(nn.Module):
    """ReLU, a ``1 x k`` then a ``k x 1`` convolution, batch norm (NASNet's 1x7 then 7x1)."""

    def __init__(self, channels: int, kernel: int, stride: int):
        super().__init__()
        pad = kernel // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, (1, kernel), (1, stride), (0, pad), bias=False),
            nn.Conv2d(channels, channels, (kernel, 1), (stride, 1), (pad, 0), bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Depthwise-separable convolution applied twice (stride on the first), as in NASNet."""

    def __init__(self, channels: int, kernel: int, stride: int):
        super().__init__()
        pad = kernel // 2
        layers: list[nn.Module] = []
        for s in (stride, 1):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel, s, pad, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        self.op = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two stride-2 1x1 convs, one shifted.

    The shifted path pads one row/column at the bottom/right and slices the first away
    (static padding and slicing, no negative pads), so odd sizes work too.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.relu = nn.ReLU(inplace=False)
        self.path1 = nn.Conv2d(c_in, half, 1, stride=2, bias=False)
        self.path2 = nn.Conv2d(c_in, c_out - half, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.path1(x), self.path2(shifted)], dim=1))


class Identity(nn.Module):
    """The identity (``none`` in NASNet's code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _identity(channels: int, stride: int) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(channels, channels)


def _avg_pool(kernel: int) -> OpFactory:
    # Padding is excluded from the average, as in TF's SAME pooling; ONNX AveragePool
    # with count_include_pad=0 agrees.
    return lambda c, s: nn.AvgPool2d(kernel, s, kernel // 2, count_include_pad=False)


def _max_pool(kernel: int) -> OpFactory:
    return lambda c, s: nn.MaxPool2d(kernel, s, kernel // 2)


OPS: dict[str, OpFactory] = {
    "identity": _identity,
    "conv_1x3_3x1": lambda c, s: FactorizedConv(c, 3, s),
    "conv_1x7_7x1": lambda c, s: FactorizedConv(c, 7, s),
    "dil_conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s, dilation=2),
    "avg_pool_3x3": _avg_pool(3),
    "max_pool_3x3": _max_pool(3),
    "max_pool_5x5": _max_pool(5),
    "max_pool_7x7": _max_pool(7),
    "conv_1x1": lambda c, s: ReLUConvBN(c, c, 1, s),
    "conv_3x3": lambda c, s: ReLUConvBN(c, c, 3, s),
    "sep_conv_3x3": lambda c, s: SepConv(c, 3, s),
    "sep_conv_5x5": lambda c, s: SepConv(c, 5, s),
    "sep_conv_7x7": lambda c, s: SepConv(c, 7, s),
}
"""Operation name -> factory ``(channels, stride) -> nn.Module``."""

if tuple(OPS) != OP_NAMES:  # the torch factories and the torch-free names are one registry
    raise RuntimeError("search.nn.ops.OPS and search.space.opnames.OP_NAMES disagree")


def build_op(name: str, channels: int, stride: int) -> nn.Module:
    """Instantiate registry op ``name``; ``KeyError`` names the valid choices."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; choose from {', '.join(OP_NAMES)}") from None
    return factory(channels, stride)
