"""Draw a genotype's two cells as graphs (text rendering: :mod:`search.space.text`).

The picture is built from the genotype alone (as DARTS does) with matplotlib's Agg
canvas and a :class:`~matplotlib.figure.Figure` object, so no pyplot state and no
graphviz binary are involved. Each cell is a layered left-to-right graph: the inputs
``h[k-2]`` and ``h[k-1]``, two op nodes per block (coloured by op family) feeding the
block's combine node, and the output ``concat`` node. Edges that skip layers run through
invisible waypoints so they pass between nodes rather than through them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError
from search.space.text import op_family

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from search.space.genotype import Cell, Genotype

FORMATS = ("png", "svg")

# Layout sizes, in inches (data units equal inches on the canvas).
_COL_W = 1.75  # distance between layers
_ROW_H = 0.42  # distance between stacked nodes
_BOX_W = 1.25
_BOX_H = 0.30
_COMBINE_W = 0.62
_IO_W = 0.80
_MARGIN = 0.25
_TITLE_H = 0.32
_LEGEND_H = 0.45
_FONT = 8.5

FAMILY_COLOURS = {
    "sep conv": "#9ecae1",
    "conv": "#a1d99b",
    "pool": "#fdd0a2",
    "identity": "#d9d9d9",
}
_KIND_COLOURS = {"input": "#fff7bc", "combine": "#fcc5c0", "output": "#dadaeb"}
_STATE_EDGE_COLOURS = ("#1f4e9c", "#b2182b", "#1b7837", "#762a83", "#8c510a", "#01665e", "#c51b7d")
_OP_EDGE_COLOUR = "#555555"


# --------------------------------------------------------------------------- layout

@dataclass
class _Node:
    key: str
    layer: int
    kind: str  # input | op | combine | output | dummy
    label: str = ""
    op: str = ""
    order_hint: float = 0.0
    y: float = 0.0
    preds: list[str] = field(default_factory=list)
    succs: list[str] = field(default_factory=list)

    @property
    def half_height(self) -> float:
        return 0.3 if self.kind == "dummy" else 0.5


@dataclass
class _Edge:
    path: list[str]  # source, waypoints..., target
    colour: str


@dataclass
class _CellGraph:
    nodes: dict[str, _Node]
    layers: list[list[str]]
    edges: list[_Edge]

    @property
    def height(self) -> float:
        return max(n.y for n in self.nodes.values())  # the top node is at 0


def _state_key(index: int) -> str:
    return f"s{index}" if index < 2 else f"c{index - 2}"


def _build_graph(cell: Cell) -> _CellGraph:
    """Nodes with layers, and edges with waypoints on the layers they skip."""
    nodes: dict[str, _Node] = {
        "s0": _Node("s0", 0, "input", "h[k-2]", order_hint=-1),
        "s1": _Node("s1", 0, "input", "h[k-1]", order_hint=-0.5),
    }
    depth = [0, 0]
    links: list[tuple[str, str, str]] = []
    for b, block in enumerate(cell.blocks):
        d = 1 + max(depth[i] for i in block.inputs)
        depth.append(d)
        symbol = "+" if block.combine == "add" else "concat"
        nodes[f"c{b}"] = _Node(f"c{b}", 2 * d, "combine", f"b{b}: {symbol}", order_hint=b)
        for j, (i, op) in enumerate(zip(block.inputs, block.ops, strict=True)):
            key = f"o{b}_{j}"
            nodes[key] = _Node(key, 2 * d - 1, "op", op, op, order_hint=b + 0.1 * j)
            links.append((_state_key(i), key, _STATE_EDGE_COLOURS[i % len(_STATE_EDGE_COLOURS)]))
            links.append((key, f"c{b}", _OP_EDGE_COLOUR))
    out_layer = 2 * max(depth) + 1
    nodes["out"] = _Node("out", out_layer, "output", "concat\n= h[k]", order_hint=len(cell.blocks))
    for i in cell.output_states():
        links.append((_state_key(i), "out", _STATE_EDGE_COLOURS[i % len(_STATE_EDGE_COLOURS)]))
    edges = [_route(nodes, src, dst, colour) for src, dst, colour in links]
    layers: list[list[str]] = [[] for _ in range(out_layer + 1)]
    for node in nodes.values():
        layers[node.layer].append(node.key)
    return _CellGraph(nodes, layers, edges)


def _route(nodes: dict[str, _Node], src: str, dst: str, colour: str) -> _Edge:
    """Add waypoint nodes on every layer strictly between ``src`` and ``dst``."""
    path = [src]
    for layer in range(nodes[src].layer + 1, nodes[dst].layer):
        key = f"d:{src}>{dst}@{layer}"
        nodes[key] = _Node(key, layer, "dummy", order_hint=nodes[dst].order_hint)
        path.append(key)
    path.append(dst)
    for a, b in pairwise(path):
        nodes[a].succs.append(b)
        nodes[b].preds.append(a)
    return _Edge(path, colour)


def _mean_y(nodes: dict[str, _Node], keys: list[str], default: float) -> float:
    return sum(nodes[k].y for k in keys) / len(keys) if keys else default


def _order_layers(graph: _CellGraph) -> None:
    """Order each layer by the barycentre of its predecessors (ties: block order)."""
    nodes = graph.nodes
    for rank, key in enumerate(graph.layers[0]):
        nodes[key].y = float(rank)
    for layer in graph.layers[1:]:
        layer.sort(key=lambda k: (round(_mean_y(nodes, nodes[k].preds, 0.0), 6), nodes[k].order_hint))
        _keep_pairs_together(nodes, layer)
        for rank, key in enumerate(layer):
            nodes[key].y = float(rank)


def _keep_pairs_together(nodes: dict[str, _Node], layer: list[str]) -> None:
    """Keep a block's two op nodes adjacent (the upper input's op on top)."""
    for key in [k for k in layer if nodes[k].kind == "op" and k.endswith("_0")]:
        partner = key[:-1] + "1"
        if partner not in layer:
            continue
        layer.remove(partner)
        pair = sorted([key, partner], key=lambda k: (_mean_y(nodes, nodes[k].preds, 0.0), k))
        at = layer.index(key)
        layer[at : at + 1] = pair


def _place(nodes: dict[str, _Node], layer: list[str], desired: list[float]) -> None:
    """Least-squares positions for ``layer`` in its order with minimum gaps (isotonic fit)."""
    offsets = [0.0]
    for a, b in pairwise(layer):
        offsets.append(offsets[-1] + nodes[a].half_height + nodes[b].half_height)
    targets = [d - o for d, o in zip(desired, offsets, strict=True)]
    blocks: list[list[float]] = []  # pool-adjacent-violators: [mean, count]
    for t in targets:
        blocks.append([t, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    fitted = [m for m, n in blocks for _ in range(int(n))]
    for key, z, o in zip(layer, fitted, offsets, strict=True):
        nodes[key].y = z + o


def _assign_y(graph: _CellGraph, sweeps: int = 8) -> None:
    """Align nodes with their neighbours: alternate downward and upward sweeps."""
    nodes = graph.nodes
    for layer in graph.layers:
        _place(nodes, layer, [nodes[k].y for k in layer])
    for _ in range(sweeps):
        for layer in graph.layers[1:]:
            _place(nodes, layer, [_mean_y(nodes, nodes[k].preds, nodes[k].y) for k in layer])
        for layer in reversed(graph.layers[:-1]):
            _place(nodes, layer, [_mean_y(nodes, nodes[k].succs, nodes[k].y) for k in layer])
    top = min(n.y for n in nodes.values())
    for node in nodes.values():
        node.y -= top


def _layout(cell: Cell) -> _CellGraph:
    graph = _build_graph(cell)
    _order_layers(graph)
    _assign_y(graph)
    return graph


# --------------------------------------------------------------------------- drawing


def _box_width(node: _Node) -> float:
    if node.kind == "combine":
        return max(_COMBINE_W, 0.07 * len(node.label) + 0.2)
    return {"op": _BOX_W, "dummy": _BOX_W}.get(node.kind, _IO_W)


def _xy(node: _Node) -> tuple[float, float]:
    return node.layer * _COL_W, -node.y * _ROW_H


def _draw_node(ax: Axes, node: _Node) -> None:
    from matplotlib.patches import FancyBboxPatch

    x, y = _xy(node)
    width = _box_width(node)
    height = _BOX_H * (1.55 if node.kind == "output" else 1.0)
    colour = FAMILY_COLOURS[op_family(node.op)] if node.kind == "op" else _KIND_COLOURS[node.kind]
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height,
            boxstyle="round,pad=0,rounding_size=0.06", facecolor=colour,
            edgecolor="#333333", linewidth=0.8, zorder=3,
        )
    )
    weight = "bold" if node.kind in ("input", "output") else "normal"
    ax.text(x, y, node.label, ha="center", va="center", fontsize=_FONT, weight=weight, zorder=4,
            family="DejaVu Sans Mono" if node.kind == "op" else "DejaVu Sans")


def _draw_edge(ax: Axes, graph: _CellGraph, edge: _Edge) -> None:
    """A smooth curve leaving the source's right side and entering the target's left side."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MplPath

    nodes = [graph.nodes[k] for k in edge.path]
    (x0, y0), (x1, y1) = _xy(nodes[0]), _xy(nodes[-1])
    points = [(x0 + _box_width(nodes[0]) / 2, y0)]
    for node in nodes[1:-1]:  # pass a skipped layer horizontally, clear of its boxes
        x, y = _xy(node)
        points += [(x - _BOX_W / 2, y), (x + _BOX_W / 2, y)]
    points.append((x1 - _box_width(nodes[-1]) / 2, y1))
    vertices = [points[0]]
    codes = [MplPath.MOVETO]
    for (x0, y0), (x1, y1) in pairwise(points):
        bend = (x1 - x0) * 0.5
        vertices += [(x0 + bend, y0), (x1 - bend, y1), (x1, y1)]
        codes += [MplPath.CURVE4] * 3
    ax.add_patch(
        FancyArrowPatch(
            path=MplPath(vertices, codes), arrowstyle="-|>", mutation_scale=9,
            color=edge.colour, linewidth=0.9, alpha=0.85, zorder=2,
        )
    )


