"""Control channels measured from audio, the latent cache that stores them, and the `static` generator
recipe: it learns on a tiny cached corpus, exports a generator bundle, and is a function of its seed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from tiny_models import TINY_CODEC

from pipelines.audio import Audio
from pipelines.bundle import load_bundle, save_bundle
from pipelines.codec import CodecConfig, CodecModel
from pipelines.controls import (
    CONTROL_GROUPS,
    CONTROL_NAMES,
    beat_grid_controls,
    controls_to_tensor,
    drop_controls,
    measure_controls,
)
from pipelines.errors import BadInput
from training.latent_cache import encode_corpus, is_current, read_entry, read_latent

SR = 44100
RATE = SR / 1024
TINY_DIT = {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}


def stereo(x: np.ndarray) -> Audio:
    return Audio(np.tile(x.astype(np.float32), (2, 1)), SR)


def tone(freq: float = 440.0, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return 0.3 * np.sin(2 * np.pi * freq * t)


def click_train(bpm: float = 120.0, seconds: float = 4.0) -> np.ndarray:
    x = np.zeros(int(SR * seconds))
    x[:: int(round(SR * 60.0 / bpm))] = 0.9
    return x


def frames_of(audio: Audio) -> int:
    return int(np.ceil(audio.frames / 1024))


def group_present(present: np.ndarray, group: str) -> bool:
    channels = list(CONTROL_GROUPS[group])
    assert present[channels].all() or not present[channels].any(), "a group is present or absent as a whole"
    return bool(present[channels[0]])


# ---------------------------------------------------------------- controls


def test_tone_has_pitch_at_a4_and_no_pulse():
    audio = stereo(tone(440.0))
    c = measure_controls(audio, frames_of(audio), RATE)
    assert c.values.shape == (8, frames_of(audio)) and c.values.dtype == np.float32
    assert group_present(c.present, "pitch") and not group_present(c.present, "beat")
    assert not group_present(c.present, "bar")
    inner = slice(5, -5)
    voiced = c.values[3, inner] > 0.5
    assert voiced.mean() > 0.8
    assert np.abs(c.values[2, inner][voiced]).max() < 0.01  # log2(440 / 440) / 4 = 0
    assert np.all(c.values[4:] == 0)  # absent channels hold zeros
    # a 0.3-peak sine is -13.5 dBFS RMS: (80 - 13.5) / 80
    assert abs(float(np.median(c.values[0])) - (80 - 13.5) / 80) < 0.03


def test_an_octave_lower_reads_a_quarter_octave_step_lower():
    audio = stereo(tone(220.0))
    c = measure_controls(audio, frames_of(audio), RATE)
    voiced = c.values[3] > 0.5
    assert abs(float(np.median(c.values[2][voiced])) - (-0.25)) < 0.01  # log2(1/2) / 4


def test_click_train_has_a_rising_beat_phase_at_120_bpm():
    audio = stereo(click_train(120.0, 4.0))
    n = frames_of(audio)
    c = measure_controls(audio, n, RATE)
    assert group_present(c.present, "beat") and group_present(c.present, "bar")
    assert not group_present(c.present, "pitch")
    phase = np.unwrap(np.arctan2(c.values[4], c.values[5]))
    steps = np.diff(phase)
    assert (steps > 0).mean() > 0.95  # the phase rises frame after frame
    beats_per_second = (phase[-1] - phase[0]) / (2 * np.pi) / ((n - 1) / RATE)
    assert abs(beats_per_second - 2.0) < 0.1
    np.testing.assert_allclose(c.values[4] ** 2 + c.values[5] ** 2, 1.0, atol=1e-5)


def test_known_grid_replaces_the_estimate():
    audio = stereo(tone(440.0, 2.0))  # no pulse of its own
    beats = [0.0, 0.5, 1.0, 1.5]
    c = measure_controls(audio, frames_of(audio), RATE, beats_s=beats, bars_s=[0.0])
    assert group_present(c.present, "beat") and group_present(c.present, "bar")
    # frame i is centred at (i + 0.5) / RATE: the beat phase there is ((i + 0.5) / RATE) / 0.5 s
    i = 10
    expected = 2 * np.pi * ((i + 0.5) / RATE / 0.5 % 1.0)
    assert abs(np.arctan2(c.values[4, i], c.values[5, i]) % (2 * np.pi) - expected) < 0.05


@pytest.mark.parametrize(
    ("bpm", "frames", "bars"),
    [(120.0, 517, None), (93.7, 300, None), (77.0, 1000, [0.5, 3.6]), (150.0, 40, []), (120.0, 10, None)],
)
def test_beat_grid_controls_equal_measuring_silence_with_that_grid(bpm, frames, bars):
    """The generator's tempo grid skips the audio analysis; it must be what measure_controls gives."""
    rate = 44100 / 1024
    beats = [60.0 * k / bpm for k in range(int(np.ceil(frames / rate * bpm / 60.0)) + 2)]
    bars = [] if bars is None else bars
    fast = beat_grid_controls(beats, bars, frames, rate)
    silence = Audio(np.zeros((1, int(np.ceil(frames / rate * 22050)) + 1), np.float32), 22050)
    slow = measure_controls(silence, frames, rate, beats_s=beats, bars_s=bars)
    pulse = [*CONTROL_GROUPS["beat"], *CONTROL_GROUPS["bar"]]
    np.testing.assert_array_equal(fast.present[pulse], slow.present[pulse])
    np.testing.assert_array_equal(fast.values[pulse], slow.values[pulse])
    assert group_present(fast.present, "beat") and group_present(fast.present, "bar") == bool(bars)
    assert not fast.present[: min(pulse)].any() and not fast.values[: min(pulse)].any()


