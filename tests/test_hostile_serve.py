"""Hostile input on the serving and export side (issue 17): one line and exit 2, or a 4xx.

Every case runs real code on real files: tiny ONNX classifiers made with ``onnx.helper``
whose ``nasdeploy.*`` metadata is rewritten, real checkpoints whose card is corrupted, and
a real server on a socket. Each asserts exit status 2 (or a 4xx answer), exactly one
``error:`` line, no traceback, and that nothing was written; a timeout keeps a hang from
passing as a wait.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from serve_fixtures import (
    CLASS_NAMES,
    IMAGE_SIZE,
    make_onnx_classifier,
    png_bytes,
    running_server,
    sample_images,
)

from export import onnx as export_cli
from export import tensorrt as tensorrt_cli
from export.onnx_export import STAGING_PREFIX, remove_stale_staging, staging_dir, supported_opsets
from search.core import cli
from search.core.errors import NasdeployError
from search.core.units import parse_count, parse_duration, parse_latency, parse_size
from search.nn.checkpoint import build_from_card, save_checkpoint
from search.space.card import MAX_BATCH, MAX_IMAGE_SIZE, CardError, ModelCard
from search.space.genotype import REFERENCE_GENOTYPES
from serve import bench, http, predict
from serve.errors import ServeError
from serve.http import create_app
from serve.metadata import read_sidecar_card
from serve.runtime import load_runtime

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


# --- helpers ------------------------------------------------------------------------------


def run_main(main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse exits count too."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_error(rc: int, err: str, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line (warnings aside), no traceback; return the line."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def rewrite_metadata(path: Path, **fields: str | None) -> Path:
    """Set (or, with ``None``, drop) ``nasdeploy.<field>`` entries of an ONNX file in place."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    for name, raw in fields.items():
        if raw is None:
            props.pop(f"nasdeploy.{name}", None)
        else:
            props[f"nasdeploy.{name}"] = raw
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, hidden ones included (to prove nothing was written)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def strict_json(text: str) -> object:
    """Parse RFC 8259 JSON: NaN and Infinity are refused."""
    def refuse(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# --- row 1 and rows 5-7: bad metadata, refused by every reader in one line ------------------

BAD_METADATA: dict[str, tuple[dict[str, str | None], str]] = {
    "class_names nested 100,000 deep": ({"class_names": "[" * 100_000}, "nasdeploy.class_names"),
    "mean nested 100,000 deep": ({"mean": "[" * 100_000 + "]" * 100_000}, "nasdeploy.mean"),
    "two mean values": ({"mean": "[0.5, 0.5]"}, "'mean'"),
    "mean is text": ({"mean": '"abc"'}, "'mean'"),
    "negative resize": ({"resize": "-5"}, "'resize'"),
    "zero std": ({"std": "[0, 0, 0]"}, "'std'"),
    "NaN std": ({"std": "[NaN, 0.5, 0.5]"}, "nasdeploy.std"),
    "tiny std": ({"std": "[1e-300, 0.5, 0.5]"}, "'std'"),
    "infinite mean": ({"mean": "[1e999, 0.5, 0.5]"}, "nasdeploy.mean"),
    "image size 100000": ({"image_size": "100000"}, "'image_size'"),
    "image size with 5001 digits": ({"image_size": "9" * 5001}, "nasdeploy.image_size"),
    "1 class name for 10 outputs": ({"class_names": '["a"]', "num_classes": "10"}, "class_names"),
    "3 class names, 10 outputs": ({"class_names": '["a", "b", "c"]'}, "class_names"),
    "negative num_classes": ({"num_classes": "-3", "class_names": None}, "num_classes"),
    "unknown precision": ({"precision": "fp64"}, "'precision'"),
    "unknown layout": ({"layout": "NHWC"}, "'layout'"),
    "unreadable scale": ({"scale": "zzz"}, "'scale'"),
    "NaN accuracy": ({"accuracy": "nan"}, "'accuracy'"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A good tiny classifier and one copy per :data:`BAD_METADATA` case."""
    folder = tmp_path_factory.mktemp("hostile-models")
    made = {"good": make_onnx_classifier(folder / "good.onnx")}
    for i, (case, (fields, _)) in enumerate(BAD_METADATA.items()):
        made[case] = rewrite_metadata(make_onnx_classifier(folder / f"bad{i}.onnx"), **fields)
    return made


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile-images") / "img.png"
    sample_images(1)[0].save(path)
    return path


READERS: dict[str, Callable[[Path, Path], tuple[Callable[[list[str]], int], list[str]]]] = {
    "serve.predict": lambda model, img: (predict.main, [str(model), str(img), "--json"]),
    "serve.bench": lambda model, img: (bench.main, [str(model), "--batch", "1", "--iters", "1"]),
    "serve.http": lambda model, img: (http.main, [str(model), "--port", "0"]),
    "export.tensorrt --dry-run": lambda model, img: (tensorrt_cli.main, [str(model), "--dry-run"]),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_one_line_naming_file_and_field(models, image, reader, case, capsys):
    path = models[case]
    before = listing(path.parent)
    main, argv = READERS[reader](path, image)
    rc, out, err = run_main(main, argv, capsys)
    line = assert_one_error(rc, err, str(path), BAD_METADATA[case][1])
    assert len(line) < 400 and out == ""
    assert listing(path.parent) == before  # nothing written next to the model


@pytest.mark.parametrize(("change", "field"), [
    ({"mean": [0.5, 0.5]}, "'mean'"),
    ({"mean": [math.nan, 0.5, 0.5]}, "'mean'"),
    ({"mean": [math.inf, 0.5, 0.5]}, "'mean'"),
    ({"std": [0.0, 0.5, 0.5]}, "'std'"),
    ({"std": [math.nan, 0.5, 0.5]}, "'std'"),
    ({"std": [1e-300, 0.5, 0.5]}, "'std'"),
    ({"image_size": 0}, "'image_size'"),
    ({"image_size": MAX_IMAGE_SIZE + 1}, "'image_size'"),
    ({"resize": -5}, "'resize'"),
    ({"resize": 10**9}, "'resize'"),
    ({"num_classes": 10, "class_names": ["a"]}, "class_names"),
    ({"num_classes": 10**9, "class_names": []}, "'num_classes'"),
    ({"precision": "fp64"}, "'precision'"),
    ({"channel_order": "BGR"}, "'channel_order'"),
    ({"scale": "1@"}, "'scale'"),
    ({"accuracy": math.nan}, "'accuracy'"),
    ({"accuracy": 7.5}, "'accuracy'"),
    ({"params": -1}, "'params'"),
])
def test_the_card_validates_itself_for_every_reader_and_writer(change, field):
    good = ModelCard(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=CLASS_NAMES, scale="1@48")
    data = {**good.to_dict(), **change}
    with pytest.raises(CardError) as info:
        ModelCard.from_dict(data, "some/model.onnx")
    message = str(info.value)
    assert message.startswith("some/model.onnx: ") and field in message and "\n" not in message
    values = {k: v for k, v in data.items() if k != "format_version"}
    with pytest.raises(CardError):  # a writer cannot make one either
        ModelCard(**values)


def test_sidecars_that_are_deep_devices_or_fifos_are_one_line(tmp_path):
    deep = tmp_path / "deep.engine.json"
    deep.write_text('{"model_info": ' + "[" * 100_000 + "}")
    with pytest.raises(CardError, match="nested deeper"):
        read_sidecar_card(deep)
    bad = tmp_path / "bad.engine.json"
    card = ModelCard(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, num_classes=3).to_dict()
    bad.write_text(json.dumps({"model_info": {**card, "std": [0, 0, 0]}}))
    with pytest.raises(CardError, match=r"bad.engine.json: .*'std'"):
        read_sidecar_card(bad)
    fifo = tmp_path / "fifo.engine.json"
    os.mkfifo(fifo)
    with pytest.raises(CardError, match="not a regular file"):  # and no read that blocks
        read_sidecar_card(fifo)
    with pytest.raises(CardError, match="not a regular file"):
        read_sidecar_card("/dev/zero")


def test_a_fifo_or_device_as_the_model_is_one_line(tmp_path, image, capsys):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for model in (fifo, Path("/dev/zero")):
        rc, _, err = run_main(predict.main, [str(model), str(image), "--backend", "onnxruntime"], capsys)
        assert_one_error(rc, err, str(model), "not a regular file")
    rc, _, err = run_main(predict.main, ["/dev/zero", str(image)], capsys)
    assert_one_error(rc, err, "don't know how to run 'zero'")


# --- row 6: strict JSON -------------------------------------------------------------------


def test_json_output_is_strict_json(models, image, capsys, tmp_path):
    assert cli.emit_json(cli.STDOUT, {"p": math.nan, "q": [np.float32("inf"), 0.5], "r": (1, -math.inf)})
    assert strict_json(capsys.readouterr().out) == {"p": None, "q": [None, 0.5], "r": [1, None]}
    rc, out, _ = run_main(predict.main, [str(models["good"]), str(image), "--json"], capsys)
    assert rc == 0
    probabilities = [t["probability"] for p in strict_json(out)["predictions"] for t in p["top"]]
    assert probabilities and all(0.0 <= p <= 1.0 for p in probabilities)


@pytest.mark.parametrize("main", [predict.main, bench.main])
def test_json_into_a_folder_names_the_folder_not_a_temp_file(models, image, tmp_path, main, capsys):
    target = tmp_path / "reports"
    target.mkdir()
    argv = ([str(models["good"]), str(image)] if main is predict.main
            else [str(models["good"]), "--batch", "1", "--iters", "1", "--warmup", "0"])
    rc, _, err = run_main(main, [*argv, "--json", str(target)], capsys)
    line = assert_one_error(rc, err, str(target), "folder")
    assert ".tmp" not in line and listing(target) == []


# --- rows 9 and 11, 10 (export): a checkpoint's bad card, bounds on every number --------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real 1@48 NASNet-A checkpoint for 16 px and 10 classes."""
    card = ModelCard(genotype=REFERENCE_GENOTYPES["nasnet-a"], scale="1@48", image_size=16, num_classes=10,
                     mean=(0.5,) * 3, std=(0.25,) * 3, dataset="synthetic")
    path = tmp_path_factory.mktemp("hostile-ckpt") / "checkpoint.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_from_card(card).eval(), card, metrics={"test_accuracy": 0.5})
    return path


SPEC_CORRUPTIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "row 9: 1 mean, std 0, 1 name for 10 outputs": (
        lambda raw: raw["spec"].update(mean=[0.5], std=[0, 0, 0], class_names=["a"]), "'mean'"),
    "one mean value": (lambda raw: raw["spec"].update(mean=[0.5]), "'mean'"),
    "std 0": (lambda raw: raw["spec"].update(std=[0.0, 0.0, 0.0]), "'std'"),
    "1 class name for 10 outputs": (lambda raw: raw["spec"].update(class_names=["a"]), "class_names"),
    "NaN mean": (lambda raw: raw["spec"].update(mean=[math.nan, 0.5, 0.5]), "'mean'"),
    "image size 100000": (lambda raw: raw["spec"].update(image_size=100_000), "'image_size'"),
    "NaN accuracy in its metrics": (lambda raw: raw["metrics"].update(test_accuracy=math.nan), "'accuracy'"),
}


@pytest.mark.parametrize("case", list(SPEC_CORRUPTIONS))
def test_export_refuses_a_checkpoint_card_it_could_not_read_back(checkpoint, tmp_path, case, capsys):
    raw = torch.load(checkpoint, weights_only=True)
    corrupt, field = SPEC_CORRUPTIONS[case]
    corrupt(raw)
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    out = tmp_path / "out" / "deeper"
    rc, _, err = run_main(export_cli.main, [str(bad), "--out", str(out)], capsys)
    assert_one_error(rc, err, str(bad), field)
    assert not (tmp_path / "out").exists()


def _flag_cases() -> dict[str, tuple[list[str], list[str]]]:
    low, high = supported_opsets()
    return {
        "opset 999": (["--opset", "999"], ["999", f"{low} to {high}"]),
        "opset 13": (["--opset", "13"], ["13", f">= {low}"]),
        "image size 100000": (["--image-size", "100000"], ["--image-size", str(MAX_IMAGE_SIZE)]),
        "batch 99999999": (["--batch", "99999999"], ["--batch", str(MAX_BATCH)]),
        "verify batch 10**6": (["--verify-batch", "1000000"], ["--verify-batch", str(MAX_BATCH)]),
        "num classes 0": (["--num-classes", "0"], ["--num-classes"]),
        "num classes 10**9": (["--num-classes", "1000000000"], ["--num-classes"]),
        "image size with 5001 digits": (["--image-size", "9" * 5001], ["--image-size"]),
        "int8 agreement 0": (["--int8", "--int8-agreement", "0"], ["--int8-agreement", "(0, 1]"]),
        "int8 agreement 1.5": (["--int8", "--int8-agreement", "1.5"], ["--int8-agreement", "(0, 1]"]),
        "int8 agreement nan": (["--int8", "--int8-agreement", "nan"], ["--int8-agreement", "(0, 1]"]),
        "sensitivity without int8": (["--sensitivity"], ["--sensitivity", "--int8"]),
        "qat without int8": (["--qat", "2"], ["--qat", "--int8"]),
        "qat 0 epochs": (["--int8", "--qat", "0"], ["--qat"]),
        "qat 10**6 epochs": (["--int8", "--qat", "1000000"], ["--qat", "100"]),
        "qat lr nan": (["--int8", "--qat", "1", "--qat-lr", "nan"], ["--qat-lr"]),
        "qat lr 5": (["--int8", "--qat", "1", "--qat-lr", "5"], ["--qat-lr"]),
        "qat with the cpu form": (["--int8", "--qat", "1", "--int8-form", "cpu"], ["--qat", "TensorRT"]),
    }


@pytest.mark.parametrize("case", list(_flag_cases()))
def test_export_numbers_are_bounded_before_anything_is_built(tmp_path, case, capsys):
    flags, fragments = _flag_cases()[case]
    out = tmp_path / "out"
    started = time.perf_counter()
    argv = ["nasnet-a", "--variant", "1@48", *flags, "--out", str(out)]
    rc, _, err = run_main(export_cli.main, argv, capsys)
    assert_one_error(rc, err, *fragments)
    assert time.perf_counter() - started < 10 and not out.exists()


def test_supported_opsets_come_from_the_installed_exporter():
    low, high = supported_opsets()
    from torch.onnx import _constants

    assert low == 17 and low <= high <= _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert high <= onnx.defs.onnx_opset_version()


# --- rows 10 and 13 (serve.bench), and the unit parsers --------------------------------------


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--batch-sizes", "99999999999"], str(MAX_BATCH)),
    (["--batch-sizes", "1,8,5000"], str(MAX_BATCH)),
    (["--batch", "5000"], str(MAX_BATCH)),
    (["--batch", "9" * 5001], "--batch"),
    (["--seconds", "nan"], "duration"),
    (["--seconds", "inf"], "duration"),
    (["--duration", "nan"], "duration"),
    (["--duration", "9" * 400], "out of range"),
    (["--duration", "400d"], "out of range"),
])
def test_bench_refuses_absurd_numbers_before_running(models, flags, fragment, capsys):
    started = time.perf_counter()
    rc, out, err = run_main(bench.main, [str(models["good"]), *flags], capsys)
    assert_one_error(rc, err, fragment)
    assert out == "" and time.perf_counter() - started < 10


