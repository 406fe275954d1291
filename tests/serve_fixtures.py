"""Tiny real ONNX models with nasdeploy metadata, for the serve tests.

Importing this module needs no torch (``serve`` never imports it either): the NASNet
helpers import torch when called, and :func:`make_onnx_classifier` builds a small
convolutional classifier with ``onnx.helper`` alone.
"""

from __future__ import annotations

import contextlib
import copy
import io
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from search.space.card import ModelCard
from search.space.genotype import load_genotype
from serve.metadata import to_props

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 16
RESIZE = 18
CLASS_NAMES = [f"thing{i}" for i in range(10)]
MEAN = [0.5, 0.45, 0.4]
STD = [0.25, 0.25, 0.3]


@dataclass
class TinyModel:
    """A torch model, its exported ONNX file and the metadata inside it."""

    model: torch.nn.Module
    path: Path
    info: ModelCard


def make_info(**overrides) -> ModelCard:
    """Metadata for the tiny model (overridable per test)."""
    genotype = load_genotype("nasnet-a")
    values = dict(
        image_size=IMAGE_SIZE,
        resize=RESIZE,
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        scale="1@48",
        genotype=genotype,
        dataset="synthetic",
    )
    values.update(overrides)
    return ModelCard(**values)


def build_tiny_model(seed: int = 0) -> torch.nn.Module:
    """NASNet-A at 1@48 for 16 px, with BN statistics from random data and a sharper head.

    Freshly initialised BN layers make every input look alike; a few train-mode
    passes give them real statistics, and scaling the classifier spreads the logits,
    so different images get clearly different probabilities.
    """
    import torch

    from search.nn.model import build_model

    torch.manual_seed(seed)
    model = build_model(load_genotype("nasnet-a"), "1@48", num_classes=10, image_size=IMAGE_SIZE)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE) * 4 - 2)
        model.classifier.weight.mul_(20.0)
    return model.eval()


def attach_metadata(path: Path, info: ModelCard) -> None:
    """Write ``info`` into the ONNX file's ``metadata_props``."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in to_props(info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_tiny(
    model: torch.nn.Module,
    path: Path,
    info: ModelCard | None = None,
    *,
    dynamic_batch: bool = True,
    batch_size: int = 1,
) -> TinyModel:
    """Export ``model`` with the project's exporter and attach metadata."""
    from search.nn.onnxio import export_onnx

    info = info or make_info()
    export_onnx(model, path, IMAGE_SIZE, dynamic_batch=dynamic_batch, batch_size=batch_size)
    attach_metadata(path, info)
    return TinyModel(model, path, info)


def export_fp16(model: torch.nn.Module, path: Path, *, fp32_input: bool) -> TinyModel:
    """An fp16 copy of ``model``; with ``fp32_input`` the graph casts a float32 input itself."""
    import torch

    half = copy.deepcopy(model).half().eval()
    example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            half,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    if fp32_input:
        _cast_input_to_fp16(path)
    info = make_info(precision="fp16")
    attach_metadata(path, info)
    return TinyModel(model, path, info)


def _cast_input_to_fp16(path: Path) -> None:
    proto = onnx.load(str(path))
    graph = proto.graph
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == "input":
                node.input[i] = "input_fp16"
    cast = onnx.helper.make_node("Cast", ["input"], ["input_fp16"], to=onnx.TensorProto.FLOAT16)
    graph.node.insert(0, cast)
    onnx.save(proto, str(path))


def make_onnx_classifier(path: Path, seed: int = 0) -> Path:
    """A torch-free tiny classifier (3x3 conv, ReLU, global pool, linear) with :func:`make_info`.

    Built with ``onnx.helper`` from seeded random weights; dynamic batch, input ``input``
    of shape (N, 3, 16, 16), output ``logits`` with one column per class.
    """
    rng = np.random.default_rng(seed)
    classes, size = len(CLASS_NAMES), IMAGE_SIZE
    weights = [
        numpy_helper.from_array(rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 2, (8, classes)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by every onnxruntime the serve extra allows
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    attach_metadata(path, make_info())
    return path


def served_model(path: Path) -> Path:
    """A model for end-to-end serving: the tiny NASNet when torch is importable, else the
    :func:`make_onnx_classifier` one (both real ONNX files with nasdeploy metadata)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return make_onnx_classifier(path)
    return export_tiny(build_tiny_model(), path).path


def torch_probs(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Softmax of the torch model on a preprocessed batch."""
    import torch

    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(batch)), dim=-1).numpy()


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(count: int = 3, size: tuple[int, int] = (24, 20)) -> list[Image.Image]:
    """Deterministic, clearly different RGB images (noise with a per-image colour cast)."""
    rng = np.random.default_rng(1)
    images = []
    for i in range(count):
        base = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.int64)
        cast = np.array([(80 * i) % 256, (150 * i + 60) % 256, (40 * i + 200) % 256])
        pixels = ((base + cast) // 2).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """uvicorn serving ``app`` in a thread on a free 127.0.0.1 port; yields the base URL.

    Waits (at most 20 s) until the server listens, and stops it and its thread afterwards.
    """
    import uvicorn

    from serve.http import bind

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="critical", access_log=False, limit_concurrency=64)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive()

