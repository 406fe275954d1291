"""Automatic N@F: ``python -m search.scale GENOTYPE --latency-budget 5ms`` (or ``--model NAME``).

Finds the largest scale of a genotype within a latency budget: for each N (normal cells per
stage) the widest F that meets the budget, measured on this machine as the search measures
latency (batch 1, ONNX Runtime, pinned threads) or predicted with ``--latency-predictor``;
of those the one with the most MACs, preferring NASNet's own F/N ratios among near-equals.
Prints the grid and records the choice in the genotype file's ``metadata.scale`` (a run's
``genotype.json``, the file given, or ``--out`` for a built-in name), which
``python -m search.train GENOTYPE --variant auto`` builds. With ``--model NAME`` a baseline's
width multiplier is scaled instead, and the command that trains it is printed.

Examples::

    python -m search.scale runs/demo --latency-budget 1ms
    python -m search.scale nasnet-a --latency-budget 2ms --out nasnet-2ms.json
    python -m search.scale --model mobilenet_v2 --latency-budget 1ms
"""

from __future__ import annotations

import argparse
import sys

from search.core import cli
from search.core.errors import USER_ERRORS, report_user_error


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.scale`` argument parser."""
    from search.evaluation.autoscale import DEFAULT_CELLS, DEFAULT_MAX_FILTERS

    p = cli.parser("python -m search.scale", __doc__.split("\n\n", 1)[1].strip())
    p.add_argument("source", nargs="?", metavar="GENOTYPE",
                   help="search run directory, its genotype.json, another genotype JSON, or a built-in name "
                        "(nasnet-a, lite)")
    p.add_argument("--model", metavar="NAME", help="scale a hand-designed baseline's width instead "
                                                   "(python -m search.train --help lists them)")
    p.add_argument("--latency-budget", type=cli.latency_ms, required=True, metavar="T",
                   help="latency budget of the deployment model at batch 1: 5ms, 800us (required)")
    p.add_argument("--latency-device", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="where latency is measured, as search.run: ONNX Runtime cpu or cuda, or a TensorRT "
                        "fp16 engine")
    p.add_argument("--latency-threads", type=cli.positive_int, default=1, metavar="N",
                   help="ONNX Runtime intra-op threads (the cores your device runs the model on)")
    p.add_argument("--latency-predictor", metavar="FILE",
                   help="predict latency with this file (search.latency fit) instead of measuring here; "
                        "other N@F than it was fitted at are extrapolated (genotypes only)")
    p.add_argument("--image-size", type=cli.positive_int, metavar="PX",
                   help="input side of the deployment model (default: the run's, else 32)")
    p.add_argument("--num-classes", type=cli.positive_int, metavar="K",
                   help="classifier outputs (default: the run's, else 10)")
    p.add_argument("--cells", type=cli.positive_int, nargs="+", default=list(DEFAULT_CELLS), metavar="N",
                   help="N to try (normal cells per stage)")
    p.add_argument("--max-filters", type=cli.positive_int, default=DEFAULT_MAX_FILTERS, metavar="F",
                   help="widest F to try")
    p.add_argument("--out", metavar="FILE",
                   help="write the genotype with the chosen scale here instead of updating the source file "
                        "(required for a built-in name)")
    cli.add_json(p, "the grid and the choice")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.scale``."""
    args = build_parser().parse_args(argv)
    from search.experiment.autoscale import ScaleConfig, run_scale

    quiet = args.json == cli.STDOUT

    def log(line: str) -> None:
        print(line, file=sys.stderr if quiet else sys.stdout, flush=True)

    try:
        config = ScaleConfig(source=args.source, model=args.model, budget_ms=args.latency_budget,
                             device=args.latency_device, threads=args.latency_threads,
                             predictor=args.latency_predictor, image_size=args.image_size,
                             num_classes=args.num_classes, cells=tuple(args.cells),
                             max_filters=args.max_filters,
                             out=args.out)
        outcome = run_scale(config, log=log)
        shown = cli.emit_json(args.json, outcome.to_dict())
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if not shown:
        print(outcome.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
