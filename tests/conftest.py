"""Shared fixtures: synthesized test audio (sines, clicks, noise) written into tmp_path.

The writer uses soundfile directly, not `pipelines.audio.save_audio`, so fixtures never depend on
the code under test.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

SR = 44100


def sine(
    freq: float = 440.0,
    seconds: float = 1.0,
    sample_rate: int = SR,
    channels: int = 2,
    amplitude: float = 0.5,
) -> np.ndarray:
    """A sine, float32 [channels, n], the same in every channel."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.tile(wave, (channels, 1))


def clicks(
    every: float = 0.25,
    seconds: float = 1.0,
    sample_rate: int = SR,
    channels: int = 2,
    amplitude: float = 0.9,
) -> np.ndarray:
    """Single-sample clicks every `every` seconds, float32 [channels, n]."""
    wave = np.zeros(int(round(seconds * sample_rate)), np.float32)
    wave[:: max(1, int(round(every * sample_rate)))] = amplitude
    return np.tile(wave, (channels, 1))


def noise(
    seconds: float = 1.0, sample_rate: int = SR, channels: int = 2, amplitude: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Gaussian white noise, float32 [channels, n], independent per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    return (amplitude * rng.standard_normal((channels, n))).astype(np.float32)


@pytest.fixture
def signals() -> SimpleNamespace:
    """The signal generators: `signals.sine(...)`, `signals.clicks(...)`, `signals.noise(...)`."""
    return SimpleNamespace(sine=sine, clicks=clicks, noise=noise)


@pytest.fixture
def write_audio(tmp_path: Path):
    """Factory: write_audio(name, samples [channels, n], sample_rate=44100, subtype=None) -> Path in tmp_path."""

    def write(name: str, samples: np.ndarray, sample_rate: int = SR, subtype: str | None = None) -> Path:
        path = tmp_path / name
        sf.write(str(path), np.asarray(samples).T, sample_rate, subtype=subtype)
        return path

    return write


@pytest.fixture
def sine_wav(write_audio) -> Path:
    """1 s of a 440 Hz sine at half scale, 44.1 kHz stereo, 16-bit WAV."""
    return write_audio("sine.wav", sine())


@pytest.fixture
def clicks_wav(write_audio) -> Path:
    """1 s of clicks every 250 ms, 44.1 kHz stereo, 16-bit WAV."""
    return write_audio("clicks.wav", clicks())


@pytest.fixture
def noise_wav(write_audio) -> Path:
    """1 s of white noise at 0.1 rms, 44.1 kHz stereo, 16-bit WAV."""
    return write_audio("noise.wav", noise())
