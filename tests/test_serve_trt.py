"""TensorRT backend: availability reporting everywhere, real engines where TensorRT and a GPU exist."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_fixtures import build_tiny_model, export_tiny, sample_images

from serve import trt_backend
from serve.errors import ServeError
from serve.preprocess import preprocess
from serve.runtime import available_backends, load_runtime

needs_trt = pytest.mark.skipif(not trt_backend.is_available(), reason="needs TensorRT and a GPU")


@pytest.mark.skipif(trt_backend.is_available(), reason="TensorRT and a GPU are present")
def test_unavailable_backend_is_reported_and_fails_cleanly(tmp_path):
    missing = trt_backend.missing_dependencies()
    assert missing and "tensorrt" not in available_backends()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(ServeError) as info:
        load_runtime(engine)
    message = str(info.value)
    assert "\n" not in message and "pip install 'nasdeploy[gpu]'" in message
    assert all(part in message for part in missing)


def test_tensorrt_backend_refuses_cpu_device(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(ServeError, match="GPU only; use --backend onnxruntime"):
        load_runtime(engine, device="cpu")


def test_sidecar_path():
    from pathlib import Path

    assert trt_backend.sidecar_path(Path("runs/a/model.engine")) == Path("runs/a/model.engine.json")


def _build_engine(onnx_path, engine_path, min_batch=1, opt_batch=4, max_batch=8):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = (3, 16, 16)
    profile.set_shape("input", (min_batch, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_engine_matches_onnxruntime(tmp_path):
    tiny = export_tiny(build_tiny_model(), tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    _build_engine(tiny.path, engine)
    sidecar = trt_backend.sidecar_path(engine)
    sidecar.write_text(json.dumps({"model_info": tiny.info.to_dict()}))
    runtime = load_runtime(engine)
    assert runtime.backend == "tensorrt" and runtime.batch_limits == (1, 8)
    desc = runtime.describe()
    assert desc["provider"] == "TensorRT" and desc["device"]
    batch = preprocess(sample_images(10), tiny.info)  # 10 > max profile batch: split
    expected = load_runtime(tiny.path, device="cpu").predict(batch)
    np.testing.assert_allclose(runtime.predict(batch), expected, atol=1e-3)
    runtime.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_engine_without_sidecar_says_so(tmp_path):
    tiny = export_tiny(build_tiny_model(), tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    _build_engine(tiny.path, engine)
    with pytest.raises(ServeError, match="model.engine.json"):
        load_runtime(engine)
