"""Voice-to-audio: a voice (or a MIDI file) performs the sound a prompt names (`soundloom voice INPUT PROMPT`).

    from pipelines.voice import voice
    out = voice(gen, "hum.wav", "a soft flute", seed=3)      # an Audio, a recording's path, or a .mid

The voice's loudness, onsets and pitch (f0 + voicing) are measured on latent frames by the one
analysis function (pipelines/controls.py), exactly as on training clips, and the model follows them
as controls. A MIDI file gives the same controls: it is rendered with pretty_midi's sine synthesis
for loudness and onsets, and its pitch is the highest sounding note of each frame, taken exactly.

Post-processing (on by default, `post=False` for model-only figures): the output's loudness envelope
is pulled towards the voice's, frame by frame (at most +12 dB, at most -60 dB, smoothed over three
frames), around the output's own median level; frames where the voice is silent are thereby cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipelines.analysis import FLOOR_DB, analyze_frames
from pipelines.audio import Audio, load_audio, peak_db
from pipelines.conditioned import (
    Conditions,
    base_settings,
    check_drop,
    control_tensors,
    decode,
    fill_info,
    frames_for,
    peak_safe_if_over,
    rng_for,
    sample_window,
    settings_info,
    source_audio,
)
from pipelines.controls import AUDIBLE_RANGE_DB, CONTROL_GROUPS, LOUDNESS_MAX, Controls, measure_controls
from pipelines.errors import BadInput
from pipelines.generator import Generator

GROUPS = ("loudness", "onset", "pitch")
MIDI_SUFFIXES = (".mid", ".midi")
MIDI_RENDER_RATE = 22050  # the analysis rate: nothing above it is measured
SILENT_PEAK_DB = -60.0
NOISE_RANGE_DB = 8.0  # an unpitched input whose loudness varies less than this is noise, not a voice
MAX_BOOST_DB = 12.0
MAX_CUT_DB = 60.0


def voice(
    gen: Generator,
    source: Audio | str | Path,
    prompt: str,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    post: bool = True,
    drop: Iterable[str] = (),
    callback=None,
    info: dict | None = None,
) -> Audio:
    """The sound `prompt` names, following the voice's (or MIDI file's) loudness, onsets and pitch.

    As long as the voice (at most the model's window), 44.1 kHz stereo. `drop` hides control groups
    (loudness, onset, pitch) from the model: the negative control of the benches. `post=False` turns
    the envelope follower off. `info`, when given, receives the settings used.
    """
    drop = check_drop(drop, GROUPS)
    guide, controls = voice_controls(gen, source)
    s = base_settings(gen, prompt, guide.seconds, steps=steps, seed=seed, guidance=guidance, sampler=sampler)
    frames = controls.frames
    values, mask = control_tensors(controls, [g for g in GROUPS if g not in drop])
    cond = Conditions(frames, values, mask)
    z = sample_window(gen, [(s.prompt, 1.0)], s, cond, rng_for(s.seed), callback=callback)
    n = round(guide.seconds * gen.sample_rate)
    out = decode(gen, z, n)
    if post:
        out = follow_loudness(out, guide, gen.codec.latent_rate)
    used = [g for g in GROUPS if float(mask[CONTROL_GROUPS[g][0]].max()) > 0]
    kind = "midi" if _is_midi(source) else "audio"
    fill_info(
        info, settings_info(s, "voice", source_kind=kind, controls_used=used, post=post, drop=list(drop))
    )
    return peak_safe_if_over(out)


def _is_midi(source) -> bool:
    return isinstance(source, str | Path) and Path(source).suffix.lower() in MIDI_SUFFIXES


def voice_controls(gen: Generator, source: Audio | str | Path) -> tuple[Audio, Controls]:
    """(the guide audio the controls were measured on, the controls on the generator's latent frames)."""
    if _is_midi(source):
        return midi_controls(gen, Path(source))
    if isinstance(source, str | Path):
        source = load_audio(source)
    audio = source_audio(source, gen, "The voice recording", max_seconds=gen.max_seconds)
    if peak_db(audio) < SILENT_PEAK_DB:
        raise BadInput(
            f"The voice recording is silent (peak {peak_db(audio):.0f} dBFS); record the voice louder."
        )
    frames = frames_for(gen, audio.frames)
    controls = measure_controls(audio, frames, gen.codec.latent_rate)
    pitched = bool(controls.present[CONTROL_GROUPS["pitch"][0]])
    level_db = loudness_db_of(controls)
    swing = float(np.percentile(level_db, 95) - np.percentile(level_db, 10))
    if not pitched and swing < NOISE_RANGE_DB:
        raise BadInput(
            "The voice recording sounds like steady noise (no pitch, no rise and fall in level); "
            "give a recording of a voice, humming or singing."
        )
    return audio, controls


def midi_controls(gen: Generator, path: Path) -> tuple[Audio, Controls]:
    """Controls from a MIDI file: loudness and onsets measured on its sine rendering, pitch from its notes."""
    import pretty_midi

    if not path.is_file():
        raise BadInput(f"The MIDI file '{path}' does not exist; check the path.")
    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # mido and pretty_midi raise many kinds for damaged files
        reason = " ".join(str(e).split())[:80] or type(e).__name__
        raise BadInput(
            f"Could not read '{path.name}' as a MIDI file ({reason}); export it again as a standard MIDI file."
        ) from None
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes if n.end > n.start]
    if not notes:
        raise BadInput(f"The MIDI file '{path.name}' has no pitched notes; give a file with a melody in it.")
    seconds = max(n.end for n in notes)
    if seconds > gen.max_seconds:
        raise BadInput(
            f"The MIDI file '{path.name}' lasts {seconds:.1f} s, more than the {gen.max_seconds:g} s this "
            "model handles at once; shorten it."
        )
    seconds = max(seconds, 0.25)
    n = round(seconds * gen.sample_rate)
    frames = frames_for(gen, n)
    wave = midi.synthesize(fs=MIDI_RENDER_RATE)[: round(seconds * MIDI_RENDER_RATE)]
    wave = np.pad(wave, (0, max(0, round(seconds * MIDI_RENDER_RATE) - wave.size)))
    peak = float(np.abs(wave).max()) or 1.0
    guide = Audio((0.5 * wave / peak).astype(np.float32)[None], MIDI_RENDER_RATE)
    controls = measure_controls(guide, frames, gen.codec.latent_rate)

    centres = (np.arange(frames) + 0.5) / gen.codec.latent_rate
    top = np.zeros(frames)
    for note in notes:  # the highest note sounding at each frame centre
        on = (centres >= note.start) & (centres < note.end)
        top[on] = np.maximum(top[on], note.pitch)
    voiced = top > 0
    pitch_channel, voicing_channel = CONTROL_GROUPS["pitch"]
    controls.values[pitch_channel] = np.where(voiced, (top - 69.0) / 12.0 / 4.0, 0.0)  # log2(f0/440)/4
    controls.values[voicing_channel] = voiced.astype(np.float32)
    controls.present[[pitch_channel, voicing_channel]] = True
    return guide, controls


def follow_loudness(out: Audio, guide: Audio, frame_rate: float) -> Audio:
    """`out` with its loudness envelope pulled towards `guide`'s (post-processing: an envelope multiplied on).

    Both envelopes are the analysis module's RMS levels on frames at `frame_rate`; the target is the
    guide's envelope moved to the output's own median level over the guide's audible frames.
    """
    out_db = analyze_frames(out, frame_rate, beats_s=(), pitch=False).loudness_db.astype(np.float64)
    guide_db = analyze_frames(guide, frame_rate, beats_s=(), pitch=False).loudness_db.astype(np.float64)
    count = min(len(out_db), len(guide_db))
    out_db, guide_db = out_db[:count], guide_db[:count]
    audible = guide_db > max(float(guide_db.max()) - AUDIBLE_RANGE_DB, FLOOR_DB + 1.0)
    if not audible.any() or not (out_db > FLOOR_DB + 1.0).any():
        return out
    offset = float(np.median(out_db[audible]) - np.median(guide_db[audible]))
    gain_db = np.clip(guide_db + offset - out_db, -MAX_CUT_DB, MAX_BOOST_DB)
    gain_db = np.convolve(np.pad(gain_db, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    frame_times = np.arange(count) / frame_rate
    sample_times = np.arange(out.frames) / out.sample_rate
    gain = 10.0 ** (np.interp(sample_times, frame_times, gain_db) / 20.0)
    return Audio((out.samples * gain[None]).astype(np.float32), out.sample_rate)


def loudness_db_of(controls: Controls) -> np.ndarray:
    """The loudness control of `controls` back in dBFS."""
    level = np.clip(controls.values[CONTROL_GROUPS["loudness"][0]], 0.0, LOUDNESS_MAX)
    return level * -FLOOR_DB + FLOOR_DB
