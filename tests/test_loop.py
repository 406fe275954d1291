"""The search loop: stopping, deduplication, failures, resume after an interruption.

The loop takes accuracy and cost as functions; these tests pass cheap real ones (a score
of the genotype's ops and the real MAC count of its narrowest network) so they run in seconds.
The end-to-end test with real child training and ONNX Runtime timing is in
``test_run_cli.py``. Progress goes to a given stream: a terminal gets the tqdm bar, anything
else (``nohup``, CI) one line per trial.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import pytest

from search.core.rundir import HISTORY_NAME
from search.evaluation.reward import RewardConfig
from search.experiment.loop import Evaluator, run_loop
from search.experiment.report import ReportContext, write_report
from search.experiment.session import SearchConfig, SearchResult, summary_text
from search.nn.cost import model_cost
from search.space.genotype import REFERENCE_GENOTYPES, Genotype
from search.space.scale import min_filters, parse_scale
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, Proposal, Strategy, StrategyConfig, create_strategy
from search.trials.history import read_history
from search.trials.selection import select_best


def narrowest(genotype: Genotype):
    """The narrowest scale for the genotype's block count (2 channels per op)."""
    return parse_scale(f"1@{min_filters(genotype.num_blocks)}", image_size=16)


@dataclass
class Accuracy:
    accuracy: float
    status: str = "ok"
    error: str | None = None
    train_time_s: float = 0.0


@dataclass
class Cost:
    latency_ms: float
    macs: int
    params: int
    measure_time_s: float = 0.0


class CountingEvaluator:
    """Accuracy = share of parametric ops; latency = MACs of the narrowest real network / 1e5."""

    def __init__(self, sleep: float = 0.0):
        self.accuracy_calls: list[str] = []
        self.sleep = sleep

    def accuracy(self, genotype: Genotype) -> Accuracy:
        self.accuracy_calls.append(genotype.to_json())
        time.sleep(self.sleep)
        ops = [op for c in (genotype.normal, genotype.reduce) for b in c.blocks for op in b.ops]
        return Accuracy(0.2 + 0.7 * sum("conv" in op for op in ops) / len(ops))

    def cost(self, genotype: Genotype) -> Cost:
        c = model_cost(genotype, narrowest(genotype), num_classes=10)
        return Cost(c.macs / 1e5, c.macs, c.params)

    def evaluator(self, budget_ms: float = 3.0) -> Evaluator:
        return Evaluator(self.accuracy, self.cost, RewardConfig(budget_ms))


def _strategy(name: str, run_dir, seed: int = 0) -> Strategy:
    config = StrategyConfig(space=SearchSpace(2), seed=seed, run_dir=run_dir, rl_batch=3,
                            startup_trials=2, population_size=4)
    return create_strategy(name, config)


def test_loop_stops_after_n_trials_and_records_every_field(tmp_path):
    ev = CountingEvaluator()
    result = run_loop(_strategy("random", tmp_path), ev.evaluator(), tmp_path, max_trials=5,
                      progress=False)
    assert result.stopped_by == "trials" and result.new_trials == 5
    lines = (tmp_path / HISTORY_NAME).read_text().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])
    for key in ("trial", "strategy", "genotype", "accuracy", "latency_ms", "macs", "params",
                "reward", "feasible", "status", "error", "wall_time_s", "train_time_s",
                "latency_time_s", "finished_at"):
        assert key in first
    assert [json.loads(line)["trial"] for line in lines] == [0, 1, 2, 3, 4]
    for r in result.records:
        assert r.feasible == (r.latency_ms <= 3.0)
        assert 0 < r.reward < 1 and r.strategy == "random"


def test_loop_stops_at_the_time_budget(tmp_path):
    ev = CountingEvaluator(sleep=0.3)
    result = run_loop(_strategy("random", tmp_path), ev.evaluator(), tmp_path,
                      max_trials=50, time_budget_s=1.0, progress=False)
    assert result.stopped_by == "time"
    assert 1 <= result.new_trials < 50
    walls = [r.wall_time_s for r in result.records]
    assert sum(walls[:-1]) < 1.0, "no trial starts after the budget is used up"
    assert sum(walls) >= 0.3 * len(walls)


class Repeater(Strategy):
    """Proposes the same genotype over and over (to exercise deduplication)."""

    name = "repeat"

    def __init__(self, genotype: Genotype):
        super().__init__(StrategyConfig(space=SearchSpace(genotype.num_blocks)))
        self.genotype = genotype
        self.seen: list[float] = []

    def propose(self) -> Proposal:
        return Proposal(self.genotype)

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        self.seen.append(outcome.reward)

    def resume(self, records) -> None:
        self.seen = [r.reward for r in records]


def test_repeated_genotype_reuses_its_result_without_retraining(tmp_path):
    ev = CountingEvaluator()
    strategy = Repeater(REFERENCE_GENOTYPES["lite"])
    result = run_loop(strategy, ev.evaluator(), tmp_path, max_trials=3, progress=False)
    assert len(ev.accuracy_calls) == 1
    assert [r.duplicate_of for r in result.records] == [None, 0, 0]
    assert len(set(strategy.seen)) == 1 and len(strategy.seen) == 3


