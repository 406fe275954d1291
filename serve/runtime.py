"""The runtime interface, the backend registry and ``classify``.

A backend turns a model file into a :class:`Runtime`. Backends register a loader,
an availability probe and the file suffixes they read; heavy dependencies
(onnxruntime, tensorrt, CUDA bindings) are imported only by the loader and probe.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search.core.errors import NasdeployError, one_line
from search.core.rundir import ENGINE_SUFFIXES, ONNX_SUFFIX
from search.runtime.sessions import DEVICES
from search.space.card import ModelCard
from search.trials.runinfo import exported_model
from serve.bundled import resolve_model_arg
from serve.errors import ModelOutputError, ServeError
from serve.preprocess import preprocess, top_k


class Runtime(ABC):
    """A loaded model that maps a preprocessed batch to class probabilities.

    Attributes:
        backend: Registry name of the backend (``"onnxruntime"``, ``"tensorrt"``).
        info: Metadata read from the model file.
        path: The model file.
        batch_limits: ``(min, max)`` batch the model runs natively (``max`` None:
            unbounded). ``predict`` accepts any ``N`` and splits or pads as needed.
    """

    backend: str
    info: ModelCard
    path: Path
    batch_limits: tuple[int, int | None] = (1, None)

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run a preprocessed ``(N, 3, S, S)`` float32 batch; return ``(N, K)`` softmax."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend, provider or device actually used, model path, precision, input shape."""

    def fits_batch(self, n: int) -> bool:
        """Whether ``n`` images run as one native batch (no splitting or padding)."""
        low, high = self.batch_limits
        return low <= n and (high is None or n <= high)

    def warmup(self, batch_size: int = 1) -> None:
        """Run one dummy batch so the first real request does not pay for set-up."""
        size = self.info.image_size
        self.predict(np.zeros((batch_size, 3, size, size), dtype=np.float32))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release device resources (optional)."""


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image and the wall time of the inference call that made it."""

    top: list[tuple[str, float]]
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"top": [{"class", "probability"}], "latency_ms"}``."""
        return {
            "top": [{"class": name, "probability": prob} for name, prob in self.top],
            "latency_ms": self.latency_ms,
        }


def classify(runtime: Runtime, images: Sequence[Image.Image], k: int = 5) -> list[Prediction]:
    """Preprocess ``images``, run them as one batch and return top-``k`` per image.

    ``latency_ms`` is the wall time of the ``runtime.predict`` call (the whole batch,
    preprocessing excluded), so it is the same for every image of the batch.

    Raises:
        ModelOutputError: The scores are NaN or infinite, or not one per class of the card.
    """
    batch = preprocess(images, runtime.info)
    start = time.perf_counter()
    probs = runtime.predict(batch)
    latency_ms = (time.perf_counter() - start) * 1000.0
    check_scores(runtime, probs)
    return [Prediction(top, latency_ms) for top in top_k(probs, runtime.info.class_names, k)]


def check_scores(runtime: Runtime, probs: np.ndarray) -> None:
    """Refuse scores that are not one finite number per class of ``runtime``'s card."""
    probs = np.asarray(probs)
    classes = runtime.info.num_classes
    if probs.ndim != 2 or probs.shape[1] != classes:
        raise ModelOutputError(f"{runtime.path.name} outputs scores of shape {tuple(probs.shape)}, but its "
                               f"metadata (num_classes, class_names) names {classes} classes")
    if not np.isfinite(probs).all():
        raise ModelOutputError(f"{runtime.path.name} produced non-finite scores (NaN or infinity): the "
                               "model's weights or its metadata are broken")


def selftest(runtime: Runtime) -> Prediction:
    """Classify one blank grey image the way a request is; refuse a model that cannot serve.

    ``serve.http`` runs it before it listens, so a model whose metadata, graph or scores are
    broken is refused at start-up instead of answering every request with an error.

    Raises:
        ServeError: One line naming the model and what went wrong.
    """
    size = runtime.info.resize_to
    blank = Image.new("RGB", (size, size), (128, 128, 128))
    try:
        return classify(runtime, [blank], k=1)[0]
    except ServeError as exc:
        raise ServeError(f"{runtime.path} cannot serve: {exc}") from None
    except Exception as exc:  # whatever the runtime raises: the model cannot answer a request
        raise ServeError(f"{runtime.path} cannot serve: a blank image fails ({one_line(exc)})") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float32."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


