"""The headline experiment: is the searched cell worth it at equal latency on this CPU?

Three networks are scaled to one batch-1 latency budget on this machine (ONNX Runtime, one
pinned thread, fp32, 32 px) and trained the same way on CIFAR-10, two seeds each:

(a) the cell found by a search with the one-shot evaluator and the latency predictor
    (default: the RL run of the strategy benchmark, ``runs/bench-strategies-oneshot/rl-s0``,
    the default strategy, seed 0; without it, that run's committed genotype,
    ``benchmarks/panels/headline_searched_cell.json``), scaled with automatic N@F
    (``python -m search.scale``);
(b) NASNet-A, scaled the same way;
(c) MobileNetV2, its width multiplier scaled to the same budget (``search.scale --model``).

Steps, each resumable (a finished step is skipped, an interrupted training resumed):

    python -m search.scale SRC --latency-budget B --out WORK/<name>.json     # (a), (b)
    python -m search.scale --model mobilenet_v2 --latency-budget B           # (c)
    python -m search.train WORK/<name>.json --variant auto --no-auxiliary \\
        --dataset cifar10 --epochs E --train-size K --seed S --out WORK/<name>-sS
    python -m export.onnx WORK/<name>-sS [--fp16]                          # fp16 too for seed 0
    python -m serve.bench --table WORK/*-s0 bundled --out WORK/table     # latency, interleaved rounds

Trainings run ``--jobs`` at a time with one thread each; the scaling and the final timing
run alone. Accuracy is on the 10,000 CIFAR-10 test images. Everyone gets the same schedule:
SGD with cosine decay, no auxiliary head, no drop-path, the search's default augmentation.

    python benchmarks/headline.py                 # scale, train, export, time, table
    python benchmarks/headline.py table           # the table from what is there

Writes benchmarks/results/headline.json and prints the Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "headline.json"
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
DEFAULT_SEARCHED = ROOT / "runs" / "bench-strategies-oneshot" / "rl-s0"
COMMITTED_SEARCHED = ROOT / "benchmarks" / "panels" / "headline_searched_cell.json"
"""The genotype.json of the run behind the committed table, so a clone repeats it without the run."""
MODELS = ("searched", "nasnet-a", "mobilenet_v2")
TITLES = {
    "searched": "searched cell (one-shot + predictor, RL)",
    "nasnet-a": "NASNet-A",
    "mobilenet_v2": "MobileNetV2",
}


def _run(cmd: list[str], log: Path, threads: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = log.open("a")
    out.write("$ " + " ".join(cmd) + "\n")
    out.flush()
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _wait(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.wait() != 0:
        sys.exit(f"error: {what} failed (exit {proc.returncode}); see {log}")


def scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each model's automatic scale for the budget (measured here, alone)."""
    log = work / "log.txt"
    scales: dict[str, Any] = {}
    for name in MODELS:
        report = work / f"{name}.scale.json"
        if not report.is_file():
            if name == "mobilenet_v2":
                cmd = ["--model", name]
            else:
                source = str(args.searched) if name == "searched" else name
                cmd = [source, "--out", str(work / f"{name}.json")]
            cmd = [
                sys.executable,
                "-m",
                "search.scale",
                *cmd,
                "--latency-budget",
                args.budget,
                "--json",
                str(report),
            ]
            print(f"scaling {name} to {args.budget} ...", flush=True)
            _wait(_run(cmd, log), f"search.scale {name}", log)
        scales[name] = json.loads(report.read_text())
    return scales


def train_command(
    name: str, seed: int, scales: dict[str, Any], args: argparse.Namespace, work: Path
) -> list[str]:
    out = work / f"{name}-s{seed}"
    common = [
        "--dataset",
        "cifar10",
        "--data-dir",
        str(args.data),
        "--epochs",
        str(args.epochs),
        "--train-size",
        str(args.train_size),
        "--seed",
        str(seed),
        "--no-progress",
        "--json",
        str(out / "train.json"),
    ]
    if (out / "checkpoint.pt").is_file():
        return [sys.executable, "-m", "search.train", "--resume", str(out), *common]
    if name == "mobilenet_v2":
        width = scales[name]["chosen"]["width_mult"]
        return [
            sys.executable,
            "-m",
            "search.train",
            "--model",
            name,
            "--width-mult",
            f"{width:g}",
            *common,
            "--out",
            str(out),
        ]
    return [
        sys.executable,
        "-m",
        "search.train",
        str(work / f"{name}.json"),
        "--variant",
        "auto",
        "--no-auxiliary",
        *common,
        "--out",
        str(out),
    ]


