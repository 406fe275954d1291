"""Contract tests run against every registered strategy, plus Optuna specifics."""

from __future__ import annotations

import json

import pytest

from search.nn.ops import COMBINES, OP_NAMES
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.strategies.base import (
    STRATEGIES,
    Outcome,
    Proposal,
    StrategyConfig,
    available_strategies,
    create_strategy,
)
from search.trials.history import TrialRecord, utc_now

NAMES = available_strategies()


def _score(genotype: Genotype) -> Outcome:
    """A deterministic outcome: more separable convs = more accurate and slower."""
    ops = [op for cell in (genotype.normal, genotype.reduce) for b in cell.blocks for op in b.ops]
    sep = sum(op.startswith("sep_conv") for op in ops) / len(ops)
    latency = 1.0 + 4.0 * sep
    return Outcome(0.5 + 0.4 * sep, latency, 0.5 + 0.4 * sep - 0.01 * latency, latency <= 3.0)


def _drive(name: str, seed: int, n: int, tmp_path=None, blocks: int = 3) -> list[str]:
    config = StrategyConfig(space=SearchSpace(blocks), seed=seed, run_dir=tmp_path,
                            rl_batch=3, startup_trials=2, population_size=4)
    strategy = create_strategy(name, config)
    strategy.resume([])
    out = []
    for _ in range(n):
        proposal = strategy.propose()
        out.append(proposal.genotype.to_json())
        strategy.observe(proposal, _score(proposal.genotype))
    strategy.close()
    return out


def test_registry_has_the_four_strategies():
    assert {"rl", "tpe", "random", "nsga2"} <= set(NAMES)
    assert set(NAMES) == set(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_proposals_are_valid_genotypes_of_the_space(name, tmp_path):
    space = SearchSpace(3)
    proposals = _drive(name, seed=1, n=10, tmp_path=tmp_path)
    for text in proposals:
        genotype = Genotype.from_dict(json.loads(text))  # validates
        assert genotype.num_blocks == 3
        assert space.decode(space.encode(genotype)) == genotype
    assert len(set(proposals)) > 1


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_proposals_other_seed_other_proposals(name):
    first = _drive(name, seed=7, n=8)
    again = _drive(name, seed=7, n=8)
    other = _drive(name, seed=8, n=8)
    assert first == again
    assert first != other


def test_unknown_strategy_is_a_one_line_error():
    from search.core.errors import NasdeployError

    with pytest.raises(NasdeployError, match="unknown strategy 'bogus'; choose from rl"):
        create_strategy("bogus", StrategyConfig())


def test_optuna_parameters_are_exactly_the_space():
    strategy = create_strategy("tpe", StrategyConfig(space=SearchSpace(4), seed=0))
    strategy.resume([])
    proposal = strategy.propose()
    trial = strategy.study.trials[proposal.info["number"]]
    space = SearchSpace(4)
    assert set(trial.distributions) == {d.name for d in space.decisions()}
    for d in space.decisions():
        assert tuple(trial.distributions[d.name].choices) == d.choices
    assert trial.distributions["normal_b3_in0"].choices == (0, 1, 2, 3, 4)
    assert trial.distributions["reduce_b0_op1"].choices == OP_NAMES
    assert trial.distributions["normal_b0_combine"].choices == COMBINES


def _record(index: int, proposal: Proposal, outcome: Outcome) -> TrialRecord:
    return TrialRecord(index, "tpe", proposal.genotype.to_dict(), outcome.accuracy,
                       outcome.latency_ms, 1, 1, outcome.reward, outcome.feasible, "ok", None,
                       0.1, 0.0, 0.0, utc_now())


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_optuna_resume_tells_recorded_trials_and_fails_unfinished_ones(name, tmp_path):
    from optuna.trial import TrialState

    config = StrategyConfig(space=SearchSpace(2), seed=0, run_dir=tmp_path, startup_trials=2)
    first = create_strategy(name, config)
    first.resume([])
    records = []
    for i in range(3):
        p = first.propose()
        records.append(_record(i, p, _score(p.genotype)))
        if i < 2:  # trial 2 is recorded but the process dies before tell()
            first.observe(p, _score(p.genotype))
    first.propose()  # trial 3 is asked and never finished
    first.close()

    second = create_strategy(name, config)
    second.resume(records)
    states = [t.state for t in second.study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    told = second.study.trials[2]
    expected = _score(records[2].to_genotype())
    assert told.values[0] == pytest.approx(expected.reward if name == "tpe"
                                           else expected.accuracy)
    nxt = second.propose()
    assert second.study.trials[nxt.info["number"]].user_attrs["loop_trial"] == 3
    assert (tmp_path / "study.db").exists()


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2"])
def test_close_releases_the_study_database(tmp_path, name):
    import os

    database = os.path.realpath(tmp_path / "study.db")

    def open_handles() -> int:
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == database for fd in os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to count open files")
    _drive(name, seed=0, n=3, tmp_path=tmp_path)  # proposes, observes and closes
    assert (tmp_path / "study.db").is_file()
    assert open_handles() == 0