@dataclass(frozen=True)
class Backend:
    """A registered backend: how to load a model, whether it works here, what it reads."""

    name: str
    loader: Callable[[Path, str], Runtime]
    is_available: Callable[[], bool]
    suffixes: tuple[str, ...]


BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    loader: Callable[[Path, str], Runtime],
    is_available: Callable[[], bool],
    suffixes: Sequence[str],
) -> None:
    """Add (or replace) a backend; ``loader(path, device)`` returns a :class:`Runtime`."""
    BACKENDS[name] = Backend(name, loader, is_available, tuple(s.lower() for s in suffixes))


def available_backends() -> list[str]:
    """Names of the backends whose dependencies import and whose device exists here."""
    return [name for name, backend in BACKENDS.items() if _probe(backend)]


def backend_for(path: str | Path) -> str:
    """The registered backend that reads files with ``path``'s suffix."""
    suffix = Path(path).suffix.lower()
    for name, backend in BACKENDS.items():
        if suffix in backend.suffixes:
            return name
    known = ", ".join(sorted({s for b in BACKENDS.values() for s in b.suffixes}))
    raise ServeError(f"don't know how to run {Path(path).name!r}: expected one of {known}")


def load_runtime(path: str | Path, backend: str = "auto", device: str = "auto") -> Runtime:
    """Load a model file with the named backend (``"auto"``: chosen by file suffix).

    Args:
        path: ``model.onnx`` (onnxruntime) or ``model.engine`` (tensorrt); a folder
            holding ``model.onnx``, a search run directory (see
            :func:`search.trials.runinfo.exported_model`), or ``bundled``: the CIFAR-10
            model shipped with the package (:mod:`serve.bundled`).
        backend: A name from :data:`BACKENDS` or ``"auto"``.
        device: ``"auto"`` (best available), ``"cpu"``, ``"cuda"`` or ``"tensorrt"``
            (:data:`search.runtime.sessions.DEVICES`, the same names the search uses).

    Raises:
        ServeError: Missing file, unknown backend or device, backend not usable here,
            or a file without nasdeploy metadata; the message is one line.
    """
    try:
        path = resolve_model_arg(path)
    except NasdeployError as exc:
        raise ServeError(str(exc)) from None
    if path.is_dir():  # a folder with model.onnx, or a search run: its selected trial's export
        try:
            path = exported_model(path)
        except NasdeployError as exc:
            raise ServeError(str(exc)) from None
    if device not in DEVICES:
        raise ServeError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    name = backend_for(path) if backend == "auto" else backend
    if name not in BACKENDS:
        choices = ", ".join(["auto", *BACKENDS])
        raise ServeError(f"unknown backend {name!r}; choose from {choices}")
    if path.exists() and not path.is_file():  # a device or FIFO: never read from one
        raise ServeError(f"{path} is not a regular file; a model is a .onnx or .engine file")
    if not path.is_file():
        raise ServeError(f"model file not found: {path}")
    spec = BACKENDS[name]
    if path.suffix.lower() not in spec.suffixes:
        raise ServeError(f"backend {name!r} reads {', '.join(spec.suffixes)} files, not {path.name!r}")
    return spec.loader(path, device)


def _probe(backend: Backend) -> bool:
    try:
        return bool(backend.is_available())
    except Exception:  # a broken optional install counts as unavailable
        return False


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = f"{module}.{attr}"
    return call


register_backend(
    "onnxruntime",
    _lazy("serve.ort_backend", "load"),
    _lazy("serve.ort_backend", "is_available"),
    (ONNX_SUFFIX,),
)
register_backend(
    "tensorrt",
    _lazy("serve.trt_backend", "load"),
    _lazy("serve.trt_backend", "is_available"),
    ENGINE_SUFFIXES,
)
