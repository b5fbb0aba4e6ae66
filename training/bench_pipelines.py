"""`soundloom bench pipelines`: every figure of the creative-pipelines issue, measured by librosa.

The bench makes its own inputs (espeak-ng speech, synthetic hums, a SoundFont phrase with its MIDI
file, drum loops from the corpus' patterns), runs each pipeline three ways and measures the audio:
  - model_only: post-processing off (`post=False`): what the model made, decoded;
  - final: what a user gets (`post=True`);
  - masked: the negative control, the relevant inputs hidden from the model (`drop=...`, or no
    `keep` for style transfer), post-processing off. It must lose clearly against model_only. (For
    extend and repaint the masked run keeps the splice, post on: without known frames the raw decode
    has no seam to measure, so it is compared with final.)
Every figure is a librosa measurement (pyin, onsets, beat tracking, chroma, RMS) or a cosine in the
judge embedder's space (None without a judge: assets/judge or `judge=`). The statistics:
  - envelope correlation: Pearson r of the two RMS level envelopes in dBFS (2048-sample frames, hop
    512 at 22.05 kHz, floored at -80 dB) over all frames, silence included;
  - f0 following: pyin (50-1000 Hz) on both; on frames voiced in both, the cents between them folded
    to the nearest octave, c - 1200 round(c / 1200), so a cello an octave below the voice counts as
    following it; the median of |c|;
  - silence: the output's median level on the voice's silent frames (40 dB below its loudest) minus
    its median level on the others; "stays quiet" is <= -20 dB;
  - onset F-measure: librosa onsets (hop 256) matched one-to-one within 50 ms;
  - chroma similarity: mean frame-wise cosine of chroma_stft;
  - onset-to-grid deviation: median distance from each onset to the nearest sixteenth of the grid;
  - downbeat ratio: mean onset strength (max within 30 ms) on downbeats over that on other beats;
  - click statistic: the jump between two samples across a seam (the loop's wrap, an edit's
    boundary, a stream chunk's start), max over channels, divided by the 95th percentile of all the
    clip's sample-to-sample jumps: <= 1 passes ("no larger than the clip's typical jump");
  - loudness continuity: RMS level of the 250 ms before a seam against the 250 ms after it, each
    floored at -70 dBFS (silence on both sides is no step);
  - morph evenness: judge (and librosa-feature) distances between neighbouring alpha steps, their
    coefficient of variation.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.atomic_files import write_report
from pipelines.audio import Audio, load_audio, to_channels

ANALYSIS_SR = 22050
ONSET_HOP = 256
ONSET_WINDOW_S = 0.05
LEVEL_FLOOR_DB = -80.0
SILENT_BELOW_PEAK_DB = 40.0
QUIET_GAP_DB = -20.0
SEAM_WINDOW_S = 0.25
SILENCE_DB = -70.0  # the loudness-continuity floor: BS.1770's absolute gate (-70 LUFS), as dBFS RMS
CONTROL_MARGIN = 0.1  # "loses clearly": the masked control is at least this much worse (where no target says)
SPEECH = "Hello there. The quick brown fox jumps over the lazy dog, then rests."
ESPEAK_VOICES = ("en-us", "en-gb+f3", "en-us+m3")


@dataclass(frozen=True)
class Scale:
    """How much the bench generates; QUICK exists for tests (its figures mean little)."""

    seconds: float = 4.0  # length of the sources for transform, voice, extend and repaint
    strengths: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    seeds: int = 3
    bpms: tuple[float, ...] = (90.0, 120.0, 140.0)
    bars: int = 2
    stream_seconds: float = 120.0
    alphas: int = 5
    latency_runs: int = 5
    speech_voices: int = 3
    hums: int = 2
    voice_prompts: int = 3
    loop_prompts: int = 2
    morph_pairs: int = 2
    edit_sources: tuple[str, ...] = ("melody", "drums", "hum")


FULL = Scale()
QUICK = Scale(
    seconds=1.0,
    strengths=(0.0, 0.5, 1.0),
    seeds=1,
    bpms=(120.0,),
    bars=1,
    stream_seconds=3.0,
    alphas=3,
    latency_runs=1,
    speech_voices=1,
    hums=0,
    voice_prompts=1,
    loop_prompts=1,
    morph_pairs=1,
    edit_sources=("hum",),
)
TRANSFORM_CASES = (  # (source, what the source is, prompt)
    ("drums", "a rock drum loop", "a glassy marimba melody"),
    ("melody", "a piano melody", "a breathy flute melody"),
)
VOICE_PROMPTS = (("a soft flute", True), ("a warm cello", True), ("heavy rain on a roof", False))
LOOP_PROMPTS = ("a tight funk drum loop", "a house beat with claps and hats")
EDIT_PROMPT = "the same sound, continuing"
MORPH_PAIRS = (("rain on a tin roof", "a crackling fire"), ("a soft flute note", "a distorted bass"))


# ---------------------------------------------------------------- inputs the bench makes


def _notes(items):
    import pretty_midi

    return [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for s, e, p, v in items]


def drum_loop(bpm: float, seconds: float, *, lead_s: float = 0.0, pattern: str = "rock") -> Audio:
    """A GM drum kit playing one of the corpus' patterns at `bpm`, after `lead_s` of silence."""
    from training.corpus import DRUM_PATTERNS, GM_DRUMS
    from training.soundfonts import available_soundfonts, render_notes

    p = DRUM_PATTERNS[pattern]
    step_s = 60.0 / bpm / p.steps_per_beat
    steps = len(next(iter(p.parts.values())))
    items = []
    for bar in range(int(math.ceil((seconds - lead_s) / (steps * step_s))) + 1):
        for part, hits in p.parts.items():
            for i, mark in enumerate(hits):
                start = lead_s + (bar * steps + i) * step_s
                if mark != "." and start < seconds:
                    velocity = {"X": 120, "x": 90, "g": 50}[mark]
                    items.append((start, start + 0.1, GM_DRUMS[part], velocity))
    wave = render_notes(available_soundfonts()[0], _notes(items), seconds, drums=True)
    return Audio(wave, 44100)


