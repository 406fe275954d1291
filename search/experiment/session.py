"""One search session: settings, run directory, wiring and resume.

:func:`run_search` turns a :class:`SearchConfig` into a finished run directory: it loads
the data, builds the child evaluator and the latency meter, creates the strategy, runs
the loop and writes the report. ``config.json`` in the run directory holds the settings,
so :func:`resume_search` needs nothing but the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from search.core.atomic import LockHeld, acquire_lock, atomic_write_text, unique_path
from search.core.errors import NasdeployError, one_line
from search.core.jsonio import annotation_words, fits_annotation, read_json
from search.core.rundir import (
    CONFIG_NAME,
    CONTROLLER_NAME,
    HISTORY_NAME,
    LATENCY_CACHE_NAME,
    LOCK_NAME,
    REPORT_FILES,
    STUDY_DB_NAME,
    SUPERNET_NAME,
)
from search.core.units import parse_count, parse_duration, parse_latency
from search.evaluation.reward import RewardConfig
from search.experiment.loop import Evaluator, LoopResult, run_loop
from search.experiment.report import ReportContext, describe_target, write_report
from search.space.searchspace import SearchSpace
from search.strategies.base import (
    DEFAULT_STUDY_NAME,
    StrategyConfig,
    available_strategies,
    create_strategy,
)
from search.trials.history import read_history
from search.trials.selection import Selection, select_best

DEFAULT_TRIALS = 100
CONFIG_MAX_BYTES = 1024 * 1024  # config.json holds a few dozen settings
DEFAULT_RUNS_DIR = "runs"
STUDY_NAME_MAX_CHARS = 512  # Optuna's RDB storage limit for study names
MAX_BLOCKS = 20
"""Most blocks per cell searched (NASNet uses 5)."""
MAX_RL_BATCH = 4096
"""Most children per PPO update."""
MAX_SEED = 2**31 - 1
"""Largest seed (Optuna's samplers add the trial count to it and NumPy takes < 2**32)."""
MAX_CHILD_EPOCHS = 100_000
"""Most training epochs per child."""
EVALUATORS = ("proxy", "oneshot")
"""How a candidate's accuracy is estimated: a proxy network trained per candidate, or
inherited weights of one weight-sharing supernet (:mod:`search.evaluation.oneshot`)."""


@dataclass(frozen=True)
class ChildDefaults:
    """Proxy-task defaults for one dataset (what ``--child-*`` fall back to)."""

    scale: str
    epochs: int
    train_size: int | None
    image_size: int | None = None
    """Side the child trains at; ``None`` (or a larger side than the data's) uses the data's."""


CHILD_DEFAULTS: dict[str, ChildDefaults] = {
    # 1@192 (8 channels per op) on the 1,294 digits training images at 16 px: ~5 s per
    # child on one CPU core.
    "digits": ChildDefaults("1@192", 1, None),
    # CIFAR: one epoch of 1@192 on 2,500 images at the full 32 px: ~32 CPU s per child.
    # Chosen by benchmarks/evaluator_fidelity.py (docs/search.md): it ranks the panel at
    # Kendall tau 0.52 against the trained ground truth, where 5,000 images at 16 px
    # (~20 s) reached 0.38: at 16 px the reduction cells work on 8x8 and 4x4 maps.
    "cifar10": ChildDefaults("1@192", 1, 2500, 32),
    "cifar100": ChildDefaults("1@192", 1, 2500, 32),
    "imagefolder": ChildDefaults("1@192", 1, None),
}


@dataclass
class SearchConfig:
    """Everything a search run needs; saved as ``config.json`` in the run directory."""

    latency_budget: str
    macs_budget: str | None = None
    latency_weight: float | None = None
    hard_constraint: bool = False
    strategy: str = "rl"
    trials: int | None = None
    time_budget: str | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    child_scale: str | None = None
    child_epochs: int | None = None
    child_train_size: int | None = None
    child_image_size: int | None = None
    image_size: int | None = None
    target_variant: str = "cifar"
    latency_device: str = "cpu"
    latency_threads: int | None = 1
    latency_predictor: str | None = None
    device: str = "auto"
    blocks: int = 5
    seed: int = 0
    rl_batch: int = 4
    out: str | None = None
    study_name: str | None = None
    evaluator: str = "proxy"
    rerank: int | None = None
    supernet_epochs: int | None = None
    supernet: str | None = None  # a finished supernet.pt to score with instead of training one
    storage: str | None = None  # an Optuna storage URL shared by several searches
    workers: int | None = None  # children evaluated at a time by Ray workers (None: one, in-process)
    ray_address: str | None = None  # an existing Ray cluster to evaluate children on
    gpus_per_child: float | None = None  # GPUs each child's Ray task holds (None: 1 on GPU clusters)

    def validate(self) -> None:
        """Check every setting; raise :class:`NasdeployError` with one line."""
        self.reward_config()  # budgets and latency weights, checked where the reward uses them
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if self.strategy not in available_strategies():
            raise NasdeployError(f"unknown strategy {self.strategy!r}; choose from "
                                 f"{', '.join(available_strategies())}")
        if self.evaluator not in EVALUATORS:
            raise NasdeployError(f"unknown evaluator {self.evaluator!r}; choose from "
                                 f"{', '.join(EVALUATORS)}")
        if self.dataset not in CHILD_DEFAULTS:
            raise NasdeployError(f"unknown dataset {self.dataset!r}; choose from "
                                 f"{', '.join(CHILD_DEFAULTS)}")
        for name in ("trials", "child_epochs", "child_train_size", "blocks", "rl_batch",
                     "image_size", "supernet_epochs", "child_image_size", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NasdeployError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name, limit in (("blocks", MAX_BLOCKS), ("rl_batch", MAX_RL_BATCH),
                            ("child_epochs", MAX_CHILD_EPOCHS)):
            value = getattr(self, name)
            if value is not None and value > limit:
                raise NasdeployError(f"--{name.replace('_', '-')} must be at most {limit}, got {value}"[:160])
        if self.storage is not None:
            if self.strategy not in ("tpe", "random", "nsga2"):
                raise NasdeployError(f"--storage holds an Optuna study: use --strategy tpe, random or nsga2, "
                                     f"not {self.strategy}")
            from search.strategies.optuna_study import open_storage

            storage = open_storage(self.storage)  # unreachable or unusable: one line, nothing written
            engine = getattr(storage, "engine", None)
            if engine is not None:
                engine.dispose()
        if self.ray_address is not None or self.gpus_per_child is not None:
            from search.experiment.workers import check_gpus, parse_address

            if self.ray_address is not None:
                parse_address(self.ray_address)
            check_gpus(self.gpus_per_child)
            if self.gpus_per_child is not None and self.workers is None and self.ray_address is None:
                raise NasdeployError("--gpus-per-child is for children on Ray workers: add --workers N "
                                     "or --ray-address HOST:PORT")
        if self.supernet is not None:
            if self.evaluator != "oneshot":
                raise NasdeployError("--supernet scores candidates with a trained supernet: add "
                                     "--evaluator oneshot")
            if self.supernet_epochs is not None:
                raise NasdeployError("--supernet is already trained: drop --supernet-epochs")
        if self.rerank is not None and self.rerank < 0:
            raise NasdeployError(f"--rerank must be at least 0 (0: no re-ranking), got {self.rerank}"[:160])
        if self.rerank is not None and self.max_trials is not None and self.rerank > self.max_trials:
            raise NasdeployError(f"--rerank {self.rerank} is more than the {self.max_trials} trials of the "
                                 f"search: re-ranking retrains the search's best candidates (give --rerank "
                                 f"{self.max_trials} or fewer, 0 for none)")
        if not 0 <= self.seed <= MAX_SEED:
            raise NasdeployError(f"--seed must be from 0 to {MAX_SEED}, got {self.seed}"[:160])
        if self.study_name is not None and not (
                self.study_name.strip() and self.study_name.isprintable()
                and len(self.study_name) <= STUDY_NAME_MAX_CHARS):
            raise NasdeployError(f"--study-name must be 1 to {STUDY_NAME_MAX_CHARS} printable "
                                 f"characters, got {self.study_name[:80]!r}")
        if self.latency_device not in ("cpu", "cuda", "tensorrt"):
            raise NasdeployError(f"--latency-device must be cpu, cuda or tensorrt, got "
                                 f"{self.latency_device!r}")
        if self.latency_predictor is not None:
            from search.evaluation.predictor import load_predictor

            load_predictor(self.latency_predictor)  # a bad file fails here, before any directory
        if self.latency_threads is not None and self.latency_threads < 1:
            raise NasdeployError(f"--latency-threads must be at least 1, got {self.latency_threads}")
        from search.nn.device import resolve_device

        self.check_sizes()
        resolve_device(self.device)

    def check_sizes(self, num_classes: int = 1000) -> None:
        """Refuse a child or deployment scale too large to build for any candidate (one line).

        Every genotype of the search space with ``blocks`` blocks must fit the limits of
        :mod:`search.space.scale` at the child scale and at the target variant, at the
        image size the search will use.
        """
        from search.data.datasets import DEFAULT_IMAGE_SIZE
        from search.space.scale import VARIANTS, check_size, parse_scale

        size = self.image_size or DEFAULT_IMAGE_SIZE.get(self.dataset, 32)
        named = self.target_variant.strip().lower() in VARIANTS
        check_size(parse_scale(self.target_variant, None if named else size), self.blocks, num_classes)
        child = self.child_defaults()
        child_size = min(child.image_size or size, size)
        check_size(parse_scale(child.scale, child_size), self.blocks, num_classes)

    @property
    def max_trials(self) -> int | None:
        if self.trials is None and self.time_budget is None:
            return DEFAULT_TRIALS
        return self.trials

    @property
    def time_budget_s(self) -> float | None:
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def reward_config(self) -> RewardConfig:
        """The MnasNet reward settings from the budget flags."""
        weights = {} if self.latency_weight is None else {"alpha": self.latency_weight,
                                                         "beta": self.latency_weight}
        macs = None if self.macs_budget is None else parse_count(self.macs_budget)
        return RewardConfig(parse_latency(self.latency_budget), hard=self.hard_constraint,
                            macs_budget=macs, **weights)

    def child_defaults(self) -> ChildDefaults:
        base = CHILD_DEFAULTS.get(self.dataset, CHILD_DEFAULTS["imagefolder"])
        return ChildDefaults(self.child_scale or base.scale, self.child_epochs or base.epochs,
                             self.child_train_size or base.train_size,
                             self.child_image_size or base.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = CONFIG_NAME) -> SearchConfig:
        """Settings from ``config.json`` (named ``source`` in errors), each of its type."""
        data = dict(data)
        if "flops_budget" in data:  # runs written before the flag was called --macs-budget
            data.setdefault("macs_budget", data.pop("flops_budget"))
        # runs written before --latency-threads timed on every core: a resumed run keeps that
        data.setdefault("latency_threads", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown or "latency_budget" not in data:
            shown = ", ".join(str(name)[:40] for name in sorted(unknown)[:5]) or "latency_budget"
            raise NasdeployError(f"{source} has unknown or missing settings ({shown})")
        for f in dataclasses.fields(cls):
            if f.name in data and not fits_annotation(data[f.name], str(f.type)):
                raise NasdeployError(f"{source}: setting {f.name!r} must be {annotation_words(str(f.type))}, "
                                     f"got {data[f.name]!r}"[:200])
        return cls(**data)


@dataclass
class SearchResult:
    """A finished (or stopped) search."""

    run_dir: Path
    best: Selection | None
    loop: LoopResult
    config: SearchConfig
    seconds: float
    latency_check: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def new_run_dir(config: SearchConfig, root: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """``runs/<date>-<time>-<strategy>-<dataset>``, made unique with a suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return unique_path(Path(root) / f"{stamp}-{config.strategy}-{config.dataset}")


def default_study_name(run_dir: Path, resume: bool = False) -> str:
    """``nasdeploy-<run directory name>``; a run resumed from before study names keeps its
    ``study.db`` study, :data:`~search.strategies.base.DEFAULT_STUDY_NAME`."""
    if resume and (run_dir / STUDY_DB_NAME).exists():
        return DEFAULT_STUDY_NAME
    return f"{DEFAULT_STUDY_NAME}-{run_dir.name}"


def _settings(config: SearchConfig, data: Any) -> tuple[Any, Any]:
    from search.evaluation.latency import LatencySettings
    from search.evaluation.proxy import ChildSettings
    from search.space.scale import VARIANTS

    child = config.child_defaults()
    child_size = child.image_size if child.image_size and child.image_size < data.image_size else None
    child_settings = ChildSettings(scale=child.scale, epochs=child.epochs, image_size=child_size,
                                   train_size=child.train_size, device=config.device,
                                   seed=config.seed)
    target_size = None if config.target_variant.strip().lower() in VARIANTS else data.image_size
    latency = LatencySettings(scale=config.target_variant, image_size=target_size,
                              num_classes=data.num_classes, device=config.latency_device,
                              threads=config.latency_threads)
    return child_settings, latency


def _evaluator(config: SearchConfig, data: Any, run_dir: Path, remote_latency: bool = False) -> Evaluator:
    from search.evaluation.latency import LatencyMeter
    from search.evaluation.proxy import evaluate_child

    child, latency = _settings(config, data)
    if config.latency_predictor is not None:
        from search.evaluation.latency import PredictedMeter
        from search.evaluation.predictor import load_predictor

        meter: Any = PredictedMeter(load_predictor(config.latency_predictor), latency, config.blocks,
                                    exact_macs=config.evaluator == "proxy" or config.macs_budget is not None)
        if predictor_device_mismatch(meter.predictor, latency) is None:
            LatencyMeter(latency)  # the winner is re-measured here at the end: check the device now
    elif config.evaluator == "oneshot":
        LatencyMeter(latency)  # the run profiles its own predictor here: check the device now
        meter = None  # set by _prepare_oneshot, inside the run directory's lock
    elif remote_latency:
        meter = None  # Ray tasks on the latency target measure (search.experiment.workers)
    else:
        meter = LatencyMeter(latency, run_dir / LATENCY_CACHE_NAME)
    accuracy: Any = partial(evaluate_child, data=data, settings=child)
    if config.evaluator == "oneshot":
        from search.evaluation.oneshot import OneShotEvaluator, supernet_settings

        if config.supernet:
            from search.evaluation.oneshot import SupernetSettings

            trained = _shared_supernet(config, run_dir)["settings"]
            settings = dataclasses.replace(supernet_settings(config.dataset, device=config.device),
                                           **{k: v for k, v in trained.items()
                                              if k in SupernetSettings.TRAINING})
        else:
            settings = supernet_settings(config.dataset, epochs=config.supernet_epochs, seed=config.seed,
                                         device=config.device)
        accuracy = OneShotEvaluator(data, settings, run_dir / SUPERNET_NAME, config.blocks)
    return Evaluator(accuracy, meter, config.reward_config())


def _prepare_oneshot(config: SearchConfig, evaluator: Evaluator, latency: Any, run_dir: Path,
                     progress: bool) -> tuple[Evaluator, float]:
    """Train (or resume) the supernet and, without ``--latency-predictor``, profile this host
    for the run's own predictor (:mod:`search.experiment.setup`); returns the evaluator and
    the seconds both took, summed over sessions (they count against ``--time-budget``)."""
    from search.evaluation.latency import PredictedMeter
    from search.experiment.setup import auto_predictor

    seconds = 0.0
    own = run_dir / SUPERNET_NAME
    if config.supernet and not own.is_file():  # the run keeps its own copy: resume and search.score
        tmp = own.with_name(own.name + ".tmp")
        shutil.copyfile(config.supernet, tmp)
        tmp.replace(own)
    if evaluator.cost_fn is None:
        predictor, seconds = auto_predictor(latency, config.blocks, run_dir)
        meter = PredictedMeter(predictor, latency, config.blocks, exact_macs=config.macs_budget is not None)
        evaluator = dataclasses.replace(evaluator, cost_fn=meter)
    evaluator.accuracy_fn.prepare(progress=progress)
    return evaluator, seconds + evaluator.accuracy_fn.seconds_trained


def _load_data(config: SearchConfig, split_seed: int | None = None) -> Any:
    """The run's dataset, split into train / validation by ``split_seed`` (default: ``--seed``)."""
    from search.data.datasets import load_dataset

    return load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        seed=config.seed if split_seed is None else split_seed, download=True)


def _shared_supernet(config: SearchConfig, run_dir: Path) -> dict[str, Any]:
    """The checked state of ``--supernet`` (the run's own copy once it has one).

    A shared supernet fixes the data split: the run splits train / validation with the
    seed the supernet was trained with, so no candidate is scored on images it trained on.
    """
    from search.evaluation.oneshot import read_supernet

    path = run_dir / SUPERNET_NAME if (run_dir / SUPERNET_NAME).is_file() else Path(config.supernet or "")
    state = read_supernet(path)
    if not state["finished"]:
        raise NasdeployError(f"--supernet {path} is partly trained (step {state['step']} of "
                             f"{state['total_steps']}); finish the run that trains it first")
    identity = state["identity"]
    if identity.get("dataset") != config.dataset:
        raise NasdeployError(f"--supernet {path} was trained on {identity.get('dataset')!r:.40}, "
                             f"this search is on {config.dataset!r}")
    if identity.get("blocks") != config.blocks:
        raise NasdeployError(f"--supernet {path} holds {identity.get('blocks')!r:.10}-block cells, this "
                             f"search has --blocks {config.blocks}")
    return state


def _context(config: SearchConfig, data: Any) -> ReportContext:
    reward = config.reward_config()
    child, latency = _settings(config, data)
    settings = {"config": config.to_dict(), "child": dataclasses.asdict(child),
                "latency": dataclasses.asdict(latency),
                "reward": {"alpha": reward.exponents[0], "beta": reward.exponents[1],
                           "hard": reward.hard}}
    return ReportContext(reward.latency_budget_ms, data.name, reward.macs_budget, settings,
                         strategy=config.strategy, latency_device=config.latency_device,
                         target=describe_target(latency.scale, latency.image_size))


def _prepare_dir(config: SearchConfig, run_dir: Path, resume: bool) -> None:
    _check_new(run_dir, resume)
    config.out = str(run_dir)
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")


def _check_new(run_dir: Path, resume: bool) -> None:
    if not resume and (run_dir / HISTORY_NAME).exists():
        raise NasdeployError(f"{run_dir} already holds a search; continue it with --resume "
                             f"{run_dir} or choose another --out")


def check_resumable(config: SearchConfig, run_dir: Path) -> None:
    """Read (never write) everything a resume of ``run_dir`` will read; one line if unusable.

    ``trials.jsonl`` (every line and its genotype, a torn last line excepted), the ``study.db`` of an
    Optuna strategy and the ``controller.pt`` of the RL strategy: a resume touches nothing
    in the run directory until all of them have been read.
    """
    from search.strategies.base import STRATEGIES
    from search.strategies.optuna_study import OptunaStrategy, check_study_storage

    if not run_dir.is_dir():
        raise NasdeployError(f"{run_dir} is not a search run directory")
    for record in read_history(run_dir / HISTORY_NAME):
        try:
            record.to_genotype()
        except NasdeployError as exc:
            raise NasdeployError(f"{run_dir / HISTORY_NAME}: trial {record.trial}: {exc}") from None
    factory = STRATEGIES.get(config.strategy)
    study = run_dir / STUDY_DB_NAME
    if isinstance(factory, type) and issubclass(factory, OptunaStrategy) and study.exists():
        check_study_storage(study)
    controller = run_dir / CONTROLLER_NAME
    if config.strategy == "rl" and controller.exists():
        _check_controller(config, controller)


def _check_controller(config: SearchConfig, path: Path) -> None:
    """Load ``controller.pt`` into a fresh in-memory RL strategy (nothing is written)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or foreign file
        raise NasdeployError(f"cannot read {path}: not a controller checkpoint ({type(exc).__name__}); "
                             "restore it or move it away to start the controller afresh") from None
    strategy = create_strategy(config.strategy, StrategyConfig(
        space=SearchSpace(config.blocks), seed=config.seed, rl_batch=config.rl_batch))
    try:
        strategy.load_state_dict(state)  # type: ignore[attr-defined]
    except NasdeployError as exc:
        raise NasdeployError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a dict of the wrong shape
        raise NasdeployError(f"{path} is not a controller state of this run "
                             f"({one_line(exc, 160).rstrip(':')})") from None


_PRE_TRIAL_FILES = {LOCK_NAME, CONFIG_NAME, STUDY_DB_NAME, CONTROLLER_NAME, LATENCY_CACHE_NAME,
                    HISTORY_NAME}


def _remove_unused(run_dir: Path) -> None:
    """Remove a run directory this call created if it holds no finished trial."""
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    history = run_dir / HISTORY_NAME
    if names - _PRE_TRIAL_FILES or (history.exists() and history.stat().st_size > 0):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS even after a kill -9)."""
    try:
        handle = acquire_lock(run_dir / LOCK_NAME)
    except LockHeld as held:
        raise NasdeployError(f"{run_dir} is in use by another search (pid {held.owner}); "
                             f"wait for it or stop it first") from None
    with handle:
        yield


def run_search(config: SearchConfig, *, progress: bool = True, resume: bool = False
               ) -> SearchResult:
    """Run the search described by ``config``; with ``resume`` continue ``config.out``.

    Every setting and, on resume, every file of the run is checked before anything is
    written; a new run that fails before its first trial leaves no directory behind.
    """
    config.validate()
    run_dir = Path(config.out) if config.out else new_run_dir(config)
    if resume:
        check_resumable(config, run_dir)
    else:
        _check_new(run_dir, resume)
    start = time.perf_counter()
    pool = _connect_workers(config)  # Ray: started or joined before anything is written
    try:
        shared = _shared_supernet(config, run_dir) if config.supernet else None
        data = _load_data(config, None if shared is None else shared["settings"]["seed"])
        config.check_sizes(data.num_classes)
        # checks the latency provider first (on the latency target when a Ray node has it)
        evaluator = _evaluator(config, data, run_dir, remote_latency=pool is not None and pool.has_target)
        config.out = str(run_dir)
        if config.study_name is None:
            config.study_name = default_study_name(run_dir, resume)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with run_lock(run_dir):
                return _search(config, data, evaluator, run_dir, progress, start, resume, pool)
        except Exception:
            if created:
                _remove_unused(run_dir)
            raise
    finally:
        if pool is not None:
            pool.close()


def _connect_workers(config: SearchConfig) -> Any:
    """The Ray worker pool of ``--workers`` / ``--ray-address`` (``None``: children in-process)."""
    if config.workers is None and config.ray_address is None:
        return None
    from search.experiment.workers import RayPool

    return RayPool.connect(config.workers, config.ray_address, config.gpus_per_child, config.device)


def _search(config: SearchConfig, data: Any, evaluator: Evaluator, run_dir: Path,
            progress: bool, start: float, resume: bool, pool: Any = None) -> SearchResult:
    strategy = create_strategy(config.strategy, StrategyConfig(
        space=SearchSpace(config.blocks), seed=config.seed, run_dir=run_dir,
        rl_batch=config.rl_batch, study_name=config.study_name, storage=config.storage,
        latency_budget_ms=evaluator.reward.latency_budget_ms,
        macs_budget=evaluator.reward.macs_budget))
    try:
        _prepare_dir(config, run_dir, resume)  # config.json once the strategy's state opened
    except BaseException:
        strategy.close()
        raise
    setup_s = 0.0
    try:
        if config.evaluator == "oneshot":
            evaluator, setup_s = _prepare_oneshot(config, evaluator, _settings(config, data)[1],
                                                  run_dir, progress)
    except BaseException:
        strategy.close()
        raise
    ctx = _context(config, data)
    if setup_s:
        ctx.settings["setup_time_s"] = round(setup_s, 1)
    try:
        if pool is None:
            result = run_loop(strategy, evaluator, run_dir, max_trials=config.max_trials,
                              time_budget_s=config.time_budget_s, progress=progress,
                              setup_time_s=setup_s)
        else:
            from search.experiment.parallel import run_parallel_loop

            pool.share(evaluator.accuracy_fn, _settings(config, data)[1],
                       measured=not hasattr(evaluator.cost_fn, "predictor"))
            result = run_parallel_loop(strategy, evaluator, run_dir, pool, max_trials=config.max_trials,
                                       time_budget_s=config.time_budget_s, progress=progress,
                                       setup_time_s=setup_s)
    except KeyboardInterrupt:
        write_report(run_dir, read_history(run_dir / HISTORY_NAME), ctx)
        raise
    finally:
        strategy.close()
    from search.experiment.rerank import rerank, rerank_count

    k = rerank_count(config.rerank)
    if k:  # the best candidates trained again at higher fidelity (search.experiment.rerank)
        try:
            reranked = rerank(run_dir, result.records, data, _settings(config, data)[0],
                              evaluator.reward, k, progress=progress)
        except KeyboardInterrupt:  # trials.jsonl is untouched; a resume continues the re-ranking
            write_report(run_dir, result.records, ctx)
            raise
        result = dataclasses.replace(result, records=reranked.records)
        ctx.settings["rerank"] = reranked.to_dict()
    check: list[dict[str, Any]] = []
    predicted = hasattr(evaluator.cost_fn, "predictor")
    winner = select_best(result.records) if predicted else None
    if winner is not None:  # measure it for real before the report records both numbers
        check = verify_predictions(result.records, winner, _settings(config, data)[1], run_dir,
                                   evaluator.cost_fn.predictor)
        ctx.settings["latency_check"] = check
    best = write_report(run_dir, result.records, ctx)
    return SearchResult(run_dir, best, result, config, time.perf_counter() - start, check)


VERIFY_TOP = 3
"""With a latency predictor, this many of the best feasible candidates are measured for real."""
PREDICTION_TOLERANCE = 0.10
"""A real latency further than this from its prediction gets a warning."""


def predictor_device_mismatch(predictor: Any, latency: Any) -> str | None:
    """Why the winner cannot be re-measured here to check the predictor (``None``: it can).

    Only a host like the profiled device (same CPU model, provider and thread count) gives
    a comparable number; a predictor profiled on another device is checked there.
    """
    from search.runtime.host import cpu_model

    device = predictor.target.device
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(latency.device)
    if wanted is None or device.get("provider") != wanted:
        return (f"the predictor was profiled with {device.get('provider')}, this search times on "
                f"{latency.device}")
    same_threads = device.get("threads") == (latency.threads or device.get("threads"))
    if device.get("cpu") != cpu_model() or not same_threads:
        return (f"the predictor was profiled on {device.get('cpu')} with {device.get('threads')} thread(s), "
                f"not on this host ({cpu_model()}, {latency.threads} thread(s))")
    return None


def verify_predictions(records: list[Any], best: Selection, latency: Any, run_dir: Path,
                       predictor: Any) -> list[dict[str, Any]]:
    """Measure the selected genotype and the next best feasible ones for real (winner first)."""
    from search.evaluation.latency import LatencyMeter
    reason = predictor_device_mismatch(predictor, latency)
    if reason is not None:
        return [{"trial": best.record.trial, "predicted_ms": best.record.latency_ms, "skipped": reason}]
    meter = LatencyMeter(latency, run_dir / LATENCY_CACHE_NAME)
    ranked = sorted((r for r in records if r.status == "ok" and r.feasible and r.duplicate_of is None
                     and r.trial != best.record.trial), key=lambda r: -r.accuracy)
    rows = []
    for record in [best.record, *ranked[: VERIFY_TOP - 1]]:
        try:
            cost = meter(record.to_genotype())
        except NasdeployError as exc:  # the search's result stands; the check says why it is missing
            rows.append({"trial": record.trial, "predicted_ms": record.latency_ms, "skipped": str(exc)})
            continue
        error = (cost.latency_ms - record.latency_ms) / record.latency_ms
        rows.append({"trial": record.trial, "predicted_ms": record.latency_ms, "measured_ms": cost.latency_ms,
                     "measured_p90_ms": cost.latency_p90_ms, "error": error,
                     "within_tolerance": abs(error) <= PREDICTION_TOLERANCE, "provider": cost.provider})
    return rows


def load_config(run_dir: str | Path) -> SearchConfig:
    """Read ``config.json`` of a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        data = read_json(path, expect=dict, max_bytes=CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise NasdeployError(f"{run_dir} is not a search run directory (no {CONFIG_NAME})") from None
    except OSError as exc:
        raise NasdeployError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    config = SearchConfig.from_dict(data, str(path))
    config.out = str(run_dir)
    return config


def resume_search(run_dir: str | Path, *, trials: int | None = None,
                  time_budget: str | None = None, progress: bool = True,
                  workers: dict[str, Any] | None = None) -> SearchResult:
    """Continue the run in ``run_dir``; ``trials``/``time_budget`` may extend it.

    ``workers`` (``workers``, ``ray_address``, ``gpus_per_child``), when given, replaces how the
    run evaluated its children (e.g. a cluster that moved, or ``{}``: none given on resume keeps
    the run's own settings).
    """
    config = load_config(run_dir)
    if trials is not None:
        config.trials = trials
    if time_budget is not None:
        config.time_budget = time_budget
    if workers:
        config.workers = workers.get("workers")
        config.ray_address = workers.get("ray_address")
        config.gpus_per_child = workers.get("gpus_per_child")
    return run_search(config, progress=progress, resume=True)


def latency_check_lines(check: list[dict[str, Any]]) -> list[str]:
    """Predicted against measured latency of the verified candidates, and a warning past 10 %."""
    lines = []
    for row in check:
        if "skipped" in row:
            lines.append(f"latency of trial {row['trial']}: predicted {row['predicted_ms']:.3f} ms, not "
                         f"measured here ({row['skipped']}); measure it on the device")
            continue
        mark = "" if row["within_tolerance"] else "  WARNING: off by more than 10 %"
        lines.append(f"latency of trial {row['trial']}: predicted {row['predicted_ms']:.3f} ms, measured "
                     f"{row['measured_ms']:.3f} ms ({row['error']:+.1%}){mark}")
    if any(not row.get("within_tolerance", True) for row in check):
        lines.append("warning: the latency predictor misses by more than 10 % here; profile more models of "
                     "this target (python -m search.latency profile) and fit it again")
    return lines


def summary_text(result: SearchResult) -> str:
    """The short summary printed at the end of a run; its last line is the command that
    trains the selected genotype (``next: python -m search.train RUN_DIR``)."""
    budget = result.config.reward_config().latency_budget_ms
    lines = []
    best = result.best
    if best is None:
        lines.append(f"no candidate could be evaluated; see the errors in {HISTORY_NAME}")
    else:
        r = best.record
        head = ("best genotype (meets the budget)" if best.feasible else
                f"NO candidate met the {budget:g} ms budget; saved the fastest")
        again = "" if r.rerank_accuracy is None else f" (re-ranked {r.rerank_accuracy:.4f})"
        lines.append(f"{head}: trial {r.trial}, val accuracy {r.accuracy:.4f}{again}, latency "
                     f"{r.latency_ms:.3f} ms (budget {budget:g} ms), "
                     f"{(r.macs or 0) / 1e6:.1f} M MACs, {(r.params or 0) / 1e6:.3f} M params")
        from search.space.text import genotype_text

        lines.append(genotype_text(r.to_genotype()))
    from search.experiment.rerank import rerank_lines

    lines.extend(rerank_lines(result.loop.records))
    loop = result.loop
    why = {"trials": "trial limit", "time": "time budget"}.get(loop.stopped_by, loop.stopped_by)
    lines.append(f"{len(loop.records)} trials ({loop.new_trials} new, stopped by the {why}) "
                 f"in {result.seconds / 60:.1f} min")
    files = [name for name in REPORT_FILES if (result.run_dir / name).exists()]
    lines.append(f"files in {result.run_dir}: {', '.join(files)}")
    lines.extend(latency_check_lines(result.latency_check))
    if best is not None:  # search.train reads dataset, data dir, variant and size from the run
        lines.append(f"next: python -m search.train {shlex.quote(str(result.run_dir))}")
    return "\n".join(lines)


def result_dict(result: SearchResult) -> dict[str, Any]:
    """The ``--json`` form of a finished search: the selection, the budget, the files."""
    from search.experiment.rerank import rerank_summary

    best = result.best
    record = best.record if best is not None else None
    loop = result.loop
    return {
        "run_dir": str(result.run_dir),
        "strategy": result.config.strategy,
        "latency_budget_ms": result.config.reward_config().latency_budget_ms,
        "selected": None if record is None else {
            "trial": record.trial, "meets_budget": best.feasible, "accuracy": record.accuracy,
            "latency_ms": record.latency_ms, "macs": record.macs, "params": record.params,
            "reward": record.reward, "rerank_accuracy": record.rerank_accuracy,
            "rerank_reward": record.rerank_reward, "genotype": record.genotype},
        "rerank": rerank_summary(loop.records),
        "trials": len(loop.records), "new_trials": loop.new_trials, "stopped_by": loop.stopped_by,
        "seconds": round(result.seconds, 1),
        "files": [name for name in REPORT_FILES if (result.run_dir / name).exists()],
        "next": None if record is None else f"python -m search.train {result.run_dir}",
    }
