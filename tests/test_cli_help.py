"""Every flag of every CLI answers in --help: text, default and unit; one vocabulary."""

from __future__ import annotations

import argparse
import importlib

import pytest

from search.core import cli

CLIS = ("search.run", "search.train", "search.select", "search.score", "search.info", "search.scale",
        "export.onnx", "export.tensorrt", "serve.predict", "serve.bench", "serve.http")
UNIT_TYPES = {cli.latency_ms: "ms", cli.duration_s: "s", cli.size_bytes: "M", cli.count: "M"}


def _parser(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("module", CLIS)
def test_every_flag_has_help_with_its_default(module: str) -> None:
    parser = _parser(module)
    assert isinstance(parser, cli.Parser), f"{module} does not build its parser with search.core.cli"
    formatter = parser._get_formatter()
    missing, no_default = [], []
    for action in _flags(parser):
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(name)
            continue
        shown = formatter._get_help_string(action) % {"default": action.default}
        if action.option_strings and action.default not in (None, False) and "default" not in shown:
            no_default.append(name)
    assert not missing, f"{module}: flags without help: {missing}"
    assert not no_default, f"{module}: defaults not shown: {no_default}"


@pytest.mark.parametrize("module", CLIS)
def test_quantity_flags_name_their_unit(module: str) -> None:
    for action in _flags(_parser(module)):
        if action.type in UNIT_TYPES:
            assert any(ch.isdigit() for ch in action.help or ""), (
                f"{module} {action.option_strings}: give an example with its unit in the help")


@pytest.mark.parametrize("module", CLIS)
def test_json_flag_means_the_same_everywhere(module: str) -> None:
    actions = {a.dest: a for a in _flags(_parser(module))}
    assert "json" in actions, f"{module} has no --json [FILE]"
    action = actions["json"]
    assert action.nargs == "?" and action.const == cli.STDOUT and action.option_strings == ["--json"]


@pytest.mark.parametrize("module", CLIS)
def test_a_bad_flag_is_one_line_and_exit_2(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        _parser(module).parse_args(["--no-such-flag"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_units_are_read_the_same_by_every_flag_kind() -> None:
    assert cli.latency_ms("5ms") == 5.0 and cli.latency_ms("800us") == pytest.approx(0.8)
    assert cli.duration_s("1s") == 1.0 and cli.duration_s("30m") == 1800 and cli.duration_s("45") == 45
    assert cli.duration_s("500ms") == 0.5
    assert cli.size_bytes("10M") == 10 * 2**20 and cli.size_bytes("2G") == 2 * 2**30
    assert cli.count("600M") == 600_000_000
    assert cli.batch_sizes("1,8,32") == (1, 8, 32)
    for convert, bad in ((cli.latency_ms, "5"), (cli.duration_s, "5x"), (cli.size_bytes, "ten"),
                         (cli.count, "-3"), (cli.positive_int, "0"), (cli.batch_sizes, "1,0")):
        with pytest.raises(argparse.ArgumentTypeError):
            convert(bad)
