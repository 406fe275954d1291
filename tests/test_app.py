"""The Streamlit demo, driven by ``streamlit.testing`` over a tiny real exported model.

The runs folder holds NASNet-A at 1@48 exported to ONNX with real metadata and a search
run written by ``search.trials.history`` / ``search.experiment.report`` (see ``app_fixtures``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import BUDGET_MS, CIFAR_CLASSES, MODEL_ACCURACY, make_runs_folder, trial_records
from PIL import Image
from serve_fixtures import png_bytes
from streamlit.testing.v1 import AppTest

from app import explorer, models
from search.core.errors import NasdeployError
from search.core.rundir import HISTORY_NAME
from search.trials.history import append_record
from search.trials.selection import pareto_front
from serve.preprocess import load_image
from serve.runtime import available_backends, classify, load_runtime

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo.py"
HEADING = re.compile(r"#### (" + "|".join(CIFAR_CLASSES) + r") — (\d+\.\d)%")
CLASSIFY, CARD, EXPLORER = 0, 1, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs_folder(tmp_path_factory.mktemp("runs"))


def start(monkeypatch, root: Path) -> AppTest:
    """Run the demo once with ``$NASDEPLOY_RUNS`` pointing at ``root``."""
    monkeypatch.setenv(models.RUNS_ENV, str(root))
    at = AppTest.from_file(str(DEMO), default_timeout=120)
    return at.run()


def assert_no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def headings(at: AppTest) -> list[tuple[str, float]]:
    found = [HEADING.fullmatch(m.value) for m in at.tabs[CLASSIFY].markdown]
    return [(m.group(1), float(m.group(2))) for m in found if m]


# -- whole page (AppTest runs the real script: a few seconds each) -------------------------


@pytest.mark.slow
def test_first_launch_opens_on_the_bundled_model_and_classifies_its_photos(monkeypatch, tmp_path):
    at = start(monkeypatch, tmp_path / "nothing-here")
    assert_no_traceback(at)
    assert not at.error
    bundled = models.bundled_model()
    assert bundled is not None and at.sidebar.selectbox[0].value == bundled
    assert "showing the bundled CIFAR-10 model" in " ".join(c.value for c in at.sidebar.caption)
    note = " ".join(i.value for i in at.info)
    assert "bundled CIFAR-10 model" in note and "Runs folder" in note  # what it is, how to switch
    shown = headings(at)  # the ten CIFAR-10 photos are picked at first
    truth = [name.removeprefix("cifar-").removesuffix(".png") for name in models.cifar_samples()]
    assert len(shown) == len(truth) == 10
    assert sum(label == name for (label, _), name in zip(shown, truth, strict=True)) >= 8, shown
    card = at.tabs[CARD]
    metrics = {m.label: m.value for m in card.metric}
    info = load_runtime(bundled).info
    assert metrics["Scale (N@F)"] == info.scale and metrics["Accuracy"] == f"{info.accuracy:.1%}"
    assert float(metrics["Latency here"].removesuffix(" ms")) > 0
    assert any(e.label == "About the bundled model" for e in card.expander)


@pytest.mark.slow
def test_no_runs_and_no_bundled_model_shows_friendly_messages(monkeypatch, tmp_path):
    from serve import bundled

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "not-installed")
    at = start(monkeypatch, tmp_path / "nothing-here")
    assert_no_traceback(at)
    assert not at.error
    infos = " ".join(i.value for i in at.info)
    assert "No model selected" in infos
    assert "No search runs" in infos
    assert "No `.onnx` / `.engine` files" in " ".join(c.value for c in at.sidebar.caption)


@pytest.mark.slow
def test_bundled_samples_are_classified(monkeypatch, runs):
    at = start(monkeypatch, runs.root)
    assert_no_traceback(at)
    assert at.sidebar.selectbox[0].value == runs.model
    assert at.sidebar.selectbox[1].value == "onnxruntime"
    samples = ["roof-gray.jpg", "temple.jpg", "boat-rgba.png"]
    at.tabs[CLASSIFY].button_group[0].set_value(samples).run()
    assert_no_traceback(at)
    assert not at.error
    shown = headings(at)
    assert len(shown) == len(samples)
    runtime = load_runtime(runs.model)
    for name, (label, percent) in zip(sorted(samples), shown, strict=True):
        image = load_image(models.SAMPLES_DIR / name)
        top = classify(runtime, [image])[0].top
        assert label == top[0][0]
        assert percent == pytest.approx(100 * top[0][1], abs=0.051)
    captions = [c.value for c in at.tabs[CLASSIFY].caption if "inference" in c.value]
    assert len(captions) == len(samples)
    assert all(re.search(r"inference \d+\.\d\d ms", c) for c in captions)
    assert len(at.tabs[CLASSIFY].get("vega_lite_chart")) == len(samples)


@pytest.mark.slow
def test_uploads_any_format_and_bad_files_are_friendly(monkeypatch, runs):
    at = start(monkeypatch, runs.root)
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 4), dtype=np.uint8), "RGBA")
    webp = io.BytesIO()
    rgba.save(webp, format="WEBP")
    gray = png_bytes(Image.new("L", (9, 300), 128))  # grayscale, far from square
    good = png_bytes(Image.new("RGB", (64, 48), (200, 30, 30)))
    at.tabs[CLASSIFY].file_uploader[0].set_value(
        [
            ("photo.webp", webp.getvalue(), "image/webp"),
            ("tall-gray.png", gray, "image/png"),
            ("notes.png", b"these are not pixels", "image/png"),
            ("empty.jpg", b"", "image/jpeg"),
            ("cut.png", good[: len(good) // 2], "image/png"),
        ]
    ).run()
    assert_no_traceback(at)
    assert len(headings(at)) == 2
    errors = [e.value for e in at.tabs[CLASSIFY].error]
    assert len(errors) == 3
    for name in ("notes.png", "empty.jpg", "cut.png"):
        assert any(e.startswith(f"**{name}**:") for e in errors), errors


@pytest.mark.slow
def test_missing_or_broken_model_is_friendly(monkeypatch, runs, tmp_path):
    at = start(monkeypatch, runs.root)
    path_field = at.sidebar.text_input[1]
    path_field.input(str(tmp_path / "gone" / "model.onnx")).run()
    assert_no_traceback(at)
    assert any("model file not found" in e.value for e in at.error)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage, not protobuf")
    path_field.input(str(broken)).run()
    assert_no_traceback(at)
    assert any("is not a loadable ONNX model" in e.value for e in at.error)
    assert any("No model selected" in i.value for i in at.tabs[CARD].info)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    path_field.input(str(text)).run()
    assert_no_traceback(at)
    assert any("No backend on this machine runs `.txt` files" in w.value for w in at.sidebar.warning)


@pytest.mark.slow
def test_prefers_a_model_this_machine_can_run(monkeypatch, runs, tmp_path):
    run = tmp_path / "exp2"
    run.mkdir()
    shutil.copy(runs.model, run / "model.onnx")
    engine = run / "model.engine"  # exported after the ONNX file, as export.tensorrt does
    engine.write_bytes(b"not a real engine")
    os.utime(engine, (time.time() + 60, time.time() + 60))
    at = start(monkeypatch, tmp_path)
    assert_no_traceback(at)
    assert models.discover_models(tmp_path)[:2] == [run / "model.onnx", engine]
    if "tensorrt" in available_backends():
        pytest.skip("TensorRT is available here, so the engine is runnable")
    assert at.sidebar.selectbox[0].value == run / "model.onnx"
    assert len(headings(at.tabs[CLASSIFY].button_group[0].set_value(["flower.jpg"]).run())) == 1
    at.sidebar.selectbox[0].select(engine).run()
    assert_no_traceback(at)
    assert any("TensorRT engines need an NVIDIA GPU" in w.value for w in at.sidebar.warning)
    assert any("No model selected" in i.value for i in at.tabs[CLASSIFY].info)


@pytest.mark.slow
def test_model_card_shows_metadata_latency_and_cells(monkeypatch, runs):
    at = start(monkeypatch, runs.root)
    card = at.tabs[CARD]
    metrics = {m.label: m.value for m in card.metric}
    info = load_runtime(runs.model).info
    assert metrics["Scale (N@F)"] == "1@48"
    assert metrics["Input"] == "16×16 px"
    assert metrics["Accuracy"] == f"{MODEL_ACCURACY:.1%}"
    assert metrics["Parameters"] == f"{info.params / 1e3:.3g} k"
    assert metrics["MACs"] == f"{info.macs / 1e3:.3g} k"
    assert float(metrics["Latency here"].removesuffix(" ms")) > 0
    assert len(card.get("image")) == 1  # the drawn cells
    (details,) = [e for e in card.expander if e.label == "Runtime details"]
    described = details.json[0].value
    assert json.loads(described)["provider"] == "CPUExecutionProvider"


@pytest.mark.slow
def test_explorer_shows_run_charts_table_and_genotype(monkeypatch, runs):
    at = start(monkeypatch, runs.root)
    tab = at.tabs[EXPLORER]
    assert_no_traceback(at)
    metrics = {m.label: m.value for m in tab.metric}
    front = pareto_front(runs.records)
    assert metrics["Trials"] == str(len(runs.records))
    assert metrics["On the Pareto front"] == str(len(front))
    assert metrics["Meet the budget"] == str(sum(r.feasible for r in runs.records))
    assert metrics["Latency budget"] == f"{BUDGET_MS:g} ms"
    table = tab.dataframe[0].value
    assert list(table["trial"]) == [r.trial for r in runs.records]
    assert set(table.loc[table["pareto"], "trial"]) == {r.trial for r in front}
    charts = [json.loads(c.proto.spec) for c in tab.get("vega_lite_chart")]
    assert len(charts) == 2
    marks = [layer["mark"]["type"] for layer in charts[0]["layer"]]
    assert "rule" in marks and "circle" in marks  # budget line and trials
    chosen = json.loads((runs.run_dir / "genotype.json").read_text())["metadata"]["trial"]
    assert tab.selectbox[1].value == chosen
    assert len(tab.get("image")) == 1
    tab.selectbox[1].select(4).run()  # the failed trial still has a drawable genotype
    assert_no_traceback(at)
    assert len(at.tabs[EXPLORER].get("image")) == 1


@pytest.mark.slow
def test_explorer_reports_a_corrupt_history(monkeypatch, tmp_path):
    run = tmp_path / "bad-run"
    run.mkdir()
    (run / HISTORY_NAME).write_text('{"trial": 0}\nnot json\n{"trial": 2}\n')
    at = start(monkeypatch, tmp_path)
    assert_no_traceback(at)
    assert any("line 1 is corrupt" in e.value for e in at.tabs[EXPLORER].error)


# -- pure functions -----------------------------------------------------------------------


def test_trials_frame_marks_front_best_so_far_and_choice():
    records = trial_records()
    frame = explorer.trials_frame(records, chosen_trial=2)
    assert set(frame.loc[frame["pareto"], "trial"]) == {r.trial for r in pareto_front(records)}
    assert list(frame["best_reward"]) == list(np.maximum.accumulate([r.reward for r in records]))
    assert list(frame.loc[frame["chosen"], "trial"]) == [2]
    failed = frame[frame["status"] == "failed"]
    assert list(failed["kind"]) == ["failed"]
    over = frame[(frame["kind"] == "over budget")]
    assert not over["feasible"].any() and not over["pareto"].any()


def test_charts_carry_trials_front_and_budget():
    frame = explorer.trials_frame(trial_records(), chosen_trial=2)
    spec = explorer.accuracy_latency_chart(frame, BUDGET_MS).to_dict()
    datasets = spec["datasets"].values()
    assert any(row.get("budget") == BUDGET_MS for data in datasets for row in data)
    measured = frame["latency_ms"].notna().sum()
    assert any(len(data) == measured for data in datasets)
    tooltips = [t["field"] for t in spec["layer"][1]["encoding"]["tooltip"]]
    assert "trial" in tooltips and "reward" in tooltips
    assert spec["params"][0]["bind"] == "scales"  # hover + zoom/pan
    reward = explorer.reward_chart(frame).to_dict()
    assert [layer["mark"]["type"] for layer in reward["layer"]] == ["circle", "line"]
    no_budget = explorer.accuracy_latency_chart(frame, None).to_dict()
    assert "rule" not in [layer["mark"]["type"] for layer in no_budget["layer"]]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("config.json", {"latency_budget": "800us", "trials": 8}, 0.8),
        ("config.json", {"search": {"latency_budget_ms": 3}}, 3.0),
        ("pareto.json", {"latency_budget_ms": 2.5, "front": []}, 2.5),
        ("genotype.json", {"metadata": {"latency_budget_ms": 7.0}}, 7.0),
        ("config.json", {"latency_budget": "soon"}, None),
        ("config.json", {"latency_budget_ms": -1}, None),
    ],
)
def test_latency_budget_is_read_from_any_run_file(tmp_path, name, content, expected):
    (tmp_path / name).write_text(json.dumps(content))
    assert explorer.latency_budget(tmp_path) == expected


def test_load_run_needs_a_history(tmp_path):
    with pytest.raises(NasdeployError, match="has no trials.jsonl"):
        explorer.load_run(tmp_path)
    for record in trial_records(3):
        append_record(tmp_path / HISTORY_NAME, record)
    data = explorer.load_run(tmp_path)
    assert data.budget_ms is None and data.chosen is None and len(data.frame) == 3


def test_discovery_finds_models_and_runs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a" / "model.onnx").write_bytes(b"x")
    (tmp_path / "a" / "deep" / "model.engine").write_bytes(b"x")
    (tmp_path / ".hidden" / "model.onnx").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / HISTORY_NAME).write_text("")
    found = models.discover_models(tmp_path)
    assert sorted(found) == [tmp_path / "a" / "deep" / "model.engine", tmp_path / "a" / "model.onnx"]
    assert models.discover_runs(tmp_path) == [tmp_path / "a"]
    assert models.discover_models(tmp_path / "missing") == []
    assert models.backends_for("x.onnx") == ["onnxruntime"]
    assert set(models.sample_images()) >= {"temple.jpg", "boat-rgba.png"}


def test_discovery_lists_the_fastest_precision_of_a_folder_first(tmp_path):
    import json

    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in models.discover_models(tmp_path)] == ["model.onnx", "model.fp16.onnx",
                                                                   "model.int8.onnx"]
    report = {"model": "model.onnx", "precisions": {"fastest": "int8"}}
    (tmp_path / "export_report.json").write_text(json.dumps(report))
    assert [p.name for p in models.discover_models(tmp_path)] == ["model.int8.onnx", "model.onnx",
                                                                   "model.fp16.onnx"]


def test_names_are_shown_literally():
    from app.views import md

    assert md("aquarium_fish") == r"aquarium\_fish"
    assert md("$5 [x](y)*") == r"\$5 \[x\]\(y\)\*"


def test_fp32_model_is_listed_before_its_quantized_siblings(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        for name in ("model.int8.onnx", "model.onnx", "model.fp16.onnx"):
            (folder / name).write_bytes(b"x")
    os.utime(old, (time.time() - 60, time.time() - 60))
    names = [(p.parent.name, p.name) for p in models.discover_models(tmp_path)]
    assert names == [("new", "model.onnx"), ("new", "model.fp16.onnx"), ("new", "model.int8.onnx"),
                     ("old", "model.onnx"), ("old", "model.fp16.onnx"), ("old", "model.int8.onnx")]
