"""INT8 that keeps its accuracy? PTQ of every node against mixed precision, per model and data.

For each (cell, scale, dataset) row: train the network with ``python -m search.train``
(cached under --work), then export it three ways with ``python -m export.onnx --int8``:
PTQ of every node (``--int8-agreement 1e-9``), the default mixed precision
(``--int8-agreement 0.99 --sensitivity``) and quantization-aware training (``--qat E``).
Reported: held-out accuracy and top-1 agreement with fp32 of each, the parts kept float,
and batch-1 latency of the four models on this CPU (ONNX Runtime, one thread, three
interleaved rounds in one process: median, with min and max). Cells: NASNet-A and the cell of
a real search (``benchmarks/panels/searched_cell.json``: the 1,100-candidate oneshot run on
digits); scales ``2@192`` and ``1@528`` (22 channels per op, mobile-like width);
datasets digits and CIFAR-10 (``../shared/data/cifar10/cifar10.npz``, skipped when absent).

    python benchmarks/int8.py                     # every row (CIFAR-10 rows take a while)
    python benchmarks/int8.py --rows digits       # only the rows whose name contains "digits"
    python benchmarks/int8.py --rows 2x192        # the 2@192 rows (CIFAR-10 1@528 is slow here)
    python benchmarks/int8.py table               # the table from the results so far

Resumable: a trained checkpoint under --work is reused, a finished row is not redone.
Writes benchmarks/results/int8.jsonl (one row per model) and benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.logged import run_logged  # noqa: E402
from search.core.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROWS_FILE = RESULTS / "int8.jsonl"
TABLE = RESULTS / "int8.json"
SEARCHED = ROOT / "benchmarks" / "panels" / "searched_cell.json"
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"

TRAINING = {
    "digits": {"epochs": 8, "image_size": 16, "train_size": None, "qat_epochs": 2},
    "cifar10": {"epochs": 3, "image_size": 32, "train_size": 10000, "qat_epochs": 1},
}
"""How each dataset's models are trained (CIFAR-10 briefly: a 10,000-image subset, 3 epochs) and
fine-tuned for QAT (on as many training images)."""
EXPORT = {"calib_size": 256, "eval_size": 1000, "agreement": 0.99}


def rows(cifar: Path) -> list[dict[str, Any]]:
    """Every benchmark row: cell x scale x dataset."""
    out = []
    for dataset in ("digits", "cifar10"):
        for cell, source in (("nasnet-a", "nasnet-a"), ("searched", str(SEARCHED))):
            for scale in ("2@192", "1@528"):
                out.append({"name": f"{cell}-{scale.replace('@', 'x')}-{dataset}", "cell": cell,
                            "source": source, "scale": scale, "dataset": dataset,
                            "data_dir": str(cifar) if dataset == "cifar10" else None})
    return out


def read_rows() -> list[dict[str, Any]]:
    if not ROWS_FILE.is_file():
        return []
    return [json.loads(line) for line in ROWS_FILE.read_text().splitlines() if line.strip()]


def export(folder: Path, row: dict[str, Any], out: Path, *flags: str) -> dict[str, Any]:
    """``export.onnx`` of the row's checkpoint into ``out`` with ``flags``; the int8 section."""
    cmd = [sys.executable, "-m", "export.onnx", str(folder / "checkpoint.pt"), "--out", str(out), "--int8",
           "--calib-size", str(EXPORT["calib_size"]), "--eval-size", str(EXPORT["eval_size"]), *flags]
    if row["data_dir"]:
        cmd += ["--data-dir", row["data_dir"]]
    run_logged(cmd, folder / "log.txt")
    return json.loads((out / "export_report.json").read_text())