def test_silence_has_no_pitch_and_no_pulse():
    audio = stereo(np.zeros(SR))
    c = measure_controls(audio, frames_of(audio), RATE)
    assert group_present(c.present, "loudness")
    for group in ("pitch", "beat", "bar"):
        assert not group_present(c.present, group)
    assert np.all(c.values == 0)  # loudness of silence is 0, nothing else is present


def test_controls_to_tensor_and_group_dropout():
    audio = stereo(tone(440.0, 0.5))
    n = frames_of(audio)
    c = measure_controls(audio, n, RATE)
    values, mask = controls_to_tensor([c, c, c, c])
    assert values.shape == mask.shape == (4, 8, n)
    assert torch.equal(mask[0, :, 0], torch.from_numpy(c.present).float())
    g = torch.Generator().manual_seed(0)
    same_v, same_m = drop_controls(values, mask, g, 0.0)
    assert torch.equal(same_v, values) and torch.equal(same_m, mask)
    none_v, none_m = drop_controls(values, mask, g, 0.0, p_all=1.0)
    assert not none_v.any() and not none_m.any()
    b = 512
    values, mask = torch.ones(b, 8, 3), torch.ones(b, 8, 3)
    _, dropped = drop_controls(values, mask, torch.Generator().manual_seed(1), 0.5)
    for group, channels in CONTROL_GROUPS.items():
        kept = dropped[:, list(channels), 0]
        assert torch.equal(kept, kept[:, :1].expand_as(kept)), group  # a group goes as a whole
        assert 0.4 < float(kept[:, 0].mean()) < 0.6, group
    assert len(CONTROL_NAMES) == 8


# ---------------------------------------------------------------- corpus and cache


def tiny_codec_bundle(path: Path) -> Path:
    torch.manual_seed(0)
    model = CodecModel(CodecConfig(**TINY_CODEC))
    return save_bundle(path, asdict(model.cfg), {"codec": model.state_dict()}, kind="codec")


