"""The CIFAR-10 model shipped in ``serve/models/cifar10`` and the name ``bundled`` that reaches it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import CIFAR_CLASSES
from PIL import Image
from serve_fixtures import build_tiny_model, export_tiny

from search.core.rundir import EXPORT_REPORT_NAME, MODEL_ONNX_NAME
from serve import bench, bundled, http, predict
from serve.preprocess import preprocess
from serve.runtime import load_runtime

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "app" / "samples").glob("cifar-*.png"))
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "cifar10.npz"


def test_the_bundled_model_is_a_searched_cifar10_cell_with_its_report_and_card():
    folder = bundled.bundled_dir()
    files = {p.name for p in folder.iterdir()}
    assert {MODEL_ONNX_NAME, EXPORT_REPORT_NAME, bundled.BUNDLED_CARD} <= files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000  # a few MB at most
    info = load_runtime(bundled.BUNDLED_NAME).info
    assert info.dataset == "cifar10" and list(info.class_names) == CIFAR_CLASSES
    assert info.genotype is not None and info.scale and info.image_size == 32
    assert info.accuracy is not None and info.accuracy >= 0.8  # recorded at training, not re-measured here
    report = json.loads((folder / EXPORT_REPORT_NAME).read_text())
    assert report["model"] == MODEL_ONNX_NAME
    assert report["verification"]["batches"][0]["top1_agreement"] == 1.0
    card = (folder / bundled.BUNDLED_CARD).read_text()
    assert f"{info.accuracy:.2%}"[:4] in card or "Test accuracy" in card


def test_predict_bundled_names_the_ten_sample_photos(capsys):
    assert len(SAMPLES) == 10
    assert predict.main([bundled.BUNDLED_NAME, *map(str, SAMPLES), "--top-k", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["model"]) == Path(bundled.BUNDLED_NAME)
    assert Path(result["runtime"]["model"]).parent == bundled.BUNDLED_DIR
    predicted = [p["top"][0]["class"] for p in result["predictions"]]
    truth = [p.stem.removeprefix("cifar-") for p in SAMPLES]
    assert set(predicted) <= set(CIFAR_CLASSES)
    pairs = list(zip(predicted, truth, strict=True))
    assert sum(a == b for a, b in pairs) >= 8, pairs


def test_bench_and_http_accept_the_name(capsys):
    assert bench.main([bundled.BUNDLED_NAME, "--batch-sizes", "1", "--warmup", "1", "--iters", "5",
                       "--json"]) == 0
    assert Path(json.loads(capsys.readouterr().out)["model"]).parent == bundled.BUNDLED_DIR
    args = http.build_parser().parse_args([bundled.BUNDLED_NAME])
    assert load_runtime(args.model).info.dataset == "cifar10"


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} is absent (the local CIFAR-10 copy)")
def test_recorded_accuracy_holds_on_test_images_through_the_serving_pipeline():
    runtime = load_runtime(bundled.BUNDLED_NAME)
    data = np.load(CIFAR)
    rows = np.random.default_rng(0).choice(len(data["y_test"]), 1000, replace=False)
    batch = preprocess([Image.fromarray(x) for x in data["x_test"][rows]], runtime.info)
    accuracy = float((runtime.predict(batch).argmax(1) == data["y_test"][rows]).mean())
    assert accuracy == pytest.approx(runtime.info.accuracy, abs=0.04)  # 1,000 of the 10,000 images


def test_a_local_path_named_bundled_wins(tmp_path, monkeypatch):
    export_tiny(build_tiny_model(), tmp_path / "bundled" / MODEL_ONNX_NAME)
    monkeypatch.chdir(tmp_path)
    assert not bundled.is_bundled("bundled")
    assert load_runtime("bundled").info.image_size == 16  # the local tiny model, not the CIFAR one


def test_a_missing_bundled_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "gone")
    image = tmp_path / "x.png"
    shutil.copy(SAMPLES[0], image)
    assert predict.main([bundled.BUNDLED_NAME, str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the bundled model is missing from this install") and "\n" not in err
