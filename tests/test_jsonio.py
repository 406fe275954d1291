"""The one JSON reader: every kind of bad JSON is one line, in the library and at every CLI."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from search.core.errors import NasdeployError
from search.core.jsonio import (
    MAX_DEPTH,
    JsonDepthError,
    JsonEncodingError,
    JsonError,
    JsonSizeError,
    JsonSyntaxError,
    JsonTypeError,
    JsonValueError,
    loads_json,
    read_json,
)

DEEP = "[" * 100_000 + "]" * 100_000

BAD_TEXTS = {
    "syntax": ('{"a": [1, 2', {}, JsonSyntaxError,
               "is not valid JSON: Expecting ',' delimiter (line 1, column 12)"),
    "syntax on line 3": ('{\n "a": 1,\n "b": }', {}, JsonSyntaxError, "(line 3, column 7)"),
    "empty": ("  \n", {}, JsonSyntaxError, "is not valid JSON: it is empty"),
    "deep": (DEEP, {}, JsonDepthError, f"nested deeper than {MAX_DEPTH} levels (line 1, column 65)"),
    "deep objects": ('{"a":' * 200 + "1" + "}" * 200, {}, JsonDepthError, "nested deeper than"),
    "deeper than the caller allows": ("[[[1]]]", {"max_depth": 2}, JsonDepthError, "deeper than 2 levels"),
    "too large": ("[" + "1," * 600 + "1]", {"max_bytes": 1000}, JsonSizeError, "too large"),
    "NaN": ('{"a": NaN}', {}, JsonValueError, "contains NaN"),
    "Infinity": ("[-Infinity]", {}, JsonValueError, "contains -Infinity"),
    "float overflow": ("[1e999]", {}, JsonValueError, "1e999 (out of range for a float)"),
    "huge integer": ("9" * 5000, {}, JsonValueError, "unreadable value"),
    "list for object": ("[1, 2]", {"expect": dict}, JsonTypeError,
                        "must hold a JSON object, not a JSON array"),
    "string for list": ('"x"', {"expect": list}, JsonTypeError, "must hold a JSON array, not a JSON string"),
    "not UTF-8": (b'{"a": "\xff"}', {}, JsonEncodingError, "invalid UTF-8 byte 0xff at offset 7"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_each_failure_kind_is_one_line_with_its_own_exception(case):
    text, kwargs, kind, fragment = BAD_TEXTS[case]
    with pytest.raises(kind) as info:
        loads_json(text, "the thing", **kwargs)
    message = str(info.value)
    assert message.startswith("the thing ") and fragment in message, message
    assert "\n" not in message and len(message) < 300
    assert isinstance(info.value, NasdeployError) and isinstance(info.value, ValueError)
    assert info.value.what == "the thing" and info.value.reason in message


def test_the_depth_limit_is_exact_and_ignores_brackets_inside_strings():
    limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads_json(limit, "x") == json.loads(limit)
    with pytest.raises(JsonDepthError):
        loads_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "x")
    text = json.dumps({"s": "[{" * 500 + '\\"' + "[" * 500, "t": [[1]]})
    assert loads_json(text, "x", expect=dict)["t"] == [[1]]


def test_good_json_and_the_allowances():
    text = '{"a": [1, 2.5, "x", null, true]}'
    assert loads_json(text, "x", expect=dict) == {"a": [1, 2.5, "x", None, True]}
    assert loads_json(b'[1]', "x", expect=(list, dict)) == [1]
    nan = loads_json('{"a": NaN, "b": 1e999}', "x", allow_nan=True)
    assert nan["a"] != nan["a"] and nan["b"] == float("inf")


def test_read_json_names_the_file_and_leaves_a_missing_one_to_the_caller(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"k": 1}).encode())  # a BOM, as some editors write
    assert read_json(path, expect=dict) == {"k": 1}
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(JsonEncodingError, match=f"^{re.escape(str(path))} is not a text JSON file"):
        read_json(path)
    path.write_text("[" + "0," * 10_000 + "0]")
    with pytest.raises(JsonSizeError, match=r"is too large \(20003 bytes; the limit is 1000 bytes\)"):
        read_json(path, max_bytes=1000)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError):
        read_json(tmp_path)


def test_errors_survive_pickling():
    with pytest.raises(JsonError) as info:
        loads_json(DEEP, "x")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is JsonDepthError and str(again) == str(info.value)


# ---- the readers that use it, in process ----------------------------------------------

BAD_FILES = {
    "deep": (DEEP, "nested deeper than"),
    "truncated": ('{"version": 1, "normal": [{"inputs": [0, 1], ', "is not valid JSON"),
    "list": ("[1, 2, 3]", "JSON object"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00garbage", "not a text JSON file"),
}


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _one_line(content: str | bytes) -> bytes:
    """``content`` as one complete JSONL line (newline-terminated, none inside)."""
    raw = content if isinstance(content, bytes) else content.encode()
    return raw.replace(b"\n", b" ") + b"\n"


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_engine_sidecar_is_read_through_it(tmp_path, case):
    from serve.metadata import read_sidecar_card

    content, fragment = BAD_FILES[case]
    sidecar = _write(tmp_path / "model.engine.json", content)
    with pytest.raises(NasdeployError) as info:
        read_sidecar_card(sidecar)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_complete_bad_trials_line_is_corrupt(tmp_path, case):
    from search.trials.history import read_history

    content, _ = BAD_FILES[case]
    path = tmp_path / "trials.jsonl"
    _write(path, _one_line(content))
    with pytest.raises(NasdeployError, match="line 1 is corrupt") as info:
        read_history(path)
    assert "\n" not in str(info.value)


def test_bad_latency_cache_lines_are_skipped_not_fatal(tmp_path):
    from search.evaluation.latency import LatencyMeter, LatencySettings
    from search.space.genotype import REFERENCE_GENOTYPES

    settings = LatencySettings(scale="1@48", image_size=16, warmup=0, repeats=1, threads=1)
    cache = tmp_path / "latency_cache.jsonl"
    first = LatencyMeter(settings, cache)(REFERENCE_GENOTYPES["lite"])
    entry = json.loads(cache.read_text())
    entry["cost"]["latency_p90_ms"] = float("nan")  # the meter's default when it has no p90
    cache.write_text(json.dumps(entry) + "\n")
    with open(cache, "ab") as handle:
        handle.write(_one_line(DEEP) + _one_line(BAD_FILES["binary"][0]) + b"[1, 2]\n")
    resumed = LatencyMeter(settings, cache)
    assert len(resumed) == 1 and resumed(REFERENCE_GENOTYPES["lite"]).macs == first.macs
    assert resumed.measurements == 0


def test_onnx_metadata_values_are_read_through_it():
    from serve.metadata import from_props

    props = {"nasdeploy.image_size": "16", "nasdeploy.mean": "[0.5, 0.5, 0.5]",
             "nasdeploy.std": "[0.5, 0.5, 0.5]", "nasdeploy.class_names": DEEP}
    with pytest.raises(NasdeployError) as info:
        from_props(props)
    message = str(info.value)
    assert message.startswith("metadata field 'nasdeploy.class_names'") and "nested deeper than" in message


def test_app_explorer_treats_a_bad_file_as_absent(tmp_path):
    from app.explorer import read_json as explorer_read

    assert explorer_read(_write(tmp_path / "pareto.json", DEEP)) is None
    assert explorer_read(_write(tmp_path / "config.json", '{"latency_budget": "5ms"}')) == {
        "latency_budget": "5ms"}


@pytest.mark.parametrize("module, extra", [
    ("search.info", []),
    ("export.onnx", ["--out", "{tmp}/out"]),
    ("search.train", ["--epochs", "1", "--dataset", "digits", "--out", "{tmp}/out"]),
])
def test_cli_main_reports_a_deep_genotype_file_in_one_line(tmp_path, capsys, module, extra):
    import importlib

    main = importlib.import_module(module).main
    path = _write(tmp_path / "g.json", DEEP)
    assert main([str(path), *(a.format(tmp=tmp_path) for a in extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path} is nested deeper than"), err


# ---- every CLI, in a subprocess ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _config_json() -> str:
    from search.experiment.session import SearchConfig

    config = SearchConfig(latency_budget="50ms", dataset="digits", child_scale="1@48", child_train_size=50,
                          target_variant="1@48", blocks=2, trials=1)
    return json.dumps(config.to_dict())


def _genotype_cli(module: str, *extra: str):
    def setup(tmp: Path, content: str | bytes) -> list[str]:
        return [module, str(_write(tmp / "g.json", content)), *(a.format(tmp=tmp) for a in extra)]
    return setup


def _resume_config(tmp: Path, content: str | bytes) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    _write(run / "config.json", content)
    return ["search.run", "--resume", str(run), "--no-progress"]


def _resume_trials(tmp: Path, content: str | bytes) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    _write(run / "config.json", _config_json())
    _write(run / "trials.jsonl", _one_line(content))
    return ["search.run", "--resume", str(run), "--no-progress"]


def _predict_class_names(tmp: Path, content: str | bytes) -> list[str]:
    from PIL import Image
    from serve_fixtures import make_onnx_classifier

    path = make_onnx_classifier(tmp / "model.onnx")
    proto = onnx.load(str(path))
    text = content.decode("latin-1") if isinstance(content, bytes) else content
    for prop in proto.metadata_props:
        if prop.key == "nasdeploy.class_names":
            prop.value = text
    onnx.save(proto, str(path))
    Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp / "img.png")
    return ["serve.predict", str(path), str(tmp / "img.png")]


# each CLI: how to set it up, and the name its error line must carry
CLIS = {
    "search.info": _genotype_cli("search.info"),
    "export.onnx": _genotype_cli("export.onnx", "--out", "{tmp}/out"),
    "search.train": _genotype_cli("search.train", "--epochs", "1", "--dataset", "digits",
                                  "--out", "{tmp}/out"),
    "search.run config.json": _resume_config,
    "search.run trials.jsonl": _resume_trials,
    "serve.predict class_names": _predict_class_names,
}
NAMES = {"search.run config.json": "config.json", "search.run trials.jsonl": "trials.jsonl: line 1",
         "serve.predict class_names": "nasdeploy.class_names"}
REASONS = {"deep": ("nested deeper than 64 levels",), "truncated": ("not valid JSON",),
           "list": ("JSON object",), "binary": ("invalid UTF-8 byte 0x89", "not valid JSON")}
# a JSON list is a valid value for class_names, so that case does not apply there
CASES = [(cli, case) for cli in CLIS for case in sorted(BAD_FILES)
         if not (cli.startswith("serve.predict") and case == "list")]


@pytest.mark.slow
@pytest.mark.parametrize("cli, case", CASES)
def test_every_cli_reports_bad_json_in_one_line(tmp_path, cli, case):
    content, _ = BAD_FILES[case]
    argv = CLIS[cli](tmp_path, content)
    result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert NAMES.get(cli, "g.json") in lines[0], lines[0]
    assert any(reason in lines[0] for reason in REASONS[case]), lines[0]
