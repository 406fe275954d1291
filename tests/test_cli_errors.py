"""File-system failures reach command-line users as one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.core.errors import NasdeployError, format_user_error


def test_format_user_error():
    assert format_user_error(NasdeployError("bad\n  input")) == "bad input"
    missing = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert format_user_error(missing) == "No such file or directory: /x/y"


@pytest.mark.parametrize(
    "command",
    [
        ["search.info", "nasnet-a", "--variant", "1@48", "--draw", "{blocker}/sub/cells.png"],
        ["export.onnx", "lite", "--variant", "1@48", "--image-size", "8", "--out", "{blocker}/sub"],
    ],
)
def test_unwritable_output_is_one_line(tmp_path, command):
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a directory is expected")
    argv = [arg.format(blocker=blocker) for arg in command]
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
