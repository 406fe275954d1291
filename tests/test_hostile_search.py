"""Hostile and absurd input on the search side (issue 17): every case is refused with exit
status 2 and exactly one ``error:`` line, without a traceback or a hang, and writes nothing
(the directory tree is compared before and after, sizes and modification times included).

Add a row to ``CASES`` for every new way in: a setup that builds the hostile files under
``tmp_path`` (``{tmp}`` in the arguments), the entry point, its arguments and a fragment
of the expected message.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.onnx import main as export_main
from search.experiment.session import SearchConfig
from search.info import main as info_main
from search.run import main as run_main
from search.space.genotype import LITE
from search.train import main as train_main
from search.trials.history import TrialRecord

MAINS: dict[str, Callable[[list[str]], int]] = {
    "search.info": info_main, "search.run": run_main, "search.train": train_main, "export.onnx": export_main}
ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000
WEIGHTS = "latency weights must be <= 0 and >= -10"
BUDGET = ["--latency-budget", "5ms", "--dataset", "digits", "--trials", "1", "--out", "{tmp}/new-run"]


# --- the hostile files ------------------------------------------------------------------


def _genotype_with(path: Path, index: str) -> None:
    """A genotype whose first input index is the literal ``index``."""
    text = json.dumps(LITE.to_dict()).replace('"inputs": [1, 0]', f'"inputs": [{index}, 0]', 1)
    assert index in text
    path.write_text(text)


def _record(trial: int = 0, **changes: object) -> dict:
    record = TrialRecord(trial, "tpe", LITE.to_dict(), 0.5, 1.0, 10**6, 10**4, 0.5, True, "ok", None,
                         1.0, 0.5, 0.1, "2026-11-23T20:00:00Z").to_dict()
    return {**record, **changes}


def _run_dir(tmp: Path, strategy: str = "tpe", *, config: dict | None = None,
             lines: list[str] | None = None) -> Path:
    """A search run directory as a finished trial leaves it (config.json and trials.jsonl)."""
    run = tmp / "run"
    run.mkdir()
    settings = SearchConfig(latency_budget="5ms", strategy=strategy, dataset="digits", trials=1,
                            out=str(run)).to_dict()
    (run / "config.json").write_text(json.dumps({**settings, **(config or {})}, indent=2) + "\n")
    lines = [json.dumps(_record())] if lines is None else lines
    (run / "trials.jsonl").write_text("".join(line + "\n" for line in lines))
    return run


def _image_folder(root: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()


SETUPS: dict[str, Callable[[Path], object]] = {
    "none": lambda tmp: None,
    "deep genotype": lambda tmp: (tmp / "deep.json").write_text(DEEP),
    "5001-digit index": lambda tmp: _genotype_with(tmp / "big.json", "9" * 5001),
    "4001-digit index": lambda tmp: _genotype_with(tmp / "big.json", "9" * 4001),
    "deep config": lambda tmp: (_run_dir(tmp) / "config.json").write_text(DEEP),
    "config NaN weight": lambda tmp: (_run_dir(tmp) / "config.json").write_text(
        (tmp / "run" / "config.json").read_text().replace('"latency_weight": null', '"latency_weight": NaN')),
    "config string trials": lambda tmp: _run_dir(tmp, config={"trials": "many"}),
    "config huge seed": lambda tmp: _run_dir(tmp, config={"seed": 10**30}),
    "deep trial line": lambda tmp: _run_dir(tmp, lines=[json.dumps(_record()), DEEP]),
    "trial of wrong types": lambda tmp: _run_dir(tmp, lines=[json.dumps(_record(accuracy="high"))]),
    "trial without genotype": lambda tmp: _run_dir(tmp, lines=[json.dumps(_record(genotype={"x": 1}))]),
    "random study.db": lambda tmp: (_run_dir(tmp) / "study.db").write_bytes(
        random.Random(0).randbytes(65536)),
    "foreign study.db": lambda tmp: _foreign_sqlite(_run_dir(tmp) / "study.db"),
    "garbage controller.pt": lambda tmp: (_run_dir(tmp, "rl") / "controller.pt").write_bytes(b"not a pickle"),
    "one-class folder": lambda tmp: _image_folder(tmp / "images", {"cat": 6}),
    "too few images": lambda tmp: _image_folder(tmp / "images", {"cat": 2, "dog": 2}),
    "a class of one image": lambda tmp: _image_folder(tmp / "images", {"cat": 1, "dog": 5}),
}

CASES = [  # (row, setup, entry point, arguments, a fragment of the one line)
    ("1 genotype: info", "deep genotype", "search.info", ["{tmp}/deep.json"], "nested deeper than 64"),
    ("1 genotype: train", "deep genotype", "search.train", ["{tmp}/deep.json", "--dataset", "digits"],
     "nested deeper than 64"),
    ("1 genotype: export", "deep genotype", "export.onnx", ["{tmp}/deep.json", "--out", "{tmp}/out"],
     "nested deeper than 64"),
    ("1 config.json", "deep config", "search.run", ["--resume", "{tmp}/run"], "nested deeper than 64"),
    ("1 trials.jsonl line", "deep trial line", "search.run", ["--resume", "{tmp}/run"],
     "line 2 is corrupt (nested deeper than 64"),
    ("1 trial types", "trial of wrong types", "search.run", ["--resume", "{tmp}/run"],
     "field 'accuracy' must be a number"),
    ("1 trial genotype", "trial without genotype", "search.run", ["--resume", "{tmp}/run"],
     "trial 0: invalid genotype"),
    ("1 config types", "config string trials", "search.run", ["--resume", "{tmp}/run"],
     "setting 'trials' must be a whole number or null"),
    ("1 config NaN", "config NaN weight", "search.run", ["--resume", "{tmp}/run"], "contains NaN"),
    ("1 config seed", "config huge seed", "search.run", ["--resume", "{tmp}/run"], "--seed must be from 0"),
    ("2 index: info", "5001-digit index", "search.info", ["{tmp}/big.json"],
     "integer of more than 4300 digits"),
    ("2 index: export", "5001-digit index", "export.onnx", ["{tmp}/big.json", "--out", "{tmp}/out"],
     "integer of more than 4300 digits"),
    ("2 index in range of int()", "4001-digit index", "search.info", ["{tmp}/big.json"],
     "index a 4001-digit number out of range"),
    ("3 latency budget", "none", "search.run", [*BUDGET[2:], "--latency-budget", "1e400ms"], "latency"),
    ("3 MAC budget", "none", "search.run", [*BUDGET, "--macs-budget", "1e400"], "--macs-budget"),
    ("3 FLOP budget", "none", "search.run", [*BUDGET, "--flops-budget", "1e400"], "count"),
    ("4 random study.db", "random study.db", "search.run", ["--resume", "{tmp}/run", "--trials", "3"],
     "study.db is not a readable Optuna study"),
    ("4 foreign study.db", "foreign study.db", "search.run", ["--resume", "{tmp}/run"],
     "tables of another program"),
    ("4 controller.pt", "garbage controller.pt", "search.run", ["--resume", "{tmp}/run"],
     "not a controller checkpoint"),
    ("10 N@F: info", "none", "search.info", ["nasnet-a", "--variant", "100@100000"], "N is at most 64"),
    ("10 N@F digits", "none", "search.info", ["nasnet-a", "--variant", "1@" + "9" * 5001], "too large"),
    ("10 image size: info", "none", "search.info", ["nasnet-a", "--image-size", "100000"], "at most 4096 px"),
    ("10 parameters: info", "none", "search.info", ["nasnet-a", "--variant", "64@65536"],
     "G parameters (the limit is 1 G)"),
    ("10 feature maps: info", "none", "search.info",
     ["nasnet-a", "--variant", "cifar", "--image-size", "4096"],
     "GiB of feature maps per image (the limit is 16 GiB)"),
    ("10 classes: info", "none", "search.info", ["nasnet-a", "--num-classes", "99999999999"],
     "number of classes must be 1 to 100,000"),
    ("10 image size: train", "none", "search.train", ["lite", "--dataset", "digits", "--image-size", "100000",
                                                      "--out", "{tmp}/train"], "at most 4096 px"),
    ("10 parameters: train", "none", "search.train", ["lite", "--dataset", "digits", "--variant", "64@65536",
                                                      "--out", "{tmp}/train"], "too large to build"),
    ("10 target: run", "none", "search.run", [*BUDGET, "--target-variant", "64@65536"], "too large to build"),
    ("10 child: run", "none", "search.run", [*BUDGET, "--child-scale", "64@60000"], "too large to build"),
    ("10 image size: run", "none", "search.run", [*BUDGET, "--image-size", "100000"], "at most 4096 px"),
    ("10 blocks: run", "none", "search.run", [*BUDGET, "--blocks", "1000000"], "--blocks must be at most 20"),
    ("12 device: info", "none", "search.info", ["/dev/zero"], "is not a regular file (a character device)"),
    ("14 NaN weight", "none", "search.run", [*BUDGET, "--latency-weight", "nan"], WEIGHTS),
    ("14 infinite weight", "none", "search.run", [*BUDGET, "--latency-weight", "inf"], WEIGHTS),
    ("14 -inf weight", "none", "search.run", [*BUDGET, "--latency-weight=-inf"], WEIGHTS),
    ("14 positive weight", "none", "search.run", [*BUDGET, "--latency-weight", "0.5"], WEIGHTS),
    ("14 steep weight", "none", "search.run", [*BUDGET, "--latency-weight=-1e6"], WEIGHTS),
    ("15 one class: run", "one-class folder", "search.run",
     [*BUDGET[:2], "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--out", "{tmp}/new-run"],
     "has 1 class (only 'cat'): a classifier needs at least 2 classes"),
    ("15 one class: train", "one-class folder", "search.train",
     ["lite", "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--out", "{tmp}/train"],
     "needs at least 2 classes"),
    ("15 few images: run", "too few images", "search.run",
     [*BUDGET[:2], "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--out", "{tmp}/new-run"],
     "too few to hold out 10% of them for validation"),
    ("15 one image in a class: run", "a class of one image", "search.run",
     [*BUDGET[:2], "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--out", "{tmp}/new-run"],
     "class 'cat' has 1 training image(s); each class needs at least 2"),
    ("16 zero classes: export", "none", "export.onnx",
     ["nasnet-a", "--num-classes", "0", "--out", "{tmp}/out"], "--num-classes: must be at least 1"),
    ("weight decay inf: train", "none", "search.train", ["lite", "--weight-decay", "inf"], "--weight-decay"),
    ("learning rate 1e300: train", "none", "search.train",
     ["lite", "--dataset", "digits", "--lr", "1e300", "--out", "{tmp}/train"], "learning rate must be"),
    ("seed beyond torch: train", "none", "search.train",
     ["lite", "--dataset", "digits", "--seed", str(2**70), "--out", "{tmp}/train"], "seed must be from 0"),
]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def refused(capsys, entry: str, argv: list[str]) -> str:
    """Run ``entry``'s ``main(argv)`` in-process; assert exit 2 and one ``error:`` line."""
    try:
        code = MAINS[entry](argv)
    except SystemExit as stop:  # the parser's refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row, setup, entry, argv, fragment", CASES, ids=[case[0] for case in CASES])
