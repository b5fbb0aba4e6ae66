"""The creative pipelines (transform, voice, beats, extend, repaint, live), their CLI verbs and
`bench pipelines`, on the tiny generator bundle (random DiT, random tiny codec): lengths, what is kept,
what the sampler is handed, and one-sentence refusals. Quality figures need a trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch
from test_generator import tiny_generator_bundle

import app.cli as cli
from pipelines.audio import Audio
from pipelines.controls import CONTROL_GROUPS, measure_controls
from pipelines.edit import EDIT_FADE_MS, extend, repaint
from pipelines.errors import BadInput
from pipelines.generator import load_generator
from pipelines.live import morph, neighbour_noise, neighbours, stream
from pipelines.loops import LOOP_FADE_MS, BeatGrid, beats, close_loop, parse_key, parse_meter
from pipelines.transform import hold_weight, transform
from pipelines.voice import voice

SR = 44100
PROMPT = "a warm cello note"


def tone(seconds: float = 1.2, freq: float = 220.0, pulse_hz: float = 4.0) -> Audio:
    """A pitched tone pulsing `pulse_hz` times a second (clear onsets, clear pitch), stereo 44.1 kHz."""
    t = np.arange(round(seconds * SR)) / SR
    envelope = np.exp(-8.0 * np.mod(t, 1.0 / pulse_hz))
    x = (0.4 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return Audio(np.stack([x, x]), SR)


def click_track(bpm: float, lead_s: float, seconds: float, beats_per_bar: int = 4) -> Audio:
    """Decaying noise bursts on each beat after `lead_s`, the downbeats twice as loud."""
    rng = np.random.default_rng(0)
    x = np.zeros(round(seconds * SR), np.float32)
    beat = 60.0 / bpm
    burst = (rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)).astype(np.float32)
    for k in range(int((seconds - lead_s) / beat) + 1):
        i = round((lead_s + k * beat) * SR)
        piece = burst[: max(0, min(len(burst), x.size - i))]
        x[i : i + piece.size] += (0.8 if k % beats_per_bar == 0 else 0.3) * piece
    return Audio(np.stack([x, x]), SR)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="module", autouse=True)
def warm_librosa():
    """librosa compiles its onset and beat code with numba on first use (~10 s): once, in setup."""
    measure_controls(tone(0.5), 22, 43.07)


@pytest.fixture(scope="module")
def gen(bundle):
    return load_generator(bundle)


class Spy:
    """Wraps the generator's sampling DiT and records the keyword inputs of every call."""

    def __init__(self, dit):
        self.dit, self.calls, self.frames = dit, [], []

    def __call__(self, x, t, **kwargs):
        self.calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        self.frames.append(x.shape[-1])
        return self.dit(x, t, **kwargs)

    def seconds_said(self) -> list[float]:
        """The `seconds` condition of every call (one per sampling step of each window)."""
        out = []
        for call in self.calls:
            said = {float(v) for v in call["seconds"]}
            assert len(said) == 1, "every row of a call (CFG halves) is told the same length"
            out.append(said.pop())
        return out

    def clear(self) -> None:
        self.calls.clear()
        self.frames.clear()


@pytest.fixture
def spy(gen, monkeypatch) -> Spy:
    s = Spy(gen._sampling_dit)
    monkeypatch.setattr(gen, "_sampling_dit", s)
    return s


# ---------------------------------------------------------------- style transfer


def test_transform_strength_0_is_the_source_decode_and_1_ignores_the_source(gen):
    src = tone(1.3)
    n = src.frames
    out0 = transform(gen, src, PROMPT, strength=0.0, seed=1)
    assert out0.sample_rate == SR and out0.samples.shape == (2, n)
    frames = -(-n // gen.codec.cfg.latent_hop)
    roundtrip = gen.codec.decode(gen.codec.encode(src)[:, :frames], n_samples=n)
    np.testing.assert_allclose(out0.samples, roundtrip.samples, atol=1e-6)

    other = tone(1.3, freq=440.0, pulse_hz=7.0)
    a = transform(gen, src, PROMPT, strength=1.0, seed=1)
    b = transform(gen, other, PROMPT, strength=1.0, seed=1)
    np.testing.assert_array_equal(a.samples, b.samples)  # at 1 the source latent is all noise
    mid = transform(gen, src, PROMPT, strength=0.5, seed=1)
    assert not np.allclose(mid.samples, out0.samples, atol=1e-4) and not np.allclose(
        mid.samples, a.samples, atol=1e-4
    )
    assert np.array_equal(mid.samples, transform(gen, src, PROMPT, strength=0.5, seed=1).samples)


def test_the_hold_on_the_measured_channels_fades_with_strength():
    weights = [hold_weight(s) for s in (0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)]
    assert weights[0] == 1.0 and weights[-1] == 0.0 and weights[4] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(weights, weights[1:]))  # strictly less of the source as strength rises
    assert hold_weight(0.1) > 0.98  # a light transform keeps the source's level and pitch


