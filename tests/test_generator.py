"""The inference generator (pipelines/generator.py), `soundloom generate` and `soundloom bench generate`,
on a tiny generator bundle (random DiT weights, a random tiny codec, the packaged text encoder)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import TINY_CODEC

import app.cli as cli
from pipelines.audio import Audio
from pipelines.bundle import save_bundle
from pipelines.codec import CodecConfig, CodecModel
from pipelines.dit import DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.generator import Generator, load_generator, read_settings, settings_path
from pipelines.inference import native_bf16
from pipelines.text_encoder import DEFAULT_NAME

SR = 44100
MAX_SECONDS = 20.0
PROMPT = "a warm cello note, A3, slow bow"


def tiny_generator_bundle(root: Path) -> Path:
    """A generator bundle whose DiT has random, non-zero weights (adaLN-Zero init would give v = 0)."""
    torch.manual_seed(0)
    codec = CodecModel(CodecConfig(**TINY_CODEC))
    codec_path = save_bundle(root / "codec", asdict(codec.cfg), {"codec": codec.state_dict()}, kind="codec")
    # with pitch and tempo priors, so every generation here also runs the prompt -> pitch path (in bf16 and
    # under CFG) and, where the random tempo prior hears a pulse, the beat control
    cfg = DiTConfig(
        latent_channels=8,
        dim=32,
        depth=1,
        heads=1,
        mlp_ratio=2.0,
        max_seconds=MAX_SECONDS,
        pitch_classes=12,
        pitch_low=48,
        tempo_classes=20,
        tempo_low=110,
    )
    dit = DiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = {
        "dit": asdict(cfg),
        "latent_rate": codec.cfg.latent_rate,
        "latent_channels": 8,
        "sample_rate": SR,
        "text_encoder": DEFAULT_NAME,
        "controls": [],
        "segment_frames": 32,
        "sampler": "euler",
        "steps": 4,
        "guidance": 4.0,
    }
    return save_bundle(
        root / "generator",
        config,
        {"dit": dit.state_dict()},
        components={"codec": codec_path},
        kind="generator",
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="module")
def gen(bundle) -> Generator:
    return load_generator(bundle)


# ---------------------------------------------------------------- the Python API


def test_generate_gives_exact_length_stereo_44k(gen):
    audio = gen.generate(PROMPT, seconds=6.0, seed=1)
    assert isinstance(audio, Audio) and audio.sample_rate == SR
    assert audio.samples.shape == (2, 264600) and audio.samples.dtype == np.float32
    assert np.isfinite(audio.samples).all() and 0 < np.abs(audio.samples).max() <= 1.0
    odd = gen.generate(PROMPT, seconds=0.3337, seed=1)
    assert odd.samples.shape == (2, round(0.3337 * SR))
    assert gen.default_steps == 4 and gen.default_guidance == 4.0 and gen.max_seconds == MAX_SECONDS
    assert set(gen.timings) >= {"text_s", "dit_s", "dit_step_ms", "decode_s", "total_s"}
    assert all(v >= 0 for v in gen.timings.values())


def test_same_seed_same_audio_and_other_seeds_prompts_differ(gen):
    a = gen.generate(PROMPT, seconds=2.0, seed=7)
    b = gen.generate(PROMPT, seconds=2.0, seed=7)
    assert np.array_equal(a.samples, b.samples)
    assert not np.allclose(gen.generate(PROMPT, seconds=2.0, seed=8).samples, a.samples)
    assert not np.allclose(gen.generate("heavy rain on a tin roof", seconds=2.0, seed=7).samples, a.samples)
    assert not np.allclose(gen.generate(PROMPT, seconds=2.0, seed=7, guidance=1.0).samples, a.samples)


def test_random_seed_is_recorded_and_remakes_the_sound(gen):
    a = gen.generate(PROMPT, seconds=1.0)
    used = gen.last_settings
    assert (
        isinstance(used.seed, int) and used.steps == 4 and used.sampler == "euler" and used.prompt == PROMPT
    )
    assert np.array_equal(gen.generate(PROMPT, seconds=1.0, seed=used.seed).samples, a.samples)


def test_variations_are_each_reproducible_alone(gen):
    batch = gen.generate_variations(PROMPT, variations=3, seconds=1.5, seed=20)
    assert len(batch) == 3 and gen.last_settings.seed == 20
    for i, audio in enumerate(batch):
        alone = gen.generate(PROMPT, seconds=1.5, seed=20 + i)
        np.testing.assert_allclose(audio.samples, alone.samples, atol=1e-5)
    assert not np.allclose(batch[0].samples, batch[1].samples)


def test_the_bundles_time_shift_sets_the_sampling_grid(gen):
    times = []
    gen.generate(PROMPT, seconds=1.0, seed=3, callback=lambda info: times.append(float(info["t"])))
    saved = gen.config
    try:
        gen.config = {**saved, "time_shift": 4.0}
        shifted = []
        gen.generate(PROMPT, seconds=1.0, seed=3, callback=lambda info: shifted.append(float(info["t"])))
    finally:
        gen.config = saved
    assert times[0] == shifted[0] == 1.0
    assert all(b > a for a, b in zip(times[1:], shifted[1:]))  # every later step sits at higher noise


def test_tempo_controls_hold_only_a_beat_phase_at_the_bpm():
    from pipelines.controls import CONTROL_GROUPS
    from pipelines.generator import tempo_controls

    rate = 44100 / 1024
    values, present = tempo_controls(120.0, 431, rate)  # 10 s
    beat = list(CONTROL_GROUPS["beat"])
    assert values.shape == present.shape == (8, 431)
    assert present[beat].eq(1).all() and present.sum() == 2 * 431
    assert values[[c for c in range(8) if c not in beat]].eq(0).all()
    phase = np.unwrap(np.arctan2(values[beat[0]].numpy(), values[beat[1]].numpy()))
    cycles_per_s = np.polyfit(np.arange(431) / rate, phase / (2 * np.pi), 1)[0]
    assert cycles_per_s == pytest.approx(2.0, rel=0.005)  # 120 BPM: two beats a second
    assert abs(np.sin(2 * np.pi * 0.5 / rate * 2.0) - float(values[beat[0], 0])) < 0.02  # a beat at 0 s


def test_the_tempo_prior_decides_whether_and_at_what_bpm_the_beat_control_is_given(bundle):
    fresh = load_generator(bundle)  # its prior is set by hand below; the shared one stays as it is
    head = fresh.dit.tempo_prior.out[-1]
    made = {}
    for name, confident in (("pulse", 10), ("none", 20)):  # class 10: 120 BPM; class 20: no steady pulse
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[confident] = 50.0
        made[name] = fresh.generate(PROMPT, seconds=2.0, seed=3).samples
        made[name + "_bpm"] = fresh.last_tempo_bpm
    assert made["pulse_bpm"] == 120.0 and made["none_bpm"] is None
    assert not np.allclose(made["pulse"], made["none"], atol=1e-4)  # the beat control reached the DiT


def test_the_pitch_prior_hints_its_note_only_for_bundles_trained_with_hints(bundle):
    fresh = load_generator(bundle)
    head = fresh.dit.pitch_prior.out[-1]
    with torch.no_grad():  # the prior is sure of class 9: MIDI 57 (A3) from pitch_low 48
        head.weight.zero_()
        head.bias.zero_()
        head.bias[9] = 50.0
    plain = fresh.generate(PROMPT, seconds=1.0, seed=3).samples
    assert fresh.last_pitch_midi is None  # the tiny bundle was not trained with hints
    fresh.config["pitch_hint"] = True
    hinted = fresh.generate(PROMPT, seconds=1.0, seed=3).samples
    assert fresh.last_pitch_midi == 57
    assert not np.allclose(plain, hinted, atol=1e-4)  # the hint reached the DiT
    with torch.no_grad():
        head.bias[9], head.bias[12] = 0.0, 50.0  # now sure there is no steady pitch
    fresh.generate(PROMPT, seconds=1.0, seed=3)
    assert fresh.last_pitch_midi is None


def test_heun_sampler_and_the_step_callback(gen):
    seen = []
    euler = gen.generate(PROMPT, seconds=1.0, seed=3, steps=5, callback=seen.append)
    assert [s["i"] for s in seen] == list(range(5))
    assert set(seen[0]) == {"i", "t", "x", "denoised"} and float(seen[0]["t"]) == 1.0
    heun = gen.generate(PROMPT, seconds=1.0, seed=3, steps=5, sampler="heun")
    assert heun.samples.shape == euler.samples.shape and not np.allclose(heun.samples, euler.samples)


def test_peak_over_full_scale_is_scaled_to_minus_1_dbfs_and_quieter_is_untouched(gen, monkeypatch):
    for peak in (2.5, 0.5):
        ramp = np.linspace(-peak, peak, 2 * 44100, dtype=np.float32).reshape(2, -1)

        def loud(z, n_samples=None, ramp=ramp):
            return Audio(ramp[:, :n_samples].copy(), SR)

        monkeypatch.setattr(gen.codec, "decode", loud)
        out = gen.generate(PROMPT, seconds=1.0, seed=0)
        expected = ramp * (10 ** (-1 / 20) / peak) if peak > 1 else ramp
        np.testing.assert_allclose(out.samples, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n"}, "prompt is empty"),
        ({"prompt": "x" * 2001}, "at most 2000"),
        ({"seconds": 0.0}, "seconds must be above 0"),
        ({"seconds": -1.0}, "seconds must be above 0"),
        ({"seconds": MAX_SECONDS + 0.5}, "at most 20"),
        ({"seconds": float("nan")}, "seconds"),
        ({"steps": 0}, "steps must be"),
        ({"steps": 1001}, "1 to 1000"),
        ({"steps": 2.5}, "whole number"),
        ({"variations": 0}, "variations must be between 1 and 16"),
        ({"variations": 17}, "between 1 and 16"),
        ({"sampler": "ddim"}, "Unknown sampler 'ddim'"),
        ({"guidance": -1.0}, "guidance"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments_are_one_sentence(gen, kwargs, needle):
    args = {"prompt": PROMPT, "seconds": 1.0, **kwargs}
    with pytest.raises(BadInput) as err:
        gen.generate_variations(args.pop("prompt"), **args)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_missing_malformed_and_wrong_kind_bundles(bundle, tmp_path, monkeypatch):
    import pipelines.generator as generator

    monkeypatch.setattr(generator, "default_generator_path", lambda: tmp_path / "assets" / "generator")
    with pytest.raises(BadInput, match="No generator is bundled yet.*--recipe static"):
        load_generator()
    with pytest.raises(BadInput, match="does not exist"):
        load_generator(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="not a soundloom model bundle"):
        load_generator(tmp_path / "empty")
    with pytest.raises(BadInput, match="is a codec bundle, not a generator"):
        load_generator(bundle.parent / "codec")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{ not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_generator(broken)


def test_lazy_package_export():
    import pipelines

    assert pipelines.load_generator is load_generator
    code = "import sys, pipelines; assert 'torch' not in sys.modules; print('light')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "light"


# ---------------------------------------------------------------- the CLI


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_wav(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == SR
    return data.T


def test_cli_generate_writes_audio_and_settings_and_from_remakes_it(bundle, tmp_path, capsys):
    out = tmp_path / "song.wav"
    code, stdout, err = run_main(
        capsys, "generate", PROMPT, "--seconds", "1.5", "--seed", "11", "--model", bundle, "-o", out
    )
    assert code == 0, err
    assert stdout.splitlines() == ["seed 11", f"wrote {out}"]
    assert read_wav(out).shape == (2, round(1.5 * SR))
    stored, record = read_settings(out)
    assert asdict(stored) == {
        "prompt": PROMPT,
        "seconds": 1.5,
        "steps": 4,
        "seed": 11,
        "guidance": 4.0,
        "sampler": "euler",
    }
    assert record["model"] == str(bundle) and len(record["model_hash"]) == 64

    again = tmp_path / "again.wav"
    code, stdout, err = run_main(
        capsys, "generate", "--from", out, "-o", again
    )  # the model comes from the file
    assert code == 0, err
    assert stdout.splitlines()[0] == "seed 11"
    assert np.array_equal(read_wav(again), read_wav(out))
    assert read_settings(again)[0] == stored

    other = tmp_path / "other.wav"
    code, _, err = run_main(capsys, "generate", "--from", settings_path(out), "--seed", "12", "-o", other)
    assert code == 0, err
    assert read_settings(other)[0].seed == 12 and not np.array_equal(read_wav(other), read_wav(out))


def test_cli_variations_are_numbered_and_each_remakes_alone(bundle, tmp_path, capsys):
    out = tmp_path / "take.wav"
    code, stdout, err = run_main(
        capsys,
        "generate",
        PROMPT,
        "--seconds",
        "1",
        "--seed",
        "5",
        "--variations",
        "3",
        "--model",
        bundle,
        "-o",
        out,
    )
    assert code == 0, err
    paths = [tmp_path / f"take_{i}.wav" for i in (1, 2, 3)]
    assert stdout.splitlines() == ["seed 5"] + [f"wrote {p} (seed {5 + i})" for i, p in enumerate(paths)]
    assert not out.exists() and all(p.exists() for p in paths)
    assert [read_settings(p)[0].seed for p in paths] == [5, 6, 7]
    code, _, err = run_main(capsys, "generate", "--from", paths[2], "-o", tmp_path / "third.wav")
    assert code == 0, err
    np.testing.assert_allclose(read_wav(tmp_path / "third.wav"), read_wav(paths[2]), atol=1e-4)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "--seconds", "1"], "Give a PROMPT"),
        (["generate", "a drum", "--from", "{tmp}/x.wav"], "not both"),
        (["generate", "   "], "prompt is empty"),
        (["generate", "x" * 2001], "at most 2000"),
        (["generate", "a drum", "--seconds", "25"], "at most 20"),
        (["generate", "a drum", "--steps", "1001"], "1 to 1000"),
        (["generate", "a drum", "--variations", "17"], "between 1 and 16"),
        (["generate", "--from", "{tmp}/missing.wav"], "No settings file"),
        (["generate", "--from", "{tmp}/bad.wav"], "not valid JSON"),
        (["generate", "--from", "{tmp}/partial.wav"], "lacks a valid 'seed'"),
        (["generate", "a drum", "--model", "{tmp}"], "not a soundloom model bundle"),
        (["generate", "a drum", "--model", "{codec}"], "not a generator"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(bundle, tmp_path, capsys, argv, needle):
    (tmp_path / "bad.wav.json").write_text("{ nope")
    partial = {
        "soundloom_settings": 1,
        "prompt": "a",
        "seconds": 1.0,
        "steps": 4,
        "guidance": 4.0,
        "sampler": "euler",
    }
    (tmp_path / "partial.wav.json").write_text(json.dumps(partial))
    out = tmp_path / "out" / "o.wav"
    out.parent.mkdir()
    argv = [a.format(tmp=tmp_path, codec=bundle.parent / "codec") for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(bundle)]
    code, stdout, err = run_main(capsys, *argv, "-o", out)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err and stdout == ""
    assert list(out.parent.iterdir()) == []


def test_cli_without_a_bundled_generator_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    import pipelines.generator as generator

    monkeypatch.setattr(generator, "default_generator_path", lambda: tmp_path / "assets" / "generator")
    for argv in (["generate", "rain on a tin roof", "-o", tmp_path / "o.wav"], ["bench", "generate"]):
        code, stdout, err = run_main(capsys, *argv)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
        assert "No generator is bundled yet" in err and "--recipe static" in err
    assert not (tmp_path / "o.wav").exists()
    code, _, err = run_main(capsys, "bench", "generate", "--data", tmp_path)
    assert code == 2 and "--data is for `soundloom bench codec`" in err


def test_bench_generate_on_a_tiny_run(bundle, tmp_path, capsys):
    from training.bench_generate import run_bench

    report = run_bench(bundle, tmp_path / "bench.json", prompts=3, seconds=0.5, warmup=1)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["median"] == report["median"] and len(saved["runs"]) == 3
    assert len({r["prompt"] for r in saved["runs"]}) == 3
    assert saved["config"]["steps"] == 4 and saved["config"]["bf16"] is native_bf16()
    assert saved["machine"]["torch_threads"] == torch.get_num_threads()
    assert saved["median"]["total_s"] > 0 and saved["median"]["dit_step_ms"] > 0
    assert saved["target"]["result"] == "n/a"  # 0.5 s at 4 steps is not the target's setting
    assert "n/a" in capsys.readouterr().out
