"""``python -m serve.bench --table``: the model table of real models, its files, bad input, the app tab.

The models: a LeNet-5 baseline checkpoint exported by ``export.onnx`` with an fp16 sibling (real
card, real export report), the bundled searched CIFAR-10 cell, and the serve tests' torch-free
ONNX classifier whose card records no parameters, MACs or accuracy (the graph-count path). Only
invariants are asserted: no absolute timings.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from serve_fixtures import make_onnx_classifier

from search.core.rundir import EXPORT_REPORT_NAME
from serve import bench, table, table_render
from serve.graphfacts import count_weights, depth
from serve.metadata import read_onnx_card

FAST = table.TableSettings(warmup=1, iters=5, rounds=2)
BASELINE_ACCURACY = 0.5
CLASSIFIER_MACS = 16 * 16 * 8 * 3 * 3 * 3 + 8 * 10  # the 3x3 conv at 16x16 and the 8x10 linear layer


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A LeNet-5 checkpoint (random weights, recorded test accuracy 0.5) exported with --fp16."""
    import torch

    from export.onnx_export import ExportConfig, export_model
    from search.nn.baselines import build_baseline
    from search.nn.checkpoint import save_checkpoint
    from search.space.card import ModelCard

    folder = tmp_path_factory.mktemp("models") / "lenet"
    card = ModelCard(architecture="lenet5", image_size=16, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3,
                     dataset="digits")
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint.pt", build_baseline("lenet5", 10, 16), card,
                    metrics={"test_accuracy": BASELINE_ACCURACY})
    export_model(ExportConfig(source=str(folder), fp16=True, eval_size=64), log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A torch-free ONNX classifier whose card (NASNet-A 1@48) records no params, MACs or accuracy."""
    return make_onnx_classifier(tmp_path_factory.mktemp("plain") / "model.onnx")


def initializer_elements(path: Path) -> int:
    """Elements of the float initializers, counted here independently of serve.graphfacts."""
    proto = onnx.load(str(path))
    return sum(numpy_helper.to_array(i).size for i in proto.graph.initializer
               if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16))


@pytest.fixture(scope="module")
def made(baseline, classifier, tmp_path_factory) -> table.TableResult:
    out = tmp_path_factory.mktemp("table") / "out"
    return table.make_table([str(baseline), "bundled", str(classifier)], FAST, out=out)


@pytest.mark.slow
def test_one_row_per_model_with_its_kind_name_and_precisions(made, baseline):
    document = made.document
    assert document["format"] == table.TABLE_FORMAT and document["precisions"] == ["fp32", "fp16"]
    rows = {m["kind"]: m for m in document["models"]}
    assert list(rows) == ["baseline", "searched", "nasnet-a"]  # in the order given
    assert rows["baseline"]["name"] == "LeNet-5" and rows["baseline"]["source"] == str(baseline)
    assert rows["searched"]["name"] == f"Searched cell {rows['searched']['scale']}"
    assert rows["nasnet-a"]["name"] == "NASNet-A 1@48"
    assert set(rows["baseline"]["precisions"]) == {"fp32", "fp16"}  # the export's sibling, from its report
    assert set(rows["searched"]["precisions"]) == {"fp32"}  # the bundled model ships fp32 alone
    assert document["timing"]["threads"] == 1 and document["timing"]["batch_size"] == 1


@pytest.mark.slow
def test_params_macs_and_depth_come_from_the_card_or_the_graph(made, baseline, classifier):
    rows = {m["kind"]: m for m in made.document["models"]}
    card = read_onnx_card(baseline / "model.onnx")
    lenet = rows["baseline"]
    assert (lenet["params"], lenet["macs"]) == (card.params, card.macs)
    assert lenet["params_source"] == lenet["macs_source"] == "model card"
    assert lenet["params_onnx"] == initializer_elements(baseline / "model.onnx")
    assert lenet["depth"] == 5  # LeNet-5: two convolutions and three fully connected layers
    plain = rows["nasnet-a"]
    assert plain["params"] == plain["params_onnx"] == initializer_elements(classifier)
    assert plain["macs"] == CLASSIFIER_MACS and plain["depth"] == 2
    assert plain["params_source"] == plain["macs_source"] == "ONNX graph"
    assert lenet["size_bytes"] == (baseline / "model.onnx").stat().st_size


@pytest.mark.slow
def test_accuracy_is_the_one_recorded_at_export_and_latency_is_measured_here(made, baseline):
    rows = {m["kind"]: m for m in made.document["models"]}
    report = json.loads((baseline / EXPORT_REPORT_NAME).read_text())
    fp32, fp16 = rows["baseline"]["precisions"]["fp32"], rows["baseline"]["precisions"]["fp16"]
    assert fp32["accuracy"] == BASELINE_ACCURACY and fp32["accuracy_source"] == "model card"
    assert fp16["accuracy"] == report["fp16"]["accuracy"] and fp16["accuracy_images"] == 64
    assert rows["nasnet-a"]["precisions"]["fp32"]["accuracy"] is None  # not recorded: shown as a dash
    for model in made.document["models"]:
        for entry in model["precisions"].values():
            assert 0 < entry["p50_ms"] <= entry["p90_ms"]
            assert entry["runs"] == FAST.iters * FAST.rounds and len(entry["round_medians_ms"]) == FAST.rounds


@pytest.mark.slow
def test_markdown_csv_json_and_plot_are_written(made):
    out = made.written[0].parent
    assert [p.name for p in made.written] == list(table_render.OUTPUT_NAMES)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    markdown = (out / table_render.MD_NAME).read_text()
    header = "| " + " | ".join(table_render.markdown_header(made.document)) + " |"
    assert header in markdown and markdown.count("\n| ") == 2 + 3  # header, rule, a row per model
    assert "| LeNet-5 | baseline |" in markdown and "(ONNX)" in markdown and "(n=64; fp32 " in markdown
    rows = list(csv.DictReader(io.StringIO((out / table_render.CSV_NAME).read_text())))
    assert [r["kind"] for r in rows] == ["baseline", "searched", "nasnet-a"]
    for column in ("model", "size_mb", "params", "macs", "depth", "fp32_accuracy", "fp32_p50_ms",
                   "fp32_p90_ms", "fp16_p50_ms", "fp16_p90_ms"):
        assert column in rows[0], column
    assert rows[2]["fp16_p50_ms"] == "" and rows[2]["fp32_accuracy"] == ""
    assert all(float(r["fp32_p50_ms"]) <= float(r["fp32_p90_ms"]) for r in rows)
    assert table.read_table(out / table_render.JSON_NAME) == json.loads(json.dumps(made.document))
    with Image.open(out / table_render.PLOT_NAME) as image:
        assert image.format == "PNG" and image.width > 400


def test_depth_is_the_longest_path_in_weighted_layers():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),  # long branch: three layers
             helper.make_node("MatMul", ["a", "w"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("MatMul", ["c", "w"], ["d"]),
             helper.make_node("Relu", ["x"], ["e"]),  # short branch: no layer
             helper.make_node("Add", ["d", "e"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[w])
    assert depth(graph) == 3 and count_weights(graph) == 16


def test_cli_prints_the_table_and_writes_it(classifier, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--table", str(classifier), "bundled", "--out", str(out), "--iters", "3", "--rounds", "1",
            "--warmup", "0"]
    assert bench.main(argv) == 0
    captured = capsys.readouterr()
    assert "| NASNet-A 1@48 | nasnet-a |" in captured.out and "| Searched cell" in captured.out
    assert f"wrote {out / table_render.MD_NAME}" in captured.out
    assert captured.err.count("\n") == 2 and "[2/2]" in captured.err  # one progress line per model
    assert sorted(p.name for p in out.iterdir()) == sorted(table_render.OUTPUT_NAMES)


def test_cli_bare_json_prints_only_the_document(classifier, capsys):
    assert bench.main(["--table", str(classifier), "--iters", "2", "--rounds", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["format"] == table.TABLE_FORMAT and len(document["models"]) == 1


@pytest.mark.slow
def test_precisions_pick_among_the_exports_and_a_sibling_alone_is_one_precision(baseline, classifier):
    result = table.make_table([str(baseline), str(classifier)],
                              table.TableSettings(precisions=("fp16",), warmup=0, iters=2, rounds=1))
    lenet, plain = result.document["models"]
    assert result.document["precisions"] == ["fp16"] and set(lenet["precisions"]) == {"fp16"}
    assert plain["precisions"] == {"fp16": {"missing": "not in its export"}}
    assert "not in its export" in table_render.to_markdown(result.document)
    alone = table.make_table([str(baseline / "model.fp16.onnx")], table.TableSettings(warmup=0, iters=2,
                                                                                       rounds=1))
    (row,) = alone.document["models"]
    assert set(row["precisions"]) == {"fp16"} and row["precisions"]["fp16"]["accuracy_images"] == 64


def _bad(tmp_path: Path, classifier: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not protobuf")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    return {
        "missing file": ([str(tmp_path / "gone.onnx")], "model file not found"),
        "not ONNX": ([str(text)], "is not an ONNX model"),
        "garbage ONNX": ([str(garbage)], "is not a readable ONNX file"),
        "folder without a model": ([str(empty)], "holds no model.onnx"),
        "--out is a file": ([str(classifier), "--out", str(a_file)], "is a file: name a folder"),
        "precision nobody has": ([str(classifier), "--precisions", "int8"], "no model holds int8"),
        "unknown precision": ([str(classifier), "--precisions", "fp8"], "unknown precision fp8"),
        "tensorrt backend": ([str(classifier), "--backend", "tensorrt"], "drop --backend tensorrt"),
    }


@pytest.mark.parametrize("case", ["missing file", "not ONNX", "garbage ONNX", "folder without a model",
                                  "--out is a file", "precision nobody has", "unknown precision",
                                  "tensorrt backend"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, classifier, tmp_path, capsys):
    args, message = _bad(tmp_path, classifier)[case]
    out = tmp_path / "out"
    argv = ["--table", *args] + ([] if "--out" in args else ["--out", str(out)]) + ["--iters", "1"]
    try:
        code = bench.main(argv)
    except SystemExit as stop:  # argparse refuses a bad flag value
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_no_models_and_table_flags_without_table_are_one_line(classifier, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--table", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert bench.main([str(classifier), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "--out belong to --table" in err[1] and not (tmp_path / "out").exists()
    with pytest.raises(table.ServeError, match="at least one model"):
        table.make_table([], FAST)


def test_a_broken_table_json_is_refused(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(table.ServeError, match="is not a model table"):
        table.read_table(path)
    path.write_text(json.dumps({"format": table.TABLE_FORMAT, "version": 1, "precisions": ["fp32"],
                                "models": [{"name": "x"}]}))
    with pytest.raises(table.ServeError, match="not a complete model table"):
        table.read_table(path)


# --- the app's Model table tab ----------------------------------------------------------------


@pytest.mark.slow
def test_app_tab_measures_the_known_models_and_loads_a_table_json(monkeypatch, baseline, classifier,
                                                                   tmp_path):
    from streamlit.testing.v1 import AppTest

    from app import models

    runs = tmp_path / "runs"
    (runs / "plain").mkdir(parents=True)
    (runs / "plain" / "model.onnx").write_bytes(classifier.read_bytes())
    shutil.copytree(baseline, runs / "lenet", ignore=shutil.ignore_patterns("*.pt"))  # fp32 + fp16: one row
    monkeypatch.setenv(models.RUNS_ENV, str(runs))
    monkeypatch.setattr("app.table_view.APP_SETTINGS", table.TableSettings(warmup=0, iters=3, rounds=1))
    demo = Path(__file__).resolve().parents[1] / "app" / "demo.py"
    at = AppTest.from_file(str(demo), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    tab = at.tabs[3]
    picked = tab.multiselect[0].value
    assert sorted(picked) == ["bundled CIFAR-10 model", "lenet/model.onnx", "plain/model.onnx"]
    assert not tab.dataframe  # nothing is timed before the button is pressed
    tab.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    frame = at.tabs[3].dataframe[0].value
    kinds = {"bundled CIFAR-10 model": "searched", "lenet/model.onnx": "baseline",
             "plain/model.onnx": "nasnet-a"}
    assert list(frame["kind"]) == [kinds[label] for label in picked]
    assert {"fp32 p50 ms", "fp16 p50 ms"} <= set(frame.columns)
    assert len(at.tabs[3].get("image")) == 1  # the plot
    at.run()  # a rerun shows the same table without timing again
    assert list(at.tabs[3].dataframe[0].value["fp32 p50 ms"]) == list(frame["fp32 p50 ms"])

    table.make_table([str(baseline)], table.TableSettings(warmup=0, iters=2, rounds=1), out=runs / "table",
                     plot=False)
    at.tabs[3].radio[0].set_value("Load a table.json").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.tabs[3].selectbox[0].value == runs / "table" / table_render.JSON_NAME
    loaded = at.tabs[3].dataframe[0].value
    assert list(loaded["model"]) == ["LeNet-5"] and "fp16 acc" in loaded.columns
    assert len(at.tabs[3].get("image")) == 1  # the plot, drawn from the JSON
    at.tabs[3].text_input[0].input(str(tmp_path / "none.json")).run()
    assert any("cannot read" in e.value or "not found" in e.value for e in at.tabs[3].error)
