"""Work a run does once before its first trial, and resumes after a kill.

With ``--evaluator oneshot`` a candidate costs a fraction of a second, so the two things
that would otherwise dominate are done once per run, and their time counts against
``--time-budget`` like the trials' (a one-hour search includes them):

- the weight-sharing supernet is trained (``supernet.pt``, checkpointed while it trains);
- without ``--latency-predictor``, a latency predictor is profiled on this host at the
  deployment target (a panel of random genotypes exported and timed, as
  ``python -m search.latency profile`` does) and fitted (``latency_predictor.json``), so
  no candidate waits for an ONNX export. The candidates the run selects are still
  measured for real at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from search.core.atomic import atomic_write_text
from search.core.jsonio import read_json
from search.core.rundir import PREDICTOR_NAME, PROFILE_DIR_NAME

AUTO_PROFILE_SAMPLES = 40
"""Genotypes timed for a run's own predictor (the latency benchmark's predictors were
within 10 % on every held-out genotype from 75; 40 keeps the setup to minutes)."""
PROFILE_TIME_NAME = "profile_time.json"


def auto_predictor(latency: Any, blocks: int, run_dir: Path, *, samples: int = AUTO_PROFILE_SAMPLES,
                   stream: TextIO | None = None) -> tuple[Any, float]:
    """The run's own latency predictor and the seconds it took (0 once it exists).

    Profiles ``samples`` random genotypes at ``latency``'s target in ``run_dir /
    latency_profile`` and fits :func:`search.evaluation.predictor.fit_predictor`; an
    interrupted profile is started again (its folder is not a complete panel).
    """
    from search.evaluation.panel import PanelSpec, profile
    from search.evaluation.predictor import fit_predictor, load_measurements, load_predictor, save_predictor
    from search.runtime.panel import MEASUREMENTS_NAME, PanelTiming, progress_line

    path = run_dir / PREDICTOR_NAME
    folder = run_dir / PROFILE_DIR_NAME
    if path.exists():
        return load_predictor(path), _recorded_seconds(folder)
    out = sys.stderr if stream is None else stream
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    spec = PanelSpec(latency.scale, samples, latency.image_size, latency.num_classes, blocks, seed=0)
    timing = PanelTiming("onnxruntime", latency.device, latency.threads, latency.warmup,
                         latency.repeats, latency.max_time_s)
    print(f"latency: profiling {samples} genotypes at {latency.scale} on this host for the "
          f"run's predictor (once per run)", file=out, flush=True)
    profile(spec, folder, timing, None,
            lambda done, total, row: print(progress_line(done, total, row), file=out, flush=True))
    predictor = fit_predictor(load_measurements(folder / MEASUREMENTS_NAME))
    seconds = time.perf_counter() - start
    atomic_write_text(folder / PROFILE_TIME_NAME, json.dumps({"seconds": round(seconds, 1)}) + "\n")
    save_predictor(predictor, path)
    report = predictor.summary().get("holdout", {})
    within = report.get("within_10pct")
    print(f"latency: predictor fitted in {seconds:.0f} s"
          + (f", {within:.0%} of held-out genotypes within 10 %" if within is not None else ""),
          file=out, flush=True)
    return predictor, seconds


def _recorded_seconds(folder: Path) -> float:
    try:
        return float(read_json(folder / PROFILE_TIME_NAME).get("seconds", 0.0))
    except Exception:  # noqa: BLE001 - a missing record only under-counts the setup
        return 0.0
