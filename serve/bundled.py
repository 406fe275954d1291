"""The CIFAR-10 model shipped inside the package, so a fresh install classifies at once.

``serve/models/cifar10/`` holds an exported model (``model.onnx`` with nasdeploy metadata,
its ``export_report.json`` and ``MODEL.md``: what it is, how it was trained, what it scores).
``scripts/bundled_model.py`` trains, exports and copies it there. Every serving entry point
(``serve.predict``, ``serve.http``, ``serve.bench``, the demo app) accepts the name
:data:`BUNDLED_NAME` for it, unless a file or folder of that name exists in the current
directory: a path the user has always wins.

Torch-free: imports only the standard library and :mod:`search.core`.
"""

from __future__ import annotations

from pathlib import Path

from search.core.errors import NasdeployError
from search.core.rundir import MODEL_ONNX_NAME

BUNDLED_NAME = "bundled"
"""The model argument that stands for the shipped CIFAR-10 model."""
BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "cifar10"
"""Where the shipped model lives inside the installed package."""
BUNDLED_CARD = "MODEL.md"


def is_bundled(model: str | Path) -> bool:
    """Whether a model argument names the bundled model: ``bundled``, and no such local path."""
    return str(model) == BUNDLED_NAME and not Path(model).exists()


def bundled_dir() -> Path:
    """The folder of the shipped model.

    Raises:
        NasdeployError: this install lacks it (a source tree without the model files).
    """
    if not (BUNDLED_DIR / MODEL_ONNX_NAME).is_file():
        raise NasdeployError(f"the bundled model is missing from this install ({BUNDLED_DIR} holds no "
                             f"{MODEL_ONNX_NAME}); reinstall nasdeploy, or build it with "
                             "python scripts/bundled_model.py")
    return BUNDLED_DIR


def resolve_model_arg(model: str | Path) -> Path:
    """``model`` as a path: :data:`BUNDLED_NAME` becomes the bundled folder, anything else stays."""
    return bundled_dir() if is_bundled(model) else Path(model)
