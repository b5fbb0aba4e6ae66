"""Procedural sound design in numpy/scipy: risers, impacts, weather, machines, alarms, bells, UI sounds ...

Every family is two pure functions: `draw(rng) -> params` picks a JSON-able parameter dict (with
"family" and "seconds"), and `render(params, rng, sample_rate) -> float32 [2, n]` makes the stereo
sound from it, taking all its randomness (noise, jitter) from `rng`. Levels are left loose; the
corpus builder normalises loudness afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.signal import istft, oaconvolve, stft

STFT_SIZE = 1024
STFT_HOP = 512  # half-overlapped Hann frames: plenty for noise shaping, and twice as fast as 4x overlap
WAVETABLE_SIZE = 4096
Params = dict


@dataclass(frozen=True)
class Family:
    name: str
    draw: Callable[[np.random.Generator], Params]
    render: Callable[[Params, np.random.Generator, int], np.ndarray]


# ---------------------------------------------------------------- building blocks


def _count(seconds: float, sr: int) -> int:
    return max(1, int(round(seconds * sr)))


def _times(seconds: float, sr: int) -> np.ndarray:
    return np.arange(_count(seconds, sr)) / sr


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 1e-12 else x


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to n samples."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _grid(n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequency [F, 1] and time [1, T] axes of the STFT frames covering n samples."""
    frames = n // STFT_HOP + 1
    return np.fft.rfftfreq(STFT_SIZE, 1.0 / sr)[:, None], (np.arange(frames) * STFT_HOP / sr)[None, :]


def shaped_noise(rng: np.random.Generator, n: int, sr: int, gain: Callable) -> np.ndarray:
    """Noise whose magnitude at frequency f and time t (both in Hz / s) is gain(f [F,1], t [1,T]); unit RMS.

    The one way every family colours and sweeps noise: random STFT frames times a mask, overlap-added.
    """
    f, t = _grid(n, sr)
    g = np.broadcast_to(gain(f, t), (f.shape[0], t.shape[1]))
    spectrum = g * (rng.standard_normal(g.shape) + 1j * rng.standard_normal(g.shape))
    _, x = istft(spectrum, fs=sr, nperseg=STFT_SIZE, noverlap=STFT_SIZE - STFT_HOP)
    return _unit_rms(_fit(x, n))


def time_varying_filter(x: np.ndarray, sr: int, gain: Callable) -> np.ndarray:
    """x (any leading shape, samples last) through the magnitude response gain(f [F,1], t [1,T])."""
    n = x.shape[-1]
    _, _, spectrum = stft(x, fs=sr, nperseg=STFT_SIZE, noverlap=STFT_SIZE - STFT_HOP)
    f = np.fft.rfftfreq(STFT_SIZE, 1.0 / sr)[:, None]
    t = (np.arange(spectrum.shape[-1]) * STFT_HOP / sr)[None, :]
    _, y = istft(spectrum * gain(f, t), fs=sr, nperseg=STFT_SIZE, noverlap=STFT_SIZE - STFT_HOP)
    return _fit(y, n)


def kernel_filter(kernel: np.ndarray, sr: int, gain: Callable) -> np.ndarray:
    """A short kernel through the static magnitude response gain(f), with room for the filter's ring."""
    size = kernel.size + STFT_SIZE
    spectrum = np.fft.rfft(kernel, size) * gain(np.fft.rfftfreq(size, 1.0 / sr))
    return np.fft.irfft(spectrum, size)


def band(f: np.ndarray, center: np.ndarray | float, octaves: float) -> np.ndarray:
    """Gaussian band-pass on a log-frequency axis, `octaves` wide (one standard deviation)."""
    ratio = np.log2(np.maximum(f, 1.0) / np.maximum(center, 1.0))
    return np.exp(-0.5 * (ratio / octaves) ** 2)


def lowpass(f: np.ndarray, cutoff: np.ndarray | float, order: int = 2) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / np.maximum(cutoff, 1.0)) ** (2 * order))


def highpass(f: np.ndarray, cutoff: np.ndarray | float, order: int = 2) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (np.maximum(cutoff, 1.0) / np.maximum(f, 1.0)) ** (2 * order))


def tilt(f: np.ndarray, db_per_octave: float) -> np.ndarray:
    """Spectral slope: -3 dB/oct is pink, -6 dB/oct brown, 0 white (referenced to 1 kHz)."""
    return (np.maximum(f, 20.0) / 1000.0) ** (db_per_octave / 6.02)


