"""The MnasNet reward and the budget parsers (pure functions)."""

from __future__ import annotations

import math

import pytest

from search.core.errors import NasdeployError
from search.core.units import parse_count, parse_duration, parse_latency
from search.evaluation.reward import RewardConfig, is_feasible, mnas_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5ms", 5.0), ("5 ms", 5.0), ("0.005s", 5.0), ("800us", 0.8), ("800 µs", 0.8),
     (" 2.5ms ", 2.5), ("1e-3s", 1.0)],
)
def test_parse_latency_units(text: str, expected: float) -> None:
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["5", "5 parsecs", "ms", "-5ms", "0ms", "5 m s", "", "5msx"])
def test_parse_latency_rejects_bad_strings_in_one_line(text: str) -> None:
    with pytest.raises(NasdeployError) as info:
        parse_latency(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("600M", 600_000_000), ("1.2G", 1_200_000_000), ("600000000", 600_000_000),
     ("600 MFLOPs", 600_000_000), ("250k", 250_000), ("2g macs", 2_000_000_000)],
)
def test_parse_count(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["lots", "600X", "", "0", "1.2.3G"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(NasdeployError):
        parse_count(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", 1800.0), ("2h", 7200.0), ("90s", 90.0), ("45", 45.0), ("1h30m", 5400.0),
     ("10 min", 600.0)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "3 weeks", "1h30", "", "0s", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(NasdeployError):
        parse_duration(text)


def test_reward_is_neutral_at_the_budget() -> None:
    config = RewardConfig(latency_budget_ms=5.0)
    assert mnas_reward(0.8, 5.0, config) == pytest.approx(0.8)
    assert mnas_reward(0.8, 5.0, RewardConfig(5.0, hard=True)) == pytest.approx(0.8)


def test_reward_is_monotone_in_accuracy() -> None:
    config = RewardConfig(latency_budget_ms=5.0)
    for latency in (1.0, 5.0, 20.0):
        rewards = [mnas_reward(acc, latency, config) for acc in (0.1, 0.5, 0.9, 1.0)]
        assert rewards == sorted(rewards) and len(set(rewards)) == 4


def test_reward_penalises_over_budget_latency() -> None:
    config = RewardConfig(latency_budget_ms=5.0)
    fast, at_budget, slow, slower = (mnas_reward(0.8, lat, config) for lat in (2.5, 5, 10, 20))
    assert fast > at_budget > slow > slower
    # MnasNet's soft constraint: twice the budget costs about 5 %.
    assert slow / at_budget == pytest.approx(2 ** -0.07)


def test_hard_constraint_is_stronger_than_soft() -> None:
    soft = RewardConfig(latency_budget_ms=5.0)
    hard = RewardConfig(latency_budget_ms=5.0, hard=True)
    assert mnas_reward(0.8, 10.0, hard) < mnas_reward(0.8, 10.0, soft)
    assert mnas_reward(0.8, 10.0, hard) == pytest.approx(0.4)
    # no bonus for being faster than the budget under the hard constraint
    assert mnas_reward(0.8, 1.0, hard) == pytest.approx(0.8)
    assert hard.exponents == (0.0, -1.0)


def test_macs_budget_applies_the_same_factor() -> None:
    config = RewardConfig(latency_budget_ms=5.0, macs_budget=100_000_000)
    at_budget = mnas_reward(0.8, 5.0, config, macs=100_000_000)
    over = mnas_reward(0.8, 5.0, config, macs=200_000_000)
    assert at_budget == pytest.approx(0.8)
    assert over == pytest.approx(0.8 * 2 ** -0.07)
    assert is_feasible(5.0, config, macs=100_000_000)
    assert not is_feasible(5.0, config, macs=100_000_001)
    assert not is_feasible(5.0, config, macs=None)


def test_failed_children_get_the_lowest_reward() -> None:
    config = RewardConfig(latency_budget_ms=5.0)
    worst_ok = mnas_reward(0.01, 1000.0, config)
    assert worst_ok > 0
    assert mnas_reward(0.0, 1.0, config) == 0.0
    assert mnas_reward(float("nan"), 1.0, config) == 0.0
    assert mnas_reward(0.9, float("nan"), config) == 0.0
    assert mnas_reward(0.9, math.inf, config) == 0.0


def test_feasibility_follows_the_latency_budget() -> None:
    config = RewardConfig(latency_budget_ms=5.0)
    assert is_feasible(5.0, config) and is_feasible(0.1, config)
    assert not is_feasible(5.01, config) and not is_feasible(float("nan"), config)


@pytest.mark.parametrize(
    "kwargs", [{"latency_budget_ms": 0.0}, {"latency_budget_ms": 5.0, "alpha": 0.07},
               {"latency_budget_ms": 5.0, "macs_budget": 0}],
)
def test_invalid_reward_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(NasdeployError):
        RewardConfig(**kwargs)
