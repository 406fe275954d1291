"""Network scale in NASNet's N@F notation (pure functions, no torch).

N is the number of normal cells per stage (three stages), F the number of filters in
the penultimate layer, i.e. the channel width of the last cell's output.

Limits, each a one-line :class:`NasdeployError` beyond it, before anything is allocated:

- :func:`parse_scale`: N from 1 to :data:`MAX_CELLS` (64), F from 1 to :data:`MAX_FILTERS`
  (65,536), the input side from :data:`MIN_IMAGE_SIZE` (8) to :data:`MAX_IMAGE_SIZE` (4,096) px;
- :func:`check_size` (called before a network is built): 1 to :data:`MAX_CLASSES` (100,000) classes;
- a network of at most :data:`MAX_PARAMS` parameters (1 G, 4 GB of float32 weights;
  NASNet-A Large has 89 M) and at most :data:`MAX_ACTIVATION_BYTES` (16 GiB) of float32
  feature maps in one forward pass of one image, both estimated by :func:`estimate_size`
  from the genotype and the scale alone (no torch, nothing allocated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from search.core.errors import NasdeployError
from search.space.opnames import OP_NAMES

if TYPE_CHECKING:
    from search.space.genotype import Cell, Genotype

_N_AT_F = re.compile(r"^\s*(\d+)\s*@\s*(\d+)\s*$")

MIN_IMAGE_SIZE = 8
"""Smallest input side in pixels (three reductions must leave at least one pixel)."""
MAX_IMAGE_SIZE = 4096
"""Largest input side in pixels (NASNet-A Large reads 331)."""
MAX_CELLS = 64
"""Largest N (normal cells per stage; the paper's variants use 4 to 6)."""
MAX_FILTERS = 65536
"""Largest F (penultimate filters; NASNet-A Large has 4,032)."""
MAX_CLASSES = 100_000
"""Largest classifier (ImageNet-21k has 21,841 classes)."""
MAX_PARAMS = 1_000_000_000
"""Largest network built, in parameters (without the auxiliary head): 4 GB of float32."""
MAX_ACTIVATION_BYTES = 16 * 2**30
"""Largest estimated float32 feature maps of one forward pass at batch 1 (16 GiB)."""


@dataclass(frozen=True)
class Scale:
    """How big to build a network: N@F, input size, macro layout, stem width factor."""

    num_cells: int
    filters: int
    image_size: int
    layout: str
    stem_multiplier: float = 3.0
    name: str = ""

    @property
    def notation(self) -> str:
        """``N@F`` string."""
        return f"{self.num_cells}@{self.filters}"

    @property
    def label(self) -> str:
        """The variant name if it has one, else ``N@F``."""
        return self.name or self.notation


VARIANTS: dict[str, Scale] = {
    "cifar": Scale(6, 768, 32, "cifar", 3.0, "cifar"),
    "mobile": Scale(4, 1056, 224, "imagenet", 1.0, "mobile"),
    "large": Scale(6, 4032, 331, "imagenet", 3.0, "large"),
}
"""The paper's named variants: NASNet-A (6@768) CIFAR, Mobile (4@1056), Large (6@4032)."""


def layout_for(image_size: int) -> str:
    """CIFAR macro layout for small images (<= 64 px), ImageNet layout otherwise."""
    return "cifar" if image_size <= 64 else "imagenet"


def check_image_size(image_size: int) -> int:
    """``image_size`` if it is from :data:`MIN_IMAGE_SIZE` to :data:`MAX_IMAGE_SIZE` px.

    Raises:
        NasdeployError: outside that range (or not an integer).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise NasdeployError(f"image size must be a whole number of pixels, got {image_size!r}"[:120])
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise NasdeployError(f"image size must be at least {MIN_IMAGE_SIZE} px and at most "
                             f"{MAX_IMAGE_SIZE} px, got {image_size}")
    return image_size


def parse_scale(text: str | Scale, image_size: int | None = None) -> Scale:
    """Parse a variant name or ``N@F``; ``image_size`` overrides the default size.

    Raises:
        NasdeployError: unknown variant, malformed ``N@F``, N, F or the size out of range
            (:data:`MAX_CELLS`, :data:`MAX_FILTERS`, :data:`MAX_IMAGE_SIZE`).
    """
    if image_size is not None:
        check_image_size(image_size)
    if isinstance(text, Scale):
        return text if image_size is None else replace(text, image_size=image_size)
    key = text.strip().lower()
    if key in VARIANTS:
        scale = VARIANTS[key]
        return scale if image_size is None else replace(scale, image_size=image_size)
    match = _N_AT_F.match(key)
    if not match:
        raise NasdeployError(
            f"unknown variant {text[:40]!r}: use {', '.join(VARIANTS)} or N@F such as 4@1056"
        )
    num_cells, filters = _whole(match.group(1)), _whole(match.group(2))
    if num_cells < 1 or filters < 1:
        raise NasdeployError(f"bad scale {text!r}: N and F must be positive")
    if num_cells > MAX_CELLS or filters > MAX_FILTERS:
        shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:37] + "..."
        raise NasdeployError(f"scale {shown!r} is too large: N is at most {MAX_CELLS} and F at "
                             f"most {MAX_FILTERS} (NASNet-A Large is 6@4032)")
    size = image_size or 32
    layout = layout_for(size)
    return Scale(num_cells, filters, size, layout, 3.0 if layout == "cifar" else 1.0)


def _whole(digits: str) -> int:
    """The integer of a digit string; ``10**12`` (beyond every limit) for longer ones."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 12 else 10**12


def cell_channels(filters: int, num_blocks: int, num_reductions: int = 2) -> int:
    """Per-state width C of the first stage for ``N@F`` with cells of ``num_blocks`` blocks.

    F is the penultimate width of a cell that concatenates ``num_blocks + 1`` states, as
    NASNet-A does (its normal cell outputs h[k-2] and its five blocks), after
    ``num_reductions`` doublings: ``F = (B + 1) * C * 2**num_reductions``. Every genotype
    with B blocks gets the same C, so candidates are compared at equal per-op width and a
    cell that concatenates fewer states is narrower (and cheaper), not wider. F is rounded
    to the nearest multiple of ``(B + 1) * 2**num_reductions`` (24 for B = 5);
    :func:`scale_summary` names the F actually built when it differs.

    Raises:
        NasdeployError: F below :func:`min_filters` (C would be under 2: a factorized
            reduction needs two halves). An F that cannot be built is refused instead of
            silently widened, so that two different N@F never build the same network.
    """
    step = (num_blocks + 1) * 2**num_reductions
    if filters < min_filters(num_blocks, num_reductions):
        raise NasdeployError(f"F={filters} is narrower than the narrowest network of {num_blocks}-block "
                             f"cells: F must be at least {2 * step} (2 channels per op; F = "
                             f"{step} x channels per op)")
    return max(2, round(filters / step))


def min_filters(num_blocks: int, num_reductions: int = 2) -> int:
    """Smallest F with cells of ``num_blocks`` blocks: 2 channels per op (48 for B = 5)."""
    return 2 * (num_blocks + 1) * 2**num_reductions


def built_filters(filters: int, num_blocks: int, num_reductions: int = 2) -> int:
    """The F actually built for a requested F: ``(B + 1) * C * 2**num_reductions``."""
    return (num_blocks + 1) * 2**num_reductions * cell_channels(filters, num_blocks, num_reductions)


def output_channels(scale: Scale, genotype: Genotype | None = None) -> int:
    """Width of the last cell's output (the classifier's input) for ``genotype`` at ``scale``.

    ``4 * k * C`` where k is how many states the normal cell concatenates; it equals F only
    for a cell that concatenates all ``B + 1`` states, as NASNet-A does.
    """
    blocks = len(genotype.normal.blocks) if genotype is not None else 5
    states = len(genotype.normal.output_states()) if genotype is not None else blocks + 1
    return 4 * states * cell_channels(scale.filters, blocks)


def scale_summary(scale: Scale, genotype: Genotype | None = None) -> str:
    """N@F in words with its channel counts, e.g. for ``search.info`` and ``search.train``.

    Example: ``2@192: 2 normal cells x 3 stages + 2 reduction cells, cifar layout at 16 px;
    per-op width 8/16/32 channels by stage; last cell outputs 96 channels (F=192 assumes 6
    concatenated states, this normal cell concatenates 3)``.
    """
    blocks = len(genotype.normal.blocks) if genotype is not None else 5
    c = cell_channels(scale.filters, blocks)
    out = output_channels(scale, genotype)
    label = scale.notation if scale.label == scale.notation else f"{scale.label} ({scale.notation})"
    text = (f"{label}: {scale.num_cells} normal cells x 3 stages + 2 reduction cells, {scale.layout} "
            f"layout at {scale.image_size} px; per-op width {c}/{2 * c}/{4 * c} channels by stage; "
            f"last cell outputs {out} channels")
    built = built_filters(scale.filters, blocks)
    if built != scale.filters:
        text += f" (F={scale.filters} is rounded to {built}, a multiple of {4 * (blocks + 1)})"
    elif genotype is not None and out != scale.filters:
        states = len(genotype.normal.output_states())
        text += (f" (F={scale.filters} assumes {blocks + 1} concatenated states, "
                 f"this normal cell concatenates {states})")
    return text


# --- how big a network is, before building it -------------------------------------------

# Parameters of each op at width C (stride 1 / stride 2), as built by search.nn.ops:
# convolutions have no bias, every batch norm has 2 C parameters; a stride-2 identity is a
# factorized reduction (two 1x1 convolutions, C x C in all).
_CONV_WEIGHTS = {"conv_1x3_3x1": 6, "conv_1x7_7x1": 14, "dil_conv_3x3": 9, "conv_1x1": 1, "conv_3x3": 9}
_SEP_KERNELS = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "sep_conv_7x7": 7}
_POOLS = {"avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7"}
# Feature maps an op creates, in units of its output (ReLU, convolutions, batch norm).
_OP_TENSORS = {**{name: 3 for name in _CONV_WEIGHTS}, "conv_1x3_3x1": 4, "conv_1x7_7x1": 4,
               **{name: 8 for name in _SEP_KERNELS}, **{name: 1 for name in _POOLS}}
