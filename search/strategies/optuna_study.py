"""Optuna baselines (TPE, random, NSGA-II) over exactly the RL controller's space.

Every decision of :class:`search.space.searchspace.SearchSpace` is one categorical parameter named
per cell and block (``normal_b2_in0`` chooses among ``0..3``, ``reduce_b0_op1`` among
the registry's ops), so the space is the same as the controller's. The loop drives the
study with ``study.ask()`` / ``study.tell()``. TPE and random maximise the reward;
NSGA-II maximises accuracy and minimises latency. The study lives in SQLite
(``study.db`` in the run directory), so a resumed run continues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.core.errors import NasdeployError
from search.core.rundir import STUDY_DB_NAME
from search.strategies.base import Outcome, Proposal, Strategy, StrategyConfig, register_strategy
from search.trials.history import TrialRecord

STUDY_NAME = "nasdeploy"
_LOOP_TRIAL = "loop_trial"


class OptunaStrategy(Strategy):
    """Ask/tell wrapper around an Optuna study."""

    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, config: StrategyConfig):
        super().__init__(config)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = self._open_study(config.seed)
        self.count = 0

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _storage(self) -> optuna.storages.RDBStorage | None:
        """SQLite storage in the run directory (``None``: in memory, for tests)."""
        run_dir = self.config.run_dir
        if run_dir is None:
            return None
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(f"sqlite:///{Path(run_dir) / STUDY_DB_NAME}")

    def close(self) -> None:
        """Close the SQLite connections of the study's storage."""
        if self.storage is not None:
            self.storage.engine.dispose()

    def _open_study(self, seed: int) -> optuna.Study:
        self.storage = self._storage()
        study = optuna.create_study(
            storage=self.storage, sampler=self._sampler(seed), study_name=STUDY_NAME,
            directions=list(self.directions), load_if_exists=True)
        wanted = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                  else optuna.study.StudyDirection.MINIMIZE for d in self.directions]
        if list(study.directions) != wanted:
            where = Path(str(self.config.run_dir)) / STUDY_DB_NAME
            raise NasdeployError(f"{where} holds a study with other objectives; "
                                 f"resume it with the strategy that created it")
        return study

    def propose(self) -> Proposal:
        trial = self.study.ask()
        values = {d.name: trial.suggest_categorical(d.name, d.choices)
                  for d in self.space.decisions()}
        trial.set_user_attr(_LOOP_TRIAL, self.count)
        self.count += 1
        return Proposal(self.space.from_values(values), {"number": trial.number})

    def _values(self, outcome: Outcome) -> list[float] | None:
        return [outcome.reward]

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        values = self._values(outcome)
        if values is None:
            self.study.tell(proposal.info["number"], state=TrialState.FAIL)
        else:
            self.study.tell(proposal.info["number"], values)

    def resume(self, records: Sequence[TrialRecord]) -> None:
        """Tell trials that were recorded but not told; fail the ones never finished.

        The sampler is re-seeded with ``seed + trials already in the study`` so a resumed
        run does not replay the random proposals of its start.
        """
        self.count = len(records)
        existing = self.study.get_trials(deepcopy=False)
        for trial in existing:
            if trial.state != TrialState.RUNNING:
                continue
            index = trial.user_attrs.get(_LOOP_TRIAL)
            record = records[index] if index is not None and index < len(records) else None
            values = None if record is None else self._values(Outcome.from_record(record))
            if record is not None and values is not None:
                self.study.tell(trial.number, values)
            else:
                self.study.tell(trial.number, state=TrialState.FAIL)
        if existing:
            self.study.sampler = self._sampler(self.config.seed + len(existing))


@register_strategy("tpe")
class TPEStrategy(OptunaStrategy):
    """Tree-structured Parzen estimator on the reward."""

    name = "tpe"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed,
                                          n_startup_trials=self.config.startup_trials)


@register_strategy("random")
class RandomStrategy(OptunaStrategy):
    """Uniform random search (Optuna's RandomSampler)."""

    name = "random"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)


@register_strategy("nsga2")
class NSGA2Strategy(OptunaStrategy):
    """NSGA-II on (accuracy: maximise, latency: minimise)."""

    name = "nsga2"
    directions = ("maximize", "minimize")

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=self.config.population_size)

    def _values(self, outcome: Outcome) -> list[float] | None:
        if outcome.latency_ms is None:
            return None
        return [outcome.accuracy, outcome.latency_ms]
