"""INT8 sensitivity of each part of a network, and mixed precision that meets an agreement target.

Post-training quantization of every node loses several points on narrow NASNet cells, whose
separable convolutions and sums of branches with different ranges are sensitive. This
module measures where the loss comes from and keeps those parts in float:

* :func:`node_groups` splits the nodes a full quantization touches into the network's
  parts: the stem, each cell (``cell 3 (normal)``), the head (pooling and classifier);
  a hand-designed baseline by its modules (:func:`module_groups`: ``layer2``, ``features.3``).
* :func:`measure_sensitivity` quantizes each part *alone* (everything else float) and
  compares it with the fp32 model on selection images: top-1 agreement, and the relative
  logit noise ``||q - f||^2 / ||f||^2`` that orders the parts.
* :func:`mixed_precision` keeps the most sensitive parts float, one more at a time in
  order of cost, until the agreement with fp32 on the selection images reaches the
  target; the QDQ form of what stays quantized is unchanged (symmetric, TensorRT's).
  Quantization is per tensor: a float part still reads a quantized tensor where a
  quantized part feeds it.

The selection images come from the training split (disjoint from the calibration images);
the export reports the result on held-out images, which played no part in the choice.
Imports: numpy, :mod:`export.verify`, :mod:`search.space` (it is called by :mod:`export.quantize`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.verify import open_session, run_session
from search.space.card import ModelCard

if TYPE_CHECKING:  # export.quantize calls this module: no import back at run time
    from export.quantize import QdqQuantizer


@dataclass(frozen=True)
class PartCost:
    """What quantizing one part alone costs against fp32 on the selection images."""

    part: str
    nodes: int
    agreement: float
    noise: float
    accuracy: float | None = None


@dataclass(frozen=True)
class MixedResult:
    """The outcome of :func:`mixed_precision`.

    Attributes:
        target: the agreement asked for.
        full_agreement: agreement of the fully quantized model on the selection images.
        agreement: agreement of the chosen model on the selection images.
        float_parts: the parts kept float, most sensitive first.
        float_nodes: their node names (what ``nodes_to_exclude`` received).
        steps: (parts kept float, agreement) for every model tried, in order.
        reached: whether the target was met with at least one part still quantized.
    """

    target: float
    full_agreement: float
    agreement: float
    float_parts: list[str]
    float_nodes: list[str]
    steps: list[tuple[int, float]]
    reached: bool


def node_groups(nodes: list[str], card: ModelCard | None = None) -> dict[str, list[str]]:
    """``nodes`` by part of the network, in graph order: ``stem``, ``cell k (kind)``, ``head``.

    Node names come from the module path the exporter writes (``/cells.3/ops.1/...``);
    anything outside the stem and the cells (global pooling, flatten, classifier) is the head.
    A baseline (the card names an ``architecture``) is split by :func:`module_groups`.
    """
    if card is not None and card.architecture is not None:
        return module_groups(nodes)
    kinds = _cell_kinds(card)
    groups: dict[str, list[str]] = {}
    for name in nodes:
        first = name.strip("/").split("/")[0]
        if first.startswith("cells."):
            index = first.split(".", 1)[1]
            kind = kinds.get(int(index)) if index.isdigit() else None
            part = f"cell {index} ({kind})" if kind else f"cell {index}"
        elif first.startswith("stem"):
            part = "stem"
        else:
            part = "head"
        groups.setdefault(part, []).append(name)
    return groups


SPLIT_SHARE = 1 / 3
"""A top-level module holding more than this share of the nodes is split into its children."""


def module_groups(nodes: list[str]) -> dict[str, list[str]]:
    """``nodes`` by module of any network, in graph order (the parts of a baseline).

    A part is a top-level module of the network (``conv1``, ``layer2``, ``inception4a``,
    ``fc``); one that holds more than :data:`SPLIT_SHARE` of the nodes (a ``features``
    sequence) is split into its children (``features.3``, ``features.denseblock1``). Nodes
    of the top-level ``forward`` itself (flatten, pooling) are the ``head``.
    """
    paths = {name: name.strip("/").split("/")[:-1] for name in nodes}  # the last part names the op
    tops: dict[str, int] = {}
    for modules in paths.values():
        if modules:
            tops[modules[0]] = tops.get(modules[0], 0) + 1
    split = {top for top, count in tops.items() if count > SPLIT_SHARE * len(nodes)}
    groups: dict[str, list[str]] = {}
    for name, modules in paths.items():
        if not modules:
            part = "head"
        elif modules[0] in split and len(modules) > 1:
            top, sub = modules[0], modules[1]
            part = sub if sub.startswith(top + ".") else f"{top}.{sub}"
        else:
            part = modules[0]
        groups.setdefault(part, []).append(name)
    return groups


def _cell_kinds(card: ModelCard | None) -> dict[int, str]:
    """Cell index -> ``normal`` / ``reduction`` from the model card, when it has a genotype."""
    if card is None or card.genotype is None or not card.scale:
        return {}
    from search.space.scale import cell_plan, parse_scale

    try:
        plan = cell_plan(card.genotype, parse_scale(card.scale, card.image_size))
    except Exception:  # a card from another version: the parts keep plain names
        return {}
    return {i: "reduction" if reduction else "normal" for i, (_, _, reduction) in enumerate(plan)}


def logits(path: Path, x: np.ndarray, fixed_batch: int | None = None) -> np.ndarray:
    """The model's logits on ``x`` (ONNX Runtime, CPU)."""
    return run_session(open_session(path), x, fixed_batch)


