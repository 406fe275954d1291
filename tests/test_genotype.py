"""Genotype JSON round-trips, and every kind of malformed file gives one clear line."""

from __future__ import annotations

import json

import pytest

from search.space.genotype import (
    FORMAT_VERSION,
    NASNET_A,
    REFERENCE_GENOTYPES,
    Block,
    Cell,
    Genotype,
    GenotypeError,
    load_genotype,
    load_genotype_file,
    save_genotype,
)


def _valid() -> dict:
    return json.loads(NASNET_A.to_json())


@pytest.mark.parametrize("name", sorted(REFERENCE_GENOTYPES))
def test_reference_genotypes_round_trip(tmp_path, name):
    genotype = load_genotype(name)
    path = tmp_path / "g.json"
    save_genotype(genotype, path, metadata={"accuracy": 0.9})
    loaded, metadata = load_genotype_file(path)
    assert loaded == genotype
    assert metadata == {"accuracy": 0.9}
    assert load_genotype(str(path)) == genotype
    assert Genotype.from_dict(genotype.to_dict()).to_json() == genotype.to_json()


def test_default_concat_is_the_unconsumed_states():
    cell = Cell((Block((1, 0), ("conv_1x1", "identity")), Block((2, 1), ("conv_3x3", "identity"))))
    assert cell.output_states() == (3,)
    cell = Cell((Block((1, 1), ("conv_1x1", "identity")), Block((1, 1), ("conv_3x3", "identity"))))
    assert cell.output_states() == (0, 2, 3)


def test_any_number_of_blocks(tmp_path):
    data = {"format": "nasdeploy-genotype", "version": FORMAT_VERSION,
            "normal": {"blocks": [{"inputs": [0, 1], "ops": ["conv_3x3", "identity"], "combine": "concat"}]},
            "reduce": {"blocks": [{"inputs": [1, 1], "ops": ["max_pool_3x3", "avg_pool_3x3"]}]}}
    genotype = Genotype.from_dict(data)
    assert genotype.num_blocks == 1 and genotype.normal.blocks[0].combine == "concat"


def _mutate(path: str, value):
    data = _valid()
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return data


BAD = {
    "unknown op": (_mutate("normal.blocks.0.ops.1", "sep_conv_9x9"), "normal.blocks[0].ops[1]: unknown op"),
    "index out of range": (_mutate("normal.blocks.0.inputs.0", 2), "normal.blocks[0].inputs[0]: index 2"),
    "late block out of range": (_mutate("reduce.blocks.4.inputs.1", 6), "reduce.blocks[4].inputs[1]"),
    "negative index": (_mutate("normal.blocks.1.inputs.0", -1), "index -1 out of range"),
    "three ops": (_mutate("normal.blocks.0.ops", ["conv_1x1"] * 3), "expected exactly 2 entries"),
    "ops not a list": (_mutate("normal.blocks.0.ops", "conv_1x1"), "expected a list of two"),
    "index is a string": (_mutate("normal.blocks.0.inputs.0", "0"), "expected an integer"),
    "index is a bool": (_mutate("normal.blocks.0.inputs.0", True), "expected an integer"),
    "bad combine": (_mutate("normal.blocks.0.combine", "mul"), "unknown combine 'mul'"),
    "missing ops": (_mutate("normal.blocks.0.ops", KeyError), "missing field 'ops'"),
    "extra field": (_mutate("normal.blocks.0.weight", 3), "unknown field(s) weight"),
    "empty cell": (_mutate("normal.blocks", []), "at least one block"),
    "missing cell": (_mutate("reduce", KeyError), "reduce: missing cell"),
    "wrong version": (_mutate("version", 99), "unsupported version 99"),
    "missing version": (_mutate("version", KeyError), "version: missing"),
    "wrong format": (_mutate("format", "darts"), "format: expected 'nasdeploy-genotype'"),
    "concat out of range": (_mutate("normal.concat", [0, 9]), "normal.concat[1]: index 9"),
    "block count differs": (_mutate("reduce", {"blocks": _valid()["reduce"]["blocks"][:3]}), "has 3 blocks"),
    "top level list": ([1, 2], "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_genotypes_name_the_bad_field(tmp_path, case):
    data, fragment = BAD[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize(
    "content, fragment",
    [("{not json", "is not valid JSON"), ("", "is not valid JSON"), (b"\xff\xfe\x00", "not a text JSON")],
)
def test_unreadable_files(tmp_path, content, fragment):
    path = tmp_path / "g.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(GenotypeError, match=fragment):
        load_genotype(path)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(GenotypeError, match="not found"):
        load_genotype(tmp_path / "nope.json")
    with pytest.raises(GenotypeError, match="built-ins: nasnet-a"):
        load_genotype("nasnet-z")
    with pytest.raises(GenotypeError, match="is a directory"):
        load_genotype_file(tmp_path)


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "g.json"
    save_genotype(NASNET_A, path)
    before = path.read_text()
    with pytest.raises(TypeError):
        save_genotype(NASNET_A, path, metadata={"bad": object()})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_swapped_branches_are_one_network_and_one_key():
    from search.space.genotype import Block, Cell, canonical_space_size
    from search.space.searchspace import SearchSpace

    def swapped(cell: Cell) -> Cell:
        return Cell(tuple(Block(b.inputs[::-1], b.ops[::-1], b.combine) for b in cell.blocks))

    base = Genotype(Cell(NASNET_A.normal.blocks), Cell(NASNET_A.reduce.blocks))
    other = Genotype(swapped(base.normal), swapped(base.reduce))
    assert other.to_json() != base.to_json()
    assert other.key() == base.key() and other.canonical() == base.canonical()
    assert base.canonical().canonical() == base.canonical()  # idempotent
    # different ops in one branch are different networks
    changed = Genotype(Cell((Block((1, 0), ("identity", "sep_conv_3x3")),) + base.normal.blocks[1:]),
                       base.reduce)
    assert changed.key() != base.key()
    # the space counts ordered branch pairs; the canonical count is the distinct networks:
    # block b has n = (b + 2) * 13 branches, n * n ordered pairs but n * (n + 1) / 2 networks
    assert canonical_space_size(1) == (26 * 27 // 2 * 2) ** 2
    assert SearchSpace(1).size() == (26 * 26 * 2) ** 2
    assert 2**10 / 2 < SearchSpace(5).size() / canonical_space_size(5) < 2**10


def test_swapped_branches_build_the_same_network():
    import torch

    from search.nn.model import build_model
    from search.space.genotype import Block, Cell

    base = Genotype(Cell(NASNET_A.normal.blocks), Cell(NASNET_A.reduce.blocks))
    other = Genotype(Cell(tuple(Block(b.inputs[::-1], b.ops[::-1], b.combine) for b in base.normal.blocks)),
                     base.reduce)
    a, b = (build_model(g, "1@48", image_size=16) for g in (base, other))
    assert a.genotype.key() == b.genotype.key()
    normal = {i for i, cell in enumerate(a.cells) if not cell.reduction}

    def source(name: str) -> str:  # the same op's weights sit in the other branch slot
        parts = name.split(".")
        if parts[0] == "cells" and int(parts[1]) in normal and parts[2] == "ops":
            parts[3] = str(int(parts[3]) ^ 1)
        return ".".join(parts)

    state = a.state_dict()
    b.load_state_dict({name: state[source(name)] for name in b.state_dict()})
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a.eval()(x), b.eval()(x))
