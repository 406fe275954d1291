"""What a search run recorded about its winner, so later stages need no repeated flags.

``search.train``, ``export.onnx`` and ``search.info`` accept a run directory, its
``genotype.json`` or any genotype file. :func:`resolve_run` turns that into a
:class:`RunTarget`: the genotype (the selected one, or trial N of the run) plus the
settings the search used: dataset, data directory, target variant, image size and class
count. A flag the user gives overrides a recorded setting; nothing recorded means the
stage's own default. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import NasdeployError
from search.core.rundir import (
    CHECKPOINT_NAME,
    EXPORT_REPORT_NAME,
    GENOTYPE_NAME,
    HISTORY_NAME,
    MODEL_ONNX_NAME,
    variant_path,
)
from search.space.genotype import REFERENCE_GENOTYPES, Genotype, load_genotype_file
from search.space.scale import VARIANTS, parse_scale
from search.trials.history import read_history

TRAIN_DIR_NAME = "train"
"""Final training of trial N of a run lands in ``<run>/train-trialN/`` (one folder per
trial, so a selection changed by ``search.select`` never meets another trial's weights)."""


@dataclass(frozen=True)
class RunTarget:
    """A genotype and the deployment settings its search recorded (``None``: not recorded).

    Attributes:
        source: what the user named (a run directory, a JSON file or a built-in name).
        name: a short name for output folders and messages.
        genotype: the genotype to build.
        run_dir: the search run it came from, if any.
        trial: the trial of that run the genotype is (the selected one unless ``--trial``).
        dataset, data_dir: the data the search trained its children on.
        variant: the deployment scale (N@F or a named variant) latency was measured at.
        image_size: the input size of the timed deployment model.
        num_classes: its classifier outputs.
        accuracy, latency_ms: the proxy accuracy and latency the search recorded.
        selected: the genotype is the run's selection (not another ``--trial``).
        auto_variant, auto_image_size: the N@F and input size ``search.scale`` chose for a
            latency budget (``metadata.scale``), what ``--variant auto`` builds.
    """

    source: str
    name: str
    genotype: Genotype
    run_dir: Path | None = None
    trial: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    variant: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    selected: bool = True
    auto_variant: str | None = None
    auto_image_size: int | None = None

    @property
    def from_run(self) -> bool:
        return self.run_dir is not None

    def train_dir(self) -> Path | None:
        """Where final training of this genotype goes by default (inside its run)."""
        if self.run_dir is None:
            return None
        suffix = "" if self.trial is None else f"-trial{self.trial}"
        return self.run_dir / f"{TRAIN_DIR_NAME}{suffix}"

    def image_size_for(self, variant: str | None) -> int | None:
        """The input size to build ``variant`` at (``None``: the variant's or dataset's own).

        The recorded size holds for the recorded variant and for another ``N@F`` when the
        search used ``N@F`` (then it is the data's size); a named variant keeps its own size,
        and after a named variant was searched an ``N@F`` takes the dataset's size.
        """
        if variant is None or variant == self.variant:
            return self.image_size
        named = variant.strip().lower() in VARIANTS
        searched_named = self.variant is not None and self.variant.strip().lower() in VARIANTS
        return None if named or searched_named else self.image_size

    def describe(self) -> str:
        """One line: where the genotype comes from and what the search measured."""
        from_run = self.run_dir is not None and self.trial is not None
        where = f"trial {self.trial} of {self.run_dir}" if from_run else self.source
        facts = []
        if self.accuracy is not None:
            facts.append(f"proxy val acc {self.accuracy:.4f}")
        if self.latency_ms is not None:
            facts.append(f"{self.latency_ms:.3g} ms at {self.variant}")
        return where + (f" ({', '.join(facts)})" if facts else "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """The recorded settings from a genotype's ``metadata`` (written by the search report)."""
    search = _dict(metadata.get("search"))
    config, latency = _dict(search.get("config")), _dict(search.get("latency"))
    variant = _str_or_none(latency.get("scale")) or _str_or_none(config.get("target_variant"))
    image_size = _int_or_none(latency.get("image_size"))
    if image_size is None and variant is not None:
        if variant.strip().lower() in VARIANTS:
            image_size = parse_scale(variant).image_size
    scaled = _dict(metadata.get("scale"))
    return {
        "auto_variant": _str_or_none(scaled.get("variant")),
        "auto_image_size": _int_or_none(scaled.get("image_size")),
        "dataset": _str_or_none(config.get("dataset")) or _str_or_none(metadata.get("dataset")),
        "data_dir": _str_or_none(config.get("data_dir")),
        "variant": variant,
        "image_size": image_size,
        "num_classes": _int_or_none(latency.get("num_classes")),
    }


def _run_dir_of(path: Path) -> Path | None:
    """The run directory holding ``path`` (a genotype file next to ``trials.jsonl``)."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / HISTORY_NAME).is_file() else None


def resolve_run(source: str | os.PathLike[str], trial: int | None = None) -> RunTarget:
    """Resolve a run directory, genotype file or built-in name into a :class:`RunTarget`.

    Args:
        source: ``runs/x``, ``runs/x/genotype.json``, any genotype JSON, or ``nasnet-a``.
        trial: pick this trial of the run instead of the selected genotype.

    Raises:
        NasdeployError: nothing to read, an unknown trial, or ``trial`` without a run.
    """
    text = str(source)
    if text in REFERENCE_GENOTYPES and not Path(text).exists():
        if trial is not None:
            raise NasdeployError(f"--trial needs a search run directory, not the built-in {text!r}")
        return RunTarget(source=text, name=text, genotype=REFERENCE_GENOTYPES[text])
    path = Path(text).expanduser()
    if not path.exists() and path.suffix != ".json":
        raise NasdeployError(f"no search run, genotype file or built-in genotype named {text!r}; "
                             f"built-ins: {', '.join(REFERENCE_GENOTYPES)}")
    if path.is_dir():
        if not (path / GENOTYPE_NAME).is_file():
            raise NasdeployError(f"{path} holds no {GENOTYPE_NAME}: give a search run directory "
                                 "or a genotype file")
        path = path / GENOTYPE_NAME
    genotype, metadata = load_genotype_file(path)
    run_dir = _run_dir_of(path)
    settings = _settings(metadata)
    name = run_dir.name if run_dir is not None and path.name == GENOTYPE_NAME else path.stem
    recorded = metadata.get("trial")
    selected = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    target = RunTarget(source=text, name=name, genotype=genotype, run_dir=run_dir, trial=selected,
                       accuracy=_float(metadata.get("accuracy")),
                       latency_ms=_float(metadata.get("latency_ms")), **settings)
    if trial is None or trial == selected:
        return target
    if run_dir is None:
        raise NasdeployError(f"--trial needs a search run directory; {path} has no {HISTORY_NAME} beside it")
    return _pick_trial(target, run_dir, trial)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _pick_trial(target: RunTarget, run_dir: Path, trial: int) -> RunTarget:
    records = {r.trial: r for r in read_history(run_dir / HISTORY_NAME)}
    record = records.get(trial)
    if record is None:
        known = f"0..{max(records)}" if records else "none yet"
        raise NasdeployError(f"{run_dir} has no trial {trial} (trials: {known})")
    if record.duplicate_of is not None and record.duplicate_of in records:
        record = records[record.duplicate_of]
    picked = RunTarget(source=target.source, name=f"{target.name}-trial{trial}",
                       genotype=record.to_genotype(), run_dir=run_dir, trial=trial,
                       dataset=target.dataset, data_dir=target.data_dir, variant=target.variant,
                       image_size=target.image_size, num_classes=target.num_classes,
                       accuracy=record.accuracy, latency_ms=record.latency_ms, selected=False)
    return picked


def trained_checkpoint(target: RunTarget) -> Path | None:
    """The run's final-training checkpoint of this trial (``<run>/train-trialN/``), if one exists."""
    train_dir = target.train_dir()
    if train_dir is None or not (train_dir / CHECKPOINT_NAME).is_file():
        return None
    return train_dir / CHECKPOINT_NAME


def fastest_precision(model: Path) -> Path:
    """``model`` or the sibling precision (``model.fp16.onnx``, ``model.int8.onnx``) that its
    folder's export report names fastest on the export machine among those that agree with
    fp32 (``precisions.fastest``); ``model`` when there is no such report or file."""
    import json

    try:
        report = json.loads((model.parent / EXPORT_REPORT_NAME).read_text(encoding="utf-8"))
        fastest = report["precisions"]["fastest"]
    except (OSError, ValueError, KeyError, TypeError):
        return model
    if fastest == "fp32" or fastest not in ("fp16", "int8") or report.get("model") != model.name:
        return model
    sibling = variant_path(model, fastest)
    return sibling if sibling.is_file() else model


def exported_model(folder: str | os.PathLike[str]) -> Path:
    """The model file a folder stands for, for the torch-free serving CLIs.

    A folder holding ``model.onnx`` stands for it, or for the sibling precision its
    ``export_report.json`` names fastest (:func:`fastest_precision`); a search run stands for
    the model exported from the final training of its selected trial
    (``<run>/train-trialN/model.onnx``), chosen the same way.

    Raises:
        NasdeployError: the folder holds no exported model (and says which command makes one).
    """
    path = Path(folder)
    if (path / MODEL_ONNX_NAME).is_file():
        return fastest_precision(path / MODEL_ONNX_NAME)
    if not (path / GENOTYPE_NAME).is_file():
        raise NasdeployError(f"{path} holds no {MODEL_ONNX_NAME}: give a model file, a folder with one, "
                             "or a search run directory")
    target = resolve_run(path)
    train_dir = target.train_dir()
    if train_dir is not None and (train_dir / MODEL_ONNX_NAME).is_file():
        model, checkpoint = train_dir / MODEL_ONNX_NAME, train_dir / CHECKPOINT_NAME
        if checkpoint.is_file() and checkpoint.stat().st_mtime > model.stat().st_mtime:
            raise NasdeployError(f"{model} is older than {checkpoint} (training went on after the export): "
                                 f"export again with python -m export.onnx {path}")
        return fastest_precision(model)
    step = (f"python -m export.onnx {path}" if trained_checkpoint(target) is not None
            else f"python -m search.train {path}, then python -m export.onnx {path}")
    raise NasdeployError(f"{path}: the selected trial has no exported model yet; run {step}")
