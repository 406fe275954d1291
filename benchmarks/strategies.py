"""RL vs TPE vs random at equal budget, and where the time of one child goes.

Every strategy runs the same number of trials with the same child settings (proxy scale,
epochs, training subset, child seed) and the same latency model, for several strategy
seeds, through the same :func:`search.experiment.loop.run_loop` as ``python -m search.run``. The
data is the CIFAR-10 copy in ``../shared/data/cifar10/cifar10.npz`` when present (digits
otherwise). Output: a table of the best feasible validation accuracy and its latency per
strategy and seed, and a JSON file. Each (strategy, seed) run lives in its own run
directory, so an interrupted benchmark resumes where it stopped when started again.

Before the comparison, one child is evaluated step by step to show where the time goes:
child training + validation, and for the deployment cost: building the deployment-scale
model, counting MACs, ONNX export, ONNX Runtime timing.

    python benchmarks/strategies.py                         # defaults below (~15-20 min)
    python benchmarks/strategies.py --trials 12 --seeds 0 1 2 --latency-budget 150ms  # longer
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from search.core.rundir import LATENCY_CACHE_NAME  # noqa: E402
from search.core.units import parse_latency  # noqa: E402
from search.data.datasets import DataBundle, load_dataset  # noqa: E402
from search.evaluation.latency import LatencyMeter, LatencySettings, time_onnx  # noqa: E402
from search.evaluation.proxy import ChildSettings, evaluate_child  # noqa: E402
from search.evaluation.reward import RewardConfig  # noqa: E402
from search.experiment.loop import Evaluator, run_loop  # noqa: E402
from search.nn.cost import count_macs  # noqa: E402
from search.nn.model import build_model  # noqa: E402
from search.nn.onnxio import export_onnx  # noqa: E402
from search.space.genotype import Genotype  # noqa: E402
from search.space.searchspace import SearchSpace  # noqa: E402
from search.strategies.base import StrategyConfig, create_strategy  # noqa: E402
from search.trials.selection import select_best  # noqa: E402

DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"


def load_data(args: argparse.Namespace) -> DataBundle:
    """CIFAR-10 from the shared copy when present, else digits."""
    path = Path(args.data)
    if path.is_file():
        return load_dataset("cifar10", path, seed=0, download=False, val_size=args.val_size)
    print(f"{path} not found: using digits", file=sys.stderr)
    return load_dataset("digits", None, seed=0, val_size=args.val_size)


def _timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


def profile_child(genotype: Genotype, data: DataBundle, child: ChildSettings,
                  latency: LatencySettings) -> dict[str, float]:
    """Seconds spent in each step of evaluating one candidate (cold, no cache)."""
    result, total_child = _timed(evaluate_child, genotype, data, child)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, t_build = _timed(lambda: build_model(
            genotype, latency.scale, num_classes=latency.num_classes,
            image_size=latency.image_size).eval())
    size = model.scale.image_size
    macs, t_macs = _timed(count_macs, model, size)
    with tempfile.TemporaryDirectory() as tmp:
        path, t_export = _timed(export_onnx, model, Path(tmp) / "m.onnx", size,
                                dynamic_batch=False, batch_size=1)
        timing, t_ort = _timed(time_onnx, path, size, latency.device,
                               latency.warmup, latency.repeats, latency.threads)
    return {"child_train_and_validate_s": round(total_child, 2),
            "child_accuracy": round(result.accuracy, 4),
            "deploy_build_s": round(t_build, 2), "deploy_count_macs_s": round(t_macs, 2),
            "deploy_onnx_export_s": round(t_export, 2),
            "deploy_ort_timing_s": round(t_ort, 2),
            "deploy_latency_ms": round(timing.stats.median_ms, 3),
            "deploy_macs": int(macs), "provider": timing.provider,
            "ort_threads": timing.threads}


def run_one(strategy: str, seed: int, data: DataBundle, evaluator: Evaluator,
            args: argparse.Namespace) -> dict[str, Any]:
    """One search; returns its summary row."""
    run_dir = Path(args.runs) / f"{strategy}-seed{seed}"
    config = StrategyConfig(space=SearchSpace(args.blocks), seed=seed, run_dir=run_dir,
                            rl_batch=args.rl_batch, startup_trials=args.startup_trials,
                            population_size=args.rl_batch)
    loop = run_loop(create_strategy(strategy, config), evaluator, run_dir,
                    max_trials=args.trials, progress=not args.no_progress)
    selection = select_best(loop.records)
    best = selection.record if selection is not None and selection.feasible else None
    ok = [r for r in loop.records if r.status == "ok"]
    return {"strategy": strategy, "seed": seed, "trials": len(loop.records),
            "best_feasible_accuracy": best and round(best.accuracy, 4),
            "best_feasible_latency_ms": best and round(best.latency_ms, 2),
            "best_reward": round(max((r.reward for r in loop.records), default=0.0), 4),
            "feasible_trials": sum(r.feasible for r in loop.records),
            "best_accuracy_any": round(max((r.accuracy for r in ok), default=0.0), 4),
            "search_time_s": round(sum(r.wall_time_s for r in loop.records), 1),
            "run_dir": str(run_dir)}


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, one row per strategy and seed, plus the mean per strategy."""
    lines = ["| strategy | seed | trials | best feasible val acc | its latency ms | feasible "
             "trials | best reward | search min |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['trials']} | "
                     f"{_cell(r['best_feasible_accuracy'], '.4f')} | "
                     f"{_cell(r['best_feasible_latency_ms'], '.1f')} | {r['feasible_trials']} | "
                     f"{r['best_reward']:.4f} | {r['search_time_s'] / 60:.1f} |")
    for name in dict.fromkeys(r["strategy"] for r in rows):
        accs = [r["best_feasible_accuracy"] or 0.0 for r in rows if r["strategy"] == name]
        lines.append(f"| **{name} mean** | | | {statistics.mean(accs):.4f} | | | | |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", nargs="+", default=["rl", "tpe", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--rl-batch", type=int, default=4)
    p.add_argument("--startup-trials", type=int, default=4, help="TPE random start")
    p.add_argument("--data", default=str(DEFAULT_CIFAR), help="CIFAR-10 .npz (else digits)")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--child-scale", default="1@16")
    p.add_argument("--child-epochs", type=int, default=1)
    p.add_argument("--child-train-size", type=int, default=2000)
    p.add_argument("--target-variant", default="cifar")
    p.add_argument("--latency-budget", default="100ms")
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-strategies"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "strategies.json")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_data(args)
    child = ChildSettings(scale=args.child_scale, epochs=args.child_epochs,
                          train_size=args.child_train_size, device="cpu", seed=0)
    latency = LatencySettings(scale=args.target_variant, num_classes=data.num_classes,
                              warmup=3, repeats=args.latency_repeats)
    reward = RewardConfig(parse_latency(args.latency_budget))
    probe = create_strategy("random", StrategyConfig(space=SearchSpace(args.blocks), seed=99))
    probe.resume([])
    sample = probe.propose().genotype
    profile = profile_child(sample, data, child, latency)
    print("one child, step by step (s):", json.dumps(profile))
    meter = LatencyMeter(latency, Path(args.runs) / LATENCY_CACHE_NAME)
    evaluator = Evaluator(partial(evaluate_child, data=data, settings=child), meter, reward)
    rows = [run_one(s, seed, data, evaluator, args) for seed in args.seeds
            for s in args.strategies]
    report = {"benchmark": "strategies", "dataset": data.name,
              "train_images": len(data.train), "val_images": len(data.val),
              "child": dataclasses.asdict(child), "latency": dataclasses.asdict(latency),
              "latency_budget_ms": reward.latency_budget_ms, "trials": args.trials,
              "blocks": args.blocks, "rl_batch": args.rl_batch, "profile": profile,
              "rows": rows, "machine": platform.platform(), "torch_threads":
              torch.get_num_threads(), "wall_time_s": round(time.perf_counter() - started, 1),
              "command": "python benchmarks/strategies.py " + " ".join(argv or sys.argv[1:])}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.json} in {report['wall_time_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
