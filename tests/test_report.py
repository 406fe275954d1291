"""Run artifacts: best-genotype selection, Pareto front, plots and summary.

Plots are checked on the Figure the report saves (titles, labels, legend and tick
positions after a draw), not by reading PNGs.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from matplotlib.transforms import Bbox

from search.experiment.report import (
    ReportContext,
    describe_target,
    pareto_figure,
    reward_figure,
    summary_markdown,
    write_report,
)
from search.space.genotype import REFERENCE_GENOTYPES, load_genotype_file
from search.space.searchspace import SearchSpace
from search.trials.history import TrialRecord, utc_now
from search.trials.selection import pareto_front, select_best

SPACE = SearchSpace(2)


def _rec(trial: int, acc: float, lat: float | None, feasible: bool, status: str = "ok",
         duplicate_of: int | None = None) -> TrialRecord:
    genotype = SPACE.decode([trial % 2] * len(SPACE.decisions()))
    return TrialRecord(trial, "rl", genotype.to_dict(), acc, lat, 10**6 * (trial + 1),
                       1000 * (trial + 1), acc * 0.9, feasible, status,
                       None if status == "ok" else "boom", 1.0, 0.5, 0.2, utc_now(),
                       duplicate_of)


RECORDS = [
    _rec(0, 0.80, 4.0, True),
    _rec(1, 0.85, 4.5, True),
    _rec(2, 0.95, 9.0, False),
    _rec(3, 0.70, 2.0, True),
    _rec(4, 0.75, 3.0, True),   # dominated by nothing faster with more accuracy? 3 < 4: kept
    _rec(5, 0.60, 5.0, True),   # dominated by 0, 1, 4
    _rec(6, 0.99, None, False, status="failed"),
    _rec(7, 0.85, 4.5, True, duplicate_of=1),
]


def test_selects_the_most_accurate_feasible_candidate():
    best = select_best(RECORDS)
    assert best is not None and best.feasible and best.record.trial == 1
    assert "meet the budget" in best.note


def test_falls_back_to_the_fastest_and_says_so_when_nothing_is_feasible():
    records = [_rec(0, 0.9, 8.0, False), _rec(1, 0.5, 6.0, False),
               _rec(2, 0.99, None, False, status="failed")]
    best = select_best(records)
    assert best is not None and not best.feasible and best.record.trial == 1
    assert best.note.startswith("NO candidate met the budget")
    text = summary_markdown(records, ReportContext(5.0, "digits"), best)
    assert "NO candidate met the budget" in text


def test_fallback_skips_children_that_did_not_train():
    records = [_rec(0, 0.0, 3.0, False, status="diverged"), _rec(1, 0.8, 7.0, False),
               _rec(2, 0.0, 2.0, False, status="failed")]
    best = select_best(records)
    assert best is not None and best.record.trial == 1
    only_broken = [_rec(0, 0.0, 3.0, False, status="diverged")]
    assert select_best(only_broken).record.trial == 0


def test_no_evaluated_candidate_selects_nothing():
    assert select_best([_rec(0, 0.0, None, False, status="failed")]) is None


def test_pareto_front_keeps_only_non_dominated_points_fastest_first():
    front = pareto_front(RECORDS)
    assert [r.trial for r in front] == [3, 4, 0, 1, 2]


def test_write_report_writes_every_artifact(tmp_path):
    ctx = ReportContext(5.0, "digits", None, {"config": {"strategy": "rl"}})
    best = write_report(tmp_path, RECORDS, ctx)
    assert best is not None
    for name in ("genotype.json", "pareto.json", "pareto.png", "reward.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    genotype, meta = load_genotype_file(tmp_path / "genotype.json")
    assert genotype == RECORDS[1].to_genotype()
    assert meta["accuracy"] == 0.85 and meta["latency_ms"] == 4.5 and meta["feasible"] is True
    assert meta["macs"] == 2 * 10**6 and meta["params"] == 2000 and meta["dataset"] == "digits"
    assert meta["search"]["config"]["strategy"] == "rl"
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert [p["trial"] for p in pareto["front"]] == [3, 4, 0, 1, 2]
    assert pareto["latency_budget_ms"] == 5.0
    for name in ("pareto.png", "reward.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "| 1 | 0.8500 | 4.500 |" in summary and "trial 6: failed: boom" in summary
    assert not list(tmp_path.glob(".*.tmp"))


def test_reference_genotype_outside_the_space_still_reports(tmp_path):
    record = _rec(0, 0.9, 1.0, True)
    record.genotype = REFERENCE_GENOTYPES["nasnet-a"].to_dict()
    best = write_report(tmp_path, [record], ReportContext(5.0, "digits"))
    assert best is not None
    assert load_genotype_file(tmp_path / "genotype.json")[0] == REFERENCE_GENOTYPES["nasnet-a"]


# ---------------------------------------------------------------- plots

CTX = ReportContext(5.0, "digits", None, {"reward": {"alpha": -0.07, "beta": -0.07}},
                    strategy="tpe", latency_device="cpu", target=describe_target("1@48", 16))


def _many(n: int, strategy: str = "tpe", seed: int = 0) -> list[TrialRecord]:
    """``n`` varied records: feasible, over budget, a few failed and repeated."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        lat = round(rng.uniform(1.0, 8.0), 3)
        acc = round(min(0.95, 0.5 + 0.04 * lat + rng.gauss(0, 0.04)), 4)
        record = _rec(t, acc, lat, lat <= 5.0)
        record.strategy = strategy
        record.genotype = SPACE.decode([rng.randrange(d.size) for d in SPACE.decisions()]).to_dict()
        if t % 9 == 4:
            record.status, record.accuracy, record.feasible, record.error = "failed", 0.0, False, "x"
        if t % 11 == 10:
            record = replace(out[t - 3], trial=t, duplicate_of=out[t - 3].trial)
        out.append(record)
    return out


