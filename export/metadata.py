"""Writing the model card into ONNX files (reading is :mod:`serve.metadata`'s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from search.space.card import CardError, ModelCard
from serve.metadata import from_props, is_card_key, read_onnx_card, to_props


def write_card(path: Path, card: ModelCard, doc: str = "") -> None:
    """Replace the card (``nasdeploy.*`` metadata) of the ONNX file at ``path``, in place.

    Other ``metadata_props`` are kept; ``doc`` (when given) becomes the model's doc string.

    Raises:
        CardError: The card would not read back as itself (nothing is written then).
    """
    import onnx

    card_props = to_props(card)
    try:
        same = from_props(card_props) == card
    except CardError as exc:
        raise CardError(f"{path}: refusing to write a model card its reader rejects: {exc}") from None
    if not same:
        raise CardError(f"{path}: refusing to write a model card that does not read back as written")
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props if not is_card_key(p.key)}
    props.update(sorted(card_props.items()))
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
