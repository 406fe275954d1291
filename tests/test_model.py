"""The builder: layouts, auxiliary head, ScheduledDropPath, concat combine, odd sizes."""

from __future__ import annotations

import pytest
import torch

from search.nn.model import build_model
from search.space.genotype import LITE, NASNET_A, Block, Cell, Genotype

TINY = "1@48"


def test_cifar_layout_shapes_and_widths():
    model = build_model(NASNET_A, "2@48", num_classes=7, image_size=16).eval()
    assert model.scale.layout == "cifar"
    # 2 cells per stage + 2 reductions; widths double at each reduction, F = 6 * 4C
    assert len(model.cells) == 8
    assert model.cells[-1].out_channels == 48
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_imagenet_layout_has_two_stem_reduction_cells():
    model = build_model(NASNET_A, TINY, num_classes=5, image_size=72).eval()
    assert model.scale.layout == "imagenet"
    assert [c.reduction for c in model.cells[:2]] == [True, True]
    assert len(model.cells) == 2 + 3 + 2
    assert model(torch.randn(1, 3, 72, 72)).shape == (1, 5)


@pytest.mark.parametrize("size", [15, 17, 33])
def test_odd_image_sizes(size):
    model = build_model(NASNET_A, TINY, image_size=size).eval()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_auxiliary_head_only_in_training():
    model = build_model(NASNET_A, TINY, image_size=16, auxiliary=True)
    model.train()
    logits, aux = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 10)
    model.eval()
    out = model(torch.randn(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_scheduled_drop_path_rises_with_progress_and_depth_and_is_off_in_eval():
    model = build_model(NASNET_A, TINY, image_size=16, drop_path_prob=0.5)
    model.set_drop_path_progress(0.0)
    assert all(c.drop_prob == 0 for c in model.cells)
    model.set_drop_path_progress(0.5)
    probs = [c.drop_prob for c in model.cells]
    assert probs == sorted(probs) and probs[-1] == pytest.approx(0.25)
    model.set_drop_path_progress(1.0)
    assert model.cells[-1].drop_prob == pytest.approx(0.5)
    x = torch.randn(4, 3, 16, 16)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)  # drop-path masks differ between passes
    model.eval()
    assert torch.equal(model(x), model(x))



def test_concat_combine_keeps_width():
    cell = Cell((
        Block((0, 1), ("conv_3x3", "sep_conv_3x3"), "concat"),
        Block((2, 1), ("identity", "conv_1x1")),
    ))
    genotype = Genotype(cell, cell)
    model = build_model(genotype, "1@48", image_size=16).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_reduction_cell_concatenating_an_input_state():
    # Input state 0 is never consumed, so the reduction cell must reduce it for the concat.
    cell = Cell((Block((1, 1), ("max_pool_3x3", "identity")),))
    model = build_model(Genotype(cell, cell), "1@48", image_size=16).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_built_in_genotypes_train_a_step():
    for genotype in (NASNET_A, LITE):
        model = build_model(genotype, TINY, image_size=16, auxiliary=True, drop_path_prob=0.2)
        model.set_drop_path_progress(1.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        logits, aux = model(torch.randn(4, 3, 16, 16))
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(4)) + aux.sum() * 0
        loss.backward()
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
