"""The run directory is the unit of work: train, export, info and select read what the search recorded.

One real (tiny) search on digits runs once per session; each test works on its own copy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from search.core.rundir import CHECKPOINT_NAME, GENOTYPE_NAME, HISTORY_NAME, MODEL_ONNX_NAME
from search.space.genotype import REFERENCE_GENOTYPES, load_genotype_file
from search.training.final import near_chance
from search.trials.history import read_history
from search.trials.runinfo import resolve_run, trained_checkpoint

TARGET, SIZE = "1@48", 8
SEARCH = ["--latency-budget", "5ms", "--dataset", "digits", "--target-variant", TARGET,
          "--child-scale", "1@48", "--child-train-size", "200", "--image-size", str(SIZE), "--trials", "3",
          "--strategy", "random", "--no-progress"]
TRAIN = ["--epochs", "1", "--train-size", "120", "--no-progress"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.run import main

    out = tmp_path_factory.mktemp("search") / "demo"
    assert main([*SEARCH, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(searched: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(searched, copy)
    return copy


def _selected_trial(run: Path) -> int:
    _, metadata = load_genotype_file(run / GENOTYPE_NAME)
    return metadata["trial"]


def test_the_run_records_its_target(run: Path) -> None:
    target = resolve_run(run)
    recorded = (target.variant, target.image_size, target.num_classes, target.dataset)
    assert recorded == (TARGET, SIZE, 10, "digits")
    assert target.run_dir == run and target.trial == _selected_trial(run)
    assert dataclasses.replace(resolve_run(run / GENOTYPE_NAME), source=target.source) == target
    assert target.train_dir() == run / f"train-trial{target.trial}"


def test_trial_picks_another_genotype_of_the_run(run: Path) -> None:
    records = read_history(run / HISTORY_NAME)
    other = next(r for r in records if r.trial != _selected_trial(run))
    target = resolve_run(run, other.trial)
    assert target.genotype == other.to_genotype() and target.trial == other.trial
    assert target.variant == TARGET and target.train_dir() == run / f"train-trial{other.trial}"
    with pytest.raises(Exception, match="no trial 99"):
        resolve_run(run, 99)
    with pytest.raises(Exception, match="--trial needs"):
        resolve_run("nasnet-a", 1)


def test_train_needs_no_repeated_flag_and_says_what_it_trains(run: Path, capsys) -> None:
    from search.nn.checkpoint import load_checkpoint
    from search.train import main

    assert main([str(run), *TRAIN]) == 0
    out = capsys.readouterr().out
    assert f"training {run.name}: {TARGET}" in out and f"at {SIZE} px" in out and "digits" in out
    train_dir = run / f"train-trial{_selected_trial(run)}"
    assert out.strip().splitlines()[-1] == f"next: python -m export.onnx {train_dir}"
    ckpt = trained_checkpoint(resolve_run(run))
    assert ckpt is not None and ckpt.parent.name == f"train-trial{_selected_trial(run)}"
    _, card, _ = load_checkpoint(ckpt)
    assert (card.scale, card.image_size, card.num_classes, card.dataset) == (TARGET, SIZE, 10, "digits")
    assert card.genotype == resolve_run(run).genotype


def test_export_uses_the_trained_checkpoint_or_says_it_has_none(run: Path, capsys) -> None:
    from export.onnx import main as export
    from search.train import main as train
    from serve.metadata import read_onnx_card

    assert export([str(run / GENOTYPE_NAME)]) == 0
    out = capsys.readouterr().out
    assert "no trained checkpoint" in out and f"python -m search.train {run}" in out
    untrained = read_onnx_card(run / "random-init" / MODEL_ONNX_NAME)
    assert (untrained.scale, untrained.image_size, untrained.num_classes) == (TARGET, SIZE, 10)
    assert untrained.weights == "random-init"

    assert train([str(run), *TRAIN]) == 0
    capsys.readouterr()
    assert export([str(run / GENOTYPE_NAME)]) == 0
    ckpt = trained_checkpoint(resolve_run(run))
    assert f"using the run's trained weights: {ckpt}" in capsys.readouterr().out
    trained = read_onnx_card(ckpt.parent / MODEL_ONNX_NAME)
    assert (trained.scale, trained.image_size, trained.weights) == (TARGET, SIZE, "trained")


def test_info_reports_at_the_recorded_size(run: Path, capsys: pytest.CaptureFixture) -> None:
    from search.info import main

    assert main([str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    _, metadata = load_genotype_file(run / GENOTYPE_NAME)
    assert (info["variant"], info["image_size"], info["num_classes"]) == (TARGET, SIZE, 10)
    # the same figures the search measured
    assert (info["macs"], info["params"]) == (metadata["macs"], metadata["params"])
    assert "last cell outputs" in info["scale_summary"]


def test_select_rechooses_under_a_new_budget_without_searching(run: Path, capsys) -> None:
    from search.select import main

    records = [r for r in read_history(run / HISTORY_NAME) if r.status == "ok" and r.latency_ms]
    history_before = (run / HISTORY_NAME).read_bytes()
    fastest = min(records, key=lambda r: r.latency_ms)
    budget = f"{fastest.latency_ms * 1.0001}ms"  # only the fastest candidate meets it
    assert main([str(run), "--latency-budget", budget, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trial"] == fastest.trial and result["meets_budget"] and result["feasible"] == 1
    _, metadata = load_genotype_file(run / GENOTYPE_NAME)
    assert metadata["trial"] == fastest.trial and metadata["latency_budget_ms"] == pytest.approx(
        fastest.latency_ms * 1.0001, rel=1e-6)
    assert metadata["search"]["selected_by"] == "search.select"
    assert (run / HISTORY_NAME).read_bytes() == history_before  # the history is never rewritten
    assert resolve_run(run).trial == fastest.trial

    assert main([str(run), "--latency-budget", "1us"]) == 0
    assert "0 of" in capsys.readouterr().out  # nothing feasible: the fastest, and it says so


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give a new --latency-budget"),
    (["--latency-budget", "3"], "cannot read latency"),
    (["--macs-budget", "lots"], "cannot read count"),
])
def test_select_bad_input_is_one_line(run: Path, argv: list[str], message: str, capsys) -> None:
    from search.select import main

    before = (run / GENOTYPE_NAME).read_bytes()
    try:
        status = main([str(run), *argv])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0]
    assert (run / GENOTYPE_NAME).read_bytes() == before


def test_select_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    from search.select import main

    assert main([str(tmp_path), "--latency-budget", "3ms"]) == 2
    assert "not a search run directory" in capsys.readouterr().err


def test_built_in_and_plain_files_keep_their_defaults(tmp_path: Path) -> None:
    target = resolve_run("nasnet-a")
    assert target.genotype == REFERENCE_GENOTYPES["nasnet-a"] and not target.from_run
    assert target.variant is None and target.train_dir() is None
    with pytest.raises(Exception, match="built-ins: nasnet-a"):
        resolve_run(tmp_path / "nope")


def test_near_chance_warning() -> None:
    assert near_chance(0.1003, 10) is not None and "near chance" in near_chance(0.1003, 10)
    assert near_chance(0.9, 10) is None and near_chance(None, 10) is None
    assert near_chance(0.4, 2) is not None and near_chance(0.8, 2) is None


def test_checkpoint_name_is_the_one_train_writes() -> None:
    assert CHECKPOINT_NAME == "checkpoint.pt"


def test_serve_takes_the_run_directory(run: Path, capsys) -> None:
    from export.onnx import main as export
    from search.train import main as train
    from serve.predict import main as predict

    sample = Path(__file__).resolve().parents[1] / "app" / "samples" / "digit-3.png"
    assert predict([str(run), str(sample)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"python -m search.train {run}" in err[0]
    assert train([str(run), *TRAIN]) == 0 and export([str(run)]) == 0
    capsys.readouterr()
    assert predict([str(run), str(sample), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert f"train-trial{_selected_trial(run)}" in json.dumps(result)


def test_a_variant_override_does_not_inherit_the_searched_size(run: Path) -> None:
    target = resolve_run(run)
    assert target.image_size_for(None) == SIZE and target.image_size_for(TARGET) == SIZE
    assert target.image_size_for("2@64") == SIZE  # another N@F: still the data's size
    assert target.image_size_for("mobile") is None  # a named variant: its own size


def test_serving_refuses_a_model_older_than_its_checkpoint(run: Path, capsys) -> None:
    import os

    from export.onnx import main as export
    from search.train import main as train
    from search.trials.runinfo import exported_model

    assert train([str(run), *TRAIN]) == 0 and export([str(run)]) == 0
    capsys.readouterr()
    model = exported_model(run)
    checkpoint = model.parent / CHECKPOINT_NAME
    os.utime(checkpoint, (model.stat().st_mtime + 60, model.stat().st_mtime + 60))  # training went on
    with pytest.raises(Exception, match="older than"):
        exported_model(run)
