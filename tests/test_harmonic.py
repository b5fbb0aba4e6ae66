"""The STFT-domain harmonic renderer against torch.stft of the same sound synthesised sample by sample."""

import math

import numpy as np
import pytest
import torch

from pipelines.harmonic import harmonic_stft, yin_f0

SR, N_FFT, HOP = 44100, 2048, 512


def stft(x: np.ndarray) -> torch.Tensor:
    return torch.stft(torch.from_numpy(x), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)


def relative_error(y: torch.Tensor, x: torch.Tensor) -> float:
    inner = slice(4, x.shape[-1] - 4)  # the centred STFT's reflected edges are not a sum of harmonics
    return float((y[..., inner] - x[..., inner]).abs().norm() / x[..., inner].abs().norm())


@pytest.mark.parametrize("f0", [55.0, 440.0, 1000.0])
def test_steady_tone_matches_the_stft_with_phase(f0):
    amps = np.array([0.3 / h for h in range(1, 9)])
    t = np.arange(SR * 2) / SR
    x = sum(a * np.cos(2 * math.pi * f0 * (h + 1) * t) for h, a in enumerate(amps)).astype(np.float32)
    target = stft(x)
    frames = target.shape[-1]
    y = harmonic_stft(
        torch.full((1, frames), f0),
        torch.tensor(amps, dtype=torch.float32).expand(1, frames, -1),
        n_fft=N_FFT,
        hop=HOP,
        sample_rate=SR,
    )[0]
    assert relative_error(y, target) < 0.05  # complex: magnitude AND phase agree


def test_glide_follows_the_integrated_phase():
    """A slow glide 200 -> 300 Hz: frame-wise f0 with trapezoid phase integration stays coherent."""
    n = SR * 2
    f = np.linspace(200, 300, n)
    x = (0.5 * np.cos(2 * math.pi * np.cumsum(f) / SR)).astype(np.float32)
    target = stft(x)
    frames = target.shape[-1]
    f0 = torch.from_numpy(np.interp(np.arange(frames) * HOP, np.arange(n), f)).float()[None]
    y = harmonic_stft(f0, torch.full((1, frames, 1), 0.5), n_fft=N_FFT, hop=HOP, sample_rate=SR)[0]
    assert relative_error(y, target) < 0.1


def test_harmonics_above_nyquist_are_silent():
    """f0 15 kHz: harmonics 2 and 3 (30 and 45 kHz) would alias; only the fundamental is drawn."""
    kw = dict(n_fft=N_FFT, hop=HOP, sample_rate=SR)
    three = harmonic_stft(torch.full((1, 10), 15000.0), torch.ones(1, 10, 3), **kw)
    one = harmonic_stft(torch.full((1, 10), 15000.0), torch.ones(1, 10, 1), **kw)
    assert torch.equal(three, one)
    peak_bin = int(one.abs().sum(-1)[0].argmax())
    assert abs(peak_bin * SR / N_FFT - 15000) < 30


@pytest.mark.parametrize("f0", [55.0, 262.0, 880.0, 1500.0])
def test_yin_tracks_a_harmonic_tone_within_a_few_cents(f0):
    t = np.arange(SR * 2) / SR
    x = sum((0.3 / h) * np.sin(2 * math.pi * f0 * h * t + h) for h in range(1, 8)).astype(np.float32)
    track, voiced = yin_f0(torch.from_numpy(x)[None], n_fft=N_FFT, hop=HOP, sample_rate=SR)
    inner = track[0, 4:-4]
    cents = 1200 * torch.log2(inner / f0).abs()
    assert track.shape == (1, len(x) // HOP + 1)
    assert float(cents.max()) < 5 and float(voiced[0, 4:-4].mean()) == 1.0


def test_yin_calls_noise_and_silence_unvoiced():
    torch.manual_seed(0)
    for x in (torch.randn(2, SR) * 0.1, torch.zeros(2, SR)):
        track, voiced = yin_f0(x, n_fft=N_FFT, hop=HOP, sample_rate=SR)
        assert float(voiced.mean()) < 0.05 and bool(torch.isfinite(track).all())
