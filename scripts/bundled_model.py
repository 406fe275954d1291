"""Train, export, measure and bundle the demo's CIFAR-10 model.

    python scripts/bundled_model.py [--data ../shared/data/cifar10/cifar10.npz] [--epochs 20]

1. **Train** the searched cell ``benchmarks/panels/searched_cell.json`` (the 1,100-candidate
   one-shot search; plain and 1x3/3x1 convolutions and pooling, which run fast on CPUs) at
   ``2@240`` and 32 px on the CIFAR-10 training split: batch 128, SGD lr 0.1 cosine to 0,
   weight decay 5e-4, label smoothing 0.1, no auxiliary head, seed 0, in
   ``runs/bundled-cifar10/train``. An interrupted run resumes; a finished one is reused.
2. **Export** it with ``export.onnx --fp16 --int8`` (INT8 calibrated on CIFAR-10 training
   images); the export report times every precision and names the fastest one that agrees
   with fp32.
3. **Measure** every precision on the whole CIFAR-10 test split (10,000 images) through the
   torch-free serving pipeline (PIL image -> ``serve.preprocess`` -> ONNX Runtime), its
   batch-1 latency on this CPU (``serve.bench``: one thread pool as ONNX Runtime sets it,
   median of 3 s of runs after 50 warm-up runs), and the ten ``app/samples/cifar-*.png`` photos.
4. **Bundle** ``model.onnx``, the fastest precision when it is not fp32, ``export_report.json``
   and a ``MODEL.md`` card into ``serve/models/cifar10/`` (staged, then renamed into place),
   and write ``benchmarks/results/bundled_model.json``.

Needs the search extras (torch) and the CIFAR-10 copy; the bundled files it writes need
only ``nasdeploy[serve]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from search.core.errors import USER_ERRORS, report_user_error  # noqa: E402
from search.core.rundir import CHECKPOINT_NAME, EXPORT_REPORT_NAME, MODEL_ONNX_NAME  # noqa: E402

GENOTYPE = ROOT / "benchmarks" / "panels" / "searched_cell.json"
DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
WORK = ROOT / "runs" / "bundled-cifar10"
DEST = ROOT / "serve" / "models" / "cifar10"
RESULT = ROOT / "benchmarks" / "results" / "bundled_model.json"
SAMPLES = ROOT / "app" / "samples"
VARIANT = "2@240"
IMAGE_SIZE = 32
SETTINGS = {"batch": 128, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1, "auxiliary": False,
            "seed": 0}


def train(data: Path, epochs: int, out: Path) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run); the checkpoint's metrics and the wall time."""
    import torch

    from search.nn.checkpoint import read_checkpoint
    from search.space.genotype import load_genotype
    from search.training.final import FinalTrainSettings, train_genotype
    from search.training.loop import TrainConfig

    ckpt = out / CHECKPOINT_NAME
    state = read_checkpoint(ckpt) if ckpt.is_file() else None
    done = state is not None and state.get("metrics", {}).get("test_accuracy") is not None
    if not done:
        started = time.perf_counter()
        config = TrainConfig(epochs=epochs, batch_size=SETTINGS["batch"], lr=SETTINGS["lr"],
                             weight_decay=SETTINGS["weight_decay"],
                             label_smoothing=SETTINGS["label_smoothing"], seed=SETTINGS["seed"])
        settings = FinalTrainSettings(genotype=load_genotype(GENOTYPE), name="bundled-cifar10",
                                      variant=VARIANT, image_size=IMAGE_SIZE, dataset="cifar10",
                                      data_dir=str(data), train=config, auxiliary=SETTINGS["auxiliary"],
                                      out=str(out), resume=state is not None)
        train_genotype(settings, progress=sys.stderr.isatty())
        print(f"trained in {time.perf_counter() - started:.0f} s (this session)")
        state = read_checkpoint(ckpt)
    training = state["training"]
    seconds = sum(row.get("time_s", 0.0) for row in training["history"])
    return {"epochs": training["epochs"], "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(), "test_accuracy_pytorch": state["metrics"]["test_accuracy"],
            "history": training["history"]}


def export(train_dir: Path, data: Path) -> dict[str, Any]:
    """``export.onnx --fp16 --int8`` next to the checkpoint (skipped when it is up to date)."""
    from export.onnx_export import ExportConfig, export_model

    model, report = train_dir / MODEL_ONNX_NAME, train_dir / EXPORT_REPORT_NAME
    fresh = report.is_file() and model.stat().st_mtime >= (train_dir / CHECKPOINT_NAME).stat().st_mtime
    if not fresh:
        export_model(ExportConfig(source=str(train_dir), fp16=True, int8=True, calib_data="cifar10",
                                  data_dir=str(data)))
    return json.loads(report.read_text(encoding="utf-8"))


def test_accuracy(model: Path, data: Path) -> dict[str, Any]:
    """Top-1 of one ONNX file on the whole test split, through the serving pipeline, and its latency."""
    from PIL import Image

    from serve.bench import BenchConfig, bench_runtime
    from serve.preprocess import preprocess
    from serve.runtime import load_runtime

    runtime = load_runtime(model, "onnxruntime", "cpu")
    arrays = np.load(data)
    images, labels = arrays["x_test"], arrays["y_test"].astype(np.int64)
    correct = 0
    for start in range(0, len(images), 500):
        batch = preprocess([Image.fromarray(x) for x in images[start:start + 500]], runtime.info)
        correct += int((runtime.predict(batch).argmax(1) == labels[start:start + 500]).sum())
    timing = bench_runtime(runtime, BenchConfig(model=model, batch_sizes=(1,), warmup=50, iters=None,
                                                seconds=3.0))["results"][0]
    return {"file": model.name, "bytes": model.stat().st_size, "test_accuracy": correct / len(images),
            "test_images": len(images), "latency_ms": {k: timing[k] for k in ("p50_ms", "p90_ms", "iters")
                                                       if k in timing}}


