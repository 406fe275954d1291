"""Search-run explorer: trial table, Pareto front and chart specs (pure functions).

Everything here reads a run directory (``trials.jsonl``, ``genotype.json``,
``pareto.json``, ``config.json``) and returns plain data or Altair charts; the page
code in :mod:`app.views` only displays them. The Pareto front comes from
:mod:`search.trials.selection`, the rules ``summary.md`` uses, so the app and the report agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from search.core import jsonio
from search.core.errors import NasdeployError
from search.core.rundir import CONFIG_NAME, GENOTYPE_NAME, HISTORY_NAME, PARETO_JSON_NAME
from search.core.units import parse_latency
from search.trials.history import TrialRecord, read_history
from search.trials.selection import pareto_front

BUDGET_KEYS = ("latency_budget_ms", "latency_budget", "budget_ms")
"""Where runs keep the latency budget: ``pareto.json`` / ``genotype.json`` metadata store
milliseconds (``latency_budget_ms``), ``config.json`` the CLI string (``"5ms"``)."""
KIND_ORDER = ["Pareto front", "meets budget", "over budget", "failed"]
KIND_COLOURS = ["#1f6feb", "#2da44e", "#8c959f", "#cf222e"]
TABLE_COLUMNS = [
    "trial", "strategy", "status", "accuracy", "latency_ms", "reward", "feasible", "pareto",
    "params", "macs", "wall_time_s", "duplicate_of", "error",
]


@dataclass
class RunData:
    """Everything the explorer shows about one run directory."""

    run_dir: Path
    records: list[TrialRecord]
    frame: pd.DataFrame
    budget_ms: float | None
    chosen: dict[str, Any] | None
    chosen_trial: int | None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory.

    Raises:
        NasdeployError: No ``trials.jsonl`` or a corrupt one (one-line message).
    """
    run_dir = Path(run_dir)
    history = run_dir / HISTORY_NAME
    if not history.is_file():
        raise NasdeployError(f"{run_dir} has no {HISTORY_NAME}; is it a search run directory?")
    records = read_history(history)
    chosen = read_json(run_dir / GENOTYPE_NAME)
    chosen_trial = _chosen_trial(chosen)
    budget = latency_budget(run_dir)
    frame = trials_frame(records, chosen_trial)
    return RunData(run_dir, records, frame, budget, chosen, chosen_trial)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return jsonio.read_json(path, expect=dict, allow_nan=True)
    except (OSError, jsonio.JsonError):
        return None


def find_key(data: Any, keys: tuple[str, ...]) -> Any:
    """The first value stored under one of ``keys`` anywhere in nested dicts/lists."""
    if isinstance(data, dict):
        for key in keys:
            if data.get(key) is not None:
                return data[key]
        children = list(data.values())
    elif isinstance(data, list):
        children = data
    else:
        return None
    for child in children:
        found = find_key(child, keys)
        if found is not None:
            return found
    return None


def latency_budget(run_dir: str | Path) -> float | None:
    """The run's latency budget in ms from config.json, pareto.json or genotype.json."""
    for name in (CONFIG_NAME, PARETO_JSON_NAME, GENOTYPE_NAME):
        budget = budget_ms(find_key(read_json(Path(run_dir) / name), BUDGET_KEYS))
        if budget is not None:
            return budget
    return None


def budget_ms(value: Any) -> float | None:
    """A budget value in ms: a positive number, or a string with a unit (``"5ms"``)."""
    if isinstance(value, str):
        try:
            return parse_latency(value)
        except NasdeployError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None


def _chosen_trial(chosen: dict[str, Any] | None) -> int | None:
    trial = ((chosen or {}).get("metadata") or {}).get("trial")
    return trial if isinstance(trial, int) else None


def trials_frame(records: list[TrialRecord], chosen_trial: int | None = None) -> pd.DataFrame:
    """One row per trial with the table columns plus ``kind``, ``best_reward``, ``chosen``."""
    front = {r.trial for r in pareto_front(records)}
    rows = []
    for r in records:
        row = {c: getattr(r, c, None) for c in TABLE_COLUMNS if c != "pareto"}
        row["pareto"] = r.trial in front
        row["chosen"] = r.trial == chosen_trial
        row["kind"] = _kind(r, row["pareto"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "chosen", "kind"])
    frame["best_reward"] = frame["reward"].astype(float).cummax()
    return frame


def _kind(r: TrialRecord, on_front: bool) -> str:
    if r.status != "ok" or r.latency_ms is None:
        return "failed"
    if on_front:
        return "Pareto front"
    return "meets budget" if r.feasible else "over budget"


