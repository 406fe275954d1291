"""Native TensorRT backend: runs ``model.engine`` with metadata from ``model.engine.json``.

Uses the name-based tensor API shared by TensorRT 10 and 11 (``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
and the CUDA runtime from cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``). Both are imported only when this backend is probed or used.
"""

from __future__ import annotations

import functools
import importlib
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from search.core.rundir import sidecar_path
from search.runtime.tensorrt import cuda_check, gpu_count, import_cudart
from search.space.card import CardError, ModelCard
from serve.errors import ServeError
from serve.metadata import read_sidecar_card
from serve.runtime import Runtime, softmax

INSTALL_HINT = "pip install 'nasdeploy[gpu]' (tensorrt, cuda-python) on a machine with an NVIDIA GPU"


def missing_dependencies() -> list[str]:
    """What keeps this backend from running here (empty when it can run)."""
    missing = []
    try:
        importlib.import_module("tensorrt")
    except Exception:
        missing.append("the `tensorrt` Python package")
    try:
        cudart = import_cudart()
    except ImportError:
        missing.append("CUDA bindings (`cuda-python`)")
        return missing
    if gpu_count(cudart) < 1:
        missing.append("an NVIDIA GPU visible to CUDA")
    return missing


@functools.lru_cache(maxsize=1)
def is_available() -> bool:
    """True when tensorrt and the CUDA bindings import and a GPU is visible."""
    return not missing_dependencies()


def load(path: Path, device: str = "auto") -> TrtRuntime:
    """Deserialize ``path`` (an engine) and read its sidecar metadata."""
    if device == "cpu":
        raise ServeError("the tensorrt backend runs on the GPU only; use --backend onnxruntime")
    missing = missing_dependencies()
    if missing:
        raise ServeError(f"the tensorrt backend needs {' and '.join(missing)}: {INSTALL_HINT}")
    try:
        info = read_sidecar_card(sidecar_path(path))
    except CardError as exc:
        raise ServeError(f"{exc} (every engine needs its {sidecar_path(path).name})") from None
    import tensorrt as trt

    return TrtRuntime(path, info, trt, import_cudart())


class TrtRuntime(Runtime):
    """A deserialized TensorRT engine with one input and one output tensor."""

    backend = "tensorrt"

    def __init__(self, path: Path, info: ModelCard, trt: ModuleType, cudart: ModuleType):
        self.path = Path(path)
        self.info = info
        self._trt = trt
        self._cudart = cudart
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ServeError(
                f"TensorRT {trt.__version__} cannot deserialize {path}; engines are tied to the "
                "TensorRT version and GPU that built them, rebuild it with `python -m export.tensorrt`"
            )
        self._input, self._output = self._io_names()
        self._input_dtype = _nptype(trt, self.engine.get_tensor_dtype(self._input))
        self._output_dtype = _nptype(trt, self.engine.get_tensor_dtype(self._output))
        self.batch_limits = self._profile_batch_limits()
        self.context = self.engine.create_execution_context()
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run a preprocessed batch, split to the engine's profile and padded if needed."""
        size = self.info.image_size
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size) or len(batch) == 0:
            raise ServeError(f"expected a (N, 3, {size}, {size}) batch, got {tuple(batch.shape)}")
        low, high = self.batch_limits
        step = high or len(batch)
        outs = []
        with self._lock:
            for start in range(0, len(batch), step):
                chunk = batch[start : start + step]
                outs.append(self._run(_pad(chunk, low))[: len(chunk)])
        return softmax(np.concatenate(outs, axis=0))

    def describe(self) -> dict[str, Any]:
        """Backend, GPU, TensorRT version, engine path, precision, tensor shapes."""
        props = _check(self._cudart, self._cudart.cudaGetDeviceProperties(0), "properties")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        low, high = self.batch_limits
        return {
            "backend": self.backend,
            "provider": "TensorRT",
            "device": name.strip("\x00"),
            "model": str(self.path),
            "precision": self.info.precision,
            "input_name": self._input,
            "input_shape": list(self.engine.get_tensor_shape(self._input)),
            "input_dtype": np.dtype(self._input_dtype).name,
            "batch": low if low == high else f"{low}..{high}",
            "tensorrt_version": self._trt.__version__,
        }

    def close(self) -> None:
        """Free device buffers and the CUDA stream."""
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        cudart, kind = self._cudart, self._cudart.cudaMemcpyKind
        host_in = np.ascontiguousarray(chunk, dtype=self._input_dtype)
        if not self.context.set_input_shape(self._input, tuple(host_in.shape)):
            raise ServeError(f"engine rejected input shape {tuple(host_in.shape)}")
        out_shape = tuple(self.context.get_tensor_shape(self._output))
        host_out = np.empty(out_shape, dtype=self._output_dtype)
        d_in = self._buffer(self._input, host_in.nbytes)
        d_out = self._buffer(self._output, host_out.nbytes)
        self.context.set_tensor_address(self._input, d_in)
        self.context.set_tensor_address(self._output, d_out)
        _check(cudart, cudart.cudaMemcpyAsync(
            d_in, host_in.ctypes.data, host_in.nbytes, kind.cudaMemcpyHostToDevice, self._stream
        ), "copy to device")
        if not self.context.execute_async_v3(int(self._stream)):
            raise ServeError("TensorRT execution failed (execute_async_v3 returned False)")
        _check(cudart, cudart.cudaMemcpyAsync(
            host_out.ctypes.data, d_out, host_out.nbytes, kind.cudaMemcpyDeviceToHost, self._stream
        ), "copy to host")
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "synchronize")
        return host_out.astype(np.float32).reshape(len(chunk), -1)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                self._cudart.cudaFree(pointer)
            pointer = int(_check(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _io_names(self) -> tuple[str, str]:
        trt, engine = self._trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ServeError(f"{self.path}: expected one input and one output, found {names}")
        return inputs[0], outputs[0]

    def _profile_batch_limits(self) -> tuple[int, int | None]:
        shape = list(self.engine.get_tensor_shape(self._input))
        if shape[0] > 0:
            return shape[0], shape[0]
        low, _, high = self.engine.get_tensor_profile_shape(self._input, 0)
        return int(low[0]), int(high[0])




def _check(cudart: ModuleType, result: Any, what: str) -> Any:
    """:func:`search.runtime.tensorrt.cuda_check` raising :class:`ServeError` (a 4xx, not a 500)."""
    return cuda_check(cudart, result, what, ServeError)


def _nptype(trt: ModuleType, dtype: Any) -> type:
    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    if dtype in table:
        return table[dtype]
    raise ServeError(f"unsupported engine tensor type {dtype}; expected FLOAT or HALF")


def _pad(chunk: np.ndarray, minimum: int) -> np.ndarray:
    if len(chunk) >= minimum:
        return chunk
    pad = np.zeros((minimum - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
    return np.concatenate([chunk, pad], axis=0)
