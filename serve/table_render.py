"""The model table's renderings: Markdown, CSV, the accuracy-vs-latency plot, and the output folder.

Everything here reads the JSON-ready document :func:`serve.table.make_table` returns (or a
``table.json`` read back), so the command line, the app and a table loaded from disk render alike.
Torch-free; matplotlib is imported only to draw the plot.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.core.atomic import atomic_write_bytes
from serve.errors import ServeError

MD_NAME, CSV_NAME, JSON_NAME, PLOT_NAME = "table.md", "table.csv", "table.json", "accuracy_latency.png"
OUTPUT_NAMES = (MD_NAME, CSV_NAME, JSON_NAME, PLOT_NAME)
"""What ``--out DIR`` holds afterwards."""
MISSING = "–"
"""A cell whose value was not recorded or not timed."""


# --- tables -----------------------------------------------------------------------------


def _count(value: int | None) -> str:
    if value is None:
        return MISSING
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.1f} {suffix}" if value < 100 * threshold else \
                f"{value / threshold:.0f} {suffix}"
    return str(value)


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}%"


def table_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per model: the CSV's columns (numbers unformatted, ``None`` when unknown)."""
    rows = []
    for model in document["models"]:
        row = {"model": model["name"], "kind": model["kind"], "source": model["source"],
               "dataset": model["dataset"], "input_px": model["image_size"],
               "size_mb": round(model["size_mb"], 3), "params": model["params"],
               "params_source": model["params_source"], "macs": model["macs"],
               "macs_source": model["macs_source"], "depth": model["depth"]}
        for precision in document["precisions"]:
            entry = model["precisions"].get(precision) or {"missing": "not timed"}
            accuracy, same = entry.get("accuracy"), entry.get("accuracy_fp32_same_images")
            row[f"{precision}_accuracy"] = None if accuracy is None else round(accuracy, 6)
            row[f"{precision}_accuracy_images"] = entry.get("accuracy_images")
            if precision != "fp32":
                row[f"{precision}_accuracy_fp32_same_images"] = None if same is None else round(same, 6)
            for key in ("p50_ms", "p90_ms"):
                value = entry.get(key)
                row[f"{precision}_{key}"] = None if value is None else round(value, 4)
        rows.append(row)
    return rows


def to_csv(document: dict[str, Any]) -> str:
    """The table as CSV: one row per model, empty cells for what is unknown."""
    rows = table_rows(document)
    out = io.StringIO()
    names = list(rows[0]) if rows else ["model"]
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def _cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _graph_count(model: dict[str, Any], key: str) -> str:
    text = _count(model[key])
    return text + " (ONNX)" if model[f"{key}_source"] == "ONNX graph" else text


def markdown_header(document: dict[str, Any]) -> list[str]:
    """The columns of :func:`to_markdown`."""
    header = ["model", "kind", "source", "dataset", "input", "size MB", "params", "MACs", "depth"]
    for precision in document["precisions"]:
        header += [f"{precision} acc", f"{precision} p50 ms", f"{precision} p90 ms"]
    return header


def markdown_cells(document: dict[str, Any]) -> list[list[str]]:
    """The formatted cells of :func:`to_markdown`, one list per model (also the app's table)."""
    rows = []
    for model in document["models"]:
        cells = [model["name"], model["kind"], model["source"], model["dataset"] or MISSING,
                 f"{model['image_size']} px", f"{model['size_mb']:.2f}", _graph_count(model, "params"),
                 _graph_count(model, "macs"), str(model["depth"])]
        for precision in document["precisions"]:
            entry = model["precisions"].get(precision) or {}
            accuracy = _percent(entry.get("accuracy"))
            if entry.get("accuracy") is not None and entry.get("accuracy_images"):
                same = entry.get("accuracy_fp32_same_images")
                accuracy += f" (n={entry['accuracy_images']}" + (
                    f"; fp32 {_percent(same)})" if same is not None else ")")
            cells += [accuracy, _ms(entry.get("p50_ms")), _ms(entry.get("p90_ms"))]
        rows.append(cells)
    return rows


def describe_timing(document: dict[str, Any]) -> str:
    """One line: where and how the latencies were measured."""
    host, timing = document["host"], document["timing"]
    runs = f"{timing['iters']} runs" if timing["iters"] else f"{timing['duration_s']:g} s of runs"
    threads, rounds = timing["threads"], timing["rounds"]
    return (f"Batch-1 latency on {host['cpu']} ({host['cores']} cores), ONNX Runtime {host['onnxruntime']} "
            f"{timing['provider']}, {threads} intra-op thread{'s' if threads != 1 else ''}; {runs} per "
            f"model and precision over {rounds} interleaved round{'s' if rounds != 1 else ''}"
            f" ({document['created']}).")