def test_bench_refuses_a_batch_whose_input_would_not_fit():
    with pytest.raises(ServeError, match=r"needs 2\.3 GiB; the limit is 2 GiB"):
        bench.check_batch_sizes((4096,), 224)
    bench.check_batch_sizes((1, 8, MAX_BATCH), 16)  # small inputs pass


@pytest.mark.parametrize(("parse", "text"), [
    (parse_duration, "nan"), (parse_duration, "inf"), (parse_duration, "9" * 400), (parse_duration, "400d"),
    (parse_latency, "1e400ms"), (parse_latency, "1e-400ms"), (parse_latency, "nan ms"),
    (parse_latency, "1e" + "9" * 5001 + "ms"), (parse_latency, "2h" * 1),
    (parse_count, "1e400"), (parse_count, "1e19"), (parse_count, "inf"),
    (parse_size, "2T"), (parse_size, "1e400"), (parse_size, "nan"),
])
def test_unit_parsers_refuse_non_finite_and_absurd_values(parse, text):
    with pytest.raises(NasdeployError) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200


# --- stale staging folders (kill -9 during an export) -----------------------------------------


def test_stale_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / f"{STAGING_PREFIX}killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    (stale / ".lock").touch()
    locked = tmp_path / f"{STAGING_PREFIX}running"
    locked.mkdir()
    holder = open(locked / ".lock", "w")  # another export, still alive, holds its lock
    import fcntl

    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    fresh = tmp_path / f"{STAGING_PREFIX}fresh"  # newer than this process: not ours to judge
    fresh.mkdir()
    for folder in (stale, locked):
        os.utime(folder, (old, old))
    try:
        with staging_dir(tmp_path) as stage:
            assert stage.name.startswith(STAGING_PREFIX) and (stage / ".lock").is_file()
            assert remove_stale_staging(tmp_path) == []  # our own stage is locked
        assert not stale.exists() and locked.is_dir() and fresh.is_dir() and not stage.exists()
    finally:
        holder.close()
    os.utime(locked, (old, old))
    assert remove_stale_staging(tmp_path) == [locked]  # the holder is gone now


