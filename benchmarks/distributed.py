"""Candidates per hour with 1 and 2 local Ray workers (``search.run --workers N``).

Runs the same small search twice on digits (random strategy, one seed, so both runs
evaluate the same candidates): ``--workers 1`` and ``--workers 2``, each with its own local
Ray instance, latency measured by the search process (no node has ``latency_target``).
Reports candidates per hour of search time (the loop, without data loading and Ray
start-up), the ratio, the measured per-child times, and a worked estimate for 8 and 64
workers: training scales with the workers, while the search process measures every
latency and records every trial one after the other, so it becomes the limit once
``workers x driver time per child`` exceeds a child's training time.

    python benchmarks/distributed.py               # ~5 min on 2 cores
    python benchmarks/distributed.py --trials 12

Prints a table and writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from search.trials.history import read_history  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"
SEARCH = ["--latency-budget", "5ms", "--dataset", "digits", "--strategy", "random", "--seed", "0",
          "--child-scale", "1@96", "--target-variant", "1@96", "--blocks", "5", "--rerank", "0",
          "--no-progress"]


def search(workers: int, trials: int, out: Path) -> dict[str, Any]:
    """One search with ``workers`` local Ray workers; its times from the run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "search.run", *SEARCH, "--trials", str(trials), "--workers", str(workers),
           "--out", str(out), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: the search with --workers {workers} failed (exit {proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    records = read_history(out / "trials.jsonl")
    loop_s = sum(r.wall_time_s for r in records)  # the parallel loop's clock, record to record
    fresh = [r for r in records if r.duplicate_of is None]
    return {
        "workers": workers, "trials": len(records), "loop_s": round(loop_s, 1),
        "process_s": round(total, 1), "search_s": json.loads(proc.stdout)["seconds"],
        "candidates_per_hour": round(len(records) / loop_s * 3600, 1),
        "train_s_per_child": round(statistics.mean(r.train_time_s for r in fresh), 2),
        "latency_s_per_child": round(statistics.mean(r.latency_time_s for r in fresh), 2),
    }


def estimate(train_s: float, driver_s: float, workers: int) -> dict[str, Any]:
    """Candidates per hour with ``workers`` workers: training in parallel, the search process's
    share (latency measured here, recording, proposing) one child after another."""
    training = workers / train_s * 3600
    driver = 3600 / driver_s
    return {"workers": workers, "candidates_per_hour": round(min(training, driver)),
            "limit": "training (workers)" if training < driver else "search process (latency, records)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8, help="candidates per search (default: 8)")
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="nasdeploy-distributed-") as tmp:
        for workers in (1, 2):
            runs.append(search(workers, args.trials, Path(tmp) / f"w{workers}"))
    one, two = runs
    train_s = statistics.mean(r["train_s_per_child"] for r in runs)
    # the search process's time per child with one worker is the loop time not spent training
    driver_s = max(one["loop_s"] / one["trials"] - one["train_s_per_child"], one["latency_s_per_child"])
    result = {
        "host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                 "python": platform.python_version()},
        "settings": {"search": SEARCH, "trials": args.trials},
        "runs": runs, "ratio": round(two["candidates_per_hour"] / one["candidates_per_hour"], 2),
        "per_child": {"train_s": round(train_s, 2), "search_process_s": round(driver_s, 2)},
        "estimate": [estimate(train_s, driver_s, n) for n in (8, 64)],
        "break_even_workers": round(train_s / driver_s, 1),
    }
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"{'workers':>8} {'trials':>7} {'loop s':>8} {'cand/h':>8} {'train s/child':>14} "
          f"{'latency s/child':>16}")
    for r in runs:
        print(f"{r['workers']:>8} {r['trials']:>7} {r['loop_s']:>8.1f} {r['candidates_per_hour']:>8.1f} "
              f"{r['train_s_per_child']:>14.2f} {r['latency_s_per_child']:>16.2f}")
    print(f"ratio 2 workers / 1 worker: {result['ratio']:.2f}x")
    print(f"per child: training {train_s:.2f} s on a worker, {driver_s:.2f} s in the search process "
          f"(latency, record); the search process limits beyond ~{result['break_even_workers']:.0f} workers")
    for e in result["estimate"]:
        print(f"estimate {e['workers']:>2} workers: {e['candidates_per_hour']} candidates/h, "
              f"limit: {e['limit']}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
