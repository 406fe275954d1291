"""CPU latency of the export paths: PyTorch eager vs ONNX Runtime fp32 vs ORT int8 (QDQ).

For NASNet-A and a second genotype (``--genotype runs/<run>/genotype.json`` for a searched
one; otherwise a fixed cheap cell defined below and labelled as such) at the ``cifar``
scale and a mobile scale, this measures batch-1 latency (median, p90) and batch-32
throughput, plus how far each runtime agrees with PyTorch / fp32 on real images.

Weights are random-init, with batch-norm statistics set by a few training-mode passes
over real images so activations have realistic ranges; the agreement figures are
therefore a sensitivity check of the conversions, not the accuracy of a trained model.
Repetitions adapt to a time budget per measurement (``--budget``), so the whole run stays
within ~10-15 minutes on 2 busy cores; ``--mobile-variant`` takes a smaller N@F if needed.

    python benchmarks/export.py                      # writes benchmarks/results/export.json
    python benchmarks/export.py --genotype runs/search1/genotype.json --budget 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.quantize import quantize_qdq  # noqa: E402
from export.verify import compare_outputs, run_session  # noqa: E402
from search.core.atomic import atomic_write_text  # noqa: E402
from search.nn.model import build_model  # noqa: E402
from search.nn.onnxio import export_onnx  # noqa: E402
from search.runtime.sessions import SessionSettings, create_session  # noqa: E402
from search.runtime.timing import Measurement, measure  # noqa: E402
from search.space.genotype import REFERENCE_GENOTYPES, Block, Cell, Genotype, load_genotype  # noqa: E402

DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# A hand-written cheap cell standing in for a searched one when no run is given: one
# separable conv per cell plus pools and skips. It was NOT found by a search.
CHEAP_FIXED = Genotype(
    normal=Cell((Block((1, 0), ("sep_conv_3x3", "identity")),
                 Block((0, 1), ("avg_pool_3x3", "identity")),
                 Block((2, 3), ("max_pool_3x3", "identity")),
                 Block((1, 2), ("sep_conv_3x3", "avg_pool_3x3")))),
    reduce=Cell((Block((1, 0), ("max_pool_3x3", "sep_conv_3x3")),
                 Block((2, 1), ("avg_pool_3x3", "identity")),
                 Block((0, 3), ("max_pool_3x3", "identity")),
                 Block((3, 1), ("sep_conv_3x3", "identity")))),
)


@dataclass(frozen=True)
class Budget:
    """Timing budget per measurement: ``low`` to ``high`` reps, stopping once ``seconds`` are spent."""

    seconds: float
    b1_reps: tuple[int, int] = (5, 100)
    b32_reps: tuple[int, int] = (2, 20)


def timed(fn: Callable[[], Any], seconds: float, low: int, high: int) -> Measurement:
    """One warm-up, then ``low`` to ``high`` timed runs of ``fn`` within about ``seconds``.

    Timed by :func:`search.runtime.timing.measure`, the timer the search uses.
    """
    return measure(fn, warmup=1, repeats=high, min_repeats=low, max_time_s=seconds)


def latency(fn1: Callable[[], Any], fn32: Callable[[], Any], budget: Budget) -> dict[str, float]:
    """Batch-1 median/p90 and batch-32 throughput of one runtime."""
    b1 = timed(fn1, budget.seconds, *budget.b1_reps).stats
    b32 = timed(fn32, budget.seconds, *budget.b32_reps).stats
    return {"b1_median_ms": b1.median_ms, "b1_p90_ms": b1.p90_ms, "b1_reps": b1.count,
            "b32_median_ms": b32.median_ms, "b32_images_per_s": 32_000.0 / b32.median_ms,
            "b32_reps": b32.count}


def real_images(count: int, size: int, source: Path) -> tuple[np.ndarray, str]:
    """``count`` normalised CIFAR-10 test images at ``size`` px (digits if CIFAR is absent)."""
    if source.is_file():
        with np.load(source) as data:
            raw = torch.from_numpy(data["x_test"][:count]).permute(0, 3, 1, 2).float() / 255.0
        name = "CIFAR-10 test"
    else:
        from sklearn.datasets import load_digits

        gray = torch.from_numpy(load_digits().images[:count] / 16.0).float().unsqueeze(1)
        raw, name = gray.expand(-1, 3, -1, -1), "sklearn digits"
    raw = torch.nn.functional.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((raw - mean) / std).numpy().astype(np.float32), name


def settle_batchnorm(model: torch.nn.Module, images: np.ndarray) -> None:
    """Set BN running statistics from real images (cumulative average), then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(torch.from_numpy(images[start:start + 16]))
    model.eval()


@dataclass
class Case:
    """One model to measure, with images for calibration and comparison."""

    label: str
    model: torch.nn.Module
    scale: str
    images: np.ndarray
    calib: np.ndarray
    labels: np.ndarray | None
    source: str
    weights: str
    genotype: dict[str, Any]


def random_case(label: str, genotype: Genotype, scale: str, args: argparse.Namespace) -> Case:
    """Random-init weights, BN statistics settled on real images."""
    model = build_model(genotype, scale, num_classes=10)
    size = model.scale.image_size
    big = size > 64
    images, source = real_images(args.eval_images_mobile if big else args.eval_images, size, args.data)
    settle_batchnorm(model, images[: 16 if big else 64])
    return Case(label, model, scale, images, images[: 16 if big else 64], None, source,
                "random-init, BN statistics from real images", genotype.to_dict())


