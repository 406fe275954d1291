"""A runs folder for the demo-app tests: a tiny real exported model and a search run.

The model is the serve tests' NASNet-A at 1@48 (16 px), exported with the project's
exporter and carrying real metadata; the run directory holds ``trials.jsonl`` written
with ``search.trials.history`` and the report files written by ``search.experiment.report``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from serve_fixtures import build_tiny_model, export_tiny, make_info

from search.core.rundir import HISTORY_NAME
from search.experiment.report import ReportContext, write_report
from search.nn.cost import count_params
from search.space.genotype import REFERENCE_GENOTYPES
from search.trials.history import TrialRecord, append_record

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
BUDGET_MS = 2.0
MODEL_ACCURACY = 0.734


@dataclass
class RunsFolder:
    """Paths of the generated runs folder."""

    root: Path
    run_dir: Path
    model: Path
    records: list[TrialRecord]


def trial_records(count: int = 12) -> list[TrialRecord]:
    """Deterministic trials: a spread of accuracy and latency, one failed child."""
    names = list(REFERENCE_GENOTYPES)
    records = []
    for i in range(count):
        latency = 0.8 + 0.25 * i + 0.4 * math.sin(i * 1.7)
        accuracy = 0.55 + 0.03 * i - 0.05 * math.cos(i * 2.3)
        failed = i == 4
        feasible = not failed and latency <= BUDGET_MS
        reward = 0.0 if failed else accuracy * (latency / BUDGET_MS) ** (-0.07 if feasible else -1.0)
        records.append(
            TrialRecord(
                trial=i, strategy="rl" if i % 2 else "random",
                genotype=REFERENCE_GENOTYPES[names[i % len(names)]].to_dict(),
                accuracy=0.0 if failed else round(accuracy, 4),
                latency_ms=None if failed else round(latency, 3),
                macs=None if failed else 1_000_000 + 50_000 * i,
                params=None if failed else 20_000 + 1_000 * i,
                reward=round(reward, 4), feasible=feasible,
                status="failed" if failed else "ok",
                error="RuntimeError: out of memory" if failed else None,
                wall_time_s=3.0 + i, train_time_s=2.0 + i, latency_time_s=0.5,
                finished_at=f"2026-11-23T20:{i:02d}:00Z",
            )
        )
    return records


def make_runs_folder(root: Path) -> RunsFolder:
    """``root/exp1`` with ``model.onnx``, ``trials.jsonl`` and the search report."""
    run_dir = root / "exp1"
    run_dir.mkdir(parents=True)
    records = trial_records()
    for record in records:
        append_record(run_dir / HISTORY_NAME, record)
    write_report(run_dir, records, ReportContext(latency_budget_ms=BUDGET_MS, dataset="synthetic"))
    model = build_tiny_model()
    info = make_info(
        class_names=CIFAR_CLASSES,
        accuracy=MODEL_ACCURACY,
        params=count_params(model),
        macs=411_104,  # what export writes (count_macs); skipped here, it takes seconds
    )
    export_tiny(model, run_dir / "model.onnx", info)
    return RunsFolder(root, run_dir, run_dir / "model.onnx", records)
