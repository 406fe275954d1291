"""Budgets and the MnasNet reward: pure functions of plain values (no torch).

The reward follows MnasNet (Tan et al., 2019, eq. 2)::

    reward = accuracy * (latency / T) ** w,   w = alpha if latency <= T else beta

with ``alpha = beta = -0.07`` for the *soft* constraint (the paper's default: a model
twice as fast as the budget gains about 5%, one twice as slow loses about 5%) and
``alpha = 0, beta = -1`` for the *hard* constraint (no bonus under the budget, reward
divided by the overshoot ratio above it). When a MAC budget is given the same factor is
applied to ``macs / macs_budget``. Failed or diverged children (accuracy 0) get reward 0,
the lowest possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from search.core.errors import NasdeployError

SOFT_WEIGHT = -0.07
HARD_ALPHA = 0.0
HARD_BETA = -1.0
MIN_WEIGHT = -10.0
"""Most negative exponent accepted (MnasNet uses -0.07 soft and -1 hard); a steeper one
would make the reward overflow a float for a child far from the budget."""
MAX_MACS_BUDGET = 10**18
"""Largest MAC budget (a million T-MACs)."""

@dataclass(frozen=True)
class RewardConfig:
    """Budgets and exponents of the MnasNet reward.

    Attributes:
        latency_budget_ms: the target latency ``T`` in milliseconds.
        alpha: exponent when the budget is met (soft default -0.07, MnasNet).
        beta: exponent when it is exceeded (soft default -0.07, MnasNet).
        hard: use the hard constraint (``alpha=0, beta=-1``) instead of ``alpha``/``beta``.
        macs_budget: optional multiply-accumulate budget, penalised with the same form.
    """

    latency_budget_ms: float
    alpha: float = SOFT_WEIGHT
    beta: float = SOFT_WEIGHT
    hard: bool = False
    macs_budget: int | None = None

    def __post_init__(self) -> None:
        if not (_is_number(self.latency_budget_ms) and math.isfinite(self.latency_budget_ms)
                and self.latency_budget_ms > 0):
            raise NasdeployError(f"latency budget must be a positive number of milliseconds, got "
                                 f"{self.latency_budget_ms!r}"[:160])
        weights = (self.alpha, self.beta)
        if not all(_is_number(w) and math.isfinite(w) and MIN_WEIGHT <= w <= 0 for w in weights):
            raise NasdeployError(f"latency weights must be <= 0 and >= {MIN_WEIGHT:g} (e.g. -0.07), "
                                 f"got alpha={self.alpha!r} beta={self.beta!r}"[:160])
        if not isinstance(self.hard, bool):
            raise NasdeployError(f"hard constraint must be true or false, got {self.hard!r}"[:160])
        if self.macs_budget is not None and not (
                isinstance(self.macs_budget, int) and not isinstance(self.macs_budget, bool)
                and 1 <= self.macs_budget <= MAX_MACS_BUDGET):
            raise NasdeployError(f"MAC budget must be a whole number from 1 to {MAX_MACS_BUDGET:.0e}, "
                                 f"got {self.macs_budget!r}"[:160])

    @property
    def exponents(self) -> tuple[float, float]:
        """The ``(alpha, beta)`` actually used (the hard constraint overrides them)."""
        return (HARD_ALPHA, HARD_BETA) if self.hard else (self.alpha, self.beta)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def constraint_factor(value: float, budget: float, alpha: float, beta: float) -> float:
    """MnasNet's multiplicative factor ``(value / budget) ** w``; exactly 1 at the budget.

    Computed in logarithms and capped at ``1e300``, so no ratio overflows a float.
    """
    weight = alpha if value <= budget else beta
    if weight == 0:
        return 1.0
    exponent = weight * math.log(max(value, 1e-12) / budget)
    return math.exp(min(exponent, math.log(1e300)))


def mnas_reward(
    accuracy: float, latency_ms: float, config: RewardConfig, macs: int | None = None
) -> float:
    """The MnasNet reward of one child.

    Args:
        accuracy: validation accuracy in ``[0, 1]``; 0 for a failed or diverged child.
        latency_ms: measured latency of the deployment model.
        config: budgets and exponents.
        macs: MACs of the deployment model; required when ``config.macs_budget`` is set.

    Returns:
        The reward, ``0.0`` when the accuracy or latency is missing, zero or not finite.
    """
    if not (math.isfinite(accuracy) and accuracy > 0):
        return 0.0
    if not (math.isfinite(latency_ms) and latency_ms > 0):
        return 0.0
    alpha, beta = config.exponents
    reward = accuracy * constraint_factor(latency_ms, config.latency_budget_ms, alpha, beta)
    if config.macs_budget is not None:
        if macs is None:
            raise ValueError("mnas_reward needs macs when a MAC budget is set")
        reward *= constraint_factor(float(macs), float(config.macs_budget), alpha, beta)
    return reward


def is_feasible(latency_ms: float, config: RewardConfig, macs: int | None = None) -> bool:
    """Whether a child meets the latency budget (and the MAC budget when one is set)."""
    if not (math.isfinite(latency_ms) and 0 < latency_ms <= config.latency_budget_ms):
        return False
    if config.macs_budget is None:
        return True
    return macs is not None and macs <= config.macs_budget