MELODY = [(0, 60), (1, 64), (2, 67), (3, 72), (4, 71), (5, 67), (6, 64), (7, 62)]


def melody(seconds: float, out_midi: Path, *, bpm: float = 100.0, program: int = 0) -> Audio:
    """A SoundFont phrase (eighth notes of MELODY, repeated) and the same notes as a MIDI file."""
    import pretty_midi

    from training.soundfonts import available_soundfonts, render_notes

    beat = 60.0 / bpm / 2
    items = []
    k = 0
    while k * beat < seconds - 0.05:
        _, pitch = MELODY[k % len(MELODY)]
        items.append((k * beat, min((k + 0.9) * beat, seconds), pitch, 96))
        k += 1
    notes = _notes(items)
    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program=program)
    instrument.notes.extend(notes)
    midi.instruments.append(instrument)
    midi.write(str(out_midi))
    return Audio(render_notes(available_soundfonts()[0], notes, seconds, program=program), 44100)


def hum(seconds: float, *, base_hz: float = 196.0, sr: int = 44100) -> Audio:
    """A hummed contour: glides between scale steps with vibrato, six soft harmonics, phrases with gaps."""
    t = np.arange(round(seconds * sr)) / sr
    steps = np.array([0, 2, 4, 7, 4, 2, 0, -3], dtype=np.float64)
    position = t / seconds * len(steps)
    semis = np.interp(position, np.arange(len(steps)) + 0.5, steps)
    semis = semis + 0.3 * np.sin(2 * np.pi * 5.5 * t)  # vibrato, +-30 cents
    f0 = base_hz * 2.0 ** (semis / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 7))
    phrase = seconds / 3
    inside = np.mod(t, phrase) / phrase
    gate = np.clip(
        np.minimum(inside / 0.08, (0.8 - inside) / 0.08), 0.0, 1.0
    )  # the last 20% of each phrase is silent
    swell = 0.6 + 0.4 * np.sin(np.pi * inside) ** 2
    x = (0.25 * wave * gate * swell).astype(np.float32)
    return Audio(np.stack([x, x]), sr)


def speech(voice: str, folder: Path) -> Audio | None:
    """espeak-ng saying SPEECH in `voice`; None without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    path = folder / f"speech-{voice.replace('+', '-')}.wav"
    subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(path), SPEECH], check=True, capture_output=True)
    return load_audio(path)


def fit(audio: Audio, seconds: float) -> Audio:
    """`audio` cut or zero-padded to `seconds`, at 44.1 kHz stereo."""
    from pipelines.audio import resample

    audio = to_channels(resample(audio, 44100), 2)
    n = round(seconds * 44100)
    x = audio.samples[:, :n]
    return Audio(np.ascontiguousarray(np.pad(x, ((0, 0), (0, n - x.shape[1])))), 44100)


# ---------------------------------------------------------------- measurements (librosa)


def mono(audio: Audio) -> np.ndarray:
    from pipelines.audio import resample

    return resample(to_channels(audio, 1), ANALYSIS_SR).samples[0].astype(np.float32)


def level_db(audio: Audio) -> np.ndarray:
    import librosa

    rms = librosa.feature.rms(y=mono(audio), frame_length=2048, hop_length=512)[0]
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-10)), LEVEL_FLOOR_DB)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
    if n < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def envelope_correlation(out: Audio, ref: Audio) -> float:
    return pearson(level_db(out), level_db(ref))


def f0_track(audio: Audio) -> np.ndarray:
    """pyin f0 in Hz per 512-sample frame, NaN where unvoiced."""
    import librosa

    f0, _, _ = librosa.pyin(
        mono(audio), fmin=50.0, fmax=1000.0, sr=ANALYSIS_SR, frame_length=2048, hop_length=512
    )
    return f0


def folded_cents(out_hz: np.ndarray, ref_hz: np.ndarray) -> np.ndarray:
    c = 1200.0 * np.log2(out_hz / ref_hz)
    return c - 1200.0 * np.round(c / 1200.0)


def f0_follow_cents(out: Audio, ref_f0: np.ndarray) -> float | None:
    """Median |octave-folded cents| between out's pyin f0 and ref_f0 on frames voiced in both (None: < 5)."""
    f0 = f0_track(out)
    n = min(len(f0), len(ref_f0))
    both = np.isfinite(f0[:n]) & np.isfinite(ref_f0[:n]) & (ref_f0[:n] > 0)
    if both.sum() < 5:
        return None
    return float(np.median(np.abs(folded_cents(f0[:n][both], ref_f0[:n][both]))))


