"""Parameters and mult-adds of a network, counted by ``torch.utils.flop_counter``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search.space.genotype import Genotype
from search.space.scale import Scale


@dataclass(frozen=True)
class Cost:
    """Size and compute of one network at batch 1."""

    params: int
    macs: int


def count_params(model: nn.Module, *, include_aux: bool = False) -> int:
    """Trainable parameters, without the auxiliary head unless ``include_aux``."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and (include_aux or not name.startswith("aux_head."))
    )


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 in eval mode.

    FlopCounterMode counts a multiply-add as two FLOPs (convolutions, matmuls);
    pooling, batch norm and additions are not counted, as in the NASNet paper.
    """
    was_training = model.training
    model.eval()
    device = device_of(model)
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_cost(genotype: Genotype, scale: str | Scale, *, num_classes: int = 1000,
               image_size: int | None = None) -> Cost:
    """Build ``genotype`` at ``scale`` and count its parameters and MACs."""
    from search.nn.model import build_model

    model = build_model(genotype, scale, num_classes=num_classes, image_size=image_size)
    return Cost(count_params(model), count_macs(model, model.scale.image_size))


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for parameter-free modules)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
