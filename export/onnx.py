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
import sys

from export.onnx_export import ExportConfig, export_model, summary_lines, supported_opsets
from export.quantize import CALIB_METHODS
from search.core import cli
from search.core.errors import USER_ERRORS, report_user_error
from search.nn.onnxio import MIN_OPSET
from search.space.card import MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIZE


def _batch(text: str) -> int | None:
    if text.strip().lower() == "dynamic":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a batch size or 'dynamic', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m export.onnx`` argument parser."""
    parser = cli.parser(
        "python -m export.onnx",
        "Export a search run, a training checkpoint or a genotype to a checked, simplified, verified ONNX "
        "model that carries its model card (preprocessing, classes, genotype) in its metadata.\n\n"
        "A search run (its directory or genotype.json) is exported at the run's target variant, image size "
        "and class count, with the trained weights of <run>/train-trialN/checkpoint.pt when final training "
        "has written them (random weights otherwise, and it says so).",
    )
    parser.add_argument("source", help="search run directory, its genotype.json, a training directory "
                        "or checkpoint (.pt), a genotype JSON or a built-in name such as nasnet-a")
    parser.add_argument("--weights", metavar="CKPT", help="checkpoint whose weights to export (the "
                        "positional genotype must then match it)")
    parser.add_argument("--variant", metavar="V", help="cifar, mobile, large or N@F for a genotype input "
                                                       "(default: the run's target variant, else cifar)")
    parser.add_argument("--image-size", type=cli.positive_int, metavar="PX",
                        help=f"input side in pixels, at most {MAX_IMAGE_SIZE} (default: the checkpoint's or "
                             "run's, else the variant's)")
    parser.add_argument("--num-classes", type=cli.positive_int, metavar="K",
                        help=f"classifier outputs for a genotype input, at most {MAX_CLASSES} (default: the "
                             "run's, else 10)")
    low, high = supported_opsets()
    parser.add_argument("--opset", type=cli.positive_int, default=MIN_OPSET,
                        help=f"ONNX opset, {low} to {high} with this install's exporter")
    parser.add_argument("--out", metavar="PATH", help="output folder or .onnx path (default: next to the "
                        "checkpoint; <run>/random-init/ for an untrained run; else runs/export-<name>/)")
    parser.add_argument("--batch", type=_batch, default=None, metavar="N|dynamic",
                        help=f"fixed batch size of the exported graph (at most {MAX_BATCH}), or 'dynamic' "
                             "(default: dynamic)")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (float32 I/O)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ)")
    parser.add_argument("--calib-data", metavar="DATA",
                        help="dataset name (digits, cifar10, ...) or image folder for INT8 calibration and "
                             "the agreement figures (default: the checkpoint's dataset)")
    parser.add_argument("--data-dir", metavar="PATH", help="where the --calib-data dataset lives")
    parser.add_argument("--calib-size", type=cli.positive_int, default=256, metavar="K",
                        help="calibration images")
    parser.add_argument("--eval-size", type=cli.positive_int, default=500, metavar="K",
                        help="held-out images compared between precisions")
    parser.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax",
                        help="INT8 calibration method")
    parser.add_argument("--int8-agreement", type=float, default=0.99, metavar="A",
                        help="int8: keep the most sensitive parts of the network float until top-1 "
                             "agreement with fp32 on training images not used to calibrate reaches A, "
                             "in (0, 1]; the int8 model is not written when only a float network "
                             "gets there (default: 0.99)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="int8: write model.int8.sensitivity.{md,csv,png}, the cost of quantizing "
                             "each part alone, even when every node can stay int8")
    parser.add_argument("--int8-form", choices=["tensorrt", "cpu"], default="tensorrt",
                        help="int8 graph to write: tensorrt (QDQ, symmetric activations: what TensorRT "
                             "builds) or cpu (ONNX Runtime's QOperator form with uint8 activations, faster "
                             "on x86 CPUs without VNNI; TensorRT cannot build it) (default: tensorrt)")
    parser.add_argument("--qat", type=cli.positive_int, metavar="EPOCHS",
                        help="int8: fine-tune the trained network for EPOCHS with fake int8 quantization "
                             "(quantization-aware training) and export that as model.int8.onnx, instead of "
                             "post-training quantization; needs the model's training data")
    parser.add_argument("--qat-lr", type=float, default=0.005, metavar="LR",
                        help="--qat: initial learning rate, cosine to 0 (default: 0.005)")
    parser.add_argument("--qat-images", type=cli.positive_int, metavar="K",
                        help="--qat: fine-tune on at most K training images (default: all)")
    parser.add_argument("--verify-batch", type=cli.positive_int, default=8, metavar="N",
                        help=f"the larger batch the fp32 model is verified at, at most {MAX_BATCH} "
                             "(batch 1 always is)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the verification inputs")
    cli.add_json(parser, "the export report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, export, print a summary; ``error: ...`` and exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    config = ExportConfig(
        source=args.source, weights=args.weights, variant=args.variant, image_size=args.image_size,
        num_classes=args.num_classes, opset=args.opset, out=args.out, batch=args.batch,
        fp16=args.fp16, int8=args.int8, calib_data=args.calib_data, data_dir=args.data_dir,
        calib_size=args.calib_size, eval_size=args.eval_size, calib_method=args.calib_method,
        int8_agreement=args.int8_agreement, sensitivity=args.sensitivity, qat=args.qat, qat_lr=args.qat_lr,
        qat_images=args.qat_images, int8_form=args.int8_form,
        verify_batch=args.verify_batch,
        seed=args.seed,
    )
    quiet = args.json == cli.STDOUT
    try:
        result = export_model(config, log=(lambda line: print(line, file=sys.stderr)) if quiet else print)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    if not cli.emit_json(args.json, {"model": str(result.model_path), "report": str(result.report_path),
                                     "extra_models": {k: str(v) for k, v in result.extra_models.items()},
                                     **result.report}):
        print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
