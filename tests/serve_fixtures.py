"""A tiny real NASNet exported to ONNX with nasdeploy metadata, for the serve tests.

Torch is fine here (tests only); ``serve`` itself never imports it.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from search.nn.model import build_model
from search.nn.onnxio import export_onnx
from search.space.genotype import load_genotype
from serve.metadata import ModelInfo

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
    info: ModelInfo


def make_info(**overrides) -> ModelInfo:
    """Metadata for the tiny model (overridable per test)."""
    genotype = load_genotype("nasnet-a")
    values = dict(
        image_size=IMAGE_SIZE,
        resize=RESIZE,
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        scale="1@16",
        genotype=genotype.to_dict(),
        dataset="synthetic",
    )
    values.update(overrides)
    return ModelInfo(**values)


def build_tiny_model(seed: int = 0) -> torch.nn.Module:
    """NASNet-A at 1@16 for 16 px, with BN statistics from random data and a sharper head.

    Freshly initialised BN layers make every input look alike; a few train-mode
    passes give them real statistics, and scaling the classifier spreads the logits,
    so different images get clearly different probabilities.
    """
    torch.manual_seed(seed)
    model = build_model(load_genotype("nasnet-a"), "1@16", num_classes=10, image_size=IMAGE_SIZE)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE) * 4 - 2)
        model.classifier.weight.mul_(20.0)
    return model.eval()


def attach_metadata(path: Path, info: ModelInfo) -> None:
    """Write ``info`` into the ONNX file's ``metadata_props``."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in info.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_tiny(
    model: torch.nn.Module,
    path: Path,
    info: ModelInfo | None = None,
    *,
    dynamic_batch: bool = True,
    batch_size: int = 1,
) -> TinyModel:
    """Export ``model`` with the project's exporter and attach metadata."""
    info = info or make_info()
    export_onnx(model, path, IMAGE_SIZE, dynamic_batch=dynamic_batch, batch_size=batch_size)
    attach_metadata(path, info)
    return TinyModel(model, path, info)


def export_fp16(model: torch.nn.Module, path: Path, *, fp32_input: bool) -> TinyModel:
    """An fp16 copy of ``model``; with ``fp32_input`` the graph casts a float32 input itself."""
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


def torch_probs(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """Softmax of the torch model on a preprocessed batch."""
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
