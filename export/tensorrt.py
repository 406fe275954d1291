"""``python -m export.tensorrt model.onnx``: a serialized TensorRT engine plus its JSON sidecar.

Thin command line over :func:`export.trt_build.build_engine`. ``--dry-run`` checks the
model and prints the plan and the equivalent ``trtexec`` command without TensorRT.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # a file on sys.path[0] would shadow imports
    import sys

    print("error: run this as `python -m export.tensorrt ...`, not as a file "
          "(export/tensorrt.py would shadow the tensorrt package)", file=sys.stderr)
    raise SystemExit(2)

import argparse

from export.trt_build import TrtConfig, build_engine, describe_plan, trtexec_command
from search.core.errors import USER_ERRORS, report_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.tensorrt",
        description="Build a TensorRT engine (10.x or 11.x, strongly typed) from a nasdeploy ONNX model. "
                    "Precision comes from the model: --fp16 uses model.fp16.onnx (derived if missing), "
                    "--int8 the QDQ model.int8.onnx written by `python -m export.onnx --int8`.",
    )
    parser.add_argument("onnx", help="model.onnx written by python -m export.onnx")
    parser.add_argument("--out", help="engine file or folder (default: <onnx stem>.engine beside the model)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="build from the fp16 ONNX")
    precision.add_argument("--int8", action="store_true", help="build from the QDQ int8 ONNX")
    parser.add_argument("--workspace", type=int, default=1024, metavar="MIB",
                        help="builder workspace limit in MiB (default 1024)")
    parser.add_argument("--min-batch", type=int, help="optimization profile minimum batch (default 1)")
    parser.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default 8)")
    parser.add_argument("--max-batch", type=int, help="optimization profile maximum batch (default 32)")
    parser.add_argument("--timing-cache", help="timing cache file to read and update")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the model and print the plan and trtexec command; build nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Plan and build; ``error: ...`` on stderr and exit 2 when input or hardware is missing."""
    args = build_parser().parse_args(argv)
    config = TrtConfig(onnx=args.onnx, out=args.out, fp16=args.fp16, int8=args.int8,
                       workspace_mb=args.workspace, min_batch=args.min_batch, opt_batch=args.opt_batch,
                       max_batch=args.max_batch, timing_cache=args.timing_cache, dry_run=args.dry_run)
    try:
        plan, sidecar = build_engine(config)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print("\n".join(describe_plan(plan)))
    print(f"trtexec equivalent:\n  {trtexec_command(plan)}")
    if sidecar is not None:
        print(f"built {plan.engine} with TensorRT {sidecar['tensorrt_version']} on {sidecar['gpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
