"""Audio core: the Audio type, reading, writing, resampling, loudness and validation.

Every file a user hands us enters through `load_audio` and every file we write leaves through
`save_audio`, so the checks (and their one-sentence `BadInput` messages) live here once.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipelines.atomic_files import write_atomic
from pipelines.errors import BadInput

SAMPLE_RATE = 44100
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
MAX_SECONDS = 600.0
MAX_CHANNELS = 2  # more than this is downmixed to stereo on load
MAX_PEAK = 1000.0  # 60 dB over full scale: no recording, only a broken float file (its squares overflow)
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: anything quieter reads as silence
INPUT_FORMATS = (".wav", ".flac", ".ogg", ".mp3")
# extension -> (libsndfile format, subtype per bit depth; None where the codec has no bit depth)
OUTPUT_FORMATS: dict[str, tuple[str, dict[int, str] | None]] = {
    ".wav": ("WAV", {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}),
    ".flac": ("FLAC", {16: "PCM_16", 24: "PCM_24", 32: "PCM_24"}),
    ".mp3": ("MP3", None),
    ".ogg": ("OGG", None),
}
_MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass
class Audio:
    """Float32 samples shaped [channels, n] at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])


# ---------------------------------------------------------------- checks


def validate(audio: Audio, what: str = "The audio") -> None:
    """Raise BadInput (one sentence starting with `what`) unless `audio` is finite, non-empty, within
    MAX_PEAK of full scale and at a sane rate."""
    samples = audio.samples
    if not isinstance(samples, np.ndarray) or samples.ndim != 2:
        shape = getattr(samples, "shape", type(samples).__name__)
        raise BadInput(
            f"{what} must hold samples shaped [channels, n], not {shape}; give mono as samples[None]."
        )
    _check_rate(audio.sample_rate, what)
    if audio.channels == 0 or audio.frames == 0:
        raise BadInput(f"{what} contains no audio samples; give a file with sound in it.")
    if not np.isfinite(samples).all():
        raise BadInput(
            f"{what} contains NaN or infinite samples; re-export it from the program that made it."
        )
    peak = float(np.max(np.abs(samples)))
    if peak > MAX_PEAK:
        raise BadInput(
            f"{what} peaks at {peak:.3g}, more than 60 dB over full scale; normalise it and export it again."
        )


def _check_rate(sample_rate: int, what: str) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise BadInput(
            f"{what} has a sample rate of {sample_rate} Hz, outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; "
            "resample it to 44100 Hz or 48000 Hz first."
        )


def check_input_path(path: str | os.PathLike) -> Path:
    """The path as a Path if it names an existing file; BadInput otherwise."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"The file '{path}' does not exist; check the path.")
    if path.is_dir():
        raise BadInput(
            f"'{path}' is a folder, not an audio file; give the path of a {_list(INPUT_FORMATS)} file."
        )
    return path


def check_output_path(path: str | os.PathLike) -> Path:
    """The path as a Path if audio can be written there (known extension, folder exists); BadInput otherwise."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(
            f"The output '{path}' is a folder; give a file name ending in {_list(OUTPUT_FORMATS)}."
        )
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise BadInput(
            f"Cannot write '{path.name}': the extension '{path.suffix}' is not supported; "
            f"use {_list(OUTPUT_FORMATS)}."
        )
    folder = path.parent
    if not folder.is_dir():
        raise BadInput(f"The output folder '{folder}' does not exist; create it first or pick another path.")
    return path


def _list(extensions) -> str:
    items = list(extensions)
    return ", ".join(items[:-1]) + " or " + items[-1]


