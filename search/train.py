"""Final training: ``python -m search.train RUN_DIR|GENOTYPE.json|NAME`` or ``--model BASELINE``.

Given a search run (its directory or its ``genotype.json``), trains the selected genotype
(or ``--trial N``) at the run's target variant and image size on the run's dataset, with
no flag repeated; any flag given overrides what the run recorded. The resolved settings
are printed before training starts. Output lands in ``<run>/train-trialN/`` (N: the trial
trained), or ``runs/train-<name>-<time>/`` for a file or built-in genotype.
``--resume DIR`` continues an interrupted training in DIR.

``--model NAME [--width-mult X]`` trains a hand-designed baseline instead (LeNet-5 to
MobileNetV3; list: ``--help``) with the same data, schedule and checkpoint, so it exports,
serves and shows in the app like a searched cell; output in ``runs/train-<name>-<time>/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.data.datasets import DATASETS, DEFAULT_IMAGE_SIZE
from search.training.final import FinalTrainSettings, train_genotype
from search.training.loop import TrainConfig
from search.trials.runinfo import RunTarget, resolve_run

DEFAULT_VARIANT = "cifar"
DEFAULT_DATASET = "cifar10"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.train`` argument parser."""
    from search.space.baselines import catalogue_text

    p = cli.parser("python -m search.train", __doc__.split("\n\n", 1)[1].strip() +
                   "\n\nbaselines (--model NAME):\n" + catalogue_text())
    p.add_argument("source", nargs="?", help="search run directory, its genotype.json, another genotype "
                                             "JSON, or a built-in name (nasnet-a, lite)")
    p.add_argument("--model", metavar="NAME", help="train a hand-designed baseline instead of a genotype "
                                                   "(names below)")
    p.add_argument("--width-mult", type=float, metavar="X",
                   help="width multiplier of --model, where the family has one (e.g. 0.5)")
    p.add_argument("--trial", type=cli.non_negative_int, metavar="N",
                   help="train trial N of the run instead of its selected genotype")
    p.add_argument("--variant", metavar="V", help=f"cifar, mobile, large, N@F, or auto: the N@F python -m "
                                                  f"search.scale chose for a latency budget (default: the "
                                                  f"run's target variant, else {DEFAULT_VARIANT})")
    p.add_argument("--image-size", type=cli.positive_int, metavar="PX",
                   help="input side in pixels (default: the run's, else the dataset's: digits 16, CIFAR 32)")
    p.add_argument("--dataset", choices=DATASETS,
                   help=f"training data (default: the run's, else {DEFAULT_DATASET})")
    p.add_argument("--data-dir", metavar="PATH", help="dataset folder or .npz (default: the run's; "
                                                      "see docs/training.md)")
    p.add_argument("--epochs", type=cli.positive_int, default=20, help="training epochs")
    p.add_argument("--batch", type=cli.positive_int, default=64, metavar="N", help="training batch size")
    p.add_argument("--batch-size", type=cli.positive_int, dest="batch", metavar="N",
                   help="old name of --batch")
    p.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate (cosine schedule to 0)")
    p.add_argument("--momentum", type=cli.fraction, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=cli.non_negative_float, default=3e-4, help="SGD weight decay (L2)")
    p.add_argument("--label-smoothing", type=cli.fraction, default=0.0,
                   help="label smoothing of the cross-entropy loss (0: none)")
    p.add_argument("--drop-path", type=cli.fraction, default=0.0,
                   help="final ScheduledDropPath probability (e.g. 0.2-0.6 for long runs)")
    p.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=True,
                   help="auxiliary head and its weighted loss")
    p.add_argument("--aux-weight", type=cli.non_negative_float, default=0.4,
                   help="weight of the auxiliary head's loss")
    p.add_argument("--grad-clip", type=cli.non_negative_float, default=5.0,
                   help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--train-size", type=cli.positive_int, metavar="K", help="use at most K training images")
    p.add_argument("--val-fraction", type=cli.fraction, default=0.0,
                   help="hold out this share of the training set to log validation accuracy")
    p.add_argument("--device", default="auto", help="auto (CUDA if PyTorch sees a GPU), cpu or cuda")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <run>/train-trialN, or "
                                                "runs/train-<name>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted training in DIR "
                                                   "(its settings are reused)")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, batches, drop-path)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    cli.add_json(p, "the result (checkpoint, accuracies)")
    return p


