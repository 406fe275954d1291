"""Hand-designed baselines: every network builds and learns, and goes the genotype's whole way
(``search.train --model`` -> ``export.onnx --fp16 --int8`` -> ``serve.predict``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.onnx import main as export_main
from search.nn.baselines import build_baseline
from search.nn.checkpoint import load_checkpoint
from search.nn.cost import count_params
from search.space.baselines import BASELINES, names
from search.space.card import CardError, ModelCard
from search.space.genotype import load_genotype
from search.train import main as train_main
from serve.metadata import from_props, read_onnx_card, to_props
from serve.predict import main as predict_main

EXPECTED_M_PARAMS = {  # at 10 classes; the papers' networks with a 10-way classifier
    "lenet5": 0.062, "alexnet": 7.706, "vgg11": 9.228, "googlenet": 5.602, "resnet18": 11.174,
    "resnet20": 0.270, "se_resnet20": 0.273, "densenet": 1.001, "mobilenet_v2": 2.237,
    "mobilenet_v3_small": 1.528, "mnasnet": 3.115, "shufflenet_v2": 1.264,
}
FP16_TOO = {"lenet5", "resnet20", "mobilenet_v3_small"}
"""Baselines whose end-to-end test also derives fp16 (fp32 and int8 run for all: time)."""


@pytest.mark.parametrize("name", names())
def test_every_baseline_learns_at_32_and_16_px_and_is_the_papers_network(name: str) -> None:
    torch.manual_seed(0)
    for size in (32, 16):  # CIFAR's size and digits' default
        model = build_baseline(name, 10, size)
        if size == 32:
            assert count_params(model) / 1e6 == pytest.approx(EXPECTED_M_PARAMS[name], rel=0.02)
        logits = model(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 10)
        logits.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_resnet20_is_he_et_al_s_0_27_m_network() -> None:
    model = build_baseline("resnet20", 10, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19  # 19 conv layers + the classifier: 20 weighted layers
    assert count_params(model) == pytest.approx(0.27e6, rel=0.01)


@pytest.mark.parametrize("name", ["mnasnet", "resnet20"])
def test_a_checkpoint_rebuilds_the_baseline_with_its_weights(name: str, tmp_path: Path) -> None:
    from search.nn.checkpoint import save_checkpoint

    card = ModelCard(architecture=name, image_size=16, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    model = build_baseline(name, 10, 16).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model, card)  # a plain dict: no module versions
    loaded, spec, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert spec == card
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_width_multipliers_shrink_the_network() -> None:
    full = count_params(build_baseline("mobilenet_v2", 10, 32))
    half = count_params(build_baseline("mobilenet_v2", 10, 32, 0.5))
    assert half < 0.5 * full
    assert count_params(build_baseline("shufflenet_v2", 10, 32, 0.5)) < \
        count_params(build_baseline("shufflenet_v2", 10, 32, 1.0))


def test_the_card_names_the_baseline_through_checkpoint_and_onnx_codecs() -> None:
    card = ModelCard(architecture="mobilenet_v2", width_mult=0.5, image_size=32, num_classes=10,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert card.is_baseline and card.genotype is None and card.scale == ""
    assert ModelCard.from_dict(card.to_dict()) == card
    assert from_props(to_props(card)) == card
    old = card.to_dict()
    for key in ("architecture", "width_mult"):
        old.pop(key)
    assert ModelCard.from_dict(old).architecture is None  # cards written before the field still read


@pytest.mark.parametrize(
    ("values", "message"),
    [({"architecture": "Mobile Net"}, "architecture"),
     ({"width_mult": 0.5}, "no architecture"),
     ({"architecture": "mobilenet_v2", "width_mult": 40.0}, "width_mult"),
     ({"architecture": "resnet20", "genotype": load_genotype("lite"), "scale": "1@48"}, "both")],
)
def test_bad_baseline_cards_are_refused(values, message) -> None:
    with pytest.raises(CardError, match=message):
        ModelCard(image_size=32, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3, **values)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--model", "nope"], "use one of lenet5, alexnet"),
     (["--model", "resnet20", "--width-mult", "0.5"], "does not apply to resnet20"),
     (["--model", "mobilenet_v2", "--width-mult", "9"], "from 0.1 to 4"),
     (["--model", "shufflenet_v2", "--width-mult", "0.7"], "one of 0.5, 1, 1.5, 2"),
     (["--model", "resnet20", "lite"], "does not go with --model"),
     (["--model", "resnet20", "--variant", "1@48"], "--variant does not go with --model"),
     (["lite", "--width-mult", "0.5"], "goes with --model"),
     (["--model", "resnet20", "--drop-path", "0.2"], "drop-path"),
     (["--model", "lenet5", "--image-size", "8"], "at least 12 px")],
)
def test_bad_baseline_flags_are_one_line_and_leave_no_run_dir(args, message, tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_main([*args, "--dataset", "digits", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def _digit_png(path: Path) -> int:
    """A digits test image as a PNG (upscaled like the dataset); returns its label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images[-1] / 16.0 * 255).astype(np.uint8)
    Image.fromarray(pixels).convert("RGB").resize((16, 16), Image.BILINEAR).save(path)
    return int(digits.target[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", names())
def test_baseline_trains_exports_and_serves_like_a_genotype(name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / name
    width = ["--width-mult", "0.5"] if name in ("mobilenet_v2", "shufflenet_v2") else []
    assert train_main(["--model", name, *width, "--dataset", "digits", "--epochs", "1", "--train-size", "64",
                       "--batch", "32", "--no-progress", "--out", str(out)]) == 0
    assert f"training {name}: baseline " in capsys.readouterr().out
    model, card, raw = load_checkpoint(out / "checkpoint.pt")
    assert (card.architecture, card.genotype, card.scale, card.image_size) == (name, None, "", 16)
    assert card.width_mult == (0.5 if width else None)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)

    fp16 = ["--fp16"] if name in FP16_TOO else []
    assert export_main([str(out), *fp16, "--int8", "--calib-size", "32", "--eval-size", "32"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["checks"]["checker"] == "full_check"
    assert all(r["top1_agreement"] == 1.0 for r in report["verification"]["batches"])
    assert report["int8"]["written"] and 0.0 <= report["int8"]["top1_agreement"] <= 1.0
    assert report["int8"]["mixed_precision"]["parts"] > 1  # split by module, not one "head"
    if fp16:
        assert report["fp16"]["top1_agreement"] >= 0.9
    onnx_card = read_onnx_card(out / "model.onnx")
    assert replace(onnx_card, precision="fp32") == onnx_card
    assert (onnx_card.architecture, onnx_card.width_mult) == (name, card.width_mult)
    assert onnx_card.params == count_params(model) and onnx_card.weights == "trained"
    assert read_onnx_card(out / "model.int8.onnx").precision == "int8"

    image = tmp_path / "digit.png"
    _digit_png(image)
    capsys.readouterr()
    assert predict_main([str(out), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert top[0]["class"] in {str(i) for i in range(10)}
    assert sum(entry["probability"] for entry in top) <= 1.0 + 1e-5


def test_every_catalogue_entry_names_its_paper() -> None:
    assert all(b.paper and b.title and b.family for b in BASELINES.values())


@pytest.mark.slow
def test_the_app_names_the_baseline_and_shows_its_architecture(monkeypatch, tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from app import models
    from export.onnx_export import ExportConfig, export_model
    from search.nn.checkpoint import save_checkpoint

    card = ModelCard(architecture="mobilenet_v3_small", width_mult=0.5, image_size=16, num_classes=10,
                     mean=(0.5,) * 3, std=(0.25,) * 3, dataset="digits")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mbv3" / "checkpoint.pt", build_baseline("mobilenet_v3_small", 10, 16, 0.5),
                    card, metrics={"test_accuracy": 0.5})
    export_model(ExportConfig(source=str(tmp_path / "mbv3")), log=lambda *_: None)
    monkeypatch.setenv(models.RUNS_ENV, str(tmp_path))
    demo = Path(__file__).resolve().parents[1] / "app" / "demo.py"
    at = AppTest.from_file(str(demo), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    line = " ".join(c.value for c in at.caption)
    assert "Baseline **MobileNetV3-small ×0.5** at 16 px" in line
    model_card = at.tabs[1]
    metrics = {m.label: m.value for m in model_card.metric}
    assert metrics["Architecture"] == "MobileNetV3-small ×0.5" and "Scale (N@F)" not in metrics
    assert any(h.value == "Architecture" for h in model_card.subheader)
    assert not model_card.get("image")  # no cells to draw


def test_an_interrupted_baseline_resumes_with_its_own_settings(tmp_path: Path, interrupt_after_first_epoch,
                                                               capsys) -> None:
    out = tmp_path / "lenet"
    args = ["--model", "lenet5", "--dataset", "digits", "--epochs", "2", "--train-size", "64",
            "--no-progress"]
    assert train_main([*args, "--out", str(out)]) == 130
    interrupt_after_first_epoch()  # run on to the end
    assert train_main(["--resume", str(out), "--no-progress"]) == 0
    assert "training lenet5: baseline LeNet-5" in capsys.readouterr().out
    _, card, raw = load_checkpoint(out / "checkpoint.pt")
    assert card.architecture == "lenet5" and raw["training"]["epoch"] == 2