# ---------------------------------------------------------------- reading and writing


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = SAMPLE_RATE,
    channels: int | None = 2,
    max_seconds: float | None = MAX_SECONDS,
) -> Audio:
    """Read a wav/flac/ogg/mp3 file, validated, resampled to `sample_rate` and converted to `channels`.

    None keeps the file's rate or channel count, except that files with more than two channels are
    always downmixed to stereo (with a warning). A truncated file is read up to where its data ends,
    as libsndfile reports it; a file damaged beyond that is one BadInput sentence.
    """
    path = check_input_path(path)
    name = f"'{path.name}'"
    # libmpg123 prints its complaints straight to file descriptor 2: caught here, and a cut-short file
    # becomes one warning instead of C-library lines on the user's terminal
    with _decoder_messages(path.suffix.lower() == ".mp3") as messages:
        try:
            info = sf.info(str(path))
        except (sf.SoundFileError, RuntimeError) as e:
            raise BadInput(
                f"Could not read '{path}' as audio ({_reason(e)}); give a {_list(INPUT_FORMATS)} file."
            ) from e
        _check_rate(info.samplerate, name)
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            raise BadInput(
                f"{name} is {info.frames / info.samplerate:.1f} s long, more than the {max_seconds:g} s "
                "limit; trim it or raise the limit."
            )
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as e:
            raise BadInput(
                f"Could not decode '{path}' ({_reason(e)}); the file may be damaged, so re-export it."
            ) from e
    if any(marker in "".join(messages) for marker in _CUT_SHORT):
        warnings.warn(
            f"{name} looks cut short (its header promises more audio than the file holds); "
            f"only the {data.shape[0] / sr:.2f} s that are there were read.",
            UserWarning,
            stacklevel=2,
        )
    audio = Audio(np.ascontiguousarray(data.T), int(sr))
    validate(audio, what=name)
    if audio.channels > MAX_CHANNELS:
        warnings.warn(
            f"{name} has {audio.channels} channels; it was downmixed to stereo.", UserWarning, stacklevel=2
        )
        audio = to_channels(audio, 2)
    if sample_rate is not None:
        audio = resample(audio, sample_rate)
    if channels is not None:
        audio = to_channels(audio, channels)
    return audio


def _reason(error: Exception) -> str:
    """libsndfile's own words for a failure, without the trailing full stop."""
    text = getattr(error, "error_string", None) or str(error)
    if "does not exist or is not a regular file" in text:  # said of files that exist but hold no frame
        return "no audio frame in it could be decoded"
    return text.strip().rstrip(".") or type(error).__name__


# what libmpg123 says when a file ends before its header says it should
_CUT_SHORT = ("stream size off", "Cannot read next header", "premature end")


@contextlib.contextmanager
def _decoder_messages(catch: bool):
    """Yields a list that, once the block ends, holds what C code wrote to file descriptor 2 inside it
    (only when `catch`: the redirect is process-wide, so it is kept to the decoders that need it)."""
    messages: list[str] = []
    if not catch:
        yield messages
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached daemon): nothing to catch
        yield messages
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.append(sink.read().decode("utf-8", "replace"))


def save_audio(audio: Audio, path: str | os.PathLike, *, bit_depth: int = 16) -> Path:
    """Write `audio` in the format its extension names (.wav .flac .mp3 .ogg), atomically; returns the path.

    Integer formats are clipped to [-1, 1]; use `peak_safe` before saving to avoid that. MP3 only
    holds 8..48 kHz and at most two channels, so other audio is resampled or downmixed for it.
    """
    path = check_output_path(path)
    write_atomic(path, encode_audio(audio, path.suffix, bit_depth=bit_depth))
    return path


def encode_audio(
    audio: Audio, suffix: str, *, bit_depth: int = 16, tags: dict[str, str] | None = None
) -> bytes:
    """The bytes of `audio` as a file of the format `suffix` names (see `save_audio`).

    `tags` (libsndfile's string fields: title, comment, software, ...) go into the file's own metadata:
    Vorbis comments in FLAC and Ogg, ID3 in MP3, LIST/INFO in WAV.
    """
    assert bit_depth in (16, 24, 32), "bit_depth is 16, 24 or 32"
    validate(audio)
    file_format, subtypes = OUTPUT_FORMATS[suffix.lower()]
    subtype = subtypes[bit_depth] if subtypes else None
    if file_format == "MP3":
        subtype = "MPEG_LAYER_III"
        if audio.channels > 2:
            audio = to_channels(audio, 2)
        if audio.sample_rate not in _MP3_SAMPLE_RATES:
            audio = resample(audio, SAMPLE_RATE if audio.sample_rate < 48000 else 48000)
    samples = audio.samples
    if subtype != "FLOAT":
        samples = np.clip(samples, -1.0, 1.0)
    encoded = io.BytesIO()
    with sf.SoundFile(
        encoded, "w", audio.sample_rate, audio.channels, subtype=subtype, format=file_format
    ) as f:
        for name, value in (tags or {}).items():
            setattr(f, name, value)  # strings go before the audio: MP3's ID3 tag is written first
        f.write(samples.T)
    return encoded.getvalue()


