"""Run artifacts: best-genotype selection, Pareto front, plots and summary."""

from __future__ import annotations

import json

from search.experiment.report import ReportContext, summary_markdown, write_report
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
