"""Choose a run's genotype again under a new budget, without searching again.

Every trial's accuracy, latency and MACs are in ``trials.jsonl``, so a different latency
(or MAC) budget needs no new child: feasibility and the MnasNet reward are recomputed per
trial (pure functions), the selection rule runs again, and the report (``genotype.json``,
``pareto.json``, plots, ``summary.md``) is rewritten, each file atomically, under the run's
lock. ``trials.jsonl`` and ``config.json`` stay as the search wrote them (a resumed search
keeps its own budget); the selection budget is recorded in ``genotype.json``'s metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import NasdeployError
from search.core.jsonio import read_json
from search.core.rundir import GENOTYPE_NAME, HISTORY_NAME
from search.evaluation.reward import RewardConfig, is_feasible, mnas_reward
from search.experiment.report import ReportContext, write_report
from search.experiment.session import load_config, run_lock
from search.trials.history import TrialRecord, read_history
from search.trials.selection import Selection


@dataclass(frozen=True)
class Reselection:
    """The outcome of :func:`reselect`."""

    run_dir: Path
    selection: Selection | None
    previous_trial: int | None
    reward: RewardConfig
    feasible: int
    candidates: int


def rescore(record: TrialRecord, reward: RewardConfig) -> TrialRecord:
    """``record`` with feasibility and reward under ``reward`` (unmeasured trials unchanged).

    A re-ranked trial's ``rerank_reward`` is recomputed from its ``rerank_accuracy`` too.
    """
    if record.latency_ms is None or not math.isfinite(record.latency_ms):
        return record
    ok = record.status == "ok"
    reranked = None if record.rerank_accuracy is None else \
        mnas_reward(record.rerank_accuracy, record.latency_ms, reward, record.macs) if ok else 0.0
    return dataclasses.replace(
        record, feasible=ok and is_feasible(record.latency_ms, reward, record.macs),
        reward=mnas_reward(record.accuracy, record.latency_ms, reward, record.macs) if ok else 0.0,
        rerank_reward=reranked)


def _previous(run_dir: Path) -> tuple[int | None, dict[str, Any]]:
    try:
        data = read_json(run_dir / GENOTYPE_NAME, expect=dict)
    except FileNotFoundError:
        return None, {}
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    trial = metadata.get("trial")
    search = metadata.get("search") if isinstance(metadata.get("search"), dict) else {}
    return (trial if isinstance(trial, int) else None), dict(search)


def reselect(run_dir: str | Path, latency_budget: str | None = None, macs_budget: str | None = None,
             *, hard: bool | None = None) -> Reselection:
    """Re-select the run's genotype under new budgets and rewrite its report.

    Args:
        run_dir: a search run directory.
        latency_budget: e.g. ``"3ms"``; ``None`` keeps the search's.
        macs_budget: e.g. ``"10M"``; ``None`` keeps the search's (``"none"`` drops it).
        hard: hard constraint instead of MnasNet's soft one; ``None`` keeps the search's.

    Raises:
        NasdeployError: not a run directory, no trials, a bad budget, or a search still running.
    """
    run = Path(run_dir)
    config = load_config(run)
    changes: dict[str, Any] = {}
    if latency_budget is not None:
        changes["latency_budget"] = latency_budget
    if macs_budget is not None:
        changes["macs_budget"] = None if macs_budget.strip().lower() == "none" else macs_budget
    if hard is not None:
        changes["hard_constraint"] = hard
    config = dataclasses.replace(config, **changes)
    reward = config.reward_config()
    with run_lock(run):
        records = read_history(run / HISTORY_NAME)
        if not records:
            raise NasdeployError(f"{run} has no finished trial to select from")
        rescored = [rescore(r, reward) for r in records]
        previous, settings = _previous(run)
        settings["config"] = {**settings.get("config", {}), **config.to_dict()}
        settings["reward"] = {"alpha": reward.exponents[0], "beta": reward.exponents[1], "hard": reward.hard}
        settings["selected_by"] = "search.select"
        settings.pop("latency_check", None)  # it measured the previous winner
        if isinstance(settings.get("rerank"), dict):  # which trial won is decided again below
            settings["rerank"] = {k: v for k, v in settings["rerank"].items()
                                  if k not in ("search_choice", "winner", "changed")}
        ctx = ReportContext(reward.latency_budget_ms, config.dataset, reward.macs_budget, settings)
        selection = write_report(run, rescored, ctx)
    measured = [r for r in rescored
                if r.status == "ok" and r.latency_ms is not None and r.duplicate_of is None]
    return Reselection(run, selection, previous, reward, sum(r.feasible for r in measured), len(measured))


def reselection_text(result: Reselection) -> str:
    """What changed, for the terminal."""
    budget = f"{result.reward.latency_budget_ms:g} ms"
    if result.reward.macs_budget is not None:
        budget += f" and {result.reward.macs_budget / 1e6:g} M MACs"
    head = f"{result.feasible} of {result.candidates} measured candidates meet {budget}"
    if result.selection is None:
        return f"{head}; nothing could be selected"
    r = result.selection.record
    moved = ("unchanged" if result.previous_trial == r.trial else
             f"was trial {result.previous_trial}" if result.previous_trial is not None else "new")
    return (f"{head}\nselected trial {r.trial} ({moved}): val accuracy {r.accuracy:.4f}, latency "
            f"{r.latency_ms:.3f} ms, {(r.macs or 0) / 1e6:.1f} M MACs ({result.selection.note})\n"
            f"rewrote {result.run_dir / GENOTYPE_NAME} and the report\n"
            f"next: python -m search.train {result.run_dir}")