def checkpoint_case(path: Path, args: argparse.Namespace) -> Case:
    """A trained checkpoint, compared on its dataset's held-out split (with accuracy)."""
    from export.onnx_export import LoadedModel, model_card
    from export.quantize import load_images
    from search.nn.checkpoint import load_checkpoint

    model, spec, _ = load_checkpoint(path)
    info = model_card(LoadedModel(model, spec, path.parent.name, True))
    data = load_images(spec.dataset or "digits", None, info, 64, 1000)
    return Case(f"trained:{path.parent.name}", model, spec.scale, data.eval_x, data.calib, data.eval_y,
                data.source, f"trained checkpoint ({spec.dataset})", spec.genotype.to_dict())


def bench_one(case: Case, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Export, quantize, time and compare one model."""
    model, images = case.model, case.images
    size = model.scale.image_size
    stem = f"{len(list(tmp.iterdir()))}"
    fp32, int8 = tmp / f"{stem}.onnx", tmp / f"{stem}.int8.onnx"
    export_onnx(model, fp32, size)
    quantize_qdq(fp32, int8, case.calib)
    threads = args.threads
    torch.set_num_threads(threads)
    x1, x32 = images[:1], np.resize(images, (32, *images.shape[1:]))
    t1, t32 = torch.from_numpy(x1), torch.from_numpy(x32)
    settings = SessionSettings(device="cpu", threads=threads)
    sessions = {"ort_fp32": create_session(fp32, settings), "ort_int8": create_session(int8, settings)}
    budget = Budget(args.budget)
    with torch.no_grad():
        rows = {"pytorch": latency(lambda: model(t1), lambda: model(t32), budget)}
        reference = torch.cat([model(torch.from_numpy(images[i:i + 32])) for i in range(0, len(images), 32)])
    for name, session in sessions.items():
        rows[name] = latency(lambda s=session: s.run(None, {"input": x1}),
                             lambda s=session: s.run(None, {"input": x32}), budget)
    ref = reference.numpy()
    fp32_out = run_session(sessions["ort_fp32"], images)
    int8_out = run_session(sessions["ort_int8"], images)
    agreement: dict[str, Any] = {"ort_fp32_vs_pytorch": compare_outputs(ref, fp32_out),
                                 "ort_int8_vs_ort_fp32": compare_outputs(fp32_out, int8_out),
                                 "images": len(images), "image_source": case.source}
    if case.labels is not None:
        agreement["accuracy"] = {name: float((out.argmax(1) == case.labels).mean())
                                 for name, out in (("pytorch", ref), ("ort_fp32", fp32_out),
                                                   ("ort_int8", int8_out))}
    return {"genotype": case.label, "scale": case.scale, "notation": model.scale.notation,
            "image_size": size, "weights": case.weights, "latency": rows, "agreement": agreement,
            "size_mb": {"fp32": fp32.stat().st_size / 1e6, "int8": int8.stat().st_size / 1e6},
            "genotype_json": case.genotype}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results."""
    lines = ["| genotype | scale | runtime | b1 median ms | b1 p90 ms | b32 img/s | agreement |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        agree = r["agreement"]
        notes = {"pytorch": "reference",
                 "ort_fp32": f"max abs err {agree['ort_fp32_vs_pytorch']['max_abs_error']:.1e}",
                 "ort_int8": f"top-1 {agree['ort_int8_vs_ort_fp32']['top1_agreement']:.3f} vs fp32 "
                             f"({agree['images']} imgs)"}
        if "accuracy" in agree:
            notes = {k: f"{v}; accuracy {agree['accuracy'][k]:.3f}" for k, v in notes.items()}
        for runtime, lat in r["latency"].items():
            where = f"{r['scale']} ({r['notation']}, {r['image_size']} px)"
            lines.append(f"| {r['genotype']} | {where} | {runtime} | {lat['b1_median_ms']:.1f} "
                         f"| {lat['b1_p90_ms']:.1f} | {lat['b32_images_per_s']:.1f} | {notes[runtime]} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genotype", help="a searched genotype.json (default: a fixed cheap cell, labelled)")
    parser.add_argument("--mobile-variant", default="mobile",
                        help="mobile scale (default mobile = 4@1056 at 224 px)")
    parser.add_argument("--scales", default="cifar,mobile", help="comma list of cifar,mobile")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per latency measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1 is fastest on busy cores)")
    parser.add_argument("--eval-images", type=int, default=128, help="agreement images at small scales")
    parser.add_argument("--eval-images-mobile", type=int, default=32, help="agreement images at 224 px")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="also measure a trained checkpoint (repeatable), with accuracy")
    parser.add_argument("--data", type=Path, default=DEFAULT_CIFAR, help="CIFAR-10 .npz for real images")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    second = ("searched:" + Path(args.genotype).parent.name, load_genotype(args.genotype)) if args.genotype \
        else ("cheap-fixed (not searched)", CHEAP_FIXED)
    genotypes = [("nasnet-a", REFERENCE_GENOTYPES["nasnet-a"]), second]
    scales = [args.mobile_variant if s == "mobile" else s for s in args.scales.split(",")]
    cases: list[tuple[str, Callable[[], Case]]] = [
        (f"{label} @ {scale}", lambda label=label, genotype=genotype, scale=scale:
         random_case(label, genotype, scale, args))
        for scale in scales for label, genotype in genotypes]
    cases += [(f"checkpoint {path}", lambda path=path: checkpoint_case(path, args))
              for path in args.checkpoint]
    results, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for title, make in cases:
            print(f"[{time.perf_counter() - started:6.0f}s] {title} ...", flush=True)
            results.append(bench_one(make(), args, Path(tmp)))
    command = "python benchmarks/export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "export", "command": command.strip(),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": args.threads, "load_avg_at_end": os.getloadavg()},
              "versions": {"torch": torch.__version__, "onnxruntime": _ort_version()},
              "budget_s": args.budget,
              "wall_time_s": round(time.perf_counter() - started, 1), "results": results}
    atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.json} in {report['wall_time_s']:.0f} s")
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