def smooth_random(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """A slow random curve in about [-1, 1] that changes `rate_hz` times a second (cubic-ish interpolation)."""
    points = max(4, int(n / sr * rate_hz) + 4)
    knots = rng.uniform(-1.0, 1.0, points)
    x = np.linspace(0, points - 3, n)
    i = np.floor(x).astype(int)
    u = x - i
    u = u * u * (3 - 2 * u)
    return knots[i + 1] * (1 - u) + knots[i + 2] * u


def oscillator(freq: np.ndarray, sr: int, wave: str = "sine", phase0: float = 0.0) -> np.ndarray:
    """Oscillator following a per-sample frequency curve (Hz), band-limited for its highest frequency."""
    phase = (np.cumsum(freq) / sr + phase0 / (2 * np.pi)) % 1.0
    harmonics = max(1, min(60, int(sr / 2 / max(float(np.max(freq)), 1.0))))
    table = _wavetable(wave, harmonics)
    position = phase * WAVETABLE_SIZE
    i = position.astype(np.int64)
    frac = position - i
    return table[i] * (1 - frac) + table[i + 1] * frac


@cache
def _wavetable(wave: str, harmonics: int) -> np.ndarray:
    """One cycle (plus a wrap-around sample) of a sine, saw, square or triangle with `harmonics` partials."""
    phase = 2 * np.pi * np.arange(WAVETABLE_SIZE + 1) / WAVETABLE_SIZE
    if wave == "sine":
        return np.sin(phase)
    table = np.zeros_like(phase)
    for k in range(1, harmonics + 1):
        if wave == "saw":
            table += np.sin(k * phase) / k
        elif wave == "square" and k % 2:
            table += np.sin(k * phase) / k
        elif wave == "triangle" and k % 2:
            table += (-1) ** ((k - 1) // 2) * np.sin(k * phase) / k**2
    return table / np.max(np.abs(table))


def pan(x: np.ndarray, position: np.ndarray | float) -> np.ndarray:
    """Constant-power pan of a mono signal; position -1 (left) .. 1 (right), scalar or per sample."""
    angle = (np.asarray(position) + 1.0) * np.pi / 4
    return np.stack([x * np.cos(angle), x * np.sin(angle)])


def mid_side(mid: np.ndarray, side: np.ndarray, width: float) -> np.ndarray:
    """Stereo from a mid signal and an uncorrelated side signal scaled by `width` (0 mono .. 1 wide)."""
    return np.stack([mid + width * side, mid - width * side])


def reverb(rng: np.random.Generator, x: np.ndarray, sr: int, decay_s: float, mix: float) -> np.ndarray:
    """Stereo reverb by convolution with decaying noise (a different tail per side, for width)."""
    t = _times(decay_s * 1.2, sr)
    envelope = np.exp(-6.9 * t / decay_s)  # -60 dB at decay_s
    wet = []
    for channel in range(2):
        ir = rng.standard_normal(t.size) * envelope
        ir[: int(0.01 * sr)] *= np.linspace(0, 1, int(0.01 * sr))  # a soft onset: no comb from a direct spike
        ir /= np.sqrt(np.sum(ir**2))
        wet.append(oaconvolve(x[channel % x.shape[0]], ir)[: x.shape[-1]])
    return (1 - mix) * x + mix * np.stack(wet)


def fade(x: np.ndarray, sr: int, fade_in: float = 0.005, fade_out: float = 0.02) -> np.ndarray:
    n = x.shape[-1]
    a, b = min(n, max(1, int(fade_in * sr))), min(n, max(1, int(fade_out * sr)))
    g = np.ones(n)
    g[:a] = np.linspace(0, 1, a)
    g[n - b :] *= np.linspace(1, 0, b)
    return x * g


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


# ---------------------------------------------------------------- families


def draw_riser(rng):
    return {
        "seconds": _r(rng.uniform(2.0, 7.0), 2),
        "start_hz": _r(rng.uniform(150, 500), 1),
        "end_hz": _r(rng.uniform(3000, 10000), 1),
        "tone": bool(rng.random() < 0.5),
        "tone_midi": int(rng.integers(36, 61)),
        "octaves": int(rng.integers(1, 4)),
        "curve": _r(rng.uniform(1.0, 3.0)),
        "width": _r(rng.uniform(0.2, 0.9)),
    }


def render_riser(p, rng, sr):
    n = _count(p["seconds"], sr)
    u = np.arange(n) / n
    span = p["end_hz"] / p["start_hz"]

    def center(t):
        return p["start_hz"] * span ** ((t / p["seconds"]).clip(0, 1) ** p["curve"])

    def gain(f, t):
        return band(f, center(t), 0.7) * (t / p["seconds"]).clip(0, 1) ** 1.5

    x = mid_side(shaped_noise(rng, n, sr, gain), shaped_noise(rng, n, sr, gain), p["width"])
    if p["tone"]:
        freq = 440 * 2 ** ((p["tone_midi"] - 69) / 12) * 2 ** (p["octaves"] * u ** p["curve"])
        voices = [oscillator(freq * 2 ** (d / 1200), sr, "saw", rng.uniform(0, 6.3)) for d in (-12, 0, 12)]
        tone = pan(voices[0], -0.5) + pan(voices[1], 0.0) + pan(voices[2], 0.5)
        x = x + 0.6 * _unit_rms(tone) * u**1.2
    return fade(x, sr, 0.05, 0.01)


def draw_impact(rng):
    return {
        "seconds": _r(rng.uniform(1.5, 5.0), 2),
        "sub_hz": _r(rng.uniform(38, 75), 1),
        "drop": _r(rng.uniform(0.4, 0.75)),
        "crack": _r(rng.uniform(0.0, 1.0)),
        "tail_s": _r(rng.uniform(0.8, 3.5), 2),
        "body_hz": _r(rng.uniform(150, 900), 1),
    }


def render_impact(p, rng, sr):
    t = _times(p["seconds"], sr)
    n = t.size
    freq = p["sub_hz"] * (p["drop"] + (1 - p["drop"]) * np.exp(-t / 0.08))
    sub = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.7)
    body = shaped_noise(rng, n, sr, lambda f, tt: lowpass(f, p["body_hz"], 2) * np.exp(-tt / 0.25))
    crack = shaped_noise(rng, n, sr, lambda f, tt: band(f, 3000, 1.2) * np.exp(-tt / 0.03))
    mono = 1.2 * sub + 0.6 * body + p["crack"] * 0.8 * crack
    x = reverb(rng, np.stack([mono, mono]), sr, p["tail_s"], 0.35)
    return fade(x, sr, 0.001, 0.1)


def draw_whoosh(rng):
    side = float(rng.choice([-1.0, 1.0]))
    return {
        "seconds": _r(rng.uniform(1.0, 3.5), 2),
        "peak_hz": _r(rng.uniform(500, 3500), 1),
        "sweep_octaves": _r(rng.uniform(1.0, 3.0)),
        "peak_at": _r(rng.uniform(0.35, 0.7)),
        "pan_from": _r(side * rng.uniform(0.3, 1.0)),
        "pan_to": _r(-side * rng.uniform(0.3, 1.0)),
        "sharpness": _r(rng.uniform(0.3, 0.8)),
    }


def render_whoosh(p, rng, sr):
    n = _count(p["seconds"], sr)

    def u(t):
        return (t / p["seconds"]).clip(0, 1)

    def hump(t):
        return np.exp(-0.5 * ((u(t) - p["peak_at"]) / (0.18 * (1.2 - p["sharpness"]))) ** 2)

    def center(t):
        return p["peak_hz"] * 2 ** (-p["sweep_octaves"] * np.abs(u(t) - p["peak_at"]) * 2)

    mono = shaped_noise(rng, n, sr, lambda f, t: band(f, center(t), 0.8) * hump(t))
    position = np.linspace(p["pan_from"], p["pan_to"], n)
    return fade(pan(mono, position), sr)


def draw_drone(rng):
    return {
        "seconds": _r(rng.uniform(4.0, 10.0), 2),
        "midi": int(rng.integers(28, 58)),
        "chord": str(rng.choice(["fifth", "octave", "minor", "major", "unison"])),
        "detune_cents": _r(rng.uniform(3, 15), 1),
        "cutoff_hz": _r(rng.uniform(300, 3000), 1),
        "lfo_hz": _r(rng.uniform(0.05, 0.3)),
        "wave": str(rng.choice(["saw", "triangle", "square"])),
    }


DRONE_CHORDS = {
    "fifth": (0, 7, 12),
    "octave": (0, 12),
    "minor": (0, 3, 7),
    "major": (0, 4, 7),
    "unison": (0,),
}


def render_drone(p, rng, sr):
    t = _times(p["seconds"], sr)
    f0 = 440 * 2 ** ((p["midi"] - 69) / 12)
    left, right = np.zeros(t.size), np.zeros(t.size)
    for interval in DRONE_CHORDS[p["chord"]]:
        for side, sign in ((left, -1), (right, 1)):
            cents = sign * p["detune_cents"] + rng.uniform(-2, 2)
            side += oscillator(
                np.full(t.size, f0 * 2 ** ((interval * 100 + cents) / 1200)),
                sr,
                p["wave"],
                rng.uniform(0, 6.3),
            )
    lfo = 0.5 + 0.5 * np.sin(2 * np.pi * p["lfo_hz"] * t + rng.uniform(0, 6.3))

    def cutoff(f, tt):
        return lowpass(f, p["cutoff_hz"] * 2 ** (np.interp(tt, t, lfo) - 0.5), 2)

    x = time_varying_filter(np.stack([left, right]), sr, cutoff)
    return fade(x, sr, min(1.5, p["seconds"] / 4), min(1.5, p["seconds"] / 4))


def draw_zap(rng):
    shots = int(rng.integers(1, 6))
    shot = _r(rng.uniform(0.08, 0.5))
    gap = _r(rng.uniform(0.05, 0.4))
    return {
        "seconds": _r(max(1.0, shots * (shot + gap) + 0.5), 2),
        "shots": shots,
        "shot_s": shot,
        "gap_s": gap,
        "start_hz": _r(rng.uniform(1500, 6000), 1),
        "end_hz": _r(rng.uniform(80, 600), 1),
        "ratio": _r(rng.choice([0.5, 1.0, 1.5, 2.0, 3.0, 3.5])),
        "index": _r(rng.uniform(1.0, 8.0), 2),
    }


def render_zap(p, rng, sr):
    n = _count(p["seconds"], sr)
    out = np.zeros((2, n))
    length = _count(p["shot_s"], sr)
    t = np.arange(length) / sr
    for k in range(p["shots"]):
        freq = p["end_hz"] + (p["start_hz"] - p["end_hz"]) * np.exp(-t / (p["shot_s"] / 4))
        phase = 2 * np.pi * np.cumsum(freq) / sr
        envelope = np.exp(-t / (p["shot_s"] / 2.5))
        shot = np.sin(phase + p["index"] * envelope * np.sin(p["ratio"] * phase)) * envelope
        start = int(round(k * (p["shot_s"] + p["gap_s"]) * sr))
        out[:, start : start + length] += pan(fade(shot, sr, 0.001, 0.01), rng.uniform(-0.6, 0.6))[
            :, : n - start
        ]
    return reverb(rng, out, sr, 0.6, 0.15)


def draw_wind(rng):
    return {
        "seconds": _r(rng.uniform(3.0, 10.0), 2),
        "center_hz": _r(rng.uniform(250, 1200), 1),
        "gustiness": _r(rng.uniform(0.2, 1.0)),
        "howl": _r(rng.uniform(0.0, 1.0)),
        "width": _r(rng.uniform(0.4, 1.0)),
    }


def render_wind(p, rng, sr):
    n = _count(p["seconds"], sr)
    frames = n // STFT_HOP + 1
    gust = smooth_random(rng, frames, int(sr / STFT_HOP), 0.6) * p["gustiness"]
    bandwidth = 1.2 - 0.9 * p["howl"]

    def gain(f, t):
        return band(f, p["center_hz"] * 2 ** (0.8 * gust), bandwidth) * 10 ** (gust / 1.5)

    def rumble(f, t):
        return 0.3 * lowpass(f, 200, 2) * 10 ** (gust / 2.5)

    mid = shaped_noise(rng, n, sr, lambda f, t: gain(f, t) + rumble(f, t))
    side = shaped_noise(rng, n, sr, gain)
    return fade(mid_side(mid, side, p["width"]), sr, 0.5, 0.5)


def draw_rain(rng):
    drops = float(np.exp(rng.uniform(np.log(40), np.log(1200))))
    return {
        "seconds": _r(rng.uniform(3.0, 10.0), 2),
        "drops_per_s": _r(drops, 1),
        "intensity": "light" if drops < 150 else ("steady" if drops < 500 else "heavy"),
        "distance_hz": _r(rng.uniform(2000, 12000), 1),
        "plink": _r(rng.uniform(0.0, 1.0)),
    }


def render_rain(p, rng, sr):
    n = _count(p["seconds"], sr)
    bed = shaped_noise(rng, n, sr, lambda f, t: tilt(f, -3) * lowpass(f, p["distance_hz"], 2))
    t = np.arange(int(0.03 * sr)) / sr

    def drop_filter(f):
        return lowpass(f, p["distance_hz"], 1) * highpass(f, 400)

    kernels = []  # several drop sounds, so no one plink pitch turns into a tone
    for _ in range(4):
        drop = np.exp(-t / rng.uniform(0.0008, 0.003)) * rng.standard_normal(t.size)
        plink = np.sin(2 * np.pi * rng.uniform(1200, 5000) * t * (1 + 8 * t)) * np.exp(-t / 0.006)
        kernels.append(kernel_filter(drop + 0.5 * p["plink"] * plink, sr, drop_filter))
    impulses = np.zeros((len(kernels), 2, n))  # which drop sound, which side, when
    count = rng.poisson(p["drops_per_s"] * p["seconds"] * 2)
    impulses[rng.integers(0, len(kernels), count), rng.integers(0, 2, count), rng.integers(0, n, count)] += (
        rng.lognormal(0, 0.7, count)
    )
    hits = oaconvolve(impulses, np.stack(kernels)[:, None, :], axes=-1).sum(axis=0)[:, :n]
    out = 0.6 * np.stack([_unit_rms(side) for side in hits]) + 0.5 * bed
    return fade(out, sr, 0.3, 0.3)


def draw_noise_sweep(rng):
    up = bool(rng.random() < 0.5)
    low, high = float(rng.uniform(80, 400)), float(rng.uniform(3000, 14000))
    return {
        "seconds": _r(rng.uniform(1.0, 6.0), 2),
        "filter": str(rng.choice(["lowpass", "highpass", "bandpass"])),
        "direction": "up" if up else "down",
        "from_hz": _r(low if up else high, 1),
        "to_hz": _r(high if up else low, 1),
        "color": str(rng.choice(["white", "pink", "brown"])),
        "resonance": _r(rng.uniform(0.0, 1.0)),
    }


NOISE_TILT = {"white": 0.0, "pink": -3.0, "brown": -6.0}


def render_noise_sweep(p, rng, sr):
    n = _count(p["seconds"], sr)

    def cutoff(t):
        return p["from_hz"] * (p["to_hz"] / p["from_hz"]) ** (t / p["seconds"]).clip(0, 1)

    shapes = {"lowpass": lowpass, "highpass": highpass, "bandpass": lambda f, c: band(f, c, 0.6)}
    shape = shapes[p["filter"]]

    def gain(f, t):
        resonance = 2.0 * p["resonance"] * band(f, cutoff(t), 0.12)
        return tilt(f, NOISE_TILT[p["color"]]) * (shape(f, cutoff(t)) + resonance)

    x = mid_side(shaped_noise(rng, n, sr, gain), shaped_noise(rng, n, sr, gain), 0.5)
    return fade(x, sr, 0.05, 0.05)


def draw_engine(rng):
    return {
        "seconds": _r(rng.uniform(2.0, 8.0), 2),
        "kind": str(rng.choice(["car", "motorbike", "truck", "boat"])),
        "idle_hz": _r(rng.uniform(12, 45), 1),
        "motion": str(rng.choice(["idle", "revving", "accelerating", "slowing"])),
        "rev_ratio": _r(rng.uniform(1.5, 3.5)),
        "roughness": _r(rng.uniform(0.1, 0.8)),
        "cutoff_hz": _r(rng.uniform(600, 3000), 1),
    }


def render_engine(p, rng, sr):
    t = _times(p["seconds"], sr)
    u = t / p["seconds"]
    curves = {
        "idle": np.zeros_like(u),
        "revving": np.clip(np.sin(np.pi * np.clip((u - 0.2) / 0.5, 0, 1)), 0, 1),
        "accelerating": u**1.3,
        "slowing": (1 - u) ** 1.3,
    }
    rpm = p["idle_hz"] * p["rev_ratio"] ** curves[p["motion"]]
    rpm = rpm * (1 + 0.02 * smooth_random(rng, t.size, sr, 3.0))
    phase = np.cumsum(rpm) / sr
    jitter = 1 + p["roughness"] * rng.uniform(-0.5, 0.5, int(phase[-1]) + 2)[phase.astype(int)]
    pulses = np.exp(-(phase % 1.0) / 0.12) * jitter
    exhaust = shaped_noise(rng, t.size, sr, lambda f, tt: lowpass(f, 1500, 1)) * pulses * p["roughness"]
    mono = np.tanh(2.0 * _unit_rms(pulses - pulses.mean() + 0.5 * exhaust))
    mono = time_varying_filter(mono, sr, lambda f, tt: lowpass(f, p["cutoff_hz"], 2) * highpass(f, 25))
    side = shaped_noise(rng, t.size, sr, lambda f, tt: lowpass(f, p["cutoff_hz"], 2)) * np.abs(mono)
    return fade(mid_side(mono, side, 0.4), sr, 0.1, 0.2)


def draw_alarm(rng):
    f1 = float(rng.uniform(450, 1400))
    return {
        "seconds": _r(rng.uniform(1.5, 6.0), 2),
        "style": str(rng.choice(["beeping", "two-tone", "wailing", "whooping"])),
        "f1_hz": _r(f1, 1),
        "f2_hz": _r(f1 * rng.uniform(1.15, 1.6), 1),
        "rate_hz": _r(rng.uniform(1.0, 6.0), 2),
        "wave": str(rng.choice(["sine", "square", "triangle"])),
        "pan": _r(rng.uniform(-0.4, 0.4)),
    }


def render_alarm(p, rng, sr):
    t = _times(p["seconds"], sr)
    f1, f2, rate = p["f1_hz"], p["f2_hz"], p["rate_hz"]
    gate = np.ones_like(t)
    if p["style"] == "beeping":
        freq = np.full_like(t, f1)
        gate = ((t * rate) % 1.0 < 0.5).astype(float)
    elif p["style"] == "two-tone":
        freq = np.where((t * rate / 2) % 1.0 < 0.5, f1, f2)
    elif p["style"] == "wailing":
        freq = f1 + (f2 - f1) * (0.5 - 0.5 * np.cos(2 * np.pi * t * rate / 6))
    else:
        freq = f1 * (f2 / f1) ** ((t * rate / 2) % 1.0)
    gate = np.convolve(gate, np.ones(int(0.004 * sr)) / int(0.004 * sr), mode="same")  # click-free edges
    mono = oscillator(freq, sr, p["wave"]) * gate
    x = reverb(rng, pan(mono, p["pan"]), sr, 0.8, 0.12)
    return fade(x, sr, 0.005, 0.05)


BELL_PARTIALS = (
    (0.5, 0.5),
    (1.0, 1.0),
    (1.19, 0.6),
    (1.5, 0.4),
    (2.0, 0.6),
    (2.52, 0.3),
    (2.66, 0.25),
    (3.01, 0.2),
    (4.1, 0.12),
    (5.4, 0.08),
)


def draw_bell(rng):
    strikes = int(rng.integers(1, 4))
    return {
        "seconds": _r(rng.uniform(2.0, 8.0), 2),
        "midi": int(rng.integers(55, 91)),
        "strikes": strikes,
        "strike_gap_s": _r(rng.uniform(0.4, 1.5)),
        "decay_s": _r(rng.uniform(1.0, 6.0), 2),
        "material": str(rng.choice(["metal", "glass"])),
        "pan": _r(rng.uniform(-0.5, 0.5)),
    }


def render_bell(p, rng, sr):
    t = _times(p["seconds"], sr)
    f0 = 440 * 2 ** ((p["midi"] - 69) / 12)
    partials = (
        BELL_PARTIALS if p["material"] == "metal" else ((1.0, 1.0), (2.76, 0.4), (5.4, 0.25), (8.93, 0.1))
    )
    tone = np.zeros_like(t)
    for k, (ratio, amp) in enumerate(partials):
        freq = f0 * ratio * (1 + rng.uniform(-0.002, 0.002))
        if freq > sr / 2.2:
            continue
        beat = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t)
        tone += (
            amp
            * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
            * np.exp(-t / (p["decay_s"] / (1 + 0.5 * k)))
            * beat
        )
    out = np.zeros_like(t)
    for s in range(p["strikes"]):
        start = int(s * p["strike_gap_s"] * sr)
        if start < t.size:
            out[start:] += tone[: t.size - start] * (0.8**s)
    x = reverb(rng, pan(out, p["pan"]), sr, min(3.0, p["decay_s"]), 0.2)
    return fade(x, sr, 0.001, 0.2)


