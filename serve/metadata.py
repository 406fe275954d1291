"""What a deployed model file says about itself (torch-free).

Every ONNX file written by ``export.onnx`` carries these facts in its
``metadata_props`` (keys prefixed ``nasdeploy.``), and every TensorRT engine has them
in a ``<engine>.json`` sidecar, so runtimes and the demo app need no other file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "nasdeploy."
METADATA_VERSION = 1
_JSON_FIELDS = {"genotype", "mean", "std", "class_names"}
_INT_FIELDS = {"format_version", "image_size", "resize", "params", "macs"}
_FLOAT_FIELDS = {"accuracy"}


class ModelInfoError(ValueError):
    """The model file lacks nasdeploy metadata or carries malformed metadata."""


@dataclass(frozen=True)
class ModelInfo:
    """Preprocessing and provenance facts that travel inside a model file."""

    image_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    resize: int | None = None
    layout: str = "NCHW"
    channel_order: str = "RGB"
    precision: str = "fp32"
    scale: str = ""
    genotype: dict[str, Any] | None = None
    params: int | None = None
    macs: int | None = None
    accuracy: float | None = None
    dataset: str | None = None
    format_version: int = METADATA_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def resize_to(self) -> int:
        """Short side to resize to before the centre crop (defaults to the crop size)."""
        return self.resize or self.image_size

    def to_props(self) -> dict[str, str]:
        """Serialise to ONNX ``metadata_props`` (string keys and values)."""
        props: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            props[PREFIX + f.name] = json.dumps(value) if f.name in _JSON_FIELDS else str(value)
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelInfo:
        """Parse ``metadata_props``; raise :class:`ModelInfoError` when they are unusable."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, raw in props.items():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else None
            if name not in known:
                extra[key] = raw
                continue
            try:
                values[name] = _parse_value(name, raw)
            except ValueError as exc:
                raise ModelInfoError(f"metadata field {key!r} is malformed: {exc}") from None
        missing = [n for n in ("image_size", "mean", "std", "class_names") if n not in values]
        if missing:
            raise ModelInfoError(
                "model has no nasdeploy metadata (missing "
                + ", ".join(PREFIX + m for m in missing)
                + "); export it with `python -m export.onnx`"
            )
        return cls(**values, extra=extra)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain dict for JSON sidecars."""
        return asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_json_dict`."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ModelInfoError(f"model metadata is incomplete: {exc}") from None

    @classmethod
    def from_onnx(cls, path: str | os.PathLike[str]) -> ModelInfo:
        """Read the metadata of an ONNX file (weights are not loaded)."""
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except FileNotFoundError:
            raise ModelInfoError(f"model file not found: {path}") from None
        except Exception as exc:  # onnx raises DecodeError and others on garbage
            raise ModelInfoError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
        return cls.from_props({p.key: p.value for p in model.metadata_props})

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ModelInfo:
        """Read a JSON sidecar such as ``model.engine.json`` (its ``model_info`` entry)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelInfoError(f"metadata file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelInfoError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json_dict(data.get("model_info", data))


def _parse_value(name: str, raw: str) -> Any:
    if name in _JSON_FIELDS:
        return json.loads(raw)
    if name in _INT_FIELDS:
        return int(raw)
    if name in _FLOAT_FIELDS:
        return float(raw)
    return raw
