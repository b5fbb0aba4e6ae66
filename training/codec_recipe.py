"""Recipe `codec`: trains the STFT-domain codec (pipelines/codec.py) in the trainer core.

Loss = multi-resolution STFT distance + mel L1 on left/right, plus the latent regulariser:
  - variance matching: per-channel batch mean -> 0 and std -> 1 (weight `reg_weight`), so latents have a
    fixed scale for diffusion and additive noise has a fixed meaning;
  - noise injection: the decoder sees z + sigma * eps with sigma ~ U(0, latent_noise) per clip, so that
    decode(z + small noise) degrades gracefully (a sampler never lands exactly on the manifold).
After training, `export_bundle` measures per-channel mean/std over the corpus' train split and stores
them in the bundle, so `Codec.encode` returns latents with std 1 per channel on the corpus.

Training crops come from a memory-mapped int16 cache of the train split (built once, atomically).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipelines.codec import (
    HARMONIC_PEAK,
    RELATIVE_HARMONIC_PEAK,
    Codec,
    CodecConfig,
    CodecModel,
    Spectrum,
    mid_side_stft,
    pitch_track,
)
from pipelines.errors import BadInput
from pipelines.harmonic import hann_lobe
from pipelines.inference import native_bf16
from training.recipes import model_settings, recipe_settings
from training.spectral import reconstruction_loss

DEFAULTS = {
    "codec": {},  # CodecConfig overrides
    "segment_samples": 65536,  # ~1.49 s crops; a multiple of the latent hop
    "latent_noise": 0.1,
    "reg_weight": 0.05,
    "mel_weight": 1.0,
    "gain_db": 6.0,  # random gain range, +/-
    "bf16": True,  # autocast the encoder/decoder trunks (the losses stay float32) where bf16 is native
    "phase_weight": 1.0,  # instantaneous-frequency + group-delay losses against the true mid/side STFT
    # log-amplitude L1 of each harmonic partial against the true mid STFT at h * f0 on voiced frames; without
    # it the partials grew so slowly from near-silence that tones came back ~10 LU quiet (step 2004)
    "harmonic_weight": 0.2,
}


class AudioPool:
    """All clips of one split as one int16 memmap [total, 2] with per-clip offsets, cached beside the
    corpus and rebuilt when the manifest changes (its sha256 is kept in the index)."""

    def __init__(self, data_dir: Path, split: str = "train"):
        from training.corpus import read_manifest, require_clip_audio

        self.data_dir = Path(data_dir)
        cache = self.data_dir / ".cache"
        self.array_path = cache / f"pool_{split}.int16"
        self.index_path = cache / f"pool_{split}.json"
        records = read_manifest(self.data_dir, split=split)  # BadInput when there is no readable manifest
        manifest_sha = hashlib.sha256((self.data_dir / "manifest.jsonl").read_bytes()).hexdigest()
        index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}
        if index.get("manifest_sha256") != manifest_sha or not self.array_path.is_file():
            if not records:
                raise BadInput(
                    f"The corpus in {self.data_dir} has no {split} clips (clips are split by a hash of their "
                    "material, about 80% train); add more sounds to it."
                )
            require_clip_audio(self.data_dir, records)
            index = self._build(records, manifest_sha)
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.lengths = np.asarray(index["lengths"], dtype=np.int64)
        self.ids = index["ids"]
        self.samples = np.memmap(self.array_path, dtype=np.int16, mode="r").reshape(-1, 2)

    def _build(self, records: list[dict], manifest_sha: str) -> dict:
        """Stream every clip (as 44.1 kHz stereo) into the array file; nothing is held in memory."""
        from tqdm import tqdm

        from pipelines.atomic_files import write_atomic
        from pipelines.audio import load_audio

        self.array_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.array_path.with_name(f".{self.array_path.name}.partial")
        index: dict = {"manifest_sha256": manifest_sha, "offsets": [], "lengths": [], "ids": []}
        total = 0
        try:
            with open(tmp, "wb") as f:
                for rec in tqdm(records, desc="caching clips", unit="clip", mininterval=2.0):
                    audio = load_audio(self.data_dir / rec["path"], max_seconds=None)
                    pcm = np.clip(np.round(audio.samples.T * 32768.0), -32768, 32767).astype(np.int16)
                    f.write(pcm.tobytes())
                    index["offsets"].append(total)
                    index["lengths"].append(len(pcm))
                    index["ids"].append(rec["id"])
                    total += len(pcm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.array_path)
        finally:
            tmp.unlink(missing_ok=True)
        write_atomic(self.index_path, json.dumps(index))
        return index

    def __len__(self) -> int:
        return len(self.offsets)

    def clip(self, i: int) -> np.ndarray:
        off, n = self.offsets[i], self.lengths[i]
        return np.asarray(self.samples[off : off + n].T, dtype=np.float32) / 32768.0

    def crop(self, i: int, length: int, start_fraction: float) -> np.ndarray:
        """A [2, length] window of clip i (zero-padded when the clip is shorter)."""
        off, n = int(self.offsets[i]), int(self.lengths[i])
        start = int(start_fraction * max(n - length, 0))
        window = (
            np.asarray(self.samples[off + start : off + min(n, start + length)].T, dtype=np.float32) / 32768.0
        )
        if window.shape[1] < length:
            window = np.pad(window, ((0, 0), (0, length - window.shape[1])))
        return window


class CodecRecipe:
    name = "codec"

    def __init__(self, config: dict, data_dir: Path):
        self.config = recipe_settings("codec", config, DEFAULTS)
        model_settings("codec", self.config["codec"], set(CodecConfig.__dataclass_fields__))
        self.codec_config = CodecConfig(**self.config["codec"])
        self.model = CodecModel(self.codec_config)
        hop = self.codec_config.latent_hop
        segment = self.config["segment_samples"]
        if not (isinstance(segment, int) and segment >= 2 * hop and segment % hop == 0):
            raise BadInput(
                f"segment_samples must be a multiple of {hop} of at least {2 * hop} (got {segment})."
            )
        self.data_dir = Path(data_dir)
        self._pool: AudioPool | None = None
        # only where this CPU multiplies bf16 natively: elsewhere bf16 is emulated, many times slower
        self.bf16 = bool(self.config["bf16"]) and native_bf16()

    @property
    def pool(self) -> AudioPool:
        if self._pool is None:
            self._pool = AudioPool(self.data_dir, "train")
        return self._pool

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"codec": self.model}

    def dataset_size(self) -> int:
        return len(self.pool)

    def batch(self, indices: list[int]) -> torch.Tensor:
        """Crops for these clip indices; offsets, gains and channel swaps from the (already seeded) torch RNG."""
        n = self.config["segment_samples"]
        starts = torch.rand(len(indices)).tolist()
        wav = torch.from_numpy(np.stack([self.pool.crop(i, n, s) for i, s in zip(indices, starts)]))
        gain_db = (torch.rand(len(indices), 1, 1) * 2 - 1) * self.config["gain_db"]
        wav = wav * 10 ** (gain_db / 20)
        swap = torch.rand(len(indices)) < 0.5
        wav[swap] = wav[swap].flip(1)
        return wav

    def loss(self, step: int, indices: list[int], modules: dict[str, torch.nn.Module]):
        model: CodecModel = modules["codec"]
        cfg = self.config
        wav = self.batch(indices)
        pitch = pitch_track(wav, self.codec_config) if self.codec_config.harmonics else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            z = model.encoder(wav, pitch)
        z = z.float()
        learned = (
            self.codec_config.learned_dim
        )  # the measured pitch channels are neither regularised nor noised
        mean, std = z[:, :learned].mean(dim=(0, 2)), z[:, :learned].std(dim=(0, 2))
        reg = (std - 1).square().mean() + mean.square().mean()
        sigma = cfg["latent_noise"] * torch.rand(z.shape[0], 1, 1)
        noise = torch.randn_like(z)
        noise[:, learned:] = 0
        z = z + sigma * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            h = model.decoder.trunk(z)
        spec = model.decoder.spectrum(h, z)
        y = model.decoder.synthesize(spec)
        l_stft, l_mel = reconstruction_loss(y, wav)
        l_if, l_gd = phase_derivative_losses(spec.phase, wav, self.codec_config)
        loss = (
            l_stft + cfg["mel_weight"] * l_mel + cfg["reg_weight"] * reg + cfg["phase_weight"] * (l_if + l_gd)
        )
        extra = {}
        if self.codec_config.harmonics:
            l_harm, ratio_db = harmonic_amplitude_loss(spec, wav, pitch[1], self.codec_config)
            loss = loss + cfg["harmonic_weight"] * l_harm
            extra = {"harmonic_l1": float(l_harm.detach()), "harmonic_level_db": ratio_db}
        return loss, {
            **extra,
            "mrstft": float(l_stft.detach()),
            "mel_l1": float(l_mel.detach()),
            "phase_if": float(l_if.detach()),
            "phase_gd": float(l_gd.detach()),
            "latent_reg": float(reg.detach()),
            "latent_std_min": float(std.detach().min()),
            "latent_std_max": float(std.detach().max()),
        }

    def preview(self, step: int, modules: dict[str, torch.nn.Module], out_dir: Path) -> None:
        """Round-trip the first three train clips; writes WAVs the studio can play."""
        from pipelines.audio import Audio, save_audio

        model: CodecModel = modules["codec"]
        out_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for i in range(min(3, len(self.pool))):
                wav = torch.from_numpy(self.pool.crop(i, self.config["segment_samples"] * 2, 0.0))[None]
                y = model.decoder(model.encoder(wav))[0]
                save_audio(Audio(y.numpy(), 44100), out_dir / f"step{step:08d}_clip{i}.wav")

    def export(
        self, modules_ema: dict[str, torch.nn.Module], out_dir: Path, card: dict | None = None
    ) -> None:
        card = {**(card or {}), "data": corpus_card(self.data_dir)}
        write_codec_bundle(modules_ema["codec"], self.pool, out_dir, card=card)


def corpus_card(data_dir: Path) -> dict:
    """What a card says about its data: the corpus record (seed, SoundFonts with sha256 and licence, counts)."""
    info = Path(data_dir) / "corpus.json"
    if info.is_file():
        return json.loads(info.read_text())
    return {"folder": Path(data_dir).name, "source": "a user folder (see its manifest for provenance)"}


def phase_derivative_losses(
    phase: torch.Tensor, wav: torch.Tensor, cfg: CodecConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude-weighted anti-wrapped losses on the phase's time derivative (instantaneous frequency)
    and frequency derivative (group delay), against the true mid/side STFT of the target.

    Absolute phase cannot be recovered from the magnitudes the encoder sees, but its derivatives follow
    from the local spectral shape; supervising them directly teaches the decoder coherent phase far faster
    than magnitude losses on the re-analysed output alone (measured: spectral convergence stuck near 0.9
    without them). 1 - cos(difference) is smooth and blind to 2 pi wraps.
    """
    with torch.no_grad():
        true = mid_side_stft(wav, cfg).permute(0, 3, 1, 2)  # [B, T, 2, bins] like `phase`
        true_phase = torch.angle(true)
        mag = true.abs()
        weight = mag / mag.amax(dim=(1, 3), keepdim=True).clamp(min=1e-5)  # per clip and channel, peak 1
    w_t = weight[:, 1:] * weight[:, :-1]
    d_pred, d_true = phase[:, 1:] - phase[:, :-1], true_phase[:, 1:] - true_phase[:, :-1]
    l_if = (w_t * (1 - torch.cos(d_pred - d_true))).sum() / w_t.sum().clamp(min=1e-6)
    w_f = weight[..., 1:] * weight[..., :-1]
    g_pred, g_true = phase[..., 1:] - phase[..., :-1], true_phase[..., 1:] - true_phase[..., :-1]
    l_gd = (w_f * (1 - torch.cos(g_pred - g_true))).sum() / w_f.sum().clamp(min=1e-6)
    return l_if, l_gd


