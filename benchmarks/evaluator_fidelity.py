"""Does an evaluator rank architectures? Kendall tau against trained ground truth.

A fixed, committed panel (``benchmarks/panels/fidelity_panel.json``) of genotypes in the
5-block search space: NASNet-A's blocks, seeded uniform samples and deliberately weak
cells (pooling only, identity-heavy, no separable convolutions). Three steps, each
resumable (results are appended line by line and finished work is skipped on restart):

    python benchmarks/evaluator_fidelity.py panel          # (re)write the panel (committed)
    python benchmarks/evaluator_fidelity.py ground-truth   # hours: every panel genotype
                                                           # trained at the reference setting
    python benchmarks/evaluator_fidelity.py evaluate       # every evaluator, 2 seeds, table

Ground truth: each genotype trained standalone on CIFAR-10 (``../shared/data/cifar10/
cifar10.npz``) at :data:`REFERENCE` (wider, more images, more epochs and a larger input
than any search evaluator), scored on 5,000 images of the CIFAR-10 *test* set, for two
seeds, averaged. ``ground-truth --shard i/n`` splits the work between processes (one
core each). Results: ``benchmarks/results/fidelity_ground_truth.jsonl`` (one line per
genotype and seed, with its settings), ``fidelity_scores.jsonl`` (one line per evaluator,
genotype and seed) and ``evaluator_fidelity.json`` (the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from search.space.genotype import NASNET_A, Block, Cell, Genotype  # noqa: E402
from search.space.opnames import OP_NAMES  # noqa: E402
from search.space.searchspace import SearchSpace  # noqa: E402

PANEL = ROOT / "benchmarks" / "panels" / "fidelity_panel.json"
RESULTS = ROOT / "benchmarks" / "results"
GROUND_TRUTH = RESULTS / "fidelity_ground_truth.jsonl"
SCORES = RESULTS / "fidelity_scores.jsonl"
TABLE = RESULTS / "evaluator_fidelity.json"
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"

REFERENCE: dict[str, Any] = {
    "scale": "1@288", "image_size": 32, "epochs": 3, "train_size": 6000, "batch_size": 64,
    "lr": 0.08, "test_images": 5000, "seeds": [0, 1],
}
"""The ground-truth setting: 12 channels per op at 32 px, 6,000 images, 3 epochs."""

POOLS = ("avg_pool_3x3", "max_pool_3x3", "max_pool_5x5", "max_pool_7x7")
NO_SEP = tuple(op for op in OP_NAMES if not op.startswith("sep_conv"))


# ---------------------------------------------------------------------------- panel
def _random_cell(rng: np.random.Generator, ops: tuple[str, ...], blocks: int = 5,
                 identity_share: float = 0.0) -> Cell:
    out = []
    for b in range(blocks):
        inputs = tuple(int(rng.integers(b + 2)) for _ in range(2))
        chosen = tuple("identity" if rng.random() < identity_share else str(rng.choice(ops))
                       for _ in range(2))
        combine = "add" if rng.random() < 0.75 else "concat"
        out.append(Block(inputs, chosen, combine))  # type: ignore[arg-type]
    return Cell(tuple(out))


def build_panel() -> list[dict[str, Any]]:
    """The panel: NASNet-A's blocks, 12 uniform samples, 9 hand-made cells (22 in all)."""
    rng = np.random.default_rng(2026)
    space = SearchSpace(5)
    panel: list[dict[str, Any]] = [{
        "name": "nasnet-a-blocks", "kind": "reference",
        "note": "NASNet-A's blocks with the space's concat rule (unused states)",
        "genotype": Genotype(Cell(NASNET_A.normal.blocks), Cell(NASNET_A.reduce.blocks))}]
    decisions = space.decisions()
    for i in range(12):
        genotype = space.decode([int(rng.integers(d.size)) for d in decisions])
        panel.append({"name": f"random-{i:02d}", "kind": "random", "genotype": genotype})
    hand = [
        ("pool-only-a", "weak", POOLS, 0.0), ("pool-only-b", "weak", POOLS, 0.0),
        ("identity-heavy-a", "weak", ("conv_1x1", "avg_pool_3x3"), 0.8),
        ("identity-heavy-b", "weak", ("max_pool_3x3", "conv_1x1"), 0.8),
        ("no-sep-a", "no-sep", NO_SEP, 0.0), ("no-sep-b", "no-sep", NO_SEP, 0.0),
        ("sep-only", "strong", ("sep_conv_3x3", "sep_conv_5x5"), 0.0),
        ("conv3x3-heavy", "strong", ("conv_3x3", "sep_conv_3x3"), 0.0),
        ("dil-conv-heavy", "strong", ("dil_conv_3x3", "conv_1x3_3x1"), 0.0),
    ]
    for name, kind, ops, identity in hand:
        genotype = Genotype(_random_cell(rng, ops, identity_share=identity),
                            _random_cell(rng, ops, identity_share=identity))
        panel.append({"name": name, "kind": kind, "genotype": genotype})
    keys = [p["genotype"].key() for p in panel]
    assert len(set(keys)) == len(keys), "panel genotypes must be distinct networks"
    for entry in panel:
        entry["genotype"] = entry["genotype"].canonical()
    return panel


