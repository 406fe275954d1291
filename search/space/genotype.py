"""The genotype: plain, JSON-serialisable data shared by search, export and serve.

A genotype holds a normal cell and a reduction cell. Each cell has B blocks; a block
takes two hidden states, applies one op to each and combines the results. Hidden-state
indices: 0 is the output of cell k-2, 1 the output of cell k-1, and j >= 2 the output of
block j-2 of the same cell, so block b may read states ``0 .. b+1``. By default a cell
outputs the concatenation of the hidden states no block consumed (NASNet's rule); a cell
may list its ``concat`` explicitly instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.atomic import atomic_write_text
from search.core.errors import NasdeployError, shorten
from search.core.jsonio import JsonError, loads_json, read_json
from search.space.opnames import COMBINES, OP_NAMES

FORMAT_NAME = "nasdeploy-genotype"
FORMAT_VERSION = 1
GENOTYPE_MAX_BYTES = 1024 * 1024
"""Largest genotype file or text read (a genotype with its metadata is a few kB)."""


class GenotypeError(NasdeployError):
    """A genotype that cannot be read or is not valid."""


@dataclass(frozen=True)
class Block:
    """Two inputs, one op on each, one combine."""

    inputs: tuple[int, int]
    ops: tuple[str, str]
    combine: str = "add"

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "ops": list(self.ops), "combine": self.combine}


@dataclass(frozen=True)
class Cell:
    """B blocks and, optionally, the hidden states to concatenate as the output."""

    blocks: tuple[Block, ...]
    concat: tuple[int, ...] | None = None

    @property
    def num_states(self) -> int:
        """Hidden states in the cell: the two inputs plus one per block."""
        return 2 + len(self.blocks)

    def output_states(self) -> tuple[int, ...]:
        """Indices of the hidden states concatenated into the cell's output."""
        if self.concat is not None:
            return self.concat
        used = {i for block in self.blocks for i in block.inputs}
        unused = tuple(i for i in range(self.num_states) if i not in used)
        return unused or (self.num_states - 1,)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"blocks": [b.to_dict() for b in self.blocks]}
        if self.concat is not None:
            data["concat"] = list(self.concat)
        return data


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell (and free-form metadata that is not compared)."""

    normal: Cell
    reduce: Cell

    @property
    def num_blocks(self) -> int:
        return len(self.normal.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "normal": self.normal.to_dict(),
            "reduce": self.reduce.to_dict(),
        }

    def to_json(self) -> str:
        """Compact JSON with sorted keys: equal genotypes give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def canonical(self) -> Genotype:
        """The same network in its one canonical spelling (see :func:`canonical_cell`)."""
        return Genotype(canonical_cell(self.normal), canonical_cell(self.reduce))

    def key(self) -> str:
        """One key per network: the compact JSON of :meth:`canonical`.

        Dedup, the latency cache and the trial history compare genotypes by this key, so
        two spellings of one network are one candidate.
        """
        return self.canonical().to_json()

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Validate ``data`` and build a genotype; raises :class:`GenotypeError`."""
        return _parse_genotype(data)


def _branch_order(branch: tuple[int, str]) -> tuple[int, int]:
    return branch[0], OP_NAMES.index(branch[1]) if branch[1] in OP_NAMES else len(OP_NAMES)


def canonical_cell(cell: Cell) -> Cell:
    """``cell`` with each block's two (input, op) branches in one order.

    A block's two branches are interchangeable: with ``add`` the sum commutes; with
    ``concat`` swapping them only permutes the input channels of the 1x1 convolution that
    follows, a network with the same function class, size and cost. The branch with the
    smaller input index comes first (then the op's registry order). Which states the cell
    concatenates depends only on which states are consumed, so it is unchanged.
    """
    blocks = []
    for block in cell.blocks:
        branches = sorted(zip(block.inputs, block.ops, strict=True), key=_branch_order)
        blocks.append(Block((branches[0][0], branches[1][0]), (branches[0][1], branches[1][1]),
                            block.combine))
    return Cell(tuple(blocks), cell.concat)


def canonical_space_size(num_blocks: int, num_ops: int = len(OP_NAMES),
                         num_combines: int = len(COMBINES)) -> int:
    """Distinct networks in the search space with ``num_blocks`` blocks per cell.

    Block b chooses an unordered pair (with repetition) of branches out of ``(b + 2) *
    num_ops`` (input, op) choices, and a combine; the two cells choose independently.
    """
    per_cell = 1
    for b in range(num_blocks):
        branches = (b + 2) * num_ops
        per_cell *= branches * (branches + 1) // 2 * num_combines
    return per_cell * per_cell


def _fail(where: str, message: str) -> GenotypeError:
    return GenotypeError(f"invalid genotype: {where}: {message}")


def _unknown(fields: set[Any]) -> str:
    names = sorted(str(f) for f in fields)
    shown = ", ".join(shorten(n, 30).strip("'\"") for n in names[:5])
    return f"unknown field(s) {shown}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _fail(where, f"expected {what}, got {type(value).__name__} {value!r}"[:200])
    return value


def _parse_block(data: Any, where: str, num_inputs: int) -> Block:
    _expect(data, dict, where, "an object with inputs, ops, combine")
    unknown = set(data) - {"inputs", "ops", "combine"}
    if unknown:
        raise _fail(where, _unknown(unknown))
    for key in ("inputs", "ops"):
        if key not in data:
            raise _fail(where, f"missing field {key!r}")
        value = _expect(data[key], list, f"{where}.{key}", "a list of two")
        if len(value) != 2:
            raise _fail(f"{where}.{key}", f"expected exactly 2 entries, got {len(value)}")
    for j, index in enumerate(data["inputs"]):
        _expect(index, int, f"{where}.inputs[{j}]", "an integer")
        if not 0 <= index < num_inputs:
            raise _fail(
                f"{where}.inputs[{j}]",
                f"index {shorten(index)} out of range; this block may use 0..{num_inputs - 1}",
            )
    for j, op in enumerate(data["ops"]):
        _expect(op, str, f"{where}.ops[{j}]", "an op name")
        if op not in OP_NAMES:
            raise _fail(f"{where}.ops[{j}]", f"unknown op {shorten(op)}; choose from {', '.join(OP_NAMES)}")
    combine = _expect(data.get("combine", "add"), str, f"{where}.combine", "a string")
    if combine not in COMBINES:
        raise _fail(f"{where}.combine",
                    f"unknown combine {shorten(combine)}; choose from {', '.join(COMBINES)}")
    return Block(tuple(data["inputs"]), tuple(data["ops"]), combine)  # type: ignore[arg-type]


def _parse_cell(data: Any, where: str) -> Cell:
    if isinstance(data, list):  # shorthand: a bare list of blocks
        data = {"blocks": data}
    _expect(data, dict, where, "an object with a 'blocks' list")
    unknown = set(data) - {"blocks", "concat"}
    if unknown:
        raise _fail(where, _unknown(unknown))
    blocks = _expect(data.get("blocks"), list, f"{where}.blocks", "a list of blocks")
    if not blocks:
        raise _fail(f"{where}.blocks", "a cell needs at least one block")
    parsed = tuple(_parse_block(b, f"{where}.blocks[{i}]", i + 2) for i, b in enumerate(blocks))
    concat = data.get("concat")
    if concat is not None:
        _expect(concat, list, f"{where}.concat", "a list of hidden-state indices")
        if not concat:
            raise _fail(f"{where}.concat", "must name at least one hidden state")
        for j, index in enumerate(concat):
            _expect(index, int, f"{where}.concat[{j}]", "an integer")
            if not 0 <= index < len(parsed) + 2:
                raise _fail(f"{where}.concat[{j}]",
                            f"index {shorten(index)} out of range 0..{len(parsed) + 1}")
        if len(set(concat)) != len(concat):
            raise _fail(f"{where}.concat", "indices must be distinct")
        concat = tuple(concat)
    return Cell(parsed, concat)


def _parse_genotype(data: Any) -> Genotype:
    _expect(data, dict, "top level", "a JSON object")
    fmt = data.get("format", FORMAT_NAME)
    if fmt != FORMAT_NAME:
        raise _fail("format", f"expected {FORMAT_NAME!r}, got {shorten(fmt)}")
    if "version" not in data:
        raise _fail("version", f"missing; this nasdeploy reads version {FORMAT_VERSION}")
    version = data["version"]
    if version != FORMAT_VERSION:
        raise _fail("version",
                    f"unsupported version {shorten(version)}; this nasdeploy reads {FORMAT_VERSION}")
    unknown = set(data) - {"format", "version", "normal", "reduce", "metadata", "name"}
    if unknown:
        raise _fail("top level", _unknown(unknown))
    for key in ("normal", "reduce"):
        if key not in data:
            raise _fail(key, "missing cell")
    normal = _parse_cell(data["normal"], "normal")
    reduce = _parse_cell(data["reduce"], "reduce")
    if len(normal.blocks) != len(reduce.blocks):
        raise _fail("reduce.blocks", f"has {len(reduce.blocks)} blocks but normal has {len(normal.blocks)}")
    return Genotype(normal, reduce)


def genotype_from_json(text: str, source: str = "genotype") -> Genotype:
    """Parse genotype JSON text; errors name ``source``."""
    try:
        data = loads_json(text, source, max_bytes=GENOTYPE_MAX_BYTES)
    except JsonError as exc:
        raise GenotypeError(str(exc)) from None
    return _from_data(data, source)


def _from_data(data: Any, source: str) -> Genotype:
    try:
        return Genotype.from_dict(data)
    except GenotypeError as exc:
        raise GenotypeError(f"{source}: {exc}") from None


def load_genotype_file(path: str | os.PathLike[str]) -> tuple[Genotype, dict[str, Any]]:
    """Read a genotype JSON file; return the genotype and its ``metadata`` dict."""
    p = Path(path)
    try:
        data = read_json(p, max_bytes=GENOTYPE_MAX_BYTES)
    except FileNotFoundError:
        raise GenotypeError(f"genotype file not found: {p}") from None
    except IsADirectoryError:
        raise GenotypeError(f"{p} is a directory, not a genotype file") from None
    except JsonError as exc:
        raise GenotypeError(str(exc)) from None
    genotype = _from_data(data, str(p))
    metadata = data.get("metadata") or {}
    return genotype, metadata if isinstance(metadata, dict) else {}


def load_genotype(path_or_name: str | os.PathLike[str]) -> Genotype:
    """Load a built-in genotype by name (e.g. ``nasnet-a``) or a genotype JSON file."""
    key = str(path_or_name)
    if key in REFERENCE_GENOTYPES:
        return REFERENCE_GENOTYPES[key]
    path = Path(key)
    if not path.exists() and path.suffix != ".json":
        raise GenotypeError(
            f"no genotype file or built-in genotype named {key!r}; "
            f"built-ins: {', '.join(REFERENCE_GENOTYPES)}"
        )
    return load_genotype_file(path)[0]


def save_genotype(
    genotype: Genotype, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> None:
    """Write ``genotype`` (and optional JSON-serialisable ``metadata``) atomically."""
    data = genotype.to_dict()
    if metadata:
        data["metadata"] = metadata
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _cell(blocks: list[tuple[int, int, str, str]], concat: list[int] | None = None) -> Cell:
    return Cell(tuple(Block((a, b), (op_a, op_b), "add") for a, b, op_a, op_b in blocks),
                tuple(concat) if concat is not None else None)


# NASNet-A (Zoph et al. 2018, Fig. 4), transcribed from the authors' released
# implementation. Indices: 0 = h[k-2], 1 = h[k-1]. The released code concatenates h[k-2]
# with the five blocks in the normal cell and blocks 1-4 in the reduction cell; the
# paper's parameter counts follow that, so the concat lists are explicit.
NASNET_A = Genotype(
    normal=_cell(
        [
            (1, 0, "sep_conv_5x5", "sep_conv_3x3"),
            (0, 0, "sep_conv_5x5", "sep_conv_3x3"),
            (1, 0, "avg_pool_3x3", "identity"),
            (0, 0, "avg_pool_3x3", "avg_pool_3x3"),
            (1, 1, "sep_conv_3x3", "identity"),
        ],
        concat=[0, 2, 3, 4, 5, 6],
    ),
    reduce=_cell(
        [
            (1, 0, "sep_conv_5x5", "sep_conv_7x7"),
            (1, 0, "max_pool_3x3", "sep_conv_7x7"),
            (1, 0, "avg_pool_3x3", "sep_conv_5x5"),
            (2, 3, "avg_pool_3x3", "identity"),
            (2, 1, "sep_conv_3x3", "max_pool_3x3"),
        ],
        concat=[3, 4, 5, 6],
    ),
)

# A deliberately cheap cell (pools and one separable conv), useful as a fast baseline.
LITE = Genotype(
    normal=_cell(
        [
            (1, 0, "sep_conv_3x3", "identity"),
            (0, 1, "avg_pool_3x3", "identity"),
            (2, 1, "max_pool_3x3", "identity"),
        ]
    ),
    reduce=_cell(
        [
            (1, 0, "max_pool_3x3", "avg_pool_3x3"),
            (2, 1, "sep_conv_3x3", "identity"),
            (3, 2, "avg_pool_3x3", "identity"),
        ]
    ),
)

REFERENCE_GENOTYPES: dict[str, Genotype] = {"nasnet-a": NASNET_A, "lite": LITE}
"""Built-in genotypes, by name."""
