"""Writing the model card into ONNX files (reading is :mod:`serve.metadata`'s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from search.space.card import CardError, ModelCard
from serve.metadata import is_card_key, read_onnx_card, to_props


def write_card(path: Path, card: ModelCard, doc: str = "") -> None:
    """Replace the card (``nasdeploy.*`` metadata) of the ONNX file at ``path``, in place.

    Other ``metadata_props`` are kept; ``doc`` (when given) becomes the model's doc string.
    """
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props if not is_card_key(p.key)}
    props.update(sorted(to_props(card).items()))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    if doc:
        model.doc_string = doc
    onnx.save(model, str(path))


def retag_precision(path: Path, precision: str) -> None:
    """Set ``precision`` in the card a converter copied from the source model (if it has one)."""
    try:
        card = read_onnx_card(path)
    except CardError:
        return  # not a nasdeploy model: nothing to correct
    write_card(path, replace(card, precision=precision))
