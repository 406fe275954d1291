"""nasdeploy demo: ``streamlit run app/demo.py`` (models under ``runs/`` or ``$NASDEPLOY_RUNS``, and
the bundled CIFAR-10 model, which it opens on when that folder holds none)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `streamlit run` puts app/ on the path, not the repository root
    sys.path.insert(0, ROOT)

from app.explorer_view import explorer_tab  # noqa: E402
from app.table_view import table_tab  # noqa: E402
from app.views import bundled_note, classify_tab, load_choice, model_card_tab, model_line, sidebar  # noqa: E402


def main() -> None:
    """Lay out the page: sidebar model picker and four tabs."""
    st.set_page_config(page_title="nasdeploy demo", page_icon=":material/hub:", layout="wide")
    st.title(":material/hub: nasdeploy demo")
    choice = sidebar()
    runtime = load_choice(choice)
    st.caption(model_line(runtime, choice.bundled))
    bundled_note(runtime, choice)
    tabs = st.tabs(["Classify", "Model card", "Search explorer", "Model table"])
    classify, card, explore, models_table = tabs
    with classify:
        classify_tab(runtime, choice)
    with card:
        model_card_tab(runtime, choice)
    with explore:
        explorer_tab(choice.root, choice.path)
    with models_table:
        table_tab(choice.root)


main()
