"""``python -m export.onnx GENOTYPE_OR_CHECKPOINT``: a verified ONNX model with metadata.

Thin command line over :func:`export.onnx_export.export_model`.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # a file on sys.path[0] would shadow imports
    import sys

    print("error: run this as `python -m export.onnx ...`, not as a file "
          "(export/onnx.py would shadow the onnx package)", file=sys.stderr)
    raise SystemExit(2)

import argparse

from export.onnx_export import ExportConfig, export_model, summary_lines
from export.quantize import CALIB_METHODS
from search.core.errors import USER_ERRORS, report_user_error
from search.nn.onnxio import MIN_OPSET


def _batch(text: str) -> int | None:
    if text.strip().lower() == "dynamic":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a batch size or 'dynamic', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export a genotype (random weights) or a training checkpoint to a checked, "
                    "simplified, verified ONNX model that carries its preprocessing metadata.",
    )
    parser.add_argument("source", help="checkpoint (.pt), run folder, genotype JSON or built-in name "
                                       "such as nasnet-a")
    parser.add_argument("--weights", help="checkpoint whose weights to export (the positional genotype "
                                          "must then match it)")
    parser.add_argument("--variant", help="cifar, mobile, large or N@F (genotype input; default cifar)")
    parser.add_argument("--image-size", type=int, help="input side in pixels")
    parser.add_argument("--num-classes", type=int, help="classifier outputs (genotype input; default 10)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--out", help="output folder or .onnx path (default: next to the checkpoint, "
                                      "or runs/export-<name>/)")
    parser.add_argument("--batch", type=_batch, default=None, metavar="N|dynamic",
                        help="fixed batch size, or 'dynamic' (default)")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (float32 I/O)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ)")
    parser.add_argument("--calib-data", help="dataset name (digits, cifar10, ...) or image folder for "
                                             "int8 calibration and the agreement figures")
    parser.add_argument("--data-dir", help="where the --calib-data dataset lives")
    parser.add_argument("--calib-size", type=int, default=256, help="calibration images (default 256)")
    parser.add_argument("--eval-size", type=int, default=500, help="held-out images compared (default 500)")
    parser.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax")
    parser.add_argument("--verify-batch", type=int, default=8, help="the larger verification batch")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, export, print a summary; ``error: ...`` and exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    config = ExportConfig(
        source=args.source, weights=args.weights, variant=args.variant, image_size=args.image_size,
        num_classes=args.num_classes, opset=args.opset, out=args.out, batch=args.batch,
        fp16=args.fp16, int8=args.int8, calib_data=args.calib_data, data_dir=args.data_dir,
        calib_size=args.calib_size, eval_size=args.eval_size, calib_method=args.calib_method,
        verify_batch=args.verify_batch, seed=args.seed,
    )
    try:
        result = export_model(config)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
