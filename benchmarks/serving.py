"""Serving under load: batch-1 against dynamic batching, 1, 8 and 32 concurrent clients.

Starts ``python -m serve.http`` twice on a free 127.0.0.1 port, once with ``--max-batch 1``
(one image per inference call) and once with dynamic batching (``--max-batch 32
--max-delay 2ms``), and drives each with ``serve.load`` (keep-alive clients in threads of
this process, every answer checked against the image classified alone). The model defaults
to the README's pipeline scale: NASNet-A at 2@192, 16 px, 10 classes (random-init weights,
exported here; serving speed does not depend on the weight values). Bounded: at most
--requests per level and 60 s per level; loopback only.

    python benchmarks/serving.py                       # ~2 min
    python benchmarks/serving.py --model runs/demo/train-trial4/model.onnx --requests 1000

Prints a table and writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.atomic import atomic_write_text  # noqa: E402
from serve.load import load_test, pattern_images  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
MODES = {"batch-1": ["--max-batch", "1"], "dynamic": ["--max-batch", "32", "--max-delay", "2ms"]}


def default_model(work: Path) -> Path:
    model = work / "model.onnx"
    if not model.is_file():
        subprocess.run([sys.executable, "-m", "export.onnx", "nasnet-a", "--variant", "2@192", "--image-size",
                        "16", "--num-classes", "10", "--out", str(work)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return model


def start(model: Path, flags: list[str], info: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "serve.http", str(model), "--port", "0",
                             "--json", str(info), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if info.is_file() and info.stat().st_size:
            return proc, json.loads(info.read_text())["url"]
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("error: the server did not start within 60 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model to serve (default: NASNet-A 2@192, 16 px)")
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    work = ROOT / "runs" / "bench-serving"
    model = args.model or default_model(work)
    images = pattern_images(8, 16)
    rows: list[dict[str, Any]] = []
    for mode, flags in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start(model, flags, Path(tmp) / "info.json")
            try:
                print(f"{mode} ({' '.join(flags)}) at {url}", flush=True)
                result = load_test(url, args.concurrency, args.requests, images, 60.0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        rows += [{"mode": mode, "flags": flags, **level} for level in result["levels"]]
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    top = max(args.concurrency)
    ratio = by[("dynamic", top)]["throughput_rps"] / max(by[("batch-1", top)]["throughput_rps"], 1e-9)
    lines = ["| mode | clients | req/s | p50 ms | p90 ms | p99 ms | mean batch | non-200 | wrong |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bad = sum(v for k, v in r["statuses"].items() if k != "200")
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_size'] or 1:.1f} | {bad} | "
                     f"{r['wrong_answers']} |")
    print("\n".join(lines))
    print(f"dynamic / batch-1 throughput at {top} clients: {ratio:.2f}x")
    atomic_write_text(RESULTS, json.dumps({
        "command": "python benchmarks/serving.py", "model": str(model), "requests_per_level": args.requests,
        "rows": rows, "throughput_ratio_at_max_clients": round(ratio, 2),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "note": "server and load clients share this host's cores"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
