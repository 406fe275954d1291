"""Latency and throughput of a model on this machine, or of every model of a latency panel.

    python -m serve.bench MODEL [--backend auto] [--device auto] [--batch-sizes 1,8,32 | --batch N]
                                [--warmup 10] [--iters N | --duration 2s] [--json [FILE]]
    python -m serve.bench --panel DIR [--threads 1] [--backend auto] [--device auto] --json OUT
    python -m serve.bench --table MODEL [MODEL ...] [--out DIR] [--precisions fp32,fp16,int8]
                                [--threads 1] [--rounds 3] [--warmup 10] [--iters N | --duration 2s]

Inputs are random tensors of the model's shape: decoding and preprocessing are not timed.
A batch holds at most 4096 images (MAX_BATCH) and an input tensor of at most 2 GiB; larger
ones are refused before anything is allocated.
With --panel (a folder from `python -m search.latency panel`) every model is timed at batch 1
as the search times latency (median of 20 runs, p10/p90, timed again when the spread is wide),
on ONNX Runtime with --threads intra-op threads, or as fp16 engines with --backend tensorrt;
OUT is the measurements file `python -m search.latency fit` reads.
With --table (serve/table.py) every model (a file, an export folder, a search run or bundled)
and every precision its export holds is timed at batch 1 in interleaved rounds; the table of
size, parameters, MACs, depth, recorded accuracy and p50/p90 latency is printed as Markdown,
and --out DIR writes table.md, table.csv, table.json and accuracy_latency.png.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.runtime import panel as latency_panel
from search.runtime.host import cpu_model
from search.runtime.timing import measure
from search.space.card import MAX_BATCH
from serve import table, table_render
from serve.errors import ServeError
from serve.runtime import BACKENDS, DEVICES, Runtime, load_runtime

MIN_ITERS = 5
MAX_INPUT_BYTES = 2 * 1024**3
"""Largest input tensor of one timed batch (float32 bytes)."""
PANEL_REPEATS = 20
"""Timed runs per panel model without --iters (the search's latency repeats)."""
PANEL_ROUNDS = 1
TABLE_ROUNDS = 3
"""--rounds without the flag: one pass over a panel, three over the models of a table."""


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: batch sizes, warm-up runs, and iterations or seconds per size."""

    model: Path
    backend: str = "auto"
    device: str = "auto"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup: int = 10
    iters: int | None = None
    seconds: float = 2.0
    seed: int = 0


def run_bench(
    config: BenchConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Load the model and time every batch size; return a JSON-ready report."""
    runtime = load_runtime(config.model, config.backend, config.device)
    return bench_runtime(runtime, config, progress)


def bench_runtime(
    runtime: Runtime, config: BenchConfig, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Time every batch size of ``config`` on an already loaded ``runtime``.

    Raises:
        ServeError: A batch size above :data:`MAX_BATCH` or whose input would exceed
            :data:`MAX_INPUT_BYTES` (checked for every size before any is timed).
    """
    check_batch_sizes(config.batch_sizes, runtime.info.image_size)
    rng = np.random.default_rng(config.seed)
    results = []
    for n in config.batch_sizes:
        if runtime.fits_batch(n):
            results.append(bench_batch(runtime, n, config, rng))
        else:
            results.append({"batch_size": n, "skipped": skip_reason(runtime)})
        if progress:
            progress(n)
    info = runtime.info
    return {
        "model": str(runtime.path),
        "model_info": {
            "scale": info.scale,
            "image_size": info.image_size,
            "precision": info.precision,
            "params": info.params,
            "macs": info.macs,
        },
        "runtime": runtime.describe(),
        "host": host_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "results": results,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def bench_batch(
    runtime: Runtime, n: int, config: BenchConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Warm up, then time ``runtime.predict`` on an ``n``-image batch.

    Timed by :func:`search.runtime.timing.measure`, the timer the search's latency meter
    uses: ``--iters`` runs exactly that many; ``--duration`` runs at least ``MIN_ITERS`` and
    stops once the time is spent (the warm-up then stops after half of it).
    """
    size = runtime.info.image_size
    batch = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    timed = config.iters is None
    result = measure(lambda: runtime.predict(batch), warmup=config.warmup, repeats=config.iters,
                     min_repeats=MIN_ITERS, max_time_s=config.seconds if timed else None,
                     batch_size=n)
    stats = result.stats
    return {
        "batch_size": n,
        "iters": stats.count,
        "p50_ms": stats.median_ms,
        "p90_ms": stats.p90_ms,
        "p99_ms": stats.p99_ms,
        "mean_ms": stats.mean_ms,
        "min_ms": stats.min_ms,
        "max_ms": stats.max_ms,
        "std_ms": stats.std_ms,
        "throughput_ips": result.throughput_ips,
        "skipped": None,
    }


def check_batch_sizes(sizes: tuple[int, ...], image_size: int) -> None:
    """Refuse batch sizes out of 1..MAX_BATCH or whose float32 input exceeds MAX_INPUT_BYTES."""
    for n in sizes:
        if not 1 <= n <= MAX_BATCH:
            raise ServeError(f"batch size {n} is out of range: 1 to {MAX_BATCH} images")
        needed = n * 3 * image_size * image_size * 4
        if needed > MAX_INPUT_BYTES:
            raise ServeError(f"batch {n} of 3x{image_size}x{image_size} float32 inputs needs "
                             f"{needed / 1024**3:.1f} GiB; the limit is {MAX_INPUT_BYTES / 1024**3:.0f} GiB "
                             "per batch")


def bench_batch_sizes(text: str) -> tuple[int, ...]:
    """``--batch-sizes``: comma-separated batch sizes, each 1 to :data:`MAX_BATCH`."""
    sizes = cli.batch_sizes(text)
    for n in sizes:
        if n > MAX_BATCH:
            raise argparse.ArgumentTypeError(f"batch size {n} is out of range: at most {MAX_BATCH} images")
    return sizes


def one_batch_size(text: str) -> int:
    """``--batch``: one batch size, 1 to :data:`MAX_BATCH`."""
    (size,) = bench_batch_sizes(str(cli.positive_int(text)))
    return size


def skip_reason(runtime: Runtime) -> str:
    """Why a batch size does not fit ``runtime``."""
    low, high = runtime.batch_limits
    if low == high:
        return f"model has a fixed batch size of {low}"
    return f"outside the model's batch range {low}..{high if high is not None else 'any'}"


def host_info() -> dict[str, Any]:
    """CPU model, cores, OS, Python and runtime library versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _cpu_model() -> str:
    return cpu_model()


def render(report: dict[str, Any], console: Any) -> None:
    """Print the report as a rich table (plain text when not a terminal)."""
    from rich.table import Table

    info, host = report["runtime"], report["host"]
    title = f"{Path(report['model']).name}: {info['backend']} / {info['provider']} ({info['precision']})"
    table = Table(title=title)
    for column in ("batch", "iters", "p50 ms", "p90 ms", "p99 ms", "ms/image", "images/s"):
        table.add_column(column, justify="right")
    for row in report["results"]:
        if row["skipped"]:
            table.add_row(str(row["batch_size"]), "-", "-", "-", "-", "-", "skipped")
            continue
        table.add_row(
            str(row["batch_size"]),
            str(row["iters"]),
            f"{row['p50_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['p50_ms'] / row['batch_size']:.3f}",
            f"{row['throughput_ips']:.1f}",
        )
    console.print(table)
    for row in report["results"]:
        if row["skipped"]:
            console.print(f"batch {row['batch_size']} skipped: {row['skipped']}", soft_wrap=True)
    console.print(
        f"host: {host['cpu']}, {host['cores']} cores, {host['os']}, "
        f"onnxruntime {host['onnxruntime']}",
        soft_wrap=True,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m serve.bench`` command line."""
    parser = cli.parser("python -m serve.bench", __doc__.strip())
    parser.add_argument("model", type=Path, nargs="?",
                        help="model.onnx or model.engine, a folder holding model.onnx, or a search run "
                             "directory (its selected trial's exported model); bundled: the CIFAR-10 model "
                             "shipped with nasdeploy; not with --panel or --table")
    parser.add_argument("--panel", type=Path, metavar="DIR",
                        help="time every model of a latency panel (python -m search.latency panel) at "
                             f"batch 1: --warmup runs, then {PANEL_REPEATS} timed runs (or --iters) within "
                             "--duration, median and p10/p90 per model")
    parser.add_argument("--table", nargs="+", metavar="MODEL",
                        help="time every model (file, export folder, search run or bundled) and each "
                             "precision its export holds at batch 1, in interleaved rounds, and print the "
                             "model table: size, params, MACs, depth, recorded accuracy, p50/p90 latency")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"--table only: write {', '.join(table_render.OUTPUT_NAMES)} into this folder "
                             "(each atomically)")
    parser.add_argument("--precisions", type=precision_list, metavar="P,P,...",
                        help="--table only: the precisions to time, from fp32,fp16,int8 (default: every "
                             "precision each model's export holds)")
    parser.add_argument("--no-plot", action="store_true",
                        help="--table only: skip accuracy_latency.png (it needs matplotlib)")
    parser.add_argument("--rounds", type=cli.positive_int, metavar="R",
                        help=f"passes over the models (--panel, --table; default: {PANEL_ROUNDS} with "
                             f"--panel, {TABLE_ROUNDS} with --table), each taking every model in turn, so a "
                             "busy spell falls on every model alike; --panel takes the median of per-round "
                             "medians, --table the p50/p90 of every run of every round")
    parser.add_argument("--threads", type=cli.positive_int, default=1, metavar="N",
                        help="ONNX Runtime intra-op threads per model (--panel and --table; one pinned "
                             "thread is the most repeatable figure on a shared multi-core machine)")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="runtime that runs the model; auto picks it by the file suffix")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the model runs; auto takes the best one available")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch-sizes", type=bench_batch_sizes, default="1,8,32", metavar="N,N,...",
                       help=f"batch sizes to time, in images, comma-separated (each at most {MAX_BATCH})")
    batch.add_argument("--batch", type=one_batch_size, metavar="N",
                       help=f"time one batch size, in images, at most {MAX_BATCH} (same as --batch-sizes N)")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=10, metavar="RUNS",
                        help="untimed runs per batch size (--table: per model and precision, before its "
                             "first round)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--iters", type=cli.positive_int, metavar="RUNS",
                       help="timed runs per batch size (--table: per model, precision and round; default: "
                            "timed by --duration)")
    limit.add_argument("--duration", "--seconds", dest="duration", type=cli.duration_s, default="2s",
                       metavar="TIME",
                       help=f"wall time of timed runs per batch size (at least {MIN_ITERS} runs; --table: "
                            "per model and precision, shared by the rounds), e.g. 2s or 500ms; a bare number "
                            "is seconds; --seconds is the old name")
    cli.add_json(parser, "the report")
    return parser


