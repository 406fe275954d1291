"""Run artifacts: best genotype, Pareto front, plots and a human summary.

Everything is derived from the trial records and written atomically, so the report can
be rebuilt at any time (also after an interrupted run) from ``trials.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from search.core.atomic import atomic_path, atomic_write_text
from search.core.rundir import (
    GENOTYPE_NAME,
    HISTORY_NAME,
    PARETO_JSON_NAME,
    PARETO_PNG_NAME,
    REWARD_PNG_NAME,
    SUMMARY_NAME,
)
from search.space.genotype import save_genotype
from search.space.scale import parse_scale
from search.strategies.base import Strategy, strategy_metrics
from search.trials.history import TrialRecord
from search.trials.selection import Selection, measured, pareto_front, select_best


@dataclass
class ReportContext:
    """Facts about the run that the records do not carry.

    ``strategy``, ``latency_device`` and ``target`` (see :func:`describe_target`) name the
    run in the plot titles; left empty, they are read from ``settings["config"]`` (and the
    strategy from the records).
    """

    latency_budget_ms: float
    dataset: str = ""
    macs_budget: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    strategy: str = ""
    latency_device: str = ""
    target: str = ""


def _point(r: TrialRecord) -> dict[str, Any]:
    return {"trial": r.trial, "accuracy": r.accuracy, "latency_ms": r.latency_ms,
            "macs": r.macs, "params": r.params, "reward": r.reward, "feasible": r.feasible,
            "genotype": r.genotype}


def write_pareto_json(path: Path, records: Sequence[TrialRecord], ctx: ReportContext) -> None:
    data = {"latency_budget_ms": ctx.latency_budget_ms, "macs_budget": ctx.macs_budget,
            "objectives": {"accuracy": "maximize", "latency_ms": "minimize"},
            "candidates": len(measured(records)),
            "front": [_point(r) for r in pareto_front(records)]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- plots

LABEL_ALL_MAX = 40
"""Up to this many drawn candidates every point carries its trial number; above it only
the Pareto front and the selected one do (the legend says so)."""

REWARD_METRICS = Strategy.metric_names
"""A strategy optimising anything else (NSGA-II: accuracy and latency) gets no reward plot."""

_FONT_PT = 7.0
_GAP_PT = 2.0
_STYLE = {  # category -> marker, colour, legend label
    "feasible": ("o", "tab:green", "meets budget"),
    "over": ("s", "tab:orange", "over budget"),
    "failed": ("X", "tab:red", "failed / diverged (bottom band)"),
}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels


def describe_target(variant: str, image_size: int | None = None) -> str:
    """The deployment model whose latency counts, e.g. ``cifar (6@768, 32 px)``."""
    scale = parse_scale(variant, image_size)
    size = f"{scale.image_size} px"
    return f"{scale.name} ({scale.notation}, {size})" if scale.name else f"{scale.notation} ({size})"


def _facts(records: Sequence[TrialRecord], ctx: ReportContext) -> tuple[str, str, str]:
    """Strategy, latency device and target: from ``ctx``, else its settings, else records."""
    config = ctx.settings.get("config")
    config = config if isinstance(config, dict) else {}
    strategy = ctx.strategy or str(config.get("strategy") or "") or \
        (records[0].strategy if records else "")
    device = ctx.latency_device or str(config.get("latency_device") or "")
    target = ctx.target or str(config.get("target_variant") or "")
    return strategy or "?", device or "?", target or "?"


def _oneshot(ctx: ReportContext) -> bool:
    """Whether the run scored its candidates with the one-shot supernet (else proxy children)."""
    config = ctx.settings.get("config")
    return isinstance(config, dict) and config.get("evaluator") == "oneshot"


def accuracy_kind(ctx: ReportContext) -> str:
    """What the run's accuracies are: a proxy child's or inherited from the one-shot supernet."""
    if _oneshot(ctx):
        return "validation accuracy with weights inherited from the one-shot supernet"
    return "validation accuracy of the proxy child"


def run_strategy(records: Sequence[TrialRecord], ctx: ReportContext) -> str:
    """The strategy that produced the run (``?`` when nothing says)."""
    return _facts(records, ctx)[0]


def _title(what: str, records: Sequence[TrialRecord], ctx: ReportContext) -> str:
    strategy, device, target = _facts(records, ctx)
    budget = f"budget {ctx.latency_budget_ms:g} ms"
    if ctx.macs_budget is not None:
        budget += f" and {ctx.macs_budget / 1e6:g} M MACs"
    on = f" on {ctx.dataset}" if ctx.dataset else ""
    where = " ".join(part for part, known in ((f"of target {target}", target != "?"),
                                               (f"on {device}", device != "?")) if known)
    count = f"{len(records)} trial" + ("" if len(records) == 1 else "s")
    return (f"{strategy} search{on}: {what} ({count})\n"
            f"latency {where + ', ' if where else ''}{budget}")


def _category(r: TrialRecord) -> str:
    if r.status != "ok":
        return "failed"
    return "feasible" if r.feasible else "over"


def _span(values: Sequence[float], minimum: float) -> tuple[float, float, float]:
    """``lo, hi, hi - lo`` of the values, widened around the middle to ``minimum``."""
    lo, hi = min(values), max(values)
    if hi - lo < minimum:
        middle = (lo + hi) / 2
        lo, hi = middle - minimum / 2, middle + minimum / 2
    return lo, hi, hi - lo


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(ax: Axes, items: Sequence[tuple[float, float, str, float]],
                  obstacles: list[Box]) -> None:
    """Write each ``(x, y, text, marker radius in pt)`` beside its point, hiding the least.

    Greedy: for every label try eight spots around the point (then eight farther ones,
    with a leader line) and take the first free one, else the least covered. Text sizes
    are estimated from the font size, so no draw is needed. Axis limits must be final.
    """
    px_per_pt = ax.figure.dpi / 72
    frame = ax.bbox.extents
    placed: list[Box] = []
    for x, y, text, radius in items:
        px, py = ax.transData.transform((x, y))
        w = 0.62 * _FONT_PT * px_per_pt * len(text) + 2
        h = 1.15 * _FONT_PT * px_per_pt
        near = (radius / 2 + _GAP_PT) * px_per_pt
        best: tuple[float, Box, bool] | None = None
        for ring, gap in enumerate((near, near + 3 * _GAP_PT * px_per_pt + h)):
            spots = [(px + gap, py + gap / 2), (px + gap, py - gap / 2 - h),
                     (px - gap - w, py + gap / 2), (px - gap - w, py - gap / 2 - h),
                     (px + gap + 2, py - h / 2), (px - gap - w - 2, py - h / 2),
                     (px - w / 2, py + gap + 2), (px - w / 2, py - gap - h - 2)]
            for x0, y0 in spots:
                box = (x0, y0, x0 + w, y0 + h)
                outside = (max(0.0, frame[0] - box[0]) + max(0.0, box[2] - frame[2])
                           + max(0.0, frame[1] - box[1]) + max(0.0, box[3] - frame[3]))
                score = sum(_overlap(box, o) for o in (*obstacles, *placed)) + 50 * outside * h
                score += ring * 0.25 * w * h  # a near spot wins unless it is covered
                if best is None or score < best[0]:
                    best = (score, box, ring > 0)
                if score == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        _, box, far = best
        placed.append(box)
        offset = ((box[0] - px) / px_per_pt, (box[1] - py) / px_per_pt)
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha="left",
                    va="bottom", fontsize=_FONT_PT, color="0.15", gid=f"trial-label:{text}",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.55",
                                "shrinkA": 0, "shrinkB": 2} if far else None)


def _marker_boxes(ax: Axes, xs: Sequence[float], ys: Sequence[float],
                  radius_pt: float) -> list[Box]:
    r = radius_pt * ax.figure.dpi / 72
    return [(px - r, py - r, px + r, py + r)
            for px, py in ax.transData.transform(list(zip(xs, ys, strict=True)))] if xs else []


def _line_boxes(ax: Axes, xs: Sequence[float], ys: Sequence[float], step: str | None = None
                ) -> list[Box]:
    """Small boxes along a polyline (a ``"post"`` step line if ``step``), as obstacles."""
    if step and len(xs) > 1:
        xs = [v for a, b in zip(xs[:-1], xs[1:], strict=True) for v in (a, b)] + [xs[-1]]
        ys = [v for a in ys[:-1] for v in (a, a)] + [ys[-1]]
    pixels = ax.transData.transform(list(zip(xs, ys, strict=True))) if xs else []
    boxes: list[Box] = []
    for (x0, y0), (x1, y1) in zip(pixels[:-1], pixels[1:], strict=True):
        n = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) / 3))
        for i in range(n + 1):
            x, y = x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n
            boxes.append((x - 1, y - 1, x + 1, y + 1))
    return boxes


def _failed_band(ax: Axes, lo: float, hi: float, span: float, has_failed: bool) -> float:
    """Set the y limits; with failed candidates add a shaded band below the data for them.

    Returns the y of the band's centre (where failed candidates are drawn).
    """
    top = hi + 0.08 * span
    if not has_failed:
        ax.set_ylim(lo - 0.06 * span, top)
        return lo
    edge = lo - 0.06 * span
    bottom = edge - 0.12 * span
    ax.set_ylim(bottom, top)
    ax.axhspan(bottom, edge, color="tab:red", alpha=0.07, lw=0, zorder=0)
    ax.set_yticks([t for t in MaxNLocator(nbins=6).tick_values(lo, hi) if edge <= t <= top])
    return (bottom + edge) / 2


def _legend(ax: Axes, notes: Sequence[str | tuple[Artist, str]] = ()) -> None:
    """The legend right of the axes (never over a point); text notes get no symbol."""
    handles, labels = ax.get_legend_handles_labels()
    for note in notes:
        handle, label = (Line2D([], [], lw=0, marker=""), note) if isinstance(note, str) else note
        handles.append(handle)
        labels.append(label)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              fontsize=8, handlelength=1.6, frameon=False)


def _repeats(records: Sequence[TrialRecord]) -> Counter[int]:
    return Counter(r.duplicate_of for r in records if r.duplicate_of is not None)


def _latency_limits(ax: Axes, latencies: Sequence[float], budget: float) -> bool:
    """Set the x limits; whether the budget lies close enough to the data to be drawn."""
    lo, hi, span = _span(latencies, 0.1 * max(latencies) or 1.0)
    near = lo - 1.5 * span <= budget <= hi + 1.5 * span
    if near:
        lo, hi = min(lo, budget), max(hi, budget)
        span = hi - lo
    ax.set_xlim(lo - 0.07 * span, hi + 0.07 * span)
    return near


def _draw_budget(ax: Axes, budget: float, near: bool) -> None:
    label = f"budget {budget:g} ms"
    if near:
        ax.axvline(budget, color="tab:red", ls="--", lw=1.2, zorder=1, label=label)
        ax.annotate(label, (budget, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8,
                    color="tab:red")
        return
    right = budget > ax.get_xlim()[1]
    ax.annotate(f"{label} →" if right else f"← {label}", (1.0 if right else 0.0, 1.0),
                xycoords="axes fraction", xytext=(0, 2), textcoords="offset points",
                ha="right" if right else "left", va="bottom", fontsize=8, color="tab:red")


def pareto_figure(records: Sequence[TrialRecord], ctx: ReportContext,
                  best: Selection | None) -> Figure:
    """Accuracy vs latency: every candidate (by outcome), the front, budget and selection."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    ax.set_title(_title("accuracy vs latency", records, ctx), fontsize=10, pad=16)
    ax.set_xlabel("latency of the deployment model (ms, batch 1)")
    ax.set_ylabel("validation accuracy (one-shot supernet)" if _oneshot(ctx)
                  else "validation accuracy (proxy child)")
    ax.grid(alpha=0.3)
    points = measured(records)
    failed = [r for r in records
              if r.status != "ok" and r.duplicate_of is None and r.latency_ms is not None]
    untimed = sum(r.latency_ms is None and r.duplicate_of is None for r in records)
    drawn = [*points, *failed]
    if not drawn:
        ax.text(0.5, 0.5, "no candidate could be timed", transform=ax.transAxes,
                ha="center", va="center")
        ax.axvline(ctx.latency_budget_ms, color="tab:red", ls="--", lw=1.2,
                   label=f"budget {ctx.latency_budget_ms:g} ms")
        _legend(ax, [f"{untimed} failed before timing"] if untimed else [])
        return fig
    near = _latency_limits(ax, [r.latency_ms for r in drawn], ctx.latency_budget_ms)
    accs = [r.accuracy for r in points] or [0.0, 1.0]
    lo, hi, span = _span(accs, 0.02)
    floor = _failed_band(ax, lo, hi, span, bool(failed))
    y = {r.trial: (r.accuracy if r.status == "ok" else floor) for r in drawn}
    for category in ("feasible", "over", "failed"):
        sel = [r for r in drawn if _category(r) == category]
        marker, colour, label = _STYLE[category]
        if sel:
            ax.scatter([r.latency_ms for r in sel], [y[r.trial] for r in sel], s=30,
                       marker=marker, color=colour, alpha=0.85, edgecolor="white",
                       linewidth=0.4, zorder=3, label=f"{label}: {len(sel)}")
    front = pareto_front(records)
    if front:
        ax.step([r.latency_ms for r in front], [r.accuracy for r in front], where="post",
                color="tab:blue", lw=1.3, zorder=2, label=f"Pareto front: {len(front)}")
    _draw_budget(ax, ctx.latency_budget_ms, near)
    chosen = best.record if best is not None and best.record.trial in y else None
    if chosen is not None:
        ax.scatter([chosen.latency_ms], [y[chosen.trial]], marker="*", s=240, color="gold",
                   edgecolor="black", linewidth=0.8, zorder=5,
                   label=f"selected: trial {chosen.trial}")
    repeats = _repeats(records)
    wanted = drawn if len(drawn) <= LABEL_ALL_MAX else \
        [*([chosen] if chosen is not None else []), *front]
    items, done = [], set()
    for r in sorted(wanted, key=lambda r: (r is not chosen, r.trial)):
        if r.trial not in done:
            done.add(r.trial)
            times = repeats.get(r.trial, 0) + 1
            items.append((r.latency_ms, y[r.trial],
                          f"{r.trial}" + (f"×{times}" if times > 1 else ""), 16 if r is chosen else 6))
    obstacles = _marker_boxes(ax, [r.latency_ms for r in drawn], [y[r.trial] for r in drawn], 3.5)
    if chosen is not None:
        obstacles += _marker_boxes(ax, [chosen.latency_ms], [y[chosen.trial]], 8)
    obstacles += _line_boxes(ax, [r.latency_ms for r in front], [r.accuracy for r in front], "post")
    if near:
        obstacles += _line_boxes(ax, [ctx.latency_budget_ms] * 2, list(ax.get_ylim()))
    _place_labels(ax, items, obstacles)
    notes = ["numbers: trial" if len(wanted) == len(drawn) else
             f"numbers: trial (front and selected only, {len(drawn)} points)"]
    if any(repeats.get(r.trial) for r in wanted):
        notes.append("×k: proposed k times")
    if untimed:
        notes.append(f"+{untimed} failed before timing (not drawn)")
    _legend(ax, notes)
    return fig


