"""Optuna baselines (TPE, random, NSGA-II) over exactly the RL controller's space.

Every decision of :class:`search.space.searchspace.SearchSpace` is one categorical parameter named
per cell and block (``normal_b2_in0`` chooses among ``0..3``, ``reduce_b0_op1`` among
the registry's ops), so the space is the same as the controller's. The loop drives the
study with ``study.ask()`` / ``study.tell()``. TPE and random maximise the metric
``reward``; NSGA-II maximises ``accuracy`` and minimises ``latency_ms``, with the latency
(and MAC) budget as Optuna constraints. The study lives in SQLite (``study.db`` in the run
directory) under :attr:`StrategyConfig.study_name`, so a resumed run continues it and
Optuna's own tools (``optuna-dashboard``, ``optuna.load_study``) can read it: every trial
carries the loop's trial number, accuracy, latency, MACs, params, genotype, status and
feasibility as user attributes, and a failed or diverged child is a ``FAIL`` trial.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from search.core.errors import NasdeployError, one_line
from search.core.rundir import STUDY_DB_NAME
from search.strategies.base import (
    DEFAULT_STUDY_NAME,
    Outcome,
    Proposal,
    Strategy,
    StrategyConfig,
    register_strategy,
)
from search.trials.history import TrialRecord

STUDY_NAME = DEFAULT_STUDY_NAME
_LOOP_TRIAL = "loop_trial"
_RUN = "run"
"""User attribute naming the run directory that asked a trial (several runs share a study)."""
_CONSTRAINTS = "constraints"
_SKIPPED = "skipped"
_MAX_SKIPS = 10
"""Re-asks when the sampler proposes a genotype that already failed in this run."""


def check_study_storage(path: str | Path) -> None:
    """Raise :class:`NasdeployError` unless ``path`` is a readable Optuna SQLite storage.

    Used before a resume writes anything, and before Optuna opens the file (whose errors
    are long tracebacks). Only reading queries run; the file is opened the way Optuna opens
    it, so that SQLite can roll back a transaction a ``kill -9`` cut short (a hot journal)
    to the last committed state, which a read-only connection cannot do.
    """
    import sqlite3

    path = Path(path)
    if not path.is_file():
        raise NasdeployError(f"{path} is not a regular file; move it away to start a new study")
    try:
        connection = sqlite3.connect(path)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            (check,) = connection.execute("PRAGMA quick_check").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise NasdeployError(f"{path} is not a readable Optuna study ({one_line(exc, 120)}); "
                             "restore it or move it away to start a new study") from None
    foreign = bool(tables) and "studies" not in tables  # no tables at all: Optuna makes them
    if foreign or check != "ok":
        reason = "tables of another program" if foreign else f"damaged: {str(check)[:80]}"
        raise NasdeployError(f"{path} is not a readable Optuna study ({reason}); "
                             "restore it or move it away to start a new study")


STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """An Optuna storage for ``--storage``: an RDB URL (SQLite, PostgreSQL, MySQL through
    SQLAlchemy) or ``journal:FILE`` (Optuna's journal file storage, for a shared file system
    without a database server). Unreachable or unusable storages are one-line errors."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES or ":" not in url:
        raise NasdeployError(f"--storage {redact(url)[:120]!r}: give sqlite:///FILE, "
                             "postgresql://USER@HOST:PORT/DB, mysql://USER@HOST/DB or journal:FILE")
    try:
        if scheme == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url.split(":", 1)[1]))
        if scheme == "sqlite":
            path = Path(url.split(":///", 1)[-1])
            if path.exists():
                check_study_storage(path)
        return _rdb_storage(url, scheme)
    except NasdeployError:
        raise
    except ModuleNotFoundError as exc:
        driver = "psycopg2-binary" if scheme == "postgresql" else "pymysql"
        raise NasdeployError(f"--storage {scheme}: the database driver is not installed ({exc.name}); "
                             f"pip install {driver}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and driver errors
        raise NasdeployError(f"cannot open the Optuna storage {redact(url)[:120]} "
                             f"({one_line(exc, 200)})") from None


def _rdb_storage(url: str, scheme: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried when another search creates Optuna's tables at the same moment
    (two first connections to an empty database race on ``CREATE TABLE``)."""
    import time

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    kwargs = {"pool_pre_ping": True} if scheme != "sqlite" else None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, ProgrammingError):  # the other search's schema won the race
            if attempt == attempts - 1:
                raise
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _stored_constraints(trial: FrozenTrial) -> Sequence[float]:
    """NSGA-II's ``constraints_func``: the values :meth:`OptunaStrategy._tell` stored."""
    return trial.user_attrs[_CONSTRAINTS]


class OptunaStrategy(Strategy):
    """Ask/tell wrapper around an Optuna study."""

    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, config: StrategyConfig):
        super().__init__(config)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study_name = config.study_name or STUDY_NAME
        self.study = self._open_study(config.seed)
        self.count = 0
        self.failed: dict[str, int] = {}
        """Canonical genotype JSON -> loop trial of the children that failed."""

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _storage(self) -> Any:
        """``--storage`` when given, else SQLite in the run directory (``None``: in memory)."""
        if self.config.storage:
            return open_storage(self.config.storage)
        run_dir = self.config.run_dir
        if run_dir is None:
            return None
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        path = Path(run_dir) / STUDY_DB_NAME
        if path.exists():
            check_study_storage(path)
        return optuna.storages.RDBStorage(f"sqlite:///{path}")

    def close(self) -> None:
        """Close the database connections of the study's storage."""
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()

    @property
    def where(self) -> str:
        """The study's storage, for messages (a URL's password is hidden)."""
        if self.config.storage:
            return redact(self.config.storage)
        return str(Path(str(self.config.run_dir)) / STUDY_DB_NAME)

    @property
    def run_tag(self) -> str:
        """This run's name in the study's trials (the run directory's absolute path)."""
        return str(Path(str(self.config.run_dir)).resolve()) if self.config.run_dir else "memory"

    def _open_study(self, seed: int) -> optuna.Study:
        self.storage = None
        try:
            self.storage = self._storage()
            study = optuna.create_study(
                storage=self.storage, sampler=self._sampler(seed), study_name=self.study_name,
                directions=list(self.directions), load_if_exists=True)
        except NasdeployError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, SQLite and Optuna schema errors
            self.close()
            raise NasdeployError(f"cannot open the Optuna study in {self.where} ({one_line(exc, 200)})"
                                 ) from None
        wanted = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                  else optuna.study.StudyDirection.MINIMIZE for d in self.directions]
        if list(study.directions) != wanted:
            self.close()
            raise NasdeployError(f"{self.where} holds a study {self.study_name!r} with other objectives; "
                                 f"use the strategy that created it")
        if study.metric_names != list(self.metric_names):
            with warnings.catch_warnings():  # experimental since Optuna 3.2, still stable
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(self.metric_names))
        study_attrs = {"strategy": self.name, "latency_budget_ms": self.config.latency_budget_ms,
                       "macs_budget": self.config.macs_budget}
        for key, value in study_attrs.items():
            if value is not None and study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        return study

    def propose(self) -> Proposal:
        """Ask for a trial; a genotype that already failed here is skipped (a few times)."""
        for attempt in range(_MAX_SKIPS + 1):
            trial = self.study.ask()
            trial.set_user_attr(_RUN, self.run_tag)  # first: other searches sharing the study see whose it is
            values = {d.name: trial.suggest_categorical(d.name, d.choices)
                      for d in self.space.decisions()}
            genotype = self.space.from_values(values)
            earlier = self.failed.get(genotype.key())
            if earlier is None or attempt == _MAX_SKIPS:
                break
            trial.set_user_attr(_SKIPPED, f"same genotype as failed loop trial {earlier}")
            self.study.tell(trial, state=TrialState.FAIL)
        trial.set_user_attr(_LOOP_TRIAL, self.count)
        self.count += 1
        return Proposal(genotype, {"number": trial.number, "trial": trial,
                                   "loop_trial": self.count - 1})

    def _values(self, outcome: Outcome) -> list[float] | None:
        """The objective values, or ``None`` for a child that failed or diverged."""
        if outcome.status != "ok":
            return None
        return [outcome.reward]

    def _constraints(self, outcome: Outcome) -> list[float] | None:
        """Constraint values (``<= 0`` is feasible), or ``None`` when unconstrained."""
        return None

    def _tell(self, trial: Trial, outcome: Outcome, loop_trial: int, key: str) -> None:
        """Record the outcome on the trial as user attributes, then finish it."""
        values = self._values(outcome)
        attrs: dict[str, Any] = {
            _LOOP_TRIAL: loop_trial, "accuracy": outcome.accuracy, "latency_ms": outcome.latency_ms,
            "macs": outcome.macs, "params": outcome.params, "reward": outcome.reward,
            "feasible": outcome.feasible, "status": outcome.status, "genotype": key}
        if outcome.error is not None:
            attrs["error"] = outcome.error
        if outcome.duplicate_of is not None:
            attrs["duplicate_of"] = outcome.duplicate_of
        constraints = None if values is None else self._constraints(outcome)
        if constraints is not None:
            attrs[_CONSTRAINTS] = constraints
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        if values is None:
            self.failed.setdefault(key, loop_trial)
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, values)

    def observe(self, proposal: Proposal, outcome: Outcome) -> None:
        key = outcome.genotype_key or proposal.genotype.key()
        loop_trial = proposal.info["loop_trial"] if outcome.trial is None else outcome.trial
        self._tell(proposal.info["trial"], outcome, loop_trial, key)

    def resume(self, records: Sequence[TrialRecord]) -> None:
        """Tell trials that were recorded but not told; fail the ones never finished.

        A trial asked but never told (the search was killed) is matched to a recorded but
        untold trial of the same genotype: with parallel workers several children are out
        at once and are recorded in completion order, so the number given at ask time
        (``loop_trial``, set again to the recorded number when told) does not name the record.
        The sampler is re-seeded with ``seed + trials already in the study`` so a resumed
        run does not replay the random proposals of its start.
        """
        self.count = len(records)
        for record in records:
            if self._values(Outcome.from_record(record)) is None:
                self.failed.setdefault(record.genotype_key, record.trial)
        existing = self.study.get_trials(deepcopy=False)

        def ours(frozen: FrozenTrial) -> bool:
            # a study of our own (study.db) predates the run tag; in a shared one, an untagged
            # trial was just asked by another search (which is working on it)
            return frozen.user_attrs.get(_RUN, None if self.config.storage else self.run_tag) == self.run_tag

        told = {t.user_attrs.get(_LOOP_TRIAL) for t in existing
                if t.state != TrialState.RUNNING and ours(t) and "status" in t.user_attrs}
        untold: dict[str, list[TrialRecord]] = {}
        for record in records:
            if record.trial not in told:
                untold.setdefault(record.genotype_key, []).append(record)
        for frozen in existing:
            if frozen.state != TrialState.RUNNING or not ours(frozen):
                continue
            try:
                key = self.space.from_values(frozen.params).key()
            except Exception:  # noqa: BLE001 - asked, killed before all its parameters were suggested
                key = None
            matches = untold.get(key or "", [])
            if matches:
                record = matches.pop(0)
                # a Trial handle on the stored trial, to set its attributes before tell
                trial = Trial(self.study, frozen._trial_id)
                self._tell(trial, Outcome.from_record(record), record.trial, record.genotype_key)
            else:
                self.study.tell(frozen.number, state=TrialState.FAIL)
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
    """NSGA-II on (accuracy: maximise, latency: minimise), the budgets as constraints."""

    name = "nsga2"
    directions = ("maximize", "minimize")
    metric_names = ("accuracy", "latency_ms")

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        constrained = self.config.latency_budget_ms is not None or self.config.macs_budget is not None
        with warnings.catch_warnings():
            # Optuna 5 deprecates constraints_func for Trial.set_constraint, but Optuna 4 and
            # optuna-dashboard 0.21 read only the list it stores (system attribute "constraints").
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.NSGAIISampler(
                seed=seed, population_size=self.config.population_size,
                constraints_func=_stored_constraints if constrained else None)

    def _values(self, outcome: Outcome) -> list[float] | None:
        if outcome.status != "ok" or outcome.latency_ms is None:
            return None
        return [outcome.accuracy, outcome.latency_ms]

    def _constraints(self, outcome: Outcome) -> list[float] | None:
        """``latency_ms - budget`` and ``macs - MAC budget`` for the budgets that are set."""
        constraints = []
        if self.config.latency_budget_ms is not None and outcome.latency_ms is not None:
            constraints.append(outcome.latency_ms - self.config.latency_budget_ms)
        if self.config.macs_budget is not None:
            macs = math.inf if outcome.macs is None else float(outcome.macs)
            constraints.append(macs - self.config.macs_budget)
        return constraints or None
