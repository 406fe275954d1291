"""The RL strategy: NASNet's LSTM controller trained with PPO.

The controller is a one-layer LSTM (100 hidden units, as in NASNet) that emits the
decisions of :class:`search.space.searchspace.SearchSpace` one at a time: for each block of the
normal and then the reduction cell, two inputs (indices the block cannot read are
masked out), two ops and a combine. Each sampled choice is embedded and fed back as the
next input. Children are sampled in batches; after each batch the controller takes a few
PPO epochs (clipped ratio objective, advantage = reward minus a moving-average baseline
scaled by a running reward deviation, plus a bonus on the mean per-decision entropy).

The baseline and the deviation are exponential moving averages, bias-corrected as in Adam
(divided by ``1 - decay**t`` after ``t`` updates), so the first updates are neither pulled
towards 0 nor divided by a near-zero deviation; the deviation is floored at
:data:`DEVIATION_FLOOR` times the reward scale, so rewards that differ only by noise much
smaller than the rewards themselves give small advantages instead of being blown up to unit
size. Entropies are per decision and normalised by ``log`` of the number of valid choices
(1 = uniform); :meth:`Controller.entropy_report` reports them so collapse can be watched.

State lives in ``controller.pt`` (weights, optimizer, reward statistics, sampling RNG and
the number of outcomes already learnt from), written atomically after every update. On
resume the checkpoint is loaded (also one of version 1, written before the statistics were
bias-corrected) and the trials recorded since are replayed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError, shorten
from search.core.rundir import CONTROLLER_NAME
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, Proposal, Strategy, StrategyConfig, register_strategy
from search.trials.history import TrialRecord

_MASKED = -1e9
CHECKPOINT_VERSION = 2
"""``controller.pt`` version: 2 stores the raw moving averages and their step count."""
DEVIATION_FLOOR = 0.25
"""Smallest reward deviation used to scale advantages, as a fraction of the reward scale."""
MIN_REWARD_SCALE = 0.1
"""Smallest reward scale (``|baseline|``) the floor is taken of, for baselines near 0."""


@dataclass(frozen=True)
class EntropyReport:
    """How spread out the controller's policy is (1 = uniform, 0 = deterministic).

    Attributes:
        mean: mean over decisions of the normalised entropy ``H / log(valid choices)``.
        lowest: the lowest per-decision normalised entropy.
        lowest_decision: the name of that decision (``reduce_b3_op1``, ...).
        top_op_share: the largest probability of one op over all op decisions
            (``1 / number of ops`` when uniform).
    """

    mean: float
    lowest: float
    lowest_decision: str
    top_op_share: float


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
        # log(valid choices) per decision (0 for a decision with one choice); not saved
        log_choices = torch.tensor([math.log(d.size) for d in self.decisions])
        self.register_buffer("log_choices", log_choices, persistent=False)

    def forward(
        self, batch: int, actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (``actions is None``) or score ``actions`` of shape ``[batch, D]``.

        Returns:
            The actions ``[batch, D]``, their summed log-probability ``[batch]`` and the
            entropy in nats of each decision's distribution ``[batch, D]``.
        """
        actions, log_prob, entropy, _ = self._rollout(batch, actions, generator)
        return actions, log_prob, entropy

    def _rollout(
        self, batch: int, actions: torch.Tensor | None, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` plus each decision's probabilities (``[batch, choices]``)."""
        x = self.start.expand(batch, -1)
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen, log_prob = [], x.new_zeros(batch)
        entropies: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for d, decision in enumerate(self.decisions):
            h, c = self.lstm(x, state)
            state = (h, c)
            logits = self.heads[decision.kind](h)
            if decision.size < logits.shape[1]:  # inputs this block cannot read
                logits = logits.masked_fill(
                    torch.arange(logits.shape[1]) >= decision.size, _MASKED)
            logp = torch.log_softmax(logits, dim=1)
            p = logp.exp()
            if actions is None:
                a = torch.multinomial(p.detach(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, d]
            chosen.append(a)
            log_prob = log_prob + logp.gather(1, a[:, None]).squeeze(1)
            entropies.append(-(p * logp).sum(dim=1))
            probs.append(p[:, :decision.size])
            x = self.embed[decision.kind](a)
        return torch.stack(chosen, dim=1), log_prob, torch.stack(entropies, dim=1), probs

    def normalised_entropy(self, entropy: torch.Tensor) -> torch.Tensor:
        """Per-decision entropies ``[..., D]`` (nats) divided by ``log(valid choices)``.

        A decision with a single choice has nothing to spread and counts as 1.
        """
        valid = self.log_choices > 0
        return torch.where(valid, entropy / self.log_choices.clamp(min=1e-12),
                           torch.ones_like(entropy))

    def entropy_report(self, samples: int = 256, seed: int = 0) -> EntropyReport:
        """Summarise the policy over ``samples`` sampled children (no RNG state is touched).

        Raises:
            NasdeployError: ``samples`` is not a positive whole number.
        """
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise NasdeployError(f"entropy report needs at least 1 sample, got {samples!r}")
        with torch.no_grad():
            _, _, entropy, probs = self._rollout(
                samples, None, torch.Generator().manual_seed(seed))
        per_decision = self.normalised_entropy(entropy).mean(dim=0)
        lowest = int(per_decision.argmin())
        ops = [p.mean(dim=0) for p, d in zip(probs, self.decisions, strict=True) if d.kind == "op"]
        return EntropyReport(
            mean=float(per_decision.mean()), lowest=float(per_decision[lowest]),
            lowest_decision=self.decisions[lowest].name,
            top_op_share=float(torch.stack(ops).mean(dim=0).max()) if ops else 0.0)


class PPOTrainer:
    """PPO updates for a :class:`Controller` from (actions, old log-prob, reward).

    The reward statistics are exponential moving averages with decay
    ``config.baseline_decay``: ``reward_mean`` of the batch mean rewards and ``reward_sq``
    of the squared advantages, both started at 0 and bias-corrected by ``1 - decay**steps``.
    """

    def __init__(self, controller: Controller, config: StrategyConfig):
        decay = config.baseline_decay
        if not (isinstance(decay, int | float) and 0 <= decay < 1):
            raise NasdeployError(f"baseline decay must be from 0 up to (not incl.) 1, got {decay!r}")
        weight = config.entropy_weight
        if not (isinstance(weight, int | float) and 0 <= weight < math.inf):
            raise NasdeployError(f"entropy weight must be a finite number >= 0, got {weight!r}")
        self.controller = controller
        self.config = config
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=config.rl_lr)
        self.reward_mean = 0.0
        self.reward_sq = 0.0
        self.steps = 0
        self.updates = 0

    def _corrected(self, value: float) -> float:
        return value / (1 - self.config.baseline_decay ** self.steps)

    @property
    def baseline(self) -> float | None:
        """The bias-corrected moving-average reward (``None`` before the first batch)."""
        return self._corrected(self.reward_mean) if self.steps else None

    @property
    def deviation(self) -> float | None:
        """The bias-corrected running deviation of the rewards from the baseline."""
        return math.sqrt(self._corrected(self.reward_sq)) if self.steps else None

    def deviation_floor(self) -> float:
        """The smallest deviation advantages are divided by: a fraction of the reward scale."""
        scale = abs(self.baseline) if self.baseline is not None else 0.0
        return DEVIATION_FLOOR * max(scale, MIN_REWARD_SCALE)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Reward minus the moving-average baseline, scaled by the running deviation.

        The statistics are updated with this batch first; after one batch the baseline is
        its mean and the deviation its spread, so identical first rewards give zeros.
        """
        decay = self.config.baseline_decay
        self.steps += 1
        self.reward_mean = decay * self.reward_mean + (1 - decay) * float(rewards.mean())
        adv = rewards - self._corrected(self.reward_mean)
        self.reward_sq = decay * self.reward_sq + (1 - decay) * float((adv**2).mean())
        deviation = math.sqrt(self._corrected(self.reward_sq))
        return adv / max(deviation, self.deviation_floor())

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
            bonus = self.controller.normalised_entropy(entropy).mean()
            loss = -(surrogate.mean() + self.config.entropy_weight * bonus)
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

    def capacity(self, outstanding: int) -> int:
        """The rest of the current batch: PPO learns from whole batches of ``rl_batch``
        children, so with parallel workers a batch is proposed, evaluated and observed
        before the next one is sampled from the updated controller."""
        return self.config.rl_batch - len(self.buffer) - outstanding

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

    def entropy_report(self, samples: int = 256) -> EntropyReport:
        """Per-decision entropy of the current policy (see :meth:`Controller.entropy_report`)."""
        return self.controller.entropy_report(samples)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "nasdeploy-controller", "version": CHECKPOINT_VERSION,
            "num_blocks": self.space.num_blocks, "seed": self.config.seed,
            "model": self.controller.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "reward_mean": self.trainer.reward_mean, "reward_sq": self.trainer.reward_sq,
            "stat_steps": self.trainer.steps,
            "baseline": self.trainer.baseline, "deviation": self.trainer.deviation,
            "updates": self.trainer.updates, "observed": self.observed,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, also one of version 1 (uncorrected statistics).

        Version 1 kept ``baseline`` (a moving average started at the first batch's mean,
        so already unbiased) and ``reward_var`` (started at 0, so biased by
        ``1 - decay**updates``); they become the raw averages of version 2 unchanged in
        meaning: the corrected baseline is the old one, the variance gets its correction.
        """
        version = state.get("version", 1)
        if version not in (1, CHECKPOINT_VERSION):
            raise NasdeployError(f"controller checkpoint version {version!r} is not supported "
                                 f"(this nasdeploy reads 1 and {CHECKPOINT_VERSION})")
        if state.get("num_blocks") != self.space.num_blocks:
            raise NasdeployError(f"controller checkpoint is for {state.get('num_blocks')} "
                                 f"blocks, this run has {self.space.num_blocks}")
        statistics = self._statistics(state, version)
        self.controller.load_state_dict(state["model"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.steps, self.trainer.reward_mean, self.trainer.reward_sq = statistics
        self.trainer.updates = state["updates"]
        self.observed = state["observed"]
        self.generator.set_state(state["generator"])

    def _statistics(self, state: dict[str, Any], version: int) -> tuple[int, float, float]:
        """``(steps, reward_mean, reward_sq)`` of a checkpoint, checked to be usable."""
        if version == 1:
            steps, baseline, square = state["updates"], state["baseline"], state["reward_var"]
            if baseline is None:
                baseline = 0.0
        else:
            steps, baseline, square = state["stat_steps"], state["reward_mean"], state["reward_sq"]
        numbers = (baseline, square)
        if (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
                or square < 0):
            raise NasdeployError("controller checkpoint has invalid reward statistics "
                                 f"(steps {shorten(steps)}, mean {shorten(baseline)}, "
                                 f"square {shorten(square)})")
        mean = float(baseline)
        if version == 1:  # an unbiased average: store it as the raw one that corrects to it
            mean *= 1 - self.config.baseline_decay ** steps
        return steps, mean, float(square)

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
        # parallel workers record a batch in completion order: match any child of it
        match = next((i for i, p in enumerate(self.pending) if p.genotype == genotype), None)
        proposal = self.pending.pop(match) if match is not None else self._score(genotype)
        self.observe(proposal, Outcome.from_record(record))
