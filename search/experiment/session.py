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
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from search.core.atomic import atomic_write_text, unique_path
from search.core.errors import NasdeployError
from search.core.jsonio import read_json
from search.core.rundir import (
    CONFIG_NAME,
    HISTORY_NAME,
    LATENCY_CACHE_NAME,
    LOCK_NAME,
    REPORT_FILES,
    STUDY_DB_NAME,
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
from search.trials.selection import Selection

DEFAULT_TRIALS = 100
CONFIG_MAX_BYTES = 1024 * 1024  # config.json holds a few dozen settings
DEFAULT_RUNS_DIR = "runs"
STUDY_NAME_MAX_CHARS = 512  # Optuna's RDB storage limit for study names


@dataclass(frozen=True)
class ChildDefaults:
    """Proxy-task defaults for one dataset (what ``--child-*`` fall back to)."""

    scale: str
    epochs: int
    train_size: int | None


CHILD_DEFAULTS: dict[str, ChildDefaults] = {
    # 1@32 on the 1,295 digits training images: ~5-10 s per child on one CPU core.
    "digits": ChildDefaults("1@32", 1, None),
    # CIFAR: one epoch of a 1@32 proxy on 5k images (seconds on a GPU, ~1-2 min on a CPU).
    "cifar10": ChildDefaults("1@32", 1, 5000),
    "cifar100": ChildDefaults("1@32", 1, 5000),
    "imagefolder": ChildDefaults("1@64", 1, None),
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
    image_size: int | None = None
    target_variant: str = "cifar"
    latency_device: str = "cpu"
    device: str = "auto"
    blocks: int = 5
    seed: int = 0
    rl_batch: int = 4
    out: str | None = None
    study_name: str | None = None

    def validate(self) -> None:
        """Check every setting; raise :class:`NasdeployError` with one line."""
        self.reward_config()
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if self.strategy not in available_strategies():
            raise NasdeployError(f"unknown strategy {self.strategy!r}; choose from "
                                 f"{', '.join(available_strategies())}")
        if self.dataset not in CHILD_DEFAULTS:
            raise NasdeployError(f"unknown dataset {self.dataset!r}; choose from "
                                 f"{', '.join(CHILD_DEFAULTS)}")
        for name in ("trials", "child_epochs", "child_train_size", "blocks", "rl_batch",
                     "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NasdeployError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.study_name is not None and not (
                self.study_name.strip() and self.study_name.isprintable()
                and len(self.study_name) <= STUDY_NAME_MAX_CHARS):
            raise NasdeployError(f"--study-name must be 1 to {STUDY_NAME_MAX_CHARS} printable "
                                 f"characters, got {self.study_name[:80]!r}")
        if self.latency_device not in ("cpu", "cuda"):
            raise NasdeployError(f"--latency-device must be cpu or cuda, got "
                                 f"{self.latency_device!r}")
        from search.nn.device import resolve_device
        from search.space.scale import parse_scale

        parse_scale(self.target_variant)
        parse_scale(self.child_defaults().scale)
        resolve_device(self.device)

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
                             self.child_train_size or base.train_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        data = dict(data)
        if "flops_budget" in data:  # runs written before the flag was called --macs-budget
            data.setdefault("macs_budget", data.pop("flops_budget"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown or "latency_budget" not in data:
            raise NasdeployError(f"config.json has unknown or missing settings "
                                 f"({', '.join(sorted(unknown)) or 'latency_budget'})")
        return cls(**data)


@dataclass
class SearchResult:
    """A finished (or stopped) search."""

    run_dir: Path
    best: Selection | None
    loop: LoopResult
    config: SearchConfig
    seconds: float


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
    child_settings = ChildSettings(scale=child.scale, epochs=child.epochs,
                                   train_size=child.train_size, device=config.device,
                                   seed=config.seed)
    target_size = None if config.target_variant.strip().lower() in VARIANTS else data.image_size
    latency = LatencySettings(scale=config.target_variant, image_size=target_size,
                              num_classes=data.num_classes, device=config.latency_device)
    return child_settings, latency


def _evaluator(config: SearchConfig, data: Any, run_dir: Path) -> Evaluator:
    from search.evaluation.latency import LatencyMeter
    from search.evaluation.proxy import evaluate_child

    child, latency = _settings(config, data)
    meter = LatencyMeter(latency, run_dir / LATENCY_CACHE_NAME)
    return Evaluator(partial(evaluate_child, data=data, settings=child), meter,
                     config.reward_config())


def _load_data(config: SearchConfig) -> Any:
    from search.data.datasets import load_dataset

    return load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                        seed=config.seed, download=True)


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
    if not resume and (run_dir / HISTORY_NAME).exists():
        raise NasdeployError(f"{run_dir} already holds a search; continue it with --resume "
                             f"{run_dir} or choose another --out")
    config.out = str(run_dir)
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS even after a kill -9)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(run_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise NasdeployError(f"{run_dir} is in use by another search (pid {owner}); "
                                 f"wait for it or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def run_search(config: SearchConfig, *, progress: bool = True, resume: bool = False
               ) -> SearchResult:
    """Run the search described by ``config``; with ``resume`` continue ``config.out``."""
    config.validate()
    start = time.perf_counter()
    data = _load_data(config)
    run_dir = Path(config.out) if config.out else new_run_dir(config)
    evaluator = _evaluator(config, data, run_dir)  # checks the latency provider first
    config.out = str(run_dir)
    if config.study_name is None:
        config.study_name = default_study_name(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        _prepare_dir(config, run_dir, resume)
        return _search(config, data, evaluator, run_dir, progress, start)


def _search(config: SearchConfig, data: Any, evaluator: Evaluator, run_dir: Path,
            progress: bool, start: float) -> SearchResult:
    strategy = create_strategy(config.strategy, StrategyConfig(
        space=SearchSpace(config.blocks), seed=config.seed, run_dir=run_dir,
        rl_batch=config.rl_batch, study_name=config.study_name,
        latency_budget_ms=evaluator.reward.latency_budget_ms,
        macs_budget=evaluator.reward.macs_budget))
    ctx = _context(config, data)
    try:
        result = run_loop(strategy, evaluator, run_dir, max_trials=config.max_trials,
                          time_budget_s=config.time_budget_s, progress=progress)
    except KeyboardInterrupt:
        write_report(run_dir, read_history(run_dir / HISTORY_NAME), ctx)
        raise
    finally:
        strategy.close()
    best = write_report(run_dir, result.records, ctx)
    return SearchResult(run_dir, best, result, config, time.perf_counter() - start)


def load_config(run_dir: str | Path) -> SearchConfig:
    """Read ``config.json`` of a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        data = read_json(path, expect=dict, max_bytes=CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise NasdeployError(f"{run_dir} is not a search run directory (no {CONFIG_NAME})") from None
    except OSError as exc:
        raise NasdeployError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    config = SearchConfig.from_dict(data)
    config.out = str(run_dir)
    return config


def resume_search(run_dir: str | Path, *, trials: int | None = None,
                  time_budget: str | None = None, progress: bool = True) -> SearchResult:
    """Continue the run in ``run_dir``; ``trials``/``time_budget`` may extend it."""
    config = load_config(run_dir)
    if trials is not None:
        config.trials = trials
    if time_budget is not None:
        config.time_budget = time_budget
    return run_search(config, progress=progress, resume=True)


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
        lines.append(f"{head}: trial {r.trial}, val accuracy {r.accuracy:.4f}, latency "
                     f"{r.latency_ms:.3f} ms (budget {budget:g} ms), "
                     f"{(r.macs or 0) / 1e6:.1f} M MACs, {(r.params or 0) / 1e6:.3f} M params")
        from search.space.text import genotype_text

        lines.append(genotype_text(r.to_genotype()))
    loop = result.loop
    why = {"trials": "trial limit", "time": "time budget"}.get(loop.stopped_by, loop.stopped_by)
    lines.append(f"{len(loop.records)} trials ({loop.new_trials} new, stopped by the {why}) "
                 f"in {result.seconds / 60:.1f} min")
    files = [name for name in REPORT_FILES if (result.run_dir / name).exists()]
    lines.append(f"files in {result.run_dir}: {', '.join(files)}")
    if best is not None:  # search.train reads dataset, data dir, variant and size from the run
        lines.append(f"next: python -m search.train {shlex.quote(str(result.run_dir))}")
    return "\n".join(lines)


def result_dict(result: SearchResult) -> dict[str, Any]:
    """The ``--json`` form of a finished search: the selection, the budget, the files."""
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
            "reward": record.reward, "genotype": record.genotype},
        "trials": len(loop.records), "new_trials": loop.new_trials, "stopped_by": loop.stopped_by,
        "seconds": round(result.seconds, 1),
        "files": [name for name in REPORT_FILES if (result.run_dir / name).exists()],
        "next": None if record is None else f"python -m search.train {result.run_dir}",
    }