UI_PATTERNS = {
    "confirm": (0, 7),
    "error": (0, -6),
    "notify": (0, 4, 7),
    "click": (0,),
    "message": (0, 5, 12),
    "tick": (0, 0),
}


def draw_ui_blip(rng):
    pattern = str(rng.choice(list(UI_PATTERNS)))
    return {
        "seconds": 1.0,
        "pattern": pattern,
        "midi": int(rng.integers(67, 96)),
        "note_s": _r(rng.uniform(0.03, 0.14)),
        "wave": str(rng.choice(["sine", "square", "triangle"])),
        "pan": _r(rng.uniform(-0.3, 0.3)),
    }


def render_ui_blip(p, rng, sr):
    n = _count(p["seconds"], sr)
    mono = np.zeros(n)
    length = _count(p["note_s"], sr)
    t = np.arange(length) / sr
    for k, step in enumerate(UI_PATTERNS[p["pattern"]]):
        freq = np.full(length, 440 * 2 ** ((p["midi"] + step - 69) / 12))
        note = fade(oscillator(freq, sr, p["wave"]) * np.exp(-t / (p["note_s"] / 2)), sr, 0.002, 0.01)
        start = int(k * p["note_s"] * 1.15 * sr)
        mono[start : start + length] += note[: n - start]
    return reverb(rng, pan(mono, p["pan"]), sr, 0.4, 0.1)


