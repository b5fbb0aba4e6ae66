"""A zip of sounds uploaded to the training room, unpacked safely.

Every member is checked before anything is written: no absolute path, no `..`, no drive letter, no
link, no device, and a name that stays inside the target folder once resolved (zip-slip); at most
`max_files` files and `max_bytes` bytes in all, counted while unpacking rather than trusted from the
headers, and no member that inflates more than `max_ratio` times (zip bombs). Only audio files and
caption tables (the kinds `dataset from-folder` reads) are unpacked; anything else is skipped. A refusal
is one sentence (BadInput) and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipelines.audio import INPUT_FORMATS
from pipelines.errors import BadInput

CAPTION_FILES = (".txt", ".csv", ".jsonl")
CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    max_files: int = 5000
    max_bytes: int = 4 * 1024**3  # unpacked, in all
    max_ratio: float = 200.0  # unpacked / packed size of one member (audio compresses ~1.1-3x)


def extract_zip(archive: Path | str, out: Path | str, limits: ZipLimits = ZipLimits()) -> Path:
    """Unpack the audio and caption files of `archive` into the new folder `out`; returns `out`."""
    archive, out = Path(archive), Path(out)
    if out.exists():
        raise BadInput(f"A dataset named '{out.name}' is already unpacked; choose another name.")
    unreadable = f"'{archive.name}' is not a zip file that can be read; zip the folder again."
    try:
        with zipfile.ZipFile(archive) as z:
            members = _checked_members(z, archive.name, limits)
            if not members:
                raise BadInput(
                    f"The zip '{archive.name}' holds no {', '.join(INPUT_FORMATS)} files; zip a folder of sounds."
                )
            out.mkdir(parents=True)
            try:
                _unpack(z, members, out, archive.name, limits)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError):
        raise BadInput(unreadable) from None
    except RuntimeError as e:  # zipfile's way of saying a member is encrypted
        if "encrypted" not in str(e):
            raise
        raise BadInput(
            f"The zip '{archive.name}' is password-protected; zip the folder without a password."
        ) from None
    return out


def _checked_members(z: zipfile.ZipFile, name: str, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The members to unpack, after refusing the whole zip for any unsafe entry or declared size."""
    wanted = []
    for info in z.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 where the zipping tool recorded no file type
        escapes = (
            info.filename.startswith(("/", "\\"))
            or ".." in path.parts
            or (path.parts and ":" in path.parts[0])
            or "\x00" in info.filename
        )
        if escapes:
            raise BadInput(
                f"The zip '{name}' holds a path that leaves its folder ('{info.filename}'), so it was not "
                "unpacked; zip the folder of sounds itself."
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BadInput(
                f"The zip '{name}' holds a link or special file ('{info.filename}'), so it was not unpacked; "
                "zip plain files only."
            )
        if info.is_dir() or path.suffix.lower() not in (*INPUT_FORMATS, *CAPTION_FILES):
            continue
        if any(part.startswith(".") for part in path.parts):
            continue  # __MACOSX-style and hidden files are not sounds
        wanted.append(info)
    if len(wanted) > limits.max_files:
        raise BadInput(
            f"The zip '{name}' holds {len(wanted)} files, more than the {limits.max_files} the studio unpacks; "
            "split it into smaller zips."
        )
    declared = sum(i.file_size for i in wanted)
    if declared > limits.max_bytes:
        raise BadInput(
            f"The zip '{name}' unpacks to {_size(declared)}, more than the {_size(limits.max_bytes)} the studio "
            "allows; split it into smaller zips."
        )
    for info in wanted:
        _check_ratio(info, info.file_size, name, limits)
    return wanted


def _check_ratio(info: zipfile.ZipInfo, size: int, name: str, limits: ZipLimits) -> None:
    if size > 1_000_000 and size > limits.max_ratio * max(info.compress_size, 1):
        raise BadInput(
            f"The zip '{name}' holds '{info.filename}', which inflates {size / max(info.compress_size, 1):.0f} "
            "times (a zip bomb?), so it was not unpacked; zip the sounds as they are."
        )


def _unpack(
    z: zipfile.ZipFile, members: list[zipfile.ZipInfo], out: Path, name: str, limits: ZipLimits
) -> None:
    """Copy each member's bytes, counting them: headers can lie about the sizes."""
    root = out.resolve()
    total = 0
    for info in members:
        target = (root / info.filename.replace("\\", "/")).resolve()
        if not target.is_relative_to(root):  # the name checks above make this unreachable; keep it anyway
            raise BadInput(f"The zip '{name}' holds a path that leaves its folder ('{info.filename}').")
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        if target.exists():
            raise BadInput(
                f"The zip '{name}' holds '{info.filename}' twice, so it was not unpacked; zip the folder again."
            )
        with z.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                total += len(chunk)
                if total > limits.max_bytes:
                    raise BadInput(
                        f"The zip '{name}' unpacks to more than the {_size(limits.max_bytes)} the studio allows; "
                        "split it into smaller zips."
                    )
                _check_ratio(info, written, name, limits)
                dst.write(chunk)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
