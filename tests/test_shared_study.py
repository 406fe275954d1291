"""``search.run --storage URL --study-name NAME``: several searches share one Optuna study,
in a real PostgreSQL server the test starts itself (and in a shared SQLite file)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pytest

from search.core.rundir import HISTORY_NAME
from search.run import main as run_main
from search.trials.history import read_history

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["--latency-budget", "5ms", "--dataset", "digits", "--target-variant", "1@48", "--child-scale",
          "1@48", "--child-train-size", "120", "--image-size", "8", "--rerank", "0", "--no-progress"]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses root: run PostgreSQL's programs as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *cmd]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a free loopback port; its URL; stopped afterwards."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver (psycopg2-binary) is not installed")
    root = Path(tempfile.mkdtemp(prefix="nasdeploy-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    try:
        subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                                     "start"]), check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _search(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_searches_share_one_study_in_postgresql(postgres_url, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    shared = ["--strategy", "tpe", "--trials", "4", "--storage", postgres_url, "--study-name", "shared"]
    procs = [_search([*SEARCH, *shared, "--seed", str(i), "--out", str(run)]) for i, run in enumerate(runs)]
    for proc in procs:  # both run at the same time, against the same study
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_run = Counter(t.user_attrs["run"] for t in study.trials if "loop_trial" in t.user_attrs)
    assert by_run == {str(runs[0].resolve()): 4, str(runs[1].resolve()): 4}
    assert len(done) == sum(r.status == "ok" for run in runs for r in read_history(run / HISTORY_NAME))
    for run in runs:  # each search keeps its own run directory, and no study.db
        assert len(read_history(run / HISTORY_NAME)) == 4 and not (run / "study.db").exists()
        assert json.loads((run / "config.json").read_text())["storage"] == postgres_url


def test_an_unreachable_storage_is_one_line_and_nothing_is_written(tmp_path, capsys):
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/postgres"
    run = tmp_path / "run"
    argv = [*SEARCH, "--strategy", "random", "--trials", "2", "--storage", url, "--out", str(run)]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the Optuna storage") and err.count("\n") == 1, err
    assert not run.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--strategy", "rl", "--storage", "sqlite:///x.db"], "use --strategy tpe, random or nsga2"),
    (["--strategy", "tpe", "--storage", "redis://host/0"], "give sqlite:///FILE"),
])
def test_storage_flags_are_checked(argv, needle, tmp_path, capsys):
    assert run_main([*SEARCH, *argv, "--trials", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_a_second_search_continues_the_first_ones_study_in_a_shared_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for i in range(2):
        assert run_main([*SEARCH, "--strategy", "random", "--trials", "3", "--seed", str(i), "--storage", url,
                         "--study-name", "s", "--out", str(tmp_path / f"run{i}")]) == 0
    study = optuna.load_study(study_name="s", storage=url)
    assert len([t for t in study.trials if "loop_trial" in t.user_attrs]) == 6
    assert {t.user_attrs["run"] for t in study.trials} == {str((tmp_path / "run0").resolve()),
                                                           str((tmp_path / "run1").resolve())}