# --- rows 7 and 8: the server -----------------------------------------------------------------


def _nan_for_dark_images(path: Path) -> Path:
    """A real classifier whose scores are NaN for dark images: sqrt of the normalised channel means.

    A grey image (the start-up self-test) gives finite scores; a black one takes the square
    root of a negative number.
    """
    rng = np.random.default_rng(0)
    classes = len(CLASS_NAMES)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["flat"]),
         helper.make_node("Sqrt", ["flat"], ["root"]),
         helper.make_node("Gemm", ["root", "w", "b"], ["logits"])],
        "sqrt_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(rng.normal(0, 2, (3, classes)).astype(np.float32), "w"),
                     numpy_helper.from_array(np.zeros(classes, np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    good = onnx.load(str(make_onnx_classifier(path.with_name("donor.onnx"))))
    proto.metadata_props.extend(good.metadata_props)
    onnx.save(proto, str(path))
    return path


def _with_output(path: Path, donor: Path, *, nan_weights: bool = False,
                 dynamic_classes: bool = False) -> Path:
    """A copy of ``donor`` with NaN classifier weights or a symbolic class dimension."""
    proto = onnx.load(str(donor))
    if nan_weights:
        for i, init in enumerate(proto.graph.initializer):
            if init.name == "fc_w":
                array = np.full(numpy_helper.to_array(init).shape, np.nan, np.float32)
                proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, "fc_w"))
    if dynamic_classes:
        dim = proto.graph.output[0].type.tensor_type.shape.dim[1]
        dim.ClearField("dim_value")
        dim.dim_param = "classes"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("case", ["NaN weights", "3 names for 10 dynamic outputs"])
