"""One definition of every measurement we take from audio: per-frame controls and per-clip descriptions.

Training clips, a user's voice and a source track all go through these functions, so what a model
learns to follow is exactly what users hand it. Everything is measured on a mono downmix at
22.05 kHz (pyin is slow; nothing we measure needs more bandwidth). librosa is imported inside the
functions that need it (pitch, onsets, beats, chroma), so `pipelines` imports without it and measuring
brightness never loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.audio import Audio, loudness_lufs, peak_db, resample, to_channels

ANALYSIS_RATE = 22050
F0_MIN_HZ = 30.0
F0_MAX_HZ = 2000.0
PYIN_FRAME = 2048  # 93 ms: two periods of F0_MIN_HZ fit in pyin's half-frame window
STFT_SIZE = 2048
FLOOR_DB = -80.0  # loudness of silence
BEAT_HOP = 256  # 11.6 ms onset frames for beat tracking, whatever the caller's frame rate
CLIP_HOP = 1024  # 46 ms frames for clip-level analysis: pyin costs about real time / 2 at this hop
ONSET_FLOOR = 2.0  # mean log-mel flux (dB) that counts as a full onset in a clip that has no stronger one
BEATS_PER_BAR = 4  # the default meter, for bars that are estimated rather than given
MIN_PULSE_CLARITY = 0.3  # onset autocorrelation at the beat period below this: no clear pulse
MIN_VOICED_FRACTION = 0.25  # of non-silent frames, for a clip to have a pitch
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MIN_KEY_CORRELATION = 0.6
KEY_FFT = 4096  # 5.4 Hz bins: semitones apart down to about 90 Hz


@dataclass
class FrameFeatures:
    """Per-frame controls (float32 arrays of length T) and the clip-level pulse they were measured with."""

    frame_rate: float
    loudness_db: np.ndarray  # RMS level in dBFS, FLOOR_DB for silence
    onset: np.ndarray  # onset strength, 0..1 per clip (divided by its maximum, or by ONSET_FLOOR if larger)
    f0_hz: np.ndarray  # 0 where unvoiced
    voicing: np.ndarray  # voiced probability 0..1
    beat_phase: np.ndarray  # 0..1 sawtooth, 0 on each beat
    bar_phase: np.ndarray  # 0..1 sawtooth, 0 on each downbeat
    brightness: np.ndarray  # spectral centroid in Hz
    tempo_bpm: float | None  # None when there is no clear pulse (the phases are then all zero)
    downbeat_s: float | None  # time of the first downbeat
    beats_s: np.ndarray  # beat times used for beat_phase (float64 seconds)
    bars_s: np.ndarray  # bar start times used for bar_phase


@dataclass
class ClipAnalysis:
    """What a clip is, in numbers: enough to caption it or to check a generator's output."""

    seconds: float
    loudness_lufs: float
    peak_db: float
    tempo_bpm: float | None
    f0_hz: float | None
    note: str | None
    key: str | None
    brightness_hz: float
    onset_count: int
    is_sustained: bool

    def describe(self) -> str:
        """Short caption words, e.g. "A3, sustained, dark, 4s" or "120 BPM, C minor, bright, 8s"."""
        words = []
        if self.note is not None:
            words.append(self.note)
        if self.tempo_bpm is not None:
            words.append(f"{self.tempo_bpm:.0f} BPM")
        if self.key is not None and self.note is None:
            words.append(self.key)
        words.append(
            "sustained" if self.is_sustained else ("rhythmic" if self.onset_count > 3 else "short hits")
        )
        brightness = brightness_word(self.brightness_hz)
        if brightness:
            words.append(brightness)
        words.append(loudness_word(self.loudness_lufs))
        words.append(f"{self.seconds:.0f}s" if self.seconds >= 1.5 else f"{self.seconds:.2g}s")
        return ", ".join(words)


# ---------------------------------------------------------------- words for numbers


