"""``search.run --workers N`` / ``--ray-address``: children evaluated on Ray workers.

Real searches on digits (tiny children, as tests/test_run_cli.py) in child processes: one
starts its own local Ray instance (``--workers 2``); the others join one Ray instance this
module starts on 127.0.0.1 (``--ray-address``), the way a search joins a cluster. A Ray
worker is killed with SIGKILL while it trains a child, and the search process itself is
killed and resumed: every trial is recorded exactly once, numbered without gaps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from search.core.rundir import HISTORY_NAME
from search.trials.history import read_history

# Ray reads this when it is imported: on Linux it would take the host's address, not 127.0.0.1
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'nasdeploy[distributed]')")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--latency-budget", "50ms", "--dataset", "digits", "--child-scale", "1@48", "--child-train-size",
        "200", "--target-variant", "1@48", "--blocks", "2", "--no-progress", "--rerank", "0"]


def _env() -> dict[str, str]:
    """This process's environment now: after ray.init it holds RAY_AUTH_MODE=token, which a
    driver joining the module's Ray instance needs (the token itself is in ~/.ray)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def address() -> str:
    """One local Ray instance (2 CPUs, 127.0.0.1 only) shared by this module's searches."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _search(argv: list[str], timeout: float = 400) -> str:
    proc = _start(argv)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


def _numbered_once(run: Path, count: int) -> list:
    records = read_history(run / HISTORY_NAME)
    assert [r.trial for r in records] == list(range(count))
    originals = [r.genotype_key for r in records if r.duplicate_of is None]
    assert len(originals) == len(set(originals)), "a genotype evaluated twice"
    for r in records:
        if r.duplicate_of is not None:
            assert records[r.duplicate_of].genotype_key == r.genotype_key
    return records


def _study_trials(run: Path) -> list:
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'study.db'}")
    return [t for t in study.get_trials() if "status" in t.user_attrs]  # the told ones


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_local_workers_give_the_artifacts_of_a_single_process_run(tmp_path):
    from search.run import main

    single, parallel = tmp_path / "single", tmp_path / "parallel"
    argv = [*TINY, "--strategy", "tpe", "--trials", "4"]
    assert main([*argv, "--out", str(single)]) == 0
    err = _search([*argv, "--workers", "2", "--out", str(parallel)])
    assert "workers: 2 children at a time; no node has the latency_target resource" in err
    assert sorted(p.name for p in parallel.iterdir()) == sorted(p.name for p in single.iterdir())
    records = _numbered_once(parallel, 4)
    assert all(r.status == "ok" and r.train_time_s > 0 for r in records if r.duplicate_of is None)
    config = json.loads((parallel / "config.json").read_text())
    assert config["workers"] == 2 and config["ray_address"] is None
    told = _study_trials(parallel)
    assert sorted(t.user_attrs["loop_trial"] for t in told) == [0, 1, 2, 3]
    for t in told:  # each recorded trial told to the Optuna trial that asked for its genotype
        assert t.user_attrs["genotype"] == records[t.user_attrs["loop_trial"]].genotype_key


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", ["tpe", "rl"])
def test_tpe_and_rl_search_in_parallel_on_a_cluster(address, tmp_path, strategy):
    import torch

    run = tmp_path / "run"
    err = _search([*TINY, "--strategy", strategy, "--trials", "4", "--rl-batch", "2", "--seed", "3",
                   "--ray-address", address, "--out", str(run)])
    assert "2 children at a time" in err
    records = _numbered_once(run, 4)
    if strategy == "rl":  # two PPO updates, one per batch of two children
        state = torch.load(run / "controller.pt", weights_only=True)
        assert state["updates"] == 2 and state["observed"] == 4
    else:
        assert sorted(t.user_attrs["loop_trial"] for t in _study_trials(run)) == [r.trial for r in records]


def _worker_training_a_child() -> int | None:
    """A Ray worker process running a child's training task (its title is ray::_accuracy_task)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::_accuracy_task"):
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_worker_is_retried_and_every_trial_recorded_once(address, tmp_path):
    run = tmp_path / "run"
    proc = _start([*TINY, "--strategy", "random", "--trials", "4", "--ray-address", address,
                   "--out", str(run)])
    victim, deadline = None, time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        victim = _worker_training_a_child()
        time.sleep(0.05)
    assert victim is not None, "no worker was seen training a child"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    records = _numbered_once(run, 4)
    assert all(r.status == "ok" for r in records), [r.error for r in records]  # the retry trained it


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_search_process_killed_then_resumed_loses_and_repeats_nothing(address, tmp_path):
    run = tmp_path / "run"
    history = run / HISTORY_NAME
    proc = _start([*TINY, "--strategy", "tpe", "--trials", "6", "--ray-address", address, "--out", str(run)])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(read_history(history)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = read_history(history)
    assert 2 <= len(before) < 6, "the kill should land mid-run"
    _search(["--resume", str(run), "--ray-address", address])
    records = _numbered_once(run, 6)
    assert records[:len(before)] == before
    told = _study_trials(run)
    assert Counter(t.user_attrs["loop_trial"] for t in told) == Counter(range(6)), "each told once"
    for t in told:
        assert t.user_attrs["genotype"] == records[t.user_attrs["loop_trial"]].genotype_key


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv, contains", [
    (["--workers", "0"], "argument --workers: must be at least 1"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray head answers there"),
    (["--ray-address", "10.255.255.1:6379"], "--ray-address 10.255.255.1:6379: no Ray head answers there"),
    (["--ray-address", "headnode"], "give HOST:PORT of the Ray head"),
    (["--workers", "2", "--gpus-per-child", "1.5"], "--gpus-per-child must be 0, a fraction below 1"),
    (["--gpus-per-child", "0.5"], "--gpus-per-child is for children on Ray workers"),
    (["--workers", "1", "--gpus-per-child", "1"], "--gpus-per-child 1: the Ray cluster has 0 GPU(s)"),
])
def test_bad_worker_settings_fail_in_one_line_and_leave_no_run_directory(tmp_path, argv, contains):
    run = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "search.run", *TINY, "--trials", "2", *argv, "--out",
                           str(run)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=100)
    lines = [line for line in proc.stderr.splitlines() if "WARNING" not in line]  # Ray's own notices
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and contains in lines[0], proc.stderr
    assert not run.exists()
    if "--ray-address" in argv or "--workers" not in argv:  # (not the ones that start Ray first)
        assert time.monotonic() - start < 25  # Python start-up and imports included, on a busy host
