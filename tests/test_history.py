"""trials.jsonl: a cut-short append is dropped, anything else corrupt is an error."""

from __future__ import annotations

import json

import pytest

from search.core.errors import NasdeployError
from search.trials.history import read_history, repair_history

RECORD = {"trial": 0, "strategy": "rl", "genotype": {}, "accuracy": 0.5, "latency_ms": 1.0,
          "macs": 1, "params": 1, "reward": 0.5, "feasible": True, "status": "ok", "error": None,
          "wall_time_s": 1.0, "train_time_s": 0.5, "latency_time_s": 0.1,
          "finished_at": "2026-11-23T20:00:00Z", "duplicate_of": None}


def _line(trial: int) -> str:
    return json.dumps({**RECORD, "trial": trial}) + "\n"


def test_a_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text(_line(0) + _line(1) + _line(2)[:30])
    assert [r.trial for r in repair_history(path)] == [0, 1]
    assert path.read_text() == _line(0) + _line(1)


@pytest.mark.parametrize("bad", ["{not json}\n", "[1, 2]\n", '"text"\n'])
def test_a_complete_corrupt_line_is_reported_not_dropped(tmp_path, bad):
    path = tmp_path / "trials.jsonl"
    path.write_text(_line(0) + bad)
    with pytest.raises(NasdeployError, match="line 2 is corrupt"):
        read_history(path)
    assert path.read_text() == _line(0) + bad
