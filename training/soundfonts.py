"""General MIDI SoundFonts: finding them, fingerprinting them and rendering notes offline with tinysoundfont."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

FLUID_R3_PATH = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DRUM_BANK = 128
DRUM_CHANNEL = 9
TAIL_FLUSH_SAMPLES = 8192  # rendered and thrown away after sounds_off so no voice leaks into the next clip


@dataclass(frozen=True)
class SoundFont:
    """One SoundFont file with what a manifest must say about it."""

    name: str
    path: Path
    licence: str

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


class Note(Protocol):
    """Anything with pretty_midi.Note's fields: times in seconds, MIDI pitch, velocity 1..127."""

    start: float
    end: float
    pitch: int
    velocity: int


def file_sha256(path: Path) -> str:
    return _sha256_cached(str(Path(path).resolve()), Path(path).stat().st_mtime_ns)


@cache
def _sha256_cached(path: str, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def timgm6mb_path() -> Path:
    """TimGM6mb.sf2 as shipped inside the pretty_midi package folder."""
    spec = importlib.util.find_spec("pretty_midi")
    assert spec is not None and spec.origin is not None, "pretty_midi is a hard dependency"
    return Path(spec.origin).parent / "TimGM6mb.sf2"


def available_soundfonts() -> list[SoundFont]:
    """TimGM6mb always; FluidR3_GM when Debian's fluid-soundfont-gm is installed."""
    fonts = [SoundFont("TimGM6mb", timgm6mb_path(), "GPL-2.0 (TimGM6mb.sf2 by Tim Brechbill)")]
    if FLUID_R3_PATH.is_file():
        fonts.append(SoundFont("FluidR3_GM", FLUID_R3_PATH, "MIT (FluidR3_GM.sf2 by Frank Wen)"))
    return fonts


def loaded_synth(font: SoundFont, sample_rate: int):
    """(tinysoundfont.Synth, SoundFont id), loaded once per font, rate and process (FluidR3 takes 0.5 s)."""
    return _synth(str(font.path), sample_rate)


@cache
def _synth(path: str, sample_rate: int):
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(path)
    return synth, sfid


def render_notes(
    font: SoundFont,
    notes: Iterable[Note],
    seconds: float,
    *,
    program: int = 0,
    drums: bool = False,
    kit: int = 0,
    pan: int = 64,
    sample_rate: int = 44100,
) -> np.ndarray:
    """Render notes with one GM program (or drum kit) to float32 [2, round(seconds*sr)], sample-accurate.

    `pan` is the MIDI pan controller: 0 left, 64 centre, 127 right.
    """
    synth, sfid = loaded_synth(font, sample_rate)
    channel = DRUM_CHANNEL if drums else 0
    synth.sounds_off()
    synth.generate(TAIL_FLUSH_SAMPLES)
    for controller, value in ((121, 0), (7, 100), (10, pan), (11, 127), (64, 0)):
        synth.control_change(channel, controller, value)
    synth.pitchbend(channel, 8192)
    synth.program_select(channel, sfid, DRUM_BANK if drums else 0, kit if drums else program, is_drums=drums)

    events = []
    for note in notes:
        events.append((round(note.start * sample_rate), 1, note.pitch, note.velocity))
        if not drums:  # GM drums ignore note-off; sending it would cut some kits' samples short
            events.append((round(note.end * sample_rate), 0, note.pitch, 0))
    events.sort()  # note-offs (0) before note-ons (1) at the same sample, so repeated pitches retrigger

    total = round(seconds * sample_rate)
    out = np.zeros((total, 2), dtype=np.float32)
    cursor = 0
    for position, is_on, pitch, velocity in events:
        position = min(max(position, 0), total)
        if position > cursor:
            out[cursor:position] = np.frombuffer(synth.generate(position - cursor), dtype=np.float32).reshape(
                -1, 2
            )
            cursor = position
        if is_on:
            synth.noteon(channel, pitch, velocity)
        else:
            synth.noteoff(channel, pitch)
    if total > cursor:
        out[cursor:] = np.frombuffer(synth.generate(total - cursor), dtype=np.float32).reshape(-1, 2)
    synth.sounds_off()
    return np.ascontiguousarray(out.T)
