"""Codec: shapes and rates, the fast iSTFT, spectral metrics, training through the trainer core,
kill-and-resume of a codec run, and the bundled codec on a real sound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import TINY_CODEC as TINY

from pipelines.audio import Audio
from pipelines.codec import Codec, CodecConfig, CodecModel, default_codec_path, hold_voiced, overlap_add_istft
from training.spectral import lsd_db, mel_distance_db, mrstft_distance, reconstruction_loss

REPO = Path(__file__).resolve().parent.parent


def test_overlap_add_istft_inverts_torch_stft():
    x = torch.randn(2, 44100)
    window = torch.hann_window(2048)
    spec = torch.stft(x, 2048, 512, window=window, return_complex=True)
    y = overlap_add_istft(spec.transpose(1, 2), 2048, 512)
    n = y.shape[-1]
    assert n == (spec.shape[-1] - 1) * 512
    assert torch.allclose(y, x[:, :n], atol=1e-5)


def test_latent_rate_and_lengths():
    cfg = CodecConfig(**TINY)
    codec = Codec(CodecModel(cfg), bf16=False)
    assert abs(codec.latent_rate - 44100 / 1024) < 1e-9
    audio = Audio(np.zeros((1, 22050), dtype=np.float32), 22050)  # 1 s mono at 22.05 kHz
    z = codec.encode(audio)
    assert z.shape == (8, 44)  # ceil(44100 / 1024)
    out = codec.roundtrip(audio)
    assert out.sample_rate == 44100 and out.samples.shape == (2, 44100)


def test_very_short_input_round_trips():
    codec = Codec(CodecModel(CodecConfig(**TINY)), bf16=False)
    out = codec.roundtrip(Audio(np.ones((2, 100), dtype=np.float32) * 0.1, 44100))
    assert out.samples.shape == (2, 100) and np.isfinite(out.samples).all()


def test_decode_undoes_the_latent_normalisation():
    torch.manual_seed(0)
    model = CodecModel(CodecConfig(**TINY))
    model.latent_mean.copy_(torch.randn(8))
    model.latent_std.copy_(torch.rand(8) + 0.5)
    z = torch.randn(8, 20)
    direct = model.decoder(z[None] * model.latent_std[:, None] + model.latent_mean[:, None])[0]
    assert np.allclose(Codec(model, bf16=False).decode(z).samples, direct.detach().numpy(), atol=1e-5)
    wav = torch.randn(1, 2, 8192) * 0.1
    raw = model.encoder(wav)
    assert torch.allclose(model.encode(wav), (raw - model.latent_mean[:, None]) / model.latent_std[:, None])


def test_bf16_decode_matches_float32():
    torch.manual_seed(0)
    model = CodecModel(CodecConfig(**TINY))
    z = torch.randn(8, 40)
    a = Codec(model, bf16=False).decode(z).samples
    b = Codec(model, bf16=True).decode(z).samples
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-4


def test_harmonic_codec_carries_pitch_in_the_latent_and_renders_it():
    """With the harmonic path, the last two latent channels are the measured pitch, and the decoder
    draws an exact comb at the f0 they hold."""
    torch.manual_seed(0)
    cfg = CodecConfig(**TINY, harmonics=8)
    model = CodecModel(cfg)
    t = torch.arange(44100) / 44100
    tone = 0.3 * torch.sin(2 * torch.pi * 220.0 * t)
    raw = model.encoder(torch.stack([tone, tone])[None])
    assert raw.shape == (1, 8, 43)
    f0_channel, voicing = raw[0, -2, 2:-2], raw[0, -1, 2:-2]
    assert float((1200 * (f0_channel - np.log2(220 / 256))).abs().max()) < 5  # cents
    assert float(voicing.min()) == 1.0
    spec = model.decoder.spectrum(model.decoder.trunk(raw), raw)
    frames = spec.mag.shape[1]
    assert spec.f0.shape == (1, frames) and spec.amps.shape == (1, frames, 2, 8)
    # Silence the residual and keep only the fundamental: the output's spectrum peaks at 220 Hz.
    spec.mag = torch.zeros_like(spec.mag)
    spec.amps = torch.zeros_like(spec.amps)
    spec.amps[:, :, 0, 0] = 0.5
    y = model.decoder.synthesize(spec)[0, 0].detach()
    bin_hz = 44100 / len(y)
    assert abs(float(torch.fft.rfft(y).abs().argmax()) * bin_hz - 220.0) <= bin_hz
    codec = Codec(model, bf16=True)
    assert codec.decoder.harmonic_head.weight.dtype == torch.float32


def test_harmonic_amplitude_loss_reads_partial_levels_from_the_true_spectrum():
    """Partials at the tone's true amplitudes score ~0 dB and a small loss; 20 dB too quiet reads -20 dB."""
    from pipelines.codec import Spectrum, pitch_track
    from training.codec_recipe import harmonic_amplitude_loss

    cfg = CodecConfig(**TINY, harmonics=8)
    t = torch.arange(32768) / 44100
    mid = 0.3 * torch.sin(2 * torch.pi * 330.0 * t) + 0.1 * torch.sin(2 * torch.pi * 660.0 * t)
    wav = torch.stack([mid, mid])[None]
    f0, voiced = pitch_track(wav, cfg)
    frames = f0.shape[1]
    amps = torch.zeros(1, frames, 2, 8)
    amps[:, :, 0, 0], amps[:, :, 0, 1] = 0.3, 0.1
    spec = Spectrum(torch.zeros(1, frames, 2, cfg.bins), torch.zeros(1, frames, 2, cfg.bins), f0, amps)
    loss, level_db = harmonic_amplitude_loss(spec, wav, voiced, cfg)
    assert abs(level_db) < 0.5, level_db
    spec.amps = amps * 0.1
    quiet_loss, quiet_db = harmonic_amplitude_loss(spec, wav, voiced, cfg)
    assert abs(quiet_db + 20) < 0.5, quiet_db
    assert float(quiet_loss) > float(loss) + 1.0


