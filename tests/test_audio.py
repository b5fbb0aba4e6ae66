"""Audio core: bad files give one-sentence BadInput errors; good files round-trip, resample and measure right."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from pipelines import audio as audio_mod
from pipelines.audio import (
    SILENCE_LUFS,
    Audio,
    load_audio,
    loudness_lufs,
    normalize_loudness,
    peak_db,
    peak_safe,
    resample,
    save_audio,
    to_channels,
    validate,
)
from pipelines.errors import BadInput


def one_sentence(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and text.endswith(".") and text.count(". ") == 0, text
    return text


def dominant_hz(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------- bad input files


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="does not exist") as e:
        load_audio(tmp_path / "nope.wav")
    one_sentence(e)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(BadInput, match="is a folder") as e:
        load_audio(tmp_path)
    one_sentence(e)


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my notes, not audio\n")
    with pytest.raises(BadInput, match="Could not read") as e:
        load_audio(path)
    one_sentence(e)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    with pytest.raises(BadInput, match="Could not read"):
        load_audio(path)


def test_zero_length_audio(write_audio):
    path = write_audio("zero.wav", np.zeros((2, 0), np.float32))
    with pytest.raises(BadInput, match="no audio samples") as e:
        load_audio(path)
    one_sentence(e)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(write_audio, bad, signals):
    x = signals.sine(seconds=0.1)
    x[1, 100] = bad
    path = write_audio("bad.wav", x, subtype="FLOAT")
    with pytest.raises(BadInput, match="NaN or infinite") as e:
        load_audio(path)
    one_sentence(e)


@pytest.mark.parametrize("rate", [500, 1_000_000])
def test_absurd_sample_rate(write_audio, rate):
    path = write_audio("odd.wav", np.zeros((1, 64), np.float32), sample_rate=rate)
    with pytest.raises(BadInput, match="sample rate") as e:
        load_audio(path)
    one_sentence(e)


def test_too_long(write_audio, signals):
    path = write_audio("long.wav", signals.noise(seconds=2.0, sample_rate=8000), sample_rate=8000)
    with pytest.raises(BadInput, match="limit") as e:
        load_audio(path, max_seconds=1.0)
    one_sentence(e)
    assert load_audio(path, max_seconds=None).seconds == pytest.approx(2.0)


def test_eight_channels_downmixed_with_warning(write_audio, signals):
    x = np.concatenate([signals.sine(channels=4, seconds=0.1), signals.noise(channels=4, seconds=0.1)])
    path = write_audio("octo.wav", x)
    with pytest.warns(UserWarning, match="8 channels; it was downmixed to stereo"):
        a = load_audio(path, channels=None)
    assert a.channels == 2
    with pytest.warns(UserWarning):
        assert load_audio(path, channels=1).channels == 1


@pytest.mark.parametrize("name", ["out.aiff", "out.txt", "out"])
def test_unknown_output_extension(tmp_path, name, signals):
    with pytest.raises(BadInput, match="not supported") as e:
        save_audio(Audio(signals.sine(), 44100), tmp_path / name)
    one_sentence(e)
    assert not (tmp_path / name).exists()


def test_output_folder_missing(tmp_path, signals):
    with pytest.raises(BadInput, match="does not exist") as e:
        save_audio(Audio(signals.sine(), 44100), tmp_path / "no" / "such" / "out.wav")
    one_sentence(e)


def test_output_is_a_folder(tmp_path, signals):
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(BadInput, match="is a folder"):
        save_audio(Audio(signals.sine(), 44100), tmp_path / "dir.wav")


def test_validate_rejects_nan_audio_before_writing(tmp_path, signals):
    x = signals.sine()
    x[0, 0] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        save_audio(Audio(x, 44100), tmp_path / "out.wav")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BadInput, match="no audio"):
        validate(Audio(np.zeros((2, 0), np.float32), 44100))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, signals):
    target = tmp_path / "keep.wav"
    target.write_bytes(b"old contents")

    def broken_encoder(file, *args, **kwargs):
        file.write(b"half a file")  # the encoder writes into memory; write_atomic publishes it
        raise OSError("disk full")

    monkeypatch.setattr(audio_mod.sf, "SoundFile", broken_encoder)
    with pytest.raises(OSError):
        save_audio(Audio(signals.sine(), 44100), target)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


# ---------------------------------------------------------------- good paths


@pytest.mark.parametrize(
    ("ext", "tolerance"), [(".wav", 1e-4), (".flac", 1e-4), (".ogg", 0.05), (".mp3", 0.02)]
)
def test_round_trip(tmp_path, ext, tolerance, signals):
    original = Audio(signals.sine(440.0, seconds=0.5), 44100)
    path = save_audio(original, tmp_path / f"out{ext}")
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == [f"out{ext}"]
    back = load_audio(path)
    assert back.sample_rate == 44100 and back.channels == 2
    assert abs(back.frames - original.frames) <= 2048
    n = min(back.frames, original.frames)
    middle = slice(2048, n - 2048)  # lossy codecs smear the edges
    assert np.max(np.abs(back.samples[:, middle] - original.samples[:, middle])) < tolerance


@pytest.mark.parametrize(("bits", "subtype"), [(16, "PCM_16"), (24, "PCM_24"), (32, "FLOAT")])
def test_wav_bit_depth(tmp_path, bits, subtype, signals):
    path = save_audio(Audio(signals.noise(seconds=0.1), 44100), tmp_path / "n.wav", bit_depth=bits)
    assert sf.info(str(path)).subtype == subtype


def test_integer_formats_clip_instead_of_wrapping(tmp_path, signals):
    loud = Audio(signals.sine(amplitude=1.5, seconds=0.1), 44100)
    back = load_audio(save_audio(loud, tmp_path / "loud.flac"))
    assert back.samples.max() <= 1.0 and back.samples.max() > 0.99


def test_mp3_at_an_unsupported_rate_is_resampled(tmp_path, signals):
    back = load_audio(
        save_audio(Audio(signals.sine(seconds=0.2, sample_rate=96000), 96000), tmp_path / "hi.mp3"),
        sample_rate=None,
    )
    assert back.sample_rate == 48000


def test_cut_short_mp3_is_one_warning_and_no_decoder_noise(tmp_path, signals, capfd):
    whole = save_audio(Audio(signals.sine(seconds=3.0), 44100), tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "stub.mp3").write_bytes(whole[:300])
    capfd.readouterr()
    with pytest.warns(UserWarning, match=r"'cut.mp3' looks cut short .* only the 0\.\d\d s that are there"):
        cut = load_audio(tmp_path / "cut.mp3")
    assert 0.5 < cut.seconds < 1.5
    with pytest.raises(BadInput, match=r"\(no audio frame in it could be decoded\)"):
        load_audio(tmp_path / "stub.mp3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole file reads without a word
        assert load_audio(tmp_path / "whole.mp3").seconds > 2.9
    assert capfd.readouterr().err == ""  # libmpg123's own lines were caught


def test_resample_48k_to_44k_keeps_frequency(write_audio, signals):
    path = write_audio("s48.wav", signals.sine(1000.0, seconds=1.0, sample_rate=48000), sample_rate=48000)
    a = load_audio(path)
    assert a.sample_rate == 44100 and a.frames == 44100
    assert dominant_hz(a.samples[0], 44100) == pytest.approx(1000.0, abs=1.5)
    assert peak_db(a) == pytest.approx(20 * np.log10(0.5), abs=0.1)
    assert load_audio(path, sample_rate=None).sample_rate == 48000


def test_resample_same_rate_is_identity(signals):
    a = Audio(signals.sine(), 44100)
    assert resample(a, 44100) is a
    assert resample(a, 22050).samples.dtype == np.float32


def test_channel_conversion(write_audio, signals):
    mono = Audio(signals.sine(channels=1, seconds=0.1), 44100)
    stereo = to_channels(mono, 2)
    assert stereo.channels == 2 and np.array_equal(stereo.samples[0], stereo.samples[1])
    lr = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32) * 0.5])
    assert np.allclose(to_channels(Audio(lr, 44100), 1).samples, 0.25)
    path = write_audio("mono.wav", mono.samples)
    assert load_audio(path).channels == 2
    assert load_audio(path, channels=None).channels == 1
    assert load_audio(write_audio("st.wav", signals.clicks()), channels=1).channels == 1


def test_loudness_of_full_scale_997hz_sine(signals):
    mono = Audio(signals.sine(997.0, seconds=1.0, channels=1, amplitude=1.0), 44100)
    assert loudness_lufs(mono) == pytest.approx(-3.01, abs=0.5)
    # BS.1770 sums channel powers: two identical channels read 3.01 LU louder, about 0 LUFS
    assert loudness_lufs(to_channels(mono, 2)) == pytest.approx(0.0, abs=0.5)


def test_loudness_of_short_clip_and_silence(signals):
    short = Audio(signals.sine(997.0, seconds=0.1, amplitude=0.5), 44100)
    full = Audio(signals.sine(997.0, seconds=1.0, amplitude=0.5), 44100)
    assert loudness_lufs(short) == pytest.approx(loudness_lufs(full), abs=0.5)
    assert loudness_lufs(Audio(np.zeros((2, 44100), np.float32), 44100)) == SILENCE_LUFS


def test_normalize_loudness(signals):
    a = normalize_loudness(Audio(signals.noise(seconds=1.0), 44100), -23.0)
    assert loudness_lufs(a) == pytest.approx(-23.0, abs=0.1)
    silent = Audio(np.zeros((2, 4410), np.float32), 44100)
    assert normalize_loudness(silent, -14.0) is silent


def test_peak_safe(signals):
    hot = Audio(signals.sine(amplitude=1.4), 44100)
    safe = peak_safe(hot, ceiling_db=-1.0)
    assert peak_db(safe) == pytest.approx(-1.0, abs=1e-3)
    quiet = Audio(signals.sine(amplitude=0.1), 44100)
    assert peak_safe(quiet) is quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert peak_db(Audio(np.zeros((1, 10), np.float32), 44100)) == float("-inf")


def test_fixture_files_load(sine_wav, clicks_wav, noise_wav):
    sine_audio, clicks_audio, noise_audio = (load_audio(p) for p in (sine_wav, clicks_wav, noise_wav))
    assert dominant_hz(sine_audio.samples[0], 44100) == pytest.approx(440.0, abs=1.5)
    assert int((np.abs(clicks_audio.samples[0]) > 0.5).sum()) == 4
    assert float(noise_audio.samples.std()) == pytest.approx(0.1, rel=0.05)
