"""Does the strategy matter? RL, TPE, random and NSGA-II with the one-shot evaluator on CIFAR-10.

Every run scores candidates with one shared supernet (``search.run --supernet``; default:
the fidelity benchmark's ``runs/fidelity-oneshot/seed0/supernet.pt``, trained on CIFAR-10 at
16 px) and one latency predictor of the deployment target (profiled once on this host, in
--work), so the strategies differ only in what they propose:

    python -m search.run --evaluator oneshot --supernet S --latency-predictor P --dataset cifar10
        --target-variant 2@192 --latency-budget B --trials N --rerank 3 --strategy X --seed s

Each run's winner (after re-ranking) is then trained at the fidelity benchmark's reference
setting (1@288, 32 px, 6,000 images, 3 epochs, scored on 5,000 test images; seed 0), cached
by genotype key, so equal winners are trained once. The table: mean +- std over seeds of the
winners' reference accuracy per strategy, the search's own scores, the winners' predicted
latency, and seconds per run; then one line per run, Kendall tau of the winners' search and
re-ranked scores with their reference accuracy, and each strategy against random search
(seed pairs won, exact one-sided Mann-Whitney p).

    python benchmarks/strategies_oneshot.py                          # 4 strategies x 3 seeds x 300
    python benchmarks/strategies_oneshot.py --strategies rl random --seeds 0 --trials 50   # a smoke
    python benchmarks/strategies_oneshot.py table

Resumable: a finished run is skipped, an interrupted one resumed (``search.run --resume``);
trained winners are kept in benchmarks/results/strategies_oneshot_truth.jsonl. Writes
benchmarks/results/strategies_oneshot.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks.logged import run_logged  # noqa: E402
from search.core.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TRUTH = RESULTS / "strategies_oneshot_truth.jsonl"
TABLE = RESULTS / "strategies_oneshot.json"
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
DEFAULT_SUPERNET = ROOT / "runs" / "fidelity-oneshot" / "seed0" / "supernet.pt"
STRATEGIES = ("rl", "tpe", "random", "nsga2")
TARGET, TARGET_PX = "2@192", 32


def predictor(work: Path) -> Path:
    """The target's latency predictor, profiled on this host once (40 genotypes)."""
    out = work / "latency_predictor.json"
    if not out.is_file():
        profile = work / "latency_profile"
        if not (profile / "measurements.json").is_file():
            run_logged([sys.executable, "-m", "search.latency", "profile", "--target-variant", TARGET,
                        "--image-size", str(TARGET_PX), "--samples", "40", "--out", str(profile)],
                       work / "log.txt")
        run_logged([sys.executable, "-m", "search.latency", "fit", str(profile / "measurements.json"),
                    "--out", str(out)], work / "log.txt")
    return out


def median_budget(work: Path) -> str:
    """The median measured latency of the profiled genotypes: about half the space is feasible."""
    results = json.loads((work / "latency_profile" / "measurements.json").read_text())["results"]
    return f"{statistics.median(r['median_ms'] for r in results):.3f}ms"