def test_unvoiced_frames_hold_the_last_pitch():
    log_f0 = torch.tensor([[5.0, 1.0, 9.0, 2.0, 7.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    voiced = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    held = hold_voiced(log_f0, voiced)
    assert held.tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]]


def test_spectral_metrics_zero_on_identity_and_ordered():
    t = torch.arange(44100) / 44100
    x = torch.stack([torch.sin(2 * torch.pi * 440 * t)] * 2) * 0.5
    near = x + 0.001 * torch.randn_like(x)
    far = x + 0.1 * torch.randn_like(x)
    assert float(mrstft_distance(x, x)) < 1e-5 and mel_distance_db(x, x) < 1e-4 and lsd_db(x, x) < 1e-4
    assert float(mrstft_distance(near, x)) < float(mrstft_distance(far, x))
    assert mel_distance_db(near, x) < mel_distance_db(far, x)
    assert lsd_db(near, x) < lsd_db(far, x)
    loss_stft, loss_mel = reconstruction_loss(far, x)
    assert torch.isclose(loss_stft, mrstft_distance(far, x), rtol=1e-4)
    assert float(loss_mel) > 0


def make_corpus(root: Path, clips: int = 6) -> Path:
    """A minimal corpus in the manifest format: decaying harmonic tones."""
    (root / "audio").mkdir(parents=True)
    lines = []
    for i in range(clips):
        t = np.arange(int(44100 * 2.0)) / 44100
        f0 = 110.0 * (i + 2)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) * np.exp(-1.5 * t) * 0.3
        sf.write(
            root / "audio" / f"c{i}.flac",
            np.stack([x, 0.7 * x], 1).astype(np.float32),
            44100,
            subtype="PCM_16",
        )
        lines.append(
            json.dumps(
                {
                    "id": f"c{i}",
                    "path": f"audio/c{i}.flac",
                    "captions": [f"a tone at {f0:.0f} Hz"],
                    "seconds": 2.0,
                    "source": "procedural",
                    "licence": "CC0",
                    "provenance": "test",
                    "material_id": f"m{i}",
                    "split": "train",
                    "params": {"category": "tone", "f0_hz": f0},
                }
            )
        )
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def codec_config(tmp: Path, steps: int, **extra) -> Path:
    cfg = {
        "steps": steps,
        "batch_size": 2,
        "lr": 2e-3,
        "warmup_steps": 2,
        "ckpt_every": 4,
        "log_every": 1,
        "threads": 1,
        "recipe": {"segment_samples": 16384, "codec": TINY, **extra},
    }
    path = tmp / "codec.json"
    path.write_text(json.dumps(cfg))
    return path