def write_panel(path: Path = PANEL) -> None:
    entries = [{**{k: v for k, v in p.items() if k != "genotype"},
                "genotype": p["genotype"].to_dict()} for p in build_panel()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": "nasdeploy-fidelity-panel", "version": 1,
                                        "genotypes": entries}, indent=1) + "\n")
    print(f"wrote {len(entries)} genotypes to {path}")


def load_panel(path: Path = PANEL) -> list[tuple[str, str, Genotype]]:
    data = json.loads(path.read_text())
    return [(e["name"], e["kind"], Genotype.from_dict(e["genotype"])) for e in data["genotypes"]]


# ---------------------------------------------------------------------- jsonl state
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of ``path`` (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One line, one ``write`` on an O_APPEND descriptor (shards may share the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------- ground truth
def reference_data(path: Path) -> Any:
    """CIFAR-10 train split (45k, augmented) with 5,000 test images as the scored split."""
    import torch

    from search.data.datasets import load_dataset

    bundle = load_dataset("cifar10", path, seed=0, download=False,
                          image_size=REFERENCE["image_size"])
    generator = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(bundle.test), generator=generator)[:REFERENCE["test_images"]]
    return dataclasses.replace(bundle, val=bundle.test.subset(torch.sort(keep).values))


def ground_truth(args: argparse.Namespace) -> None:
    from search.evaluation.proxy import ChildSettings, evaluate_child

    data_path = Path(args.data)
    if not data_path.is_file():
        sys.exit(f"error: ground truth needs CIFAR-10 at {data_path} (see SOURCE.md there)")
    index, count = (int(v) for v in args.shard.split("/"))
    panel = load_panel()
    done = {(r["name"], r["seed"]) for r in read_jsonl(GROUND_TRUTH)
            if r.get("settings") == REFERENCE}
    every = [(name, seed, g) for seed in REFERENCE["seeds"] for name, _, g in panel]
    # a shard's share is fixed by position in the whole list, so shards started at different
    # times never take the same work
    todo = [item for i, item in enumerate(every) if i % count == index and item[:2] not in done]
    print(f"ground truth: {len(done)} done, {len(todo)} for shard {index}/{count}", flush=True)
    if not todo:
        return
    data = reference_data(data_path)
    for i, (name, seed, genotype) in enumerate(todo, 1):
        settings = ChildSettings(scale=REFERENCE["scale"], image_size=REFERENCE["image_size"],
                                 epochs=REFERENCE["epochs"], train_size=REFERENCE["train_size"],
                                 batch_size=REFERENCE["batch_size"], lr=REFERENCE["lr"],
                                 device="cpu", seed=seed, cpu_threads=1)
        result = evaluate_child(genotype, data, settings)
        row = {"name": name, "seed": seed, "genotype": genotype.key(),
               "accuracy": round(result.accuracy, 4), "status": result.status,
               "error": result.error, "train_time_s": result.train_time_s,
               "params": result.params, "settings": REFERENCE,
               "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_jsonl(GROUND_TRUTH, row)
        print(f"[{i}/{len(todo)}] {name} seed {seed}: {result.accuracy:.4f} "
              f"({result.status}, {result.train_time_s:.0f} s)", flush=True)


def ground_truth_seeds() -> dict[str, dict[int, float]]:
    """Ground-truth accuracy per panel genotype and seed (what has been trained so far)."""
    by_name: dict[str, dict[int, float]] = {}
    for r in read_jsonl(GROUND_TRUTH):
        if r.get("settings") == REFERENCE:
            by_name.setdefault(r["name"], {})[r["seed"]] = r["accuracy"]
    return by_name


def ground_truth_table(min_seeds: int = len(REFERENCE["seeds"])) -> dict[str, float]:
    """Mean ground-truth accuracy of the genotypes trained with at least ``min_seeds`` seeds."""
    return {name: statistics.mean(seeds.values()) for name, seeds in ground_truth_seeds().items()
            if len(seeds) >= min_seeds}


# ------------------------------------------------------------------- evaluators
PROXY_OLD = {"scale": "1@48", "image_size": 32, "epochs": 1, "train_size": 5000}
"""The default before this benchmark: ``1@32`` built this 2-channel network (now 1@48)."""

EVALUATORS: dict[str, dict[str, Any]] = {
    # the search's CIFAR default (search.experiment.session.CHILD_DEFAULTS)
    "proxy": {"kind": "proxy", "scale": "1@192", "image_size": 32, "epochs": 1,
              "train_size": 2500},
    # the default until this benchmark showed 16 px ranks worse at any image count
    "proxy-16px": {"kind": "proxy", "scale": "1@192", "image_size": 16, "epochs": 1,
                   "train_size": 5000},
    "proxy-16px-2500": {"kind": "proxy", "scale": "1@192", "image_size": 16, "epochs": 1,
                        "train_size": 2500},
    "proxy-16px-2ep": {"kind": "proxy", "scale": "1@192", "image_size": 16, "epochs": 2,
                       "train_size": 5000},
    "proxy-old": {"kind": "proxy", **PROXY_OLD},
    "oneshot": {"kind": "oneshot", "image_size": 16},
    # the same supernet trained and scored at the full 32 px (4x the cost per step)
    "oneshot-32px": {"kind": "oneshot", "image_size": 32},
}
"""Every evaluator the table reports, with its settings (seeds 0 and 1 each)."""


def search_data(path: Path, image_size: int = 32) -> Any:
    """What ``search.run --dataset cifar10`` scores on: the validation split of the train set."""
    from search.data.datasets import load_dataset

    return load_dataset("cifar10", path, seed=0, download=False, image_size=image_size)


def proxy_scorer(spec: dict[str, Any], seed: int) -> Any:
    from search.evaluation.proxy import ChildSettings

    return ChildSettings(scale=spec["scale"], image_size=spec["image_size"],
                         epochs=spec["epochs"], train_size=spec["train_size"], device="cpu",
                         seed=seed, cpu_threads=1)


def oneshot_evaluator(data: Any, spec: dict[str, Any], seed: int) -> tuple[Any, float]:
    """A trained supernet for ``seed`` (resumed from its checkpoint) and its training seconds."""
    from search.evaluation.oneshot import OneShotEvaluator, supernet_settings

    settings = supernet_settings("cifar10", seed=seed, device="cpu", image_size=spec["image_size"])
    default = spec["image_size"] == supernet_settings("cifar10").image_size
    folder = "fidelity-oneshot" if default else f"fidelity-oneshot-{spec['image_size']}px"
    checkpoint = ROOT / "runs" / folder / f"seed{seed}" / "supernet.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    evaluator = OneShotEvaluator(data, settings, checkpoint, blocks=5)
    evaluator.prepare(progress=True)  # resumes a checkpoint cut short by a kill
    return evaluator, evaluator.seconds_trained


def row_settings(name: str) -> dict[str, Any]:
    """What a score row must record to count for ``name``: its spec and, for a supernet, the
    training settings (seed aside) and checkpoint version, so a changed supernet is re-scored."""
    spec = dict(EVALUATORS[name])
    if spec["kind"] == "oneshot":
        from search.evaluation.oneshot import SUPERNET_VERSION, supernet_settings

        settings = supernet_settings("cifar10", image_size=spec["image_size"])
        training = settings.training()
        training.pop("seed")
        spec.update(supernet=training, supernet_version=SUPERNET_VERSION,
                    scoring={"val_size": settings.val_size, "bn_batches": settings.bn_batches,
                             "bn_batch_size": settings.bn_batch_size})
    return spec


def evaluate(args: argparse.Namespace) -> None:
    from search.evaluation.proxy import evaluate_child

    data_path = Path(args.data)
    if not data_path.is_file():
        sys.exit(f"error: the benchmark needs CIFAR-10 at {data_path}")
    panel = load_panel()
    names = args.evaluators or list(EVALUATORS)
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        sys.exit(f"error: unknown evaluator {unknown[0]!r}; choose from {', '.join(EVALUATORS)}")
    data = search_data(data_path)
    for name in names:
        spec = row_settings(name)
        for seed in (0, 1):
            done = {r["name"] for r in read_jsonl(SCORES)
                    if r["evaluator"] == name and r["seed"] == seed and r["settings"] == spec}
            todo = [(n, g) for n, _, g in panel if n not in done]
            if not todo:
                continue
            extra: dict[str, Any] = {}
            if spec["kind"] == "oneshot":
                scorer, trained = oneshot_evaluator(data, spec, seed)
                extra["supernet_train_s"] = round(trained, 1)
            else:
                settings = proxy_scorer(spec, seed)

                def scorer(genotype: Genotype, settings: Any = settings) -> Any:
                    return evaluate_child(genotype, data, settings)
            for i, (panel_name, genotype) in enumerate(todo, 1):
                start, cpu_start = time.perf_counter(), time.process_time()
                result = scorer(genotype)
                seconds = time.perf_counter() - start
                cpu = time.process_time() - cpu_start  # unaffected by other jobs on the host
                append_jsonl(SCORES, {"evaluator": name, "seed": seed, "name": panel_name,
                                      "accuracy": round(result.accuracy, 4),
                                      "status": result.status, "seconds": round(seconds, 2),
                                      "cpu_seconds": round(cpu, 2),
                                      "settings": spec, **extra})
                print(f"{name} seed {seed} [{i}/{len(todo)}] {panel_name}: "
                      f"{result.accuracy:.4f} ({seconds:.1f} s)", flush=True)
    write_table()


def _tau(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    return float(kendalltau(a, b).statistic), float(spearmanr(a, b).statistic)


def _tau_interval(a: list[float], b: list[float], resamples: int = 2000) -> list[float]:
    """A 95% bootstrap interval of Kendall tau, resampling the panel's genotypes (seeded).

    With 22 genotypes one tau is uncertain by about +-0.15: two evaluators whose intervals
    overlap widely are not told apart by this panel.
    """
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    x, y = np.asarray(a), np.asarray(b)
    taus = []
    for _ in range(resamples):
        pick = rng.integers(len(x), size=len(x))
        tau = kendalltau(x[pick], y[pick]).statistic
        if np.isfinite(tau):
            taus.append(tau)
    low, high = np.percentile(taus, [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


def write_table() -> dict[str, Any]:
    """Kendall tau / Spearman rho of every evaluator against the ground truth.

    The ground truth is the mean over its seeds; while the second seed is still being
    trained, a genotype with one seed counts with that one (``ground_truth_seeds`` in the
    JSON says how many each has), and tau over only the fully trained genotypes is
    reported beside it.
    """
    seeds = ground_truth_seeds()
    truth = ground_truth_table(min_seeds=1)
    complete = set(ground_truth_table())
    scores = read_jsonl(SCORES)
    rows = []
    for name in EVALUATORS:
        spec = row_settings(name)
        per_seed: dict[int, dict[str, float]] = {}
        seconds: list[float] = []
        trained: list[float] = []
        for r in scores:
            if r["evaluator"] == name and r["settings"] == spec:
                per_seed.setdefault(r["seed"], {})[r["name"]] = r["accuracy"]
                seconds.append(r.get("cpu_seconds", r["seconds"]))
                if "supernet_train_s" in r:
                    trained.append(r["supernet_train_s"])
        names = sorted(n for n in truth if all(n in s for s in per_seed.values()))
        if not per_seed or len(names) < 5:  # an evaluator with one seed so far is shown as such
            continue
        gt = [truth[n] for n in names]
        mean = [statistics.mean(per_seed[s][n] for s in per_seed) for n in names]
        tau, rho = _tau(mean, gt)
        full = [i for i, n in enumerate(names) if n in complete]
        tau_full = _tau([mean[i] for i in full], [gt[i] for i in full])[0] if len(full) >= 5 else None
        seed_taus = [_tau([per_seed[s][n] for n in names], gt)[0] for s in sorted(per_seed)]
        self_tau = (_tau([per_seed[0][n] for n in names], [per_seed[1][n] for n in names])[0]
                    if {0, 1} <= set(per_seed) else None)
        rows.append({"evaluator": name, "settings": spec, "genotypes": len(names),
                     "kendall_tau": round(tau, 3), "kendall_tau_ci95": _tau_interval(mean, gt),
                     "spearman_rho": round(rho, 3),
                     "kendall_tau_two_seed_truth": None if tau_full is None else round(tau_full, 3),
                     "two_seed_truth_genotypes": len(full),
                     "kendall_tau_per_seed": [round(t, 3) for t in seed_taus],
                     "kendall_tau_seed0_vs_seed1": None if self_tau is None else round(self_tau, 3),
                     "seeds": sorted(per_seed),
                     "seconds_per_candidate": round(statistics.median(seconds), 2),
                     "supernet_train_s": round(max(trained), 1) if trained else None})
    result = {"command": "python benchmarks/evaluator_fidelity.py evaluate",
              "reference": REFERENCE, "ground_truth": {n: round(v, 4) for n, v in truth.items()},
              "ground_truth_seeds": {n: sorted(v) for n, v in seeds.items()},
              "ground_truth_seed_tau": _seed_tau(seeds),
              "rows": rows, "cpu": platform.processor() or platform.machine(),
              "threads": 1}
    atomic_write_text(TABLE, json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    return result


def _seed_tau(seeds: dict[str, dict[int, float]]) -> float | None:
    """Kendall tau between the ground truth's two seeds (how repeatable the truth is)."""
    both = [v for v in seeds.values() if len(v) >= 2]
    if len(both) < 5:
        return None
    return round(_tau([v[0] for v in both], [v[1] for v in both])[0], 3)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| evaluator | setting | tau vs truth (mean of its seeds) | 95% interval | tau per seed | rho | "
             "tau seed 0 vs 1 | CPU s / candidate |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        spec = r["settings"]
        setting = (f"{spec['scale']} {spec['image_size']} px, {spec['epochs']} ep, "
                   f"{spec['train_size']} img" if spec["kind"] == "proxy"
                   else f"supernet {spec['supernet']['scale']} at {spec['image_size']} px, "
                        f"{spec['supernet']['epochs']} ep, trained {r['supernet_train_s']:.0f} s")
        low, high = r["kendall_tau_ci95"]
        lines.append(f"| {r['evaluator']} | {setting} | {r['kendall_tau']:.2f} | {low:.2f} to {high:.2f} | "
                     f"{' / '.join(f'{t:.2f}' for t in r['kendall_tau_per_seed'])} | "
                     f"{r['spearman_rho']:.2f} | {_cell(r['kendall_tau_seed0_vs_seed1'])} | "
                     f"{r['seconds_per_candidate']:.1f} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("panel", help="write the committed panel")
    gt = sub.add_parser("ground-truth", help="train the panel at the reference setting")
    gt.add_argument("--shard", default="0/1", help="i/n: this process's share of the work")
    gt.add_argument("--data", default=str(DEFAULT_CIFAR))
    ev = sub.add_parser("evaluate", help="score the panel with every evaluator (2 seeds)")
    ev.add_argument("evaluators", nargs="*", metavar="EVALUATOR",
                    help=f"which ones (default: all: {', '.join(EVALUATORS)})")
    ev.add_argument("--data", default=str(DEFAULT_CIFAR))
    sub.add_parser("table", help="print and write the table from the results so far")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "panel":
        write_panel()
    elif args.command == "ground-truth":
        ground_truth(args)
    elif args.command == "evaluate":
        evaluate(args)
    else:
        write_table()


if __name__ == "__main__":
    main()
