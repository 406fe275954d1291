"""Child evaluation: real proxy training on a few hundred digits, and its failure modes."""

from __future__ import annotations

import pytest
import torch

from search.core.errors import NasdeployError
from search.data.datasets import load_dataset
from search.evaluation.proxy import ChildSettings, evaluate_child, one_line
from search.space.genotype import REFERENCE_GENOTYPES, Block, Cell, Genotype

LITE = REFERENCE_GENOTYPES["lite"]
TINY = ChildSettings(scale="1@48", epochs=1, train_size=300, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8, seed=0)


def test_child_is_scored_on_validation_and_deterministic(digits) -> None:
    before = torch.get_rng_state()
    first = evaluate_child(LITE, digits, TINY)
    assert torch.equal(torch.get_rng_state(), before)  # the strategy's RNG is untouched
    second = evaluate_child(LITE, digits, TINY)
    assert first.status == "ok" and first.error is None
    assert 0.0 <= first.accuracy <= 1.0 and first.params > 0 and first.train_time_s > 0
    assert first.accuracy == second.accuracy
    assert first.accuracy * len(digits.val) == pytest.approx(round(first.accuracy
                                                                   * len(digits.val)))


def test_more_training_scores_higher(digits) -> None:
    short = evaluate_child(LITE, digits, TINY)
    # 4x the data for 4x the epochs: about 0.2 against 0.8 here. A wide gap on purpose: where a
    # short run lands depends on the CPU's float path (3 epochs of 400 gave 0.38 here)
    longer = evaluate_child(LITE, digits, ChildSettings(scale="1@48", epochs=4, train_size=1200,
                                                        batch_size=32, lr=0.1, device="cpu"))
    assert longer.accuracy > short.accuracy


def test_diverging_child_gets_status_diverged(digits) -> None:
    settings = ChildSettings(scale="1@48", train_size=300, lr=1e8, device="cpu")
    result = evaluate_child(LITE, digits, settings)
    assert result.status == "diverged" and result.accuracy == 0.0
    assert "\n" not in result.error
    assert "nan" in result.error or "inf" in result.error


def test_child_that_fails_to_build_is_recorded(digits) -> None:
    bogus = Cell((Block((0, 1), ("no_such_op", "identity"), "add"),))
    broken = Genotype(normal=bogus, reduce=LITE.reduce)
    result = evaluate_child(broken, digits, TINY)
    assert result.status == "failed" and result.accuracy == 0.0
    assert result.error and "\n" not in result.error


def test_child_image_size_override_resizes(digits) -> None:
    settings = ChildSettings(scale="1@48", train_size=64, image_size=12, device="cpu")
    assert evaluate_child(LITE, digits, settings).status == "ok"


def test_missing_validation_split_is_a_user_error() -> None:
    data = load_dataset("digits", image_size=8, val_fraction=0.0)
    with pytest.raises(NasdeployError, match="validation"):
        evaluate_child(LITE, data, TINY)


def test_one_line_keeps_only_the_first_line() -> None:
    assert one_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert len(one_line(ValueError("x" * 1000))) == 300
