"""Score genotypes with a search evaluator: ``python -m search.score GENOTYPE.json|NAME ...``.

Each genotype is trained as the search's proxy child (or read from a one-shot supernet)
once per seed and scored on the validation split; the table shows the accuracy per seed,
the mean, the parameters and the seconds. ``--run DIR`` scores with that search's
settings (dataset, data, image size, child scale/epochs/images, blocks, evaluator, and
for ``oneshot`` its trained ``supernet.pt``); a flag given overrides the run's value.

Examples::

    python -m search.score nasnet-a --dataset digits --child-scale 1@48 --seeds 0 1 2
    python -m search.score runs/demo/genotype.json my-cell.json --run runs/demo
    python -m search.score runs/os/genotype.json --run runs/os --evaluator oneshot --json
"""

from __future__ import annotations

import argparse
import sys

from search.core import cli
from search.core.errors import USER_ERRORS, report_user_error
from search.data.datasets import DATASETS


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.score`` argument parser (``None`` defaults: the run's, else the stated one)."""
    p = cli.parser("python -m search.score", __doc__.split("\n\n", 1)[1].strip(), argument_default=None)
    add = p.add_argument
    add("genotypes", nargs="+", metavar="GENOTYPE", help="a genotype JSON file (e.g. a run's genotype.json) "
                                                         "or a built-in name (nasnet-a, lite)")
    add("--run", metavar="DIR", help="score with the settings of this search run (its config.json; "
                                     "supernet.pt for oneshot) (default: none)")
    add("--dataset", choices=DATASETS, help="data to train and score on (default: the run's; required "
                                            "without --run)")
    add("--data-dir", metavar="PATH", help="dataset folder or .npz for CIFAR or imagefolder (default: the "
                                           "run's, else torchvision's cache, ~/.cache/nasdeploy)")
    add("--evaluator", choices=["proxy", "oneshot"],
        help="proxy (train a small network of the cells per seed) or oneshot (weights inherited from "
             "the run's supernet) (default: the run's, else proxy)")
    add("--seeds", type=cli.non_negative_int, nargs="+", metavar="S",
        help="seeds each genotype is scored with (default: 0 1)")
    add("--child-scale", metavar="N@F", help="proxy network size (default: the run's, else the search's "
                                             "default for the dataset)")
    add("--child-epochs", type=cli.positive_int, metavar="E",
        help="training epochs per child (default: the run's, else 1)")
    add("--child-train-size", type=cli.positive_int, metavar="K",
        help="train each child on K images (default: the run's, else the search's default for the "
             "dataset: 2500 for CIFAR, all for digits and image folders)")
    add("--child-image-size", type=cli.positive_int, metavar="PX",
        help="side the child trains at, when smaller than the data's (default: the run's, else the "
             "search's default for the dataset)")
    add("--image-size", type=cli.positive_int, metavar="PX",
        help="input side the data is loaded at, in pixels (default: the run's, else the dataset's: "
             "digits 16, CIFAR 32)")
    add("--blocks", type=cli.positive_int, metavar="B",
        help="refuse genotypes without B blocks per cell (default: the run's, else any)")
    add("--device", help="child training device: auto, cpu or cuda (default: the run's, else auto)")
    add("--no-progress", action="store_true", default=False,
        help="no progress bar: one line per scored genotype (also when stderr is not a terminal)")
    cli.add_json(p, "the scores (per genotype: accuracy per seed, mean, params, seconds)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.score``."""
    args = build_parser().parse_args(argv)
    from search.experiment.score_command import ScoreConfig, score_command

    options = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    try:
        report = score_command(ScoreConfig(**options), progress=not args.no_progress, stream=sys.stderr)
        shown = cli.emit_json(args.json, report.to_dict())
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if not shown:
        print(report.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
