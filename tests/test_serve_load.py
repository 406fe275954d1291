"""``python -m serve.load``: a real load test against a real server on loopback."""

from __future__ import annotations

import json

import pytest
from serve_fixtures import build_tiny_model, export_tiny, running_server

from serve.batching import BatchSettings
from serve.http import create_app
from serve.load import main, pattern_images
from serve.runtime import load_runtime


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    tiny = export_tiny(build_tiny_model(), tmp_path_factory.mktemp("load") / "model.onnx")
    app = create_app(load_runtime(tiny.path), batching=BatchSettings(max_batch=16, max_delay_s=0.005))
    with running_server(app) as base:
        yield base


def test_load_levels_report_throughput_percentiles_and_checked_answers(url, tmp_path, capsys):
    out = tmp_path / "load.json"
    assert main([url, "--concurrency", "1", "8", "--requests", "80", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [level["concurrency"] for level in result["levels"]] == [1, 8]
    for level in result["levels"]:
        assert level["requests"] == 80 and level["statuses"] == {"200": 80} and level["wrong_answers"] == 0
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["throughput_rps"] > 0
    assert result["levels"][0]["mean_batch_size"] == 1.0  # one client: nothing to batch with
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].strip().startswith("1 clients:") and "wrong 0" in lines[0]


def test_the_time_bound_stops_a_level_early(url, tmp_path):
    out = tmp_path / "load.json"
    assert main([url, "--concurrency", "2", "--requests", "1000000", "--max-time", "300ms",
                 "--json", str(out)]) == 0
    level = json.loads(out.read_text())["levels"][0]
    assert 0 < level["requests"] < 1000000 and level["wall_s"] < 5


def test_pattern_images_are_distinct_pngs():
    images = pattern_images(4, 16)
    assert len(set(images)) == 4 and all(b.startswith(b"\x89PNG") for b in images)


@pytest.mark.parametrize("argv, needle", [
    (["http://127.0.0.1:1"], "cannot reach 127.0.0.1:1"),
    (["ftp://example"], "http://HOST:PORT"),
    (["http://127.0.0.1:1", "--concurrency", "5000"], "--concurrency is at most 1024"),
    (["http://127.0.0.1:1", "--image", "/nonexistent.png"], "no such file"),
    (["http://127.0.0.1:1", "--max-time", "forever"], "cannot read latency"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