def test_a_child_that_fails_is_recorded_with_zero_reward_and_the_search_goes_on(tmp_path):
    ev = CountingEvaluator()

    def broken_cost(genotype: Genotype) -> Cost:
        if "sep_conv_7x7" in genotype.to_json():
            raise RuntimeError("simulated out of memory\nsecond line")
        return ev.cost(genotype)

    evaluator = Evaluator(ev.accuracy, broken_cost, RewardConfig(3.0))
    result = run_loop(_strategy("random", tmp_path, seed=2), evaluator, tmp_path,
                      max_trials=8, progress=False)
    failed = [r for r in result.records if r.status == "failed"]
    assert failed, "seed 2 should propose a sep_conv_7x7 within 8 trials"
    for r in failed:
        assert r.reward == 0.0 and not r.feasible and r.latency_ms is None
        assert r.error == "latency: RuntimeError: simulated out of memory"
    assert len(result.records) == 8


@pytest.mark.parametrize("name", ["rl", "tpe"])
def test_resume_neither_loses_nor_repeats_trials(name, tmp_path):
    ev = CountingEvaluator()
    run_loop(_strategy(name, tmp_path), ev.evaluator(), tmp_path, max_trials=4, progress=False)
    first = read_history(tmp_path / HISTORY_NAME)
    calls_before = len(ev.accuracy_calls)
    # the process is killed while writing trial 4: a torn last line
    with open(tmp_path / HISTORY_NAME, "a") as handle:
        handle.write('{"trial": 4, "strategy": "' + name + '", "genot')

    result = run_loop(_strategy(name, tmp_path), ev.evaluator(), tmp_path, max_trials=7,
                      progress=False)
    records = read_history(tmp_path / HISTORY_NAME)
    assert [r.trial for r in records] == list(range(7))
    assert records[:4] == first
    assert result.new_trials == 3
    assert len(ev.accuracy_calls) - calls_before == sum(r.duplicate_of is None
                                                        for r in records[4:])
    assert all(json.loads(line) for line in (tmp_path / HISTORY_NAME).read_text().splitlines())


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    ev = CountingEvaluator()
    run_loop(_strategy("rl", tmp_path), ev.evaluator(), tmp_path, max_trials=3, progress=False)
    calls = len(ev.accuracy_calls)
    result = run_loop(_strategy("rl", tmp_path), ev.evaluator(), tmp_path, max_trials=3,
                      progress=False)
    assert result.new_trials == 0 and len(ev.accuracy_calls) == calls


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress, stream", [(True, io.StringIO), (False, io.StringIO),
                                              (False, _Terminal)])
def test_headless_run_prints_one_flushed_line_per_trial(tmp_path, progress, stream):
    out = stream()
    ev = CountingEvaluator()
    result = run_loop(_strategy("random", tmp_path), ev.evaluator(), tmp_path, max_trials=5,
                      progress=progress, stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    for n, (line, r) in enumerate(zip(lines, result.records, strict=True), start=1):
        assert line.startswith(f"[random] trial {r.trial} ({n}/5) ok: val acc {r.accuracy:.4f}, "
                               f"latency {r.latency_ms:.3f} ms, {r.macs / 1e6:.1f} MMACs, "
                               f"reward {r.reward:.4f}, feasible {'yes' if r.feasible else 'no'}, "
                               f"elapsed "), line
        best = select_best(result.records[:n])
        assert line.endswith(f"trial {best.record.trial})"), line
        assert ("best feasible: acc" in line) == best.feasible, line


def test_a_terminal_gets_the_bar_not_the_lines(tmp_path):
    out = _Terminal()
    run_loop(_strategy("random", tmp_path), CountingEvaluator().evaluator(), tmp_path,
             max_trials=3, progress=True, stream=out)
    text = out.getvalue()
    assert "search (random)" in text and "3/3" in text
    assert "] trial " not in text


def test_log_lines_name_failures_repeats_and_the_time_budget(tmp_path):
    ev = CountingEvaluator()
    out = io.StringIO()

    def broken_cost(genotype: Genotype) -> Cost:
        raise RuntimeError("simulated out of memory")

    evaluator = Evaluator(ev.accuracy, broken_cost, RewardConfig(3.0))
    run_loop(Repeater(REFERENCE_GENOTYPES["lite"]), evaluator, tmp_path, max_trials=2,
             time_budget_s=3600, progress=False, stream=out)
    first, second = out.getvalue().splitlines()
    assert first.startswith("[repeat] trial 0 (1/2) failed: val acc 0.0000, latency - ms, - MMACs")
    assert "elapsed 0s/1h00m" in first and "best feasible: none yet" in first
    assert first.endswith("error: latency: RuntimeError: simulated out of memory")
    assert second.startswith("[repeat] trial 1 (2/2) failed (repeat of trial 0):")
    assert "error:" not in second


def test_summary_text_ends_with_the_command_that_trains_the_winner(tmp_path):
    run_dir = tmp_path / "my run"
    ev = CountingEvaluator()
    loop = run_loop(_strategy("random", run_dir), ev.evaluator(), run_dir, max_trials=3,
                    progress=False, stream=io.StringIO())
    best = write_report(run_dir, loop.records, ReportContext(3.0, "digits"))
    result = SearchResult(run_dir, best, loop, SearchConfig(latency_budget="3ms"), 1.0)
    text = summary_text(result)
    assert text.splitlines()[-1] == f"next: python -m search.train '{run_dir}'"
    nothing = SearchResult(run_dir, None, loop, SearchConfig(latency_budget="3ms"), 1.0)
    assert "next:" not in summary_text(nothing)
