"""--fp16 and --int8: derived models, their structure and their agreement figures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from export_fixtures import digits_test_images, guaranteed_accuracy, make_checkpoint
from onnx import numpy_helper

from export.onnx_export import ExportConfig, export_model
from export.quantize import ImageCalibrationReader, dataset_arguments
from search.core.errors import NasdeployError
from search.runtime.sessions import SessionSettings, create_session
from search.runtime.tensorrt import sort_nodes
from serve.metadata import read_onnx_card


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    run = tmp_path_factory.mktemp("qrun")
    ckpt, spec = make_checkpoint(run / "checkpoint.pt")
    config = ExportConfig(source=str(ckpt), fp16=True, int8=True, calib_size=64, eval_size=120)
    return spec, export_model(config, log=lambda *_: None)


def test_both_precisions_are_written_with_their_figures(quantized):
    _, result = quantized
    assert set(result.extra_models) == {"fp16", "int8"}
    report = json.loads(result.report_path.read_text())
    for precision in ("fp16", "int8"):
        section = report[precision]
        assert section["model"] == f"model.{precision}.onnx"
        assert section["samples"] == 120 and "digits" in section["inputs"]
        assert 0.0 <= section["accuracy"] <= 1.0 and 0.0 <= section["accuracy_fp32"] <= 1.0
    assert report["fp16"]["top1_agreement"] >= 0.98
    assert report["fp16"]["max_abs_error"] < 0.05
    assert abs(report["fp16"]["accuracy"] - report["fp16"]["accuracy_fp32"]) <= 2 / 120
    # the fixture is trained until it clears a held-out accuracy, which bounds any 120 test
    # images from below (2 images of slack: ONNX Runtime may flip a near tie of PyTorch)
    assert report["int8"]["accuracy_fp32"] >= guaranteed_accuracy(120) - 2 / 120
    assert report["int8"]["accuracy"] >= report["int8"]["accuracy_fp32"] - 0.1  # a bounded INT8 drop
    assert report["int8"]["top1_agreement"] >= 0.8
    assert report["int8"]["calibration"]["images"] == 64


def test_fp16_model_keeps_float32_io_and_metadata(quantized):
    spec, result = quantized
    path = result.extra_models["fp16"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dtypes = {i.data_type for i in model.graph.initializer if i.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    info = read_onnx_card(path)
    assert info.precision == "fp16" and info.class_names == spec.class_names


def test_int8_model_is_symmetric_qdq_that_tensorrt_accepts(quantized):
    _, result = quantized
    model = onnx.load(str(result.extra_models["int8"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and not any(z.any() for z in zero_points)  # symmetric: zero point 0
    assert {z.dtype for z in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int32: biases
    quantize_ops = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].dtype == np.int8 for n in quantize_ops)
    assert read_onnx_card(result.extra_models["int8"]).precision == "int8"


def test_int8_predictions_mostly_agree_on_real_images(quantized):
    _, result = quantized
    x, _ = digits_test_images(64)
    cpu = SessionSettings(device="cpu")
    fp32 = create_session(result.model_path, cpu).run(None, {"input": x.numpy()})[0]
    int8 = create_session(result.extra_models["int8"], cpu).run(None, {"input": x.numpy()})[0]
    assert len(set(fp32.argmax(1).tolist())) >= 3  # not a constant predictor: agreement means something
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.8


def test_calibration_reader_batches_pads_fixed_batches_and_rewinds():
    images = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    reader = ImageCalibrationReader(images, batch=4)
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(len(feed["input"]))
    assert sizes == [4, 4, 2]
    fixed = ImageCalibrationReader(images, fixed_batch=4)
    batches = [fixed.get_next() for _ in range(3)]
    assert [len(b["input"]) for b in batches] == [4, 4, 4] and fixed.get_next() is None
    np.testing.assert_array_equal(batches[2]["input"][2:], images[:2])
    fixed.rewind()
    np.testing.assert_array_equal(fixed.get_next()["input"], images[:4])


def test_calib_data_names_a_dataset_or_a_folder(tmp_path):
    assert dataset_arguments("Digits", None) == ("digits", None)
    assert dataset_arguments(str(tmp_path), None) == ("imagefolder", str(tmp_path))
    with pytest.raises(NasdeployError, match="neither a dataset"):
        dataset_arguments("imagenet-21k", None)


def test_sort_nodes_restores_topological_order():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    second = onnx.helper.make_node("Relu", ["a"], ["y"])
    first = onnx.helper.make_node("Neg", ["x"], ["a"])
    graph = onnx.helper.make_graph([second, first], "g", [x], [y])
    sort_nodes(graph)
    assert [n.op_type for n in graph.node] == ["Neg", "Relu"]
    onnx.checker.check_model(onnx.helper.make_model(graph), full_check=True)