def draw_thunder(rng):
    return {
        "seconds": _r(rng.uniform(4.0, 10.0), 2),
        "distance": str(rng.choice(["near", "distant"])),
        "rumbles": int(rng.integers(2, 7)),
        "cutoff_hz": _r(rng.uniform(150, 600), 1),
    }


def render_thunder(p, rng, sr):
    n = _count(p["seconds"], sr)
    frames = n // STFT_HOP + 1
    frame_t = np.arange(frames) * STFT_HOP / sr
    envelope = np.zeros(frames)
    for k in range(p["rumbles"]):
        onset = rng.uniform(0.0, 0.5) if k == 0 else rng.uniform(0.2, 0.7) * p["seconds"]
        envelope += (
            rng.uniform(0.3, 1.0)
            * np.exp(-np.maximum(frame_t - onset, 0) / rng.uniform(0.5, 2.0))
            * (frame_t >= onset)
        )
    envelope = np.convolve(envelope, np.ones(8) / 8, mode="same")
    cutoff = p["cutoff_hz"] * (3.0 if p["distance"] == "near" else 1.0)

    def gain(f, t):
        return tilt(f, -6) * lowpass(f, cutoff, 2) * envelope

    x = mid_side(shaped_noise(rng, n, sr, gain), shaped_noise(rng, n, sr, gain), 0.7)
    if p["distance"] == "near":
        crack = shaped_noise(rng, n, sr, lambda f, t: tilt(f, -2) * np.exp(-t / 0.15) * (t > 0.02))
        x = x + 0.7 * np.stack([crack, crack])
    return fade(x, sr, 0.005, 0.5)


