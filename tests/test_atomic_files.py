"""Atomic writes: a failure leaves the old content and no temp files; permissions follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

from pipelines import atomic_files
from pipelines.atomic_files import replace_folder, write_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the old one afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def test_write_atomic_writes_bytes_and_text(tmp_path):
    write_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_atomic(str(tmp_path / "b.txt"), "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    write_atomic(tmp_path / "b.txt", "again")
    assert (tmp_path / "b.txt").read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_atomic_gives_the_umask_mode_not_0600(tmp_path, umask, mask, mode):
    umask(mask)
    write_atomic(tmp_path / "f.json", "{}")
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_write_atomic_failure_keeps_the_old_file_and_leaves_no_partial(tmp_path, monkeypatch, step):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_files.os, step, broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new contents")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def make_folder(path, **files: str):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_replace_folder_publishes_and_removes_the_old_copy(tmp_path):
    final = tmp_path / "bundle"
    replace_folder(make_folder(tmp_path / ".bundle.tmp", a="1"), final)
    assert (final / "a").read_text() == "1"
    (tmp_path / ".bundle.old-stale").mkdir()  # left by a run killed in the middle of a swap
    replace_folder(make_folder(tmp_path / ".bundle.tmp", b="2"), final)
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_replace_folder_keeps_the_old_copy_when_the_swap_fails(tmp_path, monkeypatch):
    final = make_folder(tmp_path / "bundle", a="old")
    tmp = make_folder(tmp_path / ".bundle.tmp", a="new")
    real_rename = os.rename

    def rename(src, dst):
        if os.fspath(src) == os.fspath(tmp):
            raise OSError("no space left")
        real_rename(src, dst)

    monkeypatch.setattr(atomic_files.os, "rename", rename)
    with pytest.raises(OSError, match="no space left"):
        replace_folder(tmp, final)
    assert (final / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.tmp", "bundle"]  # tmp is the caller's
