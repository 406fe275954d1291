"""--fp16 and --int8: derived models, their structure and their agreement figures."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import digits_test_images, guaranteed_accuracy, make_checkpoint
from onnx import numpy_helper

from export import sensitivity as sens
from export.onnx_export import ExportConfig, export_model, summary_lines
from export.quantize import (
    ImageCalibrationReader,
    QdqQuantizer,
    dataset_arguments,
    load_images,
    quantized_nodes,
)
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


# --- sensitivity and mixed precision -----------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The fixture model exported in fp32, calibrated once, with its selection logits."""
    run = tmp_path_factory.mktemp("mixed")
    ckpt, _ = make_checkpoint(run / "checkpoint.pt")
    fp32 = export_model(ExportConfig(source=str(ckpt)), log=lambda *_: None).model_path
    card = read_onnx_card(fp32)
    data = load_images("digits", None, card, 64, 120)
    quantizer = QdqQuantizer(fp32, data.calib, run)
    return fp32, card, data, quantizer, sens.logits(fp32, data.select_x)


def test_selection_images_are_training_images_not_used_to_calibrate(calibrated):
    _, _, data, _, _ = calibrated
    assert len(data.select_x) == 120 and "not used to calibrate" in data.select_source
    calib = {row.tobytes() for row in data.calib}
    assert not any(row.tobytes() in calib for row in data.select_x)


def test_parts_cover_every_quantized_node_once_in_network_order(calibrated):
    _, card, _, quantizer, _ = calibrated
    groups = sens.node_groups(quantizer.quantized, card)
    assert list(groups)[0] == "stem" and list(groups)[-1] == "head"
    cells = [p for p in groups if p.startswith("cell ")]
    assert cells == [f"cell {i} ({kind})" for i, kind in
                     enumerate(["normal", "reduction", "normal", "reduction", "normal"])]
    flat = [n for nodes in groups.values() for n in nodes]
    assert sorted(flat) == sorted(quantizer.quantized) and len(set(flat)) == len(flat)


def test_a_part_quantized_alone_is_the_only_int8_part(calibrated, tmp_path):
    fp32, card, data, quantizer, reference = calibrated
    groups = sens.node_groups(quantizer.quantized, card)
    part = groups["cell 2 (normal)"]
    quantizer.write(tmp_path / "one.onnx", only=part)
    inside = set(quantized_nodes(tmp_path / "one.onnx"))
    assert inside & set(part)  # the part runs on int8 inputs ...
    assert not inside & set(groups["cell 0 (normal)"] + groups["stem"])  # ... what precedes it does not
    # every part alone costs something, and less than all of them together
    costs = sens.measure_sensitivity(quantizer, groups, data.select_x, reference, progress=False)
    quantizer.write(tmp_path / "all.onnx")
    everything = sens.noise(reference, sens.logits(tmp_path / "all.onnx", data.select_x))
    assert {c.part for c in costs} == set(groups)
    assert all(0 < c.noise < everything for c in costs)
    assert [c.noise for c in costs] == sorted((c.noise for c in costs), reverse=True)


def test_mixed_precision_stops_at_the_first_prefix_that_meets_the_target(calibrated, tmp_path):
    fp32, card, data, quantizer, reference = calibrated
    groups = sens.node_groups(quantizer.quantized, card)
    costs = sens.measure_sensitivity(quantizer, groups, data.select_x, reference, progress=False)
    order = [c.part for c in costs]
    agreements = []
    for k in range(len(order)):  # what each prefix of the order gives, measured here
        excluded = [n for p in order[:k] for n in groups[p]]
        quantizer.write(tmp_path / "k.onnx", exclude=excluded)
        agreements.append(sens.agreement(reference, sens.logits(tmp_path / "k.onnx", data.select_x)))
    for target in sorted(set(agreements)) + [1.0]:
        dst = tmp_path / "mixed.onnx"
        result = sens.mixed_precision(quantizer, groups, costs, data.select_x, reference, target, dst,
                                      full_agreement=agreements[0], log=lambda *_: None)
        first = next((k for k, a in enumerate(agreements) if a >= target), None)
        assert result.reached == (first is not None)
        if first is not None:
            assert result.float_parts == order[:first] and result.agreement >= target
            assert sens.agreement(reference, sens.logits(dst, data.select_x)) == result.agreement
        else:  # not reached: every prefix was tried and none kept a part int8 at the target
            assert [k for k, _ in result.steps] == list(range(len(order)))


