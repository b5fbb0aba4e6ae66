"""pipelines.analysis: pitch, pulse, loudness and brightness measured on synthesized signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines import analysis
from pipelines.audio import Audio

SR = 44100


def cents(measured: float, expected: float) -> float:
    return 1200.0 * math.log2(measured / expected)


def click_track(bpm: float, seconds: float, accent_every: int = 4) -> Audio:
    """Short decaying noise bursts on every beat, louder on each bar's first beat."""
    rng = np.random.default_rng(0)
    x = np.zeros(int(seconds * SR), np.float32)
    burst = (np.exp(-np.arange(600) / 80.0) * rng.standard_normal(600)).astype(np.float32)
    for k in range(int(seconds * bpm / 60.0) + 1):
        start = int(round(k * 60.0 / bpm * SR))
        if start + burst.size < x.size:
            x[start : start + burst.size] += burst * (1.0 if k % accent_every == 0 else 0.5)
    return Audio(np.stack([x, x]), SR)


@pytest.mark.parametrize("freq", [110.0, 220.0, 440.0])
def test_sine_pitch_within_10_cents(signals, freq):
    clip = analysis.analyze_clip(Audio(signals.sine(freq, seconds=1.5), SR))
    assert clip.f0_hz is not None and abs(cents(clip.f0_hz, freq)) < 10
    assert clip.note == analysis.note_name(freq)
    assert clip.tempo_bpm is None  # a steady tone has no pulse


def test_frame_count_and_types(signals):
    audio = Audio(signals.sine(330.0, seconds=1.3), SR)
    for frame_rate in (44100 / 2048, 50.0, 86.1328125, 12.3):
        frames = analysis.analyze_frames(audio, frame_rate, pitch=False)
        expected = math.ceil(audio.frames / (SR / frame_rate))
        for name in ("loudness_db", "onset", "f0_hz", "voicing", "beat_phase", "bar_phase", "brightness"):
            values = getattr(frames, name)
            assert values.dtype == np.float32 and values.shape == (expected,), name
    frames = analysis.analyze_frames(audio, 50.0)
    voiced = frames.f0_hz[frames.voicing > 0.5]
    assert voiced.size > 0.8 * frames.f0_hz.size
    assert abs(cents(float(np.median(voiced)), 330.0)) < 10


@pytest.mark.parametrize("bpm", [96.0, 128.0])
def test_click_track_tempo_within_2_percent(bpm):
    frames = analysis.analyze_frames(click_track(bpm, 8.0), 44100 / 1024, pitch=False)
    assert frames.tempo_bpm is not None and abs(frames.tempo_bpm / bpm - 1) < 0.02
    assert np.all((frames.beat_phase >= 0) & (frames.beat_phase < 1))
    assert frames.downbeat_s is not None and frames.bars_s.size >= 2
    # the accented clicks are the downbeats: every bar start sits on a multiple of four beats
    bar_beats = frames.bars_s / (60.0 / bpm)
    assert np.allclose(bar_beats / 4, np.round(bar_beats / 4), atol=0.05)


def test_known_beats_give_exact_phases(signals):
    audio = Audio(signals.sine(220.0, seconds=4.0), SR)
    beats = np.arange(0, 4.0, 0.5)
    frames = analysis.analyze_frames(audio, 100.0, beats_s=beats, bars_s=beats[::4], pitch=False)
    assert frames.tempo_bpm == pytest.approx(120.0)
    assert frames.beat_phase[0] == 0.0 and frames.beat_phase[25] == pytest.approx(0.5)
    assert frames.bar_phase[100] == pytest.approx(0.5) and frames.bar_phase[200] == pytest.approx(
        0.0, abs=1e-6
    )
    assert frames.downbeat_s == 0.0


def test_one_bar_of_three_four_still_has_a_bar_phase(signals):
    audio = Audio(signals.sine(220.0, seconds=1.6), SR)
    frames = analysis.analyze_frames(
        audio, 100.0, beats_s=[0.0, 0.5, 1.0], bars_s=[0.0], beats_per_bar=3, pitch=False
    )
    assert frames.bar_phase[75] == pytest.approx(0.5) and frames.bar_phase[150] == pytest.approx(
        0.0, abs=1e-6
    )
    assert frames.beat_phase[125] == pytest.approx(0.5)  # past the last given beat, the spacing carries on


def test_loudness_is_sane(signals):
    loud = analysis.analyze_frames(Audio(signals.sine(440.0, amplitude=0.5), SR), 50.0, pitch=False)
    quiet = analysis.analyze_frames(Audio(signals.sine(440.0, amplitude=0.05), SR), 50.0, pitch=False)
    silence = analysis.analyze_frames(Audio(np.zeros((2, SR), np.float32), SR), 50.0, pitch=False)
    middle = slice(10, -10)
    assert np.median(loud.loudness_db[middle]) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.5)
    assert np.median(loud.loudness_db - quiet.loudness_db) == pytest.approx(20.0, abs=0.5)
    assert np.all(silence.loudness_db == analysis.FLOOR_DB)
    assert silence.tempo_bpm is None and np.all(silence.onset == 0)
    clip = analysis.analyze_clip(Audio(signals.sine(997.0, seconds=2.0, amplitude=0.5), SR))
    assert -12 < clip.loudness_lufs < -6 and clip.peak_db == pytest.approx(-6.02, abs=0.1)
    assert clip.is_sustained


def test_brightness_orders_sounds(signals):
    low = analysis.clip_brightness(Audio(signals.sine(200.0), SR))
    high = analysis.clip_brightness(Audio(signals.noise(), SR))
    assert low == pytest.approx(200.0, rel=0.1) and high > 5000  # white noise at 22.05 kHz: about 5.5 kHz
    assert analysis.brightness_word(low) == "dark" and analysis.brightness_word(high) == "very bright"


def test_key_of_a_major_arpeggio():
    t = np.arange(int(0.4 * SR)) / SR
    notes = [60, 64, 67, 72, 67, 64, 60, 65, 69, 72, 67, 71, 74, 67, 64, 60]  # I - IV - V - I in C
    tones = []
    for midi in notes:
        f = float(analysis.midi_to_hz(midi))
        tone = sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 5)) * np.exp(-t / 0.3)
        tones.append(tone)
    x = (0.3 * np.concatenate(tones)).astype(np.float32)
    clip = analysis.analyze_clip(Audio(np.stack([x, x]), SR))
    assert clip.key == "C major"
    assert clip.note is None and clip.onset_count >= 8 and not clip.is_sustained
    assert "C major" in clip.describe()


def test_silence_and_describe(signals):
    silent = analysis.analyze_clip(Audio(np.zeros((2, SR), np.float32), SR))
    assert silent.f0_hz is None and silent.tempo_bpm is None and silent.key is None
    words = analysis.analyze_clip(Audio(signals.sine(220.0, seconds=2.0), SR)).describe()
    assert words.startswith("A3") and "2s" in words