def reward_figure(records: Sequence[TrialRecord], ctx: ReportContext,
                  best: Selection | None) -> Figure:
    """MnasNet reward per trial (by outcome), the best so far and the selected trial."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    ax.set_title(_title("MnasNet reward per trial", records, ctx), fontsize=10)
    ax.set_xlabel("trial")
    ax.set_ylabel("MnasNet reward")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if not records:
        _legend(ax)
        return fig
    ax.set_xlim(min(r.trial for r in records) - 0.7, max(r.trial for r in records) + 0.7)
    ok = [r.reward for r in records if r.status == "ok"] or [0.0, 1.0]
    lo, hi, span = _span(ok, 0.02)
    floor = _failed_band(ax, lo, hi, span, any(r.status != "ok" for r in records))
    y = {r.trial: (r.reward if r.status == "ok" else floor) for r in records}
    for category in ("feasible", "over", "failed"):
        marker, colour, label = _STYLE[category]
        for repeat in (False, True):
            sel = [r for r in records
                   if _category(r) == category and (r.duplicate_of is not None) == repeat]
            if sel:
                ax.scatter([r.trial for r in sel], [y[r.trial] for r in sel], s=26, marker=marker,
                           zorder=3, linewidth=0.9 if repeat else 0.4,
                           color="none" if repeat else colour,
                           edgecolor=colour if repeat else "white",
                           label=None if repeat else f"{label}: {len(sel)}")
    trials, running, best_trial = [], [], None
    for r in records:
        if r.status == "ok" and (not running or r.reward > running[-1]):
            best_trial = r.trial
        if r.status == "ok" or running:
            trials.append(r.trial)
            running.append(max(r.reward, running[-1]) if running else r.reward)
    if running:
        ax.step(trials, running, where="post", color="tab:blue", lw=1.4, zorder=2,
                label=f"best reward so far (trial {best_trial})")
    if best is not None and best.record.trial in y:
        r = best.record
        ax.scatter([r.trial], [y[r.trial]], marker="*", s=220, color="gold", edgecolor="black",
                   linewidth=0.8, zorder=5, label=f"selected: trial {r.trial}")
    reward = ctx.settings.get("reward")
    notes: list[str | tuple[Artist, str]] = []
    repeated = sum(r.duplicate_of is not None for r in records)
    if repeated:
        notes.append((Line2D([], [], lw=0, marker="o", markerfacecolor="none",
                             markeredgecolor="0.35"), f"hollow: repeated genotype: {repeated}"))
    notes.append("reward = acc·(latency / budget)^w")
    if isinstance(reward, dict) and "alpha" in reward:
        notes.append(f"w = {reward['alpha']:g} within budget, {reward['beta']:g} over")
    _legend(ax, notes)
    return fig


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_pareto(path: Path, records: Sequence[TrialRecord], ctx: ReportContext,
                best: Selection | None) -> None:
    """Write :func:`pareto_figure` as a PNG."""
    _save(pareto_figure(records, ctx, best), path)


def plot_rewards(path: Path, records: Sequence[TrialRecord], ctx: ReportContext,
                 best: Selection | None = None) -> None:
    """Write :func:`reward_figure` as a PNG."""
    _save(reward_figure(records, ctx, best), path)


def best_metadata(best: Selection, ctx: ReportContext,
                  search_choice: Selection | None = None) -> dict[str, Any]:
    """The ``metadata`` stored with the selected genotype.

    ``accuracy`` and ``reward`` are the search's scores; a candidate re-ranked at higher
    fidelity adds ``rerank_accuracy``, ``rerank_reward`` and ``rerank_seeds``, and
    ``search_choice`` (the trial the search alone selected) with ``rerank_changed_winner``.
    """
    r = best.record
    meta = {"accuracy": r.accuracy, "accuracy_kind": accuracy_kind(ctx),
            "latency_ms": r.latency_ms, "macs": r.macs, "params": r.params,
            "reward": r.reward, "feasible": best.feasible, "selection": best.note,
            "trial": r.trial, "strategy": r.strategy, "dataset": ctx.dataset,
            "latency_budget_ms": ctx.latency_budget_ms, "macs_budget": ctx.macs_budget}
    if r.rerank_accuracy is not None:
        meta.update(rerank_accuracy=r.rerank_accuracy, rerank_reward=r.rerank_reward,
                    rerank_seeds=r.rerank_seeds)
    if best.reranked and search_choice is not None:
        meta.update(search_choice=search_choice.record.trial,
                    rerank_changed_winner=search_choice.record.trial != r.trial)
    meta["search"] = ctx.settings
    return meta


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _row(r: TrialRecord) -> str:
    return (f"| {r.trial} | {r.accuracy:.4f} | {_fmt(r.latency_ms, '.3f')} | "
            f"{_fmt(r.macs and r.macs / 1e6, '.1f')} | {_fmt(r.params and r.params / 1e6, '.3f')}"
            f" | {r.reward:.4f} | {'yes' if r.feasible else 'no'} |")


_HEADER = ("| trial | val acc | latency ms | MMACs | M params | reward | feasible |\n"
           "| ---: | ---: | ---: | ---: | ---: | ---: | :-: |")


def _cells_markdown(record: TrialRecord) -> list[str]:
    """The selected cells, one line per block (see :func:`search.space.draw.genotype_text`)."""
    from search.space.text import genotype_text

    return ["```", genotype_text(record.to_genotype()), "```"]


def _plots_note(records: Sequence[TrialRecord], ctx: ReportContext) -> str:
    strategy = run_strategy(records, ctx)
    note = f"{PARETO_PNG_NAME} (accuracy vs latency)"
    metrics = strategy_metrics(strategy)
    if metrics != REWARD_METRICS:
        return (f"{note}; no {REWARD_PNG_NAME}: {strategy} optimises "
                f"{' and '.join(metrics)}, not the MnasNet reward")
    return f"{note}, {REWARD_PNG_NAME} (MnasNet reward per trial)"


def _rerank_markdown(records: Sequence[TrialRecord], best: Selection | None) -> list[str]:
    """The candidates re-ranked at higher fidelity, best re-ranked reward first."""
    reranked = sorted((r for r in measured(records) if r.rerank_reward is not None),
                      key=lambda r: (-(r.rerank_reward or 0.0), r.trial))
    if not reranked:
        return []
    seeds = reranked[0].rerank_seeds or []
    plain = select_best(records, rerank=False)
    lines = ["## Re-ranked at higher fidelity", "",
             f"The best feasible candidates were trained again (longer, on more images, seeds "
             f"{', '.join(str(s) for s in seeds)}); the reward was recomputed with the mean accuracy.", ""]
    if best is not None and best.reranked and plain is not None:
        verdict = "changed the winner to" if plain.record.trial != best.record.trial else "kept"
        lines += [f"**Re-ranking {verdict} trial {best.record.trial}** (the search alone chose trial "
                  f"{plain.record.trial}).", ""]
    lines += ["| trial | search val acc | search reward | re-ranked val acc | re-ranked reward | feasible |",
              "| ---: | ---: | ---: | ---: | ---: | :-: |"]
    lines += [f"| {r.trial} | {r.accuracy:.4f} | {r.reward:.4f} | {_fmt(r.rerank_accuracy, '.4f')} | "
              f"{_fmt(r.rerank_reward, '.4f')} | {'yes' if r.feasible else 'no'} |" for r in reranked]
    return [*lines, ""]


def summary_markdown(records: Sequence[TrialRecord], ctx: ReportContext,
                     best: Selection | None) -> str:
    """The human summary of a run."""
    status = Counter(r.status for r in records)
    dupes = sum(r.duplicate_of is not None for r in records)
    lines = ["# Search summary", "",
             f"- trials: {len(records)} ({status.get('ok', 0)} ok, "
             f"{status.get('diverged', 0)} diverged, {status.get('failed', 0)} failed, "
             f"{dupes} repeated genotypes reused)",
             f"- dataset: {ctx.dataset}", f"- latency budget: {ctx.latency_budget_ms:g} ms",
             f"- plots: {_plots_note(records, ctx)}"]
    if ctx.macs_budget is not None:
        lines.append(f"- MAC budget: {ctx.macs_budget / 1e6:g} M")
    lines += [f"- search time: {sum(r.wall_time_s for r in records) / 60:.1f} min", ""]
    if best is None:
        lines += [f"**No candidate could be evaluated**; see the errors in {HISTORY_NAME}.", ""]
    else:
        lines += [f"## Selected genotype ({GENOTYPE_NAME})", "", f"**{best.note}.**", "",
                  _HEADER, _row(best.record), "", *_cells_markdown(best.record), ""]
    lines += _rerank_markdown(records, best)
    lines += ["## Pareto front (accuracy vs latency)", "", _HEADER,
              *[_row(r) for r in pareto_front(records)], "",
              "## Top 5 by reward", "", _HEADER,
              *[_row(r) for r in sorted(records, key=lambda r: -r.reward)
                if r.duplicate_of is None][:5], ""]
    errors = [r for r in records if r.status != "ok" and r.duplicate_of is None]
    if errors:
        lines += ["## Failed or diverged children", ""]
        lines += [f"- trial {r.trial}: {r.status}: {r.error}" for r in errors[:10]] + [""]
    if ctx.settings:
        lines += ["## Settings", "", "```json", json.dumps(ctx.settings, indent=1), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, records: Sequence[TrialRecord],
                 ctx: ReportContext) -> Selection | None:
    """Write genotype.json, pareto.json, pareto.png, reward.png and summary.md.

    A strategy that does not optimise the MnasNet reward (NSGA-II) gets no reward.png;
    one left from an earlier report is removed.
    """
    out = Path(run_dir)
    best = select_best(records)
    if best is not None:
        save_genotype(best.record.to_genotype(), out / GENOTYPE_NAME,
                      best_metadata(best, ctx, select_best(records, rerank=False)))
    write_pareto_json(out / PARETO_JSON_NAME, records, ctx)
    plot_pareto(out / PARETO_PNG_NAME, records, ctx, best)
    if strategy_metrics(run_strategy(records, ctx)) != REWARD_METRICS:
        (out / REWARD_PNG_NAME).unlink(missing_ok=True)
    else:
        plot_rewards(out / REWARD_PNG_NAME, records, ctx, best)
    atomic_write_text(out / SUMMARY_NAME, summary_markdown(records, ctx, best))
    return best
