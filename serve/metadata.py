"""The ``metadata_props`` codec of the model card, and the card readers ``serve`` uses.

Every ONNX file written by ``export.onnx`` carries its :class:`~search.space.card.ModelCard`
in ``metadata_props``: one ``nasdeploy.<field>`` key per known field that is set, strings
as they are, integers and numbers as ``str()``, everything else (genotype, mean, std,
class names, auxiliary) as JSON. Every TensorRT engine has the card in its
``<engine>.json`` sidecar under ``model_info``. Torch-free; ``onnx`` is imported only to
read a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from search.core.jsonio import JsonError, read_json
from search.space.card import FIELD_KINDS, REQUIRED, VERSION_KEY, CardError, ModelCard, parse_json

PREFIX = "nasdeploy."
_PLAIN = {"str": str, "int": int, "float": float}


def is_card_key(key: str) -> bool:
    """Whether a ``metadata_props`` key belongs to the card (``nasdeploy.*``)."""
    return key.startswith(PREFIX)


def to_props(card: ModelCard) -> dict[str, str]:
    """The card as ONNX ``metadata_props`` (string keys and values; unset fields left out)."""
    props: dict[str, str] = {}
    for name, value in card.to_dict().items():
        if value is None:
            continue
        kind = "int" if name == VERSION_KEY else FIELD_KINDS[name]
        props[PREFIX + name] = str(value) if kind in _PLAIN else json.dumps(value)
    return props


def from_props(props: Mapping[str, str]) -> ModelCard:
    """Parse ``metadata_props`` (other keys are ignored); :class:`CardError` when unusable."""
    values: dict[str, Any] = {}
    for key, raw in props.items():
        name = key[len(PREFIX):] if is_card_key(key) else ""
        kind = "int" if name == VERSION_KEY else FIELD_KINDS.get(name)
        if kind is None:
            continue
        try:
            values[name] = _PLAIN[kind](raw) if kind in _PLAIN else parse_json(raw, repr(key))
        except (ValueError, CardError) as exc:
            raise CardError(f"metadata field {key!r} is malformed: {exc}") from None
    missing = [n for n in REQUIRED if n not in values]
    if "class_names" not in values and "num_classes" not in values:
        missing.append("class_names")
    if missing:
        raise CardError("model has no nasdeploy metadata (missing " + ", ".join(PREFIX + m for m in missing)
                        + "); export it with `python -m export.onnx`")
    return ModelCard.from_dict(values, "model metadata")


def read_onnx_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card in an ONNX file's metadata (weights are not loaded)."""
    import onnx

    _check_regular(path, "model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise CardError(f"model file not found: {path}") from None
    except Exception as exc:  # onnx raises DecodeError and others on garbage
        raise CardError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    try:
        return from_props({p.key: p.value for p in model.metadata_props})
    except CardError as exc:
        raise CardError(f"{path}: {exc}") from None


def read_sidecar_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card in a JSON sidecar such as ``model.engine.json`` (its ``model_info`` entry)."""
    _check_regular(path, "metadata file")
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise CardError(f"metadata file not found: {path}") from None
    except JsonError as exc:
        raise CardError(str(exc)) from None
    if isinstance(data, Mapping) and "model_info" in data:
        data = data["model_info"]
    return ModelCard.from_dict(data, str(path))


def _check_regular(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a device, FIFO or folder before opening it (a FIFO would block the read)."""
    target = os.fspath(path)
    if os.path.exists(target) and not os.path.isfile(target):
        raise CardError(f"{what} {target} is not a regular file")
