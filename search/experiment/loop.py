"""The one search loop shared by every strategy.

propose -> deployment cost (latency, MACs, params) -> accuracy -> reward -> record the
trial (``trials.jsonl``, fsync'd) -> observe. Accuracy and cost are plain functions
passed in, so the loop knows nothing about training or runtimes. A genotype already
evaluated in this run reuses its result (recorded again with ``duplicate_of``, not
retrained). The loop stops after ``max_trials`` trials in total or when the search time
(summed over resumed sessions) reaches ``time_budget_s``; a trial that has started
always finishes. Resuming reads the history and lets the strategy rebuild its state.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from search.core.errors import MeasurementError, NasdeployError, one_line
from search.core.rundir import HISTORY_NAME
from search.evaluation.reward import RewardConfig, is_feasible, mnas_reward
from search.space.genotype import Genotype
from search.strategies.base import Outcome, Strategy
from search.trials.history import TrialRecord, append_record, repair_history, utc_now
from search.trials.selection import select_best

AccuracyFn = Callable[[Genotype], Any]
"""``genotype -> result`` with ``accuracy``, ``status``, ``error``, ``train_time_s``
(e.g. :func:`search.evaluation.proxy.evaluate_child` with its data and settings bound)."""

CostFn = Callable[[Genotype], Any]
"""``genotype -> cost`` with ``latency_ms``, ``macs``, ``params``, ``measure_time_s``
(e.g. a :class:`search.evaluation.latency.LatencyMeter`)."""


@dataclass(frozen=True)
class Evaluator:
    """How a candidate is scored: accuracy, deployment cost and the reward budgets."""

    accuracy_fn: AccuracyFn
    cost_fn: CostFn
    reward: RewardConfig


@dataclass
class LoopResult:
    """All records of the run (old and new) and why the loop stopped."""

    records: list[TrialRecord]
    stopped_by: str
    new_trials: int


def _finite(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _spread(cost: Any, name: str) -> float | None:
    """A cost's p10/p90 latency when it has a finite one (a predicted cost has none)."""
    value = _finite(getattr(cost, name, None), math.nan)
    return value if math.isfinite(value) else None


def measure_cost(genotype: Genotype, cost_fn: CostFn) -> dict[str, Any]:
    """The cost half of a trial record: latency, MACs, params and why it failed, if it did.

    ``NasdeployError`` (a setup problem such as a missing runtime) propagates, except
    :class:`~search.core.errors.MeasurementError` (this candidate could not be measured).
    Runs where the cost is measured (the search process, or a Ray worker on the latency
    target: :mod:`search.experiment.workers`).
    """
    fields: dict[str, Any] = {"latency_ms": None, "macs": None, "params": None,
                              "accuracy": 0.0, "status": "failed", "error": None,
                              "train_time_s": 0.0, "latency_time_s": 0.0}
    try:
        cost = cost_fn(genotype)
        fields.update(latency_ms=_finite(cost.latency_ms, math.nan), macs=int(cost.macs),
                      params=int(cost.params), latency_time_s=_finite(cost.measure_time_s))
        spread = {k: _spread(cost, k) for k in ("latency_p10_ms", "latency_p90_ms")}
        fields.update({k: v for k, v in spread.items() if v is not None})
    except MeasurementError as exc:  # this candidate's deployment model failed
        fields["error"] = str(exc).splitlines()[0][:500]
    except NasdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - a child that cannot be built or timed
        fields["error"] = f"latency: {one_line(exc)}"
    if fields["error"] is None and not math.isfinite(fields["latency_ms"]):
        fields.update(latency_ms=None, error="latency: not a finite number")
    return fields


