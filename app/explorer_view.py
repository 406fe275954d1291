"""The Search explorer tab: pick a run directory, browse its trials and Pareto front."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import models
from app.explorer import TABLE_COLUMNS, RunData, accuracy_latency_chart, load_run, reward_chart, summary
from app.views import friendly_errors, relative_label, show_cells

NO_RUNS = (
    "No search runs (folders with `trials.jsonl`) under `{root}`. Start one with "
    "`python -m search.run --latency-budget 5ms ...`, or point **Runs folder** in the sidebar elsewhere."
)


def explorer_tab(root: str, model_path: Path | None) -> None:
    """Run picker, headline numbers, charts, trial table and the chosen genotype."""
    runs = models.discover_runs(root)
    if not runs:
        st.info(NO_RUNS.format(root=root), icon=":material/info:")
        return
    default = _default_run(runs, model_path)
    run_dir = st.selectbox(
        "Run directory", runs, index=default, format_func=lambda p: relative_label(p, root)
    )
    with friendly_errors("reading the run"):
        data = load_run(run_dir)
        if not data.records:
            st.warning(f"`{run_dir}` has no finished trials yet.", icon=":material/hourglass_empty:")
            return
        _headline(data)
        _charts(data)
        _table(data)
        _genotype(data)


def _default_run(runs: list[Path], model_path: Path | None) -> int:
    """Index of the run holding the selected model (else the first run)."""
    if model_path is not None:
        parents = set(Path(model_path).expanduser().resolve().parents)
        for i, run in enumerate(runs):
            if run.resolve() in parents:
                return i
    return 0


def _headline(data: RunData) -> None:
    facts = summary(data)
    cols = st.columns(5)
    cols[0].metric("Trials", facts["trials"], help=f"{facts['ok']} finished ok")
    cols[1].metric("Meet the budget", facts["feasible"])
    cols[2].metric("On the Pareto front", facts["pareto"])
    best = facts["best_accuracy"]
    cols[3].metric("Best accuracy", "—" if best is None else f"{best:.1%}")
    budget = facts["budget_ms"]
    cols[4].metric("Latency budget", "—" if budget is None else f"{budget:g} ms")
    if facts["strategies"]:
        st.caption("Strategies: " + ", ".join(facts["strategies"]))


def _charts(data: RunData) -> None:
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Accuracy vs latency")
        st.altair_chart(accuracy_latency_chart(data.frame, data.budget_ms), width="stretch")
        note = "Hover a point for its trial; drag to pan, scroll to zoom."
        if data.chosen_trial is not None:
            note += f" ◆ = selected genotype (trial {data.chosen_trial})."
        if data.budget_ms is None:
            note += " No latency budget found in config.json / pareto.json."
        st.caption(note)
    with right:
        st.subheader("Reward over trials")
        st.altair_chart(reward_chart(data.frame), width="stretch")
        st.caption("Dots: reward per trial; orange: best so far.")


def _table(data: RunData) -> None:
    st.subheader("Trials")
    st.dataframe(
        data.frame[TABLE_COLUMNS],
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.4f"),
            "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.3f"),
            "reward": st.column_config.NumberColumn(format="%.4f"),
            "params": st.column_config.NumberColumn(format="localized"),
            "macs": st.column_config.NumberColumn("MACs", format="localized"),
            "wall_time_s": st.column_config.NumberColumn("wall time (s)", format="%.1f"),
        },
    )


def _genotype(data: RunData) -> None:
    st.subheader("Cells")
    trials = [int(t) for t in data.frame["trial"]]
    default = trials.index(data.chosen_trial) if data.chosen_trial in trials else len(trials) - 1
    trial = st.selectbox(
        "Show the cells of trial",
        trials,
        index=default,
        format_func=lambda t: f"{t} (selected genotype)" if t == data.chosen_trial else str(t),
    )
    if trial == data.chosen_trial and data.chosen is not None:
        meta = data.chosen.get("metadata") or {}
        if meta.get("selection"):
            st.caption(f"genotype.json: {meta['selection']}.")
        show_cells(data.chosen, title=None)
        return
    record = next(r for r in data.records if r.trial == trial)
    show_cells(record.genotype, title=None)