def test_hostile_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, row, setup, entry,
                                                      argv, fragment):
    monkeypatch.chdir(tmp_path)  # a default output folder (runs/...) would land here
    SETUPS[setup](tmp_path)
    before = tree(tmp_path)
    line = refused(capsys, entry, [arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert fragment in line, line
    assert len(line) < 400, line
    assert tree(tmp_path) == before


def test_a_failed_resume_leaves_config_json_byte_for_byte(capsys, tmp_path):
    """Row 4: a TPE run whose study.db is random bytes, resumed with a new trial count."""
    SETUPS["random study.db"](tmp_path)
    config = (tmp_path / "run" / "config.json").read_bytes()
    refused(capsys, "search.run", ["--resume", str(tmp_path / "run"), "--trials", "7"])
    assert (tmp_path / "run" / "config.json").read_bytes() == config
    assert json.loads(config)["trials"] == 1


def test_a_training_run_that_diverges_in_its_first_epoch_leaves_no_directory(capsys, tmp_path):
    """A real divergence (a weight decay of 1e30 at lr 10): one line, and no empty run directory."""
    out = tmp_path / "train"
    line = refused(capsys, "search.train", [
        "lite", "--dataset", "digits", "--variant", "1@48", "--epochs", "1", "--train-size", "128",
        "--batch", "32", "--lr", "10", "--weight-decay", "1e30", "--grad-clip", "0", "--out", str(out),
        "--no-progress"])
    assert "training diverged" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- in a real process: no hang on a FIFO, no traceback -----------------------------------


def _python(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("module, where", [("search.info", "f.json"), ("search.run", "run/config.json")])
def test_a_fifo_is_refused_at_once_in_a_real_process(tmp_path, module, where):
    """Row 12: a FIFO where a JSON file belongs; opening it for reading would block forever."""
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / where)
    argv = [where] if module == "search.info" else ["--resume", "run"]
    before = tree(tmp_path)
    done = _python(module, *argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: {where} is not a regular file (a FIFO); give a file on disk"]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("setup, module, argv", [
    ("deep genotype", "search.info", ["deep.json"]),
    ("5001-digit index", "search.info", ["big.json"]),
    ("random study.db", "search.run", ["--resume", "run"]),
    ("none", "search.info", ["nasnet-a", "--variant", "100@100000"]),
    ("none", "search.run", ["--latency-budget", "5ms", "--latency-weight", "nan", "--dataset", "digits"]),
])
def test_rows_in_a_real_process(tmp_path, setup, module, argv):
    SETUPS[setup](tmp_path)
    before = tree(tmp_path)
    done = _python(module, *argv, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert tree(tmp_path) == before


# --- the size limits of row 10 rest on an estimate that must match the builder ------------


def _feature_map_bytes(model, image_size: int) -> int:
    """Bytes of every leaf module's output in one forward pass at batch 1 (float32)."""
    import torch

    total = [3 * image_size * image_size]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor) and not list(module.children()):
            total[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return 4 * total[0]


def test_the_size_estimate_matches_the_built_network():
    from search.nn.cost import count_params
    from search.nn.model import build_model
    from search.space.genotype import REFERENCE_GENOTYPES
    from search.space.scale import _worst_cells, estimate_size, parse_scale
    from search.space.searchspace import SearchSpace

    rng = random.Random(0)
    space = SearchSpace(3)
    genotypes = [*REFERENCE_GENOTYPES.values(), *_worst_cells(3)[::4],
                 *(space.decode([rng.randrange(d.size) for d in space.decisions()]) for _ in range(3))]
    for variant, size in (("2@48", 16), ("1@48", 72)):  # the CIFAR and the ImageNet layout
        scale = parse_scale(variant, size)
        for genotype in genotypes:
            model = build_model(genotype, scale, num_classes=7)
            estimate = estimate_size(genotype, scale, num_classes=7)
            assert estimate.params == count_params(model)
            assert 0.8 <= estimate.activation_bytes / _feature_map_bytes(model, size) <= 1.6


def test_the_limits_leave_the_papers_variants_and_every_candidate_of_their_space():
    from search.space.genotype import NASNET_A
    from search.space.scale import MAX_PARAMS, check_size, estimate_size, parse_scale

    for variant in ("cifar", "mobile", "large"):
        check_size(parse_scale(variant), 5, 1000)  # the largest candidate of a 5-block search
    assert 88e6 < estimate_size(NASNET_A, parse_scale("large"), 1000).params < 89e6  # the paper: 88.9 M
    assert check_size(parse_scale("mobile", 2048), NASNET_A).params < MAX_PARAMS
