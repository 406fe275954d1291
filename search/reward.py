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
import re
from dataclasses import dataclass

from search.errors import NasdeployError

SOFT_WEIGHT = -0.07
HARD_ALPHA = 0.0
HARD_BETA = -1.0

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"
_LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3, "μs": 1e-3}
_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*"
_DURATION_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
    "h": 3600.0, "hr": 3600.0, "d": 86400.0,
}


class BudgetError(NasdeployError, ValueError):
    """A budget string that cannot be parsed (a ``NasdeployError`` and a ``ValueError``)."""


def _number(mantissa: str, exponent: str | None) -> float:
    return float(mantissa) * (10.0 ** int(exponent) if exponent else 1.0)


def parse_latency(text: str) -> float:
    """Parse a latency such as ``"5ms"``, ``"5 ms"``, ``"0.005s"`` or ``"800us"``.

    Args:
        text: a positive number followed by a unit (``ms``, ``s``, ``us`` or ``µs``).

    Returns:
        The latency in milliseconds.

    Raises:
        BudgetError: on a missing or unknown unit, or a value that is not positive.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*(ms|s|us|µs|μs)\s*", str(text))
    if match is None:
        raise BudgetError(
            f"cannot read latency {text!r}: use a number with a unit, e.g. 5ms, 0.005s or 800us"
        )
    value = _number(match.group(1), match.group(2)) * _LATENCY_UNITS[match.group(3)]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"latency budget must be positive, got {text!r}")
    return value


def parse_count(text: str) -> int:
    """Parse a MAC/FLOP count such as ``"600M"``, ``"1.2G"``, ``"600000000"`` or ``"600 MFLOPs"``.

    Suffixes ``k``, ``M``, ``G``, ``T`` (case-insensitive) are decimal multipliers; an optional
    trailing ``FLOPs``/``MACs`` word is ignored.

    Raises:
        BudgetError: on anything else, or a value that is not positive.
    """
    pattern = rf"\s*{_NUMBER}\s*([kKmMgGtT]?)\s*(?:flops?|macs?)?\s*"
    match = re.fullmatch(pattern, str(text), flags=re.IGNORECASE)
    if match is None:
        raise BudgetError(f"cannot read count {text!r}: use e.g. 600M, 1.2G or 600000000")
    value = _number(match.group(1), match.group(2)) * _COUNT_SUFFIXES[match.group(3).lower()]
    if not math.isfinite(value) or value < 1:
        raise BudgetError(f"count budget must be at least 1, got {text!r}")
    return int(round(value))


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or ``"45"`` (seconds).

    Returns:
        The duration in seconds.

    Raises:
        BudgetError: on an unknown unit or a duration that is not positive.
    """
    cleaned = str(text).strip().lower()
    valid = re.fullmatch(rf"(?:{_DURATION_PART})+", cleaned) is not None
    parts = re.findall(_DURATION_PART, cleaned) if valid else []
    units = [unit for _, unit in parts]
    unknown = any(unit not in _DURATION_UNITS for unit in units)
    if not parts or unknown or (len(parts) > 1 and "" in units):
        raise BudgetError(f"cannot read duration {text!r}: use e.g. 90s, 30m, 2h or 1h30m")
    seconds = sum(float(value) * _DURATION_UNITS[unit] for value, unit in parts)
    if seconds <= 0:
        raise BudgetError(f"duration must be positive, got {text!r}")
    return seconds


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
        if not (math.isfinite(self.latency_budget_ms) and self.latency_budget_ms > 0):
            raise NasdeployError(f"latency budget must be positive, got {self.latency_budget_ms}")
        if self.alpha > 0 or self.beta > 0:
            raise NasdeployError(
                f"latency weights must be <= 0 (e.g. -0.07), got alpha={self.alpha} "
                f"beta={self.beta}"
            )
        if self.macs_budget is not None and self.macs_budget < 1:
            raise NasdeployError(f"MAC budget must be at least 1, got {self.macs_budget}")

    @property
    def exponents(self) -> tuple[float, float]:
        """The ``(alpha, beta)`` actually used (the hard constraint overrides them)."""
        return (HARD_ALPHA, HARD_BETA) if self.hard else (self.alpha, self.beta)


def constraint_factor(value: float, budget: float, alpha: float, beta: float) -> float:
    """MnasNet's multiplicative factor ``(value / budget) ** w``; exactly 1 at the budget."""
    ratio = max(value, 1e-12) / budget
    return ratio ** (alpha if value <= budget else beta)


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
    if not (math.isfinite(latency_ms) and latency_ms <= config.latency_budget_ms):
        return False
    if config.macs_budget is None:
        return True
    return macs is not None and macs <= config.macs_budget
