"""ONNX Runtime backend, registry and classify on a tiny real exported NASNet."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from serve_fixtures import (
    CLASS_NAMES,
    attach_metadata,
    build_tiny_model,
    export_fp16,
    export_tiny,
    make_info,
    sample_images,
    torch_probs,
)

from serve.errors import ServeError
from serve.preprocess import preprocess
from serve.runtime import (
    BACKENDS,
    Prediction,
    available_backends,
    classify,
    load_runtime,
    register_backend,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build_tiny_model()
    return export_tiny(model, tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture(scope="module")
def batch(tiny):
    return preprocess(sample_images(3), tiny.info)


def test_ort_matches_torch_softmax(tiny, batch):
    runtime = load_runtime(tiny.path)
    probs = runtime.predict(batch)
    expected = torch_probs(tiny.model, batch)
    assert probs.shape == (3, len(CLASS_NAMES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # the images are different, and so are the model's answers
    assert np.abs(probs[0] - probs[1]).max() > 1e-3


def test_describe_reports_provider_actually_used(tiny):
    import onnxruntime as ort

    runtime = load_runtime(tiny.path, device="auto")
    desc = runtime.describe()
    assert desc["backend"] == "onnxruntime"
    assert desc["provider"] == runtime.session.get_providers()[0]
    assert desc["provider"] in ort.get_available_providers()
    assert set(desc["requested_providers"]) <= set(ort.get_available_providers())
    assert desc["batch"] == "dynamic"
    assert desc["input_shape"][1:] == [3, 16, 16]
    assert desc["precision"] == "fp32"
    cpu = load_runtime(tiny.path, device="cpu").describe()
    assert cpu["provider"] == "CPUExecutionProvider" and cpu["device"] == "cpu"


def test_cuda_device_without_gpu_provider_is_one_line_error(tiny):
    import onnxruntime as ort

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has a GPU provider")
    with pytest.raises(ServeError, match="onnxruntime-gpu") as info:
        load_runtime(tiny.path, device="cuda")
    assert "\n" not in str(info.value)


def test_provider_selection_follows_priority_and_availability():
    from serve.ort_backend import select_providers

    everything = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider",
                  "TensorrtExecutionProvider"]
    assert select_providers("auto", everything) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda_only = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", cuda_only) == cuda_only
    assert select_providers("cuda", cuda_only) == cuda_only
    assert select_providers("cpu", everything) == ["CPUExecutionProvider"]
    assert select_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]
    with pytest.raises(ServeError, match="no GPU provider"):
        select_providers("cuda", ["CPUExecutionProvider"])


def test_classify_top_k_names_and_latency(tiny):
    runtime = load_runtime(tiny.path)
    images = sample_images(2)
    preds = classify(runtime, images, k=3)
    expected = torch_probs(tiny.model, preprocess(images, tiny.info))
    assert len(preds) == 2 and all(isinstance(p, Prediction) for p in preds)
    for pred, row in zip(preds, expected, strict=True):
        assert [name for name, _ in pred.top] == [CLASS_NAMES[i] for i in np.argsort(-row)[:3]]
        assert pred.top[0][1] == pytest.approx(row.max(), abs=1e-5)
        assert pred.latency_ms > 0
    assert preds[0].to_dict()["top"][0]["class"] == preds[0].top[0][0]


@pytest.mark.parametrize("fixed", [1, 2])
def test_fixed_batch_model_splits_and_pads(tmp_path, tiny, batch, fixed):
    fixed_model = export_tiny(
        tiny.model, tmp_path / "fixed.onnx", dynamic_batch=False, batch_size=fixed
    )
    runtime = load_runtime(fixed_model.path)
    assert runtime.batch_limits == (fixed, fixed)
    assert runtime.describe()["batch"] == fixed
    assert runtime.fits_batch(fixed) and not runtime.fits_batch(fixed + 1)
    np.testing.assert_allclose(runtime.predict(batch), torch_probs(tiny.model, batch), atol=1e-5)


@pytest.mark.parametrize("fp32_input", [False, True], ids=["fp16-input", "fp32-input"])
def test_fp16_model_casts_to_session_input_type(tmp_path, tiny, batch, fp32_input):
    half = export_fp16(tiny.model, tmp_path / "half.onnx", fp32_input=fp32_input)
    runtime = load_runtime(half.path)
    desc = runtime.describe()
    assert desc["input_dtype"] == ("float32" if fp32_input else "float16")
    assert desc["precision"] == "fp16"
    probs = runtime.predict(batch)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, torch_probs(tiny.model, batch), atol=2e-2)


def test_bad_batch_shape_is_serve_error(tiny):
    runtime = load_runtime(tiny.path)
    with pytest.raises(ServeError, match=r"\(N, 3, 16, 16\)"):
        runtime.predict(np.zeros((1, 3, 8, 8), dtype=np.float32))


def test_missing_unknown_and_broken_models(tmp_path, tiny):
    with pytest.raises(ServeError, match="model file not found"):
        load_runtime(tmp_path / "nope.onnx")
    with pytest.raises(ServeError, match="don't know how to run"):
        load_runtime(tmp_path / "model.pt")
    with pytest.raises(ServeError, match="unknown backend 'tflite'"):
        load_runtime(tiny.path, backend="tflite")
    with pytest.raises(ServeError, match="unknown device"):
        load_runtime(tiny.path, device="tpu")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all" * 10)
    with pytest.raises(ServeError, match="not a loadable ONNX model") as info:
        load_runtime(garbage)
    assert "\n" not in str(info.value)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ServeError, match="reads .onnx files"):
        load_runtime(engine, backend="onnxruntime")


def test_model_without_metadata_says_how_to_fix(tmp_path, tiny):
    import onnx

    proto = onnx.load(str(tiny.path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ServeError, match="no nasdeploy metadata.*export.onnx"):
        load_runtime(tmp_path / "bare.onnx")


def test_metadata_image_size_must_match_graph(tmp_path, tiny):
    wrong = tmp_path / "wrong.onnx"
    shutil.copy(tiny.path, wrong)
    attach_metadata(wrong, make_info(image_size=32))
    with pytest.raises(ServeError, match="disagrees with metadata image_size 32"):
        load_runtime(wrong)


def test_registry_contract_and_custom_backend(tiny, batch):
    assert "onnxruntime" in available_backends()
    assert {"onnxruntime", "tensorrt"} <= set(BACKENDS)
    base = load_runtime(tiny.path)

    class Doubling(type(base)):
        backend = "doubling"

    def loader(path, device):
        runtime = load_runtime(path, "onnxruntime", device)
        runtime.__class__ = Doubling
        return runtime

    register_backend("doubling", loader, lambda: True, [".onnx"])
    try:
        runtime = load_runtime(tiny.path, backend="doubling")
        assert runtime.backend == "doubling"
        assert "doubling" in available_backends()
        np.testing.assert_allclose(runtime.predict(batch), base.predict(batch))
    finally:
        del BACKENDS["doubling"]


def test_broken_backend_probe_counts_as_unavailable():
    def broken():
        raise RuntimeError("driver exploded")

    register_backend("broken", lambda p, d: None, broken, [".broken"])
    try:
        assert "broken" not in available_backends()
    finally:
        del BACKENDS["broken"]


def test_no_serve_module_imports_torch():
    code = (
        "import pkgutil, importlib, sys, serve\n"
        "names = [m.name for m in pkgutil.iter_modules(serve.__path__)]\n"
        "for n in names: importlib.import_module('serve.' + n)\n"
        "from serve.runtime import available_backends; available_backends()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 9