def test_codec_recipe_learns(tmp_path):
    from training.trainer import export_run, train

    data = make_corpus(tmp_path / "corpus")
    train("codec", data, tmp_path / "run", config_path=codec_config(tmp_path, 30), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["mrstft"] for r in rows[:3]]), np.mean([r["mrstft"] for r in rows[-3:]])
    assert last < 0.9 * first, (first, last)
    bundle = export_run(tmp_path / "run", tmp_path / "bundle", data_dir=data)
    from pipelines.codec import load_codec

    codec = load_codec(bundle)
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["kind"] == "codec" and meta["card"]["steps"] == 30
    assert meta["card"]["data"]["folder"] == "corpus"  # no corpus.json: the card names the user folder
    # export measured the latent statistics: normalised train latents have mean 0 and std 1 per channel
    z = torch.cat(
        [
            codec.encode(Audio(sf.read(f, always_2d=True)[0].T.astype(np.float32), 44100))
            for f in sorted((data / "audio").glob("*.flac"))
        ],
        dim=1,
    )
    assert z.mean(dim=1).abs().max() < 0.1, z.mean(dim=1)
    assert (z.std(dim=1) - 1).abs().max() < 0.1, z.std(dim=1)


def test_codec_recipe_refuses_bad_settings_and_empty_splits(tmp_path):
    from pipelines.errors import BadInput
    from training.codec_recipe import CodecRecipe

    data = make_corpus(tmp_path / "corpus")
    with pytest.raises(BadInput, match="latent_noize"):
        CodecRecipe({"latent_noize": 0.1}, data)
    with pytest.raises(BadInput, match="width"):
        CodecRecipe({"codec": {"width": 3}}, data)
    with pytest.raises(BadInput, match="segment_samples"):
        CodecRecipe({"segment_samples": 1000}, data)
    manifest = data / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"split": "train"', '"split": "test"'))
    with pytest.raises(BadInput, match="no train clips"):
        CodecRecipe({"codec": TINY}, data).dataset_size()


