"""search.space.draw: pictures of both cells (PNG, SVG, file objects) and the text rendering."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from itertools import combinations

import pytest
from matplotlib.patches import FancyBboxPatch

from search.core.errors import NasdeployError
from search.space.draw import draw_genotype, genotype_figure
from search.space.genotype import NASNET_A, REFERENCE_GENOTYPES, Block, Cell, Genotype
from search.space.text import cell_text, genotype_text, state_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"

ONE_BLOCK = Genotype(
    normal=Cell((Block((1, 0), ("sep_conv_3x3", "identity"), "add"),)),
    reduce=Cell((Block((0, 1), ("max_pool_3x3", "conv_1x7_7x1"), "concat"),)),
)
# Deep chains, concat combines, skipped layers and an input used by the output.
DEEP = Genotype(
    normal=Cell(
        (
            Block((1, 0), ("sep_conv_5x5", "avg_pool_3x3"), "add"),
            Block((2, 1), ("conv_3x3", "identity"), "concat"),
            Block((3, 0), ("dil_conv_3x3", "max_pool_7x7"), "add"),
            Block((4, 1), ("conv_1x3_3x1", "sep_conv_7x7"), "concat"),
            Block((2, 5), ("max_pool_5x5", "conv_1x1"), "add"),
            Block((6, 3), ("sep_conv_3x3", "identity"), "add"),
        ),
        concat=(0, 5, 6, 7),
    ),
    reduce=Cell(tuple(Block((b + 1, b), ("sep_conv_3x3", "max_pool_3x3"), "add") for b in range(6))),
)
GENOTYPES = {**REFERENCE_GENOTYPES, "one-block": ONE_BLOCK, "deep": DEEP}


def _ops(genotype: Genotype) -> Counter[str]:
    return Counter(op for cell in (genotype.normal, genotype.reduce) for b in cell.blocks for op in b.ops)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _svg_texts(data: bytes) -> list[str]:
    """Text of every node label in an SVG (matplotlib's legend group skipped)."""

    def walk(element: ET.Element) -> list[str]:
        if element.get("id", "").startswith("legend"):
            return []
        if element.tag == f"{SVG_NS}text":
            return ["".join(element.itertext()).strip()]
        return [text for child in element for text in walk(child)]

    return walk(ET.fromstring(data))


def test_png_of_nasnet_a(tmp_path):
    path = tmp_path / "cells.png"
    draw_genotype(NASNET_A, path, title="nasnet-a")
    data = path.read_bytes()
    width, height = _png_size(data)
    assert width > 800 and height > 800
    assert len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["cells.png"]  # no temp file left


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_svg_labels_every_op_and_block(tmp_path, name):
    genotype = GENOTYPES[name]
    path = tmp_path / "cells.svg"
    draw_genotype(genotype, path)
    texts = _svg_texts(path.read_bytes())
    op_labels = Counter(t for t in texts if t in _ops(genotype))
    assert op_labels == _ops(genotype)  # one node per op, nothing missing or doubled
    combines = [t for t in texts if t.startswith("b") and ":" in t]
    assert len(combines) == 2 * genotype.num_blocks
    assert texts.count("h[k-2]") == 2 and texts.count("h[k-1]") == 2


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_draw_to_file_object(fmt):
    buffer = io.BytesIO()
    draw_genotype(ONE_BLOCK, buffer, fmt=fmt)
    data = buffer.getvalue()
    if fmt == "png":
        _png_size(data)
    else:
        assert "sep_conv_3x3" in _svg_texts(data)


def test_bad_format_is_one_line_error_and_writes_nothing(tmp_path):
    with pytest.raises(NasdeployError, match="png or .svg") as info:
        draw_genotype(NASNET_A, tmp_path / "cells.jpg")
    assert "\n" not in str(info.value)
    with pytest.raises(NasdeployError, match="fmt"):
        draw_genotype(NASNET_A, io.BytesIO())
    with pytest.raises(NasdeployError, match="pdf"):
        draw_genotype(NASNET_A, io.BytesIO(), fmt="pdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["nasnet-a", "deep"])
def test_node_boxes_do_not_overlap_and_hold_their_labels(name):
    fig = genotype_figure(GENOTYPES[name])
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
        assert len(boxes) == 3 * GENOTYPES[name].num_blocks + 3  # ops, combines, 2 inputs, output
        for a, b in combinations(boxes, 2):
            assert not a.overlaps(b)
        for text in [t for t in ax.texts if "cell" not in t.get_text()]:  # not the title
            extent = text.get_window_extent(renderer)
            assert any(box.x0 <= extent.x0 and extent.x1 <= box.x1 for box in boxes), text.get_text()


def test_cell_text_has_one_line_per_block_and_the_output():
    text = cell_text(NASNET_A.reduce, "reduction cell", reduction=True)
    lines = text.splitlines()
    assert lines[0].startswith("reduction cell (5 blocks") and "stride 2" in lines[0]
    assert lines[1].strip() == "b0 = sep_conv_5x5(h[k-1]) + sep_conv_7x7(h[k-2])"
    assert lines[4].strip() == "b3 = avg_pool_3x3(b0) + identity(b1)"
    assert lines[-1].strip() == "h[k] = concat(b1, b2, b3, b4)"


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_genotype_text_mentions_every_block(name):
    genotype = GENOTYPES[name]
    text = genotype_text(genotype)
    for cell in (genotype.normal, genotype.reduce):
        for b, block in enumerate(cell.blocks):
            terms = [f"{op}({state_name(i)})" for i, op in zip(block.inputs, block.ops, strict=True)]
            joined = " + ".join(terms) if block.combine == "add" else f"concat({', '.join(terms)})"
            assert f"  b{b} = {joined}" in text
        assert f"h[k] = concat({', '.join(state_name(i) for i in cell.output_states())})" in text


def test_state_names():
    assert [state_name(i) for i in range(4)] == ["h[k-2]", "h[k-1]", "b0", "b1"]
