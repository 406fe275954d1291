"""Build the NASNet macro-architecture from any genotype at any N@F scale.

CIFAR layout: 3x3 stem, three stages of N normal cells with a reduction cell (and a
doubling of the width) between stages. ImageNet layout: a stride-2 3x3 stem, two stride-2
stem reduction cells, then the same three stages. Global average pooling, dropout and a
linear classifier close the network; an optional auxiliary head sits before the second
reduction and only runs in training mode.
"""

from __future__ import annotations

import torch
from torch import nn

from search.nn.ops import FactorizedReduce, Identity, ReLUConvBN, build_op
from search.space import genotype as gt
from search.space.scale import Scale, cell_plan, check_size, parse_scale, stem_shape


def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``prob`` and rescale the rest."""
    keep = 1.0 - prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def preprocessing(c_prev_prev: int, c_prev: int, channels: int,
                  reduction_prev: bool) -> tuple[nn.Module, nn.Module]:
    """A cell's inputs brought to its width: h[k-2] through a FactorizedReduce after a
    reduction cell, a 1x1 ReLUConvBN when its width differs, else as it is; h[k-1] through a
    1x1 ReLUConvBN (the supernet's cells use the same)."""
    if reduction_prev:
        pre0: nn.Module = FactorizedReduce(c_prev_prev, channels)
    elif c_prev_prev != channels:
        pre0 = ReLUConvBN(c_prev_prev, channels, 1, 1)
    else:
        pre0 = Identity()
    return pre0, ReLUConvBN(c_prev, channels, 1, 1)


class CellModule(nn.Module):
    """One normal or reduction cell built from a :class:`search.space.genotype.Cell`."""

    def __init__(
        self,
        cell: gt.Cell,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ):
        super().__init__()
        self.cell = cell
        self.reduction = reduction
        self.drop_prob = 0.0
        self.pre0, self.pre1 = preprocessing(c_prev_prev, c_prev, channels, reduction_prev)
        self.ops = nn.ModuleList()
        self.combines = nn.ModuleList()
        for block in cell.blocks:
            for index, name in zip(block.inputs, block.ops, strict=True):
                stride = 2 if reduction and index < 2 else 1
                self.ops.append(build_op(name, channels, stride))
            concat = block.combine == "concat"
            self.combines.append(ReLUConvBN(2 * channels, channels, 1, 1) if concat else Identity())
        self.outputs = cell.output_states()
        # In a reduction cell an input state that goes straight to the output must be
        # brought to the reduced resolution too.
        self.output_reducers = nn.ModuleDict(
            {str(i): FactorizedReduce(channels, channels) for i in self.outputs if reduction and i < 2}
        )
        self.multiplier = len(self.outputs)
        self.out_channels = self.multiplier * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for b, block in enumerate(self.cell.blocks):
            branches = []
            for j, index in enumerate(block.inputs):
                op = self.ops[2 * b + j]
                h = op(states[index])
                if self.training and self.drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, self.drop_prob)
                branches.append(h)
            if block.combine == "concat":
                states.append(self.combines[b](torch.cat(branches, dim=1)))
            else:
                states.append(branches[0] + branches[1])
        outs = [
            self.output_reducers[str(i)](states[i]) if str(i) in self.output_reducers else states[i]
            for i in self.outputs
        ]
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class AuxiliaryHead(nn.Module):
    """NASNet's auxiliary classifier (pool, 1x1 conv 128, conv 768, linear)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class NASNet(nn.Module):
    """A stack of cells; ``forward`` returns logits (and aux logits when training)."""

    def __init__(
        self,
        genotype: gt.Genotype,
        scale: Scale,
        num_classes: int,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.genotype = genotype
        self.scale = scale
        self.num_classes = num_classes
        self.drop_path_prob = drop_path_prob
        stem_c, _ = stem_shape(genotype, scale)
        if scale.layout == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, stem_c, 3, padding=1, bias=False), nn.BatchNorm2d(stem_c))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_c, 3, stride=2, bias=False), nn.BatchNorm2d(stem_c))
        self.cells = nn.ModuleList()
        self.aux_index = -1
        c_pp, c_p, reduction_prev = stem_c, stem_c, False

        def add(cell: gt.Cell, width: int, reduction: bool) -> None:
            nonlocal c_pp, c_p, reduction_prev
            module = CellModule(cell, c_pp, c_p, width, reduction, reduction_prev)
            self.cells.append(module)
            c_pp, c_p, reduction_prev = c_p, module.out_channels, reduction

        plan = cell_plan(genotype, scale)
        aux_cell = len(plan) - scale.num_cells - 2  # the last normal cell of stage 2
        for index, (cell, width, reduction) in enumerate(plan):
            add(cell, width, reduction)
            if index == aux_cell:
                self.aux_index = len(self.cells) - 1
                aux_channels = c_p
        self.aux_head = AuxiliaryHead(aux_channels, num_classes) if auxiliary else None
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_p, num_classes)

    def set_drop_path_progress(self, progress: float) -> None:
        """ScheduledDropPath: set each cell's drop probability for training ``progress``.

        The probability rises linearly with ``progress`` (0..1, e.g. epoch / epochs) and
        with depth, reaching ``drop_path_prob`` in the last cell at the end of training.
        """
        progress = min(max(progress, 0.0), 1.0)
        for i, cell in enumerate(self.cells):
            cell.drop_prob = self.drop_path_prob * progress * (i + 1) / len(self.cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_index and self.aux_head is not None and self.training:
                aux_logits = self.aux_head(s1)
        logits = self.classifier(self.dropout(self.global_pool(s1).flatten(1)))
        if aux_logits is not None:
            return logits, aux_logits
        return logits


def build_model(
    genotype: gt.Genotype,
    scale: str | Scale = "cifar",
    *,
    num_classes: int = 10,
    image_size: int | None = None,
    auxiliary: bool = False,
    drop_path_prob: float = 0.0,
    dropout: float | None = None,
) -> NASNet:
    """Build a NASNet for ``genotype`` at ``scale`` (a variant name, ``N@F`` or a Scale).

    Args:
        genotype: the normal and reduction cells.
        scale: ``cifar``, ``mobile``, ``large`` or ``N@F``.
        num_classes: classifier outputs.
        image_size: input size in pixels (defaults to the variant's size, 32 for N@F).
        auxiliary: add the auxiliary head (training mode only).
        drop_path_prob: final ScheduledDropPath probability.
        dropout: before the classifier; defaults to 0.0 (CIFAR layout) or 0.5 (ImageNet).
    """
    resolved = parse_scale(scale, image_size)
    check_size(resolved, genotype, num_classes)  # refuse a network too large to build, before allocating
    if dropout is None:
        dropout = 0.0 if resolved.layout == "cifar" else 0.5
    return NASNet(genotype, resolved, num_classes, auxiliary, drop_path_prob, dropout)