def settings_from_args(args: argparse.Namespace, target: RunTarget | None) -> FinalTrainSettings:
    """Flags over what the run recorded over the defaults."""
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                        aux_weight=args.aux_weight, grad_clip=args.grad_clip, drop_path_prob=args.drop_path,
                        device=args.device, seed=args.seed)
    if target is None:  # --resume DIR without a source: the checkpoint holds the rest
        return FinalTrainSettings(genotype=None, train=train, out=args.resume, resume=True)
    dataset = args.dataset or target.dataset or DEFAULT_DATASET
    same_data = args.dataset is None or args.dataset == target.dataset
    if args.variant is not None and args.variant.strip().lower() == "auto":
        if target.auto_variant is None:
            raise NasdeployError(f"{target.source} has no automatic N@F yet: run python -m search.scale "
                                 f"{target.source} --latency-budget T first (it records metadata.scale)")
        args.variant = target.auto_variant
        args.image_size = args.image_size or target.auto_image_size
    image_size = args.image_size or target.image_size_for(args.variant)
    if image_size is None and target.from_run:
        image_size = DEFAULT_IMAGE_SIZE.get(dataset)
    out = args.resume or args.out or (str(target.train_dir()) if target.from_run else None)
    return FinalTrainSettings(
        genotype=target.genotype, name=target.name, variant=args.variant or target.variant or DEFAULT_VARIANT,
        image_size=image_size, dataset=dataset,
        data_dir=args.data_dir or (target.data_dir if same_data else None), train=train,
        auxiliary=args.auxiliary, out=out, resume=args.resume is not None, train_size=args.train_size,
        val_fraction=args.val_fraction)


def baseline_settings(args: argparse.Namespace) -> FinalTrainSettings:
    """The settings of ``--model NAME``: the dataset's defaults, no run to read."""
    from search.space.baselines import check_width, get_baseline

    entry = get_baseline(args.model)
    width = check_width(entry, args.width_mult)
    for flag, given in (("SOURCE", args.source), ("--trial", args.trial), ("--variant", args.variant),
                        ("--resume", args.resume)):
        if given is not None:
            raise NasdeployError(f"{flag} does not go with --model (a baseline is a fixed network; "
                                 "resume it with --resume DIR alone)")
    settings = settings_from_args(args, RunTarget(source=entry.name, name=entry.name, genotype=None))
    settings.architecture, settings.width_mult = entry.name, width
    settings.auxiliary = False
    settings.image_size = args.image_size or DEFAULT_IMAGE_SIZE.get(settings.dataset)
    return settings


def _target(args: argparse.Namespace) -> RunTarget | None:
    if args.width_mult is not None:
        raise NasdeployError("--width-mult goes with --model NAME (a genotype is scaled with --variant N@F)")
    if args.source is None:
        if args.resume is None:
            raise NasdeployError("name what to train: a search run directory, a genotype JSON or a built-in "
                                 "name (or --resume DIR)")
        return None
    if args.resume is not None and args.out is not None and Path(args.out) != Path(args.resume):
        raise NasdeployError("--resume DIR is the training directory; do not give a different --out")
    return resolve_run(args.source, args.trial)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.train``."""
    args = build_parser().parse_args(argv)
    settings = None
    quiet = args.json == cli.STDOUT
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if quiet else (
        lambda line: print(line, flush=True))
    try:
        if args.model is not None:
            settings = baseline_settings(args)
        else:
            target = _target(args)
            if target is not None and target.from_run:
                log(f"genotype: {target.describe()}")
            settings = settings_from_args(args, target)
        result = train_genotype(settings, progress=not args.no_progress, log=log)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        out = settings.out if settings is not None and settings.out else args.out
        print(f"interrupted; continue with: python -m search.train --resume {out}", file=sys.stderr)
        return 130
    from search.training.distributed import from_env

    if not from_env().main:  # under torchrun, rank 0 reports for the job
        return 0
    test = "n/a (no test split)" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    payload = {"checkpoint": str(result.checkpoint), "out_dir": str(result.out_dir), "epochs": result.epochs,
               "train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
               "test_accuracy": result.test_accuracy}
    if not cli.emit_json(args.json, payload):
        print(f"test accuracy {test}; checkpoint {result.checkpoint}")
        print(f"next: python -m export.onnx {result.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
