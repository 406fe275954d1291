"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU, whichever this install offers.

Sessions come from :func:`search.runtime.sessions.create_session` (the factory the search's
latency meter uses too), so providers, threads and graph options are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from search.core.errors import NasdeployError
from search.runtime import sessions
from search.runtime.sessions import SessionSettings
from search.space.card import CardError, ModelCard
from serve.errors import ServeError
from serve.metadata import from_props
from serve.runtime import Runtime, softmax

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def is_available() -> bool:
    """True when ``onnxruntime`` imports (the CPU provider always exists)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def select_providers(device: str, available: list[str]) -> list[str]:
    """Providers to request, best first, keeping only those ``available``.

    :func:`search.runtime.sessions.select_providers` with its errors as :class:`ServeError`:
    ``cpu`` keeps the CPU provider only, ``cuda`` needs the CUDA provider and ``tensorrt``
    the TensorRT one (CPU stays last as ORT's fallback for unsupported nodes).
    """
    try:
        return sessions.select_providers(device, available)
    except NasdeployError as exc:
        raise ServeError(str(exc)) from None


def provider_options(provider: str) -> dict[str, str]:
    """Options for ``provider``: the TensorRT EP caches its engines between sessions.

    The cache lives in ``$NASDEPLOY_TRT_CACHE`` (default ``~/.cache/nasdeploy/ort-trt``),
    so only the first session on a machine pays for building the engine.
    """
    return sessions.provider_options(provider)


def load(path: Path, device: str = "auto", threads: int | None = None) -> OrtRuntime:
    """Open ``path`` in an ONNX Runtime session on the best provider for ``device``, with
    ``threads`` intra-op threads (``None``: every CPU this process may use)."""
    if not is_available():
        raise ServeError("the onnxruntime backend needs `pip install onnxruntime`")
    try:
        settings = SessionSettings(device=device, threads=threads)
        providers = select_providers(device, sessions.available_providers())
        session = sessions.create_session(path, settings)
    except NasdeployError as exc:
        raise ServeError(str(exc)) from None
    except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ServeError(f"{path} is not a loadable ONNX model: {first[:200]}") from None
    try:
        info = from_props(dict(session.get_modelmeta().custom_metadata_map))
    except CardError as exc:
        raise ServeError(f"{path}: {exc}") from None
    return OrtRuntime(path, session, info, providers, settings.intra_op_threads)


class OrtRuntime(Runtime):
    """A model running in an ``onnxruntime.InferenceSession``."""

    backend = "onnxruntime"

    def __init__(self, path: Path, session: Any, info: ModelCard, requested: list[str],
                 threads: int | None = None):
        self.path = Path(path)
        self.session = session
        self.info = info
        self.requested_providers = requested
        self.threads = threads
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        self._input_shape = list(inp.shape)
        output = session.get_outputs()[0]
        self._output_name = output.name
        classes = list(output.shape)[-1] if output.shape else None
        if isinstance(classes, int) and classes != info.num_classes:
            raise ServeError(f"{path}: the model outputs {classes} scores, but its metadata "
                             f"(num_classes, class_names) names {info.num_classes} classes")
        if inp.type not in _ORT_DTYPES:
            raise ServeError(f"{path}: unsupported input type {inp.type} (expected float/float16)")
        self._input_dtype = _ORT_DTYPES[inp.type]
        self._check_input_shape()
        batch = self._input_shape[0]
        self.batch_limits = (batch, batch) if isinstance(batch, int) and batch > 0 else (1, None)

    @property
    def provider(self) -> str:
        """The execution provider that actually runs the graph (first of the session's)."""
        return self.session.get_providers()[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run a preprocessed batch (any ``N``; split and padded to a fixed batch size)."""
        batch = self._validate(batch)
        fixed = self.batch_limits[1]
        if fixed is None:
            return softmax(self._run(batch))
        chunks = [self._run_padded(batch[i : i + fixed], fixed) for i in range(0, len(batch), fixed)]
        return softmax(np.concatenate(chunks, axis=0))

    def describe(self) -> dict[str, Any]:
        """Backend, provider actually used, model path, precision, input/output facts."""
        import onnxruntime as ort

        fixed = self.batch_limits[1]
        return {
            "backend": self.backend,
            "provider": self.provider,
            "providers": self.session.get_providers(),
            "requested_providers": self.requested_providers,
            "available_providers": ort.get_available_providers(),
            "device": "cpu" if self.provider == "CPUExecutionProvider" else "gpu",
            "model": str(self.path),
            "precision": self.info.precision,
            "input_name": self._input_name,
            "input_shape": [d if isinstance(d, int) else str(d) for d in self._input_shape],
            "input_dtype": np.dtype(self._input_dtype).name,
            "batch": "dynamic" if fixed is None else fixed,
            "intra_op_threads": self.threads,
            "onnxruntime_version": ort.__version__,
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: batch.astype(self._input_dtype, copy=False)}
        (logits,) = self.session.run([self._output_name], feed)
        return np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)

    def _run_padded(self, chunk: np.ndarray, size: int) -> np.ndarray:
        n = len(chunk)
        if n < size:
            pad = np.zeros((size - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad], axis=0)
        return self._run(chunk)[:n]

    def _validate(self, batch: np.ndarray) -> np.ndarray:
        size = self.info.image_size
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size) or len(batch) == 0:
            raise ServeError(
                f"expected a (N, 3, {size}, {size}) batch, got shape {tuple(batch.shape)}"
            )
        return batch

    def _check_input_shape(self) -> None:
        shape = self._input_shape
        size = self.info.image_size
        if len(shape) != 4:
            raise ServeError(f"{self.path}: expected a 4-D NCHW input, found shape {shape}")
        for got, want in zip(shape[1:], (3, size, size), strict=True):
            if isinstance(got, int) and got != want:
                raise ServeError(
                    f"{self.path}: input shape {shape} disagrees with metadata image_size {size}"
                )
