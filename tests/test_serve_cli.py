"""``python -m serve.predict`` and ``python -m serve.bench`` on a tiny real model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serve_fixtures import build_tiny_model, export_tiny, sample_images, torch_probs

from export import tensorrt
from search.core import cli
from serve import bench, http, predict
from serve.preprocess import preprocess


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(build_tiny_model(), tmp_path_factory.mktemp("cli") / "model.onnx")


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(sample_images(2)):
        paths.append(folder / f"img{i}.png")
        image.save(paths[-1])
    return paths


def test_predict_json_matches_torch(tiny, image_paths, capsys):
    assert predict.main([str(tiny.path), *map(str, image_paths), "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = torch_probs(tiny.model, preprocess(sample_images(2), tiny.info))
    assert result["runtime"]["provider"] == "CPUExecutionProvider"
    assert result["batch_size"] == 2 and result["latency_ms"] > 0
    for pred, row in zip(result["predictions"], expected, strict=True):
        names = [tiny.info.class_names[i] for i in np.argsort(-row)[:3]]
        assert [t["class"] for t in pred["top"]] == names
        assert pred["top"][0]["probability"] == pytest.approx(row.max(), abs=1e-5)


def test_predict_json_file_keeps_the_table(tiny, image_paths, tmp_path, capsys):
    target = tmp_path / "out" / "predictions.json"
    assert predict.main([str(tiny.path), str(image_paths[0]), "--top-k", "2", "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["image", "#", "class", "probability"]
    result = json.loads(target.read_text())
    (pred,) = result["predictions"]
    assert pred["image"] == str(image_paths[0]) and len(pred["top"]) == 2
    assert pred["top"][0]["class"] in out


def test_predict_json_never_overwrites_an_input(tiny, image_paths, capsys):
    before = image_paths[0].read_bytes()
    assert predict.main([str(tiny.path), "--json", str(image_paths[0]), str(image_paths[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --json ") and "put --json last" in err and err.count("\n") == 1
    assert image_paths[0].read_bytes() == before


def test_predict_table(tiny, image_paths, capsys):
    assert predict.main([str(tiny.path), str(image_paths[0]), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "#", "class", "probability"]
    assert lines[2].startswith("img0.png") and len(lines) == 5
    assert lines[-1].startswith("latency:") and "CPUExecutionProvider" in lines[-1]


def test_predict_bad_inputs_exit_2_with_one_line(tiny, image_paths, tmp_path, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    cases = [
        ([str(tiny.path), str(junk)], "is not a recognised image"),
        ([str(tiny.path), str(tmp_path / "gone.png")], "image file not found"),
        ([str(tmp_path / "gone.onnx"), str(image_paths[0])], "model file not found"),
        ([str(junk), str(image_paths[0])], "don't know how to run"),
    ]
    for argv, message in cases:
        assert predict.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_predict_as_a_module_prints_no_traceback(tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x00garbage")
    out = subprocess.run(
        [sys.executable, "-m", "serve.predict", str(junk), str(junk)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_bench_json_report(tiny, tmp_path, capsys):
    report_path = tmp_path / "out" / "bench.json"
    argv = [str(tiny.path), "--batch-sizes", "1,3", "--warmup", "1", "--iters", "4",
            "--json", str(report_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "CPUExecutionProvider" in out and "host:" in out
    report = json.loads(report_path.read_text())
    assert f"{report['results'][0]['p50_ms']:.3f}" in out
    assert [r["batch_size"] for r in report["results"]] == [1, 3]
    for row in report["results"]:
        assert row["iters"] == 4 and row["skipped"] is None
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        expected = row["batch_size"] * 4 / (row["mean_ms"] * 4 / 1000)
        assert row["throughput_ips"] == pytest.approx(expected, rel=1e-6)
    assert report["runtime"]["provider"] == "CPUExecutionProvider"
    assert report["host"]["cores"] >= 1 and report["host"]["onnxruntime"]
    assert report["model_info"]["scale"] == "1@48" and report["model_info"]["image_size"] == 16


def test_bench_skips_batch_sizes_a_fixed_model_cannot_run(tiny, tmp_path, capsys):
    fixed = export_tiny(tiny.model, tmp_path / "fixed.onnx", dynamic_batch=False, batch_size=1)
    report = bench.run_bench(bench.BenchConfig(fixed.path, batch_sizes=(1, 8), warmup=0, iters=2))
    ran, skipped = report["results"]
    assert ran["iters"] == 2 and ran["skipped"] is None
    assert skipped == {"batch_size": 8, "skipped": "model has a fixed batch size of 1"}
    assert bench.main([str(fixed.path), "--batch-sizes", "1,8", "--iters", "2"]) == 0
    assert "batch 8 skipped: model has a fixed batch size of 1" in capsys.readouterr().out


def test_bench_bare_json_prints_only_the_report(tiny, capsys):
    assert bench.main([str(tiny.path), "--batch", "2", "--warmup", "0", "--iters", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # the whole of stdout: no table around it
    (row,) = report["results"]
    assert row["batch_size"] == 2 and row["iters"] == 3 and row["p50_ms"] > 0
    assert report["config"]["batch_sizes"] == [2] and report["config"]["iters"] == 3


@pytest.mark.parametrize("flag, value, seconds", [("--duration", "500ms", 0.5), ("--duration", "1s", 1.0),
                                                  ("--seconds", "0.5", 0.5)])
def test_bench_duration_takes_a_unit(tiny, capsys, flag, value, seconds):
    argv = [str(tiny.path), "--batch-sizes", "1", "--warmup", "0", flag, value, "--json"]
    start = time.perf_counter()
    assert bench.main(argv) == 0
    elapsed = time.perf_counter() - start
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert report["config"]["seconds"] == seconds and report["config"]["iters"] is None
    assert row["iters"] >= bench.MIN_ITERS and elapsed >= seconds * 0.9


def test_bench_seconds_mode_runs_at_least_min_iters(tiny):
    config = bench.BenchConfig(tiny.path, batch_sizes=(2,), warmup=0, seconds=0.05)
    (row,) = bench.run_bench(config)["results"]
    assert row["iters"] >= bench.MIN_ITERS


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "1,x"], "not a whole number: 'x'"),
    (["--batch-sizes", "0"], "must be at least 1"),
    (["--duration", "2 fortnights"], "cannot read duration"),
    (["--duration", "0s"], "duration must be positive"),
    (["--iters", "3", "--duration", "1s"], "not allowed with argument --iters"),
    (["--batch", "1,8"], "argument --batch: not a whole number"),
    (["--batch", "8", "--batch-sizes", "1,2"], "not allowed with argument --batch"),
])
def test_bench_bad_arguments(tiny, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main([str(tiny.path), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_bench_missing_model_exit_2(tmp_path, capsys):
    assert bench.main([str(tmp_path / "none.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: model file not found")


CLIS = {"serve.predict": predict, "serve.bench": bench, "serve.http": http, "export.tensorrt": tensorrt}


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_flag_has_help_with_its_default_and_json_is_optional_file(name, capsys):
    parser = CLIS[name].build_parser()
    assert parser.prog == f"python -m {name}"
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.dest
        if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
            assert "(default: " in parser._get_formatter()._expand_help(action), action.dest
    (json_flag,) = [a for a in parser._actions if "--json" in a.option_strings]
    assert json_flag.nargs == "?" and json_flag.const == cli.STDOUT and "--json [FILE]" in text
    positionals = ["x.onnx", "y.png"] if name == "serve.predict" else ["x.onnx"]
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*positionals, "--no-such-flag"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: unrecognized arguments: --no-such-flag")
    assert err.count("\n") == 1 and f"python -m {name} --help" in err


def test_help_shows_defaults_with_their_units():
    texts = {name: " ".join(module.build_parser().format_help().split()) for name, module in CLIS.items()}
    assert "(default: 2s)" in texts["serve.bench"] and "(default: 1,8,32)" in texts["serve.bench"]
    assert "(default: 10M)" in texts["serve.http"] and "(default: 1G)" in texts["export.tensorrt"]
    assert "TensorRT optimization profile" in texts["export.tensorrt"]
