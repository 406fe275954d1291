"""The catalogue of hand-designed baseline networks: names, papers and width multipliers.

``python -m search.train --model NAME [--width-mult X]`` trains one of these instead of a
searched genotype, through the same data, schedule, checkpoint, export, serving and app,
so a searched cell can be compared with the networks a user knows. This module holds what
every stage needs to *name* a baseline (torch-free: the model card, ``serve`` and the app
read it); :mod:`search.nn.baselines` builds them.

A baseline's model card has ``architecture`` (a name below) and, for a family with a width
multiplier, ``width_mult``; its ``genotype`` and ``scale`` stay unset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.core.errors import NasdeployError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""What a card's ``architecture`` may hold (names of newer versions stay readable)."""
WIDTH_LIMITS = (0.1, 4.0)
"""Smallest and largest width multiplier of a family with a continuous one."""


@dataclass(frozen=True)
class Baseline:
    """One hand-designed network.

    Attributes:
        name: what ``--model`` takes and the card's ``architecture`` holds.
        title: the network's usual name (``MobileNetV2``).
        family: what kind of network it is, in a few words.
        paper: first author and year.
        widths: the width multipliers it takes: ``()`` none, ``None`` any from
            :data:`WIDTH_LIMITS`, else exactly these.
        source: ``torchvision`` (its class, with a small-image stem) or ``nasdeploy``.
        min_size: smallest input side in pixels.
    """

    name: str
    title: str
    family: str
    paper: str
    widths: tuple[float, ...] | None = ()
    source: str = "torchvision"
    min_size: int = 8

    @property
    def has_width(self) -> bool:
        """Whether ``--width-mult`` applies."""
        return self.widths is None or bool(self.widths)

    def width_text(self) -> str:
        """The accepted multipliers, for help and errors."""
        if self.widths is None:
            return f"{WIDTH_LIMITS[0]:g} to {WIDTH_LIMITS[1]:g}"
        return ", ".join(f"{w:g}" for w in self.widths) if self.widths else "none"


BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("lenet5", "LeNet-5", "small convnet", "LeCun et al., 1998", source="nasdeploy", min_size=12),
    Baseline("alexnet", "AlexNet-style", "plain convnet, large FC head", "Krizhevsky et al., 2012",
             widths=None, source="nasdeploy"),
    Baseline("vgg11", "VGG-11 (BN)", "plain 3x3 convnet", "Simonyan & Zisserman, 2014", widths=None,
             source="nasdeploy"),
    Baseline("googlenet", "GoogLeNet", "Inception modules", "Szegedy et al., 2014"),
    Baseline("resnet18", "ResNet-18", "residual, basic blocks", "He et al., 2015"),
    Baseline("resnet20", "ResNet-20", "CIFAR residual network", "He et al., 2015", source="nasdeploy"),
    Baseline("se_resnet20", "SE-ResNet-20", "ResNet-20 with squeeze-and-excitation", "Hu et al., 2017",
             source="nasdeploy"),
    Baseline("densenet", "DenseNet-BC (k=12)", "dense connectivity", "Huang et al., 2016"),
    Baseline("mobilenet_v2", "MobileNetV2", "inverted residuals", "Sandler et al., 2018", widths=None),
    Baseline("mobilenet_v3_small", "MobileNetV3-small", "searched inverted residuals, SE, h-swish",
             "Howard et al., 2019", widths=None),
    Baseline("mnasnet", "MnasNet-B1", "latency-aware searched", "Tan et al., 2018",
             widths=None),
    Baseline("shufflenet_v2", "ShuffleNetV2", "channel split and shuffle", "Ma et al., 2018",
             widths=(0.5, 1.0, 1.5, 2.0)),
)}


def names() -> list[str]:
    """Every baseline name, in catalogue order (lineage)."""
    return list(BASELINES)


def get_baseline(name: str) -> Baseline:
    """The catalogue entry of ``name`` (``-`` and ``_`` alike, any case).

    Raises:
        NasdeployError: an unknown name; the message lists the known ones.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in BASELINES:
        raise NasdeployError(f"unknown model {name!r}: use one of {', '.join(BASELINES)}")
    return BASELINES[key]


def check_width(entry: Baseline, width_mult: float | None) -> float | None:
    """``width_mult`` checked against the family (``None``: the family's default, 1.0).

    Raises:
        NasdeployError: a multiplier on a family without one, or outside what it takes.
    """
    if width_mult is None:
        return None
    if not entry.has_width:
        raise NasdeployError(f"--width-mult does not apply to {entry.name} ({entry.title} has no width "
                             "multiplier)")
    value = float(width_mult)
    if entry.widths is None:
        low, high = WIDTH_LIMITS
        if not low <= value <= high:  # NaN fails too
            raise NasdeployError(f"--width-mult for {entry.name} must be from {low:g} to {high:g}, "
                                 f"got {value:g}")
    elif value not in entry.widths:
        raise NasdeployError(f"--width-mult for {entry.name} must be one of {entry.width_text()}, "
                             f"got {value:g}")
    return value


def model_title(name: str, width_mult: float | None = None) -> str:
    """``MobileNetV2 ×0.5`` (the catalogue's title; the plain name when unknown)."""
    entry = BASELINES.get(name)
    title = entry.title if entry else name
    return f"{title} ×{width_mult:g}" if width_mult is not None and width_mult != 1.0 else title


def describe(name: str, width_mult: float | None = None) -> str:
    """One line for logs and help: ``MobileNetV2 ×0.5 (inverted residuals; Sandler et al., 2018)``."""
    entry = BASELINES.get(name)
    where = f" ({entry.family}; {entry.paper})" if entry else ""
    return model_title(name, width_mult) + where


def catalogue_text() -> str:
    """The catalogue as lines for ``--help``."""
    return "\n".join(f"  {b.name:<19} {b.title}: {b.family} ({b.paper}); width-mult: {b.width_text()}"
                     for b in BASELINES.values())
