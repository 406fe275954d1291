"""``python -m search.run``: bad input in one line, a real end-to-end run, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from search.run import main
from search.space.genotype import load_genotype_file
from search.trials.history import read_history

ARTIFACTS = ("genotype.json", "trials.jsonl", "pareto.json", "pareto.png", "reward.png",
             "summary.md", "config.json")
# a tiny but real search: 1@48 children on 200 digits images, latency of a 1@48 network
TINY = ["--dataset", "digits", "--child-scale", "1@48", "--child-train-size", "200",
        "--target-variant", "1@48", "--blocks", "2", "--no-progress"]


def _one_line_error(capsys, argv: list[str], contains: str) -> None:
    try:
        code = main(argv)
    except SystemExit as stop:  # rejected by the parser, before anything runs
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert contains in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, contains", [
    (["--latency-budget", "5 parsecs"], "cannot read latency '5 parsecs'"),
    (["--trials", "3"], "--latency-budget is required"),
    (["--latency-budget", "5ms", "--time-budget", "soon"], "cannot read duration 'soon'"),
    (["--latency-budget", "5ms", "--flops-budget", "lots"], "cannot read count 'lots'"),
    (["--latency-budget", "5ms", "--macs-budget", "lots"], "argument --macs-budget: cannot read count"),
    (["--latency-budget", "5ms", "--latency-weight", "0.07"], "latency weights must be <= 0"),
    (["--latency-budget", "5ms", "--trials", "0"], "--trials: must be at least 1"),
    (["--latency-budget", "5ms", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--latency-budget", "5ms", "--target-variant", "huge"], "unknown variant 'huge'"),
    (["--latency-budget", "5ms", "--child-scale", "1x8"], "unknown variant '1x8'"),
])
def test_bad_settings_fail_in_one_line(capsys, argv, contains):
    _one_line_error(capsys, argv, contains)


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--latency-budget", "5ms", "--trials", "many"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: argument --trials: not a whole number: 'many'") and err.count("\n") == 1


def test_resume_needs_a_run_directory_and_no_other_settings(capsys, tmp_path):
    _one_line_error(capsys, ["--resume", str(tmp_path)], "is not a search run directory")
    (tmp_path / "config.json").write_text(json.dumps({"latency_budget": "5ms"}))
    _one_line_error(capsys, ["--resume", str(tmp_path), "--strategy", "tpe"],
                    "only --trials, --time-budget, --workers, --ray-address and --gpus-per-child may "
                    "change (--strategy given)")


def test_missing_cifar_without_network_names_data_dir_and_digits(capsys, tmp_path,
                                                                 monkeypatch):
    import search.data.datasets

    monkeypatch.setattr(search.data.datasets, "_unreachable_reason",
                        lambda url: "no network: www.cs.toronto.edu unreachable")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["--latency-budget", "5ms", "--data-dir", str(empty),
                             "--out", str(tmp_path / "run")], "--dataset digits")
    assert not (tmp_path / "run").exists(), "no half-made run directory"


@pytest.mark.slow
def test_end_to_end_search_on_digits_then_resume_to_more_trials(capsys, tmp_path):
    """Real child training (evaluate_child) and real ONNX Runtime timing (LatencyMeter)."""
    out = tmp_path / "run"
    assert main(["--latency-budget", "50ms", "--trials", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"files in {out}: genotype.json, trials.jsonl" in printed
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    first = read_history(out / "trials.jsonl")
    assert [r.trial for r in first] == [0, 1]
    for r in first:
        assert r.status == "ok" and 0 < r.accuracy <= 1 and r.train_time_s > 0
        assert r.latency_ms > 0 and r.macs > 0 and r.params > 0 and r.latency_time_s > 0
    genotype, meta = load_genotype_file(out / "genotype.json")
    assert genotype.num_blocks == 2 and meta["dataset"] == "digits"
    assert meta["search"]["config"]["strategy"] == "rl"
    assert (out / "controller.pt").exists() is False  # no PPO update before 4 children

    _one_line_error(capsys, ["--latency-budget", "5ms", "--out", str(out), *TINY],
                    "already holds a search")
    assert main(["--resume", str(out), "--trials", "3", "--no-progress"]) == 0
    records = read_history(out / "trials.jsonl")
    assert [r.trial for r in records] == [0, 1, 2] and records[:2] == first
    assert json.loads((out / "config.json").read_text())["trials"] == 3


def _start(argv: list[str]) -> subprocess.Popen:
    """The CLI in a child process that reacts to Ctrl-C like one started from a terminal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "search.run", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_trials(proc: subprocess.Popen, history: Path, count: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(read_history(history)) >= count:
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_resume_loses_and_repeats_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    history = out / "trials.jsonl"
    first = _start(["--latency-budget", "50ms", "--trials", "5", "--strategy", "tpe",
                    "--out", str(out), *TINY])
    _wait_for_trials(first, history, 1)
    # a second process cannot work on the same run directory at the same time
    _one_line_error(capsys, ["--resume", str(out)], "is in use by another search")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert f"continue with: python -m search.run --resume {out}" in err
    assert (out / "summary.md").exists(), "the report is written on Ctrl-C"
    after_ctrl_c = read_history(history)
    assert 1 <= len(after_ctrl_c) < 5

    second = _start(["--resume", str(out)])
    _wait_for_trials(second, history, len(after_ctrl_c) + 1)
    second.send_signal(signal.SIGKILL)
    second.communicate()
    after_kill = read_history(history)
    assert len(after_kill) < 5, "the kill should land mid-run"
    assert after_kill[:len(after_ctrl_c)] == after_ctrl_c

    assert main(["--resume", str(out), "--no-progress"]) == 0
    records = read_history(history)
    assert [r.trial for r in records] == [0, 1, 2, 3, 4]
    searched = [replace(r, rerank_accuracy=None, rerank_reward=None, rerank_seeds=None) for r in records]
    assert searched[:len(after_kill)] == after_kill  # re-ranking after the search only adds its scores
    for name in ARTIFACTS:
        assert Path(out, name).exists(), name


@pytest.mark.parametrize("argv, contains", [
    (["--device", "cuda"], "--device cuda was requested but PyTorch sees no CUDA GPU"),
    (["--latency-device", "cuda"], "CUDA"),
])
def test_missing_gpu_fails_before_anything_is_written(capsys, tmp_path, argv, contains):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    _one_line_error(capsys, ["--latency-budget", "5ms", "--out", str(out), *argv, *TINY],
                    contains)
    assert not out.exists()
