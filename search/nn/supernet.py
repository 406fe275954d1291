"""A weight-sharing supernet of the NASNet cell search space (one-shot evaluation).

The macro-architecture is :class:`search.nn.model.NASNet`'s (the same ``cell_plan``, stem
and classifier); each cell position holds every choice of the space instead of one cell:

- per block b, one op module (from the one registry, :func:`search.nn.ops.build_op`) for
  every (input i in ``0..b+1``, op) pair, shared by the block's two branch slots, and one
  concat projection (ReLUConvBN 2C -> C). Genotypes are run in their canonical spelling
  (:meth:`search.space.genotype.Genotype.canonical`), so swapping a block's two branches
  gives exactly the same network and output;
- the cell output gives every hidden state (2 inputs + B blocks) a fixed slot of C
  channels in a ``(B + 2) * C`` concatenation, with the states a block consumed left out
  (zero). A cell passes on only the states present and their slots; the next cell's 1x1
  preprocessing (and the classifier) multiply them with the matching slice of their
  weights, the same function as a convolution over the zero-filled full width and the
  same as the narrower preprocessing of the standalone NASNet. In a reduction cell an
  input state in the output goes through a FactorizedReduce, as in ``model.py``.

``forward(x, genotype)`` runs only the chosen path. Built with ``add_scale=1.0``, the path
with its weights copied into ``build_model(genotype.canonical(), scale)`` computes the same
logits as that standalone NASNet (tests/test_oneshot.py checks it), with two exceptions:
where a standalone cell's preprocessing of h[k-2] is an identity (h[k-2] is a single state
of the cell's own width) the supernet keeps its 1x1 convolution, and a block whose two
branches are the same (input, op) applies one module twice instead of two modules.
Genotypes outside the space (another block count, an explicit ``concat`` list, unknown
ops) are refused with one line.

Two choices make single-path training learn in a few minutes (digits, 1@96, lr 0.05; mean
validation accuracy of 20 random candidates: 0.18 with neither after 30 epochs, 0.41 with
the first after 15 epochs, 0.61 with both after 15 epochs):

- convolutions start near a channel-aligned identity (:func:`aligned_init`);
- a block's ``add`` is the mean of its branches (:data:`ADD_SCALE`), so every state has the
  scale of one branch: summed, a chain of identity and pooling blocks grows a state up to
  2**B times and the paths through it dominate the shared preprocessing and classifier.
  It is the same function class (a positive factor passes through pooling, identity and
  ReLU and is absorbed by the next BatchNorm or linear layer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from search.core.errors import NasdeployError
from search.nn.model import preprocessing
from search.nn.ops import FactorizedReduce, ReLUConvBN, build_op
from search.space import genotype as gt
from search.space.opnames import COMBINES, OP_NAMES
from search.space.scale import Scale, cell_plan, check_size, stem_shape
from search.space.searchspace import SearchSpace

ADD_SCALE = 0.5
"""A block's ``add`` combine in the supernet: ``ADD_SCALE * (a + b)``, the mean of its branches
(see :class:`Supernet`)."""
INIT_NOISE = 0.2
"""Scale of the default random initialisation added to the aligned one (see :func:`aligned_init`)."""
MAX_SUPERNET_PARAMS = 200_000_000
"""Largest supernet built, in parameters (800 MB of float32 weights, as much again for
SGD momentum): a supernet holds every (input, op) of every block, ``13 * (B + 3) / 4`` times
as many op modules as one candidate (26 times for B = 5)."""

Sparse = tuple[torch.Tensor, torch.Tensor | None]
"""A cell output: the present states concatenated, and their channel indices in the full
``(B + 2) * C`` width (``None``: all channels present, as for the stem)."""


def template_genotype(num_blocks: int) -> gt.Genotype:
    """A genotype with ``num_blocks`` blocks, for the macro layout (which ignores the ops)."""
    cell = gt.Cell(tuple(gt.Block((0, 1), ("identity", "identity")) for _ in range(num_blocks)))
    return gt.Genotype(cell, cell)


def check_in_space(genotype: gt.Genotype, num_blocks: int) -> None:
    """Refuse a genotype the supernet cannot run: one-line :class:`NasdeployError`.

    In the space: ``num_blocks`` blocks in both cells, block b reading states ``0..b+1``,
    ops of :data:`OP_NAMES`, combines of :data:`COMBINES`, and no explicit ``concat``
    (the cell outputs the states no block consumed).
    """
    if not isinstance(genotype, gt.Genotype):
        raise NasdeployError(f"expected a Genotype, got {type(genotype).__name__}")
    for name in ("normal", "reduce"):
        cell = getattr(genotype, name)
        if len(cell.blocks) != num_blocks:
            raise NasdeployError(f"genotype is outside the supernet's space: its {name} cell has "
                                 f"{len(cell.blocks)} blocks, the supernet has {num_blocks}")
        if cell.concat is not None:
            raise NasdeployError(f"genotype is outside the supernet's space: its {name} cell lists "
                                 f"an explicit concat {list(cell.concat)[:12]}; the space outputs the "
                                 "states no block consumed")
        for b, block in enumerate(cell.blocks):
            where = f"{name} block {b}"
            if len(block.inputs) != 2 or len(block.ops) != 2:
                raise NasdeployError(f"genotype is outside the supernet's space: {where} needs "
                                     "two inputs and two ops")
            for index in block.inputs:
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= b + 1:
                    raise NasdeployError(f"genotype is outside the supernet's space: {where} reads "
                                         f"state {index!r:.20}; it may read 0..{b + 1}")
            for op in block.ops:
                if op not in OP_NAMES:
                    raise NasdeployError(f"genotype is outside the supernet's space: {where} has "
                                         f"unknown op {op!r:.40}")
            if block.combine not in COMBINES:
                raise NasdeployError(f"genotype is outside the supernet's space: {where} has "
                                     f"unknown combine {block.combine!r:.40}")


def sample_genotype(space: SearchSpace, generator: torch.Generator) -> gt.Genotype:
    """A uniformly random genotype of ``space``: every decision uniform, from ``generator``."""
    sizes = torch.tensor([d.size for d in space.decisions()], dtype=torch.float64)
    draws = torch.rand(sizes.shape, generator=generator, dtype=torch.float64)
    indices = torch.minimum((draws * sizes).floor(), sizes - 1).long()
    return space.decode(indices.tolist())


def _sliced_pre(module: nn.Module, x: torch.Tensor, index: torch.Tensor | None, width: int) -> torch.Tensor:
    """Apply a preprocessing module to the present states ``x`` (channels ``index`` of ``width``).

    Equal to ``module`` applied to the full-width input with the absent channels zero: the
    1x1 convolutions use the weight columns of the present channels.
    """
    if index is None:
        return module(x)
    if isinstance(module, ReLUConvBN):
        conv, norm = module.op[1], module.op[2]
        weight = conv.weight.index_select(1, index)
        return norm(F.conv2d(F.relu(x), weight, None, conv.stride, conv.padding, conv.dilation))
    if isinstance(module, FactorizedReduce):
        x = module.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        first = F.conv2d(x, module.path1.weight.index_select(1, index), None, 2)
        second = F.conv2d(shifted, module.path2.weight.index_select(1, index), None, 2)
        return module.bn(torch.cat([first, second], dim=1))
    dense = x.new_zeros(x.shape[0], width, *x.shape[2:])
    dense[:, index] = x
    return module(dense)


class SuperCell(nn.Module):
    """Every choice of one cell position: op modules per (block, input, op), projections."""

    def __init__(self, num_blocks: int, c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool, add_scale: float = ADD_SCALE):
        super().__init__()
        self.num_blocks = num_blocks
        self.add_scale = add_scale
        self.channels = channels
        self.reduction = reduction
        self.c_prev_prev, self.c_prev = c_prev_prev, c_prev
        self.pre0, self.pre1 = preprocessing(c_prev_prev, c_prev, channels, reduction_prev)
        # ops[b][i][name]: the op of block b reading state i (stride 2 on a reduction cell's inputs).
        self.ops = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleDict({name: build_op(name, channels, 2 if reduction and i < 2 else 1)
                               for name in OP_NAMES})
                for i in range(b + 2))
            for b in range(num_blocks))
        self.combines = nn.ModuleList(ReLUConvBN(2 * channels, channels, 1, 1) for _ in range(num_blocks))
        self.output_reducers = nn.ModuleList(
            FactorizedReduce(channels, channels) for _ in range(2 if reduction else 0))
        self.num_states = num_blocks + 2
        self.out_channels = self.num_states * channels
        self._indices: dict[tuple[tuple[int, ...], torch.device], torch.Tensor | None] = {}

    def output_index(self, outputs: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
        """Channel indices of the states ``outputs`` in the full output width (cached)."""
        key = (outputs, device)
        if key not in self._indices:
            c = self.channels
            if outputs == tuple(range(self.num_states)):
                self._indices[key] = None
            else:
                self._indices[key] = torch.cat([torch.arange(s * c, (s + 1) * c) for s in outputs]).to(device)
        return self._indices[key]

    def path_modules(self, cell: gt.Cell) -> Iterator[nn.Module]:
        """The modules that run for ``cell`` (canonical spelling), each once."""
        yield self.pre0
        yield self.pre1
        seen: set[tuple[int, int, str]] = set()
        for b, block in enumerate(cell.blocks):
            for index, name in zip(block.inputs, block.ops, strict=True):
                if (b, index, name) not in seen:
                    seen.add((b, index, name))
                    yield self.ops[b][index][name]
            if block.combine == "concat":
                yield self.combines[b]
        for i in cell.output_states():
            if self.reduction and i < 2:
                yield self.output_reducers[i]

    def forward(self, s0: Sparse, s1: Sparse, cell: gt.Cell) -> Sparse:
        states = [_sliced_pre(self.pre0, s0[0], s0[1], self.c_prev_prev),
                  _sliced_pre(self.pre1, s1[0], s1[1], self.c_prev)]
        for b, block in enumerate(cell.blocks):
            branches = [self.ops[b][index][name](states[index])
                        for index, name in zip(block.inputs, block.ops, strict=True)]
            if block.combine == "concat":
                states.append(self.combines[b](torch.cat(branches, dim=1)))
            else:
                added = branches[0] + branches[1]
                states.append(added if self.add_scale == 1.0 else added * self.add_scale)
        outputs = cell.output_states()
        outs = [self.output_reducers[i](states[i]) if self.reduction and i < 2 else states[i]
                for i in outputs]
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out, self.output_index(outputs, out.device)


class Supernet(nn.Module):
    """NASNet's macro layout with a :class:`SuperCell` at every cell position.

    Args:
        num_blocks: blocks per cell (B) of the search space.
        scale: N@F, image size and layout, as for :func:`search.nn.model.build_model`.
        num_classes: classifier outputs.
        add_scale: factor on a block's ``add`` (:data:`ADD_SCALE`; 1.0 is NASNet's sum).
    """

    def __init__(self, num_blocks: int, scale: Scale, num_classes: int, add_scale: float = ADD_SCALE):
        super().__init__()
        if num_blocks < 1:
            raise NasdeployError(f"a supernet needs at least one block per cell, got {num_blocks}")
        check_size(scale, num_blocks, num_classes)  # every candidate fits
        template = template_genotype(num_blocks)
        self.num_blocks = num_blocks
        self.scale = scale
        self.num_classes = num_classes
        self.space = SearchSpace(num_blocks)
        plan = cell_plan(template, scale)
        params = estimate_supernet_params(num_blocks, scale, num_classes)
        if params > MAX_SUPERNET_PARAMS:
            raise NasdeployError(f"a supernet of {scale.label} at {scale.image_size} px with {num_blocks} "
                                 f"blocks would have about {params / 1e6:,.0f} M parameters (the limit is "
                                 f"{MAX_SUPERNET_PARAMS / 1e6:,.0f} M); use a smaller N@F")
        stem_c, _ = stem_shape(template, scale)
        stride = 1 if scale.layout == "cifar" else 2
        self.stem = nn.Sequential(nn.Conv2d(3, stem_c, 3, stride=stride, padding=1 if stride == 1 else 0,
                                            bias=False), nn.BatchNorm2d(stem_c))
        self.cells = nn.ModuleList()
        self.cell_kinds: list[str] = []
        c_pp, c_p, reduction_prev = stem_c, stem_c, False
        for _, width, reduction in plan:
            cell = SuperCell(num_blocks, c_pp, c_p, width, reduction, reduction_prev, add_scale)
            self.cells.append(cell)
            self.cell_kinds.append("reduce" if reduction else "normal")
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        slot_pp = slot_p = stem_c  # the stem output is one state
        for cell in self.cells:
            aligned_init(cell.pre0, slot_pp)
            aligned_init(cell.pre1, slot_p)
            for module in (cell.ops, cell.combines, cell.output_reducers):
                aligned_init(module, cell.channels)
            slot_pp, slot_p = slot_p, cell.channels

    def canonical(self, genotype: gt.Genotype) -> gt.Genotype:
        """``genotype`` checked against the space, in its canonical spelling."""
        check_in_space(genotype, self.num_blocks)
        return genotype.canonical()

    def path_modules(self, genotype: gt.Genotype) -> list[nn.Module]:
        """The modules that run for ``genotype``, each once (stem, cells' choices, classifier)."""
        genotype = self.canonical(genotype)
        modules: list[nn.Module] = [self.stem]
        for cell, kind in zip(self.cells, self.cell_kinds, strict=True):
            modules.extend(cell.path_modules(getattr(genotype, kind)))  # type: ignore[operator]
        modules.append(self.classifier)
        return modules

    def forward(self, x: torch.Tensor, genotype: gt.Genotype) -> torch.Tensor:
        """Logits of the network ``genotype`` (only its path runs)."""
        genotype = self.canonical(genotype)
        stem = self.stem(x)
        s0: Sparse = (stem, None)
        s1: Sparse = s0
        for cell, kind in zip(self.cells, self.cell_kinds, strict=True):
            s0, s1 = s1, cell(s0, s1, getattr(genotype, kind))
        out, index = s1
        pooled = self.global_pool(out).flatten(1)
        weight = self.classifier.weight if index is None else self.classifier.weight.index_select(1, index)
        return F.linear(pooled, weight, self.classifier.bias)


@torch.no_grad()
def aligned_init(module: nn.Module, slot: int, noise: float | None = None) -> None:
    """Initialise every convolution in ``module`` near a channel-aligned identity.

    Channel ``c`` of every input state maps to output channel ``c`` (modulo the widths):
    a Dirac kernel for the ops' convolutions (depthwise ones included), a sum over the
    states' slots (``slot`` channels each) for 1x1 preprocessing and concat projections,
    the matching halves for a factorized reduction; plus the default random weights times
    :data:`INIT_NOISE`. With random initial weights, each of the 13 ops of a block mixes the
    channels differently and a path sampled at random scrambles what every later layer
    sees, so single-path training hardly learns in a short run (18% digits training
    accuracy after 30 epochs); aligned, the ops start as interchangeable views of the same
    features and the shared layers learn from every sampled path.
    """
    noise = INIT_NOISE if noise is None else noise
    done: set[int] = set()
    for m in module.modules():
        if isinstance(m, FactorizedReduce):
            for path, offset in ((m.path1, 0), (m.path2, m.path1.out_channels)):
                _align(path.weight, min(slot, m.bn.num_features), offset, noise)
                done.add(id(path))
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in done:
            _align(m.weight, min(slot, m.out_channels), 0, noise)


def _align(weight: torch.Tensor, width: int, offset: int, noise: float) -> None:
    """Scale ``weight`` by ``noise`` and add 1 at the centre where input ``i`` and output
    ``j + offset`` agree modulo ``width`` (depthwise: ``width`` 1, each channel to itself)."""
    out_c, in_c, kh, kw = weight.shape
    weight.mul_(noise)
    if in_c == 1:
        weight[:, 0, kh // 2, kw // 2] += 1.0
        return
    rows = torch.arange(out_c).unsqueeze(1) + offset
    cols = torch.arange(in_c).unsqueeze(0)
    mask = (rows % width) == (cols % width)
    weight[:, :, kh // 2, kw // 2] += mask.to(weight.dtype)


def estimate_supernet_params(num_blocks: int, scale: Scale, num_classes: int) -> int:
    """Parameters of the supernet, counted on the meta device (nothing is allocated)."""
    template = template_genotype(num_blocks)
    total = 0
    widths: dict[tuple[int, int], int] = {}
    stem_c, _ = stem_shape(template, scale)
    total += 27 * stem_c + 2 * stem_c
    c_pp, c_p, reduction_prev = stem_c, stem_c, False
    for _, width, reduction in cell_plan(template, scale):
        for stride in (1, 2) if reduction else (1,):
            if (width, stride) not in widths:
                with torch.device("meta"):
                    widths[(width, stride)] = sum(
                        p.numel() for name in OP_NAMES for p in build_op(name, width, stride).parameters())
        inputs = sum(b + 2 for b in range(num_blocks))
        if reduction:
            total += 2 * num_blocks * widths[(width, 2)] + (inputs - 2 * num_blocks) * widths[(width, 1)]
            total += 2 * (width * width + 2 * width)  # output reducers
        else:
            total += inputs * widths[(width, 1)]
        total += num_blocks * (2 * width * width + 2 * width)  # concat projections
        total += c_p * width + 2 * width  # pre1
        if reduction_prev or c_pp != width:
            total += c_pp * width + 2 * width  # pre0
        c_pp, c_p, reduction_prev = c_p, (num_blocks + 2) * width, reduction
    return total + c_p * num_classes + num_classes


def batchnorms(modules: list[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm inside ``modules``, each once, in order."""
    found: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                found.setdefault(id(m), m)
    return list(found.values())


def finite(tensor: torch.Tensor) -> bool:
    """Whether every element of ``tensor`` is finite."""
    return bool(torch.isfinite(tensor).all())


def num_steps(samples: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """Batches per epoch (the last one may be short) and in all ``epochs``."""
    per_epoch = max(1, math.ceil(samples / batch_size))
    return per_epoch, per_epoch * epochs
