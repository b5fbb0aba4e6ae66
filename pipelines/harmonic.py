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


def polar(magnitude: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """torch.polar, but 5x faster on CPU (torch 2.13's polar kernel is not vectorised)."""
    return torch.complex(magnitude * torch.cos(angle), magnitude * torch.sin(angle))


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
    values = polar(mag, angle)
    out = torch.zeros(f0_hz.shape[0], frames, bins, dtype=values.dtype, device=f0_hz.device)
    out.scatter_add_(2, k.clamp(0, bins - 1).long().flatten(2), values.flatten(2))
    return out.transpose(1, 2)


def yin_f0(
    x: torch.Tensor,
    *,
    n_fft: int,
    hop: int,
    sample_rate: int,
    fmin: float = 45.0,
    fmax: float = 2000.0,
    threshold: float = 0.15,
    silence: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN pitch per centred STFT frame (de Cheveigne & Kawahara 2002), batched in torch.

    x [B, N] -> (f0_hz [B, N / hop + 1], voiced [B, frames] in {0, 1}). Each frame is the n_fft samples a
    centred STFT frame covers; lags go up to n_fft / 2, so fmin must exceed 2 * sample_rate / n_fft.
    Unvoiced frames (no dip under `threshold`, or RMS under `silence`) get the best lag's f0 anyway.
    """
    half = n_fft // 2
    tau_min, tau_max = max(2, int(sample_rate / fmax)), min(half - 1, int(math.ceil(sample_rate / fmin)))
    frames = torch.nn.functional.pad(x[:, None].float(), (half, half), mode="reflect")[:, 0]
    frames = frames.unfold(-1, n_fft, hop)  # [B, T, n_fft]
    head = frames[..., :half]
    size = 2 * n_fft
    corr = torch.fft.irfft(torch.fft.rfft(frames, n=size) * torch.fft.rfft(head.flip(-1), n=size), n=size)
    # Cross-correlation sum_j head_j frames_{j + tau}: with the reversed head it is a convolution at half-1+tau.
    corr = corr[..., half - 1 : half - 1 + half + 1]  # tau = 0..half
    sq = torch.nn.functional.pad(frames.square().cumsum(-1), (1, 0))
    energy_head = sq[..., half : half + 1]
    tau = torch.arange(half + 1, device=x.device)
    energy_lag = sq[..., tau + half] - sq[..., tau]
    diff = (energy_head + energy_lag - 2 * corr).clamp(min=0)
    cum = diff[..., 1:].cumsum(-1)
    cmnd = torch.ones_like(diff)
    cmnd[..., 1:] = diff[..., 1:] * tau[1:] / cum.clamp(min=1e-12)
    search = cmnd[..., tau_min : tau_max + 1]
    local_min = torch.ones_like(search, dtype=torch.bool)
    local_min[..., 1:-1] = (search[..., 1:-1] <= search[..., :-2]) & (search[..., 1:-1] <= search[..., 2:])
    below = local_min & (search < threshold)
    first = torch.argmax(below.int(), dim=-1)
    best = torch.where(below.any(-1), first, torch.argmin(search, dim=-1))
    # Parabolic interpolation around the chosen lag.
    i = best.clamp(1, search.shape[-1] - 2)
    a, b, c = (search.gather(-1, (i + d)[..., None])[..., 0] for d in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (a - c) / denom, torch.zeros_like(denom)).clamp(-1, 1)
    lag = (i + tau_min).float() + torch.where(best == i, shift, torch.zeros_like(shift))
    f0 = sample_rate / lag
    rms = head.square().mean(-1).sqrt()
    voiced = (below.any(-1) & (rms > silence)).float()
    return f0, voiced
