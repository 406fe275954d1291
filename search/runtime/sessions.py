"""The one ONNX Runtime session factory: providers, session options and install checks.

Every ONNX Runtime session in nasdeploy (latency in the search, export's verification,
``serve``, the app, the benchmarks) is made by :func:`create_session`, so a latency measured
in the search and one reported by ``serve.bench`` run on the same providers with the same
options. Provider choice is a pure function of the available list (:func:`select_providers`).
``onnxruntime`` is imported only when a session is made.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import NasdeployError

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_PRIORITY = (TENSORRT, CUDA, CPU)
"""Best first; ``auto`` takes every one of these the installed onnxruntime offers."""
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
TRT_CACHE_ENV = "NASDEPLOY_TRT_CACHE"
REINSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu"
_GPU_INSTALL = (f"on a machine with an NVIDIA GPU run `{REINSTALL} && pip install onnxruntime-gpu` "
                "(onnxruntime-gpu instead of onnxruntime)")


@dataclass(frozen=True)
class SessionSettings:
    """How a session is made; the one place for ONNX Runtime options.

    Attributes:
        device: ``auto`` (TensorRT -> CUDA -> CPU, whichever is available), ``cpu``,
            ``cuda`` (CUDA, CPU for unsupported nodes) or ``tensorrt`` (TensorRT, CUDA, CPU).
        threads: intra-op threads; ``None`` pins them to :func:`default_threads`, so a
            measurement always knows how many ran.
        optimization: graph optimisation level (``disable``, ``basic``, ``extended``, ``all``).
        log_severity: ONNX Runtime log level (3: errors only).
        trt_fp16: let the TensorRT provider build fp16 engines.
        trt_cache_dir: TensorRT engine cache (``None``: ``$NASDEPLOY_TRT_CACHE`` or
            ``~/.cache/nasdeploy/ort-trt``), so only the first session pays for the engine.
    """

    device: str = "auto"
    threads: int | None = None
    optimization: str = "all"
    log_severity: int = 3
    trt_fp16: bool = False
    trt_cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise NasdeployError(f"unknown ONNX Runtime device {self.device!r}; choose from "
                                 f"{', '.join(DEVICES)}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise NasdeployError(f"unknown graph optimisation level {self.optimization!r}; choose "
                                 f"from {', '.join(OPTIMIZATION_LEVELS)}")
        if self.threads is not None and self.threads < 1:
            raise NasdeployError(f"intra-op threads must be >= 1, got {self.threads}")

    @property
    def intra_op_threads(self) -> int:
        """The pinned intra-op thread count."""
        return self.threads if self.threads is not None else default_threads()


def default_threads() -> int:
    """CPUs this process may run on (its affinity set where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def select_providers(device: str, available: list[str] | tuple[str, ...]) -> list[str]:
    """Providers to request for ``device``, best first, given what ONNX Runtime offers.

    Raises:
        NasdeployError: unknown device, or ``cuda``/``tensorrt`` without that provider.
    """
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [p for p in PROVIDER_PRIORITY if p in available] or [CPU]
    if device not in DEVICES:
        raise NasdeployError(f"unknown ONNX Runtime device {device!r}; choose from {', '.join(DEVICES)}")
    needed = TENSORRT if device == "tensorrt" else CUDA
    if needed not in available:
        raise NasdeployError(
            f"device {device!r} needs ONNX Runtime's {needed}, but this onnxruntime has no GPU "
            f"provider for it (available: {', '.join(available) or 'none'}); {_GPU_INSTALL}, "
            "or use device cpu")
    wanted = PROVIDER_PRIORITY if device == "tensorrt" else (CUDA, CPU)
    return [p for p in wanted if p in available or p == CPU]


def trt_cache_dir(settings: SessionSettings) -> Path:
    """Where the TensorRT provider keeps its engines."""
    if settings.trt_cache_dir is not None:
        return Path(settings.trt_cache_dir)
    default = Path.home() / ".cache" / "nasdeploy" / "ort-trt"
    return Path(os.environ.get(TRT_CACHE_ENV, default))


def provider_options(provider: str, settings: SessionSettings | None = None) -> dict[str, str]:
    """Options for ``provider``: the TensorRT provider's engine cache and fp16 flag."""
    if provider != TENSORRT:
        return {}
    settings = settings or SessionSettings()
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache_dir(settings))}
    if settings.trt_fp16:
        options["trt_fp16_enable"] = "True"
    return options


def installed_distributions() -> list[str]:
    """Which of ``onnxruntime`` / ``onnxruntime-gpu`` are installed (by package metadata)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def install_problem(installed: list[str] | None = None) -> str | None:
    """One line when both ONNX Runtime packages are installed (they overwrite each other)."""
    installed = installed_distributions() if installed is None else installed
    if len(installed) < 2:
        return None
    return (f"both {' and '.join(installed)} are installed and shadow each other; run `{REINSTALL}`, "
            "then install one of them (onnxruntime-gpu for a GPU)")


_install_checked = False


def check_install() -> None:
    """Warn (once per process) when ``onnxruntime`` and ``onnxruntime-gpu`` are both installed."""
    global _install_checked
    if _install_checked:
        return
    _install_checked = True
    problem = install_problem()
    if problem:
        warnings.warn(problem, RuntimeWarning, stacklevel=3)


def import_onnxruntime() -> Any:
    """``onnxruntime``, or a one-line error naming the package to install."""
    try:
        import onnxruntime
    except ImportError:
        raise NasdeployError("ONNX Runtime is not installed; `pip install onnxruntime` "
                             "(or onnxruntime-gpu for a GPU)") from None
    return onnxruntime


def available_providers() -> list[str]:
    """The providers the installed onnxruntime offers."""
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(device: str) -> list[str]:
    """:func:`select_providers` for this install (fails fast on a missing GPU provider)."""
    return select_providers(device, available_providers())


def session_options(settings: SessionSettings) -> Any:
    """``onnxruntime.SessionOptions`` for ``settings`` (threads always set explicitly)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = settings.log_severity
    options.intra_op_num_threads = settings.intra_op_threads
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = {
        "disable": level.ORT_DISABLE_ALL, "basic": level.ORT_ENABLE_BASIC,
        "extended": level.ORT_ENABLE_EXTENDED, "all": level.ORT_ENABLE_ALL,
    }[settings.optimization]
    return options


def create_session(model: str | os.PathLike[str] | bytes, settings: SessionSettings | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (a path or serialized bytes).

    Raises:
        NasdeployError: onnxruntime missing, unknown device, or the requested GPU provider
            absent. ONNX Runtime's own errors (e.g. an invalid model) pass through.
    """
    settings = settings or SessionSettings()
    ort = import_onnxruntime()
    check_install()
    providers = select_providers(settings.device, ort.get_available_providers())
    if TENSORRT in providers:
        trt_cache_dir(settings).mkdir(parents=True, exist_ok=True)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(settings), providers=providers,
                                provider_options=[provider_options(p, settings) for p in providers])


def session_provider(session: Any) -> str:
    """The provider that actually runs the graph (first of the session's)."""
    return session.get_providers()[0]