def silence_gap_db(out: Audio, voice: Audio) -> float | None:
    ref, got = level_db(voice), level_db(out)
    n = min(len(ref), len(got))
    ref, got = ref[:n], got[:n]
    silent = ref < ref.max() - SILENT_BELOW_PEAK_DB
    if silent.sum() < 3 or (~silent).sum() < 3:
        return None
    return float(np.median(got[silent]) - np.median(got[~silent]))


def onset_times(audio: Audio) -> np.ndarray:
    import librosa

    return librosa.onset.onset_detect(y=mono(audio), sr=ANALYSIS_SR, hop_length=ONSET_HOP, units="time")


def onset_f_measure(estimate: np.ndarray, reference: np.ndarray, window: float = ONSET_WINDOW_S) -> float:
    """F-measure of onsets matched one-to-one (greedy by distance) within `window` seconds."""
    if len(estimate) == 0 and len(reference) == 0:
        return 1.0
    if len(estimate) == 0 or len(reference) == 0:
        return 0.0
    pairs = sorted(
        (abs(e - r), i, j)
        for i, e in enumerate(estimate)
        for j, r in enumerate(reference)
        if abs(e - r) <= window
    )
    used_e, used_r, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_e and j not in used_r:
            used_e.add(i), used_r.add(j)
            hits += 1
    precision, recall = hits / len(estimate), hits / len(reference)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


def chroma_similarity(a: Audio, b: Audio) -> float:
    import librosa

    ca = librosa.feature.chroma_stft(y=mono(a), sr=ANALYSIS_SR, hop_length=512, tuning=0.0)
    cb = librosa.feature.chroma_stft(y=mono(b), sr=ANALYSIS_SR, hop_length=512, tuning=0.0)
    n = min(ca.shape[1], cb.shape[1])
    ca, cb = ca[:, :n], cb[:, :n]
    norms = np.linalg.norm(ca, axis=0) * np.linalg.norm(cb, axis=0)
    ok = norms > 1e-8
    if not ok.any():
        return 0.0
    return float(np.mean((ca * cb).sum(axis=0)[ok] / norms[ok]))


def jumps(x: np.ndarray) -> np.ndarray:
    """|x[i+1] - x[i]|, max over channels."""
    return np.abs(np.diff(x, axis=1)).max(axis=0)


def click_ratio(x: np.ndarray, after: int, before: int | None = None) -> float:
    """The jump from sample `before` (default after - 1) to `after`, over the 95th percentile of x's jumps."""
    before = after - 1 if before is None else before
    typical = float(np.percentile(jumps(x), 95))
    jump = float(np.abs(x[:, after] - x[:, before]).max())
    return jump / max(typical, 1e-9)


def loudness_step_db(x: np.ndarray, seam: int, sr: int = 44100) -> float:
    """|RMS dB of the SEAM_WINDOW_S before `seam` - that of the SEAM_WINDOW_S after it|, each level floored at
    SILENCE_DB: below it a window is silence. (Floored at -160 dB, the hum's phrase gap of digital zeros
    before an extension at -44 dB read as a 116 dB step, which outweighed every other seam in the mean; a
    step out of silence still counts, up to its sound's level over -70 dB.)"""
    w = round(SEAM_WINDOW_S * sr)
    before, after = x[:, max(0, seam - w) : seam], x[:, seam : seam + w]
    if before.size == 0 or after.size == 0:
        return float("nan")

    def db(v):
        rms = float(np.sqrt(np.mean(v.astype(np.float64) ** 2)))
        return max(20 * math.log10(max(rms, 1e-12)), SILENCE_DB)

    return abs(db(before) - db(after))


def beat_times(audio: Audio) -> np.ndarray:
    import librosa

    _, beats = librosa.beat.beat_track(y=mono(audio), sr=ANALYSIS_SR, hop_length=ONSET_HOP, units="time")
    return np.asarray(beats, dtype=np.float64)


