"""Atomic writes leave either the old file or the new one, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from search.core.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_failure_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_unique_path_appends_a_counter(tmp_path):
    from search.core.atomic import unique_path

    assert unique_path(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "run").mkdir()
    (tmp_path / "run-2").mkdir()
    assert unique_path(tmp_path / "run") == tmp_path / "run-3"


def test_append_line_closes_a_torn_fragment_first(tmp_path):
    from search.core.atomic import append_line

    path = tmp_path / "log.jsonl"
    append_line(path, '{"a": 1}')
    with open(path, "ab") as handle:
        handle.write(b'{"b": 2, "cut sho')  # a writer killed mid-line
    append_line(path, '{"c": 3}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": 2, "cut sho', '{"c": 3}']


def test_the_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path) -> None:
    import os
    import subprocess
    import sys

    import pytest

    from search.core.atomic import LockHeld, acquire_lock, is_locked

    path = tmp_path / ".lock"
    assert not is_locked(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from search.core.atomic import acquire_lock; "
         f"h = acquire_lock({str(path)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(path)
        with pytest.raises(LockHeld) as held:
            acquire_lock(path)
        assert held.value.owner == str(holder.pid)
    finally:
        holder.kill()  # kill -9: the kernel drops the lock
        holder.wait(timeout=10)
    assert not is_locked(path)
    with acquire_lock(path):
        assert path.read_text().strip() == str(os.getpid())