def brightness_word(hz: float) -> str:
    """The word for a spectral centroid: dark, warm, "" (neutral), bright, very bright."""
    if hz < 600:
        return "dark"
    if hz < 1200:
        return "warm"
    if hz < 2500:
        return ""
    if hz < 5000:
        return "bright"
    return "very bright"


def loudness_word(lufs: float) -> str:
    if lufs < -30:
        return "quiet"
    if lufs < -16:
        return "moderate"
    return "loud"


def note_name(f0_hz: float) -> str:
    """Nearest equal-tempered note, e.g. 220.0 -> "A3"."""
    midi = int(round(hz_to_midi(f0_hz)))
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def hz_to_midi(hz: float | np.ndarray) -> float | np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(hz) / 440.0)


def midi_to_hz(midi: float | np.ndarray) -> float | np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


# ---------------------------------------------------------------- shared primitives


def analysis_mono(audio: Audio) -> np.ndarray:
    """The signal every measurement here reads: mono float32 at ANALYSIS_RATE, at least one STFT frame long."""
    y = resample(to_channels(audio, 1), ANALYSIS_RATE).samples[0]
    return np.pad(y, (0, max(0, STFT_SIZE - y.size)))


def _stft_magnitude(y: np.ndarray, hop: int) -> np.ndarray:
    """|STFT| [1 + STFT_SIZE // 2, 1 + len(y) // hop]: periodic Hann frames centred on k * hop, zero-padded.

    (librosa.stft's framing, in numpy, so that measuring brightness does not import librosa.)
    """
    from scipy.fft import rfft

    padded = np.pad(np.asarray(y, dtype=np.float32), (STFT_SIZE // 2, STFT_SIZE // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, STFT_SIZE)[::hop]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(STFT_SIZE) / STFT_SIZE)).astype(np.float32)
    out = np.empty((STFT_SIZE // 2 + 1, len(frames)), dtype=np.float32)
    for first in range(0, len(frames), 1024):  # blocks of frames bound the memory for long files
        block = frames[first : first + 1024]
        out[:, first : first + len(block)] = np.abs(rfft(block * window, axis=1)).T
    return out


def _centroid(magnitude: np.ndarray) -> np.ndarray:
    freqs = np.fft.rfftfreq(STFT_SIZE, 1.0 / ANALYSIS_RATE)[:, None]
    total = magnitude.sum(axis=0)
    return np.where(total > 1e-8, (freqs * magnitude).sum(axis=0) / np.maximum(total, 1e-8), 0.0)


def _rms_db(y: np.ndarray, hop: int) -> np.ndarray:
    import librosa

    rms = librosa.feature.rms(y=y, frame_length=max(STFT_SIZE, 2 * hop), hop_length=hop, center=True)[0]
    return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-10)), FLOOR_DB)


def _onset_envelope(magnitude: np.ndarray) -> np.ndarray:
    """Spectral flux of a log-mel spectrogram (librosa's onset strength) from a magnitude STFT."""
    import librosa

    mel = librosa.feature.melspectrogram(S=magnitude**2, sr=ANALYSIS_RATE, n_mels=64)
    return librosa.onset.onset_strength(S=librosa.power_to_db(mel, ref=1.0, top_db=80.0), sr=ANALYSIS_RATE)


def clip_brightness(audio: Audio) -> float:
    """Clip brightness in Hz: the spectral centroid of the clip's average magnitude spectrum.

    (The per-frame `brightness` control is the centroid of each frame's spectrum instead.)
    """
    magnitude = _stft_magnitude(analysis_mono(audio), CLIP_HOP)
    return float(_centroid(magnitude.mean(axis=1, keepdims=True))[0])


# ---------------------------------------------------------------- pulse


def _beats_from_onsets(onset_env: np.ndarray, hop: int) -> tuple[np.ndarray, float]:
    """Beat times (s) from librosa's beat tracker and the pulse clarity of the onset envelope at that period."""
    import librosa

    if onset_env.size < 8 or not np.any(onset_env > 0):
        return np.zeros(0), 0.0
    _, beats = librosa.beat.beat_track(
        onset_envelope=onset_env, sr=ANALYSIS_RATE, hop_length=hop, units="time"
    )
    if len(beats) < 4:
        return np.asarray(beats, dtype=np.float64), 0.0
    period_frames = float(np.median(np.diff(beats))) * ANALYSIS_RATE / hop
    x = onset_env - onset_env.mean()
    energy = float(np.dot(x, x))
    lag = int(round(period_frames))
    if energy <= 0 or lag < 1 or lag >= x.size:
        return np.asarray(beats, dtype=np.float64), 0.0
    # the best of the lags next to the period, since the period is not a whole number of frames
    clarity = max(float(np.dot(x[:-k], x[k:])) / energy for k in (lag - 1, lag, lag + 1) if 0 < k < x.size)
    return np.asarray(beats, dtype=np.float64), clarity


def tempo_from_beats(beats_s: np.ndarray) -> float:
    """Tempo in BPM from the least-squares slope of beat times against beat number (not frame-quantised)."""
    assert len(beats_s) >= 2
    index = np.arange(len(beats_s), dtype=np.float64)
    slope = np.polyfit(index, np.asarray(beats_s, dtype=np.float64), 1)[0]
    return 60.0 / float(slope)


def _downbeat_index(beats_s: np.ndarray, onset_env: np.ndarray, hop: int, beats_per_bar: int) -> int:
    """Which of the first `beats_per_bar` beats starts a bar: the one whose beats carry the most onset energy."""
    frames = np.clip(np.round(beats_s * ANALYSIS_RATE / hop).astype(int), 0, onset_env.size - 1)
    strength = onset_env[frames]
    scores = [strength[k::beats_per_bar].mean() if k < len(strength) else -1.0 for k in range(beats_per_bar)]
    return int(np.argmax(scores))


def _phase(times: np.ndarray, marks: np.ndarray, gap: float) -> np.ndarray:
    """0..1 sawtooth through `marks`, extended before the first and after the last with the end spacing.

    `gap` is the spacing to use when there is only one mark (a one-bar clip).
    """
    marks = np.asarray(marks, dtype=np.float64)
    if marks.size == 0:
        return np.zeros(times.shape, dtype=np.float32)
    if marks.size == 1:
        marks = np.array([marks[0], marks[0] + gap])
    first_gap, last_gap = marks[1] - marks[0], marks[-1] - marks[-2]
    before = marks[0] - first_gap * np.arange(
        math.ceil(max(marks[0] - times.min(), 0) / first_gap) + 1, 0, -1
    )
    after = marks[-1] + last_gap * np.arange(1, math.ceil(max(times.max() - marks[-1], 0) / last_gap) + 2)
    grid = np.concatenate([before, marks, after])
    i = np.clip(np.searchsorted(grid, times, side="right") - 1, 0, grid.size - 2)
    phase = (times - grid[i]) / (grid[i + 1] - grid[i])
    return np.clip(phase, 0.0, np.nextafter(1.0, 0.0)).astype(np.float32)


def given_pulse(
    beats_s: np.ndarray | list[float], bars_s: np.ndarray | list[float] | None, beats_per_bar: int
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(beats, bars, tempo) from known beat times (and bar times; every `beats_per_bar`-th beat when None)."""
    beats = np.asarray(beats_s, dtype=np.float64)
    tempo = tempo_from_beats(beats) if beats.size >= 2 else None
    bars = np.asarray(bars_s, dtype=np.float64) if bars_s is not None else beats[::beats_per_bar]
    return beats, bars, tempo


def pulse_phases(
    times: np.ndarray, beats: np.ndarray, bars: np.ndarray, tempo: float | None, beats_per_bar: int
) -> tuple[np.ndarray, np.ndarray]:
    """The beat and bar sawtooths at `times` (float32, zeros where there is no tempo)."""
    if tempo is None:
        return np.zeros(times.shape, np.float32), np.zeros(times.shape, np.float32)
    beat = float(np.median(np.diff(beats))) if len(beats) >= 2 else 0.0
    return _phase(times, beats, beat), _phase(times, bars, beat * beats_per_bar)


# ---------------------------------------------------------------- per frame


def frame_pitch(y: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """YIN f0 (Hz) and voicing (0/1) of a mono ANALYSIS_RATE signal, one per centred frame k * hop.

    The same torch YIN the codec uses (pipelines/harmonic.py): ~100x faster than pyin, which made
    measuring a corpus' controls cost about real time. Tracks are median-smoothed over 3 frames.
    """
    import torch

    from pipelines.harmonic import yin_f0

    x = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None]
    if x.shape[-1] <= PYIN_FRAME // 2:
        x = torch.nn.functional.pad(x, (0, PYIN_FRAME // 2 + 1 - x.shape[-1]))
    f0, voiced = yin_f0(
        x, n_fft=PYIN_FRAME, hop=hop, sample_rate=ANALYSIS_RATE, fmin=F0_MIN_HZ + 1, fmax=F0_MAX_HZ
    )
    f0, voiced = f0[0].numpy(), voiced[0].numpy()
    return median3(f0).astype(np.float32), median3(voiced).astype(np.float32)


def median3(x: np.ndarray) -> np.ndarray:
    """Median over each frame and its two neighbours (edges repeat, so the ends never wrap around)."""
    padded = np.pad(x, 1, mode="edge")
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def analyze_frames(
    audio: Audio,
    frame_rate: float,
    *,
    beats_s: np.ndarray | list[float] | None = None,
    bars_s: np.ndarray | list[float] | None = None,
    beats_per_bar: int = BEATS_PER_BAR,
    pitch: bool | str = True,
) -> FrameFeatures:
    """Per-frame controls at `frame_rate` Hz: T = ceil(n / (sample_rate / frame_rate)) frames, frame k at k/frame_rate s.

    Known beat and bar times (a rendered corpus clip, a grid the user set) replace the estimates;
    `beats_per_bar` is the meter used to find bars that are not given (and to extend a single bar).
    Pitch is the fast torch YIN of `frame_pitch` (controls: a corpus' worth must be cheap); `pitch="pyin"`
    uses librosa's pyin instead (clip descriptions and evaluation: slower, but a measurement that is not
    ours, with an HMM that rejects octave jumps). `pitch=False` skips pitch tracking and leaves f0 and voicing at zero.
    """
    import librosa

    assert frame_rate > 0
    n_frames = math.ceil(audio.frames / (audio.sample_rate / frame_rate))
    times = np.arange(n_frames) / frame_rate
    y = analysis_mono(audio)
    hop = max(1, int(round(ANALYSIS_RATE / frame_rate)))

    def feature_times(count):
        return np.arange(count) * hop / ANALYSIS_RATE

    def on_frames(values):
        return np.interp(times, feature_times(len(values)), values).astype(np.float32)

    magnitude = _stft_magnitude(y, hop)
    loudness = on_frames(_rms_db(y, hop))
    onset = _onset_envelope(magnitude)
    onset = on_frames(onset / max(float(onset.max()), ONSET_FLOOR))
    brightness = on_frames(_centroid(magnitude))

    if pitch:
        if pitch == "pyin":
            f0, _, voiced = librosa.pyin(
                y, fmin=F0_MIN_HZ, fmax=F0_MAX_HZ, sr=ANALYSIS_RATE, frame_length=PYIN_FRAME, hop_length=hop
            )
            f0 = np.nan_to_num(f0, nan=0.0)
        else:
            f0, voiced = frame_pitch(y, hop)
            f0 = f0 * voiced
        # nearest frame, not interpolation: a blend of a voiced and an unvoiced frame is no pitch at all
        index = np.clip(np.round(times * ANALYSIS_RATE / hop).astype(int), 0, len(f0) - 1)
        f0_hz = f0[index].astype(np.float32)
        voicing = voiced[index].astype(np.float32)
    else:
        f0_hz = np.zeros(n_frames, dtype=np.float32)
        voicing = np.zeros(n_frames, dtype=np.float32)

    if beats_s is not None:
        beats, bars, tempo = given_pulse(beats_s, bars_s, beats_per_bar)
    else:
        beat_env = _onset_envelope(_stft_magnitude(y, BEAT_HOP))
        beats, clarity = _beats_from_onsets(beat_env, BEAT_HOP)
        if len(beats) >= 4 and clarity >= MIN_PULSE_CLARITY:
            tempo = tempo_from_beats(beats)
            bars = beats[_downbeat_index(beats, beat_env, BEAT_HOP, beats_per_bar) :: beats_per_bar]
        else:
            tempo, beats, bars = None, np.zeros(0), np.zeros(0)
        if bars_s is not None:
            bars = np.asarray(bars_s, dtype=np.float64)
    beat_phase, bar_phase = pulse_phases(times, beats, bars, tempo, beats_per_bar)
    return FrameFeatures(
        frame_rate=float(frame_rate),
        loudness_db=loudness,
        onset=onset,
        f0_hz=f0_hz,
        voicing=voicing,
        beat_phase=beat_phase,
        bar_phase=bar_phase,
        brightness=brightness,
        tempo_bpm=tempo,
        downbeat_s=float(bars[0]) if len(bars) else None,
        beats_s=beats,
        bars_s=bars,
    )


# ---------------------------------------------------------------- per clip


def estimate_key(y: np.ndarray) -> str | None:
    """Major or minor key by correlating the clip's chroma with Krumhansl-Kessler profiles; None if unclear."""
    import librosa

    y = np.pad(y, (0, max(0, KEY_FFT - y.size)))
    chroma = librosa.feature.chroma_stft(
        y=y, sr=ANALYSIS_RATE, n_fft=KEY_FFT, hop_length=CLIP_HOP, tuning=0.0
    )
    profile = chroma.sum(axis=1)
    if profile.max() <= 0 or profile.std() < 1e-6:
        return None
    best, best_r = None, -1.0
    for mode, template in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            if r > best_r:
                best, best_r = f"{NOTE_NAMES[tonic]} {mode}", r
    return best if best_r >= MIN_KEY_CORRELATION else None


def analyze_clip(audio: Audio) -> ClipAnalysis:
    """Tempo, pitch, key, loudness, brightness and shape of a whole clip (runs pyin: about real time / 10)."""
    import librosa

    frames = analyze_frames(audio, ANALYSIS_RATE / CLIP_HOP, pitch="pyin")
    audible = frames.loudness_db > max(frames.loudness_db.max() - 40.0, FLOOR_DB + 1.0)
    voiced = (frames.f0_hz > 0) & audible
    f0 = note = None
    if audible.any() and voiced.sum() >= max(3, MIN_VOICED_FRACTION * audible.sum()):
        pitches = hz_to_midi(frames.f0_hz[voiced])
        f0 = float(midi_to_hz(np.median(pitches)))
        q25, q75 = np.percentile(pitches, [25, 75])
        if q75 - q25 < 1.0:  # one steady pitch: a note, not a melody
            note = note_name(f0)
    y = analysis_mono(audio)
    onsets = librosa.onset.onset_detect(onset_envelope=frames.onset, sr=ANALYSIS_RATE, hop_length=CLIP_HOP)
    near_peak = frames.loudness_db > frames.loudness_db.max() - 15.0
    sustained = bool(near_peak.mean() > 0.5 and len(onsets) <= max(1.0, audio.seconds))
    return ClipAnalysis(
        seconds=audio.seconds,
        loudness_lufs=loudness_lufs(audio),
        peak_db=peak_db(audio),
        tempo_bpm=frames.tempo_bpm,
        f0_hz=f0,
        note=note,
        key=estimate_key(y) if audible.any() else None,
        brightness_hz=clip_brightness(audio),
        onset_count=len(onsets),
        is_sustained=sustained,
    )
