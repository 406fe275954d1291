"""Latency panels: written by ``search.latency panel``, timed torch-free by ``serve.bench --panel``.

Real tiny panels (1@48 at 16 px): real export, real ONNX Runtime timing, real files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.core.errors import NasdeployError
from search.evaluation.latency import build_deployment_model
from search.evaluation.panel import PanelSpec, sample_genotypes, write_panel
from search.latency import build_parser
from search.latency import main as latency_main
from search.runtime.panel import (
    MEASUREMENTS_FORMAT,
    PanelTiming,
    measure_panel,
    read_manifest,
    write_measurements,
)
from search.space.genotype import Genotype
from search.space.searchspace import SearchSpace
from serve import bench

ROOT = Path(__file__).resolve().parents[1]
SPEC = PanelSpec(target_variant="1@48", samples=3, image_size=16, blocks=2, seed=7)
FAST = PanelTiming(threads=1, warmup=1, repeats=5)


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("panel") / "p"
    write_panel(SPEC, out)
    return out


def test_panel_holds_seeded_distinct_genotypes_built_as_the_search_builds_them(panel: Path) -> None:
    manifest = read_manifest(panel)
    assert (manifest["format"], manifest["version"], manifest["batch"]) == ("nasdeploy-latency-panel", 1, 1)
    assert (manifest["target_variant"], manifest["image_size"], manifest["blocks"]) == ("1@48", 16, 2)
    assert [m["id"] for m in manifest["models"]] == ["p000", "p001", "p002"]
    genotypes = [Genotype.from_dict(m["genotype"]) for m in manifest["models"]]
    assert genotypes == sample_genotypes(SearchSpace(2), 3, seed=7)  # same seed, same genotypes
    assert len({g.to_json() for g in genotypes}) == 3
    for model, genotype in zip(manifest["models"], genotypes, strict=True):
        SearchSpace(2).encode(genotype)  # inside the search space
        _, macs, params = build_deployment_model(genotype, "1@48", 10, 16)
        assert (model["macs"], model["params"]) == (macs, params)
        assert (panel / model["file"]).stat().st_size > 1000
    assert sample_genotypes(SearchSpace(2), 3, seed=8) != genotypes
    with pytest.raises(NasdeployError, match="already holds a latency panel"):
        write_panel(SPEC, panel)


def test_measure_panel_times_every_model_with_median_and_spread(panel: Path, tmp_path: Path) -> None:
    lines = []
    measurements = measure_panel(panel, FAST, lambda done, total, row: lines.append((done, total, row["id"])))
    assert measurements["format"] == MEASUREMENTS_FORMAT and measurements["version"] == 1
    assert measurements["panel"] == {"target_variant": "1@48", "image_size": 16, "num_classes": 10,
                                     "blocks": 2, "batch": 1}
    device = measurements["device"]
    assert (device["runtime"], device["provider"], device["threads"], device["precision"]) == (
        "onnxruntime", "CPUExecutionProvider", 1, "fp32")
    assert device["cpu"] and device["host"] and device["runtime_version"]
    assert measurements["settings"]["statistic"] == "median" and measurements["settings"]["repeats"] == 5
    assert lines == [(1, 3, "p000"), (2, 3, "p001"), (3, 3, "p002")]
    manifest = read_manifest(panel)
    for row, model in zip(measurements["results"], manifest["models"], strict=True):
        assert (row["id"], row["genotype"], row["macs"]) == (model["id"], model["genotype"], model["macs"])
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["samples"] == 5
    out = write_measurements(tmp_path / "m.json", measurements)
    assert json.loads(out.read_text()) == measurements


def test_rounds_interleave_and_take_the_median_of_round_medians(panel: Path) -> None:
    import dataclasses
    import statistics

    lines = []
    timing = dataclasses.replace(FAST, rounds=3)
    measurements = measure_panel(panel, timing, lambda done, total, row: lines.append(done))
    assert measurements["settings"]["rounds"] == 3 and lines == [1, 2, 3]  # progress once per model
    for row in measurements["results"]:
        assert len(row["round_medians_ms"]) == 3 and row["samples"] == 15
        assert row["median_ms"] == statistics.median(row["round_medians_ms"])


def test_serve_bench_panel_is_torch_free_with_a_line_per_model(panel: Path, tmp_path: Path) -> None:
    out = tmp_path / "measurements.json"
    code = ("import sys; sys.modules['torch'] = None\n"  # any torch import would fail
            "from serve.bench import main\n"
            f"code = main(['--panel', {str(panel)!r}, '--threads', '2', '--iters', '4', '--warmup', '1', "
            f"'--json', {str(out)!r}])\n"
            "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
            "raise SystemExit(code)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert [line.split()[1] for line in progress] == ["p000:", "p001:", "p002:"]
    assert all("ms median (p10" in line for line in progress)
    measurements = json.loads(out.read_text())
    assert measurements["device"]["threads"] == 2 and len(measurements["results"]) == 3
    assert all(row["samples"] == 4 for row in measurements["results"])
    assert "p002" in done.stdout  # the table is printed too


def _copy(panel: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(panel, target)
    return target


def _edit(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
    (lambda d: _edit(d, lambda m: m.update(format="something-else")), "has format 'something-else'"),
    (lambda d: _edit(d, lambda m: m.update(version=2)), "has version 2"),
    (lambda d: _edit(d, lambda m: m.pop("image_size")), "field 'image_size' is missing"),
    (lambda d: _edit(d, lambda m: m.update(models=[])), "lists no models"),
    (lambda d: (d / "p001.onnx").unlink(), "model file p001.onnx is missing"),
    (lambda d: _edit(d, lambda m: m["models"][0].update(file="../p000.onnx")), "not a plain .onnx file"),
    (lambda d: _edit(d, lambda m: m["models"][1].update(id="p000")), "'p000' appears twice"),
    (lambda d: _edit(d, lambda m: m["models"][2].pop("genotype")), "field 'genotype' is missing"),
])
def test_a_bad_panel_is_one_line_and_exit_2(panel: Path, tmp_path: Path, breakage, message,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    broken = _copy(panel, tmp_path)
    breakage(broken)
    with pytest.raises(NasdeployError, match="not a usable latency panel"):
        read_manifest(broken)
    assert bench.main(["--panel", str(broken), "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_panel_mode_refuses_a_model_too_and_a_missing_folder(panel: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([str(panel / "p000.onnx"), "--panel", str(panel)]) == 2
    assert bench.main(["--panel", str(tmp_path / "none")]) == 2
    assert bench.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: give a MODEL or --panel DIR, not both",
                   f"error: latency panel folder not found: {tmp_path / 'none'}",
                   "error: give a model file, or --panel DIR to time a latency panel"]


def test_latency_cli_panel_then_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--target-variant", "1@48", "--image-size", "16", "--blocks", "2", "--samples", "2"]
    assert latency_main(["panel", *common, "--out", str(tmp_path / "a"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"] == 2 and summary["format"] == "nasdeploy-latency-panel"
    assert len(read_manifest(tmp_path / "a")["models"]) == 2
    assert latency_main(["profile", *common, "--out", str(tmp_path / "b"), "--repeats", "3",
                         "--warmup", "0"]) == 0
    captured = capsys.readouterr()
    assert "timed 2 models" in captured.out and "measurements.json" in captured.out
    assert captured.err.count("exported in") == 2 and captured.err.count("ms median") == 2
    measurements = json.loads((tmp_path / "b" / "measurements.json").read_text())
    assert [r["samples"] for r in measurements["results"]] == [3, 3]
    # the same seed samples the same genotypes on both paths
    panel_a = read_manifest(tmp_path / "a")["models"]
    assert [m["genotype"] for m in panel_a] == [r["genotype"] for r in measurements["results"]]


@pytest.mark.parametrize("argv, message", [
    (["panel", "--samples", "0", "--out", "x"], "--samples: must be at least 1"),
    (["panel", "--out", "x", "--target-variant", "huge"], "unknown variant 'huge'"),
    (["profile", "--out", "x", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["panel"], "the following arguments are required: --out"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_latency_cli_errors_are_one_line(argv, message, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = latency_main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_every_latency_subcommand_flag_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"panel", "profile"} <= set(sub.choices)
    for name, command in sub.choices.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert (action.help or "").strip(), (name, action.dest)
            shown = formatter._get_help_string(action) % {"default": action.default}
            if action.option_strings and action.default not in (None, False):
                assert "default" in shown, (name, action.dest)
        assert "--json" in command.format_help()
    profile_help = " ".join(sub.choices["profile"].format_help().split())
    assert "(default: 1)" in profile_help and "(default: 3s)" in profile_help