def _labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts if (t.get_gid() or "").startswith("trial-label")]


def _legend_text(fig) -> str:
    return " | ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


@pytest.mark.parametrize("build", [pareto_figure, reward_figure])
def test_titles_name_strategy_device_target_and_budget(build):
    fig = build(RECORDS, CTX, select_best(RECORDS))
    title = fig.axes[0].get_title()
    for part in ("tpe", "digits", "on cpu", "1@48 (16 px)", "budget 5 ms", "8 trials"):
        assert part in title, (part, title)


def test_title_falls_back_to_the_settings_and_the_records():
    ctx = ReportContext(5.0, "digits", 600 * 10**6,
                        {"config": {"latency_device": "cuda", "target_variant": "mobile"}})
    title = pareto_figure(RECORDS, ctx, None).axes[0].get_title()
    assert "rl search" in title and "on cuda" in title and "target mobile" in title
    assert "budget 5 ms and 600 M MACs" in title


def test_every_drawn_candidate_carries_its_trial_number():
    fig = pareto_figure(RECORDS, CTX, select_best(RECORDS))
    # trials 0-5 are measured; 7 repeats 1 (same point, "1×2"); 6 failed before timing
    assert sorted(_labels(fig)) == ["0", "1×2", "2", "3", "4", "5"]
    legend = _legend_text(fig)
    assert "selected: trial 1" in legend and "+1 failed before timing" in legend


def test_failed_candidates_with_a_latency_are_drawn_and_labelled_in_their_own_band():
    records = [*RECORDS[:6], _rec(6, 0.0, 3.5, False, status="diverged")]
    fig = pareto_figure(records, CTX, select_best(records))
    assert "6" in _labels(fig)
    legend = _legend_text(fig)
    assert "meets budget: 5" in legend and "over budget: 1" in legend
    assert "failed / diverged (bottom band): 1" in legend
    markers = {c.get_label().split(":")[0]: c.get_paths()[0] for c in fig.axes[0].collections
               if c.get_label() and not c.get_label().startswith("_")}
    assert len({tuple(p.vertices.ravel().round(3)) for p in markers.values()}) == len(markers)


def test_many_trials_label_only_the_front_and_the_selected_one():
    records = _many(60)
    best = select_best(records)
    fig = pareto_figure(records, CTX, best)
    expected = {r.trial for r in pareto_front(records)} | {best.record.trial}
    assert {int(t.split("×")[0]) for t in _labels(fig)} == expected
    assert "front and selected only" in _legend_text(fig)


def test_trial_labels_do_not_overlap_each_other():
    records = _many(25, seed=3)
    fig = pareto_figure(records, CTX, select_best(records))
    fig.draw_without_rendering()
    boxes = [t.get_window_extent() for t in fig.axes[0].texts
             if (t.get_gid() or "").startswith("trial-label")]
    assert len(boxes) > 15
    clashes = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
               if Bbox.intersection(a, b) is not None and Bbox.intersection(a, b).width > 1
               and Bbox.intersection(a, b).height > 1]
    assert not clashes


@pytest.mark.parametrize("build", [pareto_figure, reward_figure])
@pytest.mark.parametrize("n", [8, 60])
def test_legend_sits_outside_the_axes(build, n):
    records = RECORDS if n == 8 else _many(n)
    fig = build(records, CTX, select_best(records))
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())


def test_budget_line_is_drawn_and_labelled_or_pointed_to_when_far():
    fig = pareto_figure(RECORDS, CTX, None)
    ax = fig.axes[0]
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [5.0]
    assert "budget 5 ms" in [t.get_text() for t in ax.texts]
    far = pareto_figure(RECORDS, replace(CTX, latency_budget_ms=200.0), None).axes[0]
    assert far.get_xlim()[1] < 20 and "budget 200 ms →" in [t.get_text() for t in far.texts]


@pytest.mark.parametrize("n", [1, 3, 60])
def test_reward_plot_has_integer_trial_ticks(n):
    records = _many(n)
    fig = reward_figure(records, CTX, select_best(records))
    fig.draw_without_rendering()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_xlabel() == "trial"


def test_reward_plot_shows_best_so_far_and_the_selected_trial():
    best = select_best(RECORDS)
    legend = _legend_text(reward_figure(RECORDS, CTX, best))
    # rewards are 0.9 * accuracy: trial 2 (0.95, over budget) has the best reward
    assert "best reward so far (trial 2)" in legend and "selected: trial 1" in legend
    assert "hollow: repeated genotype: 1" in legend and "w = -0.07 within budget" in legend


def test_nsga2_gets_no_reward_plot_and_a_stale_one_is_removed(tmp_path):
    records = _many(12, strategy="nsga2")
    (tmp_path / "reward.png").write_bytes(b"stale")
    write_report(tmp_path, records, ReportContext(5.0, "digits"))
    assert not (tmp_path / "reward.png").exists()
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "summary.md").read_text()
    assert "no reward.png: nsga2 optimises accuracy and latency" in summary
    write_report(tmp_path, _many(12, strategy="tpe"), ReportContext(5.0, "digits"))
    assert (tmp_path / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert "reward.png (MnasNet reward per trial)" in (tmp_path / "summary.md").read_text()


def test_empty_and_all_failed_runs_still_plot(tmp_path):
    failed = [_rec(t, 0.0, None, False, status="failed") for t in range(3)]
    for records in ([], failed):
        write_report(tmp_path, records, CTX)
        assert (tmp_path / "pareto.png").stat().st_size > 0
        assert (tmp_path / "reward.png").stat().st_size > 0
