"""``python -m search.run``: latency-aware cell search (thin CLI over :mod:`search.experiment.session`).

Examples::

    python -m search.run --latency-budget 5ms --dataset digits --trials 8
    python -m search.run --latency-budget 5ms --strategy tpe --time-budget 30m \\
        --dataset cifar10 --data-dir ../shared/data/cifar10/cifar10.npz
    python -m search.run --resume runs/20261123-200000-rl-digits
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from search.core.errors import USER_ERRORS, NasdeployError, report_user_error

RESUME_FLAGS = {"resume", "trials", "time_budget", "no_progress"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """All flags; every default is ``None`` so given flags can be told apart."""
    p = _Parser(prog="python -m search.run", argument_default=None,
                description="Search a NASNet cell that is accurate and fast on the target device.")
    add = p.add_argument
    add("--latency-budget", metavar="T", help="latency target, e.g. 5ms, 800us, 0.005s (required)")
    add("--flops-budget", metavar="N", help="optional MAC budget, e.g. 600M")
    add("--latency-weight", type=float, metavar="W",
        help="MnasNet exponent alpha=beta=W (default -0.07)")
    add("--hard-constraint", action="store_true", default=None,
        help="hard constraint: alpha=0, beta=-1 (overrides --latency-weight)")
    add("--strategy", choices=["rl", "tpe", "random", "nsga2"], help="search strategy (default rl)")
    add("--trials", type=int, metavar="N", help="stop after N trials (default 100)")
    add("--time-budget", metavar="D", help="stop after this much search time, e.g. 30m, 2h")
    add("--dataset", help="cifar10 (default), cifar100, digits or imagefolder")
    add("--data-dir", metavar="PATH", help="dataset folder or .npz (CIFAR, imagefolder)")
    add("--child-scale", metavar="N@F", help="proxy network size (default per dataset)")
    add("--child-epochs", type=int, metavar="E", help="training epochs per child")
    add("--child-train-size", type=int, metavar="K", help="train children on K images")
    add("--image-size", type=int, metavar="PX", help="image size (default per dataset)")
    add("--target-variant", metavar="V", help="deployment scale for latency: cifar (default), "
        "mobile, large or N@F")
    add("--latency-device", choices=["cpu", "cuda"], help="ONNX Runtime device for latency")
    add("--device", help="child training device: auto (default), cpu, cuda")
    add("--blocks", type=int, metavar="B", help="blocks per cell (default 5)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--rl-batch", type=int, metavar="K", help="children per PPO update (default 4)")
    add("--out", metavar="DIR", help="run directory (default: a new one under runs/)")
    add("--resume", metavar="DIR", help="continue an interrupted run (settings from DIR)")
    add("--no-progress", action="store_true", default=None, help="no progress bar")
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
                                 f"only --trials and --time-budget may change ({flags} given)")
        return resume_search(str(given["resume"]), trials=given.get("trials"),  # type: ignore[arg-type]
                             time_budget=given.get("time_budget"), progress=progress)  # type: ignore[arg-type]
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
    from search.experiment.session import summary_text

    print(summary_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