def latencies(models: dict[str, Path], rounds: int = 3) -> dict[str, dict[str, float]]:
    """Batch-1 median latency of each model, interleaved rounds, one thread: median and spread."""
    from search.runtime.repeatable import interleaved_medians

    seen = interleaved_medians(models, rounds=rounds, threads=1, warmup=5, repeats=50, max_time_s=3.0)
    return {name: {"ms": round(sorted(v)[len(v) // 2], 3), "min": round(min(v), 3), "max": round(max(v), 3)}
            for name, v in seen.items()}


def measure(row: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train (or reuse) the row's model; export it three ways; time the four models."""
    folder = work / row["name"]
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    train = TRAINING[row["dataset"]]
    started = time.process_time()
    if not (folder / "checkpoint.pt").is_file():
        cmd = [sys.executable, "-m", "search.train", row["source"], "--dataset", row["dataset"],
               "--variant", row["scale"], "--image-size", str(train["image_size"]),
               "--epochs", str(train["epochs"]), "--out", str(folder), "--no-progress"]
        if row["data_dir"]:
            cmd += ["--data-dir", row["data_dir"]]
        if train["train_size"]:
            cmd += ["--train-size", str(train["train_size"])]
        run_logged(cmd, log)
    report = export(folder, row, folder, "--sensitivity", "--int8-agreement", str(EXPORT["agreement"]))
    ptq = export(folder, row, folder / "ptq", "--int8-agreement", "1e-9")["int8"]
    qat_flags = ["--qat", str(train["qat_epochs"])]
    if train["train_size"]:
        qat_flags += ["--qat-images", str(train["train_size"])]
    qat = export(folder, row, folder / "qat", *qat_flags)["int8"]
    section = report["int8"]
    mixed = section["mixed_precision"]
    written = section.get("written", True)
    models = {"fp32": folder / "model.onnx", "ptq": folder / "ptq" / "model.int8.onnx",
              "qat": folder / "qat" / "model.int8.onnx"}
    if written and mixed["float_parts"]:
        models["mixed"] = folder / "model.int8.onnx"
    return {
        **row, "training": train, "export": EXPORT,
        "params": report["model_info"].get("params"), "macs": report["model_info"].get("macs"),
        "samples": section.get("samples", ptq["samples"]),
        "fp32_accuracy": ptq["accuracy_fp32"],
        "ptq_accuracy": ptq["accuracy"], "ptq_agreement": ptq["top1_agreement"],
        "mixed_written": written,
        "mixed_accuracy": section.get("accuracy") if written else None,
        "mixed_agreement": section.get("top1_agreement") if written else None,
        "float_parts": mixed["float_parts"], "parts": mixed["parts"],
        "selection_agreement_all_nodes": mixed["all_nodes_agreement"],
        "qat_accuracy": qat["accuracy"], "qat_agreement": qat["top1_agreement"],
        "qat_epochs": train["qat_epochs"], "qat_seconds": qat["calibration"]["seconds"],
        "latency_ms": latencies(models),
        "cpu_seconds": round(time.process_time() - started, 1),
        "host": platform.node(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | data | params | fp32 acc | PTQ acc (agreement) | "
             "mixed acc (agreement), parts float | QAT acc (agreement) | ms fp32 / PTQ / mixed / QAT |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        lat = r["latency_ms"]
        ms = " / ".join(f"{lat[k]['ms']:.2f}" if k in lat else "–" for k in ("fp32", "ptq", "mixed", "qat"))
        if not r["mixed_written"]:
            mixed = "not written"
        elif r["float_parts"]:
            mixed = (f"{r['mixed_accuracy']:.3f} ({r['mixed_agreement']:.3f}), "
                     f"{len(r['float_parts'])} of {r['parts']}")
        else:
            mixed = f"= PTQ, 0 of {r['parts']}"
        lines.append(f"| {r['cell']} {r['scale']} | {r['dataset']} | {r['params']:,} | "
                     f"{r['fp32_accuracy']:.3f} | {r['ptq_accuracy']:.3f} ({r['ptq_agreement']:.3f}) | "
                     f"{mixed} | {r['qat_accuracy']:.3f} ({r['qat_agreement']:.3f}) | {ms} |")
    return "\n".join(lines)


def write_table() -> None:
    results = read_rows()
    atomic_write_text(TABLE, json.dumps({"command": "python benchmarks/int8.py", "training": TRAINING,
                                         "export": EXPORT, "rows": results,
                                         "cpu": platform.processor() or platform.machine()}, indent=2) + "\n")
    print(markdown(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=("run", "table"), default="run")
    parser.add_argument("--rows", default="", help="only rows whose name contains this")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-int8"),
                        help="trained models and exports")
    parser.add_argument("--data", default=str(DEFAULT_CIFAR), help="CIFAR-10 .npz")
    args = parser.parse_args(argv)
    if args.command == "run":
        cifar = Path(args.data)
        done = {r["name"] for r in read_rows()}
        for row in rows(cifar):
            if args.rows not in row["name"] or row["name"] in done:
                continue
            if row["dataset"] == "cifar10" and not cifar.is_file():
                print(f"skip {row['name']}: no CIFAR-10 at {cifar}", flush=True)
                continue
            print(f"{row['name']} ...", flush=True)
            result = measure(row, Path(args.work))
            with ROWS_FILE.open("a") as out:
                out.write(json.dumps(result) + "\n")
            print(f"  fp32 {result['fp32_accuracy']:.3f}, PTQ {result['ptq_accuracy']:.3f}, mixed "
                  f"{result['mixed_accuracy']} ({len(result['float_parts'])} parts float), QAT "
                  f"{result['qat_accuracy']:.3f}", flush=True)
    write_table()


if __name__ == "__main__":
    main()
