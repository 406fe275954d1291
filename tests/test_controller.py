"""The LSTM controller and its PPO training: masking, learning, checkpoint and resume."""

from __future__ import annotations

import torch

from search.core.rundir import CONTROLLER_NAME
from search.nn.ops import OP_NAMES
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, StrategyConfig
from search.strategies.rl import Controller, PPOTrainer, RLStrategy
from search.trials.history import TrialRecord, utc_now


def test_controller_shape_and_input_masking():
    space = SearchSpace(4)
    controller = Controller(space)
    assert controller.lstm.hidden_size == 100
    actions, log_prob, entropy = controller(64, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (64, len(space.decisions()))
    for d, decision in enumerate(space.decisions()):
        assert int(actions[:, d].max()) < decision.size
    assert torch.all(log_prob < 0) and torch.all(entropy > 0)
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
