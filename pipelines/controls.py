"""Control channels: what the generator can be told per latent frame, measured from any audio.

Eight channels at the codec's latent rate, all from `pipelines.analysis.analyze_frames` (so a training
clip, a user's voice and a source track are measured the same way), on latent frame centres
(i + 0.5) / frame_rate, with fixed normalisations:

    loudness   (RMS dBFS + 80) / 80, clipped to 0..1.2        (0 = silence, 1 = 0 dBFS)
    onset      onset strength 0..1 (per clip, see analysis)
    log_f0     log2(f0 / 440) / 4 where voiced, 0 elsewhere   (+-1 = +-4 octaves around A4)
    voicing    voiced probability 0..1
    beat_sin   sin(2 pi beat phase), beat_cos cos(2 pi beat phase)
    bar_sin    sin(2 pi bar phase),  bar_cos  cos(2 pi bar phase)

Channels come in groups (`CONTROL_GROUPS`) that are present or absent together: loudness and onset are
always present (silence is a loudness too), pitch is absent when too few audible frames are voiced,
beat and bar are absent when the clip has no clear pulse (and no known grid was given). Absent
channels hold zeros and a zero presence mask; training drops groups at random so every control is
optional at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.analysis import FLOOR_DB, MIN_VOICED_FRACTION, analyze_frames
from pipelines.audio import Audio

CONTROL_NAMES = ("loudness", "onset", "log_f0", "voicing", "beat_sin", "beat_cos", "bar_sin", "bar_cos")
CONTROL_GROUPS = {"loudness": (0,), "onset": (1,), "pitch": (2, 3), "beat": (4, 5), "bar": (6, 7)}
LOUDNESS_MAX = 1.2  # a full-scale square wave is +3 dB RMS: room above 1 without unbounded values
# channel -> index of its group in CONTROL_GROUPS
_CHANNEL_GROUP = torch.tensor(
    [next(g for g, chs in enumerate(CONTROL_GROUPS.values()) if c in chs) for c in range(len(CONTROL_NAMES))]
)
AUDIBLE_RANGE_DB = 40.0  # frames this far below the clip's loudest count as silent when judging voicing


@dataclass
class Controls:
    """Control values float32 [8, T] (zeros where absent) and per-channel presence bool [8]."""

    values: np.ndarray
    present: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.values.shape[1])


def measure_controls(
    audio: Audio,
    n_frames: int,
    frame_rate: float,
    *,
    beats_s: np.ndarray | list[float] | None = None,
    bars_s: np.ndarray | list[float] | None = None,
) -> Controls:
    """The eight control channels of `audio` on `n_frames` latent frames centred at (i + 0.5) / frame_rate.

    Known beat and bar times (a rendered corpus clip, a grid the user set) replace the estimated pulse.
    """
    assert n_frames >= 1 and frame_rate > 0
    f = analyze_frames(audio, frame_rate, beats_s=beats_s, bars_s=bars_s)
    src = np.arange(len(f.loudness_db)) / f.frame_rate
    dst = (np.arange(n_frames) + 0.5) / frame_rate

    def at_frames(x: np.ndarray) -> np.ndarray:
        return np.interp(dst, src, x)

    loudness = np.clip((at_frames(f.loudness_db) - FLOOR_DB) / -FLOOR_DB, 0.0, LOUDNESS_MAX)
    onset = np.clip(at_frames(f.onset), 0.0, 1.0)
    # pitch between frames: the voiced neighbours' mean log-pitch (a voiced/unvoiced blend is not a pitch)
    voiced = (f.f0_hz > 0).astype(np.float64)
    log_f0 = np.log2(np.where(f.f0_hz > 0, f.f0_hz, 440.0) / 440.0) / 4.0
    weight = at_frames(voiced)
    log_f0 = np.where(weight > 0, at_frames(log_f0 * voiced) / np.maximum(weight, 1e-9), 0.0)
    voicing = np.clip(at_frames(f.voicing), 0.0, 1.0)
    values = np.stack(
        [loudness, onset, log_f0, voicing, *_pulse_rows(f.beat_phase, f.bar_phase, at_frames)]
    ).astype(np.float32)

    audible = f.loudness_db > max(float(f.loudness_db.max()) - AUDIBLE_RANGE_DB, FLOOR_DB + 1.0)
    voiced_audible = int(((f.f0_hz > 0) & audible).sum())
    groups = {
        "loudness": True,
        "onset": True,
        "pitch": bool(voiced_audible >= max(3, MIN_VOICED_FRACTION * audible.sum())),
        "beat": f.tempo_bpm is not None,
        "bar": f.tempo_bpm is not None and len(f.bars_s) > 0,
    }
    present = np.zeros(len(CONTROL_NAMES), dtype=bool)
    for name, channels in CONTROL_GROUPS.items():
        present[list(channels)] = groups[name]
    values[~present] = 0.0
    return Controls(values=values, present=present)


STEADY_SPREAD_SEMITONES = 1.0  # a steady pitch: the middle half of the voiced frames within one semitone
STEADY_VOICED_FRACTION = 0.3  # of the audible frames


def pitch_hint(midi: float, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [8, n_frames], mask [8, n_frames]) holding only a steady-pitch hint: log_f0 constant at `midi`
    on every frame, voicing absent (so where the sound is voiced, and how it decays, stay the model's call).

    Training gives it (the static recipe's `p_pitch_hint`) for clips with a steady pitch, at the semitone
    that pipelines.dit's pitch classes name; generation gives it where the pitch prior names a note.
    """
    values = torch.zeros(len(CONTROL_NAMES), n_frames)
    mask = torch.zeros(len(CONTROL_NAMES), n_frames)
    channel = CONTROL_NAMES.index("log_f0")
    values[channel] = (
        float(midi) - 69.0
    ) / 48.0  # log2(f0 / 440) / 4 with f0 = 440 * 2 ** ((midi - 69) / 12)
    mask[channel] = 1.0
    return values, mask