def test_http_refuses_a_model_that_cannot_serve_before_listening(models, tmp_path, case, capsys):
    path = tmp_path / "model.onnx"
    if case == "NaN weights":
        _with_output(path, models["good"], nan_weights=True)
        fragment = "cannot serve: model.onnx produced non-finite scores"
    else:
        rewrite_metadata(_with_output(path, models["good"], dynamic_classes=True),
                         class_names='["a", "b", "c"]', num_classes=None)
        fragment = "names 3 classes"
    with pytest.raises(ServeError, match=fragment):  # at load or in the self-test: no app either
        create_app(load_runtime(path))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rc, out, err = run_main(http.main, [str(path), "--port", str(port)], capsys)
    assert_one_error(rc, err, str(path), fragment)
    assert out == "" and "serving" not in err
    with socket.socket() as probe:  # it never listened: the port is still free
        probe.bind(("127.0.0.1", port))


def _png_of_size(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of ``width x height`` black pixels (compressed to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes(width)) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """uvicorn on a free port serving :func:`_nan_for_dark_images`, with the default pixel limit."""
    path = _nan_for_dark_images(tmp_path_factory.mktemp("hostile-http") / "model.onnx")
    app = create_app(load_runtime(path), max_bytes=1024 * 1024, top_k=3)
    with running_server(app) as url:
        yield url


def test_a_png_of_1x49_million_pixels_gets_413_at_once(server):
    body = _png_of_size(49_000_000, 1)
    assert len(body) < 200_000
    started = time.perf_counter()
    answer = httpx.post(server + "/predict", content=body, timeout=30)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 413, answer.text
    assert "elongated" in answer.json()["error"] and elapsed < 2.0


def test_health_reports_the_self_test_and_limits(server):
    health = httpx.get(server + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["selftest"]["passed"] is True
    assert math.isfinite(health["selftest"]["probability"]) and health["num_classes"] == len(CLASS_NAMES)
    assert health["limits"] == {"max_bytes": 1024 * 1024, "max_pixels": 50_000_000,
                                "resize_to": 18, "max_top_k": 100, "max_queue": 256,
                                "request_timeout_s": 30.0}


def _hostile_requests() -> dict[str, dict]:
    png = png_bytes(Image.new("RGB", (20, 20), (200, 180, 160)))
    return {
        "empty body": {"content": b""},
        "random bytes": {"content": np.random.default_rng(0).bytes(5000)},
        "text": {"content": b"hello, I am not an image"},
        "truncated png": {"content": png[: len(png) // 2]},
        "png signature only": {"content": png[:8]},
        "png header claims 100000x100000": {"content": png[:16] + struct.pack(">II", 100_000, 100_000)
                                            + png[24:]},
        "png of 0 pixels": {"content": png[:16] + struct.pack(">II", 0, 0) + png[24:]},
        "1x3,000,000 png": {"content": _png_of_size(3_000_000, 1)},
        "3,000,000x1 png": {"content": _png_of_size(1, 3_000_000)},
        "svg": {"content": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'},
        "pdf header": {"content": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"},
        "gif header only": {"content": b"GIF89a\xff\xff\xff\xff\x00\x00\x00"},
        "bmp header, no pixels": {"content": b"BM" + struct.pack("<IHHI", 70, 0, 0, 54)
                                  + struct.pack("<IiiHHI", 40, 60000, 60000, 1, 24, 0)},
        "black image: NaN scores": {"content": png_bytes(Image.new("RGB", (20, 20)))},
        "multipart without file": {"files": {"other": ("x.png", png, "image/png")}},
        "multipart, file empty": {"files": {"file": ("x.png", b"", "image/png")}},
        "multipart, broken boundary": {"content": b"--xyz\r\nContent-Disposition: form-data\r\n\r\n",
                                       "headers": {"content-type": "multipart/form-data; boundary=abc"}},
        "multipart, no boundary": {"content": png, "headers": {"content-type": "multipart/form-data"}},
        "top_k 0": {"content": png, "params": {"top_k": "0"}},
        "top_k huge": {"content": png, "params": {"top_k": "9" * 5000}},
        "top_k text": {"content": png, "params": {"top_k": "NaN"}},
        "top_k arabic digits 1000": {"content": png, "params": {"top_k": "١٠٠٠"}},
        "body over the limit": {"content": bytes(1024 * 1024 + 1)},
    }


@pytest.mark.parametrize("case", list(_hostile_requests()))
def test_no_hostile_body_gets_a_500(server, case):
    request = _hostile_requests()[case]
    answer = httpx.post(server + "/predict", timeout=30, **request)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    body = answer.json()
    assert body["status"] == answer.status_code and "\n" not in body["error"]


def test_good_images_still_classify(server):
    rng = np.random.default_rng(2)
    bright = [Image.fromarray(rng.integers(180, 256, (h, w, 3), dtype=np.uint8))
              for w, h in ((24, 20), (9, 300))]
    for image in (Image.new("RGB", (20, 20), (200, 180, 160)), *bright):
        answer = httpx.post(server + "/predict", content=png_bytes(image), timeout=30)
        assert answer.status_code == 200, answer.text
        assert all(math.isfinite(t["probability"]) for t in strict_json(answer.text)["top"])
    assert httpx.post(server + "/predict", content=png_bytes(Image.new("RGB", (20, 20))),
                      timeout=30).status_code == 422


@pytest.mark.parametrize("raw", [
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /predict?top_k=%ff%fe HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_malformed_http_is_never_a_500(server, raw):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(raw)
        status_line = conn.recv(4096).split(b"\r\n", 1)[0]
    status = int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else None
    assert status is None or 400 <= status < 500, status_line  # refused, or the connection closed


# --- the same rows as real processes (no traceback from the interpreter either) --------------


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_rows_as_real_processes(models, image, tmp_path):
    out = tmp_path / "export"
    cases = [
        (["-m", "serve.http", str(models["class_names nested 100,000 deep"]), "--port", "0"],
         "nested deeper"),
        (["-m", "serve.predict", str(models["zero std"]), str(image), "--json"], "'std'"),
        (["-m", "serve.bench", str(models["good"]), "--seconds", "nan"], "duration"),
        (["-m", "serve.bench", str(models["good"]), "--batch-sizes", "99999999999"], str(MAX_BATCH)),
        (["-m", "export.onnx", "nasnet-a", "--variant", "1@48", "--opset", "999", "--out", str(out)], "999"),
        (["-m", "export.onnx", "nasnet-a", "--variant", "1@48", "--image-size", "100000", "--out", str(out)],
         "--image-size"),
    ]
    for argv, fragment in cases:
        done = _python(*argv)
        assert_one_error(done.returncode, done.stderr, fragment)
        assert done.stdout == ""
    assert not out.exists()


@pytest.mark.slow
def test_kill_9_during_export_leaves_staging_the_next_export_removes(tmp_path):
    out = tmp_path / "export"
    argv = ["-m", "export.onnx", "nasnet-a", "--variant", "1@48", "--image-size", "16", "--out", str(out)]
    victim = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(STAGING_PREFIX + "*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=30)
    left = list(out.glob(STAGING_PREFIX + "*"))
    assert left and not (out / "model.onnx").exists()
    done = _python(*argv, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").is_file() and not list(out.glob(STAGING_PREFIX + "*"))