def tempo_error(audio: Audio, bpm: float) -> float:
    """|tempo from the median beat interval - bpm| / bpm (1.0 when fewer than 3 beats are found)."""
    beats = beat_times(audio)
    if len(beats) < 3:
        return 1.0
    return abs(60.0 / float(np.median(np.diff(beats))) - bpm) / bpm


def grid_deviation_ms(audio: Audio, bpm: float, subdivision: int = 4) -> float:
    onsets = onset_times(audio)
    if len(onsets) == 0:
        return float("nan")
    step = 60.0 / bpm / subdivision
    return float(np.median(np.abs(onsets - np.round(onsets / step) * step)) * 1000)


def downbeat_ratio(audio: Audio, bpm: float, beats_per_bar: int) -> float:
    import librosa

    env = librosa.onset.onset_strength(y=mono(audio), sr=ANALYSIS_SR, hop_length=ONSET_HOP)
    beat = 60.0 / bpm
    count = int(len(env) * ONSET_HOP / ANALYSIS_SR / beat)
    reach = max(1, round(0.03 * ANALYSIS_SR / ONSET_HOP))
    strength = []
    for k in range(count):
        i = round(k * beat * ANALYSIS_SR / ONSET_HOP)
        strength.append(float(env[max(0, i - reach) : i + reach + 1].max()) if i < len(env) else 0.0)
    strength = np.array(strength)
    down, other = strength[::beats_per_bar], np.delete(strength, np.arange(0, count, beats_per_bar))
    if len(down) == 0 or len(other) == 0 or other.mean() <= 0:
        return float("nan")
    return float(down.mean() / other.mean())


def cv(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v.std() / v.mean()) if v.size and v.mean() > 0 else float("nan")


def mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------- the report


def row(pipeline: str, figure: str, target: str | None = None, **values) -> dict:
    """One figure: model_only / final / masked values (or lists), its target and whether it is met."""
    out = {"pipeline": pipeline, "figure": figure, "target": target}
    out.update({k: v for k, v in values.items() if k != "passed"})
    out["pass"] = values.get("passed")
    return out


def _judge_cosines(judge, audios: list[Audio], texts: list[str]) -> np.ndarray | None:
    """[len(audios), len(texts)] cosines in the judge's space (None without a judge)."""
    if judge is None:
        return None
    a = np.asarray(judge.embed_audio(audios), dtype=np.float64)
    t = np.asarray(judge.embed_text(texts), dtype=np.float64)
    return a @ t.T


def bench_transform(gen, sources: dict, scale: Scale, judge) -> list[dict]:
    from pipelines.transform import transform

    rows = []
    sweep = {"chroma": [], "onset_f": [], "judge_adherence": []}
    keep_f, masked_f, rank_ok, rank_masked = [], [], [], []
    for name, caption, prompt in TRANSFORM_CASES:
        src = sources[name]
        src_onsets = onset_times(src)
        for seed in range(scale.seeds):
            per_strength = []
            for strength in scale.strengths:
                out = transform(gen, src, prompt, strength=strength, seed=seed)
                per_strength.append(out)
            sweep["chroma"].append([chroma_similarity(o, src) for o in per_strength])
            sweep["onset_f"].append([onset_f_measure(onset_times(o), src_onsets) for o in per_strength])
            cos = _judge_cosines(judge, per_strength, [prompt])
            sweep["judge_adherence"].append(None if cos is None else cos[:, 0].tolist())
            kept = transform(gen, src, prompt, strength=0.6, keep=("rhythm",), seed=seed)
            loose = transform(gen, src, prompt, strength=0.6, seed=seed)
            keep_f.append(onset_f_measure(onset_times(kept), src_onsets))
            masked_f.append(onset_f_measure(onset_times(loose), src_onsets))
            cos = _judge_cosines(judge, [kept, loose], [prompt, caption])
            if cos is not None:
                rank_ok.append(float(cos[0, 0] > cos[0, 1]))
                rank_masked.append(float(cos[1, 0] > cos[1, 1]))

    def by_strength(key):
        runs = [r for r in sweep[key] if r is not None]
        return None if not runs else np.mean(np.array(runs), axis=0).round(4).tolist()

    def monotonic(values, falling):
        if values is None:
            return None
        d = np.diff(values)
        return bool(np.all(d <= 0) if falling else np.all(d >= 0))

    for key, falling, target in (
        ("chroma", True, "falls monotonically with strength"),
        ("onset_f", True, "falls monotonically with strength"),
        ("judge_adherence", False, "rises monotonically with strength"),
    ):
        values = by_strength(key)
        rows.append(
            row(
                "transform",
                f"{key} vs strength {list(scale.strengths)}",
                target,
                model_only=values,
                final=values,
                masked=None,
                passed=monotonic(values, falling),
                note="transform has no post-processing: final = model_only",
            )
        )
    f_model, f_masked = mean(keep_f), mean(masked_f)
    rows.append(
        row(
            "transform",
            "onset F vs source, strength 0.6, keep rhythm",
            ">= 0.7; masked (no keep) loses by >= 0.1",
            model_only=f_model,
            final=f_model,
            masked=f_masked,
            passed=None
            if f_model is None
            else bool(f_model >= 0.7 and f_model - (f_masked or 0) >= CONTROL_MARGIN),
        )
    )
    rank, rank_m = mean(rank_ok), mean(rank_masked)
    rows.append(
        row(
            "transform",
            "judge ranks prompt above source (share), keep rhythm",
            "share = 1.0",
            model_only=rank,
            final=rank,
            masked=rank_m,
            passed=None if rank is None else bool(rank >= 1.0),
        )
    )
    return rows