def draw_sub_drop(rng):
    return {
        "seconds": _r(rng.uniform(1.2, 4.0), 2),
        "start_hz": _r(rng.uniform(120, 300), 1),
        "end_hz": _r(rng.uniform(28, 50), 1),
        "drive": _r(rng.uniform(0.5, 3.0)),
        "noise": _r(rng.uniform(0.0, 0.6)),
    }


def render_sub_drop(p, rng, sr):
    t = _times(p["seconds"], sr)
    u = t / p["seconds"]
    freq = p["start_hz"] * (p["end_hz"] / p["start_hz"]) ** (u**0.6)
    tone = np.tanh(p["drive"] * oscillator(freq, sr)) / np.tanh(p["drive"]) * (1 - u) ** 0.5
    n = t.size
    sweep = shaped_noise(
        rng,
        n,
        sr,
        lambda f, tt: (
            band(f, 4000 * 0.05 ** (tt / p["seconds"]).clip(0, 1), 0.7) * np.exp(-tt / p["seconds"])
        ),
    )
    x = np.stack([tone, tone]) + p["noise"] * mid_side(sweep, np.roll(sweep, int(0.011 * sr)), 0.6)
    return fade(x, sr, 0.005, 0.05)


def draw_fire(rng):
    return {
        "seconds": _r(rng.uniform(3.0, 10.0), 2),
        "crackles_per_s": _r(rng.uniform(4, 60), 1),
        "roar": _r(rng.uniform(0.1, 1.0)),
        "size": str(rng.choice(["campfire", "fireplace", "bonfire"])),
    }


