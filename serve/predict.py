"""Classify images with an exported model.

    python -m serve.predict MODEL IMAGE... [--top-k 5] [--backend auto] [--device auto]
                            [--json [FILE]]

All images run as one batch. Put --json last (or write --json=FILE) so that it does
not take an image for its FILE.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.core.rundir import ENGINE_SUFFIXES, ONNX_SUFFIX
from serve.preprocess import load_image
from serve.runtime import BACKENDS, DEVICES, classify, load_runtime


@dataclass(frozen=True)
class PredictConfig:
    """What to classify and how."""

    model: Path
    images: list[Path]
    top_k: int = 5
    backend: str = "auto"
    device: str = "auto"


def run_predict(config: PredictConfig) -> dict[str, Any]:
    """Load the model, warm it up once, classify all images as one batch.

    Returns:
        ``{"model", "runtime": describe(), "latency_ms", "predictions": [{"image", "top"}]}``.
    """
    images = [load_image(path) for path in config.images]
    runtime = load_runtime(config.model, config.backend, config.device)
    runtime.warmup(1)
    preds = classify(runtime, images, k=config.top_k)
    return {
        "model": str(config.model),
        "runtime": runtime.describe(),
        "batch_size": len(images),
        "latency_ms": preds[0].latency_ms,
        "predictions": [
            {"image": str(path), "top": pred.to_dict()["top"]}
            for path, pred in zip(config.images, preds, strict=True)
        ],
    }


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: image, rank, class, probability; then latency and provider."""
    rows = [("image", "#", "class", "probability")]
    for pred in result["predictions"]:
        for rank, entry in enumerate(pred["top"], start=1):
            name = Path(pred["image"]).name if rank == 1 else ""
            rows.append((name, str(rank), entry["class"], f"{entry['probability']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    info = result["runtime"]
    lines.append(
        f"latency: {result['latency_ms']:.2f} ms for a batch of {result['batch_size']} "
        f"({info['backend']}, {info['provider']}, {info['precision']})"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m serve.predict`` command line."""
    parser = cli.parser("python -m serve.predict", __doc__.strip())
    parser.add_argument("model", type=Path,
                        help="model.onnx or model.engine, a folder holding model.onnx, or a search run "
                             "directory (its selected trial's exported model); bundled: the CIFAR-10 model "
                             "shipped with nasdeploy")
    parser.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--top-k", type=cli.positive_int, default=5, metavar="K",
                        help="classes listed per image")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="runtime that runs the model; auto picks it by the file suffix")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the model runs; auto takes the best one available")
    cli.add_json(parser, "the predictions")
    return parser


def check_json_target(target: str | None) -> None:
    """Refuse a ``--json FILE`` that is an image or a model (``--json`` took an input)."""
    if target is None or target == cli.STDOUT:
        return
    suffix = Path(target).suffix.lower()
    if suffix in (ONNX_SUFFIX, *ENGINE_SUFFIXES) or suffix in Image.registered_extensions():
        raise NasdeployError(f"--json {target} names an image or model, not a JSON file: "
                             "put --json last or write --json=FILE.json")


def main(argv: list[str] | None = None) -> int:
    """Classify; print a table, or the predictions as JSON (``--json``)."""
    args = build_parser().parse_args(argv)
    config = PredictConfig(args.model, args.images, args.top_k, args.backend, args.device)
    try:
        check_json_target(args.json)
        result = run_predict(config)
        if not cli.emit_json(args.json, result):
            print(format_table(result))
    except USER_ERRORS as exc:
        return report_user_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