def bench_voice(gen, sources: dict, voices: dict, midi_path: Path, scale: Scale) -> list[dict]:
    from pipelines.voice import voice

    env = {"model_only": [], "final": [], "masked": []}
    cents = {"model_only": [], "final": [], "masked": []}
    quiet = {"model_only": [], "final": [], "masked": []}
    for guide in voices.values():
        ref_f0 = f0_track(guide)
        for prompt, pitched in VOICE_PROMPTS[: scale.voice_prompts]:
            for seed in range(scale.seeds):
                made = {
                    "model_only": voice(gen, guide, prompt, seed=seed, post=False),
                    "final": voice(gen, guide, prompt, seed=seed, post=True),
                    "masked": voice(gen, guide, prompt, seed=seed, post=False, drop=("loudness",)),
                }
                for k, out in made.items():
                    env[k].append(envelope_correlation(out, guide))
                    quiet[k].append(silence_gap_db(out, guide))
                if pitched:
                    masked_pitch = voice(gen, guide, prompt, seed=seed, post=False, drop=("pitch",))
                    for k, out in (
                        ("model_only", made["model_only"]),
                        ("final", made["final"]),
                        ("masked", masked_pitch),
                    ):
                        cents[k].append(f0_follow_cents(out, ref_f0))
    # MIDI as the control: pitch against the notes' own frequencies
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(midi_path))
    notes = [n for inst in midi.instruments for n in inst.notes]
    times = np.arange(int(max(n.end for n in notes) * ANALYSIS_SR / 512) + 1) * 512 / ANALYSIS_SR
    midi_f0 = np.full(times.shape, np.nan)
    for n in notes:
        on = (times >= n.start) & (times < n.end)
        midi_f0[on] = np.fmax(midi_f0[on], 440.0 * 2 ** ((n.pitch - 69) / 12))
    midi_cents = []
    for seed in range(scale.seeds):
        midi_cents.append(
            f0_follow_cents(voice(gen, midi_path, VOICE_PROMPTS[0][0], seed=seed, post=False), midi_f0)
        )
    e = {k: mean(v) for k, v in env.items()}
    c = {k: mean(v) for k, v in cents.items()}
    q = {k: mean(v) for k, v in quiet.items()}
    env_pass = None
    if e["model_only"] is not None and e["final"] is not None:
        env_pass = bool(
            e["model_only"] >= 0.6 and e["final"] >= 0.8 and e["model_only"] - (e["masked"] or 0) >= 0.3
        )
    return [
        row(
            "voice",
            "loudness envelope correlation with the voice",
            "model_only >= 0.6, final >= 0.8, masked (no loudness control) lower by >= 0.3",
            **e,
            passed=env_pass,
        ),
        row(
            "voice",
            "f0 following, median |octave-folded cents|, pitched prompts",
            "<= 100 cents; masked (no pitch control) worse",
            **c,
            passed=None
            if c["model_only"] is None
            else bool(c["model_only"] <= 100 and (c["masked"] or 1e9) > c["model_only"]),
        ),
        row(
            "voice",
            "output level in the voice's silences (dB re. active)",
            "<= -20 dB",
            **q,
            passed=None if q["model_only"] is None else bool(q["model_only"] <= QUIET_GAP_DB),
        ),
        row(
            "voice",
            "f0 following of a MIDI file, median |octave-folded cents|",
            "<= 100 cents",
            model_only=mean(midi_cents),
            final=None,
            masked=None,
            passed=None if mean(midi_cents) is None else bool(mean(midi_cents) <= 100),
        ),
    ]


