"""``python -m export.tensorrt model.onnx``: a serialized TensorRT engine plus its JSON sidecar.

Thin command line over :func:`export.trt_build.build_engine`. ``--dry-run`` checks the
model and prints the plan and the equivalent ``trtexec`` command without TensorRT;
``--json [FILE]`` gives the same plan (and the sidecar of a built engine) as JSON.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # a file on sys.path[0] would shadow imports
    import sys

    print("error: run this as `python -m export.tensorrt ...`, not as a file "
          "(export/tensorrt.py would shadow the tensorrt package)", file=sys.stderr)
    raise SystemExit(2)

import argparse

from export.trt_build import (
    DEFAULT_MAX_BATCH,
    DEFAULT_OPT_BATCH,
    MIB,
    TrtConfig,
    build_engine,
    describe_plan,
    trtexec_command,
)
from search.core import cli
from search.core.errors import USER_ERRORS, report_user_error


def workspace_size(text: str) -> int:
    """``--workspace``: a byte size with a unit (``512M``, ``2G``), at least 1 MiB.

    A bare number is bytes, as everywhere; because this flag used to take MiB, a bare
    number below 1 MiB is refused with a hint to add the unit instead of being misread.
    """
    size = cli.size_bytes(text)
    if size >= MIB:
        return size
    if text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text.strip()} is read as bytes (below the 1 MiB minimum): "
                                         f"add a unit, e.g. {text.strip()}M or 2G")
    raise argparse.ArgumentTypeError(f"must be at least 1M, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m export.tensorrt`` command line."""
    parser = cli.parser(
        "python -m export.tensorrt",
        "Build a TensorRT engine (10.x or 11.x, strongly typed) from a nasdeploy ONNX model.\n"
        "Precision comes from the model: --fp16 uses model.fp16.onnx (derived if missing),\n"
        "--int8 the QDQ model.int8.onnx written by `python -m export.onnx --int8`.\n"
        "--dry-run checks the model and prints the plan and the trtexec command without TensorRT.",
    )
    parser.add_argument("onnx", help="model.onnx written by python -m export.onnx")
    parser.add_argument("--out", metavar="PATH",
                        help="engine file or folder (default: <onnx stem>.engine beside the model)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="build from the fp16 ONNX")
    precision.add_argument("--int8", action="store_true", help="build from the QDQ int8 ONNX")
    parser.add_argument("--workspace", type=workspace_size, default="1G", metavar="SIZE",
                        help="builder workspace limit, e.g. 512M or 2G (a bare number is bytes; "
                             "at least 1M)")
    profile = parser.add_argument_group(
        "TensorRT optimization profile",
        "The batch range a dynamic-batch engine accepts, in images, named as TensorRT names it\n"
        "(min/opt/max shapes); a fixed-batch model only takes its own batch size.")
    profile.add_argument("--min-batch", type=cli.positive_int, metavar="N",
                         help="smallest batch the engine runs (default: 1)")
    profile.add_argument("--opt-batch", type=cli.positive_int, metavar="N",
                         help=f"batch TensorRT tunes its kernels for (default: {DEFAULT_OPT_BATCH}, "
                              "kept within min..max)")
    profile.add_argument("--max-batch", type=cli.positive_int, metavar="N",
                         help=f"largest batch the engine runs (default: {DEFAULT_MAX_BATCH})")
    parser.add_argument("--timing-cache", metavar="FILE", help="timing cache file to read and update")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the model and print the plan and trtexec command; build nothing")
    cli.add_json(parser, "the plan (and the engine's sidecar once built)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Plan and build; ``error: ...`` on stderr and exit 2 when input or hardware is missing."""
    args = build_parser().parse_args(argv)
    config = TrtConfig(onnx=args.onnx, out=args.out, fp16=args.fp16, int8=args.int8,
                       workspace_bytes=args.workspace, min_batch=args.min_batch, opt_batch=args.opt_batch,
                       max_batch=args.max_batch, timing_cache=args.timing_cache, dry_run=args.dry_run)
    try:
        plan, sidecar = build_engine(config)
        result = {"dry_run": config.dry_run, "plan": plan.to_dict(), "built": sidecar}
        if cli.emit_json(args.json, result):
            return 0
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print("\n".join(describe_plan(plan)))
    print(f"trtexec equivalent:\n  {trtexec_command(plan)}")
    if sidecar is not None:
        print(f"built {plan.engine} with TensorRT {sidecar['tensorrt_version']} on {sidecar['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
