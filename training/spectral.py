"""Spectral distances: one definition used by the codec's training loss and by its benchmark.

All take waveforms [..., n] (any leading dims, e.g. [B, 2, n]) as torch tensors and need torch only,
so training runs on machines without librosa.
"""

from __future__ import annotations

import functools
import math

import torch

RESOLUTIONS = (512, 1024, 2048)
POWER_FLOOR = 1e-8  # -80 dB re full scale: below this, differences are inaudible and not counted


DB_PER_NEPER = 10.0 / math.log(10.0)  # 10 log10(p) = DB_PER_NEPER * ln(p)


def power_db(p: torch.Tensor) -> torch.Tensor:
    """Power in dB, floored at POWER_FLOOR (-80 dB)."""
    return 10.0 * torch.log10(p.clamp(min=POWER_FLOOR))


def stft_power(x: torch.Tensor, n_fft: int, hop: int | None = None) -> torch.Tensor:
    """Power spectrogram [..., bins, frames] of a centred Hann STFT."""
    hop = hop or n_fft // 4
    lead = x.shape[:-1]
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), n_fft, hop, window=window, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    # Normalise so a full-scale sine has power ~1 in its bin (makes the dB floor meaningful).
    power = power * (4.0 / window.sum().square())
    return power.reshape(*lead, *power.shape[-2:])


def _mrstft_term(py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + mean L1 log-magnitude for one resolution, from power spectrograms."""
    my, mx = py.clamp(min=POWER_FLOOR).sqrt(), px.clamp(min=POWER_FLOOR).sqrt()
    sc = torch.linalg.norm((my - mx).flatten(-2), dim=-1) / torch.linalg.norm(mx.flatten(-2), dim=-1).clamp(
        min=1e-6
    )
    logmag = (torch.log(my) - torch.log(mx)).abs().mean(dim=(-2, -1))
    return (sc + logmag).mean()


def mrstft_distance(y: torch.Tensor, x: torch.Tensor, resolutions=RESOLUTIONS) -> torch.Tensor:
    """Multi-resolution STFT distance: mean over resolutions of spectral convergence + L1 log-magnitude."""
    return sum(_mrstft_term(stft_power(y, n), stft_power(x, n)) for n in resolutions) / len(resolutions)


def reconstruction_loss(
    y: torch.Tensor, x: torch.Tensor, sample_rate: int = 44100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MR-STFT distance, mel L1) sharing one STFT per resolution; the target's spectra carry no graph."""
    total = y.new_zeros(())
    for n_fft in RESOLUTIONS:
        py = stft_power(y, n_fft)
        with torch.no_grad():
            px = stft_power(x, n_fft)
        total = total + _mrstft_term(py, px)
        if n_fft == 2048:
            fb = mel_filterbank(sample_rate, 2048, 128).to(y.device)
            mel = (
                power_db(torch.matmul(fb, py)) - power_db(torch.matmul(fb, px))
            ).abs().mean() / DB_PER_NEPER
    return total / len(RESOLUTIONS), mel


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 20.0) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, bins], each normalised to unit area."""
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(
        torch.linspace(hz_to_mel(torch.tensor(fmin)), hz_to_mel(torch.tensor(sample_rate / 2)), n_mels + 2)
    )
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb / fb.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return fb.float()


def mel_power(
    x: torch.Tensor, sample_rate: int = 44100, n_fft: int = 2048, n_mels: int = 128
) -> torch.Tensor:
    fb = mel_filterbank(sample_rate, n_fft, n_mels).to(x.device)
    return torch.matmul(fb, stft_power(x, n_fft))


def mel_distance_db(y: torch.Tensor, x: torch.Tensor, sample_rate: int = 44100) -> float:
    """Mean absolute difference of 128-band mel power spectra in dB (floored at -80 dB)."""
    return float((power_db(mel_power(y, sample_rate)) - power_db(mel_power(x, sample_rate))).abs().mean())


def lsd_db(y: torch.Tensor, x: torch.Tensor, n_fft: int = 2048) -> float:
    """Log-spectral distance in dB: per-frame RMS over bins of the dB power difference, averaged over frames."""
    diff = power_db(stft_power(y, n_fft)) - power_db(stft_power(x, n_fft))
    return float(diff.square().mean(dim=-2).sqrt().mean())
