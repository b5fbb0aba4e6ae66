"""Atomic, durable writes: a reader (or a run killed mid-write) sees the old content or the new, never half.

`write_atomic` publishes one file (`write_report` a bench's JSON report), `replace_folder` a whole folder written under a temp name. Both
fsync what they publish before the rename and the parent folder after it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` via a synced temp file in the same folder and a rename."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600; give what open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_report(path: Path | str, report: dict) -> None:
    """A bench's report as indented JSON at `path` (its folders made), published atomically; says where."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def replace_folder(tmp: Path, final: Path) -> None:
    """Publish the fully-written folder `tmp` (a sibling of `final`) as `final`, replacing any old one.

    Every file under `tmp` is fsynced first, so callers may write them plainly. An existing `final`
    is renamed aside and removed only once the new folder is in place; if the swap fails it is
    renamed back, so the previous copy is never lost. `tmp` itself stays the caller's to remove on
    failure. Leftover `.<final>.old-*` folders from killed runs are removed after a swap.
    """
    tmp, final = Path(tmp), Path(final)
    _fsync_tree(tmp)
    aside_prefix = f".{final.name}.old-"
    old = None
    if os.path.lexists(final):
        old = final.with_name(aside_prefix + secrets.token_hex(4))
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None and not os.path.lexists(final):
            os.rename(old, final)
        raise
    _fsync_dir(final.parent)
    for sibling in final.parent.iterdir():
        if sibling.name.startswith(aside_prefix):
            shutil.rmtree(sibling, ignore_errors=True)


def _default_file_mode() -> int:
    """0o666 less the process umask: the mode open() gives a new file."""
    # /proc avoids os.umask(0), which would briefly open every file another thread creates
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(parent))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse to fsync a folder; the rename is still atomic
    finally:
        os.close(fd)