def agreement(reference: np.ndarray, got: np.ndarray) -> float:
    """Top-1 agreement of two logit arrays."""
    return float((reference.argmax(1) == got.argmax(1)).mean())


def noise(reference: np.ndarray, got: np.ndarray) -> float:
    """Relative logit noise ``||got - ref||^2 / ||ref||^2`` (0 when identical)."""
    return float(((got - reference) ** 2).sum() / max(float((reference ** 2).sum()), 1e-12))


def measure_sensitivity(quantizer: QdqQuantizer, groups: dict[str, list[str]], x: np.ndarray,
                        reference: np.ndarray, labels: np.ndarray | None = None,
                        fixed_batch: int | None = None, progress: bool = True) -> list[PartCost]:
    """The cost of quantizing each part alone, most costly first.

    Ordered by logit noise: it is continuous, while one part's agreement on a few hundred
    images is mostly 1.000 or one image short of it.
    """
    from tqdm import tqdm

    costs = []
    target = quantizer.workdir / "part.int8.onnx"
    for part, nodes in tqdm(groups.items(), desc="int8 sensitivity", unit="part",
                            disable=not progress or None, leave=False):
        quantizer.write(target, only=nodes)
        got = logits(target, x, fixed_batch)
        accuracy = float((got.argmax(1) == labels).mean()) if labels is not None else None
        costs.append(PartCost(part, len(nodes), agreement(reference, got), noise(reference, got), accuracy))
    return sorted(costs, key=lambda c: (-c.noise, c.agreement))


def mixed_precision(quantizer: QdqQuantizer, groups: dict[str, list[str]], costs: list[PartCost],
                    x: np.ndarray, reference: np.ndarray, target: float, dst: Path,
                    fixed_batch: int | None = None, full_agreement: float | None = None,
                    log: Callable[[str], Any] = print) -> MixedResult:
    """Keep the costliest parts float, one more at a time, until agreement reaches ``target``.

    Writes the chosen model to ``dst``. When even one quantized part is too many, ``dst``
    is the model with every part float but the cheapest and ``reached`` is False.
    """
    if full_agreement is None:
        quantizer.write(dst)
        full_agreement = agreement(reference, logits(dst, x, fixed_batch))
    steps = [(0, full_agreement)]
    if full_agreement >= target:
        quantizer.write(dst)
        return MixedResult(target, full_agreement, full_agreement, [], [], steps, True)
    order = [c.part for c in costs]
    reached, last = False, full_agreement
    for k in range(1, len(order)):  # at least one part stays quantized
        excluded = [node for part in order[:k] for node in groups[part]]
        quantizer.write(dst, exclude=excluded)
        last = agreement(reference, logits(dst, x, fixed_batch))
        steps.append((k, last))
        log(f"  int8 with {k} part(s) float ({', '.join(order[:k])}): agreement {last:.3f}")
        if last >= target:
            reached = True
            break
    kept = order[:steps[-1][0]]
    return MixedResult(target, full_agreement, last, kept,
                       [node for part in kept for node in groups[part]], steps, reached)


# --- the table and the chart ----------------------------------------------------------------


def sensitivity_rows(costs: list[PartCost]) -> list[dict[str, Any]]:
    """The costs as plain rows (most costly first)."""
    return [{key: (round(value, 6) if isinstance(value, float) else value)
             for key, value in asdict(c).items()} for c in costs]


def sensitivity_csv(costs: list[PartCost]) -> str:
    """CSV text of :func:`sensitivity_rows`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["part", "nodes", "agreement", "noise", "accuracy"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(sensitivity_rows(costs))
    return out.getvalue()


def sensitivity_markdown(costs: list[PartCost], fp32_accuracy: float | None = None,
                         float_parts: list[str] | None = None) -> str:
    """A Markdown table: each part quantized alone, and whether mixed precision kept it float."""
    kept = set(float_parts or [])
    acc = fp32_accuracy is not None and any(c.accuracy is not None for c in costs)
    head = ("| part | nodes | top-1 agreement | logit noise |" + (" accuracy |" if acc else "")
            + " kept float |")
    lines = [head, "| --- | ---: | ---: | ---: |" + (" ---: |" if acc else "") + " :---: |"]
    for c in costs:
        cell = (f" {c.accuracy:.3f} (fp32 {fp32_accuracy:.3f}) |" if acc and c.accuracy is not None
                else (" |" if acc else ""))
        lines.append(f"| {c.part} | {c.nodes} | {c.agreement:.3f} | {c.noise:.2e} |{cell}"
                     f" {'yes' if c.part in kept else ''} |")
    return "\n".join(lines) + "\n"


def sensitivity_chart(costs: list[PartCost], path: Path, title: str,
                      float_parts: list[str] | None = None) -> None:
    """A bar chart of each part's logit noise (log scale) with its agreement, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = set(float_parts or [])
    ordered = list(reversed(costs))  # most costly at the top
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(ordered) + 1.4))
    colours = ["#d62728" if c.part in kept else "#1f77b4" for c in ordered]
    ax.barh([c.part for c in ordered], [max(c.noise, 1e-9) for c in ordered], color=colours)
    ax.set_xscale("log")
    for i, c in enumerate(ordered):
        ax.text(max(c.noise, 1e-9), i, f"  {c.agreement:.3f}", va="center", fontsize=8)
    ax.set_xlabel("relative logit noise when only this part is int8 (label: top-1 agreement with fp32)")
    ax.set_title(title + ("  (red: kept float)" if kept else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
