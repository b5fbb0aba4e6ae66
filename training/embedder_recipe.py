"""Recipes `ssl-embedder` and `judge-embedder`: the two audio embedders of pipelines/embedders.py.

Both learn one objective: a symmetric InfoNCE (learned temperature, CLIP-style) between the audio
embedding of a crop and the text embedding of one of its captions (drawn at random), plus an
augmentation-invariance term, the same InfoNCE between two augmented views of that crop. Pairs
that share a caption (or a clip) count as positives, so repeated captions are not pushed apart.

- ssl-embedder reads the latent cache (DATA/latents/<codec hash>/<id>.safetensors, key "z"); its views
  are crops at slightly different offsets with latent noise of std 0.05-0.2 (encode-free augmentation).
- judge-embedder reads the audio (the train split's AudioPool); its views are crops shifted by up to
  `shift_seconds`, with random gain and white noise 30-50 dB below the crop's level.

The train split is cut in two halves by a salted hash of each clip's material (`half_of`): the SSL
embedder learns from half A, the judge from half B, so the judge has never heard what the teacher
learned from. The half is written into each bundle's card. The default seeds differ in the configs
(training/configs/ssl_embedder.json: 0, judge_embedder.json: 1).

All per-sample randomness (crops, captions, augmentations) is drawn from the torch generator the
trainer reseeds every step, so a resumed run replays the same batches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.audio import Audio
from pipelines.bundle import bundle_hash, save_bundle
from pipelines.embedders import (
    MAX_LOGIT_SCALE,
    LatentEmbedderNet,
    MelEmbedderNet,
    build_net,
    mono_wave,
    net_config,
    pad_stack,
)
from pipelines.errors import BadInput
from training.recipes import recipe_settings

HALVES = ("A", "B")
HALF_RULE = (
    "sha256('embedder-half:' + material_id (the clip id when there is none)), first byte even: A, odd: B"
)


def half_of(record: dict) -> str:
    """'A' or 'B' for a manifest record, by a salted hash of its material (independent of the split's hash)."""
    key = record.get("material_id") or record["id"]
    return HALVES[hashlib.sha256(f"embedder-half:{key}".encode()).digest()[0] & 1]


def train_half(data_dir: Path, half: str) -> list[dict]:
    """The train-split records of one half, in manifest order."""
    from training.corpus import read_manifest

    assert half in HALVES
    return [r for r in read_manifest(data_dir, split="train") if half_of(r) == half]


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between the rows of `a` and `b` (L2-normalised); `same[i, j]` marks positives."""
    logits = scale * a.float() @ b.float().T
    target = same.float()
    rows = F.cross_entropy(logits, target / target.sum(1, keepdim=True))
    cols = F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True))
    return 0.5 * (rows + cols)


def top1_accuracy(a: Tensor, b: Tensor, same: Tensor) -> Tensor:
    """Share of rows of `a` whose nearest row of `b` is a positive."""
    nearest = (a.float() @ b.float().T).argmax(dim=1)
    return same[torch.arange(len(a)), nearest].float().mean()


class EmbedderRecipe:
    """The shared objective; subclasses say where clips come from (`half`, `dataset_size`, `views`)."""

    name = ""
    half = ""
    arch = ""
    role = ""
    DEFAULTS: dict = {}

    def __init__(self, config: dict, data_dir: Path):
        self.config = recipe_settings(self.name, config, self.DEFAULTS)
        if not isinstance(self.config["net"], dict):
            raise BadInput(f"The {self.name} recipe's net setting must be a JSON object of model settings.")
        self.data_dir = Path(data_dir)
        self._records: list[dict] | None = None
        self._captions: dict[str, int] | None = None
        self._caption_vectors: Tensor | None = None

    def make_net(self, net_settings: dict) -> None:
        self.net: LatentEmbedderNet | MelEmbedderNet = build_net({**net_settings, "arch": self.arch})

    def modules(self) -> dict[str, nn.Module]:
        return {"embedder": self.net}

    @property
    def records(self) -> list[dict]:
        if self._records is None:
            records = train_half(self.data_dir, self.half)
            if not records:
                raise BadInput(
                    f"The corpus in {self.data_dir} has no train clips in half {self.half} (the {self.name} "
                    "learns from one half of the train split); add more sounds to it."
                )
            self._records = records
        return self._records

    def caption_vectors(self) -> tuple[dict[str, int], Tensor]:
        """Every caption of this half encoded once, in sorted order (so a resumed run sees the same vectors)."""
        if self._caption_vectors is None:
            from pipelines.text_encoder import TextEncoder

            encoder = TextEncoder.load(self.net.cfg.text_encoder, cache_size=64)  # vectors are kept here
            if encoder.dim != self.net.cfg.text_dim:
                raise BadInput(
                    f"The text encoder gives {encoder.dim}-dimensional vectors; set recipe.net.text_dim to {encoder.dim}."
                )
            texts = sorted({c for r in self.records for c in r["captions"]})
            chunks = [texts[i : i + 64] for i in range(0, len(texts), 64)]
            # float32 and off the step's generator, whichever step first needs them (a resume, say)
            with torch.random.fork_rng(), torch.autocast("cpu", enabled=False), torch.no_grad():
                pooled = [
                    torch.as_tensor(encoder.encode(c).pooled, dtype=torch.float32).clone() for c in chunks
                ]
            self._captions = {text: i for i, text in enumerate(texts)}
            self._caption_vectors = torch.cat(pooled) if pooled else torch.zeros(0, self.net.cfg.text_dim)
        return self._captions, self._caption_vectors

    def views(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Two augmented views of one crop per index: (x1, mask1, x2, mask2), as the net reads them."""
        raise NotImplementedError

    def loss(self, step: int, indices: list[int], modules: dict[str, nn.Module]) -> tuple[Tensor, dict]:
        net = modules["embedder"]
        lookup, vectors = self.caption_vectors()
        records = [self.records[i] for i in indices]
        x1, m1, x2, m2 = self.views(indices)
        picks = [int(torch.randint(len(r["captions"]), ())) if r["captions"] else -1 for r in records]
        rows = torch.tensor([lookup[r["captions"][p]] if p >= 0 else -1 for r, p in zip(records, picks)])
        text = net.text(vectors[rows.clamp(min=0)])
        a1, a2 = net(x1, m1), net(x2, m2)
        scale = net.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        clip = torch.tensor(indices)
        same_clip = clip[:, None] == clip[None]
        captioned = rows >= 0  # a clip without captions has no text positive: it only joins the view term
        same_text = (rows[:, None] == rows[None]) & captioned[:, None] | same_clip
        if captioned.any():
            keep = captioned.nonzero()[:, 0]
            pair = same_text[keep][:, keep]
            text_loss = 0.5 * (
                contrastive_loss(a1[keep], text[keep], pair, scale)
                + contrastive_loss(a2[keep], text[keep], pair, scale)
            )
            accuracy = top1_accuracy(a1[keep], text[keep], pair)
        else:
            text_loss, accuracy = a1.new_zeros(()), a1.new_zeros(())
        view_loss = contrastive_loss(a1, a2, same_clip, scale)
        loss = text_loss + self.config["view_weight"] * view_loss
        return loss, {
            "text_loss": float(text_loss.detach()),
            "view_loss": float(view_loss.detach()),
            "audio_text_top1": float(accuracy),
            "temperature": float(1.0 / scale.detach()),
        }

    def components(self) -> dict[str, Path]:
        return {}

    def export(self, modules_ema: dict[str, nn.Module], out_dir: Path, card: dict | None = None) -> Path:
        from training.codec_recipe import corpus_card

        net = modules_ema["embedder"].float().eval()
        card = {
            **(card or {}),
            "role": self.role,
            "train_half": self.half,
            "half_rule": HALF_RULE,
            "train_clips": len(self.records),
            "data": corpus_card(self.data_dir),
        }
        state = {k: v.detach() for k, v in net.state_dict().items()}
        return save_bundle(
            Path(out_dir),
            net_config(net),
            {"embedder": state},
            components=self.components(),
            dtype=torch.float32,  # small nets; the judge's figures should not move with a storage cast
            kind="embedder",
            card=card,
        )


class SSLEmbedderRecipe(EmbedderRecipe):
    """The SSL embedder (the stage-adaptive recipe's teacher) on codec latents of train half A."""

    name = "ssl-embedder"
    half = "A"
    arch = "latent"
    role = "ssl (teacher of the stage-adaptive recipe; never used to judge)"
    DEFAULTS = {
        "net": {},  # LatentEmbedderConfig overrides; `channels` comes from the latent cache
        "codec": None,  # the codec bundle whose latent cache is read; None: the bundled codec
        "crop_frames": 64,  # ~1.5 s of latent frames
        "shift_frames": 4,  # views start up to 2 * shift_frames frames apart
        "latent_noise": [0.05, 0.2],  # per-view noise std range
        "view_weight": 1.0,
    }

    def __init__(self, config: dict, data_dir: Path):
        super().__init__(config, data_dir)
        from pipelines.codec import default_codec_path

        cfg = self.config
        self.codec_path = Path(cfg["codec"]) if cfg["codec"] else default_codec_path()
        if not (self.codec_path / "model.json").is_file():
            raise BadInput(
                f"No codec bundle at {self.codec_path}; set recipe.codec to a codec bundle folder."
            )
        self.root = self.data_dir / "latents" / bundle_hash(self.codec_path)[:16]
        if not (self.root / "index.json").is_file():
            raise BadInput(
                f"The corpus in {self.data_dir} has no latent cache for the codec {self.codec_path}; make it with "
                f"`soundloom dataset encode {self.data_dir} --model {self.codec_path}`."
            )
        channels = int(json.loads((self.root / "index.json").read_text())["channels"])
        if cfg["net"].get("channels", channels) != channels:
            raise BadInput(
                f"recipe.net.channels must match the codec's {channels} latent channels (or be left out)."
            )
        lo, hi = cfg["latent_noise"]
        if not (0 <= lo <= hi and cfg["crop_frames"] >= 1 and cfg["shift_frames"] >= 0):
            raise BadInput(
                "latent_noise must be [low, high] with 0 <= low <= high; crop_frames >= 1; shift_frames >= 0."
            )
        self.make_net({**cfg["net"], "channels": channels})
        self._latents: dict[int, Tensor] = {}

    def dataset_size(self) -> int:
        missing = [r["id"] for r in self.records if not (self.root / f"{r['id']}.safetensors").is_file()]
        if missing:
            raise BadInput(
                f"{len(missing)} train clips (e.g. {missing[0]}) have no latent in {self.root}; run "
                f"`soundloom dataset encode {self.data_dir} --model {self.codec_path}` first."
            )
        return len(self.records)

    def latent(self, i: int) -> Tensor:
        """Clip i's cached latent [C, T], kept in memory (float16) after its first read."""
        if i not in self._latents:
            from safetensors.torch import load_file

            self._latents[i] = load_file(str(self.root / f"{self.records[i]['id']}.safetensors"))["z"].half()
        return self._latents[i].float()

    def views(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg = self.config
        length, shift = cfg["crop_frames"], cfg["shift_frames"]
        lo, hi = cfg["latent_noise"]
        first, second = [], []
        for i in indices:
            z = self.latent(i)
            last_start = max(z.shape[1] - length, 0)
            anchor = int(float(torch.rand(())) * max(last_start - 2 * shift, 0))
            for out in (first, second):
                start = min(anchor + int(torch.randint(2 * shift + 1, ())), last_start)
                sigma = lo + (hi - lo) * float(torch.rand(()))
                crop = z[:, start : start + length]
                out.append(crop + sigma * torch.randn_like(crop))
        x1, m1 = pad_stack(first)
        x2, m2 = pad_stack(second)
        return x1, m1, x2, m2

    def components(self) -> dict[str, Path]:
        return {"codec": self.codec_path}


class JudgeEmbedderRecipe(EmbedderRecipe):
    """The judge embedder (evaluation only) on log-mel spectrograms of train half B."""

    name = "judge-embedder"
    half = "B"
    arch = "mel"
    role = "judge (evaluation only: Frechet distance, text-audio adherence, diversity)"
    DEFAULTS = {
        "net": {},  # MelEmbedderConfig overrides
        "segment_seconds": 1.5,
        "shift_seconds": 0.05,  # views start up to 2 * shift_seconds apart
        "gain_db": 6.0,  # per-view random gain, +/-
        "noise_db": [-50.0, -30.0],  # per-view white noise level re the crop's RMS
        "view_weight": 1.0,
    }

    def __init__(self, config: dict, data_dir: Path):
        super().__init__(config, data_dir)
        cfg = self.config
        lo, hi = cfg["noise_db"]
        if not (
            lo <= hi and cfg["segment_seconds"] > 0 and cfg["shift_seconds"] >= 0 and cfg["gain_db"] >= 0
        ):
            raise BadInput(
                "noise_db must be [low, high] with low <= high; segment_seconds > 0; shift_seconds and gain_db >= 0."
            )
        self.make_net(cfg["net"])
        self._pool = None
        self._members: list[int] | None = None

    @property
    def pool(self):
        if self._pool is None:
            from training.codec_recipe import AudioPool

            self._pool = AudioPool(self.data_dir, "train")
        return self._pool

    @property
    def members(self) -> list[int]:
        """Pool positions of this half's records, in the order of `records`."""
        if self._members is None:
            position = {clip_id: i for i, clip_id in enumerate(self.pool.ids)}
            self._members = [position[r["id"]] for r in self.records]
        return self._members

    def dataset_size(self) -> int:
        return len(self.members)

    def views(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg = self.config
        rate = self.net.cfg.sample_rate
        length, shift = round(cfg["segment_seconds"] * rate), round(cfg["shift_seconds"] * rate)
        window = round((cfg["segment_seconds"] + 2 * cfg["shift_seconds"]) * 44100)
        lo, hi = cfg["noise_db"]
        first, second = [], []
        for i in indices:
            crop = self.pool.crop(self.members[i], window, float(torch.rand(())))
            wave = mono_wave(Audio(crop, 44100), rate)
            wave = F.pad(wave, (0, max(length + 2 * shift - len(wave), 0)))
            for out in (first, second):
                start = int(torch.randint(2 * shift + 1, ()))
                view = wave[start : start + length]
                gain = 10 ** ((2 * float(torch.rand(())) - 1) * cfg["gain_db"] / 20)
                level = view.square().mean().sqrt() * 10 ** ((lo + (hi - lo) * float(torch.rand(()))) / 20)
                out.append(gain * (view + level * torch.randn_like(view)))
        x1, x2 = (self.net.spectrogram(torch.stack(v)) for v in (first, second))
        mask = torch.ones(x1.shape[0], x1.shape[-1], dtype=torch.bool)
        return x1, mask, x2, mask