if set(_CONV_WEIGHTS) | set(_SEP_KERNELS) | _POOLS | {"identity"} != set(OP_NAMES):
    raise RuntimeError("search.space.scale's size estimate does not cover every op in OP_NAMES")


@dataclass(frozen=True)
class SizeEstimate:
    """How big a network is: parameters and the float32 feature maps of one image."""

    params: int
    """Trainable parameters without the auxiliary head (exact for the ops of the registry)."""
    activation_bytes: int
    """Estimated bytes of every feature map one forward pass creates at batch 1 (float32);
    training keeps them all for the backward pass, times the batch size."""


def _op_params(name: str, c: int, stride: int) -> int:
    if name == "identity":
        return c * c + 2 * c if stride == 2 else 0
    if name in _POOLS:
        return 0
    if name in _SEP_KERNELS:
        k = _SEP_KERNELS[name]
        return 2 * (k * k * c + c * c + 2 * c)
    return _CONV_WEIGHTS[name] * c * c + 2 * c


def _op_tensors(name: str, stride: int) -> int:
    if name == "identity":
        return 4 if stride == 2 else 0
    return _OP_TENSORS[name]


def _half(side: int) -> int:
    return (side + 1) // 2


def _cell_size(cell: Cell, c_pp: int, c_p: int, c: int, side: int, reduction: bool,
               reduction_prev: bool) -> tuple[int, int, int]:
    """Parameters, feature-map elements and output channels of one cell at input ``side``."""
    params = c_p * c + 2 * c  # pre1: ReLU, 1x1 conv, batch norm
    elements = (c_p + 2 * c) * side * side
    if reduction_prev or c_pp != c:  # pre0: the same, or a factorized reduction
        params += c_pp * c + 2 * c
        side_pp = 2 * side if reduction_prev else side
        elements += c_pp * side_pp * side_pp + 3 * c * side * side
    out_side = _half(side) if reduction else side
    for block in cell.blocks:
        for index, op in zip(block.inputs, block.ops, strict=True):
            stride = 2 if reduction and index < 2 else 1
            params += _op_params(op, c, stride)
            elements += _op_tensors(op, stride) * c * out_side * out_side
        if block.combine == "concat":
            params += 2 * c * c + 2 * c
            elements += 6 * c * out_side * out_side
        else:
            elements += c * out_side * out_side
    outputs = cell.output_states()
    reducers = sum(1 for i in outputs if reduction and i < 2)
    params += reducers * (c * c + 2 * c)
    elements += (4 * reducers + len(outputs)) * c * out_side * out_side
    return params, elements, len(outputs) * c


