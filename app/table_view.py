"""The Model table tab: the models the app knows side by side, or a ``table.json`` read back.

Either **measure** the models of the runs folder and the bundled one here (one button press
times them with :func:`serve.table.make_table`, the library call behind
``python -m serve.bench --table``; the result is kept for the session, so reruns of the page
never time again), or **load** a ``table.json`` that command wrote (``--out DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import models
from app.views import friendly_errors, relative_label
from serve import table
from serve import table_render as render
from serve.bundled import BUNDLED_DIR, BUNDLED_NAME, is_bundled
from serve.errors import ServeError

MEASURE, LOAD = "Measure here", "Load a table.json"
STATE_KEY = "model_table"
MAX_DEFAULT = 6
"""Models preselected for measuring (the rest can be added)."""
APP_SETTINGS = table.TableSettings(threads=1, warmup=3, duration_s=0.6, rounds=3)
"""Lighter than the command's defaults: about 0.6 s of runs per model and precision."""
NO_MODELS = (
    "No ONNX models under `{root}` and no bundled model: export one with `python -m export.onnx RUN_DIR`, "
    "or load a `table.json` written by `python -m serve.bench --table MODEL... --out DIR`."
)


def table_candidates(root: str) -> dict[str, str]:
    """``{label: model argument}``: every export under ``root`` once (its fp32 file stands for its
    precisions) and the bundled model."""
    found: dict[str, str] = {}
    seen: set[Path] = set()
    for path in models.discover_models(root):
        if path.suffix.lower() != ".onnx":
            continue
        listed = table.listed_precisions(path.parent, table.export_report(path.parent))
        base = listed["fp32"] if path in listed.values() else path  # a sibling: its export's row
        if base.resolve() not in seen:
            seen.add(base.resolve())
            found[relative_label(base, root)] = str(base)
    if models.bundled_model() is not None and BUNDLED_DIR.resolve() not in {p.parent for p in seen}:
        found["bundled CIFAR-10 model"] = BUNDLED_NAME if is_bundled(BUNDLED_NAME) else str(BUNDLED_DIR)
    return found


def table_tab(root: str) -> None:
    """Measure the known models or load a ``table.json``; show the table and the plot."""
    st.caption("Every model side by side: file size, parameters, MACs, depth, the accuracy recorded at "
               "export and batch-1 p50/p90 latency of each precision measured on this machine (the table "
               "`python -m serve.bench --table MODEL... --out DIR` writes).")
    source = st.radio("Table", [MEASURE, LOAD], horizontal=True, label_visibility="collapsed")
    with friendly_errors("the model table"):
        document = _measured(root) if source == MEASURE else _loaded(root)
        if document is not None:
            show_table(document)


def _measured(root: str) -> dict[str, Any] | None:
    candidates = table_candidates(root)
    if not candidates:
        st.info(NO_MODELS.format(root=root), icon=":material/info:")
        return None
    picked = st.multiselect("Models", list(candidates), default=list(candidates)[:MAX_DEFAULT])
    if st.button("Measure", icon=":material/timer:", disabled=not picked):
        with st.spinner(f"Timing {len(picked)} model(s) at batch 1 on this machine…"):
            result = table.make_table([candidates[label] for label in picked], APP_SETTINGS)
        st.session_state[STATE_KEY] = result.document
    document = st.session_state.get(STATE_KEY)
    if document is None:
        st.caption("Press **Measure** to time the picked models here (a few seconds each).")
    return document


def _loaded(root: str) -> dict[str, Any] | None:
    found = models.discover_tables(root)
    picked = None
    if found:
        picked = st.selectbox("table.json under the runs folder", found,
                              format_func=lambda p: relative_label(p, root))
    typed = st.text_input("…or a path", placeholder="tables/table.json").strip()
    path = Path(typed).expanduser() if typed else picked
    if path is None:
        st.info(f"No `table.json` under `{root}`: write one with `python -m serve.bench --table MODEL... "
                f"--out {root}/table`, or type its path.", icon=":material/info:")
        return None
    resolved = path.resolve()
    return _read_table(str(resolved), resolved.stat().st_mtime_ns if resolved.is_file() else 0)


@st.cache_data(show_spinner=False, max_entries=8)
def _read_table(path: str, mtime_ns: int) -> dict[str, Any]:
    return table.read_table(path)


@st.cache_data(show_spinner=False, max_entries=8)
def _plot(document_json: str) -> bytes:
    return render.to_png(json.loads(document_json))


def show_table(document: dict[str, Any]) -> None:
    """The table (formatted like ``table.md``), the plot and the downloads."""
    st.caption(render.describe_timing(document))
    frame = pd.DataFrame(render.markdown_cells(document), columns=render.markdown_header(document))
    st.dataframe(frame, hide_index=True, width="stretch")
    with st.expander("Column definitions"):
        st.markdown("\n".join(f"- **{name}**: {text}" for name, text in document["definitions"].items()))
    text = json.dumps(document, sort_keys=True)
    try:
        st.image(_plot(text), caption="accuracy vs batch-1 p50 latency; searched cells are red stars",
                 width="stretch")
    except ServeError as exc:  # matplotlib missing: the table still shows
        st.warning(str(exc), icon=":material/warning:")
    left, right = st.columns(2)
    left.download_button("table.csv", render.to_csv(document), file_name=render.CSV_NAME, mime="text/csv")
    right.download_button("table.md", render.to_markdown(document), file_name=render.MD_NAME,
                          mime="text/markdown")
