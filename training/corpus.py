"""The training corpus: instrument phrases rendered from General MIDI SoundFonts, procedural sound design,
or a user's own folder, written as 44.1 kHz stereo FLAC clips plus one `manifest.jsonl`.

Layout of a corpus folder:
    audio/<id>.flac      16-bit stereo clips, 1-10 s
    manifest.jsonl       one JSON object per clip (id, path, captions, seconds, source, licence,
                         provenance, material_id, split, params)
    corpus.json          seed, hours, SoundFont checksums, counts, build speed

Every clip is a pure function of (seed, clip index): its plan (what to play) comes from a Generator
seeded with both, so a build is reproducible and resumable, and any worker can render any clip.
`material_id` names the underlying material (a MIDI phrase before its program was chosen, or a
procedural parameter draw) and the split is a hash of it, so one phrase played by two instruments
never straddles train and test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.atomic_files import write_atomic
from pipelines.audio import (
    INPUT_FORMATS,
    SAMPLE_RATE,
    Audio,
    load_audio,
    normalize_loudness,
    peak_db,
    peak_safe,
    save_audio,
)
from pipelines.errors import BadInput
from training import captions, synth
from training.jsonl import read_jsonl
from training.soundfonts import SoundFont, available_soundfonts, loaded_synth, render_notes

MANIFEST = "manifest.jsonl"
COMMON_PARAMS = (
    "category",
    "program",
    "instrument",
    "f0_hz",
    "note",
    "bpm",
    "key",
    "beats_s",
    "bars_s",
    "velocity",
)
CORPUS_INFO = "corpus.json"
RECORD_KEYS = {"id", "path", "captions", "split"}  # what every manifest record must hold
SPLITS = ("train", "val", "test")
PROCEDURAL_LICENCE = "CC0-1.0 (generated procedurally by soundloom)"
MIN_SECONDS, MAX_SECONDS = 1.0, 10.0
LUFS_RANGE = (-26.0, -14.0)  # loudness targets are drawn from this range: roughly normalised, with variety
PEAK_CEILING_DB = -1.0

# Share of clips per category; "fx" is procedural, the rest are SoundFont renders.
CATEGORY_WEIGHTS = {
    "note": 0.14, "chord": 0.07, "arpeggio": 0.09, "melody": 0.11, "bassline": 0.08, "drums": 0.16, "fx": 0.35,
}  # fmt: skip

# GM programs the builder plays, with the MIDI range each sounds natural in. Left out: guitar harmonics (31)
# and whistle (78), which sound away from their written pitch in one of the SoundFonts; orchestra hit (55);
# the synth effects (96-103); unpitched percussion (112, 113, 115-118) and the sound effects (119-127).
PROGRAM_RANGES: dict[int, tuple[int, int]] = {
    0: (33, 96), 1: (36, 96), 2: (36, 96), 3: (40, 88), 4: (36, 91), 5: (36, 91), 6: (41, 89), 7: (41, 84),
    8: (60, 96), 9: (72, 100), 10: (60, 96), 11: (53, 89), 12: (48, 96), 13: (65, 100), 14: (60, 77),
    15: (50, 86), 16: (36, 96), 17: (36, 96), 18: (36, 96), 19: (36, 91), 20: (48, 84), 21: (53, 89),
    22: (60, 84), 23: (53, 89), 24: (40, 81), 25: (40, 84), 26: (40, 81), 27: (40, 84), 28: (40, 76),
    29: (40, 84), 30: (40, 84), 32: (28, 55), 33: (28, 60), 34: (28, 60), 35: (28, 60), 36: (28, 60),
    37: (28, 60), 38: (28, 60), 39: (28, 60), 40: (55, 96), 41: (48, 84), 42: (36, 76), 43: (28, 55),
    44: (40, 84), 45: (36, 84), 46: (36, 96), 47: (41, 57), 48: (36, 84), 49: (36, 84), 50: (36, 84),
    51: (36, 84), 52: (48, 79), 53: (48, 79), 54: (48, 79), 56: (55, 82), 57: (40, 72), 58: (28, 58),
    59: (55, 82), 60: (41, 77), 61: (40, 80), 62: (36, 84), 63: (36, 84), 64: (56, 87), 65: (49, 80),
    66: (44, 75), 67: (36, 68), 68: (58, 91), 69: (52, 81), 70: (34, 72), 71: (50, 91), 72: (74, 100),
    73: (60, 96), 74: (60, 91), 75: (60, 91), 76: (60, 84), 77: (55, 84), 79: (60, 84), 80: (48, 84),
    81: (36, 84), 82: (48, 84), 83: (48, 84), 84: (48, 84), 85: (48, 84), 86: (48, 84), 87: (36, 72),
    88: (36, 84), 89: (36, 84), 90: (36, 84), 91: (36, 84), 92: (36, 84), 93: (36, 84), 94: (36, 84),
    95: (36, 84), 104: (48, 79), 105: (48, 79), 106: (50, 79), 107: (55, 84), 108: (60, 84), 109: (55, 79),
    110: (55, 88), 111: (60, 84), 114: (55, 84),
}  # fmt: skip
PROGRAMS = tuple(PROGRAM_RANGES)
# Not for single notes, whose manifest pitch must be what pyin hears: organs with a 16' sub-octave register
# (16-19), glockenspiel (sounds two octaves up), timpani and the fifths lead (their lowest periodicity
# is below the written note).
NOTE_PROGRAMS = tuple(p for p in PROGRAMS if p not in (9, 16, 17, 18, 19, 47, 86))
# Programs that sound right playing several notes at once.
POLYPHONIC = tuple(
    p
    for p in PROGRAMS
    if p < 8
    or 11 <= p <= 27
    or p in (46, 48, 49, 50, 51, 52, 53, 61, 62, 63)
    or 88 <= p <= 95
    or p in (104, 105, 107, 108, 114)
)
# Programs that make a believable bass line.
BASS_PROGRAMS = (0, 19, 32, 33, 34, 35, 36, 37, 38, 39, 42, 43, 58, 67, 70, 87)
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # GM bank-128 kits both SoundFonts carry

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {  # scale degrees, 0 = tonic
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (1, 4, 0, 0), (0, 5, 3, 4), (0, 2, 3, 4), (0, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
}
QUALITIES = {
    (4, 7): "major",
    (3, 7): "minor",
    (3, 6): "diminished",
    (4, 8): "augmented",
    (4, 7, 10): "dominant seventh",
    (4, 7, 11): "major seventh",
    (3, 7, 10): "minor seventh",
    (3, 6, 10): "half-diminished seventh",
    (3, 6, 9): "diminished seventh",
}

GM_DRUMS = {
    "kick": 36, "rim": 37, "snare": 38, "clap": 39, "hat": 42, "pedal": 44, "open": 46, "crash": 49,
    "ride": 51, "bell": 53, "tamb": 54, "cowbell": 56, "tom_hi": 50, "tom_mid": 47, "tom_lo": 43,
    "shaker": 70, "conga_hi": 62, "conga_lo": 64, "clave": 75,
}  # fmt: skip


@dataclass(frozen=True)
class DrumPattern:
    """One bar on a step grid; per part a string: X accent, x hit, g ghost, . rest."""

    name: str
    meter: str
    bpm: tuple[float, float]
    steps_per_beat: int
    parts: dict[str, str]
    swing: tuple[float, float] = (0.0, 0.0)  # delay of every second step, as a fraction of a step


DRUM_PATTERNS: dict[str, DrumPattern] = {
    p.name: p
    for p in (
        DrumPattern("rock", "4/4", (90, 140), 4, {
            "kick": "X.......X.x.....", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."}),
        DrumPattern("funk", "4/4", (88, 112), 4, {
            "kick": "X..x..x...X..x..", "snare": "....X..g.g..X..g", "hat": "XxxxXxxxXxxxXxxx"}),
        DrumPattern("hip-hop", "4/4", (80, 98), 4, {
            "kick": "X......x.xX.....", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."}, (0.1, 0.3)),
        DrumPattern("house", "4/4", (118, 128), 4, {
            "kick": "X...X...X...X...", "clap": "....X.......X...", "open": "..x...x...x...x.",
            "hat": "g.g.g.g.g.g.g.g."}),
        DrumPattern("breakbeat", "4/4", (125, 140), 4, {
            "kick": "X.X.......X.....", "snare": "....X..g.g..X..g", "hat": "x.x.x.x.x.x.x.x."}),
        DrumPattern("bossa nova", "4/4", (120, 145), 4, {
            "kick": "X..xX..xX..xX..x", "rim": "X..X..X...X..X..", "shaker": "xgxgxgxgxgxgxgxg"}),
        DrumPattern("shuffle", "4/4", (80, 120), 3, {
            "kick": "X.....X.x...", "snare": "...X.....X..", "hat": "X.xX.xX.xX.x"}),
        DrumPattern("half-time", "4/4", (130, 160), 4, {
            "kick": "X.........x.....", "snare": "........X.......", "hat": "x.x.x.x.x.x.x.x."}),
        DrumPattern("trap", "4/4", (130, 150), 8, {
            "kick": "X.............X.....X.........X.", "snare": "................X...............",
            "hat": "x...x...x...x...x...x.x.x.xxxxx."}),
        DrumPattern("waltz", "3/4", (84, 180), 4, {
            "kick": "X...........", "snare": "....x...x...", "hat": "x...x...x..."}),
        DrumPattern("disco", "4/4", (110, 130), 4, {
            "kick": "X...X...X...X...", "snare": "....X.......X...", "open": "..x...x...x...x.",
            "hat": "x...x...x...x..."}),
        DrumPattern("reggae one-drop", "4/4", (70, 90), 4, {
            "kick": "........X.......", "rim": "........X.......", "hat": "x.x.x.x.x.x.x.x."}, (0.1, 0.25)),
        DrumPattern("drum and bass", "4/4", (165, 178), 4, {
            "kick": "X.........X.....", "snare": "....X.......X...", "hat": "x.x.x.x.x.x.x.x."}),
        DrumPattern("techno", "4/4", (125, 140), 4, {
            "kick": "X...X...X...X...", "clap": "....X.......X...", "open": "..x...x...x...x.",
            "rim": "g.gg.g.gg.g.g.gg"}),
        DrumPattern("jazz swing", "4/4", (100, 180), 3, {
            "ride": "X..x.xX..x.x", "pedal": "...x.....x..", "kick": "g..g..g..g.."}),
        DrumPattern("motown", "4/4", (95, 125), 4, {
            "kick": "X.....x.X.....x.", "snare": "X...X...X...X...", "tamb": "....X.......X..."}),
    )
}  # fmt: skip


# ---------------------------------------------------------------- plans


@dataclass
class ClipPlan:
    """Everything needed to render and describe one clip; cheap to make, so a build plans all clips first."""

    seed: int
    index: int
    id: str
    source: str  # "soundfont" | "procedural"
    material_id: str
    seconds: float
    params: dict
    font: str | None = None  # SoundFont name for soundfont clips
    target_lufs: float = -18.0
    notes: list[list] = field(default_factory=list)  # soundfont clips: [start s, end s, pitch, velocity]


def clip_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Generator for one clip: stream 0 plans it, 1 renders it, 2 words its captions."""
    return np.random.default_rng([seed, index, stream])