@pytest.mark.parametrize("strength", [0.1, 0.6])
def test_transform_holds_the_sources_measured_channels_by_its_strength(gen, monkeypatch, strength):
    import pipelines.conditioned as conditioned

    seen = []
    real = conditioned.measured_hold_model

    def recording(model, source, channels, weight):
        seen.append((source.clone(), channels, weight))
        return real(model, source, channels, weight)

    monkeypatch.setattr(conditioned, "measured_hold_model", recording)
    # the tiny codec measures nothing: say its last 3 channels are measured, as the bundled codec's are
    monkeypatch.setattr(type(gen), "measured_channels", property(lambda self: 3))
    src = tone(1.3)
    transform(gen, src, PROMPT, strength=strength, seed=1)
    frames = -(-src.frames // gen.codec.cfg.latent_hop)
    ((source, channels, weight),) = seen
    assert channels == 3 and weight == pytest.approx(hold_weight(strength))
    torch.testing.assert_close(source[0], gen.codec.encode(src)[:, :frames])
    seen.clear()
    transform(gen, src, PROMPT, strength=1.0, seed=1)
    assert seen == []  # at 1 nothing of the source is held


def test_transform_keep_hands_the_sources_controls_to_the_sampler(gen, spy):
    src = tone(1.3)
    frames = -(-src.frames // gen.codec.cfg.latent_hop)
    info: dict = {}
    transform(gen, src, PROMPT, strength=0.6, keep="rhythm", seed=2, info=info)
    assert spy.calls and all("control_mask" in c for c in spy.calls)
    mask, values = spy.calls[0]["control_mask"][0], spy.calls[0]["controls"][0]
    assert mask.shape == (8, frames)
    onset, pitch, loudness = (
        CONTROL_GROUPS["onset"][0],
        CONTROL_GROUPS["pitch"][0],
        CONTROL_GROUPS["loudness"][0],
    )
    assert (
        float(mask[onset].min()) == 1.0
        and float(mask[pitch].max()) == 0.0
        and float(mask[loudness].max()) == 0.0
    )
    measured = measure_controls(src, frames, gen.codec.latent_rate)
    np.testing.assert_allclose(values[onset].numpy(), measured.values[onset], atol=1e-6)
    assert float(values[onset].max()) > 0.5  # the pulses are there
    assert info["keep"] == ["rhythm"] and "onset" in info["controls_used"] and info["strength"] == 0.6

    spy.calls.clear()
    transform(gen, src, PROMPT, strength=0.6, keep=("melody", "loudness"), seed=2)
    mask = spy.calls[0]["control_mask"][0]
    assert (
        float(mask[pitch].min()) == 1.0
        and float(mask[loudness].min()) == 1.0
        and float(mask[onset].max()) == 0.0
    )

    spy.calls.clear()
    transform(gen, src, PROMPT, strength=0.6, seed=2)
    assert "controls" not in spy.calls[0]  # nothing kept: no controls at all


# ---------------------------------------------------------------- voice


def write_midi(path: Path, notes: list[tuple[float, float, int]]) -> Path:
    midi = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes.extend(pretty_midi.Note(velocity=100, pitch=p, start=s, end=e) for s, e, p in notes)
    midi.instruments.append(inst)
    midi.write(str(path))
    return path


def test_voice_from_a_midi_file_follows_its_notes(gen, spy, tmp_path):
    path = write_midi(tmp_path / "line.mid", [(0.0, 0.4, 60), (0.5, 0.9, 67), (1.0, 1.4, 64)])
    info: dict = {}
    out = voice(gen, path, "a soft flute", seed=3, info=info)
    assert out.sample_rate == SR and out.samples.shape == (2, round(1.4 * SR))
    controls, mask = spy.calls[0]["controls"][0].numpy(), spy.calls[0]["control_mask"][0].numpy()
    log_f0, voicing = CONTROL_GROUPS["pitch"]
    centres = (np.arange(controls.shape[1]) + 0.5) / gen.codec.latent_rate
    for start, end, pitch in [(0.0, 0.4, 60), (0.5, 0.9, 67), (1.0, 1.4, 64)]:
        inside = (centres > start + 0.03) & (centres < end - 0.03)
        np.testing.assert_allclose(controls[log_f0, inside], (pitch - 69) / 48, atol=1e-6)
        assert np.all(controls[voicing, inside] == 1.0)
    gap = (centres > 0.42) & (centres < 0.48)
    assert gap.any() and np.all(controls[voicing, gap] == 0.0)
    assert mask[[log_f0, voicing, CONTROL_GROUPS["loudness"][0], CONTROL_GROUPS["onset"][0]]].min() == 1.0
    assert mask[list(CONTROL_GROUPS["beat"])].max() == 0.0  # a voice has no grid
    assert info["source_kind"] == "midi" and set(info["controls_used"]) == {"loudness", "onset", "pitch"}


def test_voice_from_audio_uses_its_loudness_and_post_shapes_the_envelope(gen, spy):
    src = tone(1.2)
    model_only = voice(gen, src, "a soft flute", seed=4, post=False)
    final = voice(gen, src, "a soft flute", seed=4)
    masked = voice(gen, src, "a soft flute", seed=4, post=False, drop=("loudness",))
    assert model_only.samples.shape == final.samples.shape == (2, src.frames)
    first = spy.calls[0]["control_mask"][0]
    assert float(first[CONTROL_GROUPS["loudness"][0]].min()) == 1.0
    last = spy.calls[-1]["control_mask"][0]
    assert float(last[CONTROL_GROUPS["loudness"][0]].max()) == 0.0  # dropped: the negative control
    assert float(last[CONTROL_GROUPS["pitch"][0]].min()) == 1.0
    assert not np.allclose(model_only.samples, final.samples)  # the envelope follower acted
    assert not np.allclose(model_only.samples, masked.samples)


# ---------------------------------------------------------------- beats


def test_loop_length_is_exact_and_the_grid_is_handed_to_the_sampler(gen, spy):
    info: dict = {}
    out = beats(gen, "a funk drum loop", bpm=123.0, bars=2, meter="3/4", key="Ebm", seed=5, info=info)
    n = round(2 * 3 * 60 / 123.0 * SR)
    assert out.sample_rate == SR and out.samples.shape == (2, n)
    assert info["samples"] == n and info["text"] == "a funk drum loop, 123 BPM, D# minor"
    values, mask = spy.calls[0]["controls"][0].numpy(), spy.calls[0]["control_mask"][0].numpy()
    centres = (np.arange(values.shape[1]) + 0.5) / gen.codec.latent_rate
    beat_phase = 2 * np.pi * centres / (60 / 123.0)
    bar_phase = beat_phase / 3
    b_sin, b_cos = CONTROL_GROUPS["beat"]
    r_sin, r_cos = CONTROL_GROUPS["bar"]
    np.testing.assert_allclose(values[b_sin], np.sin(beat_phase), atol=1e-3)
    np.testing.assert_allclose(values[b_cos], np.cos(beat_phase), atol=1e-3)
    np.testing.assert_allclose(values[r_sin], np.sin(bar_phase), atol=1e-3)
    np.testing.assert_allclose(values[r_cos], np.cos(bar_phase), atol=1e-3)
    assert mask[[b_sin, b_cos, r_sin, r_cos]].min() == 1.0 and mask[CONTROL_GROUPS["onset"][0]].max() == 0.0


def test_loop_seam_runs_on_and_post_only_touches_the_first_fade(gen):
    looped = beats(gen, "a house beat", bpm=120.0, bars=1, loop=True, seed=6)
    raw = beats(gen, "a house beat", bpm=120.0, bars=1, loop=True, seed=6, post=False)
    n = BeatGrid(120.0, 4, 1).samples(SR)
    assert looped.frames == raw.frames == n == 88200
    fade = round(LOOP_FADE_MS * SR / 1000)
    np.testing.assert_array_equal(looped.samples[:, fade:], raw.samples[:, fade:])
    assert not np.allclose(looped.samples[:, :fade], raw.samples[:, :fade])

    t = np.arange(n + 4096) / SR  # on a continuous signal, the wrap becomes two neighbouring samples
    wave = np.stack([np.sin(2 * np.pi * 3.3 * t), np.cos(2 * np.pi * 3.3 * t)]).astype(np.float32)
    closed = close_loop(Audio(wave, SR), n, fade).samples
    typical = np.abs(np.diff(wave, axis=1)).max()
    assert np.abs(closed[:, 0] - closed[:, -1]).max() <= 1.01 * typical
    np.testing.assert_array_equal(closed[:, fade:], wave[:, fade:n])


def test_beats_longer_than_the_window_continue_on_the_grid(gen, spy):
    out = beats(gen, "a rock beat", bpm=60.0, bars=6, seed=7)  # 24 s > the tiny model's 20 s
    assert out.frames == 24 * SR
    windows = [c for c in spy.calls if "known_mask" in c]
    assert windows, "the second window continues from known frames"
    assert float(windows[0]["known_mask"].sum()) > 0


def test_windows_of_a_sound_that_goes_on_say_so_in_their_seconds(gen, spy, monkeypatch):
    """A stream's windows, a loop's, and every window of a long continuation but the last are told the sound
    goes on past them (seconds of at least a training crop); a sound of N seconds is told N."""
    # crops longer than any window here, so "goes on" and "ends" are different lengths for every window
    monkeypatch.setitem(gen.config, "segment_frames", 5000)
    rate, crop = gen.codec.latent_rate, gen.segment_frames

    def told(goes_on: bool) -> list:
        return [
            pytest.approx((max(frames, crop) if goes_on else frames) / rate, rel=1e-6)
            for frames in spy.frames
        ]

    gen.generate("a drone", seconds=1.0, seed=1)
    assert spy.seconds_said() == told(False)
    spy.clear()
    list(
        stream(
            gen, "a drone", seconds=1.0, seed=1, first_seconds=0.25, chunk_seconds=0.25, context_seconds=0.25
        )
    )
    assert spy.frames
    assert spy.seconds_said() == told(True)
    spy.clear()
    beats(gen, "a rock beat", bpm=60.0, bars=6, seed=7)  # 24 s: two windows of the tiny model's 20 s
    said, steps = spy.seconds_said(), len(spy.frames) // 2
    assert len(set(spy.frames)) == 2 and max(spy.frames) < crop
    assert said[:steps] == told(True)[:steps] and said[steps:] == told(False)[steps:]
    assert said[:steps] != told(False)[:steps]
    spy.clear()
    beats(gen, "a rock beat", bpm=120.0, bars=1, seed=7, loop=True)
    assert spy.seconds_said() == told(True)


def test_align_to_a_track_takes_its_tempo_and_downbeat(gen):
    track = click_track(100.0, 0.37, 9.0)
    info: dict = {}
    out = beats(gen, "drums", bars=1, align_to=track, seed=8, info=info)
    assert abs(info["bpm"] - 100.0) / 100.0 < 0.01
    assert abs(info["starts_at_s"] - 0.37) < 0.03
    assert out.frames == BeatGrid(info["bpm"], 4, 1).samples(SR)
    beats(gen, "drums", bars=1, align_to=track, downbeat_offset=1.0, bpm=100.0, seed=8, info=info)
    assert info["starts_at_s"] == 1.0 and info["bpm"] == 100.0


def test_meter_and_key_parsing():
    assert parse_meter("4/4") == 4 and parse_meter(" 6/8 ") == 6 and parse_meter("7/8") == 7
    assert (
        parse_key("Am") == "A minor" and parse_key("f#") == "F# major" and parse_key("Bb major") == "A# major"
    )
    assert parse_key(None) is None
    for bad in ("4/3", "0/4", "four", "17/4"):
        with pytest.raises(BadInput, match="time signature"):
            parse_meter(bad)
    with pytest.raises(BadInput, match="not a key"):
        parse_key("H minor")


# ---------------------------------------------------------------- extend and repaint


def test_extend_keeps_the_source_outside_the_crossfade(gen, spy):
    src = tone(1.3)  # not a whole number of latent frames
    out = extend(gen, src, PROMPT, seconds=0.8, seed=9)
    n0 = src.frames
    assert out.sample_rate == SR and out.samples.shape == (2, n0 + round(0.8 * SR))
    fade = round(EDIT_FADE_MS * SR / 1000)
    np.testing.assert_array_equal(out.samples[:, : n0 - fade], src.samples[:, : n0 - fade])
    assert not np.array_equal(out.samples[:, n0 - fade : n0], src.samples[:, n0 - fade : n0])
    assert np.abs(out.samples[:, n0:]).max() > 0
    known = spy.calls[0]["known_mask"][0, 0]
    assert float(known.sum()) == math.ceil(n0 / gen.codec.cfg.latent_hop)  # every source frame is known
    assert float(known[-1]) == 0.0


def test_repaint_keeps_everything_outside_the_region(gen, spy):
    src = tone(1.5)
    out = repaint(gen, src, "a bell", start=0.5, end=0.9, seed=10)
    a, b = round(0.5 * SR), round(0.9 * SR)
    assert out.samples.shape == src.samples.shape
    np.testing.assert_array_equal(out.samples[:, :a], src.samples[:, :a])
    np.testing.assert_array_equal(out.samples[:, b:], src.samples[:, b:])
    assert not np.allclose(out.samples[:, a:b], src.samples[:, a:b], atol=1e-3)
    hop = gen.codec.cfg.latent_hop
    unknown = (spy.calls[0]["known_mask"][0, 0] == 0).nonzero().flatten().tolist()
    assert unknown == list(range(a // hop, -(-b // hop)))  # every frame overlapping the region


# ---------------------------------------------------------------- live


def test_stream_yields_gapless_chunks_that_continue_from_known_frames(gen, spy):
    chunks = list(
        stream(
            gen, "a drone", seconds=3.0, seed=11, first_seconds=0.5, chunk_seconds=1.0, context_seconds=1.0
        )
    )
    assert len(chunks) >= 3 and all(c.sample_rate == SR and c.channels == 2 and c.frames > 0 for c in chunks)
    x = np.concatenate([c.samples for c in chunks], axis=1)
    assert x.shape[1] == 3 * SR  # no gaps, no overlaps, exactly the length asked for
    jumps = np.abs(np.diff(x, axis=1)).max(axis=0)
    for seam in np.cumsum([c.frames for c in chunks])[:-1]:
        assert jumps[seam - 1] <= np.percentile(jumps, 99.9)
    assert sum("known_mask" in c for c in spy.calls) > 0
    again = np.concatenate(
        [
            c.samples
            for c in stream(
                gen,
                "a drone",
                seconds=3.0,
                seed=11,
                first_seconds=0.5,
                chunk_seconds=1.0,
                context_seconds=1.0,
            )
        ],
        axis=1,
    )
    np.testing.assert_array_equal(again, x)


def test_stream_reads_the_slider_before_each_window(gen):
    seen = []

    def slider():
        seen.append(len(seen))
        return min(1.0, 0.25 * len(seen))

    chunks = stream(
        gen, "rain", morph_to="fire", alpha=slider, seconds=2.0, seed=1, first_seconds=0.5, chunk_seconds=0.5
    )
    assert sum(c.frames for c in chunks) == 2 * SR and len(seen) >= 3


def test_morph_ends_are_the_prompts_and_neighbourhoods_stay_near(gen):
    a = morph(gen, "rain", None, seconds=1.0, seed=12)
    b = morph(gen, "fire", None, seconds=1.0, seed=12)
    assert a.samples.shape == (2, SR)
    np.testing.assert_array_equal(morph(gen, "rain", "fire", 0.0, seconds=1.0, seed=12).samples, a.samples)
    np.testing.assert_array_equal(morph(gen, "rain", "fire", 1.0, seconds=1.0, seed=12).samples, b.samples)
    half = morph(gen, "rain", "fire", 0.5, seconds=1.0, seed=12).samples
    assert not np.allclose(half, a.samples, atol=1e-4) and not np.allclose(half, b.samples, atol=1e-4)

    base = neighbour_noise(12, 1, 0.0, (8, 4000))
    near = neighbour_noise(12, 1, 0.2, (8, 4000))
    corr = float((base * near).mean() / (base.std() * near.std()))
    assert abs(corr - math.cos(0.2 * math.pi / 2)) < 0.02 and abs(float(near.std()) - 1.0) < 0.03
    offset = neighbour_noise(12, 1, 0.2, (64, 4000), offset=1.0)  # the bundle's offset noise keeps its law
    assert abs(float(offset.std()) - 1.0) < 0.1 and 0.4 < float(offset.mean(-1).std()) < 1.0
    variations = neighbours(gen, "rain", seed=12, count=2, amount=0.2, seconds=1.0)
    far = morph(gen, "rain", None, seconds=1.0, seed=99).samples
    for v in variations:
        assert np.abs(v.samples - a.samples).mean() < np.abs(far - a.samples).mean()
    assert not np.allclose(variations[0].samples, variations[1].samples)


# ---------------------------------------------------------------- refusals (Python API)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda g: transform(g, tone(), PROMPT, strength=1.5), "strength must be a number from 0 to 1"),
        (lambda g: transform(g, tone(), PROMPT, strength=-0.1), "strength"),
        (lambda g: transform(g, tone(), PROMPT, strength=float("nan")), "strength"),
        (lambda g: transform(g, tone(), PROMPT, keep="timbre"), "Cannot keep 'timbre'"),
        (lambda g: transform(g, tone(0.001), PROMPT), "give at least 0.2 s"),
        (lambda g: transform(g, tone(25.0), PROMPT), "more than the 20 s"),
        (lambda g: voice(g, Audio(np.zeros((2, SR), np.float32), SR), PROMPT), "silent"),
        (lambda g: beats(g, "drums", bpm=0, bars=1), "tempo must be from 20 to 400"),
        (lambda g: beats(g, "drums", bpm=1000, bars=1), "tempo"),
        (lambda g: beats(g, "drums", bpm=120, bars=0), "bars must be a whole number"),
        (lambda g: beats(g, "drums", bpm=20, bars=256), "more than 600 s"),
        (lambda g: beats(g, "drums", bars=2), "Give a tempo"),
        (lambda g: beats(g, "drums", bpm=120, bars=1, downbeat_offset=0.5), "only applies with a track"),
        (lambda g: beats(g, "drums", bpm=120, bars=1, drop=("pitch",)), "Cannot drop 'pitch'"),
        (lambda g: beats(g, "drums", bars=1, align_to=tone(3.0, pulse_hz=0.01)), "No steady beat"),
        (lambda g: repaint(g, tone(), PROMPT, start=0.9, end=0.5), "must come before its end"),
        (lambda g: repaint(g, tone(), PROMPT, start=0.5, end=2.0), "outside the clip"),
        (lambda g: repaint(g, tone(), PROMPT, start=-0.1, end=0.5), "outside the clip"),
        (lambda g: repaint(g, tone(), PROMPT, start=0.5, end=0.52), "at least 0.1 s"),
        (lambda g: extend(g, tone(), PROMPT, seconds=0), "seconds must be above 0"),
        (lambda g: extend(g, tone(), "", seconds=1), "prompt is empty"),
        (lambda g: morph(g, "rain", "fire", 1.5), "alpha"),
        (lambda g: morph(g, "rain", "  ", 0.5), "prompt is empty"),
        (lambda g: neighbours(g, "rain", seed=1, count=0), "count must be"),
        (lambda g: stream(g, "rain", seconds=-1), "seconds must be above 0"),
        (lambda g: stream(g, "rain", chunk_seconds=30.0), "must fit the model"),
    ],
)
def test_bad_arguments_are_one_sentence(gen, call, needle):
    with pytest.raises(BadInput) as err:
        call(gen)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_noise_and_broken_midi_are_refused(gen, tmp_path):
    rng = np.random.default_rng(1)
    hiss = Audio((0.1 * rng.standard_normal((2, SR))).astype(np.float32), SR)
    with pytest.raises(BadInput, match="sounds like steady noise"):
        voice(gen, hiss, PROMPT)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01garbage")
    with pytest.raises(BadInput, match="Could not read 'broken.mid' as a MIDI file"):
        voice(gen, broken, PROMPT)
    empty = tmp_path / "empty.mid"
    pretty_midi.PrettyMIDI().write(str(empty))
    with pytest.raises(BadInput, match="no pitched notes"):
        voice(gen, empty, PROMPT)


# ---------------------------------------------------------------- the CLI


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, audio in (("tone", tone(1.3)), ("track", click_track(100.0, 0.2, 6.0))):
        paths[name] = tmp_path / f"{name}.wav"
        sf.write(paths[name], audio.samples.T, SR)
    paths["short"] = tmp_path / "short.wav"
    sf.write(paths["short"], np.zeros((44, 2), np.float32), SR)  # 1 ms
    paths["silent"] = tmp_path / "silent.wav"
    sf.write(paths["silent"], np.zeros((SR, 2), np.float32), SR)
    paths["midi"] = write_midi(tmp_path / "line.mid", [(0.0, 0.5, 62), (0.5, 1.0, 65)])
    paths["broken"] = tmp_path / "broken.mid"
    paths["broken"].write_bytes(b"not a midi file")
    return paths


@pytest.mark.parametrize(
    ("argv", "pipeline", "seconds"),
    [
        (["transform", "{tone}", "a bell", "--strength", "0.4", "--keep", "rhythm"], "transform", 1.3),
        (["voice", "{midi}", "a flute"], "voice", 1.0),
        (["beats", "drums", "--bpm", "120", "--bars", "1", "--loop", "--key", "Am"], "beats", 2.0),
        (["beats", "drums", "--bars", "1", "--align-to", "{track}"], "beats", None),
        (["extend", "{tone}", "more", "--seconds", "0.5"], "extend", 1.8),
        (["repaint", "{tone}", "a bell", "--start", "0.2", "--end", "0.6"], "repaint", 1.3),
        (["live", "rain", "--morph", "fire", "--alpha", "0.3", "--seconds", "1.5"], "live", 1.5),
    ],
)
def test_cli_verbs_write_audio_and_settings(bundle, inputs, tmp_path, capsys, argv, pipeline, seconds):
    out = tmp_path / "out.wav"
    argv = [a.format(**inputs) for a in argv]
    code, stdout, err = run_main(capsys, *argv, "--seed", "3", "--model", bundle, "-o", out)
    assert code == 0, err
    assert stdout.splitlines()[0] == "seed 3" and stdout.splitlines()[-1] == f"wrote {out}"
    data, rate = sf.read(out, always_2d=True)
    assert rate == SR and data.shape[1] == 2
    if seconds is not None:
        assert data.shape[0] == round(seconds * SR)
    record = json.loads((tmp_path / "out.wav.json").read_text())
    assert record["soundloom_pipeline_settings"] == 1 and record["pipeline"] == pipeline
    assert record["seed"] == 3 and record["steps"] == 4 and len(record["model_hash"]) == 64
    code, _, err = run_main(capsys, "generate", "--from", out, "-o", tmp_path / "again.wav")
    assert code == 2 and "not a soundloom settings file" in err  # a transform is not a generation


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["transform", "{tone}", "x", "--strength", "2"], "--strength"),
        (["transform", "{tone}", "x", "--keep", "timbre"], "Cannot keep 'timbre'"),
        (["transform", "{short}", "x"], "give at least 0.2 s"),
        (["transform", "{tmp}/missing.wav", "x"], "does not exist"),
        (["voice", "{silent}", "x"], "silent"),
        (["voice", "{broken}", "x"], "as a MIDI file"),
        (["beats", "x", "--bpm", "0", "--bars", "1"], "--bpm"),
        (["beats", "x", "--bpm", "1000", "--bars", "1"], "--bpm"),
        (["beats", "x", "--bpm", "120", "--bars", "0"], "--bars"),
        (["beats", "x", "--bars", "1"], "--bpm B, or a track"),
        (["beats", "x", "--bpm", "120", "--bars", "1", "--meter", "4/3"], "time signature"),
        (["beats", "x", "--bpm", "120", "--bars", "1", "--downbeat-offset", "0.2"], "needs --align-to"),
        (["repaint", "{tone}", "x", "--start", "1.0", "--end", "0.5"], "must come before its end"),
        (["repaint", "{tone}", "x", "--start", "0.5", "--end", "9"], "outside the clip"),
        (["extend", "{short}", "x", "--seconds", "1"], "give at least 0.2 s"),
        (["live", "rain", "--seconds", "1"], "sounddevice"),
        (["live", "rain"], "sounddevice"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    bundle, inputs, tmp_path, capsys, argv, needle
):
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    argv = [a.format(tmp=tmp_path, **inputs) for a in argv]
    extra = ["--model", str(bundle)] + (["-o", str(outdir / "o.wav")] if argv[0] != "live" else [])
    code, stdout, err = run_main(capsys, *argv, *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err and stdout == ""
    assert list(outdir.iterdir()) == []


def test_cli_live_to_a_file_needs_seconds(bundle, tmp_path, capsys):
    code, _, err = run_main(capsys, "live", "rain", "--model", bundle, "-o", tmp_path / "o.wav")
    assert code == 2 and "needs its length" in err and not (tmp_path / "o.wav").exists()


# ---------------------------------------------------------------- bench pipelines


def test_bench_pipelines_on_the_tiny_bundle_gives_a_finite_report(bundle, gen, tmp_path, capsys):
    from pipelines.embedders import MelEmbedder, MelEmbedderConfig, MelEmbedderNet
    from training.bench_pipelines import QUICK, run_bench

    torch.manual_seed(0)
    judge = MelEmbedder(
        MelEmbedderNet(MelEmbedderConfig(base_channels=4, stages=2, width=32, heads=2, dim=16)),
        gen.text_encoder,
    )
    report = run_bench(bundle, tmp_path / "bench.json", scale=QUICK, judge=judge)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["figures"] == report["figures"] and saved["model_hash"] == gen.bundle_hash
    by_pipeline = {}
    for r in report["figures"]:
        by_pipeline.setdefault(r["pipeline"], []).append(r)
        assert set(r) >= {"figure", "target", "model_only", "final", "masked", "pass"}
        assert r["pass"] in (True, False, None)
        values = [v for k in ("model_only", "final", "masked") for v in np.ravel([r[k]]) if r[k] is not None]
        assert values or "f0" in r["figure"], r  # pitch is undefined where the tiny model makes none
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), r
    assert set(by_pipeline) == {"transform", "voice", "beats", "extend/repaint", "live"}
    masked = [r for r in report["figures"] if r["masked"] is not None]
    assert {r["pipeline"] for r in masked} == {"transform", "voice", "beats", "extend/repaint", "live"}
    length = next(r for r in report["figures"] if r["figure"].startswith("length exact"))
    assert length["final"] == 1.0 and length["pass"] is True
    table = capsys.readouterr().out
    assert "model-only" in table and "onset F vs source" in table


def test_the_loudness_step_floors_silence_at_the_absolute_gate():
    from training.bench_pipelines import SILENCE_DB, loudness_step_db

    sr, w = 44100, 11025  # 250 ms each side
    tone = np.sin(2 * np.pi * 440 * np.arange(w) / sr).astype(np.float32)
    level = lambda db: tone * (10 ** (db / 20) * np.sqrt(2))  # noqa: E731  a sine at `db` dBFS RMS
    seam = lambda a, b: np.stack([np.concatenate([a, b])] * 2)  # noqa: E731
    assert loudness_step_db(seam(level(-20), level(-26)), w) == pytest.approx(6.0, abs=0.01)
    assert loudness_step_db(seam(level(-20), level(-20)), w) == pytest.approx(0.0, abs=1e-6)
    silence = np.zeros(w, np.float32)
    # digital zeros are at the floor, not at log10(0): a step out of silence counts up to the sound's level
    assert loudness_step_db(seam(silence, level(-30)), w) == pytest.approx(-30 - SILENCE_DB, abs=0.01)
    assert loudness_step_db(seam(silence, level(-90)), w) == 0.0  # both below the gate: no step
