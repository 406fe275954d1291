"""NASNet-A reproduces the paper's parameter counts and mult-adds (within 2%)."""

from __future__ import annotations

import pytest

from search.nn.cost import count_macs, count_params, model_cost
from search.space.genotype import NASNET_A

# Zoph et al. 2018: Table 1 (CIFAR-10, NASNet-A 6@768: 3.3M params) and Table 2
# (ImageNet: NASNet-A 4@1056: 5.3M params, 564M mult-adds; 6@4032: 88.9M, 23.8B).
PAPER = {
    "cifar": (10, 3.3e6, None),
    "mobile": (1000, 5.3e6, 564e6),
    "large": (1000, 88.9e6, 23.8e9),
}


def _check(variant: str) -> None:
    classes, params, macs = PAPER[variant]
    cost = model_cost(NASNET_A, variant, num_classes=classes)
    assert cost.params == pytest.approx(params, rel=0.02)
    if macs is not None:
        assert cost.macs == pytest.approx(macs, rel=0.02)


def test_cifar_params():
    _check("cifar")


def test_mobile_params_and_macs():
    _check("mobile")


@pytest.mark.slow
def test_large_params_and_macs():
    _check("large")


@pytest.mark.slow
def test_large_agrees_with_timm_nasnetalarge():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("nasnetalarge", pretrained=False, num_classes=1000)
    ours = model_cost(NASNET_A, "large", num_classes=1000)
    assert ours.params == pytest.approx(count_params(reference), rel=0.01)
    assert ours.macs == pytest.approx(count_macs(reference, 331), rel=0.02)
