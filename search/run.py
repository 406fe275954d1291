"""``python -m search.run``: latency-aware cell search (thin CLI over :mod:`search.experiment.session`).

Examples::

    python -m search.run --latency-budget 5ms --dataset digits --trials 8
    python -m search.run --latency-budget 5ms --strategy tpe --time-budget 30m \\
        --dataset cifar10 --data-dir ../shared/data/cifar10/cifar10.npz
    python -m search.run --latency-budget 5ms --dataset digits --trials 16 --workers 2
    python -m search.run --resume runs/20261123-200000-rl-digits
"""

from __future__ import annotations

import argparse
import sys

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error

WORKER_FLAGS = ("workers", "ray_address", "gpus_per_child")
RESUME_FLAGS = {"resume", "trials", "time_budget", "no_progress", "json", *WORKER_FLAGS}


def _keep_text(convert):
    """Validate with the shared unit parser but keep the user's spelling (for config.json)."""
    def check(text: str) -> str:
        convert(text)
        return text.strip()

    check.__name__ = convert.__name__
    return check


def build_parser() -> argparse.ArgumentParser:
    """All flags; every default is ``None`` so given flags can be told apart (defaults in help)."""
    p = cli.parser("python -m search.run", "Search a NASNet cell that is accurate and fast on the target "
                   "device.\n\n" + __doc__.split("\n\n", 1)[1].strip(), argument_default=None)
    add = p.add_argument
    add("--latency-budget", type=_keep_text(cli.latency_ms), metavar="T",
        help="latency target of the deployment model, with its unit: 5ms, 800us, 0.005s (required)")
    add("--macs-budget", type=_keep_text(cli.count), metavar="N", dest="macs_budget",
        help="optional budget of multiply-accumulates per image of the deployment model, e.g. 600M, "
             "1.2G (default: none)")
    add("--flops-budget", type=_keep_text(cli.count), metavar="N", dest="macs_budget",
        help="old name of --macs-budget (it always counted multiply-accumulates, not FLOPs)")
    add("--latency-weight", type=float, metavar="W",
        help="MnasNet soft-constraint exponent alpha=beta=W (default: -0.07)")
    add("--hard-constraint", action="store_true", default=None,
        help="hard constraint: alpha=0, beta=-1, reward drops to 0 over budget (overrides --latency-weight)")
    add("--strategy", choices=["rl", "tpe", "random", "nsga2"], help="search strategy (default: rl)")
    add("--trials", type=cli.positive_int, metavar="N", help="stop after N trials (default: 100 when no "
                                                             "--time-budget is given)")
    add("--time-budget", type=_keep_text(cli.duration_s), metavar="D",
        help="stop after this much search time: 90s, 30m, 2h, 1h30m; a bare number is seconds "
             "(default: none)")
    add("--dataset", help="cifar10, cifar100, digits or imagefolder (default: cifar10)")
    add("--data-dir", metavar="PATH", help="dataset folder or .npz for CIFAR or imagefolder (default: "
                                           "torchvision's cache, ~/.cache/nasdeploy)")
    add("--child-scale", metavar="N@F", help="proxy network size, 8 channels per op by default; F is at "
                                             "least 48 for 5-block cells (default: 1@192)")
    add("--child-image-size", type=cli.positive_int, metavar="PX",
        help="side the proxy child trains at, at most the data's (default: the data's, 32 for CIFAR)")
    add("--child-epochs", type=cli.positive_int, metavar="E", help="training epochs per child (default: 1)")
    add("--child-train-size", type=cli.positive_int, metavar="K",
        help="train each child on K images (default: 2500 for CIFAR, all for digits and image folders)")
    add("--image-size", type=cli.positive_int, metavar="PX",
        help="input side in pixels (default: the dataset's, digits 16, CIFAR 32)")
    add("--target-variant", metavar="V", help="deployment scale latency is measured at: cifar (6@768), "
        "mobile, large or N@F (default: cifar)")
    add("--latency-device", choices=["cpu", "cuda", "tensorrt"],
        help="where latency is measured: cpu or cuda (ONNX Runtime), or tensorrt (an fp16 TensorRT "
             "engine per candidate; needs TensorRT and an NVIDIA GPU) (default: cpu)")
    add("--latency-threads", type=cli.positive_int, metavar="N",
        help="ONNX Runtime intra-op threads for latency; one pinned thread is the most repeatable "
             "figure on a shared multi-core host, set the cores your device runs on (default: 1)")
    add("--latency-predictor", metavar="FILE",
        help="predict latency with this file from search.latency fit (profiled on the target device) "
             "instead of timing every candidate; the best candidates are still measured at the end "
             "(default: none, every candidate is timed)")
    add("--evaluator", choices=["proxy", "oneshot"],
        help="how a candidate's accuracy is estimated: proxy (a small network of its cells trained "
             "briefly) or oneshot (validation accuracy with weights inherited from one supernet "
             "trained once per run) (default: proxy)")
    add("--supernet-epochs", type=cli.positive_int, metavar="E",
        help="oneshot: supernet training epochs before candidates are scored (default: per dataset)")
    add("--supernet", metavar="FILE",
        help="oneshot: score with this finished supernet (another run's supernet.pt, same dataset and "
             "--blocks) instead of training one; the run copies it and splits train/validation with the "
             "seed it was trained with, so one supernet serves many searches (budgets, strategies, seeds)")
    add("--rerank", type=cli.non_negative_int, metavar="K",
        help="after the search, train the K best feasible candidates again at higher fidelity "
             "(longer, 2 seeds) and pick the winner by that; 0 turns it off (default: 3)")
    add("--device", help="child training device: auto, cpu or cuda (default: auto)")
    add("--blocks", type=cli.positive_int, metavar="B", help="blocks per cell (default: 5)")
    add("--seed", type=int, help="random seed (default: 0)")
    add("--rl-batch", type=cli.positive_int, metavar="K", help="children per PPO update (default: 4)")
    add("--study-name", metavar="NAME", help="Optuna study name in study.db (default: nasdeploy-<run dir "
                                             "name>)")
    add("--storage", metavar="URL",
        help="tpe/random/nsga2: keep the Optuna study in this storage instead of the run's study.db, "
             "e.g. postgresql://user:pass@host:5432/db, mysql://..., sqlite:///shared.db or "
             "journal:FILE; searches on several machines given the same --storage and --study-name "
             "share one study (each keeps its own run directory)")
    add("--workers", type=cli.positive_int, metavar="N",
        help="evaluate N children at a time on Ray workers: a local Ray instance started by the run, "
             "or with --ray-address at most N on that cluster (default: one at a time in this process; "
             "with --ray-address, as many as the cluster's CPUs or GPUs hold); needs the distributed "
             "extra, see docs/distributed.md")
    add("--ray-address", metavar="HOST:PORT",
        help="evaluate children on the Ray cluster whose head `ray start --head` started there (or "
             "auto); a node that joined with --resources '{\"latency_target\": 1}' measures latency "
             "(default: none)")
    add("--gpus-per-child", type=cli.non_negative_float, metavar="G",
        help="GPUs each child's Ray task holds, a fraction shares one (0.5: two children per GPU) "
             "(default: 1 on a cluster with GPUs unless --device cpu, else 0)")
    add("--out", metavar="DIR", help="run directory (default: a new one under runs/)")
    add("--resume", metavar="DIR", help="continue an interrupted run in DIR with its config.json settings "
                                        "(only --trials, --time-budget and the worker flags may change)")
    add("--no-progress", action="store_true", default=None,
        help="no progress bar: one line per finished trial (also when output is not a terminal)")
    cli.add_json(p, "the search result (selected trial, figures, files)")
    return p