def samples(model: Path) -> list[dict[str, Any]]:
    """The app's ten CIFAR-10 sample photos, classified as the demo classifies them."""
    from serve.preprocess import load_image
    from serve.runtime import classify, load_runtime

    runtime = load_runtime(model, "onnxruntime", "cpu")
    rows = []
    for path in sorted(SAMPLES.glob("cifar-*.png")):
        top = classify(runtime, [load_image(path)], k=1)[0].top[0]
        truth = path.stem.removeprefix("cifar-")
        rows.append({"image": path.name, "class": truth, "predicted": top[0],
                     "probability": round(float(top[1]), 4), "correct": top[0] == truth})
    return rows


def bundled_names(fastest: str) -> list[str]:
    """The fp32 model, the fastest precision when it is not fp32, the export report."""
    extra = [f"model.{fastest}.onnx"] if fastest in ("fp16", "int8") else []
    return [MODEL_ONNX_NAME, *extra, EXPORT_REPORT_NAME]


def bundle(train_dir: Path, names: list[str], card: str, dest: Path) -> None:
    """Copy ``names`` and the card (``MODEL.md``) into ``dest``: staged, then renamed into place."""
    staged = dest.with_name(dest.name + ".staged")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in names:
        shutil.copy2(train_dir / name, staged / name)
    (staged / "MODEL.md").write_text(card, encoding="utf-8")
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        dest.rename(old)
    staged.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def model_card(result: dict[str, Any]) -> str:
    """``MODEL.md``: what the bundled model is, how it was made, what it scores."""
    train, fp32 = result["training"], result["precisions"]["fp32"]
    lines = [
        "# The bundled CIFAR-10 model",
        "",
        "A NASNet-style network built from a searched cell (`benchmarks/panels/searched_cell.json`, the "
        "1,100-candidate one-shot search of docs/search.md, run on digits), stacked at "
        f"**{VARIANT}** for {IMAGE_SIZE} px CIFAR-10 images and trained on the 50,000 CIFAR-10 training "
        "images by `python scripts/bundled_model.py`.",
        "",
        f"- Test accuracy (10,000 CIFAR-10 test images, ONNX Runtime fp32): **{fp32['test_accuracy']:.2%}**",
        f"- Batch-1 latency on the machine that built it ({result['host']}): "
        f"p50 {fp32['latency_ms']['p50_ms']:.2f} ms",
        f"- Parameters {result['params']:,}; MACs {result['macs']:,} per image",
        f"- Training: {train['epochs']} epochs, batch {SETTINGS['batch']}, SGD lr {SETTINGS['lr']} cosine, "
        f"weight decay {SETTINGS['weight_decay']}, label smoothing {SETTINGS['label_smoothing']}, crop+flip "
        f"augmentation; {train['train_seconds'] / 3600:.1f} h on {train['threads']} CPU threads",
        "",
        "| file | precision | test accuracy | batch-1 p50 (ms) | size |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in result["precisions"].items():
        shipped = "" if row["file"] in result["bundled_files"] else " (not bundled)"
        lines.append(f"| `{row['file']}`{shipped} | {name} | {row['test_accuracy']:.2%} | "
                     f"{row['latency_ms']['p50_ms']:.2f} | {row['bytes'] / 1e6:.2f} MB |")
    lines += ["", "Data: CIFAR-10 (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html), "
              "from a JPEG-decoded copy; see app/samples/SOURCE.md.", ""]
    return "\n".join(lines)


def run(data: Path, epochs: int) -> dict[str, Any]:
    from search.runtime.host import cpu_model

    train_dir = WORK / "train"
    training = train(data, epochs, train_dir)
    report = export(train_dir, data)
    precisions = {}
    for name, file in (("fp32", MODEL_ONNX_NAME), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        if (train_dir / file).is_file():
            precisions[name] = test_accuracy(train_dir / file, data)
            print(f"{name}: test accuracy {precisions[name]['test_accuracy']:.4f}, batch-1 p50 "
                  f"{precisions[name]['latency_ms']['p50_ms']:.3f} ms")
    info = report["model_info"]
    result = {"variant": VARIANT, "image_size": IMAGE_SIZE, "genotype": str(GENOTYPE.relative_to(ROOT)),
              "settings": SETTINGS, "training": {k: v for k, v in training.items() if k != "history"},
              "history": training["history"], "params": info.get("params"), "macs": info.get("macs"),
              "fastest": report.get("precisions", {}).get("fastest", "fp32"), "precisions": precisions,
              "host": cpu_model(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    names = bundled_names(result["fastest"])
    result["bundled_files"] = [*names, "MODEL.md"]
    bundle(train_dir, names, model_card(result), DEST)
    result["samples"] = samples(DEST / MODEL_ONNX_NAME)
    hits = sum(row["correct"] for row in result["samples"])
    misses = ", ".join(f"{r['image']} -> {r['predicted']}" for r in result["samples"] if not r["correct"])
    print(f"samples: {hits}/{len(result['samples'])} CIFAR-10 photos right ({misses or 'no misses'})")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULT, json.dumps(result, indent=1) + "\n")
    print(f"bundled {', '.join(result['bundled_files'])} in {DEST.relative_to(ROOT)}; results in "
          f"{RESULT.relative_to(ROOT)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="CIFAR-10 .npz (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"error: {args.data} not found: the bundled model trains on the local CIFAR-10 copy",
              file=sys.stderr)
        return 2
    try:
        run(args.data, args.epochs)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