def _cell_extent(graph: _CellGraph) -> tuple[float, float]:
    """Width and height in inches of a cell's drawing area."""
    width = (len(graph.layers) - 1) * _COL_W + _IO_W + 2 * _MARGIN
    height = graph.height * _ROW_H + _BOX_H * 1.6 + 2 * _MARGIN
    return width, height


def _draw_cell(ax: Axes, graph: _CellGraph, title: str) -> None:
    for edge in graph.edges:
        _draw_edge(ax, graph, edge)
    for node in graph.nodes.values():
        if node.kind != "dummy":
            _draw_node(ax, node)
    width, height = _cell_extent(graph)
    left = -_IO_W / 2 - _MARGIN
    top = _BOX_H + 0.1
    ax.set_xlim(left, left + width)
    ax.set_ylim(top - height, top)
    ax.text(left + _MARGIN, top, title, fontsize=_FONT + 2, ha="left", va="bottom")
    ax.set_axis_off()


def _legend(fig: Figure) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="#333333", label=f) for f, c in FAMILY_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=_FONT,
               frameon=False, bbox_to_anchor=(0.5, 0.0))


def genotype_figure(genotype: Genotype, title: str | None = None) -> Figure:
    """A matplotlib Figure (Agg canvas) with the normal cell above the reduction cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = [
        (_layout(genotype.normal), "normal cell"),
        (_layout(genotype.reduce), "reduction cell (ops reading h[k-2], h[k-1] have stride 2)"),
    ]
    extents = [_cell_extent(g) for g, _ in cells]
    width = max(w for w, _ in extents)
    header = _TITLE_H if title else 0.0
    heights = [h + _TITLE_H for _, h in extents]
    total = header + sum(heights) + _LEGEND_H
    fig = Figure(figsize=(width, total), dpi=100)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=_FONT + 4, weight="bold", y=1 - 0.1 * header / total)
    top = total - header
    for (graph, name), (w, h), slot in zip(cells, extents, heights, strict=True):
        top -= slot
        ax = fig.add_axes((0.0, top / total, w / width, h / total))
        _draw_cell(ax, graph, name)
    _legend(fig)
    return fig


def draw_genotype(
    genotype: Genotype,
    target: str | os.PathLike[str] | BinaryIO,
    fmt: str | None = None,
    title: str | None = None,
) -> None:
    """Write a picture of both cells to ``target`` (a path or a binary file object).

    Args:
        genotype: the genotype to draw.
        target: ``.png`` / ``.svg`` path (written atomically) or a writable binary file.
        fmt: ``png`` or ``svg``; required for file objects, else taken from the suffix.
        title: optional heading above the cells.

    Raises:
        NasdeployError: unsupported format, missing ``fmt`` for a file object, or a
            path that cannot be written.
    """
    from matplotlib import rc_context

    fmt = resolve_format(target, fmt)
    fig = genotype_figure(genotype, title)
    options = {"format": fmt, "dpi": 150 if fmt == "png" else 100, "facecolor": "white",
               "bbox_inches": "tight", "pad_inches": 0.15}
    with rc_context({"svg.fonttype": "none"}):  # keep SVG text as text (searchable)
        if hasattr(target, "write"):
            fig.savefig(target, **options)
            return
        try:
            with atomic_path(target) as tmp:  # type: ignore[arg-type]
                fig.savefig(tmp, **options)
        except OSError as exc:
            raise NasdeployError(f"cannot write picture {target}: {exc.strerror or exc}") from None


def resolve_format(target: object, fmt: str | None) -> str:
    if fmt is None:
        if hasattr(target, "write"):
            raise NasdeployError("drawing to a file object needs fmt='png' or fmt='svg'")
        fmt = Path(target).suffix.lstrip(".")  # type: ignore[arg-type]
        if fmt.lower() not in FORMATS:
            raise NasdeployError(f"cannot draw to {target}: use a .png or .svg file name")
    if fmt.lower() not in FORMATS:
        raise NasdeployError(f"unknown drawing format {fmt!r}: use png or svg")
    return fmt.lower()
