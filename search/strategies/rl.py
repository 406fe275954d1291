"""The RL strategy: NASNet's LSTM controller trained with PPO.

The controller is a one-layer LSTM (100 hidden units, as in NASNet) that emits the
decisions of :class:`search.space.searchspace.SearchSpace` one at a time: for each block of the
normal and then the reduction cell, two inputs (indices the block cannot read are
masked out), two ops and a combine. Each sampled choice is embedded and fed back as the
next input. Children are sampled in batches; after each batch the controller takes a few
PPO epochs (clipped ratio objective, advantage = reward minus a moving-average baseline
scaled by a running reward deviation, plus an entropy bonus).

State lives in ``controller.pt`` (weights, optimizer, baseline, sampling RNG and the
number of outcomes already learnt from), written atomically after every update. On
resume the checkpoint is loaded and the trials recorded since are replayed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError
from search.core.rundir import CONTROLLER_NAME
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, Proposal, Strategy, StrategyConfig, register_strategy
from search.trials.history import TrialRecord

_MASKED = -1e9


class Controller(nn.Module):
    """LSTM policy over the decisions of a search space."""

    def __init__(self, space: SearchSpace, hidden: int = 100):
        super().__init__()
        self.decisions = space.decisions()
        sizes = {"input": space.max_inputs,
                 "op": max(d.size for d in self.decisions if d.kind == "op"),
                 "combine": max(d.size for d in self.decisions if d.kind == "combine")}
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.embed = nn.ModuleDict({k: nn.Embedding(n, hidden) for k, n in sizes.items()})
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in sizes.items()})
        nn.init.uniform_(self.start, -0.1, 0.1)

    def forward(
        self, batch: int, actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (``actions is None``) or score ``actions`` of shape ``[batch, D]``.

        Returns:
            The actions ``[batch, D]``, their summed log-probability ``[batch]`` and the
            summed entropy of the per-decision distributions ``[batch]``.
        """
        x = self.start.expand(batch, -1)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen, log_prob, entropy = [], x.new_zeros(batch), x.new_zeros(batch)
        for d, decision in enumerate(self.decisions):
            h, c = self.lstm(x, state)
            state = (h, c)
            logits = self.heads[decision.kind](h)
            if decision.size < logits.shape[1]:  # inputs this block cannot read
                logits = logits.masked_fill(
                    torch.arange(logits.shape[1]) >= decision.size, _MASKED)
            logp = torch.log_softmax(logits, dim=1)
            if actions is None:
                a = torch.multinomial(logp.exp().detach(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, d]
            chosen.append(a)
            log_prob = log_prob + logp.gather(1, a[:, None]).squeeze(1)
            entropy = entropy - (logp.exp() * logp).sum(dim=1)
            x = self.embed[decision.kind](a)
        return torch.stack(chosen, dim=1), log_prob, entropy


class PPOTrainer:
    """PPO updates for a :class:`Controller` from (actions, old log-prob, reward)."""

    def __init__(self, controller: Controller, config: StrategyConfig):
        self.controller = controller
        self.config = config
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=config.rl_lr)
        self.baseline: float | None = None
        self.reward_var = 0.0
        self.updates = 0

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Reward minus the moving-average baseline, scaled by a running deviation."""
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        adv = rewards - self.baseline
        decay = self.config.baseline_decay
        self.reward_var = decay * self.reward_var + (1 - decay) * float((adv**2).mean())
        self.baseline = decay * self.baseline + (1 - decay) * float(rewards.mean())
        return adv / (math.sqrt(self.reward_var) + 1e-2)

    def update(self, actions: torch.Tensor, old_log_prob: torch.Tensor,
               rewards: torch.Tensor) -> float:
        """Run the PPO epochs on one batch; return the last loss."""
        adv = self.advantages(rewards)
        eps = self.config.clip
        loss = torch.zeros(())
        for _ in range(self.config.ppo_epochs):
            _, log_prob, entropy = self.controller(actions.shape[0], actions)
            ratio = torch.exp(log_prob - old_log_prob)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
            loss = -(surrogate.mean() + self.config.entropy_weight * entropy.mean())
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.controller.parameters(), 5.0)
            self.optimizer.step()
        self.updates += 1
        return float(loss.detach())


@register_strategy("rl")
class RLStrategy(Strategy):
    """Sample children from the LSTM controller; learn with PPO after every batch."""

    name = "rl"

    def __init__(self, config: StrategyConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.controller = Controller(config.space)
        self.trainer = PPOTrainer(self.controller, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.pending: list[Proposal] = []
        self.buffer: list[tuple[Proposal, float]] = []
        self.observed = 0

    @property
    def checkpoint_path(self) -> Path | None:
        run_dir = self.config.run_dir
        return None if run_dir is None else Path(run_dir) / CONTROLLER_NAME

    def _sample_batch(self) -> list[Proposal]:
        with torch.no_grad():
            actions, log_prob, _ = self.controller(self.config.rl_batch,
                                                   generator=self.generator)
        return [self._proposal(a.tolist(), float(lp)) for a, lp in zip(actions, log_prob, strict=True)]

    def _proposal(self, actions: list[int], log_prob: float) -> Proposal:
        genotype = self.space.decode(actions)
        return Proposal(genotype, {"actions": actions, "log_prob": log_prob})

    def _score(self, genotype: Genotype) -> Proposal:
        actions = self.space.encode(genotype)
        with torch.no_grad():
            _, log_prob, _ = self.controller(1, torch.tensor([actions]))
        return self._proposal(actions, float(log_prob[0]))

    def propose(self) -> Proposal:
        if not self.pending:
            self.pending = self._sample_batch()
        return self.pending.pop(0)

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        reward = outcome.reward if math.isfinite(outcome.reward) else 0.0
        self.buffer.append((proposal, reward))
        self.observed += 1
        if len(self.buffer) >= self.config.rl_batch:
            self._learn()

    def _learn(self) -> None:
        actions = torch.tensor([p.info["actions"] for p, _ in self.buffer])
        old = torch.tensor([p.info["log_prob"] for p, _ in self.buffer])
        rewards = torch.tensor([r for _, r in self.buffer], dtype=torch.float32)
        self.trainer.update(actions, old, rewards)
        self.buffer.clear()
        self.pending.clear()
        self.save()

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "nasdeploy-controller", "version": 1,
            "num_blocks": self.space.num_blocks, "seed": self.config.seed,
            "model": self.controller.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "baseline": self.trainer.baseline, "reward_var": self.trainer.reward_var,
            "updates": self.trainer.updates, "observed": self.observed,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_blocks") != self.space.num_blocks:
            raise NasdeployError(f"controller checkpoint is for {state.get('num_blocks')} "
                                 f"blocks, this run has {self.space.num_blocks}")
        self.controller.load_state_dict(state["model"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.baseline = state["baseline"]
        self.trainer.reward_var = state["reward_var"]
        self.trainer.updates = state["updates"]
        self.observed = state["observed"]
        self.generator.set_state(state["generator"])

    def save(self) -> None:
        """Write ``controller.pt`` atomically (no-op without a run directory)."""
        path = self.checkpoint_path
        if path is not None:
            with atomic_path(path) as tmp:
                torch.save(self.state_dict(), tmp)

    def resume(self, records: Sequence[TrialRecord]) -> None:
        path = self.checkpoint_path
        if path is not None and path.exists():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file
                raise NasdeployError(f"cannot read {path}: {exc}") from None
            self.load_state_dict(state)
        for record in records[self.observed:]:
            self._replay(record)

    def _replay(self, record: TrialRecord) -> None:
        genotype = record.to_genotype()
        if not self.pending and not self.buffer:
            self.pending = self._sample_batch()
        if self.pending and self.pending[0].genotype == genotype:
            proposal = self.pending.pop(0)
        else:
            proposal = self._score(genotype)
        self.observe(proposal, Outcome.from_record(record))
