"""README, docs, --help and the code agree on every default they state."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIMPLE = re.compile(r"^-?[\w.@-]+$")


def _help_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    formatter = parser._get_formatter()
    texts = {}
    for action in parser._actions:
        text = formatter._get_help_string(action) % {"default": action.default} if action.help else ""
        for flag in action.option_strings:
            texts[flag] = " ".join(text.split())
    return texts


def _table_defaults(markdown: str, heading: str) -> dict[str, str]:
    """``| `--flag X` | default | meaning |`` rows of the table under ``heading``."""
    section = markdown.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            rows[cells[0].strip("`").split()[0]] = cells[1].strip("`")
    return rows


def _search_run_rows() -> dict[str, str]:
    return _table_defaults((ROOT / "docs" / "search.md").read_text(), "## Flags")


def test_docs_search_flags_table_matches_search_run_help() -> None:
    from search.run import build_parser

    helps = _help_of(build_parser())
    rows = _search_run_rows()
    assert len(rows) >= 20, "the flags table of docs/search.md was not found"
    checked = 0
    for flag, default in rows.items():
        assert flag in helps, f"docs/search.md documents {flag}, which search.run does not have"
        if SIMPLE.match(default) and default not in ("none", "off", "required"):
            stated = re.search(rf"default: {re.escape(default)}[) ]", helps[flag])
            assert stated, f"{flag}: docs say {default}, --help says {helps[flag]}"
            checked += 1
    assert checked >= 8
    undocumented = {f for f in helps if f.startswith("--")} - set(rows) - {"--help", "--flops-budget"}
    assert not undocumented, f"search.run flags missing from docs/search.md: {sorted(undocumented)}"


def test_search_run_help_states_the_config_defaults() -> None:
    from search.experiment.session import DEFAULT_TRIALS, SearchConfig
    from search.run import build_parser

    helps = _help_of(build_parser())
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    for name in ("strategy", "dataset", "target_variant", "latency_device", "device", "blocks", "seed",
                 "rl_batch"):
        assert f"(default: {defaults[name]})" in helps["--" + name.replace("_", "-")], name
    assert f"(default: {DEFAULT_TRIALS} " in helps["--trials"]
    assert str(float(helps["--latency-weight"].split("default: ")[1].rstrip(")"))) == "-0.07"


@pytest.mark.parametrize("doc", ["docs/training.md"])
def test_documented_train_defaults_are_the_parser_defaults(doc: str) -> None:
    from search.train import build_parser

    parser = build_parser()
    defaults = {flag: action.default for action in parser._actions for flag in action.option_strings}
    text = (ROOT / doc).read_text().split("- Defaults", 1)[1].split("\n- ", 1)[0]
    pairs = [(f, v) for f, v in re.findall(r"`(--[\w-]+) ([^`\s]+)`", text) if not v.isupper()]
    assert len(pairs) >= 10
    for flag, value in pairs:
        default = defaults[flag]
        if isinstance(default, float | int) and not isinstance(default, bool):
            assert float(value) == pytest.approx(float(default)), f"{doc}: {flag} {value} vs {default}"
        elif flag not in ("--variant", "--dataset"):  # recorded by the run first, then these
            assert str(default) == value, f"{doc}: {flag} {value} vs {default}"
    from search.train import DEFAULT_DATASET, DEFAULT_VARIANT

    assert ("--variant", DEFAULT_VARIANT) in pairs and ("--dataset", DEFAULT_DATASET) in pairs


def test_readme_search_flags_agree_with_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = _search_run_rows()
    for flag, default in re.findall(r"\| `(--[\w-]+)[^`]*` \| `?([^`|]+?)`? \|", readme):
        if flag in rows and SIMPLE.match(default):
            assert rows[flag] == default, f"README says {flag} defaults to {default}, docs say {rows[flag]}"


def test_fidelity_benchmark_proxy_row_is_the_search_default() -> None:
    """The fidelity table's ``proxy`` row measures what ``search.run --dataset cifar10`` uses."""
    import importlib.util

    from search.experiment.session import CHILD_DEFAULTS

    spec = importlib.util.spec_from_file_location("evaluator_fidelity",
                                                  ROOT / "benchmarks" / "evaluator_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = module.EVALUATORS["proxy"]
    for dataset in ("cifar10", "cifar100"):
        default = CHILD_DEFAULTS[dataset]
        assert (row["scale"], row["epochs"], row["train_size"], row["image_size"]) == (
            default.scale, default.epochs, default.train_size, default.image_size), dataset