def test_export_keeps_parts_float_to_meet_the_target_and_says_so(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "checkpoint.pt")
    config = ExportConfig(source=str(ckpt), int8=True, calib_size=64, eval_size=120,
                          int8_agreement=1.0, sensitivity=True)
    result = export_model(config, log=print)
    report = json.loads(result.report_path.read_text())
    section = report["int8"]
    mixed = section["mixed_precision"]
    tables = {p.name for p in result.model_path.parent.glob("model.int8.sensitivity.*")}
    assert tables == {"model.int8.sensitivity.csv", "model.int8.sensitivity.md", "model.int8.sensitivity.png"}
    assert len(section["sensitivity"]) == mixed["parts"]
    assert "int8 (every node)" in section["latency_ms_batch1"]
    out = capsys.readouterr()
    if mixed["reached"]:
        assert mixed["agreement"] == 1.0 and section["written"]
        assert result.extra_models["int8"].is_file()
        if mixed["float_parts"]:
            assert "kept float" in "\n".join(summary_lines(result))
            assert "int8 (mixed)" in section["latency_ms_batch1"]
    else:  # one line says why, and no int8 model is left behind
        assert not section["written"] and "int8" not in result.extra_models
        assert not (result.model_path.parent / "model.int8.onnx").exists()
        assert "was not written" in out.err and len(out.err.strip().splitlines()) == 1


# --- quantization-aware training ------------------------------------------------------------


def test_folding_batchnorm_keeps_the_function_and_fake_quant_wraps_every_layer():
    from export_fixtures import trained_model

    from export import qat

    model = trained_model()
    model.eval()
    x, _ = digits_test_images(32)
    with torch.no_grad():
        before = model(x)
    student = copy.deepcopy(model)
    folded = qat.fold_batchnorm(student)
    assert folded > 0
    with torch.no_grad():
        torch.testing.assert_close(student(x), before, atol=1e-4, rtol=1e-4)
    convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in student.modules())
    assert qat.prepare(student) == convs
    qat.calibrate(student, x)
    quants = [m for m in student.modules() if isinstance(m, qat.FakeQuant)]
    assert all(q.amax > 0 for q in quants)
    with torch.no_grad():
        fake = student.eval()(x)
    assert (fake.argmax(1) == before.argmax(1)).float().mean() >= 0.9  # int8 noise, not another model
    assert not torch.equal(fake, before)


@pytest.fixture(scope="module")
def qat_export(tmp_path_factory):
    run = tmp_path_factory.mktemp("qat")
    ckpt, spec = make_checkpoint(run / "checkpoint.pt")
    config = ExportConfig(source=str(ckpt), int8=True, qat=1, calib_size=64, eval_size=120)
    return spec, export_model(config, log=lambda *_: None)


def test_qat_writes_a_symmetric_qdq_model_that_runs_what_was_trained(qat_export):
    spec, result = qat_export
    report = json.loads(result.report_path.read_text())["int8"]
    facts = report["calibration"]
    assert facts["method"] == "qat" and facts["epochs"] == 1 and len(facts["history"]) == 1
    assert facts["onnx_vs_pytorch_top1_agreement"] >= 0.95
    model = onnx.load(str(result.extra_models["int8"]))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # every convolution and the classifier read a quantized input and a quantized weight
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert layers and all(n.input[0] in dequantized and n.input[1] in dequantized for n in layers)
    assert ops.count("BatchNormalization") < ops.count("Conv") // 4  # folded where a conv precedes
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[1] in inits and node.input[2] in inits  # constant scales (TensorRT)
            assert inits[node.input[2]].dtype == np.int8 and not inits[node.input[2]].any()
    assert read_onnx_card(result.extra_models["int8"]).precision == "int8"
    assert report["accuracy"] >= report["accuracy_fp32"] - 0.1
    assert "quantization-aware training" in "\n".join(summary_lines(result))