def bench_beats(gen, scale: Scale, track: Audio, track_bpm: float, track_lead_s: float) -> list[dict]:
    from pipelines.loops import BeatGrid, beats

    figures = {
        k: {"length_exact": [], "tempo_err": [], "grid_ms": [], "downbeat": [], "seam": []}
        for k in ("model_only", "final", "masked")
    }
    for prompt in LOOP_PROMPTS[: scale.loop_prompts]:
        for bpm in scale.bpms:
            for seed in range(scale.seeds):
                expected = BeatGrid(bpm, 4, scale.bars).samples(44100)
                made = {
                    "model_only": beats(
                        gen, prompt, bpm=bpm, bars=scale.bars, loop=True, seed=seed, post=False
                    ),
                    "final": beats(gen, prompt, bpm=bpm, bars=scale.bars, loop=True, seed=seed, post=True),
                    "masked": beats(
                        gen,
                        prompt,
                        bpm=bpm,
                        bars=scale.bars,
                        loop=True,
                        seed=seed,
                        post=False,
                        drop=("beat", "bar"),
                    ),
                }
                for k, out in made.items():
                    f = figures[k]
                    f["length_exact"].append(float(out.frames == expected))
                    f["tempo_err"].append(tempo_error(out, bpm))
                    f["grid_ms"].append(grid_deviation_ms(out, bpm))
                    f["downbeat"].append(downbeat_ratio(out, bpm, 4))
                    f["seam"].append(click_ratio(out.samples, 0, out.frames - 1))
    m = {k: {name: mean(v) for name, v in f.items()} for k, f in figures.items()}

    def pick(name):
        return {k: m[k][name] for k in m}

    # aligned to a track: generated beats against the track's true beats
    info: dict = {}
    aligned = beats(gen, LOOP_PROMPTS[0], bars=scale.bars, align_to=track, seed=0, post=False, info=info)
    masked = beats(
        gen, LOOP_PROMPTS[0], bars=scale.bars, align_to=track, seed=0, post=False, drop=("beat", "bar")
    )
    truth = track_lead_s + np.arange(200) * 60.0 / track_bpm

    def sync_ms(out):
        got = beat_times(out) + info["starts_at_s"]
        if len(got) == 0:
            return float("nan")
        return float(np.median(np.min(np.abs(got[:, None] - truth[None]), axis=1)) * 1000)

    s_model, s_masked = sync_ms(aligned), sync_ms(masked)
    bar_s = 4 * 60.0 / track_bpm
    off = (info["starts_at_s"] - track_lead_s) % bar_s
    downbeat_error = min(off, bar_s - off)  # the bars start on the first downbeat: compare within a bar
    t, g, d, seam = pick("tempo_err"), pick("grid_ms"), pick("downbeat"), pick("seam")
    return [
        row(
            "beats",
            "length exact to the sample (share)",
            "1.0",
            **pick("length_exact"),
            passed=bool(m["final"]["length_exact"] == 1.0),
        ),
        row(
            "beats",
            "tempo error from beat intervals (fraction of bpm)",
            "<= 0.01; masked worse",
            **t,
            passed=None
            if t["model_only"] is None
            else bool(t["model_only"] <= 0.01 and (t["masked"] or 1) > t["model_only"]),
        ),
        row(
            "beats",
            "median onset-to-grid deviation (ms, sixteenths)",
            "<= 15 ms model_only; masked worse",
            **g,
            passed=None
            if g["model_only"] is None
            else bool(g["model_only"] <= 15 and (g["masked"] or 1e9) > g["model_only"]),
        ),
        row(
            "beats",
            "downbeat onset strength over other beats",
            "> 1",
            **d,
            passed=None if d["model_only"] is None else bool(d["model_only"] > 1),
        ),
        row(
            "beats",
            "loop seam click ratio (wrap jump / p95 jump)",
            "<= 1",
            **seam,
            passed=None if seam["final"] is None else bool(seam["final"] <= 1),
        ),
        row(
            "beats",
            "aligned beats vs the track's, median ms",
            "<= 20 ms; masked worse",
            model_only=s_model,
            final=None,
            masked=s_masked,
            passed=bool(s_model <= 20 and s_masked > s_model) if np.isfinite(s_model) else False,
        ),
        row(
            "beats",
            "aligned: detected tempo error / downbeat error (s)",
            "tempo <= 0.01",
            model_only=[abs(info["bpm"] - track_bpm) / track_bpm, downbeat_error],
            final=None,
            masked=None,
            passed=bool(abs(info["bpm"] - track_bpm) / track_bpm <= 0.01),
        ),
    ]


