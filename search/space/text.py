"""A genotype's cells as plain text: one line per block (torch- and matplotlib-free)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.space.genotype import Cell, Genotype


def op_family(op: str) -> str:
    """The family an op belongs to: ``sep conv``, ``conv``, ``pool`` or ``identity``."""
    if op.startswith("sep_conv"):
        return "sep conv"
    if "pool" in op:
        return "pool"
    if op == "identity":
        return "identity"
    return "conv"


def state_name(index: int) -> str:
    """Hidden state ``index`` as text: ``h[k-2]``, ``h[k-1]``, then ``b0``, ``b1``, ..."""
    return ("h[k-2]", "h[k-1]")[index] if index < 2 else f"b{index - 2}"


def cell_text(cell: Cell, name: str = "cell", reduction: bool = False) -> str:
    """Render ``cell`` as one line per block plus the output line.

    Example line: ``b0 = sep_conv_5x5(h[k-1]) + sep_conv_3x3(h[k-2])``. ``b<j>`` is the
    output of block j; ``concat(...)`` as a combine means concatenation projected back
    to C channels by a 1x1 conv.
    """
    last = state_name(len(cell.blocks) + 1)
    note = "; ops reading h[k-2], h[k-1] have stride 2" if reduction else ""
    lines = [f"{name} ({len(cell.blocks)} blocks; inputs h[k-2], h[k-1]; block outputs b0..{last}{note})"]
    for b, block in enumerate(cell.blocks):
        terms = [f"{op}({state_name(i)})" for i, op in zip(block.inputs, block.ops, strict=True)]
        rhs = " + ".join(terms) if block.combine == "add" else f"concat({', '.join(terms)})"
        lines.append(f"  b{b} = {rhs}")
    outputs = ", ".join(state_name(i) for i in cell.output_states())
    lines.append(f"  h[k] = concat({outputs})")
    return "\n".join(lines)


def genotype_text(genotype: Genotype) -> str:
    """Both cells as text (see :func:`cell_text`)."""
    return "\n".join(
        [cell_text(genotype.normal, "normal cell"), cell_text(genotype.reduce, "reduction cell", True)]
    )