def _given(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in vars(args).items() if v is not None}


def _run(given: dict[str, object]):  # -> SearchResult
    from search.experiment.session import SearchConfig, resume_search, run_search

    progress = not given.pop("no_progress", False)
    if "resume" in given:
        extra = sorted(set(given) - RESUME_FLAGS)
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise NasdeployError(f"--resume takes the settings from the run's config.json; "
                                 f"only --trials, --time-budget, --workers, --ray-address and "
                                 f"--gpus-per-child may change ({flags} given)")
        return resume_search(str(given["resume"]), trials=given.get("trials"),  # type: ignore[arg-type]
                             time_budget=given.get("time_budget"), progress=progress,  # type: ignore[arg-type]
                             workers={k: given[k] for k in WORKER_FLAGS if k in given})
    if "latency_budget" not in given:
        raise NasdeployError("--latency-budget is required, e.g. --latency-budget 5ms")
    given["hard_constraint"] = bool(given.get("hard_constraint", False))
    config = SearchConfig(**given)  # type: ignore[arg-type]
    given["_config"] = config
    return run_search(config, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run (or resume) the search, print a short summary."""
    args = build_parser().parse_args(argv)
    given = _given(args)
    json_target = given.pop("json", None)
    try:
        result = _run(given)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        config = given.get("_config")
        run_dir = given.get("resume") or getattr(config, "out", None)
        hint = (f"; finished trials are saved, continue with: python -m search.run --resume "
                f"{run_dir}" if run_dir else " before the search started")
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    from search.experiment.session import result_dict, summary_text

    if not cli.emit_json(json_target, result_dict(result)):
        print(summary_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
