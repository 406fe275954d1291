"""``python -m search.latency``: latency panels, profiling on the target (thin dispatcher).

Examples::

    python -m search.latency panel --target-variant 2@192 --image-size 16 --samples 40 --out panel/
    python -m serve.bench --panel panel/ --json panel/measurements.json      # on the device
    python -m search.latency profile --target-variant 2@192 --image-size 16 --samples 40 --out prof/
    python -m search.latency fit prof/measurements.json --out predictor.json
    python -m search.latency predict --predictor predictor.json runs/demo nasnet-a

Each subcommand is a :class:`Command` in :data:`COMMANDS`: its flags and a ``run`` that
calls one library function (``panel``/``profile``: :mod:`search.evaluation.panel`;
``fit``/``predict``: :mod:`search.evaluation.predictor`).
File formats: ``docs/latency.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search.core import cli
from search.core.errors import USER_ERRORS, report_user_error

PROG = "python -m search.latency"


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, flags, and what it runs (returns an exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _add_panel_flags(p: argparse.ArgumentParser) -> None:
    from search.evaluation.panel import PanelSpec

    d = PanelSpec()
    p.add_argument("--target-variant", default=d.target_variant, metavar="V",
                   help="deployment scale of the models: cifar (6@768), mobile, large or N@F, as search.run")
    p.add_argument("--image-size", type=cli.positive_int, metavar="PX",
                   help="input side in pixels (default: the variant's; 32 for N@F)")
    p.add_argument("--num-classes", type=cli.positive_int, default=d.num_classes, metavar="K",
                   help="classifier outputs of the deployment model")
    p.add_argument("--blocks", type=cli.positive_int, default=d.blocks, metavar="B", help="blocks per cell")
    p.add_argument("--samples", type=cli.positive_int, default=d.samples, metavar="N",
                   help="random genotypes in the panel")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="panel folder to create: pNNN.onnx and manifest.json (required)")


def _spec(args: argparse.Namespace) -> Any:
    from search.evaluation.panel import PanelSpec

    return PanelSpec(args.target_variant, args.samples, args.image_size, args.num_classes, args.blocks,
                     args.seed)


def _export_line(done: int, total: int, entry: dict[str, Any]) -> None:
    _stderr(f"[{done}/{total}] {entry['file']}: {entry['macs'] / 1e6:.1f} M MACs, "
            f"{entry['params'] / 1e6:.3f} M params, exported in {entry['export_time_s']:.1f} s")


def _run_panel(args: argparse.Namespace) -> int:
    from search.evaluation.panel import write_panel

    manifest = write_panel(_spec(args), args.out, _export_line)
    summary = {k: v for k, v in manifest.items() if k != "models"}
    summary.update(out=args.out, models=len(manifest["models"]))
    if not cli.emit_json(args.json, summary):
        print(f"wrote {len(manifest['models'])} models and manifest.json to {args.out}; time them on the "
              f"device: python -m serve.bench --panel {args.out} --json measurements.json")
    return 0


def _add_profile_flags(p: argparse.ArgumentParser) -> None:
    from search.runtime.panel import PanelTiming

    _add_panel_flags(p)
    t = PanelTiming()
    p.add_argument("--device", default=t.device, choices=["cpu", "cuda", "tensorrt"],
                   help="cpu or cuda (ONNX Runtime, fp32) or tensorrt (fp16 TensorRT engines)")
    p.add_argument("--threads", type=cli.positive_int, default=t.threads, metavar="N",
                   help="ONNX Runtime intra-op threads; one is the most repeatable on a shared host")
    p.add_argument("--warmup", type=cli.non_negative_int, default=t.warmup, metavar="RUNS",
                   help="untimed runs per model")
    p.add_argument("--repeats", type=cli.positive_int, default=t.repeats, metavar="RUNS",
                   help="timed runs per model; the median is the latency")
    p.add_argument("--max-time", type=cli.duration_s, default="3s", metavar="TIME",
                   help="cap on one model's timed runs, e.g. 3s or 500ms (at least 3 runs)")
    p.add_argument("--rounds", type=cli.positive_int, default=t.rounds, metavar="R",
                   help="passes over the panel; a model's latency is the median of its per-round medians")


def _run_profile(args: argparse.Namespace) -> int:
    from search.evaluation.panel import profile
    from search.runtime.panel import MEASUREMENTS_NAME, PanelTiming, progress_line

    backend = "tensorrt" if args.device == "tensorrt" else "onnxruntime"
    timing = PanelTiming(backend, args.device if backend == "onnxruntime" else "cpu", args.threads,
                         args.warmup, args.repeats, args.max_time, rounds=args.rounds)
    measurements = profile(_spec(args), args.out, timing, _export_line,
                           lambda done, total, row: _stderr(progress_line(done, total, row)))
    if not cli.emit_json(args.json, measurements):
        device = measurements["device"]
        print(f"timed {len(measurements['results'])} models on {device['cpu']} ({device['runtime']} "
              f"{device['runtime_version']}, {device['provider']}, {device['threads']} thread(s), "
              f"{device['precision']}): {args.out}/{MEASUREMENTS_NAME}")
    return 0


def _add_fit_flags(p: argparse.ArgumentParser) -> None:
    from search.evaluation.predictor import HOLDOUT_FRACTION

    p.add_argument("measurements", nargs="+", metavar="MEASUREMENTS",
                   help="measurements.json from serve.bench --panel or search.latency profile (several "
                        "files of the same target and device are pooled)")
    p.add_argument("--out", required=True, metavar="FILE", help="predictor file to write (required)")
    p.add_argument("--holdout", type=cli.fraction, default=HOLDOUT_FRACTION,
                   help="share of the measured genotypes held out to choose and report the model")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")


def _run_fit(args: argparse.Namespace) -> int:
    from search.evaluation.predictor import fit_predictor, load_measurements, pool, save_predictor

    measurements = pool([load_measurements(path) for path in args.measurements])
    predictor = fit_predictor(measurements, seed=args.seed, holdout=args.holdout)
    path = save_predictor(predictor, args.out)
    if not cli.emit_json(args.json, {"predictor": str(path), **predictor.summary()}):
        print(predictor.report_text())
        print(f"wrote {path}; search with it: python -m search.run --latency-predictor {path} "
              f"--target-variant {predictor.target.variant} ...")
    return 0


def _add_predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("genotypes", nargs="+", metavar="GENOTYPE",
                   help="search run directory, genotype JSON or built-in name (nasnet-a, lite)")
    p.add_argument("--predictor", required=True, metavar="FILE",
                   help="predictor file from search.latency fit (required)")


def _run_predict(args: argparse.Namespace) -> int:
    from search.evaluation.predictor import load_predictor
    from search.trials.runinfo import resolve_run

    predictor = load_predictor(args.predictor)
    rows = []
    for source in args.genotypes:
        target = resolve_run(source)
        same_target = target.variant == predictor.target.variant
        rows.append({"genotype": source, "predicted_ms": predictor.predict(target.genotype),
                     "recorded_ms": target.latency_ms if same_target else None})
    result = {"predictor": args.predictor, **predictor.summary(), "predictions": rows}
    if not cli.emit_json(args.json, result):
        t = predictor.target
        print(f"predicted latency at {t.variant} ({t.image_size} px) on {predictor.device_text()}:")
        for row in rows:
            seen = f" (search measured {row['recorded_ms']:.3f} ms)" if row["recorded_ms"] is not None else ""
            print(f"  {row['genotype']}: {row['predicted_ms']:.3f} ms{seen}")
    return 0


COMMANDS: list[Command] = [
    Command("panel", "write ONNX models of random genotypes and manifest.json, to time on the device",
            _add_panel_flags, _run_panel),
    Command("profile", "panel + timing on this machine: also writes DIR/measurements.json",
            _add_profile_flags, _run_profile),
    Command("fit", "fit a latency predictor on measurements and report its held-out accuracy",
            _add_fit_flags, _run_fit),
    Command("predict", "predict the latency of genotypes with a fitted predictor",
            _add_predict_flags, _run_predict),
]
"""Subcommands in help order; a module adding more appends its :class:`Command` here."""


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subparser per :data:`COMMANDS` entry."""
    parser = cli.parser(PROG, __doc__.strip())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=cli.Parser)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    formatter_class=cli.HelpFormatter, allow_abbrev=False)
        command.add_arguments(sub)
        cli.add_json(sub, f"the {command.name} result")
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; user errors are one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