def search(strategy: str, seed: int, args: argparse.Namespace, latency: Path) -> Path:
    """One search run (resumed if it was interrupted); returns its directory."""
    run = Path(args.work) / f"{strategy}-s{seed}"
    if (run / "genotype.json").is_file():
        return run
    if (run / "config.json").is_file():
        cmd = [sys.executable, "-m", "search.run", "--resume", str(run), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "search.run", "--evaluator", "oneshot", "--supernet", str(args.supernet),
               "--latency-predictor", str(latency), "--dataset", "cifar10", "--data-dir", str(args.data),
               "--target-variant", TARGET, "--image-size", str(TARGET_PX), "--latency-budget", args.budget,
               "--trials", str(args.trials), "--rerank", "3", "--strategy", strategy, "--seed", str(seed),
               "--out", str(run), "--no-progress"]
    started = time.perf_counter()
    run_logged(cmd, Path(args.work) / "log.txt")
    (run / "bench_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return run


def reference_accuracy(run: Path, data: Any) -> dict[str, Any]:
    """The run's winner trained at the fidelity benchmark's reference setting (cached by key)."""
    import evaluator_fidelity as ef

    from search.evaluation.proxy import ChildSettings, evaluate_child
    from search.space.genotype import load_genotype

    genotype = load_genotype(run / "genotype.json")
    key = genotype.key()
    for row in ef.read_jsonl(TRUTH):
        if row["genotype"] == key and row["settings"] == ef.REFERENCE:
            return row
    ref = ef.REFERENCE
    settings = ChildSettings(scale=ref["scale"], image_size=ref["image_size"], epochs=ref["epochs"],
                             train_size=ref["train_size"], batch_size=ref["batch_size"], lr=ref["lr"],
                             device="cpu", seed=0, cpu_threads=1)
    result = evaluate_child(genotype, data(), settings)
    row = {"genotype": key, "accuracy": round(result.accuracy, 4), "status": result.status,
           "settings": ref, "seed": 0, "train_time_s": result.train_time_s}
    ef.append_jsonl(TRUTH, row)
    return row


def summarise(run: Path, truth: dict[str, Any] | None) -> dict[str, Any]:
    from search.space.genotype import Genotype

    meta = json.loads((run / "genotype.json").read_text())["metadata"]
    trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines() if line.strip()]
    winner = next((t for t in trials if t.get("trial") == meta.get("trial")), {})
    seconds = run / "bench_seconds.txt"
    rewards = [t["reward"] for t in trials if t.get("reward") is not None]
    return {"run": run.name, "trial": meta.get("trial"), "search_accuracy": winner.get("accuracy"),
            # does the strategy learn? mean search reward of its first and last 100 candidates
            "reward_first100": round(statistics.mean(rewards[:100]), 4) if rewards else None,
            "reward_last100": round(statistics.mean(rewards[-100:]), 4) if rewards else None,
            "rerank_accuracy": winner.get("rerank_accuracy"), "latency_ms": meta.get("latency_ms"),
            "trials": len(trials), "distinct": len({Genotype.from_dict(t["genotype"]).key() for t in trials}),
            "reference_accuracy": truth["accuracy"] if truth else None,
            "seconds": float(seconds.read_text()) if seconds.is_file() else None}


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| strategy | runs | winner's reference accuracy (mean +- std) | search score | re-ranked | "
             "winner latency ms | reward, first / last 100 candidates | s / run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for strategy, runs in rows.items():
        ref = [r["reference_accuracy"] for r in runs if r["reference_accuracy"] is not None]

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] for r in runs if r.get(key) is not None]
            return f"{statistics.mean(values):.3f}" if values else "–"

        spread = f"{statistics.mean(ref):.4f} +- {statistics.stdev(ref):.4f}" if len(ref) > 1 else (
            f"{ref[0]:.4f}" if ref else "–")
        lines.append(f"| {strategy} | {len(runs)} | {spread} | {mean('search_accuracy')} | "
                     f"{mean('rerank_accuracy')} | {mean('latency_ms')} | "
                     f"{mean('reward_first100')} / {mean('reward_last100')} | {mean('seconds')} |")
    return "\n".join(lines)


