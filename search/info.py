"""Inspect a genotype: its cells, the network scale, parameters and mult-adds.

Usage::

    python -m search.info nasnet-a --variant mobile
    python -m search.info runs/x                # the run's genotype at the run's target and size
    python -m search.info runs/x --trial 3 --variant 2@64 --json
    python -m search.info nasnet-a --draw cells.png

Given a search run (its directory or ``genotype.json``), the variant, image size and class
count default to the ones the search measured latency at.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.trials.runinfo import RunTarget, resolve_run

DEFAULT_VARIANT = "cifar"


@dataclass(frozen=True)
class InfoConfig:
    """What to inspect and how to report it."""

    genotype: str
    variant: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    draw: str | None = None
    trial: int | None = None


@dataclass(frozen=True)
class GenotypeInfo:
    """A genotype built at one scale, with its size and compute."""

    genotype_name: str
    genotype: Any  # search.space.genotype.Genotype
    variant: str
    notation: str
    layout: str
    image_size: int
    num_classes: int
    stem_widths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    output_channels: int
    num_cells: int
    params: int
    macs: int
    summary: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the ``--json`` output)."""
        return {
            "genotype_name": self.genotype_name,
            "genotype": self.genotype.to_dict(),
            "variant": self.variant,
            "notation": self.notation,
            "layout": self.layout,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "stem_cell_widths": list(self.stem_widths),
            "stage_cell_widths": list(self.stage_widths),
            "output_channels": self.output_channels,
            "num_cells": self.num_cells,
            "params": self.params,
            "macs": self.macs,
            "scale_summary": self.summary,
            "source": self.source,
        }


def inspect_genotype(config: InfoConfig) -> GenotypeInfo:
    """Load the genotype, build it at the requested scale, count parameters and MACs.

    Raises:
        NasdeployError: bad genotype, unknown variant or malformed ``N@F``, bad size, a
            network beyond the limits of :mod:`search.space.scale` (checked before it is
            built), or a ``draw`` path without a ``.png`` / ``.svg`` suffix.
    """
    from search.space.draw import draw_genotype, resolve_format
    from search.space.scale import check_size, parse_scale, scale_summary

    # Cheap checks first: they need neither torch nor a model.
    target = resolve_run(config.genotype, config.trial)
    variant, image_size, classes = recorded_scale(config, target)
    scale = parse_scale(variant, image_size)
    if config.num_classes is not None and config.num_classes < 1:
        raise NasdeployError(f"--num-classes must be positive, got {config.num_classes}")
    if config.draw is not None:
        resolve_format(config.draw, None)

    from search.nn.cost import count_macs, count_params
    from search.nn.model import build_model

    genotype = target.genotype
    num_classes = classes or (10 if scale.layout == "cifar" else 1000)
    check_size(scale, genotype, num_classes)  # before anything is allocated
    model = build_model(genotype, scale, num_classes=num_classes)
    stem, stages = _cell_widths(model)
    info = GenotypeInfo(
        genotype_name=config.genotype,
        genotype=genotype,
        variant=scale.label,
        notation=scale.notation,
        layout=scale.layout,
        image_size=scale.image_size,
        num_classes=num_classes,
        stem_widths=stem,
        stage_widths=stages,
        output_channels=model.classifier.in_features,
        num_cells=len(model.cells),
        params=count_params(model),
        macs=count_macs(model, scale.image_size),
        summary=scale_summary(scale, genotype),
        source=target.describe() if target.from_run else config.genotype,
    )
    if config.draw is not None:
        draw_genotype(genotype, config.draw, title=f"{config.genotype}")
    return info


def recorded_scale(config: InfoConfig, target: RunTarget) -> tuple[str, int | None, int | None]:
    """Variant, image size and classes: the flags, else what the run recorded, else defaults.

    A named variant other than the run's (``mobile``) keeps its own image size.
    """
    variant = config.variant or target.variant or DEFAULT_VARIANT
    image_size = config.image_size or target.image_size_for(config.variant)
    return variant, image_size, config.num_classes or target.num_classes


def _cell_widths(model: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-state widths C of the stem reduction cells and of each stage's normal cells."""
    stem: list[int] = []
    stages: list[int] = []
    for cell in model.cells:
        width = cell.out_channels // cell.multiplier
        if cell.reduction and not stages:
            stem.append(width)
        elif not cell.reduction:
            if not stages or stages[-1] != width:
                stages.append(width)
    return tuple(stem), tuple(stages)


def _human(value: int) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.{2 if factor == 1e6 and value < 1e8 else 1}f} {suffix}"
    return str(value)


def format_info(info: GenotypeInfo) -> str:
    """The human-readable report."""
    from search.space.text import genotype_text

    named = f"{info.variant} = " if info.variant != info.notation else ""
    stages = len(info.stage_widths)
    normal_per_stage = (info.num_cells - len(info.stem_widths) - (stages - 1)) // stages
    stem = f"stem reduction cells {', '.join(map(str, info.stem_widths))}; " if info.stem_widths else ""
    stem_count = f"{len(info.stem_widths)} stem reduction + " if info.stem_widths else ""
    lines = [
        f"genotype:  {info.source or info.genotype_name}",
        genotype_text(info.genotype),
        f"scale:     {named}{info.notation} ({normal_per_stage} normal cells per stage; "
        f"the last cell outputs {info.output_channels} channels)",
        f"           {info.layout} layout, {info.image_size} px input, {info.num_classes} classes",
        f"cells:     {info.num_cells} ({stem_count}{stages} stages x {normal_per_stage} normal "
        f"+ {stages - 1} reduction)",
        f"width C:   {stem}stages {', '.join(map(str, info.stage_widths))}",
        f"params:    {_human(info.params)} ({info.params:,})",
        f"MACs:      {_human(info.macs)} ({info.macs:,}) per image",
        f"N@F:       {info.summary}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.info`` argument parser."""
    parser = cli.parser("python -m search.info", "Show a genotype's cells, scale, parameters and "
                        "mult-adds (MACs); a search run is shown at the size its latency was measured at.")
    parser.add_argument("genotype", help="search run directory, genotype JSON file or built-in name "
                                         "(e.g. nasnet-a)")
    parser.add_argument("--trial", type=cli.non_negative_int, metavar="N",
                        help="trial N of the run instead of its selected genotype")
    parser.add_argument("--variant", metavar="V", help=f"cifar, mobile, large or N@F (default: the run's "
                                                       f"target variant, else {DEFAULT_VARIANT})")
    parser.add_argument("--image-size", type=cli.positive_int, metavar="PX",
                        help="input side in pixels (default: the run's, else the variant's)")
    parser.add_argument("--num-classes", type=cli.positive_int, metavar="K",
                        help="classifier outputs (default: the run's, else 10 for the cifar layout, 1000 "
                             "otherwise)")
    cli.add_json(parser, "the figures")
    parser.add_argument("--draw", metavar="FILE", help="also write a .png or .svg picture of the cells")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.info``; returns the exit status."""
    args = build_parser().parse_args(argv)
    config = InfoConfig(args.genotype, args.variant, args.image_size, args.num_classes, args.draw,
                        args.trial)
    try:
        info = inspect_genotype(config)
        if cli.emit_json(args.json, info.to_dict()):
            return 0
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print(format_info(info))
    if config.draw:
        print(f"picture:   {config.draw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
