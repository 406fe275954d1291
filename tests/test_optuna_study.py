"""The Optuna strategies leave a study that Optuna's own tools read: name, metric names,
per-trial user attributes, failed children as ``FAIL``, NSGA-II constraints, resume.

The loop runs with the cheap real evaluator of ``test_loop.py`` (the real MAC count of a
1@48 network as latency); children with a ``sep_conv_7x7`` cannot be "timed" and fail.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_loop import Cost, CountingEvaluator

from search.core.errors import NasdeployError
from search.evaluation.reward import RewardConfig
from search.experiment.loop import Evaluator, run_loop
from search.experiment.session import SearchConfig, default_study_name
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from search.strategies.base import Outcome, StrategyConfig, create_strategy
from search.trials.history import TrialRecord, read_history, utc_now

BUDGET_MS = 2.3
MACS_BUDGET = 250_000
METRICS = {"tpe": ["reward"], "random": ["reward"], "nsga2": ["accuracy", "latency_ms"]}


def _evaluator() -> Evaluator:
    ev = CountingEvaluator()

    def cost(genotype: Genotype) -> Cost:
        if "sep_conv_7x7" in genotype.to_json():
            raise RuntimeError("simulated out of memory")
        return ev.cost(genotype)

    return Evaluator(ev.accuracy, cost, RewardConfig(BUDGET_MS, macs_budget=MACS_BUDGET))


def _config(run_dir: Path, study_name: str | None = "nasdeploy-test", seed: int = 0
            ) -> StrategyConfig:
    return StrategyConfig(space=SearchSpace(2), seed=seed, run_dir=run_dir, startup_trials=2,
                          population_size=4, study_name=study_name, latency_budget_ms=BUDGET_MS,
                          macs_budget=MACS_BUDGET)


def _run(name: str, run_dir: Path, trials: int, study_name: str = "nasdeploy-test"
         ) -> list[TrialRecord]:
    strategy = create_strategy(name, _config(run_dir, study_name))
    try:
        return run_loop(strategy, _evaluator(), run_dir, max_trials=trials, progress=False).records
    finally:
        strategy.close()


def _storage(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / 'study.db'}"


def _by_loop_trial(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    trials = [t for t in study.get_trials() if "loop_trial" in t.user_attrs]
    numbers = [t.user_attrs["loop_trial"] for t in trials]
    assert len(numbers) == len(set(numbers)), "one Optuna trial per loop trial"
    return dict(zip(numbers, trials, strict=True))


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2"])
def test_the_study_carries_names_attributes_failures_and_constraints(name, tmp_path):
    records = _run(name, tmp_path, trials=12)
    assert any(r.status == "failed" for r in records) and any(r.status == "ok" for r in records)

    study = optuna.load_study(study_name="nasdeploy-test", storage=_storage(tmp_path))
    assert study.metric_names == METRICS[name]
    assert study.user_attrs["strategy"] == name
    assert study.user_attrs["latency_budget_ms"] == BUDGET_MS
    trials = _by_loop_trial(study)
    assert sorted(trials) == [r.trial for r in records]
    for r in records:
        t = trials[r.trial]
        attrs = t.user_attrs
        assert attrs["genotype"] == r.genotype_key
        assert Genotype.from_dict(json.loads(attrs["genotype"])) == r.to_genotype().canonical()
        assert {k: attrs[k] for k in ("accuracy", "latency_ms", "macs", "params", "status",
                                      "feasible", "reward")} == {
            "accuracy": r.accuracy, "latency_ms": r.latency_ms, "macs": r.macs,
            "params": r.params, "status": r.status, "feasible": r.feasible, "reward": r.reward}
        if r.status != "ok":
            assert t.state == TrialState.FAIL and t.values is None
            assert attrs["error"] == "latency: RuntimeError: simulated out of memory"
            continue
        assert t.state == TrialState.COMPLETE
        expected = [r.reward] if name != "nsga2" else [r.accuracy, r.latency_ms]
        assert t.values == pytest.approx(expected)
        if name == "nsga2":
            constraints = t.system_attrs["constraints"]  # what NSGA-II and the dashboard read
            assert constraints == pytest.approx([r.latency_ms - BUDGET_MS, r.macs - MACS_BUDGET])
            assert all(c <= 0 for c in constraints) == r.feasible
        else:
            assert "constraints" not in t.system_attrs
    if name == "nsga2":
        assert {r.feasible for r in records if r.status == "ok"} == {True, False}


def test_a_genotype_that_failed_is_not_proposed_again_also_after_resume(tmp_path):
    first = create_strategy("tpe", _config(tmp_path))
    first.resume([])
    proposal = first.propose()
    failed = Outcome(0.0, None, 0.0, False, "failed", error="latency: boom")
    first.observe(proposal, failed)
    params = first.study.trials[proposal.info["number"]].params
    first.study.enqueue_trial(params)  # the sampler proposes the failed genotype again
    again = first.propose()
    assert again.genotype != proposal.genotype
    skipped = first.study.trials[again.info["number"] - 1]
    assert skipped.state == TrialState.FAIL
    assert skipped.user_attrs["skipped"] == "same genotype as failed loop trial 0"
    first.close()

    record = TrialRecord(0, "tpe", proposal.genotype.to_dict(), 0.0, None, None, None, 0.0,
                         False, "failed", "latency: boom", 0.1, 0.0, 0.0, utc_now())
    second = create_strategy("tpe", _config(tmp_path))
    second.resume([record])  # loop trial 1 was asked, never recorded: it fails
    second.study.enqueue_trial(params)
    assert second.propose().genotype != proposal.genotype
    second.close()


def test_resume_tells_a_recorded_failure_as_fail_with_its_attributes(tmp_path):
    first = create_strategy("nsga2", _config(tmp_path))
    first.resume([])
    proposal = first.propose()
    first.close()  # killed after trials.jsonl got the line, before tell()
    record = TrialRecord(0, "nsga2", proposal.genotype.to_dict(), 0.0, 2.0, 1000, 10, 0.0,
                         False, "diverged", "loss is nan", 0.1, 0.0, 0.0, utc_now())
    second = create_strategy("nsga2", _config(tmp_path))
    second.resume([record])
    second.close()
    (trial,) = optuna.load_study(study_name="nasdeploy-test", storage=_storage(tmp_path)).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "diverged"
    assert trial.user_attrs["error"] == "loss is nan"
    assert trial.user_attrs["genotype"] == record.genotype_key


def test_a_resumed_loop_continues_the_same_named_study(tmp_path):
    _run("nsga2", tmp_path, trials=4, study_name="my-study")
    records = _run("nsga2", tmp_path, trials=7, study_name="my-study")
    assert [r.trial for r in read_history(tmp_path / "trials.jsonl")] == list(range(7))
    storage = optuna.storages.RDBStorage(_storage(tmp_path))
    try:
        assert optuna.get_all_study_names(storage) == ["my-study"]
        study = optuna.load_study(study_name="my-study", storage=storage)
        trials = _by_loop_trial(study)
        assert sorted(trials) == list(range(7))
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
        assert [trials[r.trial].user_attrs["status"] for r in records] == [r.status for r in records]
    finally:
        storage.engine.dispose()


def test_the_default_study_name_comes_from_the_run_directory(tmp_path):
    run_dir = tmp_path / "20260301-120000-tpe-digits"
    run_dir.mkdir()
    assert default_study_name(run_dir) == "nasdeploy-20260301-120000-tpe-digits"
    assert default_study_name(run_dir, resume=True) == "nasdeploy-20260301-120000-tpe-digits"
    (run_dir / "study.db").touch()  # a run from before study names: its study is "nasdeploy"
    assert default_study_name(run_dir, resume=True) == "nasdeploy"
    config = SearchConfig(latency_budget="5ms", study_name="my study")
    assert SearchConfig.from_dict(config.to_dict()).study_name == "my study"


@pytest.mark.parametrize("bad", ["", "  ", "two\nlines", "x" * 513])
def test_a_bad_study_name_is_a_one_line_error(bad):
    with pytest.raises(NasdeployError, match="--study-name must be 1 to 512 printable") as info:
        SearchConfig(latency_budget="5ms", strategy="tpe", dataset="digits",
                     study_name=bad).validate()
    assert "\n" not in str(info.value)


def _get(app, path: str) -> dict:
    """One GET through the WSGI app, in process (no socket)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_shows_the_metric_names_and_attributes(tmp_path):
    dashboard = pytest.importorskip("optuna_dashboard")
    _run("nsga2", tmp_path, trials=6, study_name="nasdeploy-dash")
    storage = optuna.storages.RDBStorage(_storage(tmp_path))
    try:
        app = dashboard.wsgi(storage)
        (summary,) = _get(app, "/api/studies")["study_summaries"]
        assert summary["study_name"] == "nasdeploy-dash"
        assert summary["directions"] == ["maximize", "minimize"]
        detail = _get(app, f"/api/studies/{summary['study_id']}")
    finally:
        storage.engine.dispose()
    assert detail["objective_names"] == ["accuracy", "latency_ms"]
    keys = {a["key"] for a in detail["union_user_attrs"]}
    assert {"loop_trial", "accuracy", "latency_ms", "macs", "params", "genotype", "status",
            "feasible"} <= keys
    done = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert done and all(len(t["constraints"]) == 2 for t in done)


def test_a_study_killed_mid_write_is_accepted_for_resume(tmp_path):
    """kill -9 during an SQLite write leaves a hot journal; the resume check must not refuse it."""
    import os
    import subprocess
    import sys

    from search.strategies.optuna_study import check_study_storage

    path = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s")
    writer = ("import os, signal, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
              "c.execute('PRAGMA cache_size=1'); c.execute('BEGIN IMMEDIATE'); "
              "c.executemany('INSERT INTO study_user_attributes (study_id, key, value_json) "
              "VALUES (1, ?, ?)', [(f'k{i}', 'x' * 500) for i in range(2000)]); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", writer, str(path)], check=False, timeout=60)
    journal = path.with_name("study.db-journal")
    assert journal.is_file() and journal.stat().st_size > 0  # a hot journal is left behind
    check_study_storage(path)  # SQLite rolls the cut transaction back, as Optuna would
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{path}")
    assert study.user_attrs == {} and os.path.getsize(path) > 0
