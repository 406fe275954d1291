"""Network scale in NASNet's N@F notation (pure functions, no torch).

N is the number of normal cells per stage (three stages), F the number of filters in
the penultimate layer, i.e. the channel width of the last cell's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from search.core.errors import NasdeployError

if TYPE_CHECKING:
    from search.space.genotype import Genotype

_N_AT_F = re.compile(r"^\s*(\d+)\s*@\s*(\d+)\s*$")


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


def parse_scale(text: str | Scale, image_size: int | None = None) -> Scale:
    """Parse a variant name or ``N@F``; ``image_size`` overrides the default size.

    Raises:
        NasdeployError: unknown variant, malformed ``N@F`` or a non-positive size.
    """
    if image_size is not None and image_size < 8:
        raise NasdeployError(f"image size must be at least 8 px, got {image_size}")
    if isinstance(text, Scale):
        return text if image_size is None else replace(text, image_size=image_size)
    key = text.strip().lower()
    if key in VARIANTS:
        scale = VARIANTS[key]
        return scale if image_size is None else replace(scale, image_size=image_size)
    match = _N_AT_F.match(key)
    if not match:
        raise NasdeployError(
            f"unknown variant {text!r}: use {', '.join(VARIANTS)} or N@F such as 4@1056"
        )
    num_cells, filters = int(match.group(1)), int(match.group(2))
    if num_cells < 1 or filters < 1:
        raise NasdeployError(f"bad scale {text!r}: N and F must be positive")
    size = image_size or 32
    layout = layout_for(size)
    return Scale(num_cells, filters, size, layout, 3.0 if layout == "cifar" else 1.0)


def cell_channels(filters: int, num_blocks: int, num_reductions: int = 2) -> int:
    """Per-state width C of the first stage for ``N@F`` with cells of ``num_blocks`` blocks.

    F is the penultimate width of a cell that concatenates ``num_blocks + 1`` states, as
    NASNet-A does (its normal cell outputs h[k-2] and its five blocks), after
    ``num_reductions`` doublings: ``F = (B + 1) * C * 2**num_reductions``. Every genotype
    with B blocks gets the same C, so candidates are compared at equal per-op width and a
    cell that concatenates fewer states is narrower (and cheaper), not wider. At least 2,
    since a factorized reduction needs two halves.
    """
    return max(2, round(filters / ((num_blocks + 1) * 2**num_reductions)))


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
    if genotype is not None and out != scale.filters:
        states = len(genotype.normal.output_states())
        text += (f" (F={scale.filters} assumes {blocks + 1} concatenated states, "
                 f"this normal cell concatenates {states})")
    return text
