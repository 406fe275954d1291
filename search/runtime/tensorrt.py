"""TensorRT as a latency device: fp16 engines built with a shared timing cache, timed natively.

Used by the search (``--latency-device tensorrt``) and by ``serve.bench --panel`` on a
TensorRT target, so both time the same kind of engine the same way. Written against the
name-based APIs TensorRT 10 and 11 share: precision comes from the model, never from a
builder flag (11 removed ``BuilderFlag.FP16``), so the fp32 ONNX is first converted to
fp16 on the CPU (:func:`convert_fp16`, float32 inputs and outputs) and parsed into a
strongly typed network (the creation flag is honoured by 10.x and accepted by 11.x).
The engine runs through ``set_tensor_address`` / ``execute_async_v3`` with the CUDA runtime
of cuda-python; one timed run copies the input in, executes, copies the output out and
synchronises, as ``serve``'s TensorRT backend does per request.

``tensorrt`` and ``cuda-python`` are imported only when an engine is built or run;
everything else (the requirement check's message, fp16 conversion, the timing-cache file)
works on any machine. Torch-free.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from search.core.atomic import atomic_write_bytes
from search.core.errors import NasdeployError
from search.runtime.repeatable import RETRIES, SPREAD_LIMIT, RepeatableMeasurement, measure_repeatable

INSTALL_HINT = ("pip install 'nasdeploy[gpu]' (tensorrt, cuda-python) on a machine with an NVIDIA GPU "
                "and its driver")
PRECISION = "fp16"
WORKSPACE_BYTES = 1 << 30
"""Builder workspace limit (1 GiB), as ``export.tensorrt``'s default."""


def import_cudart() -> ModuleType:
    """The CUDA runtime bindings of cuda-python (new or old module layout)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("cuda-python is not installed")


def missing_requirement() -> str | None:
    """What keeps TensorRT latency from running here, as one line (``None``: it can run)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:
        return f"TensorRT latency needs the `tensorrt` Python package: {INSTALL_HINT}"
    try:
        cudart = import_cudart()
    except ImportError:
        return f"TensorRT latency needs the CUDA bindings (`cuda-python`): {INSTALL_HINT}"
    if gpu_count(cudart) < 1:
        return f"TensorRT {trt.__version__} is installed but no NVIDIA GPU is visible to CUDA: {INSTALL_HINT}"
    return None


def require_tensorrt() -> None:
    """Raise a one-line :class:`NasdeployError` unless TensorRT and a GPU are usable."""
    problem = missing_requirement()
    if problem:
        raise NasdeployError(problem)


def tensorrt_version() -> str | None:
    """The installed TensorRT version (``None``: not installed)."""
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except Exception:
        return None


def gpu_name() -> str:
    """Name of CUDA device 0 (``unknown`` without cuda-python or a GPU)."""
    try:
        cudart = import_cudart()
        err, props = cudart.cudaGetDeviceProperties(0)
    except Exception:
        return "unknown"
    if err != cudart.cudaError_t.cudaSuccess:
        return "unknown"
    name = props.name
    text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return text.rstrip("\x00").strip() or "unknown"


# --- fp16 model (CPU) -----------------------------------------------------------------------


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an fp16 copy of ONNX model ``src`` to ``dst`` (inputs and outputs stay float32).

    Uses ONNX Runtime's converter (``onnxruntime.transformers.float16``), then orders the
    nodes topologically (the converter appends its input casts at the end).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    sort_nodes(model.graph)
    onnx.save(model, str(dst))
    return Path(dst)