def against_random(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each strategy's winners against random search's, at the reference setting.

    Seed pairs it wins, and the exact one-sided Mann-Whitney p-value (scipy): with 3 seeds
    each the smallest possible p is 0.05, so only a clean sweep can be called significant.
    """
    from scipy.stats import mannwhitneyu

    base = [r["reference_accuracy"] for r in rows.get("random", []) if r["reference_accuracy"] is not None]
    out = []
    for strategy, runs in rows.items():
        ours = [r["reference_accuracy"] for r in runs if r["reference_accuracy"] is not None]
        if strategy == "random" or not ours or not base:
            continue
        wins = sum((a > b) + 0.5 * (a == b) for a in ours for b in base)
        p = mannwhitneyu(ours, base, alternative="greater", method="exact").pvalue
        out.append({"strategy": strategy, "pairs_won": wins, "pairs": len(ours) * len(base),
                    "difference": round(statistics.mean(ours) - statistics.mean(base), 4),
                    "p_one_sided": round(float(p), 3)})
    return out


def winner_taus(rows: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Across all winners: does the search's score, or re-ranking's, predict the reference accuracy?"""
    from scipy.stats import kendalltau

    runs = [r for group in rows.values() for r in group if r["reference_accuracy"] is not None]
    ref = [r["reference_accuracy"] for r in runs]
    out: dict[str, float | None] = {}
    for key in ("search_accuracy", "rerank_accuracy"):
        values = [r[key] for r in runs]
        ok = len(runs) > 2 and None not in values
        out[key] = round(float(kendalltau(values, ref).statistic), 3) if ok else None
    return out


def runs_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """One line per run: the seeds behind the means."""
    lines = ["| run | winner trial | search score | re-ranked | reference accuracy | latency ms | "
             "reward, first / last 100 | distinct | s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for runs in rows.values():
        for r in runs:
            lines.append(f"| {r['run']} | {r['trial']} | {fmt(r['search_accuracy'], '.4f')} | "
                         f"{fmt(r['rerank_accuracy'], '.4f')} | {fmt(r['reference_accuracy'], '.4f')} | "
                         f"{fmt(r['latency_ms'], '.3f')} | {fmt(r['reward_first100'], '.4f')} / "
                         f"{fmt(r['reward_last100'], '.4f')} | {r['distinct']} | "
                         f"{fmt(r['seconds'], '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("run", "table"), default="run")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--budget", default="auto",
                        help=f"latency budget at {TARGET}, {TARGET_PX} px (auto: the median profiled "
                             "latency)")
    parser.add_argument("--supernet", type=Path, default=DEFAULT_SUPERNET)
    parser.add_argument("--data", type=Path, default=DEFAULT_CIFAR)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-strategies-oneshot"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in args.strategies}
    if args.command == "run":
        if not args.data.is_file():
            sys.exit(f"error: the benchmark needs CIFAR-10 at {args.data}")
        if not args.supernet.is_file():
            sys.exit(f"error: no supernet at {args.supernet}: run `python benchmarks/evaluator_fidelity.py "
                     "evaluate oneshot` first, or give --supernet")
        import evaluator_fidelity as ef

        cache: list[Any] = []

        def data() -> Any:  # loaded once, only when a winner needs training
            if not cache:
                cache.append(ef.reference_data(args.data))
            return cache[0]

        latency = predictor(work)
        if args.budget == "auto":
            args.budget = median_budget(work)
            print(f"latency budget {args.budget} (median of the profile)", flush=True)
        for seed in args.seeds:
            for strategy in args.strategies:
                run = search(strategy, seed, args, latency)
                truth = reference_accuracy(run, data)
                rows[strategy].append(summarise(run, truth))
                print(f"{strategy} seed {seed}: winner trial {rows[strategy][-1]['trial']}, reference "
                      f"accuracy {truth['accuracy']:.4f}", flush=True)
    else:
        import evaluator_fidelity as ef

        from search.space.genotype import load_genotype

        if args.budget == "auto" and (work / "latency_profile" / "measurements.json").is_file():
            args.budget = median_budget(work)

        truths = {r["genotype"]: r for r in ef.read_jsonl(TRUTH)}
        for strategy in args.strategies:
            for seed in args.seeds:
                run = work / f"{strategy}-s{seed}"
                if (run / "genotype.json").is_file():
                    key = load_genotype(run / "genotype.json").key()
                    rows[strategy].append(summarise(run, truths.get(key)))
    text = table(rows)
    versus = against_random(rows)
    print(text + "\n\n" + runs_table(rows))
    taus = winner_taus(rows)
    print(f"Kendall tau with the winners' reference accuracy: search score {taus['search_accuracy']}, "
          f"re-ranked score {taus['rerank_accuracy']}")
    for v in versus:
        print(f"{v['strategy']} vs random: {v['difference'] * 100:+.1f} points, wins {v['pairs_won']:g} of "
              f"{v['pairs']} seed pairs, Mann-Whitney one-sided p = {v['p_one_sided']:.2f}")
    atomic_write_text(TABLE, json.dumps({"command": "python benchmarks/strategies_oneshot.py",
                                         "target": TARGET, "image_size": TARGET_PX, "budget": args.budget,
                                         "trials": args.trials, "supernet": str(args.supernet),
                                         "rows": rows, "against_random": versus, "winner_tau": taus,
                                         "cpu": platform.processor() or platform.machine()},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
