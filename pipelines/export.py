"""Exporting a finished sound: one set of options for every verb, and the settings that made the sound
embedded in the file it is written to.

    from pipelines.export import ExportOptions, export_audio, read_embedded
    options = ExportOptions(sample_rate=48000, bits=24, channels=1, trim_db=-60, fade_out_ms=200, lufs=-14)
    export_audio(audio, "take.flac", options, metadata=record)   # record: what the sidecar OUT.json holds
    read_embedded("take.flac")                                   # -> that record (None for other files)

The chain, in this order: channels (mono is the mean of left and right), sample rate (soxr; a loop is
resampled as a cycle, so its seam survives), silence trim (from the first to the last sample at or above
`trim_db` dBFS), raised-cosine fades, loudness, peak safety, then the bit depth. Loudness is BS.1770
integrated loudness (pipelines.audio.loudness_lufs). Nothing here limits or clips: a loudness target
that would push the sample peak above PEAK_CEILING_DB (-1 dBFS) is not reached; the gain stops where
the peak touches the ceiling and a warning says the loudness the file got. MP3 and Ogg encoders take
some loudness away from bright sound, so there the loudness is measured again on the decoded file and
the gain corrected once. Without a target, a peak above full scale (resampling can make one) is scaled
down to the ceiling, as the generator does.

Metadata: the record as ASCII JSON in the file's comment (WAV: a LIST/INFO ICMT chunk written by
pipelines/wav_chunks.py; FLAC and Ogg: the Vorbis comment COMMENT; MP3: an ID3v2 COMM frame), the
prompt as its title, "soundloom" as its software. A loop written as WAV also gets a `smpl` chunk with
one forward loop over the whole take, which samplers and DAWs read as its loop points.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf

from pipelines.atomic_files import write_atomic
from pipelines.audio import (
    OUTPUT_FORMATS,
    SILENCE_LUFS,
    Audio,
    check_output_path,
    encode_audio,
    loudness_lufs,
    peak_db,
    peak_safe,
    resample,
    to_channels,
    validate,
)
from pipelines.errors import BadInput
from pipelines.wav_chunks import add_chunks, info_chunk, read_info, smpl_chunk

EXPORT_RATES = (44100, 48000)
EXPORT_BITS = (16, 24)
DEFAULT_TRIM_DB = -60.0
TRIM_DB_RANGE = (-120.0, -10.0)
MAX_FADE_MS = 60000.0
LUFS_RANGE = (-60.0, 0.0)
PEAK_CEILING_DB = -1.0
_NO_BIT_DEPTH = {".mp3": "MP3", ".ogg": "Ogg Vorbis"}
_LOSSY = (".mp3", ".ogg")


@dataclass(frozen=True)
class ExportOptions:
    """How a sound is written; every field's default leaves the sound as it was made (44.1 kHz stereo,
    16-bit for .wav and .flac)."""

    sample_rate: int | None = None  # 44100 or 48000; None: the sound's own
    bits: int | None = None  # 16 or 24 for .wav and .flac; None: 16. MP3 and Ogg have no bit depth
    channels: int | None = None  # 1 (mono) or 2 (stereo); None: the sound's own
    trim_db: float | None = None  # trim leading and trailing sound quieter than this (dBFS); None: no trim
    fade_in_ms: float = 0.0
    fade_out_ms: float = 0.0
    lufs: float | None = None  # integrated loudness target (BS.1770); None: the level as made

    def __post_init__(self) -> None:
        _check_choice(self.sample_rate, EXPORT_RATES, "The export sample rate", " Hz")
        _check_choice(self.bits, EXPORT_BITS, "The bit depth", " bits")
        _check_choice(self.channels, (1, 2), "The channel count (1 mono, 2 stereo)", "")
        if self.trim_db is not None:
            _check_range(self.trim_db, TRIM_DB_RANGE, "The silence-trim threshold", "dBFS")
        _check_range(self.fade_in_ms, (0.0, MAX_FADE_MS), "The fade-in", "ms")
        _check_range(self.fade_out_ms, (0.0, MAX_FADE_MS), "The fade-out", "ms")
        if self.lufs is not None:
            _check_range(self.lufs, LUFS_RANGE, "The loudness target", "LUFS")

    @classmethod
    def from_record(cls, record: object, what: str = "The stored export options") -> ExportOptions:
        """The options stored under a settings record's "export" key; BadInput when they are malformed."""
        names = {f.name for f in fields(cls)}
        if not isinstance(record, dict) or not set(record) <= names:
            raise BadInput(f"{what} are not soundloom export options; generate the sound again.")
        return cls(**record)

    def to_record(self) -> dict:
        return asdict(self)

    def check(self, path: str | os.PathLike, *, loop: bool = False) -> None:
        """BadInput when these options cannot make the file `path` (or, with `loop`, would break a loop)."""
        suffix = Path(path).suffix.lower()
        if self.bits is not None and suffix in _NO_BIT_DEPTH:
            raise BadInput(
                f"{_NO_BIT_DEPTH[suffix]} files have no bit depth; leave the bit depth out or write "
                ".wav or .flac."
            )
        if loop and (self.trim_db is not None or self.fade_in_ms or self.fade_out_ms):
            raise BadInput(
                "Trimming or fading a loop would change its length on the beat grid and break its seam; "
                "leave trim and fades off for loops."
            )


