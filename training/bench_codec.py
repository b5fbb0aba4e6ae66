"""`soundloom bench codec`: decode speed and reconstruction quality against a Griffin-Lim baseline.

Quality sets: the corpus test split (material the codec never trained on, by the manifest's hash split)
and real recordings outside the corpus' sources: Debian's hydrogen-drumkits samples and espeak-ng
speech. For each clip we compare the original with (a) the codec round trip, (b) Griffin-Lim
(32 iterations, librosa) from a 128-band mel spectrogram (n_fft 2048, hop 512) of the same audio,
(c) the codec decoding z + 0.1 * N(0, 1), on multi-resolution STFT distance, mel distance (dB) and
log-spectral distance (dB), all from training/spectral.py.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic_files import write_report
from pipelines.audio import Audio, load_audio
from training.spectral import lsd_db, mel_distance_db, mrstft_distance, power_db, stft_power

HYDROGEN_ROOT = Path("/usr/share/hydrogen/data/drumkits")
SPEECH = [
    ("en", "The quick brown fox jumps over the lazy dog near the river bank."),
    ("en+f3", "Please remember to save your work before the studio closes tonight."),
    ("en-us+m3", "Seven silver spoons lay scattered across the kitchen table."),
    ("de", "Der Klang des Regens auf dem Dach beruhigt mich jeden Abend."),
    ("fr", "Le vent souffle doucement sur les collines au coucher du soleil."),
    ("es", "La música suena mejor cuando la escuchamos juntos en la plaza."),
]


def espeak_clips(max_seconds: float = 6.0) -> list[tuple[str, Audio]]:
    exe = shutil.which("espeak-ng")
    if not exe:
        return []
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (voice, text) in enumerate(SPEECH):
            path = Path(tmp) / f"speech{i}.wav"
            subprocess.run(
                [exe, "-v", voice, "-s", "150", "-w", str(path), text], check=True, capture_output=True
            )
            audio = load_audio(path)
            clips.append((f"speech:{voice}", Audio(audio.samples[:, : int(max_seconds * 44100)], 44100)))
    return clips


def hydrogen_clips(limit: int = 24, max_seconds: float = 6.0) -> list[tuple[str, Audio]]:
    files = sorted(
        glob.glob(str(HYDROGEN_ROOT / "*" / "*.wav")) + glob.glob(str(HYDROGEN_ROOT / "*" / "*.flac"))
    )
    if not files:
        return []
    picks = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(limit, len(files)))]
    clips = []
    for f in picks:
        audio = load_audio(f)
        if audio.seconds < 0.05:
            continue
        name = f"hydrogen:{Path(f).parent.name}/{Path(f).name}"
        clips.append((name, Audio(audio.samples[:, : int(max_seconds * 44100)], 44100)))
    return clips


def corpus_test_clips(
    data_dir: Path, limit: int = 40, max_seconds: float = 6.0
) -> list[tuple[str, Audio, dict]]:
    from training.corpus import read_manifest

    records = read_manifest(data_dir, split="test")
    picks = (
        [records[int(i)] for i in np.linspace(0, len(records) - 1, min(limit, len(records)))]
        if records
        else []
    )
    out = []
    for rec in picks:
        audio = load_audio(data_dir / rec["path"])
        out.append((f"test:{rec['id']}", Audio(audio.samples[:, : int(max_seconds * 44100)], 44100), rec))
    return out


def griffin_lim(audio: Audio, n_iter: int = 32) -> Audio:
    """Baseline: invert a 128-band mel power spectrogram per channel with Griffin-Lim."""
    import librosa

    chans = []
    for ch in audio.samples:
        mel = librosa.feature.melspectrogram(
            y=ch, sr=audio.sample_rate, n_fft=2048, hop_length=512, n_mels=128
        )
        y = librosa.feature.inverse.mel_to_audio(
            mel, sr=audio.sample_rate, n_fft=2048, hop_length=512, n_iter=n_iter, length=len(ch)
        )
        chans.append(y.astype(np.float32))
    return Audio(np.stack(chans), audio.sample_rate)


def distances(y: Audio, x: Audio) -> dict[str, float]:
    n = min(y.samples.shape[1], x.samples.shape[1])
    ty, tx = torch.from_numpy(y.samples[:, :n]), torch.from_numpy(x.samples[:, :n])
    return {
        "mrstft": float(mrstft_distance(ty, tx)),
        "mel_db": mel_distance_db(ty, tx),
        "lsd_db": lsd_db(ty, tx),
    }


def time_decode(codec, seconds: float = 10.0, repeats: int = 10) -> dict:
    rng = np.random.default_rng(0)
    audio = Audio((0.1 * rng.standard_normal((2, int(seconds * 44100)))).astype(np.float32), 44100)
    z = codec.encode(audio)
    times = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        codec.decode(z)
        if i >= 2:
            times.append(time.perf_counter() - t)
    enc = []
    for _ in range(3):
        t = time.perf_counter()
        codec.encode(audio)
        enc.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "seconds": seconds,
        "decode_median_ms": round(med * 1e3, 2),
        "decode_x_realtime": round(seconds / med, 1),
        "encode_median_ms": round(statistics.median(enc) * 1e3, 2),
        "encode_x_realtime": round(seconds / statistics.median(enc), 1),
        "threads": torch.get_num_threads(),
        "bf16": codec.bf16,
    }


def spectrogram_png(rows: list[tuple[str, Audio]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.4 * len(rows)), sharex=True)
    for ax, (label, audio) in zip(np.atleast_1d(axes), rows):
        power = stft_power(torch.from_numpy(audio.samples.mean(axis=0)), 2048, 256)
        db = (power_db(power) - power_db(power.max())).numpy()
        freqs = np.linspace(0, audio.sample_rate / 2, db.shape[0])
        times = np.arange(db.shape[1]) * 256 / audio.sample_rate
        keep = freqs >= 30.0  # log-frequency axis from 30 Hz: harmonics stay readable
        ax.pcolormesh(times, freqs[keep], db[keep], vmin=-80, vmax=0, cmap="magma", shading="auto")
        ax.set_yscale("log")
        ax.set_ylabel("Hz")
        ax.set_title(label, fontsize=9)
    np.atleast_1d(axes)[-1].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summarise(rows: list[dict]) -> dict:
    out: dict = {"clips": len(rows)}
    for system in ("codec", "griffin_lim", "codec_noisy"):
        for metric in ("mrstft", "mel_db", "lsd_db"):
            vals = [r[system][metric] for r in rows]
            out[f"{system}.{metric}"] = round(float(np.mean(vals)), 4) if vals else None
    if rows:
        out["mrstft_improvement_vs_gl"] = round(1 - out["codec.mrstft"] / out["griffin_lim.mrstft"], 4)
        out["codec_beats_gl_on_every_metric"] = all(
            out[f"codec.{m}"] < out[f"griffin_lim.{m}"] for m in ("mrstft", "mel_db", "lsd_db")
        )
        out["noise_degradation_mrstft"] = round(out["codec_noisy.mrstft"] - out["codec.mrstft"], 4)
    return out


def evaluate_set(codec, clips: list[tuple[str, Audio]], noise_seed: int = 0) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(noise_seed)
    for name, audio in clips:
        z = codec.encode(audio)
        n = audio.samples.shape[1]
        recon = codec.decode(z, n_samples=n)
        noisy = codec.decode(z + 0.1 * torch.randn(z.shape, generator=g), n_samples=n)
        rows.append(
            {
                "name": name,
                "seconds": round(audio.seconds, 3),
                "codec": distances(recon, audio),
                "griffin_lim": distances(griffin_lim(audio), audio),
                "codec_noisy": distances(noisy, audio),
                "latent_std": float(z.std()),
            }
        )
    return rows


def find_example(clips, words: tuple[str, ...]):
    for name, audio, rec in clips:
        text = " ".join(rec.get("captions", [])).lower() + " " + json.dumps(rec.get("params", {})).lower()
        if all(w in text for w in words):
            return name, audio
    return None


def run(
    json_out: str | Path | None = None,
    data: str | Path | None = None,
    model: str | Path | None = None,
    update_card: bool = False,
) -> dict:
    from pipelines.codec import load_codec

    started = time.time()
    codec = load_codec(model)
    data_dir = Path(data) if data else Path(codec_data_dir(codec))
    report: dict = {
        "bundle": str(codec.bundle_path),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "latent": {"rate_hz": round(codec.latent_rate, 3), "channels": codec.channels},
        "griffin_lim": "librosa mel_to_audio, 128 mels, n_fft 2048, hop 512, 32 iterations",
    }
    print(f"codec bundle: {codec.bundle_path}", flush=True)
    report["speed"] = time_decode(codec)
    s = report["speed"]
    print(
        f"decode 10 s stereo: {s['decode_median_ms']} ms median = {s['decode_x_realtime']}x real time "
        f"(encode {s['encode_x_realtime']}x) on {s['threads']} threads",
        flush=True,
    )

    test = corpus_test_clips(data_dir)
    real = hydrogen_clips() + espeak_clips()
    sets = {"corpus_test": [(n, a) for n, a, _ in test], "real_unseen": real}
    per_set = {}
    for set_name, clips in sets.items():
        print(f"evaluating {set_name}: {len(clips)} clips ...", flush=True)
        rows = evaluate_set(codec, clips)
        per_set[set_name] = {"summary": summarise(rows), "clips": rows}
    report["sets"] = per_set

    # Latent scale on unseen material: the per-channel std the diffusion model will see.
    zs = torch.cat([codec.encode(a) for _, a in sets["corpus_test"][:20]], dim=1) if test else None
    if zs is not None:
        std = zs.std(dim=1)
        report["latent"]["test_channel_std_min"] = round(float(std.min()), 3)
        report["latent"]["test_channel_std_max"] = round(float(std.max()), 3)
        report["latent"]["test_channel_mean_abs_max"] = round(float(zs.mean(dim=1).abs().max()), 3)

    png_dir = Path(json_out).parent if json_out else Path(".cache/bench")
    png_dir.mkdir(parents=True, exist_ok=True)
    examples = [
        find_example(test, ("piano",)),
        find_example(test, ("drum",)),
        find_example(test, ("riser",)),
        next(((n, a) for n, a in real if n.startswith("speech")), None),
    ]
    pngs = []
    for ex in filter(None, examples):
        name, audio = ex
        recon = codec.roundtrip(audio)
        safe = name.replace(":", "_").replace("/", "_").replace("+", "_")
        path = png_dir / f"codec_{safe}.png"
        spectrogram_png(
            [
                ("original", audio),
                ("codec round trip", recon),
                ("Griffin-Lim from 128-band mel", griffin_lim(audio)),
            ],
            path,
            name,
        )
        pngs.append(str(path))
    report["spectrograms"] = pngs
    report["wall_time_s"] = round(time.time() - started, 1)

    print_table(report)
    if update_card:
        from pipelines.bundle import update_card as write_card

        figures = {name: block["summary"] for name, block in report["sets"].items()}
        write_card(
            codec.bundle_path, {"eval": {"speed": report["speed"], "latent": report["latent"], **figures}}
        )
        print(f"recorded the figures in {codec.bundle_path / 'model.json'}")
    if json_out:
        write_report(json_out, report)
    return report


def codec_data_dir(codec) -> str:
    """The corpus the bundle was trained on (from its card), else the default `make bundles` location."""
    from pipelines.bundle import load_bundle

    card = load_bundle(codec.bundle_path).card
    for candidate in (card.get("data_dir"), ".cache/bundles/corpus"):
        if candidate and (Path(candidate) / "manifest.jsonl").exists():
            return candidate
    from pipelines.errors import BadInput

    raise BadInput(
        "No corpus found for the codec benchmark; pass --data DIR (built by `soundloom dataset build`)."
    )


def print_table(report: dict) -> None:
    print()
    print(f"{'set':<12} {'system':<12} {'MR-STFT':>8} {'mel dB':>8} {'LSD dB':>8}")
    for set_name, block in report["sets"].items():
        s = block["summary"]
        for system in ("codec", "griffin_lim", "codec_noisy"):
            if s.get(f"{system}.mrstft") is None:
                continue
            print(
                f"{set_name:<12} {system:<12} {s[f'{system}.mrstft']:>8.3f} {s[f'{system}.mel_db']:>8.2f} "
                f"{s[f'{system}.lsd_db']:>8.2f}"
            )
        if s.get("mrstft_improvement_vs_gl") is not None:
            gain = 100 * s["mrstft_improvement_vs_gl"]
            verdict = f"{gain:.1f}% lower" if gain >= 0 else f"{-gain:.1f}% higher"
            print(
                f"{set_name:<12} codec vs GL: MR-STFT {verdict}, "
                f"beats GL on every metric: {s['codec_beats_gl_on_every_metric']}"
            )