# ---------------------------------------------------------------- conversions


def resample(audio: Audio, sample_rate: int) -> Audio:
    """The same sound at `sample_rate` (soxr, high quality)."""
    assert sample_rate > 0
    if audio.sample_rate == sample_rate:
        return audio
    out = soxr.resample(np.ascontiguousarray(audio.samples.T), audio.sample_rate, sample_rate, quality="HQ")
    return Audio(np.ascontiguousarray(out.T, dtype=np.float32), int(sample_rate))


def to_channels(audio: Audio, channels: int) -> Audio:
    """Mono <-> stereo (duplicate / average); more than two channels are downmixed to stereo first.

    The downmix sends even-numbered channels left and odd-numbered channels right, averaged, so it
    never clips; the file's speaker layout is not read.
    """
    assert channels in (1, 2) or channels == audio.channels, f"cannot convert to {channels} channels"
    x = audio.samples
    if audio.channels == channels:
        return audio
    if channels == 1:
        out = x.mean(axis=0, keepdims=True)
    elif audio.channels == 1:
        out = np.repeat(x, 2, axis=0)
    else:
        out = np.stack([x[0::2].mean(axis=0), x[1::2].mean(axis=0)])
    return Audio(out.astype(np.float32, copy=False), audio.sample_rate)


# ---------------------------------------------------------------- level


def loudness_lufs(audio: Audio) -> float:
    """Integrated loudness (ITU-R BS.1770, via pyloudnorm); SILENCE_LUFS (-70) for silence.

    Clips shorter than one 400 ms gating block are measured looped to one block, which keeps their
    level instead of diluting it with padding.
    """
    import pyloudnorm

    if audio.channels > 5:  # BS.1770 weights cover at most five channels
        audio = to_channels(audio, 2)
    x = audio.samples.astype(np.float64)
    block = int(np.ceil(0.4 * audio.sample_rate))
    if x.shape[1] == 0 or not np.any(x):
        return SILENCE_LUFS
    if x.shape[1] < block:
        x = np.tile(x, (1, -(-block // x.shape[1])))[:, :block]
    meter = pyloudnorm.Meter(audio.sample_rate)
    with np.errstate(divide="ignore"):
        value = meter.integrated_loudness(x.T if audio.channels > 1 else x[0])
    return float(max(value, SILENCE_LUFS))


def normalize_loudness(audio: Audio, lufs: float) -> Audio:
    """`audio` scaled to an integrated loudness of `lufs`; silence is returned unchanged.

    No limiting happens here; follow with `peak_safe` when the gain may push peaks over full scale.
    """
    current = loudness_lufs(audio)
    if current <= SILENCE_LUFS:
        return audio
    gain = 10.0 ** ((lufs - current) / 20.0)
    return Audio((audio.samples * gain).astype(np.float32), audio.sample_rate)


def peak_db(audio: Audio) -> float:
    """Sample peak in dBFS (-inf for silence)."""
    peak = float(np.max(np.abs(audio.samples))) if audio.samples.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def peak_safe(audio: Audio, ceiling_db: float = -1.0) -> Audio:
    """`audio` scaled down so its sample peak is at most `ceiling_db` dBFS; quieter audio is unchanged."""
    ceiling = 10.0 ** (ceiling_db / 20.0)
    peak = float(np.max(np.abs(audio.samples))) if audio.samples.size else 0.0
    if peak <= ceiling:
        return audio
    return Audio((audio.samples * (ceiling / peak)).astype(np.float32), audio.sample_rate)