def harmonic_amplitude_loss(
    spec: Spectrum, wav: torch.Tensor, voiced: torch.Tensor, cfg: CodecConfig
) -> tuple[torch.Tensor, float]:
    """L1 between log mid amplitudes of the decoded partials and the ones the true mid STFT shows at h * f0,
    on voiced frames (`voiced` [B, T] per STFT frame, from `pitch_track`), for partials below Nyquist.
    Returns (loss, energy-weighted predicted/true level in dB).

    A partial of amplitude a at fractional bin offset d peaks at (a / 2) W(d) (see harmonic_stft), so the
    true amplitude is 2 |X[k]| / W(k - omega) at its nearest bin k. In a mixture this reads whatever sits at
    h * f0, which is the level the partial should carry there anyway; the residual head keeps the rest.
    """
    floor = (
        1e-4 if spec.gain is None else 1e-4 * spec.gain[..., None]
    )  # -80 dB, absolute or re the frame level
    with torch.no_grad():
        true = mid_side_stft(wav, cfg)[:, 0].abs()  # [B, bins, T]
        f0 = spec.f0
        h = torch.arange(1, cfg.harmonics + 1, dtype=f0.dtype)
        omega = f0[..., None] * h * (cfg.n_fft / cfg.sample_rate)  # [B, T, H] in bins
        k = omega.round().clamp(max=cfg.bins - 1)
        gain = hann_lobe(k - omega, cfg.n_fft)
        mask = (voiced[..., None] > 0.5) & (omega < cfg.bins - 3)
        target = 2 * true.transpose(1, 2).gather(2, k.long()) / gain.clamp(min=1.0)
        peak = HARMONIC_PEAK if spec.gain is None else RELATIVE_HARMONIC_PEAK * spec.gain[..., None]
        target = torch.where(mask, torch.minimum(target, torch.as_tensor(peak)), torch.zeros_like(target))
        # Loud partials matter: weight each by its level relative to the frame's loudest (floor 1 %), or
        # the many near-silent upper partials dominate and a tone 20 dB too quiet scores well.
        weight = (target / target.amax(-1, keepdim=True).clamp(min=floor)).clamp(min=0.01) * mask
    pred = spec.amps[:, :, 0]
    diff = torch.log(pred + floor) - torch.log(target + floor)
    total = weight.sum()
    if total <= 0:
        return diff.sum() * 0.0, 0.0
    loss = (diff.abs() * weight).sum() / total
    energy = target.square() * mask
    level_db = float((diff.detach() * energy).sum() / energy.sum().clamp(min=1e-12)) * 20 / math.log(10)
    return loss, level_db


@torch.no_grad()
def latent_statistics(
    model: CodecModel, pool: AudioPool, max_clips: int = 400
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of raw latents over (up to) `max_clips` evenly spaced clips, encoded
    exactly as inference encodes (Codec.encode, bf16), with the normalisation still at identity."""
    from pipelines.audio import Audio

    assert torch.all(model.latent_mean == 0) and torch.all(model.latent_std == 1)
    codec = Codec(model)
    picks = np.linspace(0, len(pool) - 1, min(max_clips, len(pool))).astype(int)
    z = torch.cat([codec.encode(Audio(pool.clip(int(i)), 44100)) for i in picks], dim=1)
    return z.mean(dim=1), z.std(dim=1)


def write_codec_bundle(model: CodecModel, pool: AudioPool, out_dir: Path, card: dict) -> Path:
    """Measure latent statistics, store them in the model, and save a codec bundle."""
    from pipelines.bundle import save_bundle

    model = model.float().eval()
    model.latent_mean.zero_()
    model.latent_std.fill_(1.0)
    mean, std = latent_statistics(model, pool)
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return save_bundle(Path(out_dir), asdict(model.cfg), {"codec": state}, kind="codec", card=card)