def train(args: argparse.Namespace, work: Path, scales: dict[str, Any]) -> None:
    """Every (model, seed) trained, ``--jobs`` at a time, one thread each; then exported."""
    pending = [
        (n, s) for s in args.seeds for n in MODELS if not (work / f"{n}-s{s}" / "train.json").is_file()
    ]
    running: list[tuple[str, subprocess.Popen, Path, float]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, seed = pending.pop(0)
            (work / f"{name}-s{seed}").mkdir(parents=True, exist_ok=True)
            log = work / f"{name}-s{seed}.log"
            print(f"training {name} seed {seed} ...", flush=True)
            running.append(
                (
                    f"{name}-s{seed}",
                    _run(train_command(name, seed, scales, args, work), log),
                    log,
                    time.perf_counter(),
                )
            )
        time.sleep(5)
        for item in list(running):
            job, proc, log, started = item
            if proc.poll() is not None:
                running.remove(item)
                _wait(proc, f"training {job}", log)
                (work / job / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
                print(
                    f"  {job}: test accuracy {_read(work / job / 'train.json')['test_accuracy']:.4f}",
                    flush=True,
                )
    for name in MODELS:
        for seed in args.seeds:
            job = work / f"{name}-s{seed}"
            if not (job / "model.onnx").is_file():
                fp16 = ["--fp16"] if seed == args.seeds[0] else []  # the model table times both
                _wait(
                    _run([sys.executable, "-m", "export.onnx", str(job), *fp16], work / "log.txt"),
                    f"export.onnx {job.name}",
                    work / "log.txt",
                )


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Batch-1 latency of every seed-0 export, timed together in interleaved rounds (alone)."""
    table = work / "table" / "table.json"
    if not table.is_file():
        models = [str(work / f"{name}-s{args.seeds[0]}") for name in MODELS] + ["bundled"]
        cmd = [
            sys.executable,
            "-m",
            "serve.bench",
            "--table",
            *models,
            "--out",
            str(work / "table"),
            "--threads",
            "1",
            "--rounds",
            str(args.rounds),
        ]
        print("timing the exports ...", flush=True)
        _wait(_run(cmd, work / "log.txt"), "serve.bench --table", work / "log.txt")
    return _read(table)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _search_cost(searched: Path) -> dict[str, Any]:
    """Seconds the search behind (a) took: its supernet's training and the run itself."""
    run = str(searched.relative_to(ROOT)) if searched.is_relative_to(ROOT) else str(searched)
    if searched.is_file():  # a genotype file: what its metadata says of the search
        search = _read(searched).get("metadata", {}).get("search", {})
        config = search.get("config", {})
        return {"run": run, "strategy": config.get("strategy"), "evaluator": config.get("evaluator"),
                "trials": config.get("trials"), "search_s": None,
                "supernet_train_s": search.get("setup_time_s")}
    config = _read(searched / "config.json") if (searched / "config.json").is_file() else {}
    bench = searched / "bench_seconds.txt"
    supernet_s = None
    if (searched / "supernet.pt").is_file():  # the seconds its supernet trained, as it recorded them
        from search.evaluation.oneshot import read_supernet

        supernet_s = round(read_supernet(searched / "supernet.pt")["seconds"], 1)
    trials = (
        sum(1 for line in (searched / "trials.jsonl").read_text().splitlines() if line.strip())
        if (searched / "trials.jsonl").is_file()
        else None
    )
    return {
        "run": run,
        "strategy": config.get("strategy"),
        "evaluator": config.get("evaluator"),
        "trials": trials,
        "search_s": float(bench.read_text()) if bench.is_file() else None,
        "supernet_train_s": supernet_s,
    }


def collect(
    args: argparse.Namespace, work: Path, scales: dict[str, Any], timing: dict[str, Any]
) -> dict[str, Any]:
    rows = []
    by_path = {Path(m["path"]).parent.name: m for m in timing.get("models", [])}
    for name in MODELS:
        runs = [
            _read(work / f"{name}-s{s}" / "train.json")
            for s in args.seeds
            if (work / f"{name}-s{s}" / "train.json").is_file()
        ]
        accuracy = [r["test_accuracy"] for r in runs]
        timed = by_path.get(f"{name}-s{args.seeds[0]}", {})
        fp32 = timed.get("precisions", {}).get("fp32", {})
        chosen = scales[name]["chosen"]
        walls = [
            float((work / f"{name}-s{s}" / "wall_seconds.txt").read_text())
            for s in args.seeds
            if (work / f"{name}-s{s}" / "wall_seconds.txt").is_file()
        ]
        rows.append(
            {
                "model": name,
                "title": TITLES[name],
                "scale": chosen["scale"],
                "scaled_latency_ms": chosen["latency_ms"],
                "p50_ms": fp32.get("p50_ms"),
                "p90_ms": fp32.get("p90_ms"),
                "round_medians_ms": fp32.get("round_medians_ms"),
                "macs": timed.get("macs", chosen["macs"]),
                "params": timed.get("params", chosen["params"]),
                "accuracy": accuracy,
                "accuracy_mean": statistics.mean(accuracy) if accuracy else None,
                "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
                "train_wall_s": walls,
            }
        )
    return {
        "command": "python benchmarks/headline.py",
        "budget": args.budget,
        "seeds": args.seeds,
        "schedule": {
            "dataset": "cifar10",
            "epochs": args.epochs,
            "train_size": args.train_size,
            "test_images": 10000,
            "batch": 64,
            "lr": 0.05,
            "optimizer": "SGD momentum 0.9, cosine",
            "auxiliary": False,
            "threads_per_training": 1,
        },
        "latency": {
            "device": "this CPU, ONNX Runtime, 1 thread, batch 1, fp32, 32 px",
            "rounds": args.rounds,
            "cpu": platform.processor() or platform.machine(),
        },
        "search": _search_cost(args.searched),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"| network | N@F / width | test accuracy (mean of {len(result['seeds'])} seeds) | "
        "seeds | p50 ms | p90 ms | MACs (M) | params (M) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        acc = f"{r['accuracy_mean']:.2%}" if r["accuracy_mean"] is not None else "–"
        if r["accuracy_std"] is not None:
            acc += f" ± {r['accuracy_std']:.2%}"
        seeds = " / ".join(f"{a:.2%}" for a in r["accuracy"]) or "–"
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "–"
        p90 = f"{r['p90_ms']:.3f}" if r["p90_ms"] is not None else "–"
        lines.append(
            f"| {r['title']} | {r['scale']} | {acc} | {seeds} | {p50} | {p90} | {r['macs'] / 1e6:.1f} | "
            f"{r['params'] / 1e6:.3f} |"
        )
    search = result.get("search", {})
    if search.get("search_s") is not None:
        supernet = search.get("supernet_train_s")
        lines.append("")
        lines.append(
            f"The search behind the searched cell: {search.get('strategy')} with the "
            f"{search.get('evaluator')} evaluator, "
            f"{search.get('trials')} candidates and re-ranking in {search['search_s'] / 60:.0f} min of one "
            "core"
            + (f", after a supernet trained in {supernet / 60:.0f} min (shared by every search of the "
               "strategy benchmark)" if supernet else "")
            + "."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("run", "table"), default="run")
    parser.add_argument("--budget", default="1ms", help="batch-1 latency budget on this CPU (1 thread, fp32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time (one thread each)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--searched", type=Path, default=None,
                        help="the search run behind (a), or its genotype.json (default: the strategy "
                             f"benchmark's rl-s0 run when present, else {COMMITTED_SEARCHED.name})")
    parser.add_argument("--data", type=Path, default=DEFAULT_CIFAR)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "headline")
    args = parser.parse_args(argv)
    if args.searched is None:
        args.searched = DEFAULT_SEARCHED if DEFAULT_SEARCHED.is_dir() else COMMITTED_SEARCHED
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        if not args.data.is_file():
            sys.exit(f"error: the headline experiment needs CIFAR-10 at {args.data}")
        if not (args.searched / "genotype.json").is_file() and not args.searched.is_file():
            sys.exit(
                f"error: no search run at {args.searched}: run benchmarks/strategies_oneshot.py or give "
                "--searched"
            )
        scales = scale(args, work)
        train(args, work, scales)
        timing = measure(args, work)
    else:
        scales = {n: _read(work / f"{n}.scale.json") for n in MODELS}
        timing = _read(work / "table" / "table.json") if (work / "table" / "table.json").is_file() else {}
    result = collect(args, work, scales, timing)
    result["table"] = table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(result["table"])
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
