"""Automatic N@F: the largest scale of a genotype, or width of a baseline, within a latency budget.

A searched cell is stacked N times per stage with F filters (NASNet's N@F); a baseline has a
width multiplier. Both are scaled the same way: latency is found on a grid and the largest
model that meets the budget is kept.

Genotype grid: for each N in ``cells`` (default 1 to 6), F runs over the multiples of
``(B + 1) * 4`` (24 for 5-block cells, the widths that build exactly; from 48 up to
``max_filters``; every step up to 16 channels per op, then steps of about an eighth). Latency
is not monotone in F on a CPU (a per-op width that fills the vector blocks of oneDNN's kernels
runs faster than a narrower odd one), so each N is swept upwards until a model takes
:data:`STOP_FACTOR` times the budget, and a larger N is not tried once even the narrowest F
of an N misses the budget. The points at the budget's edge are then timed again in
interleaved rounds (:meth:`_Grid.confirm`), so one noisy measurement does not decide. Of the
per-N maxima the one with the most multiply-accumulates wins; among those within
:data:`NEAR_LARGEST` of it, the one whose F/N lies nearest NASNet's own ratios
(:data:`NASNET_RATIOS`: the CIFAR models 6@768 and 7@2304, the ImageNet models Mobile 4@1056
and Large 6@4032) is preferred, so a tie between deep-and-narrow and shallow-and-wide goes
the way the paper built its networks. :func:`choose` is that rule as a pure function.

Baseline grid: a family with a continuous width multiplier is swept in steps of
:data:`WIDTH_STEP` from the smallest width its catalogue allows; a family with fixed widths
(ShuffleNetV2) tries each; a family without one is measured once.

Latency is measured with :func:`search.evaluation.latency.measure_module` (the search's own
path: export at batch 1, the one timer, pinned threads), or predicted with a latency
predictor (``search.latency fit``); a prediction at another N@F than the predictor was
fitted on is an extrapolation and is marked so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from search.core.errors import NasdeployError
from search.evaluation.latency import DeploymentCost, LatencySettings, measure_module
from search.space.genotype import Genotype
from search.space.scale import Scale, estimate_size, layout_for, min_filters, parse_scale

DEFAULT_CELLS = (1, 2, 3, 4, 5, 6)
"""N tried by default (NASNet's variants use 4 to 7)."""
DEFAULT_MAX_FILTERS = 4032
"""Widest F tried by default (NASNet-A Large)."""
NEAR_LARGEST = 0.10
"""Scales within this share of the largest MACs count as equally large; the ratio decides."""
NASNET_RATIOS = {"cifar": (768 / 6, 2304 / 7), "imagenet": (1056 / 4, 4032 / 6)}
"""F/N of NASNet's own networks per macro layout: (smallest, largest)."""
WIDTH_STEP = 0.05
"""Grid of a continuous width multiplier."""
STOP_FACTOR = 3.0
"""A sweep over widths stops at the first model slower than this times the budget."""
CONFIRM_ROUNDS = 3
"""Interleaved rounds the points at the budget's edge are timed again (measured latency only)."""


@dataclass(frozen=True)
class ScalePoint:
    """One scale and its cost.

    Attributes:
        scale: ``N@F`` for a genotype, ``x<width>`` for a baseline (``x1`` without one).
        latency_ms: batch-1 latency (median; predicted when ``source`` says so).
        source: ``measured``, ``predicted`` (at the predictor's own scale) or ``extrapolated``.
    """

    scale: str
    latency_ms: float
    macs: int
    params: int
    feasible: bool
    source: str
    num_cells: int | None = None
    filters: int | None = None
    width_mult: float | None = None
    latency_p90_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        """F/N, or ``None`` for a baseline."""
        return None if self.num_cells is None or self.filters is None else self.filters / self.num_cells


@dataclass
class ScaleResult:
    """Every scale tried, the one chosen and how."""

    subject: str
    kind: str
    budget_ms: float
    image_size: int
    num_classes: int
    device: str
    points: list[ScalePoint] = field(default_factory=list)
    chosen: ScalePoint | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "kind": self.kind, "budget_ms": self.budget_ms,
                "image_size": self.image_size, "num_classes": self.num_classes, "device": self.device,
                "chosen": None if self.chosen is None else asdict(self.chosen),
                "points": [asdict(p) for p in self.points]}

    def metadata(self) -> dict[str, Any]:
        """What a genotype file records under ``metadata.scale`` (``search.train --variant auto``)."""
        if self.chosen is None:
            raise NasdeployError("no scale meets the budget; nothing to record")
        c = self.chosen
        return {"variant": c.scale, "image_size": self.image_size, "num_classes": self.num_classes,
                "budget_ms": self.budget_ms, "latency_ms": round(c.latency_ms, 4), "macs": c.macs,
                "params": c.params, "source": c.source, "device": self.device,
                "grid": [{"scale": p.scale, "latency_ms": round(p.latency_ms, 4), "macs": p.macs,
                          "feasible": p.feasible} for p in self.points]}


