"""The model card: what a trained model is and how to feed it, in one torch-free schema.

One :class:`ModelCard` travels with a model through every stage:

- a training checkpoint stores it as its ``spec`` (:mod:`search.nn.checkpoint`);
- every exported ONNX file carries it in ``metadata_props`` as ``nasdeploy.<field>`` keys
  (the string codec is :mod:`serve.metadata`);
- a TensorRT engine's ``model.engine.json`` sidecar holds it under ``model_info``.

The card names the network (genotype, N@F scale, auxiliary head; or, for a hand-designed
baseline, its ``architecture`` and ``width_mult``), its input (image size,
resize, mean/std, layout, channel order), its outputs (class names) and where it came
from (dataset, trained or random-init weights); the export adds precision, params, MACs
and accuracy. Unknown keys are ignored, so newer files stay readable.

Every card is validated once, when it is made (:meth:`ModelCard.__post_init__`), so each
reader (checkpoint, ONNX metadata, sidecar) and each writer (training, export) holds the same
rules: mean and std are 3 finite numbers (std from :data:`STD_RANGE`, mean within
:data:`MEAN_LIMIT`); image size and resize from 1 to :data:`MAX_IMAGE_SIZE`; 1 to
:data:`MAX_CLASSES` classes, with as many class names as outputs; a known precision, layout
and channel order; a scale :func:`~search.space.scale.parse_scale` reads; an architecture
name of lower-case letters, digits and ``_`` without a genotype or scale, and a width
multiplier only with it, within :data:`~search.space.baselines.WIDTH_LIMITS`. A card that breaks
one is a one-line :class:`CardError` naming the field.

Format versions: 1 is the checkpoint ``spec`` and the ONNX/sidecar metadata written
before the card existed (without ``num_classes`` in the metadata, ``weights`` only as an
extra key); 2 is this card. Both are read.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from search.core.errors import NasdeployError
from search.core.jsonio import JsonError, loads_json
from search.space.baselines import NAME_PATTERN, WIDTH_LIMITS
from search.space.genotype import Genotype, GenotypeError
from search.space.scale import MAX_CLASSES, MAX_IMAGE_SIZE, parse_scale

CARD_VERSION = 2
VERSION_KEY = "format_version"

FIELD_KINDS: dict[str, str] = {
    "image_size": "int",
    "mean": "triple",
    "std": "triple",
    "class_names": "names",
    "num_classes": "int",
    "genotype": "genotype",
    "scale": "str",
    "auxiliary": "bool",
    "dataset": "str",
    "resize": "int",
    "layout": "str",
    "channel_order": "str",
    "precision": "str",
    "params": "int",
    "macs": "int",
    "accuracy": "float",
    "weights": "str",
    "architecture": "str",
    "width_mult": "float",
}
"""Every card field and the kind of value it holds (codecs encode by kind)."""

REQUIRED = ("image_size", "mean", "std")
"""Fields a stored card must have (plus ``class_names`` or ``num_classes``)."""

OPTIONAL = frozenset({"genotype", "dataset", "resize", "params", "macs", "accuracy", "weights",
                      "architecture", "width_mult"})
"""Fields that may be ``None`` (unknown)."""

# MAX_IMAGE_SIZE (largest input side and resize, px) and MAX_CLASSES are search.space.scale's,
# the bounds every flag that sets them shares; they are re-exported here with the card's own.
MAX_BATCH = 4096
"""Largest batch any stage feeds a model (export verification, engine profiles, benchmarks)."""
MEAN_LIMIT = 1000.0
"""Largest absolute per-channel mean (pixels are scaled to [0, 1] before it is subtracted)."""
STD_RANGE = (1e-6, 1000.0)
"""Smallest and largest per-channel std: above 0 with room for float32 (no NaN inputs)."""
PRECISIONS = ("fp32", "fp16", "int8")
"""The precisions an export writes."""
LAYOUTS = ("NCHW",)
"""Input layouts the serving runtimes feed."""
CHANNEL_ORDERS = ("RGB",)
"""Input channel orders the serving runtimes feed."""

_KIND_TEXT = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "names": "a list of strings", "triple": "a list of 3 numbers", "genotype": "a genotype",
}


class CardError(NasdeployError, ValueError):
    """A model card that is missing, malformed or of an unknown version (one-line message)."""


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """How to rebuild a trained network, feed it images and read its outputs.

    Attributes:
        image_size: side of the square input (after the centre crop), in pixels.
        mean: per-channel RGB mean subtracted after scaling pixels to [0, 1].
        std: per-channel RGB standard deviation divided by.
        class_names: one label per output; ``"0" .. "N-1"`` when only ``num_classes`` is given.
        num_classes: outputs of the classifier (0: the number of ``class_names``).
        genotype: the cell pair, ``None`` for a model file that does not say.
        scale: the N@F variant the network was built at (``"1@16"``).
        auxiliary: whether the network has the auxiliary head (training only).
        dataset: the dataset it was trained on.
        resize: short side to resize to before the centre crop (``None``: ``image_size``).
        layout: input tensor layout (``NCHW``).
        channel_order: input channel order (``RGB``).
        precision: ``fp32``, ``fp16`` or ``int8`` (set by the export).
        params: trainable parameters (set by the export).
        macs: multiply-accumulates of one image (set by the export).
        accuracy: test accuracy recorded with the checkpoint (set by the export).
        weights: ``trained`` or ``random-init`` (set by the export).
        architecture: the hand-designed network it is (:mod:`search.space.baselines`, e.g.
            ``mobilenet_v2``); ``None`` for a searched cell (genotype and scale say what it is).
        width_mult: that network's width multiplier (``None``: its default, 1.0).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...] = ()
    num_classes: int = 0
    genotype: Genotype | None = None
    scale: str = ""
    auxiliary: bool = False
    dataset: str | None = None
    resize: int | None = None
    layout: str = "NCHW"
    channel_order: str = "RGB"
    precision: str = "fp32"
    params: int | None = None
    macs: int | None = None
    accuracy: float | None = None
    weights: str | None = None
    architecture: str | None = None
    width_mult: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        self._check_ranges()
        count = self.num_classes or len(self.class_names)
        if count < 1:
            raise CardError("model card has neither class_names nor a positive num_classes")
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(count)))
        if len(self.class_names) != count:
            raise CardError(f"model card has {len(self.class_names)} class_names for "
                            f"num_classes {self.num_classes}")
        object.__setattr__(self, "num_classes", count)

    def _check_ranges(self) -> None:
        """Every field within its documented range (see the module docstring)."""
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise _bad("image_size", f"an integer from 1 to {MAX_IMAGE_SIZE}", self.image_size)
        if self.resize is not None and not 1 <= self.resize <= MAX_IMAGE_SIZE:
            raise _bad("resize", f"an integer from 1 to {MAX_IMAGE_SIZE}", self.resize)
        if not all(math.isfinite(m) and abs(m) <= MEAN_LIMIT for m in self.mean):
            raise _bad("mean", f"3 finite numbers within +-{MEAN_LIMIT:g}", list(self.mean))
        low, high = STD_RANGE
        if not all(low <= s <= high for s in self.std):  # NaN fails every comparison
            raise _bad("std", f"positive numbers from {low:g} to {high:g}", list(self.std))
        if not 0 <= self.num_classes <= MAX_CLASSES:
            raise _bad("num_classes", f"an integer from 1 to {MAX_CLASSES}", self.num_classes)
        if len(self.class_names) > MAX_CLASSES:
            raise _bad("class_names", f"at most {MAX_CLASSES} names", f"{len(self.class_names)} names")
        for name, known in (("precision", PRECISIONS), ("layout", LAYOUTS),
                            ("channel_order", CHANNEL_ORDERS)):
            if getattr(self, name) not in known:
                raise _bad(name, "one of " + ", ".join(known), getattr(self, name))
        for name in ("params", "macs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise _bad(name, "a non-negative integer", getattr(self, name))
        if self.accuracy is not None and not 0.0 <= self.accuracy <= 1.0:
            raise _bad("accuracy", "a fraction from 0 to 1", self.accuracy)
        self._check_architecture()
        if self.scale:
            try:
                parse_scale(self.scale, self.image_size)
            except NasdeployError as exc:
                raise CardError(f"model card field 'scale': {exc}") from None

    def _check_architecture(self) -> None:
        """A baseline's name is well-formed (names of newer versions still read), its width
        within the catalogue's limits, and it has no genotype or scale."""
        if self.architecture is not None:
            if not NAME_PATTERN.match(self.architecture):
                raise _bad("architecture", "a lower-case model name", self.architecture)
            if self.genotype is not None or self.scale:
                raise CardError("model card names both an architecture and a genotype/scale")
        if self.width_mult is not None:
            if self.architecture is None:
                raise CardError("model card has a width_mult but no architecture")
            low, high = WIDTH_LIMITS
            if not low <= self.width_mult <= high:
                raise _bad("width_mult", f"a number from {low:g} to {high:g}", self.width_mult)

    @property
    def is_baseline(self) -> bool:
        """Whether the card names a hand-designed network rather than a searched cell."""
        return self.architecture is not None

    @property
    def resize_to(self) -> int:
        """Short side to resize to before the centre crop (defaults to the crop size)."""
        return self.resize or self.image_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``format_version`` first); the inverse of :meth:`from_dict`."""
        data: dict[str, Any] = {VERSION_KEY: CARD_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Genotype):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> ModelCard:
        """Validate a stored card (any version up to :data:`CARD_VERSION`).

        Args:
            data: the dict, e.g. a checkpoint's ``spec`` or a sidecar's ``model_info``.
            source: what it was read from, prefixed to error messages.

        Raises:
            CardError: not a dict, an unknown version, a missing or wrong-typed field.
        """
        try:
            return cls._from_dict(data)
        except CardError as exc:
            raise CardError(f"{source}: {exc}" if source else str(exc)) from None

    @classmethod
    def _from_dict(cls, data: Any) -> ModelCard:
        if not isinstance(data, Mapping):
            raise CardError(f"model card must be a JSON object, got {type(data).__name__}")
        version = data.get(VERSION_KEY, 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CARD_VERSION:
            raise CardError(f"unsupported model card version {version!r}; this nasdeploy reads 1 to "
                            f"{CARD_VERSION} (upgrade nasdeploy to read newer models)")
        values = {k: data[k] for k in FIELD_KINDS if k in data}
        extra = data.get("extra")  # version 1 sidecars kept `nasdeploy.weights` there
        if "weights" not in values and isinstance(extra, Mapping) and "nasdeploy.weights" in extra:
            values["weights"] = extra["nasdeploy.weights"]
        missing = [k for k in REQUIRED if values.get(k) is None]
        if values.get("class_names") is None and values.get("num_classes") is None:
            missing.append("class_names")
        if missing:
            raise CardError(f"model card is missing {', '.join(missing)}")
        values = {k: v for k, v in values.items() if v is not None or k in OPTIONAL}
        if isinstance(values.get("genotype"), Mapping):
            try:
                values["genotype"] = Genotype.from_dict(values["genotype"])
            except GenotypeError as exc:
                raise CardError(f"model card genotype: {exc}") from None
        return cls(**values)

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "model card") -> ModelCard:
        """Parse and validate card JSON text; errors name ``source``."""
        return cls.from_dict(parse_json(text, source), source)


def parse_json(text: str | bytes, source: str) -> Any:
    """The card's one JSON parser (the project's reader; ``CardError`` naming ``source``)."""
    try:
        return loads_json(text, source)
    except JsonError as exc:
        raise CardError(str(exc)) from None


def _bad(name: str, expected: str, value: Any) -> CardError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CardError(f"model card field {name!r} must be {expected}, got {shown}")


def _coerce(name: str, value: Any) -> Any:
    """``value`` checked against the kind of field ``name``, lists as tuples."""
    kind = FIELD_KINDS[name]
    if value is None and name in OPTIONAL:
        return None
    expected = _KIND_TEXT[kind]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _bad(name, expected, value)
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _bad(name, expected, value)
        return float(value)
    if kind in ("str", "bool"):
        if not isinstance(value, str if kind == "str" else bool):
            raise _bad(name, expected, value)
        return value
    if kind == "genotype":
        if not isinstance(value, Genotype):
            raise _bad(name, expected, value)
        return value
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise _bad(name, expected, value)
    items = tuple(value)
    if kind == "names":
        if not all(isinstance(v, str) for v in items):
            raise _bad(name, expected, list(items))
        return items
    if len(items) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
        raise _bad(name, expected, list(items))
    return tuple(float(v) for v in items)