def make_corpus(root: Path) -> Path:
    """Five short clips (tones and a click loop) in the manifest format; the last one is in val."""
    (root / "audio").mkdir(parents=True)
    clips = [
        ("t220", tone(220.0, 1.0), ["a low tone", "a dull hum at 220 Hz"]),
        ("t440", tone(440.0, 0.6), ["a tone at A4"]),
        ("t880", tone(880.0, 1.2), ["a high tone", "a bright beep"]),
        ("clicks", click_train(120.0, 1.5), ["clicks at 120 BPM"]),
        ("val", tone(330.0, 0.5), ["a tone for validation"]),
    ]
    lines = []
    for name, x, captions in clips:
        sf.write(root / "audio" / f"{name}.flac", np.stack([x, x], 1).astype(np.float32), SR)
        record = {
            "id": name,
            "path": f"audio/{name}.flac",
            "captions": captions,
            "seconds": len(x) / SR,
            "split": "val" if name == "val" else "train",
            "params": {"category": "tone", "bpm": None, "beats_s": [], "bars_s": []}
            if name != "clicks"
            else {"category": "drums", "bpm": 120.0, "beats_s": [0.0, 0.5, 1.0], "bars_s": []},
        }
        lines.append(json.dumps(record))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def cached_corpus(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(corpus folder, codec bundle, latent cache folder): encoded once for the tests of this module."""
    root = tmp_path_factory.mktemp("static")
    codec = tiny_codec_bundle(root / "codec")
    data = make_corpus(root / "corpus")
    cache = encode_corpus(data, codec, progress=False)
    return data, codec, cache


def test_latent_cache_stores_controls_beside_latents(cached_corpus):
    data, _, cache = cached_corpus
    tone_entry = read_entry(cache / "t440.safetensors")
    z = tone_entry["z"]
    assert z.shape == (8, int(np.ceil(0.6 * SR / 1024))) and z.dtype == torch.float32
    assert torch.equal(z, read_latent(cache / "t440.safetensors"))
    assert tone_entry["controls"].shape == (8, z.shape[1])
    assert tone_entry["controls_present"].dtype == torch.bool
    assert tone_entry["controls_present"][2] and not tone_entry["controls_present"][4]  # pitch, no pulse
    clicks = read_entry(cache / "clicks.safetensors")
    assert clicks["controls_present"][4] and not clicks["controls_present"][2]  # the manifest's grid
    raw = load_file(str(cache / "clicks.safetensors"))
    assert raw["controls"].dtype == torch.float16 and raw["controls_present"].dtype == torch.uint8


def test_old_cache_files_are_encoded_again(cached_corpus, tmp_path):
    data, codec, cache = cached_corpus
    old = cache / "t220.safetensors"
    kept = cache / "t880.safetensors"
    before = kept.stat().st_mtime_ns
    save_file(
        {"z": load_file(str(old))["z"]}, str(old), metadata={"seconds": "1.0"}
    )  # the format before controls
    assert not is_current(old)
    encode_corpus(data, codec, progress=False)
    assert is_current(old) and "controls" in read_entry(old)
    assert kept.stat().st_mtime_ns == before


# ---------------------------------------------------------------- the recipe


def static_config(tmp: Path, codec: Path, steps: int, **settings) -> Path:
    config = {
        "steps": steps,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "ema_decay": 0.9,
        "ckpt_every": 5,
        "log_every": 1,
        "threads": 1,
        "recipe": {"codec": str(codec), "segment_frames": 32, "dit": TINY_DIT},
        **settings,
    }
    path = tmp / "static.json"
    path.write_text(json.dumps(config))
    return path


def test_static_recipe_learns_and_exports_a_generator_bundle(cached_corpus, tmp_path):
    from training.trainer import export_run, train

    data, codec, _ = cached_corpus
    config = static_config(tmp_path, codec, 20)
    train("static", data, tmp_path / "run", config_path=config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    first, last = np.mean([r["loss"] for r in rows[:4]]), np.mean([r["loss"] for r in rows[-4:]])
    assert last < 0.8 * first, (first, last)
    assert any(f"loss_t{q}" in r for r in rows for q in range(4))
    for key in ("frac_text", "frac_controls", "frac_known"):
        assert 0.0 <= np.mean([r[key] for r in rows]) <= 1.0
    assert 0.0 < np.mean([r["frac_known"] for r in rows]) < 1.0  # known spans are drawn at p = 0.5

    bundle = load_bundle(export_run(tmp_path / "run", tmp_path / "bundle"))
    assert bundle.kind == "generator" and bundle.files == ["dit"]
    cfg = bundle.config
    assert cfg["sampler"] == "euler" and cfg["steps"] == 50 and cfg["guidance"] == 4.0
    assert abs(cfg["latent_rate"] - RATE) < 1e-9 and cfg["sample_rate"] == SR
    assert cfg["dit"]["latent_channels"] == 8 and cfg["dit"]["dim"] == 32
    assert bundle.component("codec").kind == "codec"
    assert bundle.card["steps"] == 20

    from pipelines.dit import DiT, DiTConfig

    model = DiT(DiTConfig(**cfg["dit"]))
    bundle.load_into("dit", model)
    v = model(torch.randn(1, 8, 10), torch.tensor([0.5]))
    assert v.shape == (1, 8, 10) and torch.isfinite(v).all()


def test_same_seed_gives_the_same_weights_and_resume_is_exact(cached_corpus, tmp_path):
    from training.trainer import train

    data, codec, _ = cached_corpus
    # a constant lr after warmup: a 5-step first leg must not have its own cosine schedule
    config = static_config(tmp_path, codec, 10, lr_schedule="constant")

    def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
        return load_file(str(checkpoint / "modules.safetensors"))

    a = weights(train("static", data, tmp_path / "a", config_path=config, progress=False))
    train("static", data, tmp_path / "b", config_path=config, steps=5, progress=False)
    b = weights(train("static", data, tmp_path / "b", config_path=config, resume=True, progress=False))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    other = train("static", data, tmp_path / "c", config_path=config, overrides={"seed": 1}, progress=False)
    c = weights(other)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_steady_pitch_reads_a_held_note_and_not_a_melody():
    from pipelines.controls import steady_pitch

    t = 50
    values = np.zeros((8, t), np.float32)
    present = np.zeros(8, bool)
    present[:4] = True
    values[0], values[3] = 0.7, 0.9  # audible and voiced throughout
    values[2] = np.log2(220.0 / 440.0) / 4 + 0.002 * np.sin(np.arange(t))  # A3 with a little vibrato
    assert abs(steady_pitch(values, present) - 57.0) < 0.1
    melody = values.copy()
    melody[2] = np.log2(np.repeat([220.0, 330.0, 262.0, 392.0, 247.0], 10) / 440.0) / 4
    assert steady_pitch(melody, present) is None
    unvoiced = values.copy()
    unvoiced[3] = 0.1
    assert steady_pitch(unvoiced, present) is None
    absent = present.copy()
    absent[2:4] = False
    assert steady_pitch(values, absent) is None


def test_static_recipe_trains_the_pitch_prior(cached_corpus, tmp_path):
    from training.static_recipe import StaticRecipe
    from training.trainer import train

    data, codec, _ = cached_corpus
    dit = {**TINY_DIT, "pitch_classes": 48, "pitch_low": 48}
    recipe = StaticRecipe({"codec": str(codec), "dit": dit, "segment_frames": 32}, data)
    pitches = {d["id"]: d["pitch"] for d in recipe.data}
    # the tones' measured pitches as classes (MIDI 57, 69, 81 from pitch_low 48); the click loop has none
    assert (pitches["t220"], pitches["t440"], pitches["t880"]) == (9, 21, 33)
    from pipelines.dit import PITCH_NONE

    assert pitches["clicks"] == PITCH_NONE
    config = static_config(
        tmp_path,
        codec,
        30,
        recipe={"codec": str(codec), "segment_frames": 32, "dit": dit, "measured_weight": 3.0},
    )
    train("static", data, tmp_path / "run", config_path=config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([r["loss_pitch_prior"] for r in rows[:5]])
    last = np.mean([r["loss_pitch_prior"] for r in rows[-5:]])
    assert last < 0.5 * first, (first, last)
    assert np.mean([r["pitch_prior_acc"] for r in rows[-5:]]) > 0.8
    assert all(abs(r["loss"] - r["loss_rf"] - 0.1 * r["loss_pitch_prior"]) < 1e-3 for r in rows)


def test_flow_loss_on_x0_channels_is_the_error_of_the_clean_estimate(cached_corpus):
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    from dataclasses import replace

    recipe = StaticRecipe({"codec": str(codec), "dit": TINY_DIT}, data)
    recipe.dit_config = replace(recipe.dit_config, x0_channels=3)  # the tiny codec measures no channels
    c, frames = recipe.codec.channels, 16
    x0, eps = torch.randn(2, c, frames), torch.randn(2, c, frames)
    t = torch.tensor([0.2, 0.9])
    clean = torch.randn(2, c, frames)  # what a model claims x0 is

    def dit(x, tt, **_):  # a model that returns the velocity of `clean` on every channel
        return (x - clean) / tt[:, None, None]

    batch = {"x0": x0, "known_mask": torch.zeros(2, 1, frames), "text": None, "text_mask": None}
    batch.update(seconds=None, controls=None, control_mask=None)
    torch.manual_seed(0)
    loss = recipe.flow_loss(dit, batch, t)
    torch.manual_seed(0)
    from pipelines.samplers import latent_noise

    eps = latent_noise((2, c, frames), offset=recipe.noise_offset)
    x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    v_err = ((x_t - clean) / t[:, None, None] - (eps - x0)).square()
    x0_err = (clean - x0).square()
    expected = (v_err[:, :-3].sum(dim=(1, 2)) + x0_err[:, -3:].sum(dim=(1, 2))) / (c * frames)
    assert torch.allclose(loss, expected, rtol=1e-4)
    with pytest.raises(BadInput, match="x0_channels must be 0 for a codec without measured channels"):
        StaticRecipe({"codec": str(codec), "dit": {**TINY_DIT, "x0_channels": 3}}, data)


def test_control_skip_starts_at_the_least_squares_line_of_the_data(cached_corpus):
    from dataclasses import replace

    from pipelines.dit import DiT
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    recipe = StaticRecipe({"codec": str(codec), "dit": TINY_DIT}, data)
    recipe.dit_config = replace(recipe.dit_config, x0_channels=3)  # the tiny codec measures no channels
    dit = DiT(recipe.dit_config)
    recipe.fit_control_skip(dit)
    c = recipe.codec.channels
    model = recipe.codec.model
    # log-f0: the line the two channels' definitions give (control log2(f0/440)/4, latent log2(f0/256))
    std, mean = float(model.latent_std[c - 2]), float(model.latent_mean[c - 2])
    assert dit.control_skip[1].tolist() == pytest.approx(
        [4 / std, (np.log2(440 / 256) - mean) / std], rel=1e-5
    )
    for j, control in ((0, 0), (2, 3)):  # loudness and voicing: least squares on the data
        xs, ys = [], []
        for clip in recipe.data:
            if clip["present"][control]:
                xs.append(clip["controls"][control].float())
                ys.append(clip["z"][c - 3 + j].float())
        slope, offset = np.polyfit(torch.cat(xs).numpy(), torch.cat(ys).numpy(), 1)
        assert dit.control_skip[j].tolist() == pytest.approx([slope, offset], rel=1e-3, abs=1e-4)


def test_pitch_hint_is_log_f0_alone_at_the_semitone():
    from pipelines.controls import CONTROL_NAMES, pitch_hint

    values, mask = pitch_hint(81, 5)
    f0 = CONTROL_NAMES.index("log_f0")
    assert values.shape == mask.shape == (8, 5)
    assert torch.allclose(values[f0], torch.full((5,), np.log2(880.0 / 440.0) / 4))  # the channel's scale
    assert mask[f0].eq(1).all() and mask.sum() == 5 and values.abs().sum() == values[f0].abs().sum()


def test_static_batch_gives_steady_pitches_as_hints(cached_corpus):
    from pipelines.controls import CONTROL_NAMES, pitch_hint
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    dit = {**TINY_DIT, "pitch_classes": 48, "pitch_low": 48}
    cfg = {"codec": str(codec), "dit": dit, "segment_frames": 32, "p_drop_controls": 0.0}
    recipe = StaticRecipe({**cfg, "p_pitch_hint": 1.0}, data)
    ids = [d["id"] for d in recipe.data]
    torch.manual_seed(0)
    batch = recipe.batch(list(range(len(ids))))
    f0, voicing = CONTROL_NAMES.index("log_f0"), CONTROL_NAMES.index("voicing")
    for i, name in enumerate(ids):
        n = int(round(float(batch["seconds"][i]) * recipe.codec.latent_rate))
        if name == "clicks":  # no steady pitch: no hint, and its pitch group stays absent
            assert batch["control_mask"][i, f0].sum() == 0
            continue
        midi = 48 + recipe.data[i]["pitch"]
        expected = pitch_hint(midi, n)[0][f0]
        assert torch.allclose(batch["controls"][i, f0, :n], expected)
        assert batch["control_mask"][i, f0, :n].eq(1).all() and batch["control_mask"][i, voicing].sum() == 0
    assert recipe.bundle_config()["pitch_hint"] is True
    assert StaticRecipe(cfg, data).bundle_config()["pitch_hint"] is False


def test_static_batch_gives_grids_alone_as_generation_does(cached_corpus):
    from pipelines.controls import CONTROL_GROUPS
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    cfg = {"codec": str(codec), "dit": TINY_DIT, "segment_frames": 32, "p_drop_controls": 1.0}
    recipe = StaticRecipe({**cfg, "p_grid_only": 1.0}, data)
    ids = [d["id"] for d in recipe.data]
    torch.manual_seed(0)
    batch = recipe.batch(list(range(len(ids))))
    grid = [*CONTROL_GROUPS["beat"], *CONTROL_GROUPS["bar"]]
    for i, name in enumerate(ids):
        clip = recipe.data[i]
        mask = batch["control_mask"][i]
        if name == "clicks":  # every control dropped, yet the grid comes back, and it alone
            n = int(round(float(batch["seconds"][i]) * recipe.codec.latent_rate))
            beat = list(CONTROL_GROUPS["beat"])
            assert mask[beat, :n].eq(1).all()
            measured = clip["controls"][grid].float()  # the crop's window of the clip's own grid
            windows = [measured[:, s : s + n] for s in range(measured.shape[1] - n + 1)]
            assert any(torch.equal(batch["controls"][i, grid, :n], w) for w in windows)
            assert mask[[c for c in range(mask.shape[0]) if c not in grid]].sum() == 0
        else:  # no grid to give: the dropout stands
            assert mask.sum() == 0
    torch.manual_seed(0)
    assert StaticRecipe(cfg, data).batch(list(range(len(ids))))["control_mask"].sum() == 0


def test_static_recipe_trains_the_tempo_prior(cached_corpus, tmp_path):
    from training.static_recipe import TEMPO_UNKNOWN, StaticRecipe
    from training.trainer import train

    data, codec, _ = cached_corpus
    dit = {**TINY_DIT, "tempo_classes": 200, "tempo_low": 40}
    recipe = StaticRecipe({"codec": str(codec), "dit": dit, "segment_frames": 32}, data)
    tempos = {d["id"]: d["tempo"] for d in recipe.data}
    # the click loop's known 120 BPM is class 80 from 40 BPM; the tones have no pulse (class 200)
    assert tempos == {"t220": 200, "t440": 200, "t880": 200, "clicks": 80}
    assert TEMPO_UNKNOWN not in tempos.values()
    config = static_config(
        tmp_path,
        codec,
        30,
        recipe={"codec": str(codec), "segment_frames": 32, "dit": dit, "tempo_caption_pool": 0},
    )
    train("static", data, tmp_path / "run", config_path=config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([r["loss_tempo_prior"] for r in rows[:5]])
    last = np.mean([r["loss_tempo_prior"] for r in rows[-5:]])
    assert last < 0.5 * first, (first, last)
    assert np.mean([r["tempo_prior_acc"] for r in rows[-5:]]) > 0.8
    assert all(abs(r["loss"] - r["loss_rf"] - 0.1 * r["loss_tempo_prior"]) < 1e-3 for r in rows)


def test_tempo_targets_are_soft_over_neighbouring_bpm_and_hard_for_no_pulse():
    from training.static_recipe import tempo_targets

    t = tempo_targets(torch.tensor([80, 200, 0]), 200)
    assert t.shape == (3, 201) and torch.allclose(t.sum(dim=1), torch.ones(3))
    assert int(t[0].argmax()) == 80 and float(t[0, 79]) == pytest.approx(float(t[0, 81]))
    assert 0.1 < float(t[0, 81] / t[0, 80]) < 0.9 and float(t[0, 200]) == 0.0
    assert float(t[1, 200]) == 1.0
    assert float(t[2, 0]) > float(t[2, 1]) > 0.0  # at the range's edge the normal is cut and renormalised


def test_tempo_caption_pool_names_the_tempo_it_is_labelled_with(cached_corpus):
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    recipe = StaticRecipe({"codec": str(codec), "dit": {**TINY_DIT, "tempo_classes": 200}}, data)
    drums = {
        "category": "drums",
        "bpm": 122.6,
        "style": "waltz",
        "meter": "3/4",
        "bars": 3,
        "kit": 0,
        "swing": 0.0,
        "fill": False,
        "brightness_hz": 3000.0,
    }
    clips = [
        {"params": drums, "seconds": 4.7},
        {"params": {"category": "drums", "bpm": 90.0}, "seconds": 3.0},
    ]
    pool = recipe.tempo_caption_pool(clips, 64)
    assert len(pool) == 64  # the clip whose params the captioner cannot read adds nothing
    assert all(f"{40 + k} BPM" in caption for caption, k in pool)
    assert len({k for _, k in pool}) > 40  # spread over the classes, not the corpus's tempo
    assert pool == recipe.tempo_caption_pool(clips, 64)  # the same pool in every run


def test_extra_corpora_join_the_training_clips(cached_corpus, tmp_path):
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    alone = StaticRecipe({"codec": str(codec), "dit": TINY_DIT}, data).dataset_size()
    both = StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "extra_data": [str(data)]}, data)
    assert both.dataset_size() == 2 * alone
    replay = StaticRecipe(
        {"codec": str(codec), "dit": TINY_DIT, "extra_data": [str(data)], "data_repeat": 3}, data
    )
    assert replay.dataset_size() == 4 * alone  # --data's clips three times, the extra corpus's once
    assert replay.data[0] is replay.data[alone]  # counted again, not copied
    with pytest.raises(BadInput, match="data_repeat must be a whole number"):
        StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "data_repeat": 0}, data)
    with pytest.raises(BadInput, match="does not exist"):
        StaticRecipe(
            {"codec": str(codec), "dit": TINY_DIT, "extra_data": [str(tmp_path / "no")]}, data
        ).dataset_size()
    with pytest.raises(BadInput, match="extra_data"):
        StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "extra_data": "elsewhere"}, data)


def test_static_recipe_refuses_bad_settings_and_a_missing_cache(cached_corpus, tmp_path):
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    with pytest.raises(BadInput, match="segment_frame"):
        StaticRecipe({"codec": str(codec), "segment_frame": 10}, data)
    with pytest.raises(BadInput, match="dit setting 'width'"):
        StaticRecipe({"codec": str(codec), "dit": {"width": 3}}, data)
    with pytest.raises(BadInput, match="measured_weight"):
        StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "measured_weight": -1}, data)
    with pytest.raises(BadInput, match="p_pitch_from_text"):
        StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "p_pitch_from_text": 2}, data)
    with pytest.raises(BadInput, match="latent_channels"):
        StaticRecipe({"codec": str(codec), "dit": {"latent_channels": 32}}, data)
    with pytest.raises(BadInput, match="categories"):
        StaticRecipe({"codec": str(codec), "dit": TINY_DIT, "categories": ["note"]}, data).dataset_size()
    bare = make_corpus(tmp_path / "bare")  # the same clips, never encoded
    recipe = StaticRecipe({"codec": str(codec), "dit": TINY_DIT}, bare)
    with pytest.raises(BadInput, match="soundloom dataset encode"):
        recipe.dataset_size()


def test_preview_samples_the_first_val_caption(cached_corpus, tmp_path):
    pytest.importorskip("pipelines.samplers")
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    recipe = StaticRecipe({"codec": str(codec), "segment_frames": 20, "dit": TINY_DIT}, data)
    torch.manual_seed(0)
    recipe.preview(7, {"dit": recipe.model.eval()}, tmp_path / "preview")
    wav, sr = sf.read(tmp_path / "preview" / "step00000007_val0.wav", always_2d=True)
    assert sr == SR and wav.shape == (20 * 1024, 2) and np.isfinite(wav).all()
    assert (tmp_path / "preview" / "step00000007_val0.txt").read_text().strip() == "a tone for validation"


def test_rhythm_skip_starts_at_the_least_squares_level_profile_of_the_data(cached_corpus):
    from dataclasses import replace

    from pipelines.dit import DiT, rhythm_features
    from training.static_recipe import StaticRecipe

    data, codec, _ = cached_corpus
    recipe = StaticRecipe({"codec": str(codec), "dit": TINY_DIT}, data)
    # the tiny codec measures no channels: pretend its last three are level, log-f0 and voicing
    recipe.dit_config = replace(recipe.dit_config, x0_channels=3, rhythm_harmonics=2)
    dit = DiT(recipe.dit_config)
    assert dit.rhythm_skip.abs().sum() == 0
    recipe.fit_rhythm_skip(dit)
    level = recipe.codec.channels - 3
    xs, ys = [], []
    for clip in recipe.data:
        if clip["present"][4]:
            mask = clip["present"].float()[None, :, None].expand(1, 8, clip["controls"].shape[1]).clone()
            mask[:, 6:8] *= float(clip["present"][6])
            xs.append(rhythm_features(clip["controls"][None].float(), mask, recipe.dit_config)[0].T.numpy())
            z = clip["z"][level].float().numpy()
            ys.append(z - z.mean())
    assert xs, "the tiny corpus should have a clip with a beat grid"
    x, y = np.concatenate(xs), np.concatenate(ys)
    want = np.linalg.lstsq(x, y, rcond=None)[0]
    assert dit.rhythm_skip.detach().numpy() == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert np.mean((y - x @ want) ** 2) < np.mean(y**2)  # the profile explains part of the level