def finish_candidate(genotype: Genotype, fields: dict[str, Any], result: Any, reward_config: RewardConfig,
                     trial: int, strategy: str, wall_time_s: float) -> TrialRecord:
    """The trial record from :func:`measure_cost`'s fields and the accuracy ``result``
    (``None`` when the cost failed and no child was trained); a failure has reward 0."""
    fields = dict(fields)
    if result is not None:
        fields.update(accuracy=_finite(result.accuracy), status=result.status,
                      error=result.error, train_time_s=_finite(result.train_time_s))
    ok = fields["status"] == "ok"
    latency = fields["latency_ms"]
    reward = mnas_reward(fields["accuracy"], latency, reward_config, fields["macs"]) if ok else 0.0
    feasible = latency is not None and is_feasible(latency, reward_config, fields["macs"])
    return TrialRecord(
        trial=trial, strategy=strategy, genotype=genotype.to_dict(), reward=_finite(reward),
        feasible=bool(ok and feasible), wall_time_s=wall_time_s, finished_at=utc_now(), **fields)


def evaluate_candidate(genotype: Genotype, evaluator: Evaluator, trial: int,
                       strategy: str) -> TrialRecord:
    """Score one genotype; failures become a ``failed`` record with reward 0.

    ``NasdeployError`` (a setup problem such as a missing runtime) propagates, except
    :class:`~search.core.errors.MeasurementError` (this candidate could not be measured).
    """
    start = time.perf_counter()
    fields = measure_cost(genotype, evaluator.cost_fn)
    result = evaluator.accuracy_fn(genotype) if fields["error"] is None else None
    return finish_candidate(genotype, fields, result, evaluator.reward, trial, strategy,
                            time.perf_counter() - start)


def _reuse(earlier: TrialRecord, trial: int, strategy: str, start: float) -> TrialRecord:
    return dataclasses.replace(
        earlier, trial=trial, strategy=strategy, duplicate_of=earlier.trial,
        rerank_accuracy=None, rerank_reward=None, rerank_seeds=None,
        train_time_s=0.0, latency_time_s=0.0, wall_time_s=time.perf_counter() - start,
        finished_at=utc_now())


def _postfix(records: list[TrialRecord]) -> str:
    selection = select_best(records)
    if selection is None:
        return "best feasible: none yet"
    best = selection.record
    if not selection.feasible:
        return f"best feasible: none yet (fastest {best.latency_ms:.2f} ms, trial {best.trial})"
    return f"best feasible: acc {best.accuracy:.3f} @ {best.latency_ms:.2f} ms (trial {best.trial})"


def _clock(seconds: float) -> str:
    """``45s``, ``12m05s``, ``2h03m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def trial_line(record: TrialRecord, records: list[TrialRecord], *, max_trials: int | None,
               elapsed_s: float, time_budget_s: float | None = None) -> str:
    """One log line for a finished trial (what a headless run prints instead of a bar)."""
    count = f"{len(records)}/{max_trials}" if max_trials is not None else f"{len(records)}"
    status = record.status
    if record.duplicate_of is not None:
        status += f" (repeat of trial {record.duplicate_of})"
    latency = "-" if record.latency_ms is None else f"{record.latency_ms:.3f}"
    macs = "-" if record.macs is None else f"{record.macs / 1e6:.1f}"
    clock = _clock(elapsed_s) + ("" if time_budget_s is None else f"/{_clock(time_budget_s)}")
    line = (f"[{record.strategy}] trial {record.trial} ({count}) {status}: "
            f"val acc {record.accuracy:.4f}, latency {latency} ms, {macs} MMACs, "
            f"reward {record.reward:.4f}, feasible {'yes' if record.feasible else 'no'}, "
            f"elapsed {clock}; {_postfix(records)}")
    if record.error and record.duplicate_of is None:
        line += f"; error: {record.error[:160]}"
    return line


class _Progress:
    """A tqdm bar on a terminal; otherwise (or with ``enabled=False``) one line per trial."""

    def __init__(self, name: str, max_trials: int | None, done: int, time_budget_s: float | None,
                 *, enabled: bool, stream: TextIO):
        self.stream = stream
        self.max_trials = max_trials
        self.time_budget_s = time_budget_s
        is_tty = getattr(stream, "isatty", lambda: False)()
        self.bar = tqdm(total=max_trials, initial=done, desc=f"search ({name})", unit="trial",
                        file=stream, dynamic_ncols=True) if enabled and is_tty else None

    def trial_done(self, records: list[TrialRecord], elapsed_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(_postfix(records))
            return
        print(trial_line(records[-1], records, max_trials=self.max_trials, elapsed_s=elapsed_s,
                         time_budget_s=self.time_budget_s), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stop_reason(done: int, elapsed: float, max_trials: int | None,
                 time_budget_s: float | None) -> str | None:
    if max_trials is not None and done >= max_trials:
        return "trials"
    if time_budget_s is not None and elapsed >= time_budget_s:
        return "time"
    return None


@dataclass
class OpenRun:
    """A run directory's history, ready for more trials (what both loops start from)."""

    path: Path
    records: list[TrialRecord]
    seen: dict[str, TrialRecord]
    """Genotype key -> its original (not duplicate) record."""
    before: int
    elapsed_before: float
    """Search time already spent: setup plus the recorded trials' wall times."""
    bar: _Progress