@pytest.mark.parametrize("flags", [[], ["--qat", "1"]], ids=["ptq", "qat"])
def test_int8_data_of_other_classes_is_one_line_and_nothing_is_written(tmp_path, capsys, flags):
    from PIL import Image

    from export.onnx import main as export_main

    ckpt, _ = make_checkpoint(tmp_path / "checkpoint.pt")
    folder = tmp_path / "other"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 10, 200)).save(folder / name / f"{i}.png")
    out = tmp_path / "out"
    code = export_main([str(ckpt), "--int8", "--calib-data", str(folder), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "are not the model's 10" in err and "cat, dog" in err
    assert not out.exists() or not any(out.iterdir())


# --- the fastest precision -------------------------------------------------------------------


def test_the_report_times_every_precision_and_names_the_fastest_that_agrees(quantized):
    _, result = quantized
    report = json.loads(result.report_path.read_text())
    precisions = report["precisions"]
    assert set(precisions["latency_ms_batch1"]) == {"fp32", "fp16", "int8"}
    assert all(v > 0 for v in precisions["latency_ms_batch1"].values())
    eligible = [p for p in ("fp32", "fp16", "int8") if p == "fp32" or report[p]["top1_agreement"] >= 0.99]
    assert precisions["fastest"] == min(eligible, key=precisions["latency_ms_batch1"].get)
    assert "served by default" in "\n".join(summary_lines(result))


def test_a_folder_stands_for_its_fastest_precision(quantized, tmp_path):
    import shutil

    from search.trials.runinfo import exported_model

    _, result = quantized
    folder = tmp_path / "export"
    shutil.copytree(result.model_path.parent, folder, ignore=shutil.ignore_patterns("*.pt"))
    report = json.loads((folder / "export_report.json").read_text())
    assert exported_model(folder).name == f"model.{report['precisions']['fastest']}.onnx".replace(
        ".fp32", "")
    cases = (("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx"), ("fp32", "model.onnx"),
             ("bogus", "model.onnx"))
    for fastest, expected in cases:
        report["precisions"]["fastest"] = fastest
        (folder / "export_report.json").write_text(json.dumps(report))
        assert exported_model(folder).name == expected
    (folder / "model.int8.onnx").unlink()  # named but gone: the fp32 model
    report["precisions"]["fastest"] = "int8"
    (folder / "export_report.json").write_text(json.dumps(report))
    assert exported_model(folder).name == "model.onnx"
    (folder / "export_report.json").write_text("{not json")
    assert exported_model(folder).name == "model.onnx"


def test_the_cpu_int8_form_is_qoperator_and_tensorrt_refuses_it(tmp_path):
    from export.quantize import int8_form
    from export.trt_build import choose_onnx

    ckpt, _ = make_checkpoint(tmp_path / "checkpoint.pt")
    # every node quantized (a target any model meets), so the whole graph takes the form
    config = ExportConfig(source=str(ckpt), int8=True, int8_form="cpu", calib_size=64, eval_size=120,
                          int8_agreement=1e-6)
    result = export_model(config, log=lambda *_: None)
    path = result.extra_models["int8"]
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "QLinearConv" in ops and int8_form(path) == "cpu"
    section = json.loads(result.report_path.read_text())["int8"]
    assert section["calibration"]["form"] == "cpu" and section["calibration"]["format"] == "QOperator"
    assert section["mixed_precision"]["float_parts"] == [] and len(quantized_nodes(path)) > 50
    assert read_onnx_card(path).precision == "int8"
    with pytest.raises(NasdeployError, match="TensorRT cannot build"):
        choose_onnx(result.model_path, read_onnx_card(result.model_path), fp16=False, int8=True)


def test_the_default_int8_form_is_what_tensorrt_builds(quantized):
    from export.quantize import int8_form
    from export.trt_build import choose_onnx

    _, result = quantized
    assert int8_form(result.extra_models["int8"]) == "tensorrt" and int8_form(result.model_path) is None
    card = read_onnx_card(result.model_path)
    chosen, precision, derive = choose_onnx(result.model_path, card, False, True)
    assert chosen == result.extra_models["int8"] and precision == "int8" and not derive