def export_audio(
    audio: Audio,
    path: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    metadata: dict | None = None,
    loop: bool = False,
) -> Path:
    """Write `audio` to `path` (.wav .flac .mp3 .ogg) as `options` say, with `metadata` (a JSON-able
    settings record) embedded, atomically; `loop` marks a seamless loop (smpl chunk in WAV)."""
    options = options or ExportOptions()
    path = check_output_path(path)
    options.check(path, loop=loop)
    out = prepare(audio, options, loop=loop)
    suffix = path.suffix.lower()
    comment = json.dumps(metadata, ensure_ascii=True, separators=(",", ":")) if metadata else None
    title = metadata.get("prompt") if metadata else None
    title = title if isinstance(title, str) else None
    bits = options.bits or 16
    if OUTPUT_FORMATS[suffix][0] == "WAV":
        fields_ = {"ISFT": "soundloom"}
        if title:
            fields_["INAM"] = _ascii(title)  # INFO text has no declared encoding: readers assume Latin-1
        if comment:
            fields_["ICMT"] = comment
        chunks = [info_chunk(fields_)]

        def encode(sound: Audio) -> bytes:
            loop_points = [smpl_chunk(0, sound.frames - 1, sound.sample_rate)] if loop else []
            return add_chunks(encode_audio(sound, suffix, bit_depth=bits), chunks + loop_points)

    else:
        tags = {"software": "soundloom"}
        if title:  # LAME writes ID3 text as Latin-1; Vorbis comments are UTF-8
            tags["title"] = _ascii(title) if suffix == ".mp3" else title
        if comment:
            tags["comment"] = comment

        def encode(sound: Audio) -> bytes:
            return encode_audio(sound, suffix, bit_depth=bits, tags=tags)

    data = encode(out)
    if options.lufs is not None and suffix in _LOSSY:
        # the encoder's low-pass takes some loudness away from bright sound (0.5-1 LU for noise at MP3's
        # default rate): measured again on the decoded file and corrected once, within the peak ceiling
        heard = loudness_lufs(
            Audio(sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0].T, out.sample_rate)
        )
        gain_db = min(options.lufs - heard, PEAK_CEILING_DB - peak_db(out))
        if heard > SILENCE_LUFS and abs(gain_db) > 0.05:
            out = Audio((out.samples * 10.0 ** (gain_db / 20.0)).astype(np.float32), out.sample_rate)
            data = encode(out)
    write_atomic(path, data)
    return path


def prepare(audio: Audio, options: ExportOptions, *, loop: bool = False) -> Audio:
    """`audio` through the export chain (channels, rate, trim, fades, loudness, peak safety), as floats."""
    validate(audio)
    if options.channels is not None:
        audio = to_channels(audio, options.channels)
    if options.sample_rate is not None and options.sample_rate != audio.sample_rate:
        audio = resample_cycle(audio, options.sample_rate) if loop else resample(audio, options.sample_rate)
    if options.trim_db is not None:
        audio = trim_silence(audio, options.trim_db)
    if options.fade_in_ms or options.fade_out_ms:
        audio = apply_fades(audio, options.fade_in_ms, options.fade_out_ms)
    if options.lufs is not None:
        return reach_loudness(audio, options.lufs)
    if audio.samples.size and float(np.max(np.abs(audio.samples))) > 1.0:
        audio = peak_safe(audio, PEAK_CEILING_DB)
    return audio


def resample_cycle(audio: Audio, sample_rate: int) -> Audio:
    """A loop at `sample_rate`, resampled as one period of a cycle (three copies, the middle kept), so
    its end still runs on into its start."""
    n = audio.frames
    tiled = resample(Audio(np.tile(audio.samples, (1, 3)), audio.sample_rate), sample_rate)
    start = round(n * sample_rate / audio.sample_rate)
    end = round(2 * n * sample_rate / audio.sample_rate)
    return Audio(np.ascontiguousarray(tiled.samples[:, start:end]), sample_rate)


