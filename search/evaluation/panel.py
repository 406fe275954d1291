"""Writing a latency panel on the search host, and profiling one on this machine.

:func:`write_panel` samples distinct random genotypes (seeded, uniformly over every
decision of :class:`search.space.searchspace.SearchSpace`), builds each at the deployment
scale exactly as the search's latency meter does (:func:`search.evaluation.latency.build_deployment_model`,
:func:`~search.evaluation.latency.export_deployment_model`: batch 1, static shapes,
random weights) and writes ``pNNN.onnx`` plus ``manifest.json`` (format in
``docs/latency.md``). The device times the panel torch-free (``python -m serve.bench --panel``,
:func:`search.runtime.panel.measure_panel`); :func:`profile` does both here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.core.atomic import atomic_write_text
from search.core.errors import NasdeployError
from search.runtime.panel import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEASUREMENTS_NAME,
    PANEL_FORMAT,
    PanelTiming,
    ProgressFn,
    measure_panel,
    utc_now,
    write_measurements,
)
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace

MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class PanelSpec:
    """What a panel holds: ``samples`` random genotypes at one deployment target.

    Attributes:
        target_variant: deployment variant or ``N@F`` (as ``search.run --target-variant``).
        samples: number of distinct genotypes.
        image_size: input side; ``None``: the variant's (``N@F``: 32 px).
        num_classes: classifier outputs of the deployment model.
        blocks: blocks per cell of the search space.
        seed: sampling seed (same seed, same genotypes).
    """

    target_variant: str = "cifar"
    samples: int = 50
    image_size: int | None = None
    num_classes: int = 10
    blocks: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        from search.space.scale import parse_scale

        if not 1 <= self.samples <= MAX_SAMPLES:
            raise NasdeployError(f"--samples must be 1 to {MAX_SAMPLES}, got {self.samples}")
        if self.num_classes < 1 or self.blocks < 1:
            raise NasdeployError(f"--num-classes and --blocks must be at least 1, got "
                                 f"{self.num_classes}/{self.blocks}")
        parse_scale(self.target_variant, self.image_size)

    @property
    def resolved_image_size(self) -> int:
        from search.space.scale import parse_scale

        return parse_scale(self.target_variant, self.image_size).image_size


def sample_genotypes(space: SearchSpace, count: int, seed: int) -> list[Genotype]:
    """``count`` distinct genotypes, each decision uniform over its choices (seeded)."""
    rng = np.random.default_rng(seed)
    decisions = space.decisions()
    found: dict[str, Genotype] = {}
    tries = 0
    while len(found) < count:
        tries += 1
        if tries > 100 * count:
            raise NasdeployError(f"the {space.num_blocks}-block space has too few distinct genotypes "
                                 f"for {count} samples")
        genotype = space.decode([int(rng.integers(d.size)) for d in decisions])
        found.setdefault(genotype.key(), genotype)
    return list(found.values())


PanelProgress = Callable[[int, int, dict[str, Any]], None]
"""``(done, total, model entry)`` after each exported model."""


def write_panel(spec: PanelSpec, out: str | os.PathLike[str],
                progress: PanelProgress | None = None) -> dict[str, Any]:
    """Export ``spec.samples`` random genotypes and the manifest into ``out``; return the manifest.

    Model files are written atomically, the manifest last, so a folder with a manifest is a
    complete panel.

    Raises:
        NasdeployError: bad settings, or ``out`` already holds a panel.
    """
    from search.evaluation.latency import build_deployment_model, export_deployment_model

    folder = Path(out)
    if (folder / MANIFEST_NAME).exists():
        raise NasdeployError(f"{folder} already holds a latency panel; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    size = spec.resolved_image_size
    genotypes = sample_genotypes(SearchSpace(spec.blocks), spec.samples, spec.seed)
    width = max(3, len(str(spec.samples - 1)))
    models = []
    for number, genotype in enumerate(genotypes):
        start = time.perf_counter()
        model_id = f"p{number:0{width}d}"
        model, macs, params = build_deployment_model(genotype, spec.target_variant, spec.num_classes, size)
        export_deployment_model(model, folder / f"{model_id}.onnx", size)
        entry = {"id": model_id, "file": f"{model_id}.onnx", "genotype": genotype.to_dict(),
                 "macs": macs, "params": params}
        models.append(entry)
        if progress is not None:
            progress(number + 1, len(genotypes), {**entry, "export_time_s": time.perf_counter() - start})
    manifest = {"format": PANEL_FORMAT, "version": FORMAT_VERSION, "target_variant": spec.target_variant,
                "image_size": size, "num_classes": spec.num_classes, "blocks": spec.blocks, "batch": 1,
                "seed": spec.seed, "created": utc_now(), "models": models}
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def profile(spec: PanelSpec, out: str | os.PathLike[str], timing: PanelTiming | None = None,
            export_progress: PanelProgress | None = None,
            measure_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Write a panel into ``out`` and time it here; ``out/measurements.json`` is the result."""
    write_panel(spec, out, export_progress)
    measurements = measure_panel(out, timing, measure_progress)
    write_measurements(Path(out) / MEASUREMENTS_NAME, measurements)
    return measurements
