"""Harmonic sounds rendered straight into the STFT domain: the codec's pitch-exact building block.

A decoder that draws magnitude bins with a linear head cannot put a harmonic comb at an arbitrary f0 (the
bundled codec turns a 440 Hz tone into a static comb near 344 Hz). Rendering each harmonic analytically
at its exact frequency, with phase integrated from f0, makes pitch and frame-to-frame phase coherence
hold by construction; a network then only predicts f0 and harmonic amplitudes.

Each harmonic h of a sound with fundamental phase Phi(t) contributes (a_h / 2) e^{i h Phi} W(k - omega_h)
to bins k near omega_h = h f0 / bin_hz, where W is the DFT of the analysis window (periodic Hann) at a
fractional bin offset. Only the main lobe (2 * width bins) is drawn: the side lobes are 31 dB down.
"""

from __future__ import annotations

import math

import torch


def hann_lobe(offset: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Real amplitude of a periodic Hann window's DFT at fractional bin offsets (linear phase factored out)."""

    def ratio(x: torch.Tensor) -> torch.Tensor:  # sin(pi x) / sin(pi x / n): the Dirichlet kernel
        s = torch.sin(math.pi * x / n_fft)
        tiny = s.abs() < 1e-7
        return torch.where(
            tiny, torch.full_like(x, float(n_fft)), torch.sin(math.pi * x) / torch.where(tiny, 1.0, s)
        )

    return 0.5 * ratio(offset) + 0.25 * ratio(offset + 1) + 0.25 * ratio(offset - 1)


def harmonic_stft(
    f0_hz: torch.Tensor, amps: torch.Tensor, *, n_fft: int, hop: int, sample_rate: int, width: int = 2
) -> torch.Tensor:
    """Complex centred-STFT frames [B, bins, T] of sum_h amps_h cos(h Phi), with Phi integrated from f0.

    f0_hz [B, T] per STFT frame (> 0), amps [B, T, H] linear amplitudes of harmonics 1..H. Harmonics above
    Nyquist are silent. Matches torch.stft(center=True, window=hann_window(n_fft)) of the same sound.
    """
    _, frames = f0_hz.shape
    bins = n_fft // 2 + 1
    h = torch.arange(1, amps.shape[-1] + 1, dtype=f0_hz.dtype, device=f0_hz.device)
    w = 2 * math.pi * f0_hz / sample_rate  # radians per sample
    advance = 0.5 * (w[:, 1:] + w[:, :-1]) * hop
    # Fundamental phase at each frame's first sample (a centred frame starts n_fft / 2 before its time).
    phi = torch.cat([torch.zeros_like(w[:, :1]), torch.cumsum(advance, dim=1)], dim=1) - w * (n_fft / 2)
    omega = f0_hz[..., None] * h * (n_fft / sample_rate)  # [B, T, H] in bins
    amps = amps * (omega < bins - 1 - width)
    offsets = torch.arange(-width + 1, width + 1, dtype=f0_hz.dtype, device=f0_hz.device)
    k = torch.floor(omega)[..., None] + offsets  # [B, T, H, 2 width]
    delta = k - omega[..., None]
    mag = (amps / 2)[..., None] * hann_lobe(delta, n_fft)
    angle = (phi[..., None] * h)[..., None] - math.pi * delta * (n_fft - 1) / n_fft
    values = torch.polar(mag, angle)
    out = torch.zeros(f0_hz.shape[0], frames, bins, dtype=values.dtype, device=f0_hz.device)
    out.scatter_add_(2, k.clamp(0, bins - 1).long().flatten(2), values.flatten(2))
    return out.transpose(1, 2)