def split_of(material_id: str) -> str:
    """train / val / test (80/10/10) by a hash of the material, so a phrase never straddles splits."""
    bucket = int.from_bytes(hashlib.sha256(material_id.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 80 else ("val" if bucket < 90 else "test")


def midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def note_label(midi: int) -> str:
    return f"{captions.pitch_class(midi)}{midi // 12 - 1}"


def _clip_length(rng: np.random.Generator) -> float:
    """Desired clip length: log-normal around 3.5 s, mostly 2-6 s, within 1.5-9 s."""
    return float(np.clip(np.exp(rng.normal(np.log(3.5), 0.4)), 1.5, 9.0))


def _key(rng: np.random.Generator) -> tuple[int, str, str]:
    tonic = int(rng.integers(0, 12))
    mode = "major" if rng.random() < 0.55 else "minor"
    return tonic, mode, f"{captions.pitch_class(tonic)} {mode}"


def _scale_pitch(tonic: int, mode: str, degree: int, base: int) -> int:
    """MIDI pitch of a scale degree (any integer) above the octave starting at `base` (a C)."""
    scale = MAJOR if mode == "major" else MINOR
    return base + tonic + scale[degree % 7] + 12 * (degree // 7)


def _chord(tonic: int, mode: str, degree: int, base: int, seventh: bool) -> tuple[list[int], str]:
    """Diatonic triad or seventh chord on a degree, root position, and its name ("A minor")."""
    pitches = [_scale_pitch(tonic, mode, degree + 2 * k, base) for k in range(4 if seventh else 3)]
    intervals = tuple(p - pitches[0] for p in pitches[1:])
    quality = QUALITIES.get(intervals, "")
    return pitches, f"{captions.pitch_class(pitches[0])} {quality}".strip()


def _note(start: float, end: float, pitch: int, velocity: float) -> list:
    """One manifest note row: [start s, end s, MIDI pitch, velocity 1..127]."""
    return [round(float(start), 4), round(float(end), 4), int(pitch), int(np.clip(velocity, 1, 127))]


def _beat_grid(bpm: float, beats_per_bar: int, bars: int) -> tuple[list[float], list[float]]:
    beat = 60.0 / bpm
    beats = [round(k * beat, 5) for k in range(bars * beats_per_bar)]
    return beats, beats[::beats_per_bar]


def _phrase(notes: list, *, key: str, bpm: float, velocity: int, meter: str, bars: int, **extra) -> tuple:
    """A metred phrase's (notes, params, (lowest, highest) pitch), with its exact beat and bar times."""
    beats, bar_times = _beat_grid(bpm, int(meter.split("/")[0]), bars)
    pitches = [n[2] for n in notes]
    params = {
        "key": key,
        "bpm": bpm,
        **extra,
        "meter": meter,
        "velocity": velocity,
        "low_midi": min(pitches),
        "beats_s": beats,
        "bars_s": bar_times,
    }
    return notes, params, (min(pitches), max(pitches))


def _bars_for(rng: np.random.Generator, bar_seconds: float) -> int:
    return int(np.clip(round(_clip_length(rng) / bar_seconds), 1, max(1, int(8.5 // bar_seconds))))


def _tempo(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(60, 180)), 1)


def _material_note(rng):
    midi = int(rng.integers(28, 97))
    velocity = int(rng.integers(30, 128))
    held = float(np.clip(_clip_length(rng) - rng.uniform(0.4, 1.2), 0.15, 8.0))
    if rng.random() < 0.15:
        held = float(rng.uniform(0.1, 0.4))  # staccato one-shots
    notes = [_note(0.0, held, midi, velocity)]
    params = {
        "midi": midi,
        "note": note_label(midi),
        "f0_hz": round(midi_hz(midi), 3),
        "velocity": velocity,
        "note_seconds": round(held, 3),
    }
    return notes, params, (midi, midi)


def _material_chord(rng):
    tonic, mode, key = _key(rng)
    velocity = int(rng.integers(40, 120))
    root_base = int(rng.choice([36, 48, 60]))
    seventh = bool(rng.random() < 0.35)
    strum = bool(rng.random() < 0.4)
    progression = rng.random() < 0.6
    notes, names = [], []
    if progression:
        bpm = _tempo(rng)
        beats_per_chord = int(rng.choice([2, 4]))
        chord_s = beats_per_chord * 60.0 / bpm
        degrees = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
        count = int(np.clip(round(_clip_length(rng) / chord_s), 2, min(8, max(2, int(8.5 // chord_s)))))
        degrees = [degrees[k % len(degrees)] for k in range(count)]
        beats, bars = _beat_grid(bpm, 4, math.ceil(count * beats_per_chord / 4))
        beats = [b for b in beats if b < count * chord_s]
        bars = [b for b in bars if b < count * chord_s]
    else:
        bpm, beats, bars = None, [], []
        chord_s = float(np.clip(_clip_length(rng) - 0.8, 0.8, 7.0))
        degrees = [int(rng.choice([0, 0, 3, 4, 5]))]
    for k, degree in enumerate(degrees):
        pitches, name = _chord(tonic, mode, degree, root_base, seventh)
        names.append(name)
        for j, pitch in enumerate(pitches):
            start = k * chord_s + (j * rng.uniform(0.01, 0.03) if strum else 0.0)
            notes.append(_note(start, (k + 1) * chord_s - 0.02, pitch, velocity + rng.integers(-6, 7)))
    pitches = [n[2] for n in notes]
    params = {
        "key": key,
        "bpm": bpm,
        "chords": names,
        "strum": strum,
        "velocity": velocity,
        "root_midi": min(pitches),
        "beats_s": beats,
        "bars_s": bars,
        "meter": "4/4" if bpm else None,
    }
    return notes, params, (min(pitches), max(pitches))


def _material_arpeggio(rng):
    tonic, mode, key = _key(rng)
    bpm = _tempo(rng)
    velocity = int(rng.integers(45, 120))
    subdivision, step_beats = [("eighth", 0.5), ("sixteenth", 0.25), ("triplet", 1 / 3)][int(rng.integers(3))]
    if bpm > 140 and subdivision == "sixteenth":
        subdivision, step_beats = "eighth", 0.5
    pattern = str(rng.choice(["up", "down", "updown", "random"]))
    base = int(rng.choice([48, 60]))
    octaves = int(rng.integers(1, 3))
    bars = _bars_for(rng, 4 * 60.0 / bpm)
    degrees = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    step_s = step_beats * 60.0 / bpm
    gate = float(rng.uniform(0.5, 1.6))
    notes = []
    steps_per_bar = int(round(4 / step_beats))
    for bar in range(bars):
        chord, _ = _chord(tonic, mode, degrees[bar % len(degrees)], base, False)
        tones = sorted(p + 12 * o for o in range(octaves) for p in chord) + [chord[0] + 12 * octaves]
        if pattern == "down":
            order = tones[::-1]
        elif pattern == "updown":
            order = tones + tones[-2:0:-1]
        elif pattern == "random":
            order = list(rng.permutation(tones))
        else:
            order = tones
        for s in range(steps_per_bar):
            start = (bar * steps_per_bar + s) * step_s
            notes.append(
                _note(
                    start,
                    start + gate * step_s,
                    order[s % len(order)],
                    velocity + rng.integers(-10, 11) + (8 if s % 4 == 0 else 0),
                )
            )
    return _phrase(
        notes,
        key=key,
        bpm=bpm,
        velocity=velocity,
        meter="4/4",
        bars=bars,
        pattern=pattern,
        subdivision=subdivision,
    )


RHYTHMS = {
    "4/4": ((1, 1, 1, 1), (2, 1, 1), (1.5, 0.5, 1, 1), (0.5, 0.5, 1, 2), (1, 0.5, 0.5, 2), (3, 1), (4,),
            (0.5, 0.5, 0.5, 0.5, 1, 1), (1, 1, 2)),
    "3/4": ((1, 1, 1), (2, 1), (1.5, 0.5, 1), (3,), (0.5, 0.5, 1, 1)),
}  # fmt: skip


def _material_melody(rng):
    tonic, mode, key = _key(rng)
    bpm = _tempo(rng)
    meter = "3/4" if rng.random() < 0.2 else "4/4"
    beats_per_bar = int(meter[0])
    velocity = int(rng.integers(40, 120))
    base = int(rng.choice([48, 60, 72], p=[0.25, 0.5, 0.25]))
    bars = _bars_for(rng, beats_per_bar * 60.0 / bpm)
    legato = float(rng.uniform(0.6, 1.0))
    degree = int(rng.choice([0, 2, 4, 7]))
    notes, position = [], 0.0
    cells = RHYTHMS[meter]
    for bar in range(bars):
        cell = cells[int(rng.integers(len(cells)))]
        for k, length in enumerate(cell):
            last = bar == bars - 1 and k == len(cell) - 1
            if last:
                degree = 0 if abs(degree) < 4 else 7
            start, dur = position * 60.0 / bpm, length * 60.0 / bpm
            accent = 10 if position % beats_per_bar == 0 else 0
            notes.append(
                _note(
                    start,
                    start + dur * legato,
                    _scale_pitch(tonic, mode, degree, base),
                    velocity + accent + rng.integers(-8, 9),
                )
            )
            position += length
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), -3, 10))
    return _phrase(notes, key=key, bpm=bpm, velocity=velocity, meter=meter, bars=bars)


def _material_bassline(rng):
    tonic, mode, key = _key(rng)
    bpm = _tempo(rng)
    style = str(rng.choice(["roots", "octaves", "walking", "syncopated"]))
    velocity = int(rng.integers(60, 125))
    base = int(rng.choice([24, 36])) if tonic >= 4 else 36
    bars = _bars_for(rng, 4 * 60.0 / bpm)
    degrees = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    beat = 60.0 / bpm
    notes = []
    for bar in range(bars):
        root = _scale_pitch(tonic, mode, degrees[bar % len(degrees)], base)
        next_root = _scale_pitch(tonic, mode, degrees[(bar + 1) % len(degrees)], base)
        if style == "walking":
            third, fifth = _scale_pitch(tonic, mode, degrees[bar % len(degrees)] + 2, base), root + 7
            hits = [
                (0, 1, root),
                (1, 1, third),
                (2, 1, fifth),
                (3, 1, next_root + (1 if next_root < root else -1)),
            ]
        elif style == "syncopated":
            hits = [
                (s / 4, 0.5 if s != 14 else 0.25, root + (7 if s == 11 else 0)) for s in (0, 3, 6, 8, 11, 14)
            ]
        else:
            hits = [(k / 2, 0.45, root + (12 if style == "octaves" and k % 2 else 0)) for k in range(8)]
        for position, length, pitch in hits:
            start = (bar * 4 + position) * beat
            notes.append(_note(start, start + length * beat * 0.95, pitch, velocity + rng.integers(-8, 9)))
    return _phrase(notes, key=key, bpm=bpm, velocity=velocity, meter="4/4", bars=bars, style=style)


def _material_drums(rng):
    pattern = DRUM_PATTERNS[list(DRUM_PATTERNS)[int(rng.integers(len(DRUM_PATTERNS)))]]
    bpm = round(float(rng.uniform(*pattern.bpm)), 1)
    beats_per_bar = int(pattern.meter[0])
    bars = _bars_for(rng, beats_per_bar * 60.0 / bpm)
    swing = float(rng.uniform(*pattern.swing))
    step_s = 60.0 / bpm / pattern.steps_per_beat
    fill = bool(rng.random() < 0.25 and beats_per_bar == 4)
    crash = bool(rng.random() < 0.3)
    levels = {"X": 115, "x": 92, "g": 45}
    hits = []
    for bar in range(bars):
        for part, line in pattern.parts.items():
            for s, mark in enumerate(line):
                in_fill = fill and bar == bars - 1 and s >= len(line) - pattern.steps_per_beat
                if mark == "." or (in_fill and part != "kick"):
                    continue
                hits.append((bar * len(line) + s, GM_DRUMS[part], levels[mark]))
        if fill and bar == bars - 1:
            toms = ("tom_hi", "tom_hi", "tom_mid", "tom_lo")
            first = (bar + 1) * len(next(iter(pattern.parts.values()))) - pattern.steps_per_beat
            hits += [
                (first + k, GM_DRUMS[toms[k * 4 // pattern.steps_per_beat]], 100)
                for k in range(pattern.steps_per_beat)
            ]
    if crash:
        hits.append((0, GM_DRUMS["crash"], 100))
    notes = []
    for step, pitch, level in hits:
        start = step * step_s + (swing * step_s if step % 2 else 0.0) + rng.normal(0, 0.003)
        start = max(0.0, start)
        notes.append(_note(start, start + 0.1, pitch, level + rng.integers(-8, 9)))
    notes.sort()
    beats, bar_times = _beat_grid(bpm, beats_per_bar, bars)
    params = {
        "style": pattern.name,
        "bpm": bpm,
        "meter": pattern.meter,
        "bars": bars,
        "swing": round(swing, 3),
        "fill": fill,
        "beats_s": beats,
        "bars_s": bar_times,
    }
    return notes, params, None


MATERIALS = {
    "note": _material_note,
    "chord": _material_chord,
    "arpeggio": _material_arpeggio,
    "melody": _material_melody,
    "bassline": _material_bassline,
    "drums": _material_drums,
}


def plan_clip(
    seed: int, index: int, fonts: list[SoundFont], categories: Sequence[str] | None = None
) -> ClipPlan:
    """What clip `index` of the corpus for `seed` is: category, material, program, length, loudness.

    `categories` (default: all, in CATEGORY_WEIGHTS' proportions) restricts the corpus to some categories
    in the same relative proportions, e.g. ("note",) for a corpus of single notes.
    """
    rng = clip_rng(seed, index, 0)
    chosen = list(categories) if categories else list(CATEGORY_WEIGHTS)
    share = sum(CATEGORY_WEIGHTS[c] for c in chosen)
    category = chosen[int(rng.choice(len(chosen), p=[CATEGORY_WEIGHTS[c] / share for c in chosen]))]
    categories = list(CATEGORY_WEIGHTS)
    target_lufs = round(float(rng.uniform(*LUFS_RANGE)), 2)
    clip_id = f"{index:06d}"
    if category == "fx":
        family = list(synth.FAMILIES)[int(rng.integers(len(synth.FAMILIES)))]
        params = synth.draw_params(family, rng)
        params = {**_empty_params(), **params, "category": "fx"}
        if "midi" in params:
            params["f0_hz"], params["note"] = round(midi_hz(params["midi"]), 3), note_label(params["midi"])
        if family in ("heartbeat", "clock"):
            beat = 60.0 / params["bpm"]
            params["beats_s"] = [round(k * beat, 5) for k in range(int(params["seconds"] / beat) + 1)]
        material = f"fx:{family}:{seed}:{index}"
        return ClipPlan(
            seed, index, clip_id, "procedural", material, params["seconds"], params, None, target_lufs
        )

    # A phrase is drawn from a pool that grows with the corpus, so some phrases recur with other programs.
    # The pool scales with the chosen categories' share, so a one-category corpus is as varied per clip.
    slot = int(rng.integers(0, round((index // 8 + 16) / share)))
    material = f"{category}:{seed}:{slot}"
    notes, params, span = MATERIALS[category](
        np.random.default_rng([seed, 1000 + categories.index(category), slot])
    )
    font = fonts[int(rng.integers(len(fonts)))]
    params = {**_empty_params(), **params, "category": category, "soundfont": font.name}
    if category == "drums":
        params["kit"] = int(rng.choice(DRUM_KITS))
        params["instrument"] = captions.KIT_NAMES[params["kit"]]
    else:
        pool = {"chord": POLYPHONIC, "bassline": BASS_PROGRAMS, "note": NOTE_PROGRAMS}.get(category, PROGRAMS)
        fits = _fitting(pool, span) or _fitting(PROGRAMS, span) or [0]  # the piano covers the rest
        params["program"] = int(fits[int(rng.integers(len(fits)))])
        params["instrument"] = captions.instrument_name(params["program"])
        params["pan"] = 64 if rng.random() < 0.4 else int(rng.integers(28, 101))  # MIDI pan, 64 = centre
    end = max(n[1] for n in notes)
    tail = float(rng.uniform(0.4, 1.5)) if category != "drums" else float(rng.uniform(0.2, 0.8))
    seconds = round(float(np.clip(end + tail, MIN_SECONDS, MAX_SECONDS)), 3)
    params["seconds"] = seconds
    return ClipPlan(
        seed, index, clip_id, "soundfont", material, seconds, params, font.name, target_lufs, notes
    )


def _fitting(programs: tuple[int, ...], span: tuple[int, int]) -> list[int]:
    """The programs whose natural range holds every pitch from span[0] to span[1]."""
    return [p for p in programs if PROGRAM_RANGES[p][0] <= span[0] and span[1] <= PROGRAM_RANGES[p][1]]


def _empty_params() -> dict:
    """Every clip's params carry these keys (None or [] where they do not apply)."""
    return {k: ([] if k.endswith("_s") else None) for k in COMMON_PARAMS}


# ---------------------------------------------------------------- rendering


def remove_dc(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A 10 Hz high-pass: some SoundFont samples (synth basses, brass) carry a DC offset."""
    from scipy.signal import butter, sosfilt

    # second-order sections in float64: a direct-form float32 filter this close to DC adds rumble
    sos = butter(2, 10.0, btype="highpass", fs=sample_rate, output="sos")
    return sosfilt(sos, samples.astype(np.float64), axis=-1).astype(np.float32)


def render_clip(plan: ClipPlan, fonts: dict[str, SoundFont]) -> tuple[Audio, dict]:
    """The clip's audio (44.1 kHz stereo, loudness-normalised, peak-safe) and its manifest record."""
    from pipelines.analysis import clip_brightness

    rng = clip_rng(plan.seed, plan.index, 1)
    if plan.source == "procedural":
        samples = synth.render(plan.params, rng, SAMPLE_RATE)
        licence = PROCEDURAL_LICENCE
        provenance = f"soundloom procedural '{plan.params['family']}' (training/synth.py)"
    else:
        import pretty_midi

        font = fonts[plan.font]
        drums = plan.params["category"] == "drums"
        notes = [pretty_midi.Note(velocity=int(v), pitch=int(p), start=s, end=e) for s, e, p, v in plan.notes]
        samples = render_notes(
            font,
            notes,
            plan.seconds,
            program=plan.params["program"] or 0,
            drums=drums,
            kit=plan.params.get("kit") or 0,
            pan=plan.params.get("pan") or 64,
            sample_rate=SAMPLE_RATE,
        )
        licence = font.licence
        provenance = f"rendered with tinysoundfont from {font.path.name} (sha256 {font.sha256[:16]})"
    loud = normalize_loudness(Audio(remove_dc(samples, SAMPLE_RATE), SAMPLE_RATE), plan.target_lufs)
    audio = peak_safe(loud, PEAK_CEILING_DB)
    brightness = clip_brightness(audio)
    params = {
        **plan.params,
        "brightness_hz": round(brightness, 1),
        "target_lufs": plan.target_lufs,
        # loudness is target_lufs minus this, to within BS.1770's gating (not measured again: it is slow)
        "limited_db": round(peak_db(loud) - peak_db(audio), 2),
    }
    if plan.notes:
        params["notes"] = plan.notes
    record = {
        "id": plan.id,
        "path": f"audio/{plan.id}.flac",
        "captions": captions.captions_for(
            params, plan.seconds, brightness, clip_rng(plan.seed, plan.index, 2)
        ),
        "seconds": plan.seconds,
        "source": plan.source,
        "licence": licence,
        "provenance": provenance,
        "material_id": plan.material_id,
        "split": split_of(plan.material_id),
        "params": params,
    }
    return audio, record


# Worker state: the SoundFonts and output folder, set once per process.
_WORKER: dict = {}


def _init_worker(out: str, fonts: list[SoundFont]) -> None:
    _WORKER["out"] = Path(out)
    _WORKER["fonts"] = {f.name: f for f in fonts}


def _render_job(plan: ClipPlan) -> dict:
    with warnings.catch_warnings():
        # pyloudnorm warns about clipped samples in raw renders, which normalising then fixes
        warnings.simplefilter("ignore", UserWarning)
        audio, record = render_clip(plan, _WORKER["fonts"])
    save_audio(audio, _WORKER["out"] / record["path"], bit_depth=16)
    return record


# ---------------------------------------------------------------- building


def _warm_up(fonts: list[SoundFont]) -> None:
    """Import librosa and load every SoundFont once, before workers fork, so they share the work."""
    from pipelines.analysis import clip_brightness

    clip_brightness(Audio(np.zeros((2, SAMPLE_RATE // 10), np.float32), SAMPLE_RATE))
    for font in fonts:
        loaded_synth(font, SAMPLE_RATE)


def plan_corpus(
    seed: int, hours: float, fonts: list[SoundFont], categories: Sequence[str] | None = None
) -> list[ClipPlan]:
    """Clips 0, 1, 2, ... until their lengths add up to `hours`; the plan for fewer hours is a prefix."""
    plans, total = [], 0.0
    while total < hours * 3600.0:
        plan = plan_clip(seed, len(plans), fonts, categories)
        plans.append(plan)
        total += plan.seconds
    return plans


def build_corpus(
    out: Path,
    hours: float = 10.0,
    seed: int = 0,
    *,
    progress: bool = True,
    workers: int | None = None,
    on_clip: Callable[[dict], None] | None = None,
    categories: Sequence[str] | None = None,
) -> Path:
    """Render the built-in corpus into `out` (resumable: clips already written are kept). Returns `out`.

    `categories` (default: all) builds a corpus of only those categories (see `plan_clip`).

    `on_clip(record)` runs in this process as each clip lands on disk (how `--latents` streams clips
    into a latent cache while the workers keep rendering).
    """
    from tqdm import tqdm

    if not hours > 0:
        raise BadInput(f"--hours must be more than 0 (got {hours}); try --hours 0.2 for a quick corpus.")
    if categories:
        unknown = sorted(set(categories) - set(CATEGORY_WEIGHTS))
        if unknown:
            raise BadInput(
                f"There is no corpus category '{unknown[0]}'; choose from {', '.join(CATEGORY_WEIGHTS)}."
            )
        categories = [c for c in CATEGORY_WEIGHTS if c in set(categories)]  # one canonical order
    started = time.perf_counter()  # the build's speed counts planning and warm-up too
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    fonts = available_soundfonts()
    info_path = out / CORPUS_INFO
    old = _read_corpus_info(info_path) if info_path.is_file() else {}
    if old:
        old_fonts = [f["name"] for f in old.get("soundfonts", [])]
        if old.get("seed") != seed or old_fonts != [f.name for f in fonts]:
            raise BadInput(
                f"'{out}' holds a corpus built with seed {old.get('seed')} and other SoundFonts; "
                "build into a new folder or rerun with the same seed on the same machine."
            )
        if old.get("categories") != (categories or None):
            raise BadInput(
                f"'{out}' holds a corpus of other categories ({', '.join(old.get('categories') or ['all'])}); "
                "build into a new folder or rerun with the same --categories."
            )
    font_info = [
        {"name": f.name, "file": f.path.name, "sha256": f.sha256, "licence": f.licence} for f in fonts
    ]
    info = {
        "format_version": 1,
        "seed": seed,
        "hours": hours,
        "categories": categories or None,
        "sample_rate": SAMPLE_RATE,
        "soundfonts": font_info,
        "state": "building",
    }
    write_atomic(info_path, json.dumps(info, indent=2) + "\n")

    plans = plan_corpus(seed, hours, fonts, categories)
    _warm_up(fonts)
    manifest_path = out / MANIFEST
    done = {}
    if manifest_path.is_file():  # an interrupted build: keep the clips it finished
        records = _clip_records(manifest_path, tolerate_torn_tail=True)
        done = {r["id"]: r for r in records if (out / r["path"]).is_file()}
    # rewritten before appending, so a line torn by the kill cannot run into the next record
    write_atomic(manifest_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    todo = [p for p in plans if p.id not in done]
    workers = workers or min(2, os.cpu_count() or 1)
    rendered_clips, rendered_seconds = 0, 0.0
    bar = tqdm(
        total=len(plans),
        initial=len(plans) - len(todo),
        unit="clip",
        disable=not progress,
        desc="corpus",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with open(manifest_path, "a") as manifest:
        if workers > 1 and len(todo) > 1:
            pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (str(out), fonts))
            results = pool.imap(_render_job, todo, chunksize=2)
        else:
            pool = None
            _init_worker(str(out), fonts)
            results = map(_render_job, todo)
        try:
            for record in results:
                manifest.write(json.dumps(record) + "\n")
                manifest.flush()
                done[record["id"]] = record
                if on_clip is not None:
                    on_clip(record)
                rendered_clips += 1
                rendered_seconds += record["seconds"]
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(1)
                speed_now = (
                    f"{rendered_clips / elapsed:.1f} clips/s, {rendered_seconds / elapsed:.0f}x real time"
                )
                bar.set_postfix_str(speed_now, refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
            bar.close()
    elapsed = time.perf_counter() - started

    records = [done[p.id] for p in plans]
    write_atomic(manifest_path, "".join(json.dumps(r) + "\n" for r in records))
    speed = rendered_seconds / elapsed if rendered_seconds else None
    info.update(state="done", counts=corpus_counts(records))
    if speed is not None:  # a rerun that found everything written keeps the build's own figures
        info.update(
            build_seconds=round(elapsed, 2),
            rendered_seconds=round(rendered_seconds, 2),
            x_realtime=round(speed, 1),
            workers=workers,
        )
    else:
        info.update(
            {k: old[k] for k in ("build_seconds", "rendered_seconds", "x_realtime", "workers") if k in old}
        )
    write_atomic(info_path, json.dumps(info, indent=2) + "\n")
    if progress:
        speed_text = f"{speed:.0f}x real time" if speed else "nothing new to render"
        print(
            f"corpus: {len(records)} clips, {sum(r['seconds'] for r in records) / 3600:.2f} h; "
            f"this run rendered {rendered_seconds / 3600:.2f} h in {elapsed:.1f} s ({speed_text})",
            file=sys.stderr,
        )
    return out


def corpus_counts(records: list[dict]) -> dict:
    """Totals a reader of corpus.json wants: clips, hours, and clips per source, category, split and family."""

    def tally(values) -> dict:
        out: dict = {}
        for v in values:
            out[str(v)] = out.get(str(v), 0) + 1
        return dict(sorted(out.items()))

    params = [r["params"] for r in records]
    return {
        "clips": len(records),
        "hours": round(sum(r["seconds"] for r in records) / 3600, 4),
        "source": tally(r["source"] for r in records),
        "split": tally(r["split"] for r in records),
        "category": tally(p.get("category") for p in params),
        "programs": len({p["program"] for p in params if p.get("program") is not None}),
        "drum_patterns": len({p["style"] for p in params if p.get("category") == "drums"}),
        "fx_families": len({p["family"] for p in params if p.get("category") == "fx"}),
        "materials": len({r["material_id"] for r in records}),
    }


# ---------------------------------------------------------------- reading


def read_manifest(directory: Path, split: str | None = None) -> list[dict]:
    """The clips of a corpus folder (all, or one split); BadInput if there is no readable manifest."""
    directory = Path(directory)
    path = directory / MANIFEST
    if split is not None and split not in SPLITS:
        raise BadInput(f"Unknown split '{split}'; use train, val or test.")
    if not path.is_file():
        raise BadInput(
            f"No {MANIFEST} in '{directory}'; make a corpus there with `soundloom dataset build --out {directory}`."
        )
    records = _clip_records(path, tolerate_torn_tail=False)
    return [r for r in records if split is None or r["split"] == split]


def save_captions(directory: Path | str, edits: dict[str, str]) -> int:
    """Make each edited caption the clip's first caption in the manifest; returns how many changed."""
    directory = Path(directory)
    records = read_manifest(directory)
    known = {r["id"] for r in records}
    unknown = sorted(set(edits) - known)
    if unknown:
        raise BadInput(
            f"The dataset has no clip '{unknown[0]}'; reload the captions table and edit it again."
        )
    changed = 0
    for record in records:
        text = edits.get(record["id"])
        if text is None:
            continue
        text = " ".join(str(text).split())
        if not text:
            raise BadInput(f"The caption of '{record['id']}' is empty; write a few words about the sound.")
        if record["captions"] and record["captions"][0] == text:
            continue
        record["captions"] = [text, *[c for c in record["captions"][1:] if c != text]]
        record.setdefault("params", {})["caption_source"] = "edited"
        changed += 1
    if changed:
        write_atomic(directory / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    return changed


def require_clip_audio(directory: Path, records: list[dict]) -> None:
    """BadInput when any record's audio file is missing (a corpus copied in part, or files deleted); said
    before a reader starts its progress bar or writes anything."""
    missing = [r["path"] for r in records if not (Path(directory) / r["path"]).is_file()]
    if missing:
        raise BadInput(
            f"{len(missing)} of the {len(records)} clips listed in '{Path(directory) / MANIFEST}' have no audio "
            f"file (the first is '{missing[0]}'); copy the corpus whole, or rebuild it."
        )


def _clip_records(path: Path, *, tolerate_torn_tail: bool) -> list[dict]:
    """The records of a manifest file, each checked to be a clip record."""
    records = read_jsonl(path, tolerate_torn_tail=tolerate_torn_tail)
    for number, record in enumerate(records, start=1):
        missing = sorted(RECORD_KEYS - record.keys())
        if missing:
            raise BadInput(
                f"Record {number} of '{path}' is not a clip record (it has no {', '.join(missing)}); "
                "rebuild or repair the corpus."
            )
        if not isinstance(record["path"], str):
            raise BadInput(
                f"Record {number} of '{path}' has a path that is not text; rebuild or repair the corpus."
            )
    return records


def _read_corpus_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        raise BadInput(
            f"'{path}' is damaged (not a JSON object); build into a new folder, or delete this one and build again."
        )
    return info


# ---------------------------------------------------------------- a user's folder


AUTO_CAPTION_SECONDS = 30.0  # pyin runs at about real time / 2; a long file's opening says enough
CAPTION_COLUMNS = ("caption", "captions", "text", "description", "prompt")
FILE_COLUMNS = ("file", "path", "filename", "file_name", "audio", "name")


def _table_captions(src: Path) -> dict[str, list[str]]:
    """Captions from every CSV or JSONL table in the folder, keyed by file path relative to src and by name."""
    table: dict[str, list[str]] = {}

    def add(row: dict) -> None:
        lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        name = next((lowered[c] for c in FILE_COLUMNS if lowered.get(c)), None)
        text = next((lowered[c] for c in CAPTION_COLUMNS if lowered.get(c)), None)
        if not name or not text:
            return
        texts = [str(t) for t in text] if isinstance(text, list) else [str(text)]
        for key in {str(name).strip(), Path(str(name).strip()).name}:
            table.setdefault(key, []).extend(t.strip() for t in texts if t.strip())

    for path in sorted(src.rglob("*.csv")):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                add(row)
    for path in sorted(src.rglob("*.jsonl")):
        for row in read_jsonl(path, tolerate_torn_tail=False):
            add(row)
    return table


def _auto_captions(audio: Audio, relative: str) -> tuple[list[str], dict]:
    """Caption words from the file's name and folders plus words measured on (at most the first
    AUTO_CAPTION_SECONDS of) the clip, e.g. 'tom drum, short hits, loud, 0.18s'."""
    from dataclasses import replace

    from pipelines.analysis import analyze_clip

    head = Audio(audio.samples[:, : int(AUTO_CAPTION_SECONDS * audio.sample_rate)], audio.sample_rate)
    clip = replace(analyze_clip(head), seconds=audio.seconds)
    words = ", ".join([*captions.name_words(relative), clip.describe()])
    measured = {
        "f0_hz": clip.f0_hz,
        "note": clip.note,
        "bpm": clip.tempo_bpm,
        "key": clip.key,
        "brightness_hz": round(clip.brightness_hz, 1),
        "lufs": round(clip.loudness_lufs, 2),
    }
    return [words], measured


def from_folder(src: Path, out: Path) -> Path:
    """A corpus from a folder of audio files: captions from sidecar .txt files, a CSV/JSONL table, or analysis.

    Unreadable files are skipped and listed in out/skipped.txt. Returns `out`.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise BadInput(f"'{src}' is not a folder; give the folder that holds your audio files.")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_FORMATS)
    if not files:
        raise BadInput(f"'{src}' holds no {', '.join(INPUT_FORMATS)} files; add audio files to it first.")
    table = _table_captions(src)
    records, skipped = [], []
    for path in files:
        relative = path.relative_to(src).as_posix()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                audio = load_audio(path)
        except BadInput as e:
            skipped.append(f"{relative}: {e}")
            continue
        sidecar = path.with_suffix(".txt")
        texts = []
        if sidecar.is_file():
            texts = [
                t.strip()
                for t in sidecar.read_text(encoding="utf-8", errors="replace").splitlines()
                if t.strip()
            ]
        texts = texts or table.get(relative, []) or table.get(path.name, [])
        params: dict = {"category": "user", "original": relative}
        if texts:
            caption_source = "sidecar" if sidecar.is_file() else "table"
        else:
            texts, measured = _auto_captions(audio, relative)
            params.update(measured)
            caption_source = "analysis"
        params["caption_source"] = caption_source
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40].strip("_") or "clip"
        clip_id = f"{stem}-{hashlib.sha256(relative.encode()).hexdigest()[:8]}"
        (out / "audio").mkdir(parents=True, exist_ok=True)  # made with the first readable file, not before
        save_audio(audio, out / "audio" / f"{clip_id}.flac")
        material = f"folder:{relative}"
        records.append(
            {
                "id": clip_id,
                "path": f"audio/{clip_id}.flac",
                "captions": texts,
                "seconds": round(audio.seconds, 3),
                "source": "folder",
                "licence": "as provided by the folder's owner",
                "provenance": str(path),
                "material_id": material,
                "split": split_of(material),
                "params": params,
            }
        )
    if not records:
        first = files[0].relative_to(src).as_posix()
        raise BadInput(
            f"None of the {len(files)} audio file(s) in '{src}' could be read, starting with '{first}'; "
            f"re-export them as {', '.join(INPUT_FORMATS)} files."
        )
    write_atomic(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    write_atomic(out / "skipped.txt", "".join(line + "\n" for line in skipped))
    info = {
        "format_version": 1,
        "source": str(src),
        "counts": corpus_counts(records),
        "skipped": len(skipped),
    }
    write_atomic(out / CORPUS_INFO, json.dumps(info, indent=2) + "\n")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s); see {out / 'skipped.txt'}", file=sys.stderr)
    return out
