"""The weight-sharing supernet and the one-shot evaluator (tiny settings on digits)."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from search.core.errors import NasdeployError
from search.data.datasets import DataBundle, load_dataset
from search.evaluation.oneshot import (
    SUPERNET_DEFAULTS,
    OneShotEvaluator,
    SupernetSettings,
    load_supernet,
    read_supernet,
    supernet_settings,
)
from search.evaluation.proxy import AccuracyResult
from search.nn.model import build_model
from search.nn.ops import FactorizedReduce, Identity, ReLUConvBN
from search.nn.supernet import Supernet, estimate_supernet_params, sample_genotype
from search.space.genotype import NASNET_A, Block, Cell, Genotype
from search.space.scale import parse_scale
from search.space.searchspace import SearchSpace

REPO = Path(__file__).resolve().parents[1]

# Tiny: 4 channels per op, the digits at their native 8 px, 512 training images (160 steps).
TINY = SupernetSettings(scale="1@96", image_size=8, epochs=10, train_size=512, batch_size=32,
                        bn_batches=1, bn_batch_size=64, val_size=144, device="cpu")

# A genotype that exercises every part of the macro layout: concat and add, the same
# (input, op) in both branches, a reduction cell whose output holds an input state.
MIXED = Genotype(
    normal=Cell((
        Block((1, 1), ("sep_conv_3x3", "sep_conv_3x3"), "concat"),
        Block((0, 2), ("identity", "conv_1x3_3x1"), "add"),
        Block((2, 1), ("max_pool_3x3", "dil_conv_3x3"), "concat"),
        Block((0, 4), ("avg_pool_3x3", "conv_1x1"), "add"),
        Block((1, 1), ("conv_3x3", "sep_conv_5x5"), "add"),
    )),
    reduce=Cell((
        Block((1, 1), ("identity", "max_pool_5x5"), "add"),
        Block((1, 2), ("conv_1x7_7x1", "sep_conv_7x7"), "concat"),
        Block((2, 3), ("avg_pool_3x3", "max_pool_7x7"), "add"),
        Block((1, 3), ("conv_3x3", "identity"), "concat"),
        Block((1, 2), ("sep_conv_3x3", "conv_1x1"), "add"),
    )),
)


def swapped(genotype: Genotype) -> Genotype:
    """``genotype`` with the two branches of every block exchanged."""
    def cell(c: Cell) -> Cell:
        return Cell(tuple(Block(b.inputs[::-1], b.ops[::-1], b.combine) for b in c.blocks))
    return Genotype(cell(genotype.normal), cell(genotype.reduce))


def _outcome(result: AccuracyResult) -> tuple[float, str, str | None, int]:
    """A result without its timing."""
    return result.accuracy, result.status, result.error, result.params


def samples(count: int, seed: int = 7) -> list[Genotype]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_genotype(SearchSpace(5), generator) for _ in range(count)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread (the evaluator pins its own; the tests here too)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits: DataBundle, tmp_path_factory: pytest.TempPathFactory) -> OneShotEvaluator:
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    evaluator = OneShotEvaluator(digits, TINY, path)
    stream = io.StringIO()
    evaluator.prepare(progress=True, stream=stream)  # not a terminal: one line per epoch
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("supernet: training 1@96 at 8 px, 5 blocks, 10 epochs")
    assert sum(line.startswith("supernet epoch ") for line in lines) == TINY.epochs
    return evaluator


# --- the supernet -------------------------------------------------------------------


def _transfer(supernet: Supernet, genotype: Genotype, model: torch.nn.Module) -> None:
    """Copy the path of ``genotype`` (canonical) into a standalone NASNet of it."""
    model.stem.load_state_dict(supernet.stem.state_dict())
    index = {-1: None}
    for k, (cell, child) in enumerate(zip(supernet.cells, model.cells, strict=True)):
        spec = getattr(genotype, supernet.cell_kinds[k])
        pres = ((child.pre0, cell.pre0, index.get(k - 2)), (child.pre1, cell.pre1, index[k - 1]))
        for pre, sub, idx in pres:
            assert not isinstance(pre, Identity) or idx is None, "pick a genotype without identity pre0"
            state = sub.state_dict()
            if idx is not None:
                for name in [n for n in state if n.endswith("weight") and state[n].dim() == 4]:
                    state[name] = state[name][:, idx]
            pre.load_state_dict(state)
        for b, block in enumerate(spec.blocks):
            for j, (i, op) in enumerate(zip(block.inputs, block.ops, strict=True)):
                child.ops[2 * b + j].load_state_dict(cell.ops[b][i][op].state_dict())
            if block.combine == "concat":
                child.combines[b].load_state_dict(cell.combines[b].state_dict())
        for i in spec.output_states():
            if cell.reduction and i < 2:
                child.output_reducers[str(i)].load_state_dict(cell.output_reducers[i].state_dict())
        index[k] = cell.output_index(spec.output_states(), torch.device("cpu"))
    weight = supernet.classifier.weight.detach()
    last = index[len(supernet.cells) - 1]
    model.classifier.load_state_dict({"weight": weight if last is None else weight[:, last],
                                      "bias": supernet.classifier.bias.detach()})


def test_a_supernet_path_is_the_standalone_nasnet_of_its_genotype():
    torch.manual_seed(0)
    scale = parse_scale("1@48", 8)
    supernet = Supernet(5, scale, 10, add_scale=1.0)  # NASNet's sum (the default takes the mean)
    canonical = MIXED.canonical()
    model = build_model(canonical, scale, num_classes=10)
    assert isinstance(model.cells[2].pre0, FactorizedReduce) and isinstance(model.cells[1].pre1, ReLUConvBN)
    _transfer(supernet, canonical, model)
    x = torch.randn(6, 3, 8, 8)
    for train in (False, True):  # eval first: training mode updates the running statistics
        supernet.train(train)
        model.train(train)
        with torch.no_grad():
            assert torch.allclose(supernet(x, MIXED), model(x), atol=1e-5)


def test_swapping_a_blocks_branches_gives_the_same_network():
    torch.manual_seed(0)
    supernet = Supernet(5, parse_scale("1@48", 8), 10).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        for genotype in [MIXED, *samples(3)]:
            assert torch.equal(supernet(x, genotype), supernet(x, swapped(genotype)))


def test_parameter_estimate_is_exact():
    scale = parse_scale("1@48", 8)
    supernet = Supernet(5, scale, 7)
    assert sum(p.numel() for p in supernet.parameters()) == estimate_supernet_params(5, scale, 7)


@pytest.mark.parametrize("genotype, needle", [
    (NASNET_A, "explicit concat"),
    (Genotype(MIXED.normal, Cell(MIXED.reduce.blocks[:3])), "3 blocks"),
    (Genotype(Cell(MIXED.normal.blocks[:4]), Cell(MIXED.reduce.blocks[:4])), "4 blocks"),
])
def test_genotypes_outside_the_space_are_one_line_errors(trained, genotype, needle):
    with pytest.raises(NasdeployError, match=needle) as info:
        trained(genotype)
    assert "\n" not in str(info.value)
    with pytest.raises(NasdeployError, match=needle):
        trained.supernet(torch.zeros(1, 3, 8, 8), genotype)


# --- scoring ------------------------------------------------------------------------


def test_branch_swapped_genotypes_score_identically(trained):
    for genotype in samples(3, seed=11):
        first, second = trained(genotype), trained(swapped(genotype))
        assert first.status == second.status == "ok"
        assert (first.accuracy, first.params) == (second.accuracy, second.params)


def test_scoring_is_deterministic_and_leaves_the_global_rng_alone(trained):
    a, b = samples(2, seed=3)
    rng = torch.get_rng_state()
    first = trained(a)
    trained(b)
    again = trained(a)
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.accuracy == again.accuracy and first.status == "ok"
    assert 0 < first.params and first.error is None and first.train_time_s < 5


def test_a_trained_supernet_scores_candidates_above_chance(trained):
    scores = [trained(g).accuracy for g in samples(10, seed=5)]
    chance = 1 / trained.data.num_classes
    assert sum(scores) / len(scores) > 2 * chance  # 0.30 at these tiny settings (torch 2.14, CPU)


def test_a_nan_candidate_scores_zero_and_the_evaluator_goes_on(trained, tmp_path):
    copy = tmp_path / "supernet.pt"
    shutil.copy(trained.checkpoint, copy)
    evaluator = load_supernet(copy, trained.data, bn_batches=1, bn_batch_size=64, val_size=144)
    assert evaluator.settings.training() == TINY.training() and evaluator.settings.val_size == 144
    healthy, poisoned = samples(2, seed=21)
    blocks = list(poisoned.normal.blocks)
    blocks[0] = Block((1, 1), ("conv_3x3", "identity"), "add")
    poisoned = Genotype(Cell(tuple(blocks)), poisoned.reduce)
    if any("conv_3x3" in b.ops and 1 in b.inputs for b in healthy.normal.blocks[:1]):
        healthy = samples(1, seed=22)[0]
    expected = evaluator(healthy)
    with torch.no_grad():
        evaluator.supernet.cells[0].ops[0][1]["conv_3x3"].op[1].weight.fill_(float("nan"))
    result = evaluator(poisoned)
    assert (result.accuracy, result.status) == (0.0, "diverged")
    assert result.error and "\n" not in result.error and result.params > 0
    assert _outcome(evaluator(healthy)) == _outcome(expected)


def test_a_candidate_that_fails_scores_zero(trained, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("out of ideas\nsecond line")
    monkeypatch.setattr(trained, "_score", boom)
    result = trained(MIXED)
    assert (result.accuracy, result.status) == (0.0, "failed")
    assert result.error == "RuntimeError: out of ideas"


# --- checkpoints --------------------------------------------------------------------


def test_a_finished_checkpoint_is_loaded_not_retrained(trained, digits):
    again = OneShotEvaluator(digits, TINY, trained.checkpoint)
    stream = io.StringIO()
    again.prepare(stream=stream)
    assert stream.getvalue().startswith("supernet: loaded")
    assert again.seconds_trained == trained.seconds_trained > 0
    assert _outcome(again(MIXED)) == _outcome(trained(MIXED))


@pytest.mark.parametrize("change, needle", [
    (lambda data, s: (data, s, 3), "blocks per cell 5 there, 3 here"),
    (lambda data, s: (dataclasses.replace(data, name="cifar10"), s, 5),
     "dataset 'digits' there, 'cifar10' here"),
    (lambda data, s: (dataclasses.replace(data, num_classes=7), s, 5), "classes 10 there, 7 here"),
    (lambda data, s: (data, dataclasses.replace(s, scale="1@48"), 5), "scale '1@96' there, '1@48' here"),
    (lambda data, s: (data, dataclasses.replace(s, image_size=16), 5), "image size 8 there, 16 here"),
    (lambda data, s: (data, dataclasses.replace(s, epochs=11), 5), "epochs 10, this run asks for 11"),
])
def test_a_checkpoint_of_another_run_is_a_one_line_error(trained, digits, change, needle):
    data, settings, blocks = change(digits, TINY)
    with pytest.raises(NasdeployError, match=needle) as info:
        OneShotEvaluator(data, settings, trained.checkpoint, blocks).prepare(stream=io.StringIO())
    message = str(info.value)
    assert "\n" not in message and str(trained.checkpoint) in message


@pytest.mark.parametrize("content", [b"garbage", b"", "torch"])
def test_an_unreadable_or_foreign_checkpoint_is_a_one_line_error(digits, tmp_path, content):
    path = tmp_path / "supernet.pt"
    if content == "torch":
        torch.save({"format": "something-else", "weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(NasdeployError) as info:
        OneShotEvaluator(digits, TINY, path).prepare(stream=io.StringIO())
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(NasdeployError):
        load_supernet(path, digits)


_CHILD = """
import sys
from pathlib import Path
from search.data.datasets import load_dataset
from search.evaluation.oneshot import OneShotEvaluator, SupernetSettings
settings = SupernetSettings(**{settings!r})
OneShotEvaluator(load_dataset("digits"), settings, Path({path!r})).prepare(progress=False, stream=sys.stdout)
"""


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def test_training_killed_with_sigkill_resumes_to_the_same_weights(digits, tmp_path):
    settings = dataclasses.replace(TINY, epochs=4, train_size=128, batch_size=16)
    killed = tmp_path / "killed" / "supernet.pt"
    killed.parent.mkdir()
    # The child writes a checkpoint after every step (each one a new file renamed into place).
    every_step = dataclasses.replace(settings, checkpoint_every_s=0.0)
    code = _CHILD.format(settings={f.name: getattr(every_step, f.name) for f in dataclasses.fields(settings)},
                         path=str(killed))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        seen: set[int | None] = {None}
        deadline = time.monotonic() + 600  # a safety net only: the child is killed after 4 saves
        while len(seen) < 5 and child.poll() is None and time.monotonic() < deadline:
            seen.add(_inode(killed))
            time.sleep(0.005)
        child.kill()  # SIGKILL: no handler runs, a checkpoint may be half written
    finally:
        child.wait()
        stderr = child.stderr.read().decode() if child.stderr else ""
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -9, stderr
    state = read_supernet(killed)
    assert 3 <= state["step"] < state["total_steps"] == 32 and not state["finished"]
    with pytest.raises(NasdeployError, match="partly trained supernet"):
        load_supernet(killed, digits)

    resumed = OneShotEvaluator(digits, settings, killed)
    stream = io.StringIO()
    resumed.prepare(stream=stream)
    assert f"resuming at step {state['step']}" in stream.getvalue().splitlines()[0]
    uninterrupted = OneShotEvaluator(digits, settings, tmp_path / "whole" / "supernet.pt")
    uninterrupted.prepare(stream=io.StringIO())
    a, b = resumed.supernet.state_dict(), uninterrupted.supernet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_supernet(killed)["finished"] and resumed.seconds_trained > state["seconds"]


# --- settings -----------------------------------------------------------------------


def test_settings_defaults_and_validation():
    assert supernet_settings("digits") == SUPERNET_DEFAULTS["digits"]
    assert supernet_settings("digits", epochs=3, seed=None).epochs == 3
    assert supernet_settings("cifar10").image_size == 16
    with pytest.raises(TypeError):
        supernet_settings("digits", epoch=3)
    for bad in ({"epochs": 0}, {"lr": float("nan")}, {"scale": "huge"}, {"val_size": 0},
                {"momentum": 1.0}, {"seed": -1}, {"checkpoint_every_s": float("inf")}):
        with pytest.raises(NasdeployError) as info:
            SupernetSettings(**bad)
        assert "\n" not in str(info.value)
