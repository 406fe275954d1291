"""The search loop with several children in flight (``--workers`` / ``--ray-address``).

The same trial records, duplicate reuse, resume, stop rules and progress lines as
:func:`search.experiment.loop.run_loop`; children are evaluated by a worker pool
(:class:`search.experiment.workers.RayPool`) while this process stays the only writer of the
run directory. Proposals go out while workers are free and the strategy allows
(:meth:`search.strategies.base.Strategy.capacity`: Optuna asks for as many trials as there
are free workers, RL for the rest of its ``--rl-batch``); results are recorded and observed
in completion order, numbered in that order (no gaps, no repeats). A genotype proposed while
the same genotype is in flight waits for it and is recorded right after it as a duplicate.
``wall_time_s`` of a record is the search process's clock since the previous record, so the
summed wall times are still the search time ``--time-budget`` counts (a child's own times
are ``train_time_s`` and ``latency_time_s``). Killed, the run loses only the children in
flight: a resume proposes again from the recorded trials.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from search.experiment.loop import (
    Evaluator,
    LoopResult,
    _reuse,
    _stop_reason,
    finish_candidate,
    measure_cost,
    open_run,
)
from search.strategies.base import Outcome, Proposal, Strategy
from search.trials.history import TrialRecord, append_record


@dataclass
class _Child:
    proposal: Proposal
    key: str
    stage: str  # "cost" (latency task out) or "accuracy" (training task out)
    fields: dict[str, Any] | None = None


def run_parallel_loop(strategy: Strategy, evaluator: Evaluator, run_dir: str | Path, pool: Any, *,
                      max_trials: int | None, time_budget_s: float | None = None,
                      progress: bool = True, stream: TextIO | None = None,
                      setup_time_s: float = 0.0) -> LoopResult:
    """Run (or resume) the search in ``run_dir`` with ``pool.slots`` children at a time.

    Arguments as :func:`search.experiment.loop.run_loop`, plus ``pool`` (a
    :class:`~search.experiment.workers.RayPool` whose :meth:`share` was called).
    """
    run = open_run(strategy, run_dir, max_trials=max_trials, time_budget_s=time_budget_s,
                   setup_time_s=setup_time_s, progress=progress, stream=stream)
    path, records, seen, before, elapsed_before, bar = (run.path, run.records, run.seen, run.before,
                                                         run.elapsed_before, run.bar)
    session_start = last = time.perf_counter()
    running: dict[Any, _Child] = {}
    waiting: dict[str, list[Proposal]] = {}
    reason: str | None = None

    def write(record: TrialRecord, proposal: Proposal) -> TrialRecord:
        nonlocal last
        now = time.perf_counter()
        record = dataclasses.replace(record, trial=len(records), wall_time_s=now - last)
        last = now
        append_record(path, record)
        records.append(record)
        strategy.observe(proposal, Outcome.from_record(record))
        bar.trial_done(records, elapsed_before + now - session_start)
        return record

    def finish(child: _Child, result: Any) -> None:
        assert child.fields is not None
        record = write(finish_candidate(child.proposal.genotype, child.fields, result, evaluator.reward,
                                        0, strategy.name, 0.0), child.proposal)
        seen[child.key] = record
        for proposal in waiting.pop(child.key, []):
            write(_reuse(record, 0, strategy.name, time.perf_counter()), proposal)

    def start(child: _Child) -> None:
        genotype = child.proposal.genotype
        if child.fields is None and pool.remote_latency:
            running[pool.submit_cost(genotype)] = child
            return
        if child.fields is None:
            child.fields = measure_cost(genotype, evaluator.cost_fn)
        if child.fields["error"] is not None:
            finish(child, None)  # no latency, no training
            return
        child.stage = "accuracy"
        running[pool.submit_accuracy(genotype)] = child

    try:
        while True:
            while len(running) < pool.slots:
                outstanding = len(running) + sum(len(w) for w in waiting.values())
                elapsed = elapsed_before + time.perf_counter() - session_start
                reason = _stop_reason(len(records) + outstanding, elapsed, max_trials, time_budget_s)
                room = strategy.capacity(outstanding)
                if reason is not None or (room is not None and room <= 0):
                    break
                proposal = strategy.propose()
                key = proposal.genotype.key()
                if key in seen:
                    write(_reuse(seen[key], 0, strategy.name, time.perf_counter()), proposal)
                elif any(c.key == key for c in running.values()):
                    waiting.setdefault(key, []).append(proposal)
                else:
                    start(_Child(proposal, key, "cost"))
            if not running:  # (a duplicate waits only while its original runs)
                if reason is not None:
                    break
                raise RuntimeError(f"strategy {strategy.name} proposes nothing with no child running")
            for ref in pool.wait(list(running)):
                child = running.pop(ref)
                if child.stage == "cost":
                    child.fields = pool.cost(ref)
                    start(child)
                else:
                    finish(child, pool.result(ref))
    finally:
        bar.close()
        pool.cancel(list(running))  # interrupted: the children in flight are not recorded
    return LoopResult(records, reason or "trials", len(records) - before)