def sort_nodes(graph: Any) -> None:
    """Order ``graph.node`` topologically (the fp16 converter appends its input casts last)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise NasdeployError("fp16 conversion produced a graph with a cycle or a dangling input")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


# --- timing cache ---------------------------------------------------------------------------


@dataclass
class TimingCache:
    """TensorRT's kernel timing cache, shared by every engine a search or panel builds.

    Candidates share most layer shapes, so later builds skip most kernel timing. With a
    ``path`` the cache is read once and written back (atomically) after each build, so a
    resumed run keeps it.
    """

    path: Path | None = None
    data: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = Path(self.path)
            if self.path.is_file():
                self.data = self.path.read_bytes()

    def update(self, data: bytes) -> None:
        """Keep the cache a build returned (and save it when there is a path)."""
        if not data:
            return
        self.data = data
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, data)


# --- TensorRT (GPU) -------------------------------------------------------------------------


def parse_strongly_typed(trt: Any, onnx_path: str | os.PathLike[str], severity: Any) -> tuple[Any, Any, Any]:
    """A builder and the strongly typed network parsed from ``onnx_path`` (TensorRT 10 and 11).

    Strong typing takes each tensor's precision from the ONNX file (fp16 casts, QDQ), so the
    engine runs at the precision the model was exported in. Returns (builder, network, parser).

    Raises:
        NasdeployError: TensorRT cannot parse the file (its errors on one line).
    """
    logger = trt.Logger(severity)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # default in 11, flag in 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        found = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise NasdeployError(f"TensorRT cannot parse {Path(onnx_path).name}: {' '.join(found.split())[:300]}")
    return builder, network, parser


def build_engine(onnx_path: str | os.PathLike[str], cache: TimingCache | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """Build a serialized engine from a fixed-shape ONNX model (its precision as stored).

    Raises:
        NasdeployError: TensorRT or a GPU missing, or TensorRT cannot parse or build it.
    """
    require_tensorrt()
    import tensorrt as trt

    builder, network, _ = parse_strongly_typed(trt, onnx_path, trt.Logger.ERROR)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    timing = config.create_timing_cache(cache.data if cache is not None else b"")
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NasdeployError(f"TensorRT failed to build an engine from {Path(onnx_path).name}")
    if cache is not None:
        cache.update(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def gpu_count(cudart: ModuleType) -> int:
    """GPUs visible to CUDA (0 when the driver cannot tell)."""
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception:
        return 0
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def cuda_check(cudart: ModuleType, result: Any, what: str,
               error: type[NasdeployError] = NasdeployError) -> Any:
    """Unpack a cuda-python ``(err, value...)`` result, raising ``error`` on a CUDA failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise error(f"CUDA error during {what}: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class EngineRunner:
    """A deserialized engine with device buffers for its fixed-shape inputs and outputs."""

    def __init__(self, engine_bytes: bytes, seed: int = 0):
        require_tensorrt()
        import tensorrt as trt

        self._cudart = cudart = import_cudart()
        self._logger = trt.Logger(trt.Logger.ERROR)  # must outlive the runtime and engine
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise NasdeployError(f"TensorRT {trt.__version__} cannot deserialize the engine it built")
        self.context = self.engine.create_execution_context()
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._pointers: list[int] = []
        self._inputs: list[tuple[int, np.ndarray]] = []
        self._outputs: list[tuple[int, np.ndarray]] = []
        rng = np.random.default_rng(seed)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise NasdeployError(f"engine tensor {name} has a dynamic shape {shape}; export batch 1")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            host = np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))
            pointer = int(cuda_check(cudart, cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc"))
            self._pointers.append(pointer)
            self.context.set_tensor_address(name, pointer)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append((pointer, host))

    def run(self) -> None:
        """Copy the inputs in, execute, copy the outputs out, synchronise."""
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        for pointer, host in self._inputs:
            cuda_check(cudart, cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes,
                                                  kind.cudaMemcpyHostToDevice, self._stream), "copy in")
        if not self.context.execute_async_v3(int(self._stream)):
            raise NasdeployError("TensorRT execution failed (execute_async_v3 returned False)")
        for pointer, host in self._outputs:
            cuda_check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes,
                                                  kind.cudaMemcpyDeviceToHost, self._stream), "copy out")
        cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "synchronize")

    def close(self) -> None:
        """Free the device buffers and the stream."""
        for pointer in self._pointers:
            self._cudart.cudaFree(pointer)
        self._pointers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


@dataclass(frozen=True)
class EngineTiming:
    """A TensorRT latency: the measurement plus what produced it."""

    timing: RepeatableMeasurement
    build_time_s: float
    tensorrt_version: str
    gpu: str
    precision: str = PRECISION


def time_onnx_tensorrt(path: str | os.PathLike[str], *, cache: TimingCache | None = None,
                       warmup: int = 5, repeats: int | None = 20, max_time_s: float | None = 3.0,
                       spread_limit: float = SPREAD_LIMIT, retries: int = RETRIES,
                       workdir: str | os.PathLike[str] | None = None) -> EngineTiming:
    """Convert an fp32 batch-1 ONNX model to fp16, build its engine and time it natively.

    The fp16 model goes to ``workdir`` (default: next to ``path``) as ``<stem>.fp16.onnx``.
    """
    require_tensorrt()
    src = Path(path)
    folder = Path(workdir) if workdir is not None else src.parent
    fp16 = convert_fp16(src, folder / f"{src.stem}.fp16.onnx")
    start = time.perf_counter()
    engine = build_engine(fp16, cache)
    build_time = time.perf_counter() - start
    runner = EngineRunner(engine)
    try:
        timing = measure_repeatable(runner.run, warmup=warmup, repeats=repeats, max_time_s=max_time_s,
                                    spread_limit=spread_limit, retries=retries, provider="TensorRT",
                                    threads=None, batch_size=1)
    finally:
        runner.close()
    return EngineTiming(timing, round(build_time, 3), tensorrt_version() or "?", gpu_name())
