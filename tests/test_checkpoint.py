"""Checkpoints rebuild the exact network, and bad files are one-line errors."""

from __future__ import annotations

import pytest
import torch

from search.core.errors import NasdeployError
from search.nn.checkpoint import build_from_card, load_checkpoint, save_checkpoint
from search.space.card import ModelCard
from search.space.genotype import LITE, NASNET_A


def _spec(genotype=NASNET_A, scale="1@48") -> ModelCard:
    return ModelCard(genotype=genotype, scale=scale, image_size=16, class_names=["a", "b", "c"],
                     mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), auxiliary=True, dataset="toy")


def test_round_trip_restores_outputs(tmp_path):
    spec = _spec()
    model = build_from_card(spec)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))  # update BN statistics
    model.eval()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, spec, metrics={"test_accuracy": 0.5})
    loaded, loaded_spec, raw = load_checkpoint(path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))
    assert loaded_spec == spec and raw["metrics"]["test_accuracy"] == 0.5
    assert not loaded.training


def test_bad_checkpoints(tmp_path):
    with pytest.raises(NasdeployError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(NasdeployError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(NasdeployError, match="not a nasdeploy checkpoint"):
        load_checkpoint(foreign)


def test_weights_that_do_not_match_the_genotype(tmp_path):
    spec = _spec()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, build_from_card(spec), spec)
    data = torch.load(path, weights_only=True)
    data["spec"] = _spec(LITE).to_dict()
    torch.save(data, path)
    with pytest.raises(NasdeployError, match="do not match") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