def estimate_size(genotype: Genotype, scale: Scale, num_classes: int = 1000) -> SizeEstimate:
    """Parameters and feature-map bytes of ``genotype`` at ``scale``, without building it.

    Follows the macro layout of ``search.nn.model`` cell by cell, in plain integers: the
    parameter count equals ``count_params`` of the built model; the feature maps are an
    estimate of what one forward pass creates (within a small factor).
    """
    stem, side = stem_shape(genotype, scale)
    params = 27 * stem + 2 * stem
    elements = 3 * scale.image_size**2 + 2 * stem * side * side
    c_pp, c_p, reduction_prev = stem, stem, False
    for cell, width, reduction in cell_plan(genotype, scale):
        p, e, out = _cell_size(cell, c_pp, c_p, width, side, reduction, reduction_prev)
        params, elements = params + p, elements + e
        side = _half(side) if reduction else side
        c_pp, c_p, reduction_prev = c_p, out, reduction
    params += c_p * num_classes + num_classes
    return SizeEstimate(params, 4 * elements)


def stem_shape(genotype: Genotype, scale: Scale) -> tuple[int, int]:
    """Channels and output side of the stem: a 3x3 convolution (stride 2 in the ImageNet layout)."""
    if scale.layout == "cifar":
        channels = cell_channels(scale.filters, genotype.num_blocks)
        return int(channels * scale.stem_multiplier), scale.image_size
    return int(32 * scale.stem_multiplier), max(1, (scale.image_size - 3) // 2 + 1)


def cell_plan(genotype: Genotype, scale: Scale) -> list[tuple[Cell, int, bool]]:
    """The cells of the network in order: (cell, per-state width C, is a reduction cell).

    The one description of NASNet's stacking: two stem reduction cells for the ImageNet
    layout, then three stages of N normal cells with a reduction cell before stages 2 and 3
    (each doubling C). ``search.nn.model`` builds from it; the size check and the latency
    predictor's features walk it.
    """
    c = cell_channels(scale.filters, genotype.num_blocks)
    plan: list[tuple[Cell, int, bool]] = []
    if scale.layout == "imagenet":
        plan += [(genotype.reduce, max(2, c // 4), True), (genotype.reduce, max(2, c // 2), True)]
    width = c
    for stage in range(3):
        if stage > 0:
            width *= 2
            plan.append((genotype.reduce, width, True))
        plan += [(genotype.normal, width, False)] * scale.num_cells
    return plan


def _worst_cells(num_blocks: int) -> list[Genotype]:
    """One genotype per op of the registry that makes the widest, heaviest cells of the space."""
    from search.space.genotype import Block, Cell, Genotype

    worst = []
    for op in OP_NAMES:
        cell = Cell(tuple(Block((0, 0), (op, op), "concat") for _ in range(num_blocks)))
        worst.append(Genotype(cell, cell))
    return worst


def check_size(scale: Scale, genotype: Genotype | int, num_classes: int = 1000) -> SizeEstimate:
    """Refuse a network larger than :data:`MAX_PARAMS` or :data:`MAX_ACTIVATION_BYTES`.

    Args:
        scale: the scale to build at.
        genotype: the genotype, or a number of blocks: then the largest genotype of the
            search space with that many blocks is checked (every candidate fits).
        num_classes: classifier outputs.

    Returns:
        The estimate (the largest figures of the candidates when given a block count).

    Raises:
        NasdeployError: one line with the estimate and the limit, before anything is built.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise NasdeployError(f"the number of classes must be 1 to {MAX_CLASSES:,}, got {num_classes}")
    candidates = _worst_cells(genotype) if isinstance(genotype, int) else [genotype]
    sizes = [estimate_size(g, scale, num_classes) for g in candidates]
    params = max(size.params for size in sizes)
    activation = max(size.activation_bytes for size in sizes)
    what = f"{scale.label} at {scale.image_size} px"
    if params > MAX_PARAMS:
        raise NasdeployError(f"{what} is too large to build: about {params / 1e9:,.2f} G parameters "
                             f"(the limit is {MAX_PARAMS / 1e9:g} G); use a smaller N@F")
    if activation > MAX_ACTIVATION_BYTES:
        raise NasdeployError(f"{what} is too large to run: about {activation / 2**30:,.1f} GiB of "
                             f"feature maps per image (the limit is {MAX_ACTIVATION_BYTES / 2**30:g} GiB); "
                             f"use a smaller image size or N@F")
    return SizeEstimate(params, activation)
