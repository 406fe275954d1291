"""The names of the NASNet operations and combines: the search's action space (torch-free).

``search.nn.ops.OPS`` maps each name to its torch factory, in this order; the genotype
validator, the RL controller, the Optuna choices and the app's labels read these names.
"""

from __future__ import annotations

OP_NAMES: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)
"""The 13 NASNet operations, in registry order (the search's action space)."""

COMBINES: tuple[str, ...] = ("add", "concat")
"""How a block joins its two op outputs."""
