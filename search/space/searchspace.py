"""The cell search space as a flat sequence of categorical decisions.

Every strategy sees the same space: for each cell (normal, then reduction) and each of
its B blocks, five decisions in order: first input, second input, first op, second op,
combine. Block b may read hidden states ``0 .. b+1``, so its input decisions have
``b + 2`` choices. Op and combine choices come from the one registry in
:mod:`search.nn.ops`. A genotype is encoded as one choice index per decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.space.genotype import Block, Cell, Genotype
from search.space.opnames import COMBINES, OP_NAMES

CELLS: tuple[str, ...] = ("normal", "reduce")
FIELDS: tuple[str, ...] = ("in0", "in1", "op0", "op1", "combine")
KINDS: dict[str, str] = {"in0": "input", "in1": "input", "op0": "op", "op1": "op",
                         "combine": "combine"}


@dataclass(frozen=True)
class Decision:
    """One categorical choice: its name, kind (input/op/combine) and its choices."""

    name: str
    kind: str
    choices: tuple[int | str, ...]

    @property
    def size(self) -> int:
        return len(self.choices)


@dataclass(frozen=True)
class SearchSpace:
    """NASNet cells with ``num_blocks`` blocks each (both cells have the same B)."""

    num_blocks: int = 5

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")

    @property
    def max_inputs(self) -> int:
        """Largest number of input choices (the last block's)."""
        return self.num_blocks + 1

    def decisions(self) -> list[Decision]:
        """All decisions in sampling order."""
        out: list[Decision] = []
        for cell in CELLS:
            for b in range(self.num_blocks):
                for field in FIELDS:
                    out.append(Decision(f"{cell}_b{b}_{field}", KINDS[field],
                                        self._choices(field, b)))
        return out

    @staticmethod
    def _choices(field: str, block: int) -> tuple[int | str, ...]:
        kind = KINDS[field]
        if kind == "input":
            return tuple(range(block + 2))
        return OP_NAMES if kind == "op" else COMBINES

    def size(self) -> int:
        """Number of distinct genotypes in the space."""
        total = 1
        for decision in self.decisions():
            total *= decision.size
        return total

    def decode(self, indices: Sequence[int]) -> Genotype:
        """Build the genotype for one choice index per decision."""
        values = self.values(indices)
        return self.from_values(values)

    def values(self, indices: Sequence[int]) -> dict[str, int | str]:
        """Map decision name -> chosen value for a list of choice indices."""
        decisions = self.decisions()
        if len(indices) != len(decisions):
            raise ValueError(f"expected {len(decisions)} choices, got {len(indices)}")
        return {d.name: d.choices[int(i)] for d, i in zip(decisions, indices, strict=True)}

    def from_values(self, values: dict[str, int | str]) -> Genotype:
        """Build the genotype from decision name -> value (e.g. Optuna params)."""
        cells = []
        for cell in CELLS:
            blocks = []
            for b in range(self.num_blocks):
                v = [values[f"{cell}_b{b}_{field}"] for field in FIELDS]
                blocks.append(Block((int(v[0]), int(v[1])), (str(v[2]), str(v[3])), str(v[4])))
            cells.append(Cell(tuple(blocks)))
        return Genotype(cells[0], cells[1])

    def encode(self, genotype: Genotype) -> list[int]:
        """Choice indices of ``genotype``; ``ValueError`` if it is outside the space."""
        if genotype.num_blocks != self.num_blocks:
            raise ValueError(f"genotype has {genotype.num_blocks} blocks, space has "
                             f"{self.num_blocks}")
        indices: list[int] = []
        for cell_name in CELLS:
            cell: Cell = getattr(genotype, cell_name)
            if cell.concat is not None:
                raise ValueError("explicit concat lists are outside the search space")
            for b, block in enumerate(cell.blocks):
                raw = (*block.inputs, *block.ops, block.combine)
                for field, value in zip(FIELDS, raw, strict=True):
                    indices.append(self._choices(field, b).index(value))
        return indices
