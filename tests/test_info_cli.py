"""python -m search.info: cells, scale, parameters and MACs; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from search.info import main
from search.nn.cost import count_macs, count_params
from search.nn.model import build_model
from search.space.genotype import NASNET_A

SMALL = ["--variant", "2@48", "--image-size", "16"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search.info", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_matches_the_built_network(capsys):
    info = _json(capsys, ["nasnet-a", *SMALL, "--json"])
    model = build_model(NASNET_A, "2@48", num_classes=10, image_size=16)
    assert isinstance(info["params"], int) and isinstance(info["macs"], int)
    assert info["params"] == count_params(model)
    assert info["macs"] == count_macs(model, 16)
    assert info["notation"] == "2@48" and info["image_size"] == 16 and info["num_classes"] == 10
    assert info["layout"] == "cifar" and info["genotype"] == NASNET_A.to_dict()


def test_class_count_defaults_follow_the_layout(capsys):
    imagenet = ["nasnet-a", "--variant", "1@48", "--image-size", "72", "--json"]
    default = _json(capsys, imagenet)
    ten = _json(capsys, [*imagenet, "--num-classes", "10"])
    assert default["layout"] == "imagenet" and default["num_classes"] == 1000
    assert len(default["stem_cell_widths"]) == 2
    # Only the classifier differs: 990 more outputs, each with F weights and a bias.
    assert default["params"] - ten["params"] == 990 * (default["output_channels"] + 1)


def test_text_report_lists_cells_scale_and_cost(capsys):
    assert main(["nasnet-a", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "b3 = avg_pool_3x3(b0) + identity(b1)" in out
    assert "h[k] = concat(h[k-2], b0, b1, b2, b3, b4)" in out
    assert "2@48 (2 normal cells per stage" in out and "cifar layout, 16 px input, 10 classes" in out
    assert "width C:   stages 2, 4, 8" in out
    model = build_model(NASNET_A, "2@48", num_classes=10, image_size=16)
    assert f"({count_params(model):,})" in out


def test_draw_writes_the_picture(tmp_path, capsys):
    path = tmp_path / "cells.png"
    info = _json(capsys, ["lite", *SMALL, "--json", "--draw", str(path)])
    assert info["params"] > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mobile_json_reproduces_the_paper():
    result = _run("nasnet-a", "--variant", "mobile", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["variant"] == "mobile" and info["notation"] == "4@1056" and info["num_classes"] == 1000
    assert info["params"] == pytest.approx(5.3e6, rel=0.02)
    assert info["macs"] == pytest.approx(564e6, rel=0.02)


@pytest.mark.slow
def test_large_json_reproduces_the_paper():
    result = _run("nasnet-a", "--variant", "large", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == pytest.approx(88.9e6, rel=0.02)
    assert info["macs"] == pytest.approx(23.8e9, rel=0.02)


BAD_FILES = {
    "not-json.json": ("{oops", "not valid JSON"),
    "unknown-op.json": (
        {"version": 1, "normal": [{"inputs": [0, 1], "ops": ["sep_conv_9x9", "identity"]}],
         "reduce": [{"inputs": [0, 1], "ops": ["identity", "identity"]}]},
        "unknown op 'sep_conv_9x9'",
    ),
    "bad-index.json": (
        {"version": 1, "normal": [{"inputs": [0, 2], "ops": ["identity", "identity"]}],
         "reduce": [{"inputs": [0, 1], "ops": ["identity", "identity"]}]},
        "out of range",
    ),
    "no-reduce.json": ({"version": 1, "normal": [{"inputs": [0, 1], "ops": ["identity", "identity"]}]},
                       "reduce: missing cell"),
    "wrong-version.json": ({"version": 7, "normal": [], "reduce": []}, "unsupported version"),
}


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # rejected by the parser
        return int(stop.code or 0)


def _one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert _exit_status(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_genotype_file_is_one_line(tmp_path, capsys, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    _one_line_error(capsys, [str(path), *SMALL], expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["missing.json"], "not found"),
        (["nasnet-z"], "built-ins: nasnet-a"),
        (["nasnet-a", "--variant", "huge"], "unknown variant 'huge'"),
        (["nasnet-a", "--variant", "4@x"], "N@F"),
        (["nasnet-a", "--variant", "0@16"], "must be positive"),
        (["nasnet-a", *SMALL, "--num-classes", "0"], "--num-classes"),
        (["nasnet-a", "--image-size", "4"], "at least 8 px"),
    ],
)
def test_bad_arguments_are_one_line(capsys, argv, expected):
    _one_line_error(capsys, argv, expected)


def test_bad_draw_suffix_writes_nothing(tmp_path, capsys):
    _one_line_error(capsys, ["nasnet-a", *SMALL, "--draw", str(tmp_path / "cells.jpg")], ".png or .svg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["nasnet-a", "--variant", "4@"], "N@F"),  # fails before torch is imported: fast
        pytest.param(["{genotype}"], "unknown op", marks=pytest.mark.slow),  # imports torch: ~5 s
    ],
)
def test_process_exits_2_with_one_line(tmp_path, argv, expected):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(BAD_FILES["unknown-op.json"][0]))
    result = _run(*(a.format(genotype=path) for a in argv))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
