"""``python -m search.train`` end to end on digits: checkpoint, log, test accuracy, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from search.nn.checkpoint import load_checkpoint
from search.space.genotype import REFERENCE_GENOTYPES
from search.train import main
from search.training.final import default_out_dir

TINY = ["--dataset", "digits", "--variant", "1@48", "--image-size", "8", "--train-size", "200",
        "--batch", "32", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["lite", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_training_writes_a_rebuildable_checkpoint_and_log(finished: Path, capsys) -> None:
    model, spec, raw = load_checkpoint(finished / "checkpoint.pt")
    assert spec.genotype == REFERENCE_GENOTYPES["lite"]
    assert (spec.scale, spec.image_size, spec.num_classes, spec.dataset) == ("1@48", 8, 10,
                                                                             "digits")
    assert spec.class_names == tuple(str(i) for i in range(10)) and spec.auxiliary
    assert len(spec.mean) == 3 and all(s > 0 for s in spec.std)
    test_accuracy = raw["metrics"]["test_accuracy"]
    assert 0.0 <= test_accuracy <= 1.0
    assert raw["training"]["epoch"] == 2 and raw["training"]["epochs"] == 2
    assert {"optimizer", "scheduler", "history"} <= set(raw["training"])
    rows = [json.loads(line) for line in (finished / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


def test_resume_after_interruption_matches_an_uninterrupted_run(
    finished: Path, tmp_path: Path, interrupt_after_first_epoch, capsys
) -> None:
    out = tmp_path / "interrupted"
    assert main(["lite", *TINY, "--epochs", "2", "--out", str(out)]) == 130
    assert f"python -m search.train --resume {out}" in capsys.readouterr().err
    _, _, partial = load_checkpoint(out / "checkpoint.pt")
    assert partial["training"]["epoch"] == 1 and "test_accuracy" not in partial["metrics"]
    interrupt_after_first_epoch()  # run on to the end
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    _, _, resumed = load_checkpoint(out / "checkpoint.pt")
    _, _, straight = load_checkpoint(finished / "checkpoint.pt")
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert resumed["metrics"]["test_accuracy"] == straight["metrics"]["test_accuracy"]
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2


def test_refuses_to_overwrite_or_resume_the_wrong_run(finished: Path, capsys) -> None:
    assert main(["lite", *TINY, "--epochs", "1", "--out", str(finished)]) == 2
    assert f"--resume {finished}" in capsys.readouterr().err
    assert main(["nasnet-a", "--resume", str(finished), "--no-progress"]) == 2
    assert "different genotype" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["nope", *TINY], "built-in genotype named"), (["lite", *TINY, "--variant", "3x"], "unknown variant"),
     (["lite", "--dataset", "cifar10", "--data-dir", "missing-dir"], "does not exist"),
     (["--no-progress"], "name what to train"),
     (["--resume", "no-such-dir", "--no-progress"], "nothing to resume")],
)
def test_bad_input_is_one_line_and_leaves_no_run_dir(args, message, tmp_path: Path,
                                                     monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_default_out_dir_names_the_genotype(tmp_path: Path) -> None:
    assert default_out_dir("nasnet-a", str(tmp_path)).name.startswith("train-nasnet-a-")
    (tmp_path / "train-x-1").mkdir()
    assert default_out_dir("x", str(tmp_path)) != tmp_path / "train-x-1"


def test_a_chance_level_result_is_flagged(tmp_path: Path, capsys) -> None:
    # A vanishing learning rate leaves the random network where it started (about 0.1 on
    # 10 classes); the warning must appear exactly when the reported accuracy is that low.
    assert main(["lite", *TINY, "--epochs", "1", "--lr", "1e-12", "--out", str(tmp_path / "flat")]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split(";")[0])
    assert ("near chance" in out) == (accuracy < 0.15)
