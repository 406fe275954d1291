"""What ``python -m search.score`` scores and how: genotypes, data and evaluator settings.

:func:`score_command` resolves a :class:`ScoreConfig` (the flags) against a search run
(``--run DIR``: its ``config.json`` gives the dataset, data directory, image size, child
settings, block count, evaluator and data seed, and for the one-shot evaluator its trained
``supernet.pt``), checks every genotype against that search space, loads the data and
scores each genotype with each seed through :func:`search.experiment.score.score_genotypes`,
the same loop re-ranking uses. Everything is checked before any child trains; nothing is
written (the caller writes ``--json FILE``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from search.core.errors import NasdeployError
from search.core.rundir import SUPERNET_NAME
from search.experiment.score import ScoreRow, oneshot_scorer, proxy_scorer, score_genotypes, score_table
from search.experiment.session import (
    CHILD_DEFAULTS,
    EVALUATORS,
    MAX_SEED,
    SearchConfig,
    _settings,
    load_config,
)
from search.space.genotype import Genotype, load_genotype

DEFAULT_SEEDS = (0, 1)
"""Seeds each genotype is scored with: two, so the table shows how much a score moves with
the seed (a search scores with one; seed 0 reproduces a seed-0 search's child)."""
MAX_SEEDS = 100
"""Most seeds per genotype."""
PROXY_FLAGS = ("child_scale", "child_epochs", "child_train_size", "child_image_size")


@dataclass
class ScoreConfig:
    """The flags of ``python -m search.score``; ``None`` means "the run's, else the default"."""

    genotypes: list[str]
    dataset: str | None = None
    data_dir: str | None = None
    evaluator: str | None = None
    run: str | None = None
    seeds: list[int] | None = None
    child_scale: str | None = None
    child_epochs: int | None = None
    child_train_size: int | None = None
    image_size: int | None = None
    child_image_size: int | None = None
    blocks: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class ScoreReport:
    """The scores and what produced them."""

    rows: list[ScoreRow]
    evaluator: str
    dataset: str
    seeds: tuple[int, ...]
    settings: dict[str, Any]
    run: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"evaluator": self.evaluator, "dataset": self.dataset, "run": self.run,
                "seeds": list(self.seeds), "settings": self.settings,
                "genotypes": [row.to_dict() for row in self.rows], "seconds": round(self.seconds, 1)}

    def text(self) -> str:
        """The table and one line saying how the genotypes were scored."""
        how = (f"{self.evaluator} evaluator on {self.dataset}"
               + (f" with the settings of {self.run}" if self.run else ""))
        if self.evaluator == "proxy":
            s = self.settings
            images = "all" if s["train_size"] is None else s["train_size"]
            how += (f": {s['scale']} trained {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''} on "
                    f"{images} training images, scored on the validation split")
        else:
            how += f": weights inherited from {self.settings['checkpoint']}, scored on the validation split"
        return f"{score_table(self.rows)}\n{how} ({self.seconds:.0f} s)"


