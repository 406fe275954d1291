"""Re-ranking after a search: the best candidates trained again at higher fidelity.

The real tests train on digits: a history whose search scores have the wrong order (a
cell of identities scored 0.9, a cell of convolutions 0.5) is re-ranked with the real
proxy (3 epochs, 600 images, 2 seeds), which puts the convolutions first, so the saved
genotype changes. Interrupting the re-ranking and running it again continues from the
journal without touching ``trials.jsonl`` until the end.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from search.core.rundir import GENOTYPE_NAME, HISTORY_NAME, RERANK_NAME, SUMMARY_NAME
from search.evaluation.proxy import ChildSettings
from search.evaluation.reward import RewardConfig, mnas_reward
from search.experiment import rerank as rerank_module
from search.experiment.report import ReportContext, write_report
from search.experiment.rerank import (
    merge_reranked,
    rerank,
    rerank_candidates,
    rerank_lines,
    rerank_seeds,
    rerank_settings,
    rerank_summary,
)
from search.experiment.select import reselect
from search.experiment.session import SearchConfig
from search.space.genotype import Block, Cell, Genotype, load_genotype_file
from search.trials.history import TrialRecord, append_record, read_history, utc_now
from search.trials.selection import select_best

REWARD = RewardConfig(5.0)
CTX = ReportContext(5.0, "digits", None, {"reward": {"alpha": -0.07, "beta": -0.07}}, strategy="rl",
                    latency_device="cpu", target="1@48 (16 px)")
# the search's child: 1 epoch on 300 images; re-ranked: 3 epochs on 600 images, seeds 0 and 1
CHILD = ChildSettings(scale="1@24", epochs=1, train_size=300, device="cpu", seed=0)


def _cell(op_a: str, op_b: str) -> Cell:
    return Cell((Block((0, 1), (op_a, op_b), "add"), Block((1, 2), (op_a, op_b), "add")))


WEAK = Genotype(_cell("identity", "identity"), _cell("identity", "identity"))
STRONG = Genotype(_cell("dil_conv_3x3", "conv_3x3"), _cell("dil_conv_3x3", "conv_3x3"))
OTHER = Genotype(_cell("max_pool_3x3", "conv_1x1"), _cell("max_pool_3x3", "conv_1x1"))


def _record(trial: int, genotype: Genotype, accuracy: float, latency: float | None = 2.0,
            status: str = "ok", duplicate_of: int | None = None, **extra) -> TrialRecord:
    ok = status == "ok" and latency is not None
    reward = mnas_reward(accuracy, latency, REWARD) if ok else 0.0
    return TrialRecord(trial, "rl", genotype.to_dict(), accuracy, latency, 10**6, 10**4, reward,
                       bool(ok and latency <= REWARD.latency_budget_ms), status, None, 1.0, 0.5, 0.2,
                       utc_now(), duplicate_of, **extra)


def _wrong_order_run(run: Path) -> list[TrialRecord]:
    """A finished search whose proxy got the order wrong: the identity cell scored highest."""
    records = [_record(0, WEAK, 0.90), _record(1, STRONG, 0.50),
               _record(2, OTHER, 0.95, latency=9.0),            # over the 5 ms budget
               _record(3, WEAK, 0.90, duplicate_of=0)]          # the same network again
    run.mkdir(parents=True, exist_ok=True)
    for record in records:
        append_record(run / HISTORY_NAME, record)
    return records


@pytest.fixture(scope="module")
def digits():
    from search.data.datasets import load_dataset

    return load_dataset("digits", seed=0)


# ---------------------------------------------------------------- pure rules

def test_fidelity_is_longer_on_more_images_with_two_seeds():
    more = rerank_settings(CHILD, train_images=1294)
    assert (more.epochs, more.train_size, more.scale, more.seed) == (3, 600, "1@24", 0)
    assert rerank_settings(replace(CHILD, train_size=1000), 1294).train_size is None  # 2x is more than all
    assert rerank_settings(replace(CHILD, train_size=None), 1294).train_size is None
    assert rerank_seeds(7) == (7, 8)


def test_candidates_are_the_top_k_feasible_distinct_by_reward_with_the_search_choice():
    records = [_record(0, WEAK, 0.80, latency=1.0), _record(1, STRONG, 0.85, latency=4.9),
               _record(2, OTHER, 0.99, latency=9.0), _record(3, WEAK, 0.80, latency=1.0, duplicate_of=0),
               _record(4, STRONG, 0.60, latency=3.0),  # the same network as trial 1, lower reward
               _record(5, OTHER, 0.70, latency=1.0, status="failed")]
    assert [r.trial for r in rerank_candidates(records, 3)] == [0, 1]   # 2, 3, 4, 5 excluded
    assert rerank_candidates(records, 0) == []
    # by reward alone trial 0 (faster) leads; the search's own choice (trial 1, most accurate)
    # takes the last place, so re-ranking always compares it
    assert select_best(records, rerank=False).record.trial == 1
    assert [r.trial for r in rerank_candidates(records, 1)] == [1]


def test_selection_uses_rerank_scores_only_when_they_cover_the_plain_winner():
    a = _record(0, WEAK, 0.90, rerank_accuracy=0.30, rerank_reward=0.31, rerank_seeds=[0, 1])
    b = _record(1, STRONG, 0.50, rerank_accuracy=0.70, rerank_reward=0.72, rerank_seeds=[0, 1])
    c = _record(2, OTHER, 0.60)
    best = select_best([a, b, c])
    assert best.record.trial == 1 and best.reranked and "re-ranked" in best.note
    assert select_best([a, b, c], rerank=False).record.trial == 0
    d = _record(3, OTHER, 0.95)  # more accurate than any re-ranked one and never re-ranked
    assert select_best([a, b, c, d]).record.trial == 3 and not select_best([a, b, c, d]).reranked


def test_merge_averages_seeds_counts_a_failed_seed_as_zero_and_skips_repeats():
    from search.evaluation.proxy import AccuracyResult

    records = [_record(0, WEAK, 0.9), _record(1, STRONG, 0.5), _record(2, WEAK, 0.9, duplicate_of=0)]
    done = {(WEAK.key(), 0): AccuracyResult(0.4, "ok", None, 1.0, 5),
            (WEAK.key(), 1): AccuracyResult(0.0, "diverged", "nan", 1.0, 5),
            (STRONG.key(), 0): AccuracyResult(0.8, "ok", None, 1.0, 5)}  # seed 1 missing
    merged = merge_reranked(records, done, (0, 1), REWARD)
    assert merged[0].rerank_accuracy == pytest.approx(0.2) and merged[0].rerank_seeds == [0, 1]
    assert merged[0].rerank_reward == pytest.approx(mnas_reward(0.2, 2.0, REWARD))
    assert merged[1].rerank_accuracy is None and merged[2].rerank_accuracy is None


def test_old_trials_lines_load_and_rerank_fields_round_trip(tmp_path):
    path = tmp_path / HISTORY_NAME
    old = _record(0, WEAK, 0.9).to_dict()
    for name in ("rerank_accuracy", "rerank_reward", "rerank_seeds"):
        old.pop(name)
    path.write_text(json.dumps(old) + "\n")
    append_record(path, _record(1, STRONG, 0.5, rerank_accuracy=0.7, rerank_reward=0.72,
                                rerank_seeds=[0, 1]))
    first, second = read_history(path)
    assert first.rerank_accuracy is None and second.rerank_seeds == [0, 1]
    path.write_text(json.dumps({**old, "rerank_seeds": ["x"]}) + "\n" + json.dumps(old) + "\n")
    with pytest.raises(Exception, match="rerank_seeds"):
        read_history(path)


def test_search_select_recomputes_rerank_rewards_and_falls_back_when_they_do_not_cover(tmp_path):
    run = tmp_path / "run"
    records = [_record(0, WEAK, 0.90, rerank_accuracy=0.30, rerank_reward=0.31, rerank_seeds=[0, 1]),
               _record(1, STRONG, 0.50, rerank_accuracy=0.70, rerank_reward=0.72, rerank_seeds=[0, 1]),
               _record(2, OTHER, 0.95, latency=9.0)]
    run.mkdir()
    for record in records:
        append_record(run / HISTORY_NAME, record)
    (run / "config.json").write_text(json.dumps(SearchConfig(latency_budget="5ms", dataset="digits",
                                                             blocks=2).to_dict()))
    tighter = reselect(run, "4ms")
    assert tighter.selection.record.trial == 1 and tighter.selection.reranked
    assert tighter.selection.record.rerank_reward == pytest.approx(mnas_reward(0.70, 2.0, RewardConfig(4.0)))
    _, meta = load_genotype_file(run / GENOTYPE_NAME)
    assert meta["search_choice"] == 0 and meta["rerank_changed_winner"] is True
    looser = reselect(run, "10ms")  # trial 2 becomes the most accurate feasible one, never re-ranked
    assert looser.selection.record.trial == 2 and not looser.selection.reranked


# ---------------------------------------------------------------- real training on digits

def test_rerank_fixes_a_wrong_search_order_and_changes_the_saved_genotype(tmp_path, digits):
    run = tmp_path / "run"
    records = _wrong_order_run(run)
    assert select_best(records).record.trial == 0  # the search alone would save the identity cell
    stream = io.StringIO()
    result = rerank(run, records, digits, CHILD, REWARD, 3, stream=stream)

    assert result.candidates == [0, 1] and (result.trained, result.reused) == (4, 0)
    assert (result.search_choice, result.winner, result.changed) == (0, 1, True)
    weak, strong = result.records[0], result.records[1]
    assert strong.rerank_accuracy > weak.rerank_accuracy + 0.2, (weak.rerank_accuracy, strong.rerank_accuracy)
    assert strong.rerank_reward == pytest.approx(mnas_reward(strong.rerank_accuracy, 2.0, REWARD))
    assert (strong.accuracy, strong.reward) == (records[1].accuracy, records[1].reward)  # search's kept
    on_disk = read_history(run / HISTORY_NAME)
    assert on_disk == result.records
    assert [r.rerank_seeds for r in on_disk] == [[0, 1], [0, 1], None, None]
    assert len((run / RERANK_NAME).read_text().splitlines()) == 4
    printed = stream.getvalue()
    assert "re-ranking 2 candidates (trials 0, 1) at higher fidelity: 1@24, 3 epochs on 600" in printed
    assert "[rerank] 1/2 trial 0: val acc" in printed and "[rerank] 2/2 trial 1: val acc" in printed

    best = write_report(run, result.records, CTX)
    genotype, meta = load_genotype_file(run / GENOTYPE_NAME)
    assert best.record.trial == 1 and genotype == STRONG
    assert meta["trial"] == 1 and meta["accuracy"] == 0.5
    assert meta["rerank_accuracy"] == strong.rerank_accuracy
    assert meta["search_choice"] == 0 and meta["rerank_changed_winner"] is True
    assert meta["rerank_seeds"] == [0, 1] and "re-ranked" in meta["selection"]
    summary = (run / SUMMARY_NAME).read_text()
    assert "## Re-ranked at higher fidelity" in summary and "changed the winner to trial 1" in summary
    lines = rerank_lines(result.records)
    assert lines[-1] == "re-ranking changed the winner to trial 1 (the search alone chose trial 0)"
    assert rerank_summary(result.records)["changed"] is True


def test_rerank_interrupted_then_run_again_continues_without_touching_the_history(tmp_path, digits,
                                                                                  monkeypatch):
    run = tmp_path / "run"
    records = _wrong_order_run(run)
    before = (run / HISTORY_NAME).read_bytes()
    real = rerank_module.proxy_scorer

    def interrupting(data, settings):
        score, calls = real(data, settings), []

        def once(genotype, seed):
            calls.append(seed)
            if len(calls) == 2:
                raise KeyboardInterrupt  # Ctrl-C (or a kill) while the second child trains
            return score(genotype, seed)

        return once

    monkeypatch.setattr(rerank_module, "proxy_scorer", interrupting)
    with pytest.raises(KeyboardInterrupt):
        rerank(run, records, digits, CHILD, REWARD, 3, stream=io.StringIO())
    assert (run / HISTORY_NAME).read_bytes() == before, "trials.jsonl is rewritten only at the end"
    assert len((run / RERANK_NAME).read_text().splitlines()) == 1
    with open(run / RERANK_NAME, "a") as journal:  # a kill -9 in the middle of the next append
        journal.write('{"trial": 0, "key": "tor')
    monkeypatch.setattr(rerank_module, "proxy_scorer", real)

    result = rerank(run, read_history(run / HISTORY_NAME), digits, CHILD, REWARD, 3, stream=io.StringIO())
    assert (result.trained, result.reused) == (3, 1)
    assert (result.search_choice, result.winner) == (0, 1)
    assert read_history(run / HISTORY_NAME) == result.records
    again = rerank(run, result.records, digits, CHILD, REWARD, 3, stream=io.StringIO())
    assert (again.trained, again.reused) == (0, 4) and again.records == result.records


# ---------------------------------------------------------------- the search CLI

def test_rerank_more_than_the_trials_is_one_line_before_any_directory(capsys, tmp_path):
    from search.run import main

    out = tmp_path / "run"
    code = main(["--latency-budget", "5ms", "--trials", "2", "--rerank", "3", "--dataset", "digits",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "--rerank 3 is more than the 2 trials of the search" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as stop:
        main(["--latency-budget", "5ms", "--rerank", "-1"])
    assert stop.value.code == 2


TINY = ["--dataset", "digits", "--child-scale", "1@48", "--child-train-size", "200",
        "--target-variant", "1@48", "--blocks", "2", "--no-progress"]


@pytest.mark.slow
def test_search_interrupted_while_reranking_resumes_and_saves_the_reranked_winner(capsys, tmp_path,
                                                                                   monkeypatch):
    from search.run import main

    out = tmp_path / "run"
    real = rerank_module.proxy_scorer

    def interrupt(data, settings):
        def first(genotype, seed):
            raise KeyboardInterrupt

        return first

    monkeypatch.setattr(rerank_module, "proxy_scorer", interrupt)
    assert main(["--latency-budget", "50ms", "--trials", "3", "--rerank", "2", "--out", str(out),
                 *TINY]) == 130
    assert "continue with: python -m search.run --resume" in capsys.readouterr().err
    searched = read_history(out / HISTORY_NAME)
    assert len(searched) == 3 and all(r.rerank_accuracy is None for r in searched)
    assert (out / GENOTYPE_NAME).exists(), "the report is written when re-ranking is interrupted"

    monkeypatch.setattr(rerank_module, "proxy_scorer", real)
    assert main(["--resume", str(out), "--no-progress", "--json", str(tmp_path / "result.json")]) == 0
    captured = capsys.readouterr()
    records = read_history(out / HISTORY_NAME)
    reranked = [r for r in records if r.rerank_accuracy is not None]
    feasible = {r.to_genotype().key() for r in records if r.feasible and r.duplicate_of is None}
    assert len(reranked) == min(2, len(feasible)) >= 1
    assert [(r.trial, r.accuracy, r.reward) for r in records] == \
        [(r.trial, r.accuracy, r.reward) for r in searched], "the search's scores are kept"
    winner = select_best(records)
    _, meta = load_genotype_file(out / GENOTYPE_NAME)
    result = json.loads((tmp_path / "result.json").read_text())
    assert meta["trial"] == winner.record.trial == result["selected"]["trial"] == result["rerank"]["winner"]
    assert meta["rerank_accuracy"] == winner.record.rerank_accuracy == result["selected"]["rerank_accuracy"]
    assert result["rerank"]["changed"] == (result["rerank"]["search_choice"] != winner.record.trial)
    assert f"re-ranked {len(reranked)} candidate" in captured.out
    assert ("re-ranking changed the winner" in captured.out) == result["rerank"]["changed"]
    assert "[rerank] 1/" in captured.err
