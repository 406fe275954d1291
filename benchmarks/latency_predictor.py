"""Latency predictor accuracy on this machine, and candidates per hour with measured vs predicted latency.

For each target: a fitting panel and an independent check panel (another seed, timed after it)
are profiled with the search's session settings (one thread, interleaved rounds); a predictor is
fitted on the first and scored on its held-out share and on the whole second panel (within +-5 %,
+-10 %, RMSE). Then the cost of one candidate's latency is timed both ways in one run: export and
timing (``LatencyMeter``) against the predictor (``PredictedMeter``, MAC counting included).

    python benchmarks/latency_predictor.py                       # 2@192 at 16 px and cifar at 32 px
    python benchmarks/latency_predictor.py --targets 2@192:16 --samples 40 --check-samples 20

Resumable: a panel whose measurements.json exists under --work is reused. Prints a table and
writes benchmarks/results/latency_predictor.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from search.evaluation.latency import LatencyMeter, LatencySettings, PredictedMeter  # noqa: E402
from search.evaluation.panel import PanelSpec, profile  # noqa: E402
from search.evaluation.predictor import (  # noqa: E402
    accuracy_report,
    fit_predictor,
    load_measurements,
    save_predictor,
)
from search.runtime.panel import MEASUREMENTS_NAME, PanelTiming  # noqa: E402
from search.space.genotype import Genotype  # noqa: E402


def measured_panel(folder: Path, spec: PanelSpec, timing: PanelTiming) -> Path:
    """``folder/measurements.json``, profiling the panel first unless it is already there."""
    path = folder / MEASUREMENTS_NAME
    if path.is_file():
        print(f"  reusing {path}", flush=True)
        return path
    started = time.perf_counter()
    profile(
        spec,
        folder,
        timing,
        lambda done, total, entry: print(f"  export {done}/{total}", end="\r", flush=True),
        lambda done, total, row: print(
            f"  timed {done}/{total}: {row['median_ms']:.3f} ms   ", end="\r", flush=True
        ),
    )
    print(
        f"  profiled {spec.samples} models in {time.perf_counter() - started:.0f} s into {folder}", flush=True
    )
    return path


def cost_per_candidate(
    variant: str, size: int, predictor: Any, genotypes: list[Genotype], threads: int
) -> dict[str, float]:
    """Seconds per candidate: export + timing against prediction (+ MAC counting), same genotypes."""
    settings = LatencySettings(scale=variant, image_size=size, num_classes=10, threads=threads)
    real, predicted = LatencyMeter(settings), PredictedMeter(predictor, settings)
    t0 = time.perf_counter()
    for genotype in genotypes:
        real.measure(genotype)
    t1 = time.perf_counter()
    for genotype in genotypes:
        predicted(genotype)
    t2 = time.perf_counter()
    for genotype in genotypes:
        predictor.predict(genotype)
    t3 = time.perf_counter()
    n = len(genotypes)
    return {
        "measured_s": (t1 - t0) / n,
        "predicted_s": (t2 - t1) / n,
        "predict_only_ms": 1000 * (t3 - t2) / n,
        "speedup": (t1 - t0) / max(t2 - t1, 1e-9),
    }


def run_target(variant: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work) / f"{variant.replace('@', 'at')}-{size}px"
    timing = PanelTiming(threads=args.threads, rounds=args.rounds)
    print(
        f"{variant} at {size} px: fitting panel ({args.samples}) and check panel ({args.check_samples})",
        flush=True,
    )
    fit_path = measured_panel(work / "fit", PanelSpec(variant, args.samples, size, seed=0), timing)
    check_path = measured_panel(work / "check", PanelSpec(variant, args.check_samples, size, seed=1), timing)
    fit_set, check_set = load_measurements(fit_path), load_measurements(check_path)
    predictor = fit_predictor(fit_set, seed=0)
    save_predictor(predictor, work / "predictor.json")
    check = accuracy_report(
        np.array([predictor.predict(g) for g in check_set.genotypes]), check_set.latency_ms
    )
    splits = [fit_predictor(fit_set, seed=s).candidates for s in range(5)]
    repeat = {
        kind: {
            key: float(np.mean([s[kind][key] for s in splits]))
            for key in ("within_5pct", "within_10pct", "rmse_ms")
        }
        for kind in splits[0]
    }
    cost = cost_per_candidate(
        variant, size, predictor, check_set.genotypes[: args.cost_samples], args.threads
    )
    return {
        "target": variant,
        "image_size": size,
        "device": predictor.target.device,
        "model": predictor.kind,
        "fit_samples": len(fit_set.genotypes),
        "holdout": predictor.holdout,
        "holdout_by_model_5_splits": repeat,
        "check_panel": check,
        "latency_range_ms": [float(fit_set.latency_ms.min()), float(fit_set.latency_ms.max())],
        "cost_per_candidate": cost,
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| target | model | held-out within 5 % / 10 % | check panel within 5 % / 10 % | check RMSE ms | "
        "latency range ms | s per candidate measured / predicted |"
    )
    rows = [head, "| " + " | ".join("---" for _ in range(7)) + " |"]
    for r in results:
        h, c, cost = r["holdout"], r["check_panel"], r["cost_per_candidate"]
        lo, hi = r["latency_range_ms"]
        rows.append(
            f"| {r['target']} @ {r['image_size']} px | {r['model']} | {h['within_5pct']:.0%} / "
            f"{h['within_10pct']:.0%} | {c['within_5pct']:.0%} / {c['within_10pct']:.0%} | "
            f"{c['rmse_ms']:.3f} | {lo:.2f}-{hi:.2f} | {cost['measured_s']:.2f} / "
            f"{cost['predicted_s']:.2f} ({cost['speedup']:.0f}x) |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default="2@192:16,cifar:32", help="VARIANT:PX, comma-separated")
    p.add_argument("--samples", type=int, default=100, help="models in each fitting panel")
    p.add_argument("--check-samples", type=int, default=40, help="models in each check panel")
    p.add_argument("--cost-samples", type=int, default=5, help="candidates timed both ways for the cost")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per panel")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--work", default=str(ROOT / "runs" / "bench-latency"), help="panels (reused when present)"
    )
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latency_predictor.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = []
    for item in args.targets.split(","):
        variant, size = item.split(":")
        results.append(run_target(variant, int(size), args))
    print(table(results))
    report = {
        "command": "python benchmarks/latency_predictor.py " + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "work")},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