def _check_seeds(seeds: list[int]) -> tuple[int, ...]:
    if not seeds:
        raise NasdeployError("--seeds needs at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise NasdeployError(f"--seeds takes at most {MAX_SEEDS} seeds, got {len(seeds)}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise NasdeployError(f"--seeds must be from 0 to {MAX_SEED}, got {seed!r}"[:160])
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise NasdeployError(f"--seeds repeats {', '.join(map(str, repeated))}: each seed scores once")
    return tuple(seeds)


def _load(source: str, blocks: int | None, where: str, oneshot: bool) -> Genotype:
    genotype = load_genotype(source)
    if blocks is not None:
        for name in ("normal", "reduce"):
            count = len(getattr(genotype, name).blocks)
            if count != blocks:
                raise NasdeployError(f"{source} is outside the search space: its {name} cell has {count} "
                                     f"blocks, {where} {blocks}")
    if oneshot:
        from search.nn.supernet import check_in_space

        try:
            check_in_space(genotype, genotype.num_blocks)
        except NasdeployError as exc:
            raise NasdeployError(f"{source}: {exc} (the one-shot evaluator scores only genotypes of the "
                                 f"searched space; use --evaluator proxy)") from None
    return genotype


def _resolve(config: ScoreConfig) -> tuple[SearchConfig | None, str, str]:
    """The run's settings (if any), the dataset and the evaluator; one line if unusable."""
    base = load_config(config.run) if config.run is not None else None
    dataset = config.dataset or (base.dataset if base is not None else None)
    if dataset is None:
        raise NasdeployError(f"give --dataset ({', '.join(CHILD_DEFAULTS)}) or --run DIR to score with a "
                             "search's settings")
    if dataset not in CHILD_DEFAULTS:
        raise NasdeployError(f"unknown dataset {dataset!r}; choose from {', '.join(CHILD_DEFAULTS)}")
    evaluator = config.evaluator or (base.evaluator if base is not None else "proxy")
    if evaluator not in EVALUATORS:
        raise NasdeployError(f"unknown evaluator {evaluator!r}; choose from {', '.join(EVALUATORS)}")
    for name in ("child_epochs", "child_train_size", "image_size", "child_image_size", "blocks"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise NasdeployError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return base, dataset, evaluator


def _search_config(config: ScoreConfig, base: SearchConfig | None, dataset: str) -> SearchConfig:
    """The search settings a child is trained with: the run's (its data settings only for its
    own dataset), the flags given over them, the search's defaults for the rest."""
    if base is None or base.dataset != dataset:
        search = SearchConfig(latency_budget="1s", dataset=dataset)  # scoring needs no budget
        if base is not None:
            search.seed, search.device = base.seed, base.device
    else:
        search = dataclasses.replace(base)
    for name in ("data_dir", "image_size", "child_scale", "child_epochs", "child_train_size",
                 "child_image_size", "device"):
        if getattr(config, name) is not None:
            setattr(search, name, getattr(config, name))
    return search


def score_command(config: ScoreConfig, *, progress: bool = True, stream: TextIO | None = None
                  ) -> ScoreReport:
    """Score ``config.genotypes`` as ``python -m search.score`` does.

    Raises:
        NasdeployError: a bad flag, an unknown genotype, a genotype outside the run's space
            (another block count; for the one-shot evaluator also an explicit ``concat``), a
            run without ``supernet.pt`` for the one-shot evaluator, missing data. Raised
            before any child trains.
    """
    start = time.perf_counter()
    base, dataset, evaluator = _resolve(config)
    seeds = _check_seeds(list(DEFAULT_SEEDS if config.seeds is None else config.seeds))
    oneshot = evaluator == "oneshot"
    blocks = config.blocks or (base.blocks if base is not None else None)
    where = f"{config.run} searched" if config.blocks is None else "--blocks is"
    if oneshot:
        given = [f"--{n.replace('_', '-')}" for n in PROXY_FLAGS if getattr(config, n) is not None]
        if given:
            raise NasdeployError(f"{', '.join(given)} set the proxy evaluator; the one-shot evaluator scores "
                                 "with the run's trained supernet")
        if config.run is None:
            raise NasdeployError("--evaluator oneshot scores with a search's trained supernet: give "
                                 "--run DIR (a run searched with --evaluator oneshot)")
    genotypes = [(source, _load(source, blocks, where, oneshot)) for source in config.genotypes]
    checkpoint = Path(config.run or ".") / SUPERNET_NAME
    if oneshot and not checkpoint.is_file():
        raise NasdeployError(f"{config.run} has no trained supernet ({SUPERNET_NAME}); score with "
                             "--evaluator proxy, or run a search with --evaluator oneshot")
    search = _search_config(config, base, dataset)
    from search.data.datasets import load_dataset
    from search.nn.device import resolve_device
    from search.space.scale import check_size, parse_scale

    resolve_device(search.device)
    data_seed = search.seed
    if oneshot:  # the validation split the supernet was not trained on (--supernet: its own seed)
        from search.evaluation.oneshot import read_supernet

        data_seed = read_supernet(checkpoint)["settings"].get("seed", search.seed)
    data = load_dataset(dataset, search.data_dir, image_size=search.image_size, seed=data_seed,
                        download=True)
    if oneshot:
        scorer = oneshot_scorer(data, checkpoint, device=config.device, stream=stream)
        settings: dict[str, Any] = {"checkpoint": str(checkpoint), "image_size": data.image_size,
                                    "data_seed": data_seed}
    else:
        child = _settings(search, data)[0]  # exactly the child a search with these settings trains
        for source, genotype in genotypes:
            try:
                check_size(parse_scale(child.scale, child.image_size or data.image_size), genotype,
                           data.num_classes)
            except NasdeployError as exc:
                raise NasdeployError(f"{source}: {exc}") from None
        scorer = proxy_scorer(data, child)
        settings = {"scale": child.scale, "epochs": child.epochs, "train_size": child.train_size,
                    "image_size": child.image_size or data.image_size, "device": child.device,
                    "data_seed": search.seed}
    rows = score_genotypes(genotypes, scorer, seeds, progress=progress, stream=stream, label="score")
    return ScoreReport(rows, evaluator, dataset, seeds, settings, config.run, time.perf_counter() - start)
