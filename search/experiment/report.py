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

from matplotlib.figure import Figure

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
from search.trials.history import TrialRecord
from search.trials.selection import Selection, measured, pareto_front, select_best


@dataclass
class ReportContext:
    """Facts about the run that the records do not carry."""

    latency_budget_ms: float
    dataset: str = ""
    macs_budget: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)


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


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_pareto(path: Path, records: Sequence[TrialRecord], ctx: ReportContext,
                best: Selection | None) -> None:
    """Accuracy vs latency: all candidates, the Pareto front and the budget line."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    points = measured(records)
    for feasible, colour, label in ((True, "tab:green", "meets budget"),
                                    (False, "tab:gray", "over budget")):
        sel = [r for r in points if r.feasible == feasible]
        if sel:
            ax.scatter([r.latency_ms for r in sel], [r.accuracy for r in sel], s=22,
                       color=colour, alpha=0.75, label=label)
    front = pareto_front(records)
    if front:
        ax.step([r.latency_ms for r in front], [r.accuracy for r in front], where="post",
                color="tab:blue", lw=1.5, label="Pareto front")
    ax.axvline(ctx.latency_budget_ms, color="tab:red", ls="--",
               label=f"budget {ctx.latency_budget_ms:g} ms")
    if best is not None and best.record.latency_ms is not None:
        ax.scatter([best.record.latency_ms], [best.record.accuracy], marker="*", s=180,
                   color="gold", edgecolor="black", zorder=5, label="selected")
    ax.set_xlabel("latency of the deployment model (ms, batch 1)")
    ax.set_ylabel("validation accuracy (proxy child)")
    ax.set_title(f"accuracy vs latency ({len(points)} candidates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_rewards(path: Path, records: Sequence[TrialRecord]) -> None:
    """Reward per trial and the best reward so far."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    trials = [r.trial for r in records]
    rewards = [r.reward for r in records]
    best, running = [], float("-inf")
    for value in rewards:
        running = max(running, value)
        best.append(running)
    ax.scatter(trials, rewards, s=14, color="tab:blue", alpha=0.6, label="reward")
    ax.plot(trials, best, color="tab:orange", lw=2, drawstyle="steps-post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("MnasNet reward")
    ax.set_title("reward over trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def best_metadata(best: Selection, ctx: ReportContext) -> dict[str, Any]:
    """The ``metadata`` stored with the selected genotype."""
    r = best.record
    return {"accuracy": r.accuracy, "accuracy_kind": "validation accuracy of the proxy child",
            "latency_ms": r.latency_ms, "macs": r.macs, "params": r.params,
            "reward": r.reward, "feasible": best.feasible, "selection": best.note,
            "trial": r.trial, "strategy": r.strategy, "dataset": ctx.dataset,
            "latency_budget_ms": ctx.latency_budget_ms, "macs_budget": ctx.macs_budget,
            "search": ctx.settings}


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


def summary_markdown(records: Sequence[TrialRecord], ctx: ReportContext,
                     best: Selection | None) -> str:
    """The human summary of a run."""
    status = Counter(r.status for r in records)
    dupes = sum(r.duplicate_of is not None for r in records)
    lines = ["# Search summary", "",
             f"- trials: {len(records)} ({status.get('ok', 0)} ok, "
             f"{status.get('diverged', 0)} diverged, {status.get('failed', 0)} failed, "
             f"{dupes} repeated genotypes reused)",
             f"- dataset: {ctx.dataset}", f"- latency budget: {ctx.latency_budget_ms:g} ms"]
    if ctx.macs_budget is not None:
        lines.append(f"- MAC budget: {ctx.macs_budget / 1e6:g} M")
    lines += [f"- search time: {sum(r.wall_time_s for r in records) / 60:.1f} min", ""]
    if best is None:
        lines += [f"**No candidate could be evaluated**; see the errors in {HISTORY_NAME}.", ""]
    else:
        lines += [f"## Selected genotype ({GENOTYPE_NAME})", "", f"**{best.note}.**", "",
                  _HEADER, _row(best.record), "", *_cells_markdown(best.record), ""]
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
    """Write genotype.json, pareto.json, pareto.png, reward.png and summary.md."""
    out = Path(run_dir)
    best = select_best(records)
    if best is not None:
        save_genotype(best.record.to_genotype(), out / GENOTYPE_NAME, best_metadata(best, ctx))
    write_pareto_json(out / PARETO_JSON_NAME, records, ctx)
    plot_pareto(out / PARETO_PNG_NAME, records, ctx, best)
    plot_rewards(out / REWARD_PNG_NAME, records)
    atomic_write_text(out / SUMMARY_NAME, summary_markdown(records, ctx, best))
    return best