def beat_grid_controls(
    beats_s: np.ndarray | list[float], bars_s: np.ndarray | list[float], n_frames: int, frame_rate: float
) -> Controls:
    """Controls on `n_frames` latent frames whose beat and bar phases follow the given beat and bar times,
    measured by `measure_controls` on silence: only the beat and bar groups are present.
    The phases are computed as `measure_controls` computes them for a clip of that length with those
    beats given, without analysing any audio (a test holds the two equal): 12 s cost ~110 ms that way,
    paid by every generation with a new tempo.
    """
    from pipelines.analysis import ANALYSIS_RATE, BEATS_PER_BAR, given_pulse, pulse_phases

    assert n_frames >= 1 and frame_rate > 0
    # the length of silence that measure_controls would analyse, and analyze_frames' frame count for it
    samples = int(np.ceil(n_frames / frame_rate * ANALYSIS_RATE)) + 1
    analysed = math.ceil(samples / (ANALYSIS_RATE / frame_rate))
    beats, bars, tempo = given_pulse(beats_s, bars_s, BEATS_PER_BAR)
    beat_phase, bar_phase = pulse_phases(np.arange(analysed) / frame_rate, beats, bars, tempo, BEATS_PER_BAR)
    src = np.arange(analysed) / frame_rate
    dst = (np.arange(n_frames) + 0.5) / frame_rate
    values = np.zeros((len(CONTROL_NAMES), n_frames), np.float32)
    pulse = [*CONTROL_GROUPS["beat"], *CONTROL_GROUPS["bar"]]  # the rows _pulse_rows makes, in its order
    values[pulse] = np.stack(_pulse_rows(beat_phase, bar_phase, lambda x: np.interp(dst, src, x)))
    present = np.zeros(len(CONTROL_NAMES), dtype=bool)
    present[list(CONTROL_GROUPS["beat"])] = tempo is not None
    present[list(CONTROL_GROUPS["bar"])] = tempo is not None and len(bars) > 0
    values[~present] = 0.0
    return Controls(values=values, present=present)


def _pulse_rows(beat_phase: np.ndarray, bar_phase: np.ndarray, at_frames) -> list[np.ndarray]:
    """The beat and bar groups' four rows (sin and cos of each phase) on the latent frames."""
    beat = 2 * np.pi * at_frames(_unwrap(beat_phase))
    bar = 2 * np.pi * at_frames(_unwrap(bar_phase))
    return [np.sin(beat), np.cos(beat), np.sin(bar), np.cos(bar)]


def steady_pitch(values: np.ndarray | torch.Tensor, present: np.ndarray | torch.Tensor) -> float | None:
    """The MIDI pitch (fractional) a clip holds, from its control channels [8, T] and presence [8]; None
    when it holds no single steady pitch (unpitched, too little voiced, or a melody or chord).

    Voiced frames are those with voicing > 0.5 among the audible ones (loudness above silence); the pitch
    is their median, and it counts as steady when their inter-quartile range is within
    STEADY_SPREAD_SEMITONES and they make up STEADY_VOICED_FRACTION of the audible frames.
    """
    values, present = np.asarray(values, dtype=np.float64), np.asarray(present, dtype=bool)
    if not present[CONTROL_NAMES.index("log_f0")]:
        return None
    audible = values[CONTROL_NAMES.index("loudness")] > 0.05
    voiced = audible & (values[CONTROL_NAMES.index("voicing")] > 0.5)
    if voiced.sum() < 5 or voiced.sum() < STEADY_VOICED_FRACTION * audible.sum():
        return None
    midi = 69.0 + 48.0 * values[CONTROL_NAMES.index("log_f0")][voiced]
    low, median, high = np.percentile(midi, [25, 50, 75])
    return float(median) if high - low <= STEADY_SPREAD_SEMITONES else None


def _unwrap(phase: np.ndarray) -> np.ndarray:
    """A 0..1 sawtooth made monotonic (one added per wrap), so it can be interpolated between frames."""
    wraps = np.concatenate([[0], np.cumsum(np.diff(phase) < -0.5)])
    return phase.astype(np.float64) + wraps


def controls_to_tensor(controls: list[Controls]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack equally long Controls into (values [B, 8, T], presence mask [B, 8, T]) float32 tensors."""
    assert controls and len({c.frames for c in controls}) == 1, "controls must share one frame count"
    values = torch.from_numpy(np.stack([c.values for c in controls])).float()
    present = torch.from_numpy(np.stack([c.present for c in controls])).float()
    mask = present[:, :, None].expand_as(values).contiguous()
    return values * mask, mask


def drop_controls(
    values: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None,
    p_group: float,
    *,
    p_all: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time dropout: each group of each sample is hidden with probability `p_group`, and all of a
    sample's controls with probability `p_all` (values and mask become 0). Draws come from `generator`
    (None: torch's global generator), one [B] draw per group in CONTROL_GROUPS order, then one for p_all."""
    b = values.shape[0]
    dropped = torch.stack([torch.rand(b, generator=generator) < p_group for _ in CONTROL_GROUPS], dim=1)
    dropped |= (torch.rand(b, generator=generator) < p_all)[:, None]
    keep = (~dropped[:, _CHANNEL_GROUP]).to(values.dtype)[:, :, None]  # [B, 8, 1]
    return values * keep, mask * keep
