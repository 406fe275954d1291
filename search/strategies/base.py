"""The one interface every search strategy implements, and the registry of strategies.

A strategy proposes a genotype, the loop evaluates it, and the strategy observes the
outcome (ask/tell). Strategies are registered by name with :func:`register_strategy`
and built with :func:`create_strategy`; everything they need (the search space, the
seed, the run directory for their state) comes in one :class:`StrategyConfig`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from search.core.errors import NasdeployError
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.trials.history import TrialRecord

_BUILTIN_MODULES = ("search.strategies.rl", "search.strategies.optuna_study")
DEFAULT_STUDY_NAME = "nasdeploy"
"""Optuna study name when none is given (in-memory studies, runs made before study names)."""


@dataclass
class Proposal:
    """A proposed genotype plus whatever its strategy needs back in :meth:`observe`."""

    genotype: Genotype
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What a strategy learns about a proposal (and what an Optuna study records of it).

    ``status`` is ``ok``, ``failed`` or ``diverged``; ``genotype_key`` is the canonical
    genotype JSON; ``duplicate_of`` the trial whose result was reused, if any; ``trial`` the
    number the loop recorded it under (with parallel workers results arrive in completion
    order, so it need not be the order of the proposals).
    """

    accuracy: float
    latency_ms: float | None
    reward: float
    feasible: bool
    status: str = "ok"
    macs: int | None = None
    params: int | None = None
    genotype_key: str | None = None
    error: str | None = None
    duplicate_of: int | None = None
    trial: int | None = None

    @classmethod
    def from_record(cls, record: TrialRecord) -> Outcome:
        return cls(record.accuracy, record.latency_ms, record.reward, record.feasible,
                   record.status, macs=record.macs, params=record.params,
                   genotype_key=record.genotype_key, error=record.error,
                   duplicate_of=record.duplicate_of, trial=record.trial)


@dataclass
class StrategyConfig:
    """Settings shared by all strategies (each reads the ones it uses).

    Attributes:
        space: the search space.
        seed: seeds every random choice; same seed and outcomes -> same proposals.
        run_dir: where a strategy keeps its state (``controller.pt``, ``study.db``);
            ``None`` keeps it in memory (tests).
        rl_batch: RL children sampled per PPO update.
        ppo_epochs: PPO passes over each batch.
        rl_lr: controller learning rate (Adam).
        entropy_weight: weight of the entropy bonus in the PPO objective: the mean over
            decisions of entropy / log(valid choices), so it does not grow with the decision count.
        baseline_decay: decay of the moving-average reward baseline.
        clip: PPO ratio clip.
        startup_trials: random trials before TPE models the history.
        population_size: NSGA-II population.
        study_name: name of the Optuna study in ``study.db`` (``None``:
            :data:`DEFAULT_STUDY_NAME`).
        storage: an Optuna storage URL shared by several searches (``sqlite:///f.db``,
            ``postgresql://...``, ``mysql://...``, ``journal:FILE``); ``None``: ``study.db``
            in the run directory.
        latency_budget_ms: latency budget, a constraint for NSGA-II (``None``: none).
        macs_budget: MAC budget, a constraint for NSGA-II (``None``: none).
    """

    space: SearchSpace = field(default_factory=SearchSpace)
    seed: int = 0
    run_dir: Path | None = None
    rl_batch: int = 4
    ppo_epochs: int = 4
    rl_lr: float = 0.003
    entropy_weight: float = 0.3
    baseline_decay: float = 0.9
    clip: float = 0.2
    startup_trials: int = 5
    population_size: int = 8
    study_name: str | None = None
    storage: str | None = None
    latency_budget_ms: float | None = None
    macs_budget: int | None = None


class Strategy(ABC):
    """Propose genotypes and learn from their outcomes."""

    name: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ("reward",)
    """What the strategy optimises: the MnasNet reward, unless a strategy says otherwise."""

    def __init__(self, config: StrategyConfig):
        self.config = config
        self.space = config.space

    @abstractmethod
    def propose(self) -> Proposal:
        """Return the next candidate."""

    @abstractmethod
    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        """Learn from the outcome of a proposal returned by :meth:`propose`."""

    @abstractmethod
    def resume(self, records: Sequence[TrialRecord]) -> None:
        """Rebuild the state after ``records`` (the run's finished trials, in order).

        Called once, before the first :meth:`propose`, also for a new run (no records).
        """

    def capacity(self, outstanding: int) -> int | None:
        """How many more proposals may be out while ``outstanding`` ones await their outcome.

        The parallel loop (:mod:`search.experiment.parallel`) asks before each
        :meth:`propose`; ``None`` (the default) means as many as there are free workers.
        The single-process loop never asks: it has one proposal out at a time.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (storage connections)."""


StrategyFactory = Callable[[StrategyConfig], Strategy]
STRATEGIES: dict[str, StrategyFactory] = {}
"""Strategy name -> factory; filled by :func:`register_strategy`."""


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Class/function decorator that adds a strategy under ``name``."""

    def wrap(factory: StrategyFactory) -> StrategyFactory:
        STRATEGIES[name] = factory
        return factory

    return wrap


def available_strategies() -> tuple[str, ...]:
    """Names of all registered strategies (the built-ins are imported first)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return tuple(STRATEGIES)


def strategy_metrics(name: str) -> tuple[str, ...]:
    """The objectives strategy ``name`` optimises (``("reward",)`` for an unknown name)."""
    available_strategies()
    factory = STRATEGIES.get(name)
    return tuple(getattr(factory, "metric_names", Strategy.metric_names))


def create_strategy(name: str, config: StrategyConfig) -> Strategy:
    """Build the strategy called ``name``; unknown names raise :class:`NasdeployError`."""
    names = available_strategies()
    if name not in STRATEGIES:
        raise NasdeployError(f"unknown strategy {name!r}; choose from {', '.join(names)}")
    return STRATEGIES[name](config)
