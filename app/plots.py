"""Pictures of sounds for the studio: a waveform and a spectrogram per take, as one RGB image.

Matplotlib's object API (a `Figure` on the Agg canvas, never pyplot), so plots made on the server's
worker threads share no global state.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.audio import Audio

ROW_INCHES = 1.9
WIDTH_INCHES = 10.0
DPI = 80
MAX_WAVE_POINTS = 4000  # min/max envelope columns: enough for the image's width, cheap for long sounds


def waveform_and_spectrogram(takes: list[Audio], labels: list[str] | None = None) -> np.ndarray:
    """One row per take (waveform left, spectrogram right), as uint8 RGB [height, width, 3]."""
    assert takes, "at least one take to plot"
    labels = labels or [f"take {i + 1}" for i in range(len(takes))]
    fig = Figure(figsize=(WIDTH_INCHES, ROW_INCHES * len(takes)), dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(takes), 2, squeeze=False, width_ratios=[1, 1.3])
    for (wave_ax, spec_ax), audio, label in zip(axes, takes, labels):
        mono = audio.samples.mean(axis=0)
        _waveform(wave_ax, mono, audio.sample_rate)
        wave_ax.set_title(label, fontsize=9, loc="right")  # the left corner holds the app's label
        _spectrogram(spec_ax, mono, audio.sample_rate)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _waveform(ax, mono: np.ndarray, sample_rate: int) -> None:
    """A min/max envelope: every peak stays visible however long the sound is."""
    columns = max(1, min(MAX_WAVE_POINTS, mono.size))
    edges = np.linspace(0, mono.size, columns + 1).astype(int)
    lows = np.minimum.reduceat(mono, edges[:-1]) if mono.size else np.zeros(1)
    highs = np.maximum.reduceat(mono, edges[:-1]) if mono.size else np.zeros(1)
    times = edges[:-1] / sample_rate
    ax.fill_between(times, lows, highs, color="#3b6ea5", linewidth=0.5)
    ax.set_xlim(0, max(mono.size / sample_rate, 1e-3))
    ax.set_ylim(-1.0, 1.0)
    ax.set_xlabel("seconds", fontsize=8)
    ax.tick_params(labelsize=7)


def _spectrogram(ax, mono: np.ndarray, sample_rate: int) -> None:
    """Log-magnitude STFT in dB, 0 Hz at the bottom, up to 16 kHz where little of interest lies above."""
    n_fft = 1024
    hop = n_fft // 4
    if mono.size < n_fft:
        mono = np.pad(mono, (0, n_fft - mono.size))
    frames = 1 + (mono.size - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(mono[index] * np.hanning(n_fft), axis=1)).T
    db = 20 * np.log10(np.maximum(spectrum, 1e-6))
    top = db.max()
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    keep = freqs <= 16000
    ax.imshow(
        db[keep],
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=top - 80,
        vmax=top,
        extent=(0, mono.size / sample_rate, 0, freqs[keep][-1] / 1000),
    )
    ax.set_xlabel("seconds", fontsize=8)
    ax.set_ylabel("kHz", fontsize=8)
    ax.tick_params(labelsize=7)