def precision_list(text: str) -> tuple[str, ...]:
    """``--precisions``: comma-separated names from fp32, fp16, int8."""
    try:
        return table.parse_precisions(text)
    except ServeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def table_settings(args: argparse.Namespace) -> table.TableSettings:
    """``--table``'s flags as :class:`serve.table.TableSettings` (combinations it refuses: one line)."""
    if args.model is not None or args.panel is not None:
        raise NasdeployError("give --table MODEL... alone, not with a MODEL or --panel")
    if args.backend == "tensorrt":
        raise NasdeployError("--table times ONNX models in ONNX Runtime; drop --backend tensorrt "
                             "(--device tensorrt uses ONNX Runtime's TensorRT provider)")
    if args.batch is not None:
        raise NasdeployError("--table times batch 1; drop --batch")
    return table.TableSettings(precisions=args.precisions, threads=args.threads, device=args.device,
                               warmup=args.warmup, iters=args.iters, duration_s=args.duration,
                               rounds=args.rounds or TABLE_ROUNDS)


def run_table(args: argparse.Namespace) -> int:
    """``--table MODEL...``: one library call; progress on stderr, the table (or JSON) on stdout."""
    import sys

    settings = table_settings(args)
    result = table.make_table(args.table, settings, out=args.out, plot=not args.no_plot,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    if cli.emit_json(args.json, result.document):
        return 0
    print(table_render.to_markdown(result.document), end="")
    if result.written:
        print(f"wrote {', '.join(str(p) for p in result.written)}")
    return 0


def panel_timing(args: argparse.Namespace) -> latency_panel.PanelTiming:
    """How ``--panel`` times each model: ``--backend tensorrt`` (or ``auto`` where TensorRT and a
    GPU are usable) builds fp16 engines, otherwise ONNX Runtime on ``--device``."""
    backend = args.backend
    if backend == "auto":
        from search.runtime.tensorrt import missing_requirement

        backend = "tensorrt" if missing_requirement() is None else "onnxruntime"
    if backend == "tensorrt" and args.device == "cpu":
        raise NasdeployError("--backend tensorrt runs on the GPU; use --backend onnxruntime for --device cpu")
    return latency_panel.PanelTiming(
        backend=backend, device=args.device, threads=args.threads, warmup=args.warmup,
        repeats=args.iters or PANEL_REPEATS, max_time_s=None if args.iters else args.duration,
        rounds=args.rounds or PANEL_ROUNDS)


def run_panel(args: argparse.Namespace) -> int:
    """``--panel DIR``: time every model, one progress line each on stderr; write ``--json``."""
    import sys

    from rich.console import Console

    if args.model is not None:
        raise NasdeployError("give a MODEL or --panel DIR, not both")
    timing = panel_timing(args)
    measurements = latency_panel.measure_panel(
        args.panel, timing,
        lambda done, total, row: print(latency_panel.progress_line(done, total, row), file=sys.stderr,
                                       flush=True))
    if args.json not in (None, cli.STDOUT):
        latency_panel.write_measurements(args.json, measurements)
    elif cli.emit_json(args.json, measurements):
        return 0
    render_panel(measurements, Console())
    return 0


def render_panel(measurements: dict[str, Any], console: Any) -> None:
    """The panel's measurements as a table."""
    from rich.table import Table

    device = measurements["device"]
    table = Table(title=f"latency panel: {device['runtime']} {device['runtime_version']} / "
                        f"{device['provider']} ({device['precision']}, threads {device['threads']})")
    for column in ("model", "M MACs", "median ms", "p10 ms", "p90 ms", "runs"):
        table.add_column(column, justify="right")
    for row in measurements["results"]:
        table.add_row(row["id"], f"{row['macs'] / 1e6:.1f}", f"{row['median_ms']:.3f}",
                      f"{row['p10_ms']:.3f}", f"{row['p90_ms']:.3f}", str(row["samples"]))
    console.print(table)
    console.print(f"host: {device['host']}, {device['cpu']}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Time every batch size; print a table, or the report as JSON (``--json``)."""
    from rich.console import Console
    from rich.progress import Progress

    args = build_parser().parse_args(argv)
    if args.table is not None:
        try:
            return run_table(args)
        except USER_ERRORS as exc:
            return report_user_error(exc)
    table_only = [flag for flag, value in (("--out", args.out), ("--precisions", args.precisions),
                                           ("--no-plot", args.no_plot)) if value]
    if table_only:
        return report_user_error(NasdeployError(f"{', '.join(table_only)} belong to --table MODEL..."))
    if args.panel is not None:
        try:
            return run_panel(args)
        except USER_ERRORS as exc:
            return report_user_error(exc)
    if args.model is None:
        return report_user_error(NasdeployError("give a model file, or --panel DIR to time a latency panel"))
    sizes = (args.batch,) if args.batch else args.batch_sizes
    config = BenchConfig(args.model, args.backend, args.device, sizes,
                         args.warmup, args.iters, args.duration)
    try:
        runtime = load_runtime(config.model, config.backend, config.device)
        stderr = Console(stderr=True)
        with Progress(console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
            task = bar.add_task("benchmarking", total=len(config.batch_sizes))
            report = bench_runtime(runtime, config, progress=lambda n: bar.advance(task))
        if not cli.emit_json(args.json, report):
            render(report, Console())
    except USER_ERRORS as exc:
        return report_user_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
