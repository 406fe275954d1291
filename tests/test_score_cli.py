"""``python -m search.score``: genotypes scored per seed with a search's evaluator; bad input in one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from search.core.rundir import SUPERNET_NAME
from search.evaluation.proxy import AccuracyResult, ChildSettings, evaluate_child
from search.experiment.score import ScoreRow, score_genotypes, score_table
from search.experiment.session import SearchConfig
from search.score import main
from search.space.genotype import REFERENCE_GENOTYPES, Block, Cell, Genotype, save_genotype


def _cell(op_a: str, op_b: str) -> Cell:
    return Cell((Block((0, 1), (op_a, op_b), "add"), Block((1, 2), (op_a, op_b), "concat")))


TWO_BLOCKS = Genotype(_cell("dil_conv_3x3", "conv_3x3"), _cell("max_pool_3x3", "sep_conv_3x3"))
FAST = ["--dataset", "digits", "--child-scale", "1@48", "--child-train-size", "60"]


@pytest.fixture()
def two_blocks(tmp_path: Path) -> str:
    path = tmp_path / "cell.json"
    save_genotype(TWO_BLOCKS, path)
    return str(path)


def _run_dir(tmp_path: Path, **settings) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = SearchConfig(latency_budget="5ms", dataset="digits", **settings)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run


def _one_line_error(capsys, argv: list[str], contains: str) -> None:
    try:
        code = main(argv)
    except SystemExit as stop:  # rejected by the parser
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert contains in err, err


# ---------------------------------------------------------------- the scoring loop

def test_score_genotypes_averages_seeds_and_counts_a_failed_seed_as_zero():
    outcomes = {0: AccuracyResult(0.6, "ok", None, 1.0, 50),
                1: AccuracyResult(0.0, "diverged", "nan loss", 2.0, 50)}
    stream = io.StringIO()
    rows = score_genotypes([("a", TWO_BLOCKS), ("b", TWO_BLOCKS)], lambda g, seed: outcomes[seed], [0, 1],
                           stream=stream, label="score")
    row = rows[0]
    assert (row.accuracies, row.mean, row.status, row.error, row.params, row.seconds) == \
        ((0.6, 0.0), 0.3, "diverged", "nan loss", 50, 3.0)
    assert stream.getvalue().splitlines()[0] == \
        "[score] 1/2 a: val acc 0.6000, 0.0000 (mean 0.3000), 3.0s, diverged: nan loss"
    table = score_table(rows).splitlines()
    assert table[0].split() == ["genotype", "seed", "0", "seed", "1", "mean", "M", "params", "seconds",
                                "status"]
    assert table[1].split()[:4] == ["a", "0.6000", "0.0000", "0.3000"]


def test_a_terminal_gets_one_bar_over_genotypes_and_seeds():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    score_genotypes([("a", TWO_BLOCKS)], lambda g, s: AccuracyResult(0.5, "ok", None, 0.1, 1), [0, 1, 2],
                    stream=stream)
    assert "3/3" in stream.getvalue() and "[score]" not in stream.getvalue()


# ---------------------------------------------------------------- the command, real children

def test_scores_files_and_built_in_names_per_seed_as_the_search_would(capsys, two_blocks):
    assert main([two_blocks, "lite", *FAST, "--seeds", "0", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["evaluator"] == "proxy" and result["dataset"] == "digits" and result["seeds"] == [0, 1]
    assert result["settings"] == {"scale": "1@48", "epochs": 1, "train_size": 60, "image_size": 16,
                                  "device": "auto", "data_seed": 0}
    first, lite = result["genotypes"]
    assert first["name"] == two_blocks and lite["name"] == "lite"
    for row in (first, lite):
        assert len(row["accuracies"]) == 2 and row["status"] == "ok" and row["params"] > 0
        assert row["mean_accuracy"] == pytest.approx(sum(row["accuracies"]) / 2) and row["seconds"] > 0
    assert Genotype.from_dict(lite["genotype"]) == REFERENCE_GENOTYPES["lite"]
    # the same child the search trains: evaluate_child with these settings and seed 1
    from search.data.datasets import load_dataset

    data = load_dataset("digits", seed=0)
    again = evaluate_child(TWO_BLOCKS, data, ChildSettings(scale="1@48", epochs=1, train_size=60, seed=1))
    assert first["accuracies"][1] == again.accuracy


def test_text_output_is_a_table_and_how_it_was_scored(capsys, two_blocks):
    assert main([two_blocks, *FAST, "--seeds", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["genotype", "seed", "3", "mean"]
    assert out[1].startswith(two_blocks) and out[1].split()[-1] == "ok"
    assert out[2].startswith("proxy evaluator on digits: 1@48 trained 1 epoch on 60 training images")


def test_run_settings_are_used_and_flags_override_them(capsys, tmp_path, two_blocks):
    run = _run_dir(tmp_path, blocks=2, child_scale="1@24", child_train_size=40, seed=3)
    target = tmp_path / "scores.json"
    assert main([two_blocks, "--run", str(run), "--seeds", "0", "--child-train-size", "30",
                 "--json", str(target)]) == 0
    assert "proxy evaluator on digits with the settings of" in capsys.readouterr().out
    settings = json.loads(target.read_text())["settings"]
    assert (settings["scale"], settings["train_size"], settings["data_seed"]) == ("1@24", 30, 3)


def test_a_genotype_outside_the_runs_space_is_one_line_and_writes_nothing(capsys, tmp_path, two_blocks):
    run = _run_dir(tmp_path, blocks=2)
    target = tmp_path / "scores.json"
    _one_line_error(capsys, [two_blocks, "nasnet-a", "--run", str(run), "--json", str(target)],
                    f"nasnet-a is outside the search space: its normal cell has 5 blocks, {run} searched 2")
    _one_line_error(capsys, [two_blocks, *FAST, "--blocks", "3", "--json", str(target)],
                    "its normal cell has 2 blocks, --blocks is 3")
    assert not target.exists()


def test_oneshot_needs_a_run_with_a_supernet_and_genotypes_of_its_space(capsys, tmp_path, two_blocks):
    _one_line_error(capsys, [two_blocks, "--dataset", "digits", "--evaluator", "oneshot"], "give --run DIR")
    run = _run_dir(tmp_path, evaluator="oneshot")
    _one_line_error(capsys, ["lite", "--run", str(run), "--blocks", "3"],
                    "has no trained supernet (supernet.pt)")
    _one_line_error(capsys, ["nasnet-a", "--run", str(run)], "lists an explicit concat")
    _one_line_error(capsys, ["lite", "--run", str(run), "--blocks", "3", "--child-scale", "1@48"],
                    "--child-scale set the proxy evaluator")


@pytest.mark.parametrize("argv, contains", [
    (["no-such-cell", "--dataset", "digits"], "no genotype file or built-in genotype named 'no-such-cell'"),
    (["lite"], "give --dataset"),
    (["lite", "--dataset", "digits", "--seeds", "0", "0"], "--seeds repeats 0"),
    (["lite", "--run", "/nonexistent/run"], "is not a search run directory"),
    (["lite", "--dataset", "digits", "--child-scale", "1x8"], "unknown variant '1x8'"),
    (["lite", "--dataset", "mnist"], "argument --dataset: invalid choice"),
    (["lite", "--dataset", "digits", "--seeds", "-1"], "argument --seeds"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, contains):
    _one_line_error(capsys, argv, contains)


def test_oneshot_scores_with_the_runs_trained_supernet(capsys, tmp_path, two_blocks):
    from search.data.datasets import load_dataset
    from search.evaluation.oneshot import OneShotEvaluator, SupernetSettings

    run = _run_dir(tmp_path, evaluator="oneshot", blocks=2)
    settings = SupernetSettings(scale="1@24", image_size=16, epochs=1, train_size=64, batch_size=32,
                                bn_batches=1, bn_batch_size=32, val_size=64, device="cpu")
    OneShotEvaluator(load_dataset("digits", seed=0), settings, run / SUPERNET_NAME, 2).prepare(
        progress=False, stream=io.StringIO())
    assert main([two_blocks, "--run", str(run), "--seeds", "0", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["genotypes"][0]
    assert result["evaluator"] == "oneshot" and result["settings"]["checkpoint"] == str(run / SUPERNET_NAME)
    assert row["status"] == "ok" and row["accuracies"][0] == row["accuracies"][1] > 0  # seed-free score


def test_score_rows_are_plain_data():
    row = ScoreRow("x", TWO_BLOCKS, (0,), (0.5,), ("ok",), (None,), 10, 1.0)
    assert row.to_dict()["genotype"] == TWO_BLOCKS.to_dict() and row.spread == 0.0