def bench_edit(gen, sources: dict, scale: Scale) -> list[dict]:
    from pipelines.edit import EDIT_FADE_MS, extend, repaint

    fade = round(EDIT_FADE_MS * 44.1)
    fig = {k: {"unchanged": [], "click": [], "loudness": []} for k in ("model_only", "final", "masked")}
    for name in scale.edit_sources:
        src = sources[name]
        n0 = src.frames
        a, b = round(n0 / 3), round(2 * n0 / 3)
        for seed in range(scale.seeds):
            for k, kwargs in (
                ("model_only", {"post": False}),
                ("final", {"post": True}),
                ("masked", {"post": True, "drop": ("known",)}),
            ):
                ext = extend(gen, src, EDIT_PROMPT, seconds=scale.seconds / 2, seed=seed, **kwargs)
                rep = repaint(gen, src, EDIT_PROMPT, start=a / 44100, end=b / 44100, seed=seed, **kwargs)
                kept_ext = ext.samples[:, : n0 - fade] - src.samples[:, : n0 - fade]
                outside = np.concatenate(
                    [rep.samples[:, :a] - src.samples[:, :a], rep.samples[:, b:] - src.samples[:, b:]], axis=1
                )
                fig[k]["unchanged"].append(float(max(np.abs(kept_ext).max(), np.abs(outside).max())))
                fig[k]["click"] += [
                    click_ratio(ext.samples, n0),
                    click_ratio(rep.samples, a),
                    click_ratio(rep.samples, b),
                ]
                fig[k]["loudness"] += [
                    loudness_step_db(ext.samples, n0),
                    loudness_step_db(rep.samples, a),
                    loudness_step_db(rep.samples, b),
                ]
    m = {
        k: {f: (max(v) if f != "loudness" else mean(v)) if v else None for f, v in d.items()}
        for k, d in fig.items()
    }
    worst_click = {k: max(fig[k]["click"]) for k in fig}
    return [
        row(
            "extend/repaint",
            "max |output - source| outside the edit (and its 20 ms crossfades)",
            "0 in final (model_only is the codec's reconstruction)",
            **{k: m[k]["unchanged"] for k in m},
            passed=bool(m["final"]["unchanged"] == 0.0),
        ),
        row(
            "extend/repaint",
            "worst seam click ratio (jump / p95 jump)",
            "<= 1; masked (no known frames) worse",
            **worst_click,
            passed=bool(worst_click["final"] <= 1 and worst_click["masked"] > worst_click["final"]),
        ),
        row(
            "extend/repaint",
            "mean loudness step across seams (dB, 250 ms each side)",
            "<= 3 dB; masked worse",
            **{k: m[k]["loudness"] for k in m},
            passed=None
            if m["final"]["loudness"] is None
            else bool(
                m["final"]["loudness"] <= 3.0 and (m["masked"]["loudness"] or 1e9) > m["final"]["loudness"]
            ),
        ),
    ]


def bench_live(gen, scale: Scale, judge) -> list[dict]:
    from pipelines.live import first_audio_latency, morph, stream
    from training.eval_metrics import librosa_features

    latencies = []
    for i in range(scale.latency_runs + 1):
        chunks = stream(gen, f"{MORPH_PAIRS[i % len(MORPH_PAIRS)][0]}, take {i}", seconds=4.0, seed=i)
        seconds, _ = first_audio_latency(chunks)
        if i:  # the first run warms up
            latencies.append(seconds * 1000)
    arc = gen.default_sampler == "pingpong"

    seam_fig, level_fig = {}, {}
    for k, drop in (("model_only", ()), ("masked", ("known",))):
        chunks = list(stream(gen, "a slowly evolving drone", seconds=scale.stream_seconds, seed=1, drop=drop))
        x = np.concatenate([c.samples for c in chunks], axis=1)
        seams = np.cumsum([c.frames for c in chunks])[:-1]
        seam_fig[k] = max((click_ratio(x, int(s)) for s in seams), default=float("nan"))
        per_second = [
            max(20 * math.log10(max(float(np.sqrt(np.mean(x[:, i : i + 44100] ** 2))), 1e-12)), SILENCE_DB)
            for i in range(0, x.shape[1] - 44099, 44100)  # floored as loudness_step_db is
        ]
        level_fig[k] = float(np.max(np.abs(np.diff(per_second)))) if len(per_second) > 1 else float("nan")

    cv_judge, cv_features = [], []
    alphas = np.linspace(0, 1, scale.alphas)
    for a_prompt, b_prompt in MORPH_PAIRS[: scale.morph_pairs]:
        for seed in range(scale.seeds):
            outs = [morph(gen, a_prompt, b_prompt, float(al), seed=seed) for al in alphas]
            feats = np.stack([librosa_features(o) for o in outs]).astype(np.float64)
            feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
            cv_features.append(cv(list(np.linalg.norm(np.diff(feats, axis=0), axis=1))))
            if judge is not None:
                e = np.asarray(judge.embed_audio(outs), dtype=np.float64)
                cv_judge.append(cv([1.0 - float(e[i] @ e[i + 1]) for i in range(len(e) - 1)]))
    lat = float(np.median(latencies)) if latencies else None
    j = mean(cv_judge)
    return [
        row(
            "live",
            "4 s preview: latency to first audio (ms, median)",
            "<= 150 ms on 2 cores with the ARC default (pingpong)",
            model_only=lat,
            final=lat,
            masked=None,
            passed=bool(lat <= 150) if arc and lat is not None else None,
            note=None if arc else f"this bundle samples with {gen.default_sampler}, not the ARC default",
        ),
        row(
            "live",
            f"stream chunk seams, worst click ratio over {scale.stream_seconds:g} s",
            "<= 1; masked (no context) worse",
            model_only=seam_fig["model_only"],
            final=seam_fig["model_only"],
            masked=seam_fig["masked"],
            passed=bool(seam_fig["model_only"] <= 1 and seam_fig["masked"] > seam_fig["model_only"]),
        ),
        row(
            "live",
            f"stream loudness, largest step between 1 s windows over {scale.stream_seconds:g} s (dB)",
            "<= 3 dB",
            model_only=level_fig["model_only"],
            final=level_fig["model_only"],
            masked=level_fig["masked"],
            passed=bool(level_fig["model_only"] <= 3.0) if np.isfinite(level_fig["model_only"]) else None,
        ),
        row(
            "live",
            "morph evenness: CV of judge distances between neighbouring alphas",
            "<= 0.5",
            model_only=j,
            final=j,
            masked=None,
            passed=None if j is None else bool(j <= 0.5),
        ),
        row(
            "live",
            "morph evenness: CV of librosa-feature distances between neighbouring alphas",
            "<= 0.5 (judge-free)",
            model_only=mean(cv_features),
            final=mean(cv_features),
            masked=None,
            passed=None if mean(cv_features) is None else bool(mean(cv_features) <= 0.5),
        ),
    ]


