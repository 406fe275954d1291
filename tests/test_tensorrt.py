"""python -m export.tensorrt: everything up to the build runs on CPU; builds need TensorRT + GPU."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from export.onnx_export import ExportConfig, export_model
from export.quantize import quantize_qdq
from export.tensorrt import main
from export.trt_build import (
    TrtConfig,
    build_engine,
    choose_onnx,
    derive_fp16,
    describe_plan,
    missing_requirement,
    plan_build,
    profile_shapes,
    trtexec_command,
)
from search.core.errors import NasdeployError
from serve.metadata import read_onnx_card, read_sidecar_card

NO_TRT = missing_requirement()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny exported fp32 model (dynamic batch) with a QDQ int8 sibling."""
    out = tmp_path_factory.mktemp("trt")
    config = ExportConfig(source="lite", variant="1@48", image_size=16, out=str(out))
    export_model(config, log=lambda *_: None)
    images = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_qdq(out / "model.onnx", out / "model.int8.onnx", images)
    return out


def test_default_profile_is_1_8_32_for_a_dynamic_batch():
    p = profile_shapes("input", ["batch", 3, 32, 32], None, None, None)
    assert (p.min, p.opt, p.max, p.dynamic) == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32), True)
    p = profile_shapes("input", ["batch", 3, 32, 32], 2, None, 4)
    assert (p.min[0], p.opt[0], p.max[0]) == (2, 4, 4)


def test_profile_rejects_bad_orders_and_other_batches_on_fixed_models():
    with pytest.raises(NasdeployError, match="min <= opt <= max"):
        profile_shapes("input", ["batch", 3, 16, 16], 8, 4, 16)
    fixed = profile_shapes("input", [4, 3, 16, 16], None, None, None)
    assert fixed.min == fixed.opt == fixed.max == (4, 3, 16, 16) and not fixed.dynamic
    with pytest.raises(NasdeployError, match="fixed batch of 4"):
        profile_shapes("input", [4, 3, 16, 16], None, None, 32)


def test_plan_reads_the_model_and_prints_an_equivalent_trtexec_line(model_dir, tmp_path):
    plan = plan_build(TrtConfig(onnx=str(model_dir / "model.onnx"), workspace_bytes=512 << 20, max_batch=16,
                                timing_cache=str(tmp_path / "cache.bin")))
    assert plan.engine == model_dir / "model.engine" and plan.sidecar.name == "model.engine.json"
    assert plan.precision == "fp32" and plan.info.image_size == 16
    args = shlex.split(trtexec_command(plan))
    assert args[0] == "trtexec" and "--stronglyTyped" in args
    assert f"--onnx={model_dir / 'model.onnx'}" in args
    assert "--minShapes=input:1x3x16x16" in args and "--optShapes=input:8x3x16x16" in args
    assert "--maxShapes=input:16x3x16x16" in args
    assert "--memPoolSize=workspace:512M" in args
    assert f"--timingCacheFile={tmp_path / 'cache.bin'}" in args
    assert not any(a in args for a in ("--fp16", "--int8", "--best"))  # removed in TensorRT 11


def test_precision_comes_from_the_model_it_would_consume(model_dir):
    info = read_onnx_card(model_dir / "model.onnx")
    path, precision, derive = choose_onnx(model_dir / "model.onnx", info, fp16=False, int8=True)
    assert (path.name, precision, derive) == ("model.int8.onnx", "int8", False)
    assert read_onnx_card(path).genotype == info.genotype
    path, precision, derive = choose_onnx(model_dir / "model.onnx", info, fp16=True, int8=False)
    assert (path.name, precision, derive) == ("model.fp16.onnx", "fp16", True)
    with pytest.raises(NasdeployError, match="choose one"):
        choose_onnx(model_dir / "model.onnx", info, fp16=True, int8=True)
    int8_info = read_onnx_card(model_dir / "model.int8.onnx")
    with pytest.raises(NasdeployError, match="int8 model"):
        choose_onnx(model_dir / "model.int8.onnx", int8_info, fp16=True, int8=False)


