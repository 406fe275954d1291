"""Run-directory file names are declared once, in ``search.core.rundir``."""

from __future__ import annotations

import ast
from pathlib import Path

from search.core import rundir

ROOT = Path(__file__).resolve().parents[1]
NAMES = {value: key for key, value in vars(rundir).items() if key.endswith("_NAME")}
SCRATCH = {("search/evaluation/latency.py", "model.onnx")}
"""A temporary file that only happens to share a run-directory name."""


def test_names_are_distinct():
    constants = [key for key in vars(rundir) if key.endswith("_NAME")]
    assert len(NAMES) == len(constants) >= 15
    assert set(rundir.REPORT_FILES) <= set(NAMES)


def test_derived_paths():
    model = Path("runs/x") / rundir.MODEL_ONNX_NAME
    assert rundir.variant_path(model, "int8") == Path("runs/x/model.int8.onnx")
    assert rundir.engine_path(rundir.variant_path(model, "fp16")) == Path("runs/x/model.fp16.engine")
    assert rundir.sidecar_path(rundir.engine_path(model)) == Path("runs/x/model.engine.json")
    assert rundir.engine_path(model).suffix in rundir.ENGINE_SUFFIXES


def _string_literals(tree: ast.AST) -> set[str]:
    """String constants that are not docstrings (f-string parts included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_stage_spells_a_run_directory_name():
    found = []
    for package in ("search", "export", "serve", "app"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "search/core/rundir.py":
                continue
            for text in _string_literals(ast.parse(path.read_text(), relative)):
                if text in NAMES and (relative, text) not in SCRATCH:
                    found.append(f"{relative}: {text!r} (use search.core.rundir.{NAMES[text]})")
    assert not found, "\n".join(found)
