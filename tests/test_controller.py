"""The LSTM controller and its PPO training: masking, learning, reward statistics, entropy
under a pure-noise reward, checkpoint and resume (also of a version-1 ``controller.pt``)."""

from __future__ import annotations

import math

import pytest
import torch

from search.core.errors import NasdeployError
from search.core.rundir import CONTROLLER_NAME
from search.nn.ops import OP_NAMES
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, StrategyConfig
from search.strategies.rl import Controller, PPOTrainer, RLStrategy
from search.trials.history import TrialRecord, utc_now


@pytest.fixture(autouse=True)
def _one_thread():
    """The controller's tensors are tiny: one thread is fastest, most of all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_controller_shape_and_input_masking():
    space = SearchSpace(4)
    controller = Controller(space)
    assert controller.lstm.hidden_size == 100
    actions, log_prob, entropy = controller(64, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (64, len(space.decisions()))
    for d, decision in enumerate(space.decisions()):
        assert int(actions[:, d].max()) < decision.size
    assert torch.all(log_prob < 0) and torch.all(entropy > 0)
    # one entropy per decision, at most log(valid choices): masked inputs carry no mass
    assert entropy.shape == actions.shape
    normalised = controller.normalised_entropy(entropy)
    assert torch.all(normalised <= 1 + 1e-5) and float(normalised.detach().min()) > 0.95  # near uniform
    # scoring the sampled actions again gives the same log-probabilities
    _, again, _ = controller(64, actions)
    assert torch.allclose(log_prob, again, atol=1e-5)


def test_one_ppo_update_raises_the_probability_of_rewarded_actions():
    torch.manual_seed(0)
    space = SearchSpace(2)
    controller = Controller(space)
    config = StrategyConfig(space=space, rl_lr=0.01, ppo_epochs=4)
    trainer = PPOTrainer(controller, config)
    with torch.no_grad():
        actions, old, _ = controller(8, generator=torch.Generator().manual_seed(1))
    rewards = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    trainer.update(actions, old, rewards)
    with torch.no_grad():
        _, new, _ = controller(8, actions)
    change = new - old
    assert torch.all(change[rewards == 1] > 0)
    assert torch.all(change[rewards == 0] < 0)


def test_rl_strategy_learns_to_pick_the_rewarded_op():
    """A real tiny optimisation: reward 1 when the first op is conv_3x3 (1 of 13 ops)."""
    target = OP_NAMES.index("conv_3x3")
    space = SearchSpace(1)
    config = StrategyConfig(space=space, seed=0, rl_batch=8, rl_lr=0.02, ppo_epochs=4)
    strategy = RLStrategy(config)
    strategy.resume([])

    def share(n: int = 400) -> float:
        with torch.no_grad():
            actions, _, _ = strategy.controller(n, generator=torch.Generator().manual_seed(5))
        return float((actions[:, 2] == target).float().mean())

    before = share()
    for _ in range(160):
        p = strategy.propose()
        hit = p.genotype.normal.blocks[0].ops[0] == "conv_3x3"
        strategy.observe(p, Outcome(1.0 if hit else 0.1, 1.0, 1.0 if hit else 0.1, True))
    after = share()
    assert before < 0.15
    assert after > 0.4 and after > 3 * before


def _trainer(**settings: float) -> PPOTrainer:
    space = SearchSpace(1)
    return PPOTrainer(Controller(space), StrategyConfig(space=space, **settings))


def test_reward_statistics_are_bias_corrected_from_the_first_batch():
    trainer = _trainer()
    first = trainer.advantages(torch.full((4,), 0.5))  # identical first rewards
    assert torch.all(first == 0)
    assert trainer.baseline == pytest.approx(0.5) and trainer.deviation == 0.0
    second = trainer.advantages(torch.tensor([0.4, 0.6, 0.4, 0.6]))
    assert torch.all(torch.isfinite(second)) and float(second.abs().max()) < 1.5
    assert float(second.sum()) == pytest.approx(0.0, abs=1e-5)  # the baseline is still 0.5

    spread = _trainer().advantages(torch.tensor([0.2, 0.4, 0.6, 0.8]))
    # the first batch is scaled by its own deviation: unit spread (uncorrected it was 2.8)
    assert float(spread.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)

    steady = _trainer()
    for _ in range(5):
        steady.advantages(torch.full((4,), 0.8))
    assert steady.baseline == pytest.approx(0.8)  # not pulled towards 0


def test_noise_much_smaller_than_the_reward_gives_small_advantages():
    trainer = _trainer()
    noise = torch.Generator().manual_seed(0)
    largest = 0.0
    for _ in range(25):
        rewards = 0.25 + 0.01 * torch.randn(4, generator=noise)
        largest = max(largest, float(trainer.advantages(rewards).abs().max()))
    assert trainer.deviation is not None and trainer.deviation < 0.02
    # the deviation floor (a quarter of the reward scale) keeps +-0.01 from becoming +-1
    assert largest < 0.6
    real = trainer.advantages(torch.tensor([0.0, 0.5, 0.0, 0.5]))  # a real difference
    assert float(real.abs().max()) > 1.0


def _op_share(genotype: Genotype, op: str) -> float:
    ops = [o for cell in (genotype.normal, genotype.reduce) for b in cell.blocks for o in b.ops]
    return sum(o == op for o in ops) / len(ops)


def test_pure_noise_reward_keeps_every_decision_spread_out():
    """400 children rewarded 0.25 +- 0.01: nothing to learn, so the policy stays near uniform.

    Before the per-decision bonus and the deviation floor the mean normalised entropy fell
    to 0.80 (the lowest decision to 0.55) and one op's share rose from 0.077 to 0.31.
    """
    strategy = RLStrategy(StrategyConfig(space=SearchSpace(5), seed=0))
    strategy.resume([])
    start = strategy.entropy_report()
    assert start.mean > 0.99 and start.top_op_share < 0.1
    noise = torch.Generator().manual_seed(1000)
    for _ in range(400):
        proposal = strategy.propose()
        reward = 0.25 + 0.01 * float(torch.randn(1, generator=noise))
        strategy.observe(proposal, Outcome(reward, 1.0, reward, True))
    report = strategy.entropy_report()
    assert report.mean > 0.9
    assert report.lowest > 0.75, report.lowest_decision
    assert report.top_op_share < 0.15  # uniform is 1 / 13 = 0.077


def test_controller_still_learns_a_real_signal():
    """Reward = share of sep_conv_3x3 among the 12 ops of a 3-block genotype."""
    strategy = RLStrategy(StrategyConfig(space=SearchSpace(3), seed=0))
    strategy.resume([])
    rewards = []
    for _ in range(240):
        proposal = strategy.propose()
        rewards.append(_op_share(proposal.genotype, "sep_conv_3x3"))
        strategy.observe(proposal, Outcome(rewards[-1], 1.0, rewards[-1], True))
    first, last = sum(rewards[:40]) / 40, sum(rewards[-40:]) / 40
    assert first < 0.2
    assert last > 0.6 and last > 3 * first
    assert strategy.entropy_report().top_op_share > 0.6


def test_entropy_report_leaves_the_proposals_unchanged():
    def proposals(report: bool) -> list[Genotype]:
        strategy = RLStrategy(StrategyConfig(space=SearchSpace(2), seed=4, rl_batch=3))
        strategy.resume([])
        out = []
        for i in range(7):
            if report:
                strategy.entropy_report(16)
            p = strategy.propose()
            out.append(p.genotype)
            strategy.observe(p, Outcome(0.1 * i, 1.0, 0.1 * i, True))
        return out

    assert proposals(report=True) == proposals(report=False)
    strategy = RLStrategy(StrategyConfig(space=SearchSpace(2)))
    report = strategy.entropy_report(8)
    assert 0 < report.lowest <= report.mean <= 1 and report.lowest_decision.startswith(("normal", "reduce"))
    with pytest.raises(NasdeployError, match="at least 1 sample, got 0"):
        strategy.entropy_report(0)


@pytest.mark.parametrize("setting, value, message", [
    ("baseline_decay", 1.0, "baseline decay must be from 0 up to"),
    ("baseline_decay", math.nan, "baseline decay"),
    ("entropy_weight", -1.0, "entropy weight must be a finite number >= 0"),
])
def test_bad_trainer_settings_are_one_line_errors(setting, value, message):
    with pytest.raises(NasdeployError, match=message):
        RLStrategy(StrategyConfig(space=SearchSpace(1), **{setting: value}))


def _records(strategy: RLStrategy, n: int, start: int = 0) -> list[TrialRecord]:
    out = []
    for i in range(start, start + n):
        p = strategy.propose()
        reward = len({op for b in p.genotype.normal.blocks for op in b.ops}) / 4
        outcome = Outcome(reward, 1.0, reward, True)
        strategy.observe(p, outcome)
        out.append(TrialRecord(i, "rl", p.genotype.to_dict(), reward, 1.0, 1, 1, reward, True,
                               "ok", None, 0.1, 0.0, 0.0, utc_now()))
    return out


def test_checkpoint_and_resume_continue_exactly_where_the_run_stopped(tmp_path):
    config = StrategyConfig(space=SearchSpace(2), seed=3, run_dir=tmp_path, rl_batch=4)
    reference = RLStrategy(StrategyConfig(space=SearchSpace(2), seed=3, rl_batch=4))
    reference.resume([])
    expected = [r.genotype for r in _records(reference, 14)]

    interrupted = RLStrategy(config)
    interrupted.resume([])
    done = _records(interrupted, 6)  # one PPO update after 4, two into the next batch
    assert (tmp_path / CONTROLLER_NAME).exists()
    assert torch.load(tmp_path / CONTROLLER_NAME, weights_only=False)["observed"] == 4

    resumed = RLStrategy(config)
    resumed.resume(done)
    assert resumed.observed == 6 and resumed.trainer.updates == 1
    rest = _records(resumed, 8, start=6)
    assert [r.genotype for r in done + rest] == expected


def _as_version_1(state: dict) -> dict:
    """A version-2 state as the controller of version 1 saved it (uncorrected statistics)."""
    old = {k: v for k, v in state.items()
           if k not in ("reward_mean", "reward_sq", "stat_steps", "baseline", "deviation")}
    old["version"] = 1
    old["baseline"] = state["baseline"]  # v1's baseline started at the first mean: unbiased
    old["reward_var"] = state["reward_sq"]  # v1's variance started at 0, uncorrected
    return old


def test_a_version_1_controller_checkpoint_resumes_and_continues(tmp_path):
    """A ``controller.pt`` without the bias-correction fields still loads and resumes."""
    config = StrategyConfig(space=SearchSpace(2), seed=3, run_dir=tmp_path, rl_batch=4)
    reference = RLStrategy(StrategyConfig(space=SearchSpace(2), seed=3, rl_batch=4))
    reference.resume([])
    expected = [r.genotype for r in _records(reference, 14)]

    interrupted = RLStrategy(config)
    interrupted.resume([])
    done = _records(interrupted, 10)  # two updates
    path = tmp_path / CONTROLLER_NAME
    state = torch.load(path, weights_only=True)
    assert state["version"] == 2 and state["stat_steps"] == 2
    torch.save(_as_version_1(state), path)

    resumed = RLStrategy(config)
    resumed.resume(done)
    assert resumed.trainer.steps == 2 and resumed.trainer.updates == 2
    assert resumed.trainer.baseline == pytest.approx(state["baseline"])
    assert resumed.trainer.deviation == pytest.approx(state["deviation"])
    rest = _records(resumed, 4, start=10)
    assert [r.genotype for r in done + rest] == expected
    assert torch.load(path, weights_only=True)["version"] == 2  # rewritten in the new format


@pytest.mark.parametrize("change, message", [
    ({"version": 99}, "version 99 is not supported"),
    ({"reward_sq": -1.0}, "invalid reward statistics"),
    ({"stat_steps": "two"}, "invalid reward statistics"),
    ({"reward_mean": math.inf}, "invalid reward statistics"),
])
def test_a_damaged_controller_checkpoint_is_a_one_line_error(change, message):
    strategy = RLStrategy(StrategyConfig(space=SearchSpace(1), seed=0, rl_batch=2))
    _records(strategy, 2)
    state = {**strategy.state_dict(), **change}
    fresh = RLStrategy(StrategyConfig(space=SearchSpace(1), seed=0, rl_batch=2))
    with pytest.raises(NasdeployError, match=message) as info:
        fresh.load_state_dict(state)
    assert "\n" not in str(info.value)
