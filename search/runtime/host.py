"""Facts about the machine that times a model: CPU model, host name, package versions.

A latency is only comparable with one measured on the same CPU model under the same
runtime versions, so the search's latency cache key and ``serve.bench``'s reports name them
from here. Stdlib only.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``), e.g. ``AMD EPYC``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("model name", "hardware", "processor model") and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value:
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_name() -> str:
    """This machine's host name (``unknown`` when the OS does not say)."""
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``None``: not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime version (CPU or GPU build)."""
    return package_version("onnxruntime") or package_version("onnxruntime-gpu")