def open_run(strategy: Strategy, run_dir: str | Path, *, max_trials: int | None,
             time_budget_s: float | None, setup_time_s: float, progress: bool,
             stream: TextIO | None) -> OpenRun:
    """Read (and repair) ``trials.jsonl``, let ``strategy`` rebuild its state from it and open
    the progress display."""
    if max_trials is None and time_budget_s is None:
        raise ValueError("give max_trials or time_budget_s (or both)")
    path = Path(run_dir) / HISTORY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    records = repair_history(path)
    strategy.resume(records)
    seen = {r.genotype_key: r for r in records if r.duplicate_of is None}
    bar = _Progress(strategy.name, max_trials, len(records), time_budget_s, enabled=progress,
                    stream=sys.stderr if stream is None else stream)
    return OpenRun(path, records, seen, len(records), setup_time_s + sum(r.wall_time_s for r in records), bar)


def run_loop(strategy: Strategy, evaluator: Evaluator, run_dir: str | Path, *,
             max_trials: int | None, time_budget_s: float | None = None,
             progress: bool = True, stream: TextIO | None = None,
             setup_time_s: float = 0.0) -> LoopResult:
    """Run (or resume) the search in ``run_dir`` until a stop condition holds.

    Args:
        strategy: a fresh strategy; it is resumed from the history found in ``run_dir``.
        evaluator: accuracy and cost functions and the reward budgets.
        run_dir: directory holding ``trials.jsonl`` (and the strategy's state).
        max_trials: total number of trials of the run (including resumed ones).
        time_budget_s: total search time (summed wall time of all trials).
        progress: a progress bar when ``stream`` is a terminal; ``False`` (or a stream
            that is not a terminal, as under ``nohup`` or in CI) prints one flushed line
            per finished trial instead (see :func:`trial_line`).
        stream: where progress goes (default ``sys.stderr``).
        setup_time_s: time the run spent before its first trial that counts against
            ``time_budget_s`` (a one-shot supernet's training, a latency profile).
    """
    run = open_run(strategy, run_dir, max_trials=max_trials, time_budget_s=time_budget_s,
                   setup_time_s=setup_time_s, progress=progress, stream=stream)
    path, records, seen, before, elapsed_before, bar = (run.path, run.records, run.seen, run.before,
                                                         run.elapsed_before, run.bar)
    session_start = time.perf_counter()
    try:
        while True:
            elapsed = elapsed_before + time.perf_counter() - session_start
            reason = _stop_reason(len(records), elapsed, max_trials, time_budget_s)
            if reason is not None:
                break
            start = time.perf_counter()
            proposal = strategy.propose()
            key = proposal.genotype.key()
            if key in seen:
                record = _reuse(seen[key], len(records), strategy.name, start)
            else:
                record = evaluate_candidate(proposal.genotype, evaluator, len(records),
                                            strategy.name)
                seen[key] = record
            append_record(path, record)
            records.append(record)
            strategy.observe(proposal, Outcome.from_record(record))
            bar.trial_done(records, elapsed_before + time.perf_counter() - session_start)
    finally:
        bar.close()
    return LoopResult(records, reason, len(records) - before)