def to_markdown(document: dict[str, Any]) -> str:
    """The table as Markdown: a line on the timing, the table and the column definitions."""
    header = markdown_header(document)
    lines = [describe_timing(document), "",
             "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i < 4 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in markdown_cells(document)]
    lines += ["", *(f"- **{name}**: {text}" for name, text in document["definitions"].items())]
    missing = [f"{m['name']} ({m['source']}): {p} {e['missing']}" for m in document["models"]
               for p, e in m["precisions"].items() if "missing" in e]
    lines.append(f"- **{MISSING}**: not recorded, or the model's export holds no such precision"
                 + ("; " + "; ".join(missing) if missing else ""))
    return "\n".join(lines) + "\n"


# --- the plot -------------------------------------------------------------------------------

STYLES = {
    "searched": {"marker": "*", "s": 260, "color": "#d62728", "zorder": 4},
    "baseline": {"marker": "o", "s": 70, "color": "#1f77b4", "zorder": 3},
    "reference": {"marker": "s", "s": 70, "color": "#7f7f7f", "zorder": 3},
    "other": {"marker": "D", "s": 50, "color": "#bcbd22", "zorder": 3},
}


def plot_point(model: dict[str, Any], columns: Sequence[str]) -> tuple[str, float, float] | None:
    """``(precision, p50 ms, accuracy)`` a model is plotted at: fp32 when it has both, else the
    first precision that has; ``None`` when none does."""
    for precision in columns:
        entry = model["precisions"].get(precision) or {}
        if entry.get("accuracy") is not None and entry.get("p50_ms") is not None:
            return precision, entry["p50_ms"], entry["accuracy"]
    return None


def require_matplotlib() -> None:
    """Refuse early (before any timing) when the plot cannot be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ServeError("the accuracy-latency plot needs matplotlib, which is not installed: pip install "
                         "matplotlib (the app and search extras bring it), or pass --no-plot")


def to_png(document: dict[str, Any]) -> bytes:
    """Accuracy against batch-1 p50 latency, searched cells as red stars, every point labelled."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: draws off-screen, leaves the backend alone

    columns = document["precisions"]
    datasets = {m["dataset"] for m in document["models"]}
    names = [m["name"] for m in document["models"]]
    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    seen_kinds: set[str] = set()
    skipped, latencies = [], []
    for model in document["models"]:
        point = plot_point(model, columns)
        if point is None:
            skipped.append(model["name"])
            continue
        precision, ms, accuracy = point
        latencies.append(ms)
        kind = model["kind"] if model["kind"] in ("searched", "baseline", "other") else "reference"
        label = {"searched": "searched cell", "baseline": "baseline", "reference": "reference cell",
                 "other": "other"}[kind]
        ax.scatter([ms], [100 * accuracy], label=None if kind in seen_kinds else label,
                   edgecolors="black", linewidths=0.6, **STYLES[kind])
        seen_kinds.add(kind)
        text = model["name"] + (f" ({model['source']})" if names.count(model["name"]) > 1 else "")
        text += f" [{precision}]" if precision != "fp32" else ""
        text += f" · {model['dataset']}" if len(datasets) > 1 else ""
        ax.annotate(text, (ms, 100 * accuracy), xytext=(6, 6), textcoords="offset points", fontsize=8,
                    fontweight="bold" if kind == "searched" else "normal",
                    color=STYLES[kind]["color"] if kind == "searched" else "black")
    if latencies and max(latencies) / max(min(latencies), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.25, y=0.12)  # room for the labels right of and above the points
    ax.set_xlabel("batch-1 p50 latency (ms, lower is better)")
    ax.set_ylabel("accuracy recorded at export (%)")
    timing = document["timing"]
    ax.set_title(f"Accuracy vs latency: {document['host']['cpu']}, ONNX Runtime {timing['provider']}, "
                 f"{timing['threads']} thread(s)", fontsize=9)
    ax.grid(True, alpha=0.3)
    if seen_kinds:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no model records an accuracy", ha="center", va="center", transform=ax.transAxes)
    if skipped:
        fig.text(0.01, 0.01, "not plotted (no recorded accuracy): " + ", ".join(skipped), fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if skipped else 0, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()



# --- the output folder --------------------------------------------------------------------


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """``out`` as a folder to write into (it may not exist yet); refuse a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ServeError(f"--out {folder} is a file: name a folder (the table writes "
                         f"{', '.join(OUTPUT_NAMES)} into it)")
    return folder


def render(document: dict[str, Any], plot: bool = True) -> dict[str, bytes]:
    """Every output file's bytes, by name (all rendered before any is written)."""
    files = {MD_NAME: to_markdown(document).encode("utf-8"), CSV_NAME: to_csv(document).encode("utf-8"),
             JSON_NAME: (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")}
    if plot:
        files[PLOT_NAME] = to_png(document)
    return files


def write_outputs(document: dict[str, Any], out: str | os.PathLike[str],
                  plot: bool = True) -> tuple[Path, ...]:
    """Write the renderings into ``out``, each atomically (temporary file, then rename)."""
    folder = check_out_dir(out)
    files = render(document, plot)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
        written.append(folder / name)
    return tuple(written)
