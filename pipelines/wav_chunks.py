"""RIFF chunks of WAV files that libsndfile cannot give us from Python: LIST/INFO text and `smpl` loops.

libsndfile writes a WAV's audio (fmt, data, ...); `add_chunks` appends chunks to those bytes and fixes
the RIFF size. We write the INFO text ourselves because libsndfile reads back no INFO string longer than
about 2 kB (a settings record can be longer), and python-soundfile has no call for the `smpl` chunk.

    wav = add_chunks(wav, [info_chunk({"ICMT": record_json}), smpl_chunk(0, n - 1, 44100)])
    chunks = read_chunks(path, {b"LIST", b"smpl"})
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

SMPL_FORWARD_LOOP = 0
_SMPL_HEADER = struct.Struct("<9I")  # manufacturer .. sampler data: nine little-endian u32
_SMPL_LOOP = struct.Struct("<6I")  # cue id, type, start, end (inclusive), fraction, play count


def add_chunks(wav: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """`wav` (a whole RIFF/WAVE file) with `chunks` (id, payload) appended after its own; chunks it
    already holds with those ids (a LIST of the same list type, for LIST) are dropped first."""
    kept = [
        (cid, payload)
        for cid, payload in _chunks(wav)
        if not any(_same_kind(cid, payload, new_id, new) for new_id, new in chunks)
    ]
    body = b"".join(_chunk_bytes(cid, payload) for cid, payload in kept + chunks)
    assert len(body) + 4 < 2**32, "a RIFF file holds at most 4 GiB"
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body


def info_chunk(fields: dict[str, str]) -> tuple[bytes, bytes]:
    """A LIST/INFO chunk from {"INAM": title, "ICMT": comment, "ISFT": software, ...} (text as UTF-8)."""
    parts = [b"INFO"]
    for key, text in fields.items():
        assert len(key) == 4 and key.isascii(), key
        parts.append(_chunk_bytes(key.encode("ascii"), text.encode("utf-8") + b"\0"))
    return b"LIST", b"".join(parts)


def smpl_chunk(start: int, end: int, sample_rate: int) -> tuple[bytes, bytes]:
    """A `smpl` chunk holding one forward loop from sample `start` to `end` (inclusive), played forever."""
    assert 0 <= start <= end < 2**32
    period_ns = round(1e9 / sample_rate)
    header = _SMPL_HEADER.pack(0, 0, period_ns, 60, 0, 0, 0, 1, 0)  # unity note middle C, one loop
    return b"smpl", header + _SMPL_LOOP.pack(0, SMPL_FORWARD_LOOP, start, end, 0, 0)


def read_chunks(path: str | os.PathLike, ids: set[bytes]) -> list[tuple[bytes, bytes]]:
    """The (id, payload) of every chunk named in `ids` in the WAV file at `path`, in file order, reading
    only those; [] when the file is not a RIFF/WAVE file."""
    found = []
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return []
        while True:
            header = f.read(8)
            if len(header) < 8:
                return found
            cid, size = header[:4], struct.unpack("<I", header[4:])[0]
            if cid in ids:
                payload = f.read(size)
                if len(payload) < size:  # cut short: what is there is not a whole chunk
                    return found
                found.append((cid, payload))
                f.seek(size & 1, os.SEEK_CUR)
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """The LIST/INFO text fields of the WAV file at `path` ({} when it has none)."""
    fields: dict[str, str] = {}
    for _, payload in read_chunks(Path(path), {b"LIST"}):
        if payload[:4] != b"INFO":
            continue
        for key, value in _chunks(payload, start=4):
            fields[key.decode("latin-1")] = value.split(b"\0", 1)[0].decode("utf-8", "replace")
    return fields


def read_loops(path: str | os.PathLike) -> list[tuple[int, int]]:
    """The (start, end) sample of every loop in the WAV file's `smpl` chunk (end inclusive)."""
    loops = []
    for _, payload in read_chunks(Path(path), {b"smpl"}):
        if len(payload) < _SMPL_HEADER.size:
            continue
        count = _SMPL_HEADER.unpack_from(payload)[7]
        for i in range(count):
            offset = _SMPL_HEADER.size + i * _SMPL_LOOP.size
            if offset + _SMPL_LOOP.size > len(payload):
                break
            _, _, start, end, _, _ = _SMPL_LOOP.unpack_from(payload, offset)
            loops.append((start, end))
    return loops


def _chunks(data: bytes, start: int = 12):
    """(id, payload) of the chunks in `data` from `start` (12: after a RIFF/WAVE header)."""
    assert start != 12 or (data[:4] == b"RIFF" and data[8:12] == b"WAVE"), "not a RIFF/WAVE file"
    pos = start
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        yield cid, data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)


def _chunk_bytes(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")


def _same_kind(cid: bytes, payload: bytes, new_id: bytes, new: bytes) -> bool:
    return cid == new_id and (cid != b"LIST" or payload[:4] == new[:4])
