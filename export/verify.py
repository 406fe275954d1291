"""What the export stages share to check models: ONNX Runtime sessions, runs, comparisons.

Used by :mod:`export.onnx_export` (fp32 against PyTorch, onnxslim against the raw graph)
and :mod:`export.quantize` (fp16 / int8 against fp32). Torch-free.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from search.core.errors import NasdeployError
from search.runtime.sessions import SessionSettings, create_session


def open_session(path: Path) -> Any:
    """ONNX Runtime CPU session; a model ORT rejects becomes a one-line error."""
    try:
        return create_session(path, SessionSettings(device="cpu"))
    except NasdeployError:
        raise
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        first = str(exc).strip().splitlines()[0][:200]
        raise NasdeployError(f"ONNX Runtime cannot load {path.name}: {first}") from None


def run_session(session: Any, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Run ``x`` through ``session``, in chunks of a fixed ``batch`` (padding the last)."""
    name = session.get_inputs()[0].name
    if batch is None:
        return session.run(None, {name: x})[0].astype(np.float32)
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        outs.append(session.run(None, {name: padded})[0][: len(chunk)])
    return np.concatenate(outs).astype(np.float32)


def compare_outputs(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs error and top-1 agreement of two logit arrays."""
    return {"max_abs_error": float(np.abs(reference - got).max()),
            "top1_agreement": float((reference.argmax(1) == got.argmax(1)).mean())}


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
