"""python -m export.onnx: checked, simplified, verified ONNX files with readable metadata."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import IMAGE_SIZE, SCALE, digits_test_images, make_checkpoint

from export.onnx import main
from export.onnx_export import ExportConfig, export_model, verify_against_torch
from search.core.errors import NasdeployError
from search.nn.checkpoint import load_checkpoint
from search.nn.cost import count_params
from search.runtime.sessions import SessionSettings, create_session


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained-for-a-few-steps checkpoint exported with default options."""
    run = tmp_path_factory.mktemp("run")
    ckpt, spec = make_checkpoint(run / "checkpoint.pt")
    result = export_model(ExportConfig(source=str(ckpt)), log=lambda *_: None)
    return ckpt, spec, result


def test_checkpoint_export_lands_next_to_it_and_matches_pytorch(exported):
    ckpt, spec, result = exported
    assert result.model_path == ckpt.parent / "model.onnx"
    assert result.report_path == ckpt.parent / "export_report.json"
    report = json.loads(result.report_path.read_text())
    rows = report["verification"]["batches"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["max_abs_error"] <= 1e-4 and r["top1_agreement"] == 1.0 for r in rows)
    assert report["checks"]["checker"] == "full_check"
    assert report["checks"]["output_shape"] == ["batch", 10]
    assert report["simplifier"]["applied"] and report["simplifier"]["nodes_after"] < \
        report["simplifier"]["nodes_before"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "export_report.json",
                                                              "model.onnx"]


def test_onnxruntime_predictions_match_pytorch_on_real_images(exported):
    ckpt, _, result = exported
    model, _, _ = load_checkpoint(ckpt)
    x, _ = digits_test_images(48)
    with torch.no_grad():
        expected = model(x).numpy()
    got = create_session(result.model_path, SessionSettings(device="cpu")).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_metadata_reads_back_in_a_fresh_process_with_onnx_alone(exported):
    ckpt, spec, result = exported
    script = ("import json, sys, onnx\n"
              f"m = onnx.load({str(result.model_path)!r})\n"
              "props = {p.key: p.value for p in m.metadata_props}\n"
              "print(json.dumps({'props': props, 'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    props = data["props"]
    assert data["torch"] is False
    assert json.loads(props["nasdeploy.genotype"]) == spec.genotype.to_dict()
    assert json.loads(props["nasdeploy.class_names"]) == list(spec.class_names)
    assert json.loads(props["nasdeploy.mean"]) == list(spec.mean)
    assert json.loads(props["nasdeploy.std"]) == list(spec.std)
    assert props["nasdeploy.scale"] == SCALE
    assert props["nasdeploy.image_size"] == str(IMAGE_SIZE)
    assert props["nasdeploy.channel_order"] == "RGB" and props["nasdeploy.layout"] == "NCHW"
    assert props["nasdeploy.precision"] == "fp32"
    assert float(props["nasdeploy.accuracy"]) == 0.9
    assert props["nasdeploy.dataset"] == "digits"
    assert props["nasdeploy.weights"] == "trained"
    assert int(props["nasdeploy.params"]) == count_params(load_checkpoint(ckpt)[0])
    assert int(props["nasdeploy.macs"]) > 0
    assert int(props["nasdeploy.format_version"]) >= 1


def test_genotype_export_warns_about_random_weights_and_fixes_the_batch(tmp_path, capsys):
    out = tmp_path / "lite"
    rc = main(["lite", "--variant", SCALE, "--image-size", "16", "--num-classes", "5", "--batch", "3",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "RANDOMLY INITIALISED" in captured.err
    assert "max abs error" in captured.out
    model = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, 16, 16]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["nasdeploy.weights"] == "random-init"
    assert json.loads(props["nasdeploy.class_names"]) == ["0", "1", "2", "3", "4"]
    report = json.loads((out / "export_report.json").read_text())
    assert [r["batch"] for r in report["verification"]["batches"]] == [3]


def test_reexport_removes_engines_built_from_the_old_model(tmp_path, capsys):
    out = tmp_path / "lite"
    argv = ["lite", "--variant", SCALE, "--image-size", "16", "--out", str(out)]
    assert main(argv) == 0
    for name in ("model.engine", "model.int8.engine"):
        (out / name).write_bytes(b"engine built from the first export")
        (out / f"{name}.json").write_text("{}")
    (out / "other.engine").write_bytes(b"not ours")
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*engine*")) == ["other.engine"]
    assert "removed stale model.engine" in capsys.readouterr().out


def test_genotype_with_matching_weights_exports_the_checkpoint(tmp_path, exported):
    ckpt, _, _ = exported
    assert main(["nasnet-a", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["nasdeploy.weights"] == "trained" and props["nasdeploy.dataset"] == "digits"
    assert (tmp_path / "export_report.json").is_file()


def test_default_output_folder_for_a_genotype(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lite", "--variant", SCALE, "--image-size", "16"]) == 0
    assert (tmp_path / "runs" / "export-lite" / "model.onnx").is_file()


def _bad_inputs(tmp_path, ckpt):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    return {
        "missing file": [str(tmp_path / "nope.pt")],
        "missing genotype": [str(tmp_path / "nope.json")],
        "corrupt checkpoint": [str(corrupt)],
        "genotype does not match": ["lite", "--weights", str(ckpt)],
        "variant does not match": [str(ckpt), "--variant", "2@32"],
        "old opset": ["lite", "--opset", "13"],
        "int8 without images": ["lite", "--variant", SCALE, "--image-size", "16", "--int8"],
    }


@pytest.mark.parametrize("case", ["missing file", "missing genotype", "corrupt checkpoint",
                                  "genotype does not match", "variant does not match", "old opset",
                                  "int8 without images"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, exported, case):
    argv = _bad_inputs(tmp_path, exported[0])[case]
    out = tmp_path / "out" / "deeper"
    rc = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if not line.startswith("warning:")]
    assert rc == 2
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()  # no half-written artifact, no empty folders


def test_verification_fails_when_onnx_and_pytorch_disagree(exported):
    ckpt, spec, result = exported
    model, _, _ = load_checkpoint(ckpt)
    rows = verify_against_torch(model, result.model_path, spec.image_size, [1, 4], seed=0)
    assert [r["batch"] for r in rows] == [1, 4] and all(r["max_abs_error"] <= r["allowed"] for r in rows)
    with torch.no_grad():
        model.classifier.bias += 0.01  # the ONNX file no longer matches this model
    with pytest.raises(NasdeployError, match="differs from PyTorch"):
        verify_against_torch(model, result.model_path, spec.image_size, [1], seed=0)