def render_fire(p, rng, sr):
    n = _count(p["seconds"], sr)
    roar_cut = {"campfire": 300, "fireplace": 200, "bonfire": 500}[p["size"]]
    flicker = 10 ** (0.3 * smooth_random(rng, n // STFT_HOP + 1, int(sr / STFT_HOP), 4.0))
    roar = shaped_noise(rng, n, sr, lambda f, t: tilt(f, -4) * lowpass(f, roar_cut, 2) * flicker)
    kernel = kernel_filter(
        np.exp(-np.arange(int(0.004 * sr)) / (0.0007 * sr)), sr, lambda f: highpass(f, 800, 2)
    )
    out = []
    for _ in range(2):
        impulses = np.zeros(n)
        count = rng.poisson(p["crackles_per_s"] * p["seconds"])
        impulses[rng.integers(0, n, count)] = rng.lognormal(0, 1.0, count) * rng.choice([-1, 1], count)
        pops = oaconvolve(impulses, kernel)[:n]
        out.append(_unit_rms(pops) + p["roar"] * roar)
    return fade(np.stack(out), sr, 0.3, 0.3)


def draw_bubbles(rng):
    return {
        "seconds": _r(rng.uniform(2.0, 8.0), 2),
        "bubbles_per_s": _r(rng.uniform(3, 40), 1),
        "low_hz": _r(rng.uniform(250, 700), 1),
        "high_hz": _r(rng.uniform(900, 2500), 1),
    }


def render_bubbles(p, rng, sr):
    n = _count(p["seconds"], sr)
    out = np.zeros((2, n))
    count = rng.poisson(p["bubbles_per_s"] * p["seconds"])
    for start in rng.integers(0, n, count):
        f0 = float(np.exp(rng.uniform(np.log(p["low_hz"]), np.log(p["high_hz"]))))
        tau = 2.5 / f0**0.7
        t = np.arange(min(int(6 * tau * sr), n - start)) / sr
        bubble = (
            np.sin(2 * np.pi * f0 * (t + 0.5 * t * t / (3 * tau))) * np.exp(-t / tau) * rng.uniform(0.2, 1.0)
        )
        out[:, start : start + t.size] += pan(bubble, rng.uniform(-0.8, 0.8))
    return fade(reverb(rng, out, sr, 0.5, 0.15), sr, 0.05, 0.1)


def draw_surf(rng):
    return {
        "seconds": _r(rng.uniform(5.0, 10.0), 2),
        "wave_period_s": _r(rng.uniform(3.0, 8.0), 2),
        "crash": _r(rng.uniform(0.3, 1.0)),
        "width": _r(rng.uniform(0.5, 1.0)),
    }


def render_surf(p, rng, sr):
    n = _count(p["seconds"], sr)
    offset = rng.uniform(0, p["wave_period_s"])

    def swell(t):
        return (0.5 - 0.5 * np.cos(2 * np.pi * (t + offset) / p["wave_period_s"])) ** (1 + 2 * p["crash"])

    def gain(f, t):
        return tilt(f, -3) * lowpass(f, 300 + 4000 * swell(t), 2) * (0.15 + swell(t))

    return fade(
        mid_side(shaped_noise(rng, n, sr, gain), shaped_noise(rng, n, sr, gain), p["width"]), sr, 0.5, 0.5
    )


def draw_glitch(rng):
    return {
        "seconds": _r(rng.uniform(1.0, 4.0), 2),
        "grain_s": _r(rng.uniform(0.02, 0.12)),
        "density": _r(rng.uniform(0.4, 1.0)),
        "bits": int(rng.integers(3, 9)),
    }


def render_glitch(p, rng, sr):
    n = _count(p["seconds"], sr)
    out = np.zeros((2, n))
    grain = _count(p["grain_s"], sr)
    position = 0
    while position < n:
        length = grain * int(rng.integers(1, 4))
        if rng.random() < p["density"]:
            t = np.arange(length) / sr
            kind = rng.integers(0, 3)
            if kind == 0:
                piece = oscillator(np.full(length, rng.uniform(100, 3000)), sr, "square")
            elif kind == 1:
                piece = rng.standard_normal(length)
            else:
                piece = np.sin(2 * np.pi * rng.uniform(200, 2000) * t * (1 + 20 * t))
            steps = 2 ** p["bits"]
            piece = np.round(np.clip(piece, -1, 1) * steps / 2) / (steps / 2)
            repeats = int(rng.integers(1, 4))
            piece = np.tile(fade(piece, sr, 0.001, 0.002), repeats)[: n - position]
            out[:, position : position + piece.size] += pan(piece, rng.uniform(-0.8, 0.8))
            length = piece.size
        position += length
    return out


def draw_heartbeat(rng):
    return {
        "seconds": _r(rng.uniform(3.0, 8.0), 2),
        "bpm": _r(rng.uniform(50, 130), 1),
        "thump_hz": _r(rng.uniform(35, 65), 1),
    }


def render_heartbeat(p, rng, sr):
    n = _count(p["seconds"], sr)
    period = 60.0 / p["bpm"]
    t = np.arange(int(0.25 * sr)) / sr
    thump = np.sin(2 * np.pi * p["thump_hz"] * t) * (t / 0.012) * np.exp(1 - t / 0.012) * np.exp(-t / 0.06)
    mono = np.zeros(n)
    for beat in np.arange(0, p["seconds"], period):
        for delay, level in ((0.0, 1.0), (0.3 * period, 0.6)):
            start = int((beat + delay) * sr)
            if start < n:
                mono[start : start + t.size] += level * thump[: n - start]
    return reverb(rng, pan(mono, rng.uniform(-0.2, 0.2)), sr, 0.3, 0.15)


def draw_clock(rng):
    return {
        "seconds": _r(rng.uniform(2.0, 8.0), 2),
        "bpm": _r(float(rng.choice([60.0, 90.0, 120.0, 150.0, 180.0])) * rng.uniform(0.98, 1.02), 1),
        "tick_hz": _r(rng.uniform(1500, 5000), 1),
        "tock_ratio": _r(rng.uniform(0.6, 0.85)),
    }


def render_clock(p, rng, sr):
    n = _count(p["seconds"], sr)
    period = 60.0 / p["bpm"]
    t = np.arange(int(0.03 * sr)) / sr
    mono = np.zeros(n)
    for k, beat in enumerate(np.arange(0, p["seconds"], period)):
        freq = p["tick_hz"] * (1.0 if k % 2 == 0 else p["tock_ratio"])
        click = np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.003) + 0.3 * rng.standard_normal(
            t.size
        ) * np.exp(-t / 0.001)
        start = int(beat * sr)
        mono[start : start + t.size] += click[: n - start]
    return reverb(rng, pan(mono, rng.uniform(-0.3, 0.3)), sr, 0.5, 0.2)


FAMILIES: dict[str, Family] = {
    name: Family(name, globals()[f"draw_{name}"], globals()[f"render_{name}"])
    for name in (
        "riser", "impact", "whoosh", "drone", "zap", "wind", "rain", "noise_sweep", "engine", "alarm",
        "bell", "ui_blip", "thunder", "sub_drop", "fire", "bubbles", "surf", "glitch", "heartbeat", "clock",
    )
}  # fmt: skip


def draw_params(family: str, rng: np.random.Generator) -> Params:
    """A random parameter draw for one family, tagged with its name."""
    return {"family": family, **FAMILIES[family].draw(rng)}


def render(params: Params, rng: np.random.Generator, sample_rate: int = 44100) -> np.ndarray:
    """The family's sound for these params: float32 [2, round(seconds * sample_rate)], peak 0.9."""
    x = np.asarray(FAMILIES[params["family"]].render(params, rng, sample_rate), dtype=np.float64)
    x = _fit(x, _count(params["seconds"], sample_rate))
    assert x.shape[0] == 2 and np.isfinite(x).all(), f"{params['family']} rendered a bad buffer"
    peak = float(np.max(np.abs(x)))
    return (x * (0.9 / peak) if peak > 0 else x).astype(np.float32)
