"""What ``python -m search.scale`` does: resolve the genotype or baseline, scale it, record the choice.

:func:`run_scale` checks everything before the first measurement (source, budget, predictor,
output file), runs :mod:`search.evaluation.autoscale`, and for a genotype writes the chosen
scale into ``metadata.scale`` of the genotype file atomically (the run's ``genotype.json``,
the file given, or ``--out``), keeping the rest of its metadata. A budget that no scale meets
is one line naming the smallest scale's latency; nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import NasdeployError
from search.core.rundir import GENOTYPE_NAME
from search.evaluation.autoscale import ScaleResult, scale_baseline, scale_genotype, table_text

SCALE_KEY = "scale"
"""Where a genotype file records its automatic N@F (``metadata.scale``)."""


@dataclass(frozen=True)
class ScaleConfig:
    """The flags of ``python -m search.scale``."""

    budget_ms: float
    source: str | None = None
    model: str | None = None
    device: str = "cpu"
    threads: int = 1
    predictor: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    cells: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    max_filters: int = 4032
    out: str | None = None


@dataclass
class ScaleOutcome:
    """The scaling result and where it was recorded."""

    result: ScaleResult
    written: Path | None = None
    train_command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "written": None if self.written is None else str(self.written),
                "train_command": self.train_command}

    def text(self) -> str:
        r, c = self.result, self.result.chosen
        assert c is not None
        lines = [f"{r.subject} at {r.image_size} px on {r.device}, budget {r.budget_ms:g} ms:", "",
                 table_text(r), "",
                 f"chosen: {c.scale} ({c.latency_ms:.3f} ms {c.source}, {c.macs / 1e6:.1f} M MACs, "
                 f"{c.params / 1e6:.3f} M params)"]
        if self.written is not None:
            lines.append(f"recorded in {self.written} (metadata.scale)")
        lines.append(f"train it: {self.train_command}")
        return "\n".join(lines)


def _genotype_file(source: str) -> Path | None:
    """The genotype file a source names (``None`` for a built-in name)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / GENOTYPE_NAME
    return path if path.exists() or path.suffix == ".json" else None


def run_scale(config: ScaleConfig, log: Callable[[str], None] = lambda line: None) -> ScaleOutcome:
    """Scale ``config.source`` (a genotype) or ``config.model`` (a baseline) to the budget.

    Raises:
        NasdeployError: bad input (one line), or a budget no scale meets.
    """
    from search.evaluation.latency import LatencySettings

    if not math.isfinite(config.budget_ms) or config.budget_ms <= 0:
        raise NasdeployError(f"the latency budget must be a positive time, got {config.budget_ms}")
    if (config.source is None) == (config.model is None):
        raise NasdeployError("name what to scale: a genotype (run directory, genotype JSON or built-in "
                             "name) or --model NAME, not both")
    if config.model is not None:
        for flag, given in (("--latency-predictor", config.predictor), ("--out", config.out)):
            if given is not None:
                raise NasdeployError(f"{flag} does not go with --model (a predictor models cells; a baseline "
                                     "has no genotype file to record in)")
        return _scale_model(config, log)
    from search.trials.runinfo import resolve_run

    target = resolve_run(config.source)
    path = Path(config.out) if config.out is not None else _genotype_file(config.source)
    if path is None:
        raise NasdeployError(f"{config.source!r} is a built-in genotype: give --out FILE to record its scale")
    if path.is_dir():
        raise NasdeployError(f"--out {path} is a folder: name a genotype file, e.g. {path / GENOTYPE_NAME}")
    image_size = config.image_size or target.image_size or 32
    num_classes = config.num_classes or target.num_classes or 10
    settings = LatencySettings(scale=f"1@{24 * (target.genotype.num_blocks + 1)}", image_size=image_size,
                               num_classes=num_classes, device=config.device, threads=config.threads)
    predictor = None
    if config.predictor is not None:
        from search.evaluation.predictor import load_predictor

        predictor = load_predictor(config.predictor)
    log(f"scaling {target.name} to {config.budget_ms:g} ms at {image_size} px ({num_classes} classes):")
    result = scale_genotype(target.genotype, config.budget_ms, settings, cells=config.cells,
                            max_filters=config.max_filters, predictor=predictor, subject=target.name, log=log)
    _require_choice(result)
    _record(target.genotype, _genotype_file(config.source), path, result)
    shown = config.source if config.out is None else str(path)
    return ScaleOutcome(result, path, f"python -m search.train {shown} --variant auto")


def _scale_model(config: ScaleConfig, log: Callable[[str], None]) -> ScaleOutcome:
    from search.evaluation.latency import LatencySettings
    from search.space.baselines import get_baseline

    entry = get_baseline(config.model or "")
    image_size = config.image_size or 32
    settings = LatencySettings(image_size=image_size, num_classes=config.num_classes or 10,
                               device=config.device, threads=config.threads)
    log(f"scaling {entry.name} to {config.budget_ms:g} ms at {image_size} px:")
    result = scale_baseline(entry.name, config.budget_ms, settings, log=log)
    _require_choice(result)
    chosen = result.chosen
    width = "" if chosen is None or chosen.width_mult is None else f" --width-mult {chosen.width_mult:g}"
    size = "" if config.image_size is None else f" --image-size {image_size}"
    return ScaleOutcome(result, None, f"python -m search.train --model {entry.name}{width}{size}")


def _require_choice(result: ScaleResult) -> None:
    if result.chosen is not None:
        return
    if not result.points:
        raise NasdeployError("no scale was measured")
    smallest = min(result.points, key=lambda p: p.latency_ms)
    raise NasdeployError(f"no scale of {result.subject} meets {result.budget_ms:g} ms: the smallest tried, "
                         f"{smallest.scale}, takes {smallest.latency_ms:.3f} ms ({smallest.source}); "
                         "raise the budget")


def _record(genotype: Any, source: Path | None, path: Path, result: ScaleResult) -> None:
    """Write the genotype with ``metadata.scale`` to ``path``, keeping the source's metadata."""
    from search.space.genotype import load_genotype_file, save_genotype

    metadata = load_genotype_file(source)[1] if source is not None and source.is_file() else {}
    metadata = {**metadata, SCALE_KEY: result.metadata()}
    try:
        save_genotype(genotype, path, metadata)
    except OSError as exc:
        raise NasdeployError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