def _log_distance(ratio: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if low <= ratio <= high:
        return 0.0
    return abs(math.log(ratio / (low if ratio < low else high)))


def choose(points: list[ScalePoint], layout: str = "cifar", near: float = NEAR_LARGEST) -> ScalePoint | None:
    """The largest feasible point: most MACs; within ``near`` of that, F/N nearest NASNet's ratios
    for ``layout`` (then more MACs). ``None`` when no point is feasible."""
    feasible = [p for p in points if p.feasible]
    if not feasible:
        return None
    largest = max(p.macs for p in feasible)
    close = [p for p in feasible if p.macs >= (1.0 - near) * largest]
    bounds = NASNET_RATIOS.get(layout, NASNET_RATIOS["cifar"])
    return min(close, key=lambda p: (_log_distance(p.ratio, bounds) if p.ratio else 0.0, -p.macs))


def filter_steps(lowest: int, highest: int) -> list[int]:
    """Multiples k of the F step to try, from ``lowest`` to ``highest``: every k up to 16 (per-op
    widths up to 16 channels, where one channel more changes the kernels used), then steps of
    about an eighth, so a sweep to NASNet-A Large's F=4032 takes about 40 points, not 168."""
    ks, k = [], lowest
    while k <= highest:
        ks.append(k)
        k += 1 if k < 16 else max(1, k // 8)
    return ks


Cost = Callable[[Any], ScalePoint]


class _Grid:
    """Costs of a grid, each point found once, reported to ``log`` as it is found."""

    def __init__(self, cost: Cost, budget_ms: float, log: Callable[[str], None]):
        self.cost, self.budget_ms, self.log = cost, budget_ms, log
        self.points: dict[Any, ScalePoint] = {}

    def __call__(self, key: Any) -> ScalePoint:
        if key not in self.points:
            point = self.cost(key)
            self.points[key] = point
            mark = "within" if point.feasible else "over"
            self.log(f"  {point.scale:>9s}: {point.latency_ms:8.3f} ms ({point.source}), "
                     f"{point.macs / 1e6:8.1f} M MACs, {point.params / 1e6:6.2f} M params: {mark} budget")
        return self.points[key]

    def frontier(self) -> list[Any]:
        """Keys that decide the choice: per group (N, or the one baseline), the largest feasible
        point and the smallest infeasible one above it."""
        groups: dict[Any, list[tuple[Any, ScalePoint]]] = {}
        for key, point in self.points.items():
            groups.setdefault(point.num_cells, []).append((key, point))
        keys = []
        for items in groups.values():
            items.sort(key=lambda item: item[1].macs)
            feasible = [key for key, point in items if point.feasible]
            over = [key for key, point in items if not point.feasible and
                    (not feasible or point.macs > self.points[feasible[-1]].macs)]
            keys += feasible[-1:] + over[:1]
        return keys

    def confirm(self, build: Callable[[Any], tuple[Any, int, int]], settings: LatencySettings,
                image_size: int,
                *, rounds: int, log: Callable[[str], None]) -> None:
        """Time the frontier again, the models taken in turn for ``rounds`` rounds so a change in
        the host's load hits them alike; each keeps the median of its round medians. One noisy
        first measurement then cannot decide the choice. ONNX Runtime devices only."""
        keys = self.frontier()
        if rounds < 1 or len(keys) < 2 or settings.device == "tensorrt":
            return
        import tempfile
        from pathlib import Path

        from search.evaluation.latency import export_deployment_model
        from search.runtime.repeatable import interleaved_medians

        log(f"timing the {len(keys)} points at the budget's edge again, interleaved, {rounds} rounds:")
        with tempfile.TemporaryDirectory(prefix="nasdeploy-scale-") as tmp:
            paths = {}
            for i, key in enumerate(keys):
                model = build(key)[0]
                paths[key] = export_deployment_model(model, Path(tmp) / f"m{i}.onnx", image_size)
            medians = interleaved_medians(paths, rounds=rounds, device=settings.device,
                                          threads=settings.threads,
                                          warmup=settings.warmup, repeats=settings.repeats,
                                          max_time_s=settings.max_time_s)
        for key, seen in medians.items():
            old = self.points[key]
            latency = float(sorted(seen)[len(seen) // 2])
            self.points[key] = replace(old, latency_ms=latency, feasible=latency <= self.budget_ms,
                                       source=f"measured, {rounds} rounds")
            self.log(f"  {old.scale:>9s}: {latency:8.3f} ms (was {old.latency_ms:.3f}): "
                     f"{'within' if latency <= self.budget_ms else 'over'} budget")

    def sweep(self, keys: Any) -> int:
        """Measure ``keys`` (growing models) in order until one takes more than
        :data:`STOP_FACTOR` times the budget; return how many met the budget. Latency is not
        monotone in width (oneDNN's kernels favour channel counts that fill its vector blocks:
        NASNet-A at 1@144 ran in 0.55 ms here and at 1@120 in 0.80 ms), so the sweep goes past
        the first point over the budget instead of bisecting."""
        feasible = 0
        for key in keys:
            point = self(key)
            feasible += point.feasible
            if point.latency_ms > STOP_FACTOR * self.budget_ms:
                break
        return feasible


def _point(cost: DeploymentCost, budget_ms: float, scale: str, source: str, **where: Any) -> ScalePoint:
    p90 = cost.latency_p90_ms if math.isfinite(cost.latency_p90_ms) else None
    return ScalePoint(scale, cost.latency_ms, cost.macs, cost.params, cost.latency_ms <= budget_ms, source,
                      latency_p90_ms=p90, **where)


def scale_genotype(genotype: Genotype, budget_ms: float, settings: LatencySettings, *,
                   cells: tuple[int, ...] = DEFAULT_CELLS, max_filters: int = DEFAULT_MAX_FILTERS,
                   predictor: Any = None, subject: str = "genotype", confirm_rounds: int = CONFIRM_ROUNDS,
                   log: Callable[[str], None] = lambda line: None) -> ScaleResult:
    """The largest N@F of ``genotype`` within ``budget_ms`` on ``settings``' device and image size.

    Raises:
        NasdeployError: a grid that cannot be built (F below the narrowest network), a
            predictor for another image size, class count, block count or device.
    """
    blocks = genotype.num_blocks
    step = 4 * (blocks + 1)
    lowest = min_filters(blocks) // step
    highest = max_filters // step
    if highest < lowest:
        raise NasdeployError(f"--max-filters {max_filters} is below the narrowest network of {blocks}-block "
                             f"cells (F={lowest * step})")
    image_size = settings.image_size or 32
    layout = layout_for(image_size)
    fitted: Scale | None = None
    if predictor is not None:
        fitted = predictor.target.scale()
        predictor.check_target(fitted.notation, image_size, settings.num_classes, blocks)
        predictor.check_device(settings.device, settings.threads)

    def build(key: tuple[int, int]) -> tuple[Any, int, int]:
        from search.evaluation.latency import build_deployment_model

        return build_deployment_model(genotype, f"{key[0]}@{key[1]}", settings.num_classes, image_size)

    def cost(key: tuple[int, int]) -> ScalePoint:
        n, f = key
        notation = f"{n}@{f}"
        if predictor is None:
            measured = measure_module(lambda: build(key), settings, image_size)
            return _point(measured, budget_ms, notation, "measured", num_cells=n, filters=f)
        return _predicted(genotype, parse_scale(notation, image_size), predictor, fitted, budget_ms,
                          settings.num_classes)

    grid = _Grid(cost, budget_ms, log)
    result = ScaleResult(subject, "genotype", budget_ms, image_size, settings.num_classes,
                         _device_text(settings, predictor))
    for n in sorted(set(cells)):
        log(f"N={n}:")
        if not grid.sweep((n, k * step) for k in filter_steps(lowest, highest)):
            break  # a deeper network of the narrowest width is slower still
    if predictor is None:
        grid.confirm(build, settings, image_size, rounds=confirm_rounds, log=log)
    result.points = sorted(grid.points.values(), key=lambda p: (p.num_cells or 0, p.filters or 0))
    result.chosen = choose(result.points, layout)
    return result


def _predicted(genotype: Genotype, scale: Scale, predictor: Any, fitted: Scale | None, budget_ms: float,
               num_classes: int) -> ScalePoint:
    from search.evaluation.predictor import FEATURE_NAMES, features

    latency = predictor.predict_at(genotype, scale)
    macs = int(features(genotype, scale)[FEATURE_NAMES.index("total_macs")])
    params = estimate_size(genotype, scale, num_classes).params
    same = fitted is not None and fitted.notation == scale.notation
    return ScalePoint(scale.notation, latency, macs, params, 0 < latency <= budget_ms,
                      "predicted" if same else "extrapolated", num_cells=scale.num_cells,
                      filters=scale.filters)


def scale_baseline(name: str, budget_ms: float, settings: LatencySettings, *,
                   confirm_rounds: int = CONFIRM_ROUNDS,
                   log: Callable[[str], None] = lambda line: None) -> ScaleResult:
    """The widest ``name`` baseline within ``budget_ms`` (measured; predictors model cells only)."""
    from search.nn.baselines import build_baseline
    from search.nn.cost import count_macs, count_params
    from search.space.baselines import WIDTH_LIMITS, get_baseline

    entry = get_baseline(name)
    image_size = settings.image_size or 32
    if image_size < entry.min_size:
        raise NasdeployError(f"{entry.name} needs inputs of at least {entry.min_size} px, got {image_size}")

    def build(width: float | None) -> tuple[Any, int, int]:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_baseline(entry.name, settings.num_classes, image_size, width).eval()
        return model, count_macs(model, image_size), count_params(model)

    def cost(width: float | None) -> ScalePoint:
        label = "x1" if width is None else f"x{width:g}"
        measured = measure_module(lambda: build(width), settings, image_size)
        return _point(measured, budget_ms, label, "measured",
                      width_mult=width)

    grid = _Grid(cost, budget_ms, log)
    result = ScaleResult(entry.name, "baseline", budget_ms, image_size, settings.num_classes,
                         _device_text(settings, None))
    if not entry.has_width:
        grid(None)
    elif entry.widths:  # fixed widths, narrowest first
        for width in sorted(entry.widths):
            if not grid(width).feasible:
                break
    else:
        low = math.ceil(WIDTH_LIMITS[0] / WIDTH_STEP)
        high = math.floor(WIDTH_LIMITS[1] / WIDTH_STEP)
        grid.sweep(round(k * WIDTH_STEP, 4) for k in range(low, high + 1))
    grid.confirm(build, settings, image_size, rounds=confirm_rounds, log=log)
    result.points = sorted(grid.points.values(), key=lambda p: p.width_mult or 0.0)
    feasible = [p for p in result.points if p.feasible]
    result.chosen = max(feasible, key=lambda p: (p.width_mult or 0.0, p.macs)) if feasible else None
    return result


def _device_text(settings: LatencySettings, predictor: Any) -> str:
    if predictor is not None:
        return f"predicted for {predictor.device_text()}"
    from search.runtime.host import cpu_model

    if settings.device == "cpu":
        threads = settings.threads if settings.threads is not None else "all"
        return f"{cpu_model()} (ONNX Runtime CPU, {threads} thread(s), fp32)"
    return f"{settings.device} (measured here)"


def table_text(result: ScaleResult) -> str:
    """The grid as a Markdown table, the chosen row marked."""
    lines = ["| scale | latency ms | MACs (M) | params (M) | within budget | source |",
             "| --- | ---: | ---: | ---: | :---: | --- |"]
    for p in result.points:
        mark = " **chosen**" if p is result.chosen else ""
        lines.append(f"| {p.scale}{mark} | {p.latency_ms:.3f} | {p.macs / 1e6:.1f} | {p.params / 1e6:.3f} | "
                     f"{'yes' if p.feasible else 'no'} | {p.source} |")
    return "\n".join(lines)
