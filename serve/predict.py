"""Classify images with an exported model.

    python -m serve.predict MODEL IMAGE... [--top-k 5] [--backend auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import USER_ERRORS, report_user_error
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
    parser = argparse.ArgumentParser(prog="python -m serve.predict", description=__doc__.strip())
    parser.add_argument("model", type=Path, help="model.onnx or model.engine")
    parser.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        print("error: --top-k must be at least 1", file=sys.stderr)
        return 2
    config = PredictConfig(args.model, args.images, args.top_k, args.backend, args.device)
    try:
        result = run_predict(config)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