_TOOLTIP = [
    alt.Tooltip("trial:Q", title="trial"),
    alt.Tooltip("strategy:N", title="strategy"),
    alt.Tooltip("accuracy:Q", title="accuracy", format=".3f"),
    alt.Tooltip("latency_ms:Q", title="latency (ms)", format=".3f"),
    alt.Tooltip("reward:Q", title="reward", format=".4f"),
    alt.Tooltip("params:Q", title="params", format=","),
    alt.Tooltip("macs:Q", title="MACs", format=","),
    alt.Tooltip("status:N", title="status"),
]


def accuracy_latency_chart(frame: pd.DataFrame, budget_ms: float | None) -> alt.LayerChart:
    """Accuracy vs latency of every measured trial, the Pareto front, the budget line."""
    measured = frame[frame["latency_ms"].notna()]
    colour = alt.Color(
        "kind:N", title=None,
        scale=alt.Scale(domain=KIND_ORDER, range=KIND_COLOURS),
        legend=alt.Legend(orient="bottom"),
    )
    x = alt.X("latency_ms:Q", title="latency (ms, batch 1)", scale=alt.Scale(zero=False, padding=12))
    y = alt.Y("accuracy:Q", title="validation accuracy", scale=alt.Scale(zero=False, padding=12))
    points = alt.Chart(measured).mark_circle(size=70, opacity=0.8).encode(
        x=x, y=y, color=colour, tooltip=_TOOLTIP
    )
    front = measured[measured["pareto"]].sort_values("latency_ms")
    layers: list[alt.Chart] = [
        alt.Chart(front).mark_line(interpolate="step-after", color=KIND_COLOURS[0]).encode(x=x, y=y),
        points,
    ]
    chosen = measured[measured["chosen"]]
    if len(chosen):
        layers.append(
            alt.Chart(chosen).mark_point(
                shape="diamond", size=260, filled=True, color="#f2cc0c", stroke="black", strokeWidth=1
            ).encode(x=x, y=y, tooltip=_TOOLTIP)
        )
    if budget_ms is not None:
        layers += _budget_layers(budget_ms, measured["latency_ms"].tolist())
    return alt.layer(*layers).properties(height=360).interactive()


def _budget_layers(budget_ms: float, latencies: list[float]) -> list[alt.Chart]:
    """A dashed rule at the budget, labelled on the side with more room."""
    values = [*latencies, budget_ms]
    on_left = budget_ms > (min(values) + max(values)) / 2
    rule = pd.DataFrame({"budget": [budget_ms], "label": [f"budget {budget_ms:g} ms"]})
    base = alt.Chart(rule)
    return [
        base.mark_rule(color="#cf222e", strokeDash=[6, 4]).encode(x="budget:Q"),
        base.mark_text(
            align="right" if on_left else "left", dx=-4 if on_left else 4, dy=4,
            color="#cf222e", baseline="top",
        ).encode(x="budget:Q", y=alt.value(0), text="label:N"),
    ]


def reward_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Reward of every trial and the best reward so far."""
    x = alt.X("trial:Q", title="trial", scale=alt.Scale(padding=8))
    points = alt.Chart(frame).mark_circle(size=45, opacity=0.7).encode(
        x=x,
        y=alt.Y("reward:Q", title="MnasNet reward", scale=alt.Scale(zero=False, padding=8)),
        color=alt.Color("kind:N", scale=alt.Scale(domain=KIND_ORDER, range=KIND_COLOURS), legend=None),
        tooltip=_TOOLTIP,
    )
    best = alt.Chart(frame).mark_line(interpolate="step-after", color="#fb8500", strokeWidth=2).encode(
        x=x, y="best_reward:Q", tooltip=[alt.Tooltip("best_reward:Q", title="best so far", format=".4f")]
    )
    return alt.layer(points, best).properties(height=260).interactive()


def summary(data: RunData) -> dict[str, Any]:
    """Headline numbers for the run: counts, best accuracy/reward, the budget."""
    frame = data.frame
    ok = frame[frame["status"] == "ok"]
    return {
        "trials": len(frame),
        "ok": len(ok),
        "feasible": int(ok["feasible"].sum()) if len(ok) else 0,
        "pareto": int(frame["pareto"].sum()),
        "best_accuracy": float(ok["accuracy"].max()) if len(ok) else None,
        "best_reward": float(frame["reward"].max()) if len(frame) else None,
        "budget_ms": data.budget_ms,
        "strategies": sorted(set(frame["strategy"].dropna())),
    }