def test_int8_without_a_quantized_model_says_how_to_make_one(tmp_path, model_dir):
    (tmp_path / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    with pytest.raises(NasdeployError, match="--int8 --calib-data"):
        plan_build(TrtConfig(onnx=str(tmp_path / "model.onnx"), int8=True))


def test_dry_run_prints_plan_and_trtexec_and_builds_nothing(model_dir, capsys):
    assert main([str(model_dir / "model.onnx"), "--int8", "--dry-run", "--opt-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "precision: int8" in out and "trtexec --onnx=" in out and "--optShapes=input:4x3x16x16" in out
    assert not list(model_dir.glob("*.engine*"))


def test_workspace_takes_a_size_with_a_unit(model_dir, capsys):
    assert main([str(model_dir / "model.onnx"), "--workspace", "2G", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "workspace: 2 GiB" in out and "--memPoolSize=workspace:2048M" in out
    assert main([str(model_dir / "model.onnx"), "--workspace", "1536K", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "workspace: 1.50 MiB" in out and "--memPoolSize=workspace:1536K" in out
    assert main([str(model_dir / "model.onnx"), "--dry-run"]) == 0
    assert "workspace: 1 GiB" in capsys.readouterr().out


def test_dry_run_json_is_the_plan_alone_on_stdout(model_dir, capsys):
    argv = [str(model_dir / "model.onnx"), "--workspace", "512M", "--max-batch", "16", "--dry-run", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    plan = result["plan"]
    assert result["dry_run"] is True and result["built"] is None
    assert plan["workspace_bytes"] == 512 << 20 and plan["precision"] == "fp32"
    assert plan["profile"]["min"] == [1, 3, 16, 16] and plan["profile"]["max"] == [16, 3, 16, 16]
    assert plan["engine"] == str(model_dir / "model.engine") and plan["trtexec"].startswith("trtexec ")


def test_dry_run_json_file_keeps_the_text(model_dir, tmp_path, capsys):
    target = tmp_path / "plan.json"
    assert main([str(model_dir / "model.onnx"), "--int8", "--dry-run", "--json", str(target)]) == 0
    out = capsys.readouterr().out
    plan = json.loads(target.read_text())["plan"]
    assert "precision: int8" in out and plan["precision"] == "int8"
    assert plan["trtexec"] in out and not list(model_dir.glob("*.engine*"))


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.onnx"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not found" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--workspace", "1024"], "1024 is read as bytes (below the 1 MiB minimum): add a unit, e.g. 1024M"),
    (["--workspace", "512k"], "must be at least 1M"),
    (["--workspace", "0"], "size must be at least 1 byte"),
    (["--workspace", "lots"], "cannot read size 'lots'"),
    (["--max-batch", "0"], "argument --max-batch: must be at least 1"),
    (["--opt-batch", "x"], "argument --opt-batch: not a whole number"),
])
def test_bad_flags_are_one_line(model_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main([str(model_dir / "model.onnx"), "--dry-run", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_library_refuses_a_workspace_below_one_mib(model_dir):
    with pytest.raises(NasdeployError, match="at least 1 MiB"):
        plan_build(TrtConfig(onnx=str(model_dir / "model.onnx"), workspace_bytes=1024))


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present")
def test_without_tensorrt_or_gpu_the_build_fails_in_one_line(model_dir, capsys):
    assert main([str(model_dir / "model.onnx")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "pip install 'nasdeploy[gpu]'" in lines[0] and ("TensorRT" in lines[0] or "GPU" in lines[0])
    assert captured.out == "" and not list(model_dir.glob("*.engine*"))


@pytest.mark.tensorrt
@pytest.mark.skipif(NO_TRT is not None, reason=str(NO_TRT))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_and_matches_onnxruntime(model_dir, tmp_path, precision):
    from serve.ort_backend import load as load_ort
    from serve.trt_backend import load as load_trt

    config = TrtConfig(onnx=str(model_dir / "model.onnx"), out=str(tmp_path), fp16=precision == "fp16",
                       int8=precision == "int8", max_batch=8, timing_cache=str(tmp_path / "cache.bin"))
    plan, sidecar = build_engine(config)
    assert plan.engine.is_file() and (tmp_path / "cache.bin").is_file()
    data = json.loads(plan.sidecar.read_text())
    assert data["build"]["precision"] == precision and data["tensorrt_version"]
    assert read_sidecar_card(plan.sidecar).precision == precision
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    expected = load_ort(plan.onnx, device="cpu").predict(x)
    got = load_trt(plan.engine).predict(x)
    tolerance = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}[precision]
    assert np.abs(got - expected).max() <= tolerance


def test_fp16_model_for_an_engine_is_derived_with_the_export_checks(model_dir):
    fp16 = model_dir / "model.fp16.onnx"
    fp16.unlink(missing_ok=True)
    plan = plan_build(TrtConfig(onnx=str(model_dir / "model.onnx"), fp16=True, dry_run=True))
    assert plan.source == model_dir / "model.onnx" and plan.onnx == fp16
    comparison = derive_fp16(plan)
    assert comparison["top1_agreement"] >= 0.9
    assert read_onnx_card(fp16).precision == "fp16"
    assert "derived on the CPU from model.onnx" in "\n".join(describe_plan(plan))