def trim_silence(audio: Audio, threshold_db: float) -> Audio:
    """`audio` from its first to its last sample at or above `threshold_db` dBFS (in any channel); a take
    that never gets that loud is returned whole, with a warning."""
    level = np.max(np.abs(audio.samples), axis=0)
    loud = np.flatnonzero(level >= 10.0 ** (threshold_db / 20.0))
    if loud.size == 0:
        warnings.warn(
            f"The sound never reaches {threshold_db:g} dBFS, so trimming would leave nothing; it was kept whole.",
            UserWarning,
            stacklevel=3,
        )
        return audio
    return Audio(np.ascontiguousarray(audio.samples[:, loud[0] : loud[-1] + 1]), audio.sample_rate)


def apply_fades(audio: Audio, fade_in_ms: float, fade_out_ms: float) -> Audio:
    """`audio` with raised-cosine fades: the first sample silent, full level after `fade_in_ms`, and the
    same backwards at the end. Fades longer than the sound together are shortened in proportion."""
    n = audio.frames
    fade_in = round(fade_in_ms * audio.sample_rate / 1000.0)
    fade_out = round(fade_out_ms * audio.sample_rate / 1000.0)
    if fade_in + fade_out > n:
        scale = n / (fade_in + fade_out)
        fade_in, fade_out = math.floor(fade_in * scale), math.floor(fade_out * scale)
        warnings.warn(
            f"The fades ({fade_in_ms:g} ms in, {fade_out_ms:g} ms out) are longer than the "
            f"{1000.0 * n / audio.sample_rate:.0f} ms sound, so they were shortened to fit it.",
            UserWarning,
            stacklevel=3,
        )
    gain = np.ones(n, dtype=np.float32)
    gain[:fade_in] = fade_curve(fade_in)
    if fade_out:
        gain[n - fade_out :] *= fade_curve(fade_out)[::-1]
    return Audio((audio.samples * gain).astype(np.float32), audio.sample_rate)


def fade_curve(length: int) -> np.ndarray:
    """A raised-cosine rise over `length` samples, from exactly 0 up to just below 1."""
    return (0.5 - 0.5 * np.cos(np.pi * np.arange(length) / max(length, 1))).astype(np.float32)


def reach_loudness(audio: Audio, lufs: float) -> Audio:
    """`audio` scaled to an integrated loudness of `lufs`, unless that would put its sample peak above
    PEAK_CEILING_DB: then scaled so the peak sits at the ceiling, with a warning saying the loudness
    reached. Silence is returned unchanged (with a warning)."""
    current = loudness_lufs(audio)
    if current <= SILENCE_LUFS:
        warnings.warn(
            f"The sound is silent, so it cannot be brought to {lufs:g} LUFS; it was written as it is.",
            UserWarning,
            stacklevel=3,
        )
        return audio
    gain_db = lufs - current
    peak = peak_db(audio)
    if peak + gain_db > PEAK_CEILING_DB:
        gain_db = PEAK_CEILING_DB - peak
        warnings.warn(
            f"Reaching {lufs:g} LUFS would put the peak at {peak + lufs - current:+.1f} dBFS, so the gain "
            f"stopped with the peak at {PEAK_CEILING_DB:g} dBFS and the file is at {current + gain_db:.1f} "
            "LUFS (nothing is limited or clipped).",
            UserWarning,
            stacklevel=3,
        )
    gain = 10.0 ** (gain_db / 20.0)
    return Audio((audio.samples * gain).astype(np.float32), audio.sample_rate)


def read_embedded(path: str | os.PathLike) -> dict | None:
    """The settings record embedded in a file `export_audio` wrote; None for any other file (no record,
    not JSON, not audio)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".wav":
            comment = read_info(path).get("ICMT")
        else:
            with sf.SoundFile(str(path)) as f:
                comment = f.comment
    except (OSError, sf.SoundFileError, RuntimeError):
        return None
    if not comment or not comment.lstrip().startswith("{"):
        return None
    try:
        record = json.loads(comment)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(value, choices: tuple, what: str, unit: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value not in choices):
        listed = " or ".join(str(c) for c in choices)
        raise BadInput(f"{what} must be {listed}{unit}, not {value!r}.")


def _check_range(value, bounds: tuple[float, float], what: str, unit: str) -> None:
    low, high = bounds
    if not _is_number(value) or not low <= value <= high:
        raise BadInput(f"{what} must be from {low:g} to {high:g} {unit}, not {value!r}.")