def run_bench(
    model_path: str | Path | None,
    json_out: str | Path | None = None,
    *,
    scale: Scale = FULL,
    judge=None,
) -> dict:
    """Measure every pipeline figure; returns (and with json_out, writes) the report and prints a table.

    `judge` is an embedder or a bundle path (None: assets/judge when it exists, else judge figures are None).
    """
    import torch

    from pipelines.bundle import ASSETS_DIR
    from pipelines.generator import load_generator

    started = time.time()
    gen = load_generator(model_path)
    notes = []
    if judge is None and (ASSETS_DIR / "judge" / "model.json").is_file():
        judge = ASSETS_DIR / "judge"
    if isinstance(judge, str | Path):
        from pipelines.embedders import load_embedder

        judge = load_embedder(judge)
    if judge is None:
        notes.append("no judge embedder (assets/judge is missing), so the judge figures are null.")
    print(f"generator bundle: {gen.bundle_path}", flush=True)

    with tempfile.TemporaryDirectory(prefix="soundloom-bench-") as tmp:
        tmp = Path(tmp)
        midi_path = tmp / "melody.mid"
        sources = {
            "drums": drum_loop(110.0, scale.seconds),
            "melody": melody(scale.seconds, midi_path),
            "hum": hum(scale.seconds),
        }
        voices = {"hum": sources["hum"], "hum-low": hum(scale.seconds, base_hz=130.8)}
        voices = dict(list(voices.items())[: scale.hums])
        for voice_name in ESPEAK_VOICES[: scale.speech_voices]:
            spoken = speech(voice_name, tmp)
            if spoken is None:
                notes.append("espeak-ng is not installed, so the voice figures use hums only.")
                break
            voices[f"speech {voice_name}"] = fit(
                spoken, min(spoken.seconds, gen.max_seconds, 2 * scale.seconds)
            )
        if not voices:
            voices["hum"] = sources["hum"]
        track_bpm, track_lead = 100.0, 0.37
        track = drum_loop(track_bpm, track_lead + 8 * 4 * 60 / track_bpm, lead_s=track_lead)

        rows = []
        for name, bench in (
            ("transform", lambda: bench_transform(gen, sources, scale, judge)),
            ("voice", lambda: bench_voice(gen, sources, voices, midi_path, scale)),
            ("beats", lambda: bench_beats(gen, scale, track, track_bpm, track_lead)),
            ("extend/repaint", lambda: bench_edit(gen, sources, scale)),
            ("live", lambda: bench_live(gen, scale, judge)),
        ):
            t0 = time.time()
            rows += bench()
            print(f"  {name}: {time.time() - t0:.1f} s", flush=True)

    report = {
        "bundle": str(gen.bundle_path),
        "model_hash": gen.bundle_hash,
        "sampler": {
            "sampler": gen.default_sampler,
            "steps": gen.default_steps,
            "guidance": gen.default_guidance,
        },
        "judge": type(judge).__name__ if judge is not None else None,
        "scale": asdict(scale),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "figures": rows,
        "notes": notes,
        "wall_time_s": round(time.time() - started, 1),
    }
    report = _jsonable(report)
    print(format_table(report))
    if json_out:
        write_report(json_out, report)
    return report


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 5) if math.isfinite(value) else None
    return value


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + " ".join(_cell(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(report: dict) -> str:
    lines = [
        "",
        f"pipelines bench: {report['sampler']['sampler']} {report['sampler']['steps']} steps, "
        f"judge {report['judge'] or 'none'}, {report['machine']['torch_threads']} torch threads",
        f"{'pipeline':<15} {'figure':<58} {'model-only':>18} {'final':>18} {'masked':>18}  target -> pass",
    ]
    for r in report["figures"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]]
        lines.append(
            f"{r['pipeline']:<15} {r['figure'][:58]:<58} {_cell(r.get('model_only')):>18} "
            f"{_cell(r.get('final')):>18} {_cell(r.get('masked')):>18}  {r['target']} -> {verdict}"
        )
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
