"""Pictures for the demo: the top-k bar chart and the drawn cells of a genotype."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

TOP_COLOUR = "#1f6feb"
OTHER_COLOUR = "#9ec5fe"


def topk_chart(top: Sequence[tuple[str, float]]) -> alt.LayerChart:
    """Horizontal bars of ``(class, probability)`` pairs, best first, labelled in %."""
    frame = pd.DataFrame(
        {
            "class": [name for name, _ in top],
            "probability": [prob for _, prob in top],
            "rank": list(range(1, len(top) + 1)),
        }
    )
    y = alt.Y("class:N", sort=alt.EncodingSortField("rank"), title=None, axis=alt.Axis(labelLimit=160))
    bars = alt.Chart(frame).mark_bar(cornerRadiusEnd=3, height=18).encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", title=None)),
        y=y,
        color=alt.condition(alt.datum.rank == 1, alt.value(TOP_COLOUR), alt.value(OTHER_COLOUR)),
        tooltip=[alt.Tooltip("class:N"), alt.Tooltip("probability:Q", format=".2%")],
    )
    labels = bars.mark_text(align="left", dx=4, fontSize=12).encode(
        text=alt.Text("probability:Q", format=".1%"), color=alt.value("#31333f")
    )
    return alt.layer(bars, labels).properties(height=28 * len(frame) + 10)


def genotype_key(genotype: dict[str, Any]) -> str:
    """A stable cache key for a genotype dict (metadata stripped)."""
    return json.dumps({k: v for k, v in genotype.items() if k != "metadata"}, sort_keys=True)


@st.cache_data(show_spinner="Drawing cells…", max_entries=32)
def genotype_png(genotype_json: str) -> bytes:
    """PNG of both cells, drawn by ``search.space.draw`` (the same picture as ``search.info --draw``).

    Raises:
        ImportError: ``search.space.draw`` is not installed.
        NasdeployError: The genotype is invalid.
    """
    from search.space.draw import draw_genotype
    from search.space.genotype import genotype_from_json

    buffer = io.BytesIO()
    draw_genotype(genotype_from_json(genotype_json), buffer, fmt="png")
    return buffer.getvalue()