def test_codec_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    """SIGKILL a codec run after its first checkpoint, resume it, and compare with an uninterrupted run."""
    from training.checkpoint import latest_good_checkpoint

    data = make_corpus(tmp_path / "corpus")
    steps = 40
    cfg = codec_config(tmp_path, steps)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [
        sys.executable,
        "-m",
        "training.trainer",
        "--recipe",
        "codec",
        "--data",
        str(data),
        "--config",
        str(cfg),
    ]

    subprocess.run([*base, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "checkpoints").glob("step_00000004*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((killed / "checkpoints").glob("step_00000004*")), "the run never wrote its first checkpoint"
    assert not (killed / "checkpoints" / f"step_{steps:08d}").exists(), "the run finished before the kill"
    subprocess.run([*base, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)

    _, _, a = latest_good_checkpoint(tmp_path / "straight" / "checkpoints")
    _, _, b = latest_good_checkpoint(killed / "checkpoints")
    for group in ("modules", "ema"):
        for key, tensor in a[group].items():
            assert torch.allclose(tensor, b[group][key], atol=1e-6), (group, key)


@pytest.mark.skipif(not (default_codec_path() / "model.json").exists(), reason="no bundled codec yet")
def test_bundled_codec_keeps_a_tone():
    """The bundled codec reproduces a 440 Hz harmonic tone: same spectral peak, loudness within 1.5 dB."""
    from pipelines.audio import loudness_lufs
    from pipelines.codec import load_codec

    codec = load_codec()
    t = np.arange(int(44100 * 2.0)) / 44100
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 880 * t)).astype(np.float32)
    audio = Audio(np.stack([x, x]), 44100)
    y = codec.roundtrip(audio)
    assert y.samples.shape == audio.samples.shape
    mid = slice(4410, -4410)
    spec = np.abs(np.fft.rfft(y.samples[0, mid]))
    freqs = np.fft.rfftfreq(len(y.samples[0, mid]), 1 / 44100)
    assert abs(freqs[spec.argmax()] - 440) < 3
    assert abs(loudness_lufs(y) - loudness_lufs(audio)) < 1.5
    assert float(mrstft_distance(torch.from_numpy(y.samples), torch.from_numpy(audio.samples))) < 1.0


def click_train() -> tuple[Audio, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.zeros(int(44100 * 3.0), np.float32)
    clicks = np.arange(0.25, 2.9, 0.5)
    for t in clicks:
        i = int(t * 44100)
        x[i : i + 2205] += (rng.standard_normal(2205) * np.exp(-np.arange(2205) / 300)).astype(
            np.float32
        ) * 0.5
    return Audio(np.stack([x, x]), 44100), clicks


@pytest.mark.skipif(not (default_codec_path() / "model.json").exists(), reason="no bundled codec yet")
def test_bundled_codec_keeps_onset_timing():
    """What the bundled codec does keep: a click train's onsets, within 12 ms."""
    from pipelines.codec import load_codec

    audio, clicks = click_train()
    y = load_codec().roundtrip(audio)
    hop = 128
    env = np.sqrt(np.convolve(y.samples.mean(0) ** 2, np.ones(hop) / hop, mode="same"))[::hop]
    rise = np.diff(env)
    found = []
    for t in clicks:  # the steepest rise of the envelope near each click
        lo, hi = int((t - 0.1) * 44100 / hop), int((t + 0.1) * 44100 / hop)
        found.append((lo + int(np.argmax(rise[lo:hi]))) * hop / 44100)
    assert np.max(np.abs(np.array(found) - clicks)) < 0.012, (found, clicks)


@pytest.mark.skipif(not (default_codec_path() / "model.json").exists(), reason="no bundled codec yet")
@pytest.mark.xfail(
    strict=True,
    reason="known defect of the bundled codec (issue 2, open): short transients come back ~7 LU quieter",
)
def test_bundled_codec_keeps_transient_loudness():
    from pipelines.audio import loudness_lufs
    from pipelines.codec import load_codec

    audio, _ = click_train()
    assert abs(loudness_lufs(load_codec().roundtrip(audio)) - loudness_lufs(audio)) < 2.0


def test_frame_level_is_the_rms_of_a_steady_tone():
    from pipelines.codec import frame_level, mid_side_stft

    cfg = CodecConfig(**TINY)
    t = torch.arange(44100) / 44100
    tone = 0.4 * torch.sin(2 * torch.pi * 441.0 * t)
    level = frame_level(mid_side_stft(torch.stack([tone, tone])[None], cfg))[0, 4:-4]
    assert float((level / (0.4 / 2**0.5) - 1).abs().max()) < 0.01, level


@pytest.mark.parametrize("harmonics", [0, 8])
def test_measured_gain_makes_the_codec_level_equivariant(harmonics):
    """Scaling the input scales the output by exactly that (before training, so by construction); the
    learned channels do not move and the level channel shifts by log2 of the scale."""
    torch.manual_seed(0)
    cfg = CodecConfig(**TINY, harmonics=harmonics, measured_gain=True)
    assert cfg.learned_dim == cfg.latent_dim - 1 - (2 if harmonics else 0)
    model = CodecModel(cfg).eval()
    t = torch.arange(32768) / 44100
    x = 0.5 * torch.sin(2 * torch.pi * 220.0 * t) * torch.exp(-3 * t) + 0.05 * torch.randn(32768)
    wav = torch.stack([x, 0.7 * x])[None]
    with torch.no_grad():
        z_loud, z_quiet = model.encoder(wav), model.encoder(wav / 8)
        y_loud, y_quiet = model.decoder(z_loud), model.decoder(z_quiet)
    learned = cfg.learned_dim
    assert torch.allclose(z_loud[:, :learned], z_quiet[:, :learned], atol=1e-4)
    gain = cfg.gain_channel
    assert torch.allclose(
        z_loud[:, gain] - z_quiet[:, gain], torch.full_like(z_loud[:, gain], 3.0), atol=1e-3
    )
    assert float((y_loud / 8 - y_quiet).abs().max()) < 1e-3 * float(y_quiet.abs().max())
