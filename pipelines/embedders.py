"""Audio embedders: audio (and captions) -> L2-normalised vectors in one shared space.

Two of our own, trained contrastively against captions (CLAP-like) by training/embedder_recipe.py:
  - the SSL embedder (`LatentEmbedder`) reads codec LATENTS [C, T], not audio: the stage-adaptive
    recipe uses it as its SSL space and teacher, and measures discrepancies on the DiT's x0 estimates
    with `embed_latents` without decoding them. A 1-D ConvNeXt stack + attention pooling.
  - the judge embedder (`MelEmbedder`) reads log-mel spectrograms of the audio (mono 22.05 kHz, 64
    mels, the rate pipelines/analysis.py measures at): another input and another architecture (a 2-D
    conv net + attention pooling), trained from another seed on a disjoint half of the train split, so
    it shares no blind spots with the teacher. It is used only for evaluation; the teacher never judges.
Both embed captions through a small projection head over the text encoder's pooled vector.

Users' transformers audio models (HuBERT, MERT, CLAP audio) plug in through the same interface with
`TransformersAudioEmbedder`, constructed only when a user asks for one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.audio import Audio, resample, to_channels, validate
from pipelines.codec import ConvNeXtBlock
from pipelines.errors import BadInput

if TYPE_CHECKING:
    from pipelines.codec import Codec
    from pipelines.text_encoder import TextEncoder

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on the learned inverse temperature


@runtime_checkable
class AudioEmbedder(Protocol):
    """What every embedder offers: L2-normalised [N, dim] vectors for clips and for captions."""

    dim: int

    def embed_audio(self, audios: list[Audio]) -> Tensor: ...

    def embed_text(self, prompts: list[str]) -> Tensor: ...


# ---------------------------------------------------------------- shared parts


class AttentionPool(nn.Module):
    """Per-head softmax-weighted mean over time; padded frames get no weight."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0
        self.heads = heads
        self.score = nn.Linear(width, heads)
        self.value = nn.Linear(width, width)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:  # h [B, T, W], mask [B, T] bool -> [B, W]
        b, t, w = h.shape
        scores = self.score(h).float().masked_fill(~mask[..., None], float("-inf"))
        weights = scores.softmax(dim=1).to(h.dtype)  # [B, T, heads]
        values = self.value(h).view(b, t, self.heads, w // self.heads)
        return torch.einsum("bth,bthd->bhd", weights, values).reshape(b, w)


class TextHead(nn.Module):
    """Projects the text encoder's pooled vector into the embedding space."""

    def __init__(self, text_dim: int, width: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(), nn.Linear(width, dim))

    def forward(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.net(pooled).float(), dim=-1)


def full_mask(x: Tensor) -> Tensor:
    """All-real mask [B, T] for a batch [B, ..., T]."""
    return torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)


def mono_wave(audio: Audio, sample_rate: int) -> Tensor:
    """The mono downmix at `sample_rate`, float32 [n]."""
    return torch.from_numpy(resample(to_channels(audio, 1), sample_rate).samples[0])


def pad_stack(items: list[Tensor]) -> tuple[Tensor, Tensor]:
    """[..., T_i] tensors -> zero-padded batch [B, ..., max T] and mask [B, max T] (True = real frame)."""
    longest = max(x.shape[-1] for x in items)
    batch = torch.stack([F.pad(x, (0, longest - x.shape[-1])) for x in items])
    mask = torch.stack([torch.arange(longest) < x.shape[-1] for x in items])
    return batch, mask


# ---------------------------------------------------------------- the SSL embedder: codec latents


@dataclass
class LatentEmbedderConfig:
    channels: int = 32  # codec latent channels
    width: int = 192
    blocks: int = 4
    heads: int = 4
    dim: int = 128
    text_dim: int = 384
    text_encoder: str | None = None  # None: the default all-MiniLM-L6-v2

    def __post_init__(self):
        if self.width % self.heads:
            raise BadInput(
                f"The embedder width ({self.width}) must be a multiple of its heads ({self.heads})."
            )


class LatentEmbedderNet(nn.Module):
    """Latent [B, C, T] -> 1-D ConvNeXt blocks (re-masked after each, so padding never leaks in) -> pool."""

    arch = "latent"

    def __init__(self, cfg: LatentEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Conv1d(cfg.channels, cfg.width, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.width, 1.0 / cfg.blocks) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.width)
        self.pool = AttentionPool(cfg.width, cfg.heads)
        self.out = nn.Linear(cfg.width, cfg.dim)
        self.text = TextHead(cfg.text_dim, cfg.width, cfg.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = full_mask(z) if mask is None else mask
        keep = mask[:, None].to(z.dtype)
        h = self.stem(z * keep) * keep
        for block in self.blocks:
            h = block(h) * keep
        h = self.norm(h.transpose(1, 2))
        return F.normalize(self.out(self.pool(h, mask)).float(), dim=-1)


# ---------------------------------------------------------------- the judge embedder: log-mel


@dataclass
class MelEmbedderConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 64
    base_channels: int = 16  # doubled at each of `stages` 2-D conv stages, which halve the mel axis
    stages: int = 4
    width: int = 192
    heads: int = 4
    dim: int = 128
    text_dim: int = 384
    text_encoder: str | None = None

    def __post_init__(self):
        if self.n_mels % 2**self.stages:
            raise BadInput(f"n_mels ({self.n_mels}) must be divisible by 2 ** stages ({2**self.stages}).")
        if self.width % self.heads:
            raise BadInput(
                f"The embedder width ({self.width}) must be a multiple of its heads ({self.heads})."
            )


@functools.lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 20.0) -> Tensor:
    """Triangular HTK-mel filters [n_mels, bins], each of unit area."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(fmin), mel(sample_rate / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    fb /= np.maximum(fb.sum(axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(wav: Tensor, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> Tensor:
    """Waveform [..., n] -> log-mel [..., n_mels, 1 + n // hop], about -1 (-80 dB) to 1 (0 dB full scale)."""
    lead = wav.shape[:-1]
    window = torch.hann_window(n_fft, device=wav.device)
    # float32 even under a training run's bf16 autocast: the judge must see the same features everywhere
    with torch.autocast(wav.device.type, enabled=False):
        x = wav.reshape(-1, wav.shape[-1]).float()
        spec = torch.stft(x, n_fft, hop, window=window, pad_mode="constant", return_complex=True)
        power = (spec.real.square() + spec.imag.square()) * (
            4.0 / window.sum().square()
        )  # full-scale sine ~ 1
        mel = mel_filters(sample_rate, n_fft, n_mels).to(wav.device) @ power
    db = 10.0 * torch.log10(mel.clamp(min=1e-8))
    return ((db + 40.0) / 40.0).reshape(*lead, n_mels, -1)


class MelEmbedderNet(nn.Module):
    """Log-mel [B, M, T] -> 2-D conv stages (stride 2 on mels only, re-masked) -> temporal conv -> pool."""

    arch = "mel"

    def __init__(self, cfg: MelEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        chans = [1] + [cfg.base_channels * 2**i for i in range(cfg.stages)]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, stride=(2, 1), padding=1) for a, b in zip(chans[:-1], chans[1:])
        )
        flat = chans[-1] * (cfg.n_mels // 2**cfg.stages)
        self.proj = nn.Linear(flat, cfg.width)
        self.temporal = nn.Conv1d(cfg.width, cfg.width, kernel_size=5, padding=4, dilation=2)
        self.norm = nn.LayerNorm(cfg.width)
        self.pool = AttentionPool(cfg.width, cfg.heads)
        self.out = nn.Linear(cfg.width, cfg.dim)
        self.text = TextHead(cfg.text_dim, cfg.width, cfg.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def spectrogram(self, wav: Tensor) -> Tensor:
        """Mono waveform(s) [..., n] at cfg.sample_rate -> the log-mel [..., n_mels, frames] this net reads."""
        cfg = self.cfg
        return log_mel(wav, cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)

    def forward(self, mel: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = full_mask(mel) if mask is None else mask
        keep = mask[:, None, None].to(mel.dtype)
        h = mel[:, None] * keep
        for conv in self.convs:
            h = F.gelu(conv(h)) * keep
        h = self.proj(h.flatten(1, 2).transpose(1, 2)).transpose(1, 2)  # [B, width, T]
        keep = keep[:, 0]
        h = (h + F.gelu(self.temporal(h * keep))) * keep
        h = self.norm(h.transpose(1, 2))
        return F.normalize(self.out(self.pool(h, mask)).float(), dim=-1)


# ---------------------------------------------------------------- inference wrappers


class TrainedEmbedder:
    """What both of our embedders share: a net with a text head, and the text encoder it was trained with."""

    def __init__(self, net: LatentEmbedderNet | MelEmbedderNet, text_encoder: TextEncoder | None = None):
        self.net = net.eval().requires_grad_(False)
        self._text_encoder = text_encoder

    @property
    def dim(self) -> int:
        return self.net.cfg.dim

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            from pipelines.text_encoder import TextEncoder

            self._text_encoder = TextEncoder.load(self.net.cfg.text_encoder)
        return self._text_encoder

    @torch.inference_mode()
    def embed_text(self, prompts: list[str]) -> Tensor:
        """Captions -> L2-normalised [N, dim]."""
        pooled = torch.as_tensor(self.text_encoder.encode(list(prompts)).pooled, dtype=torch.float32)
        return self.net.text(pooled)


class LatentEmbedder(TrainedEmbedder):
    """The SSL embedder: audio is encoded by its codec (the bundle's `codec` component) and embedded as latents."""

    def __init__(
        self, net: LatentEmbedderNet, codec_path: Path | None, text_encoder: TextEncoder | None = None
    ):
        super().__init__(net, text_encoder)
        self.codec_path = codec_path
        self._codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            from pipelines.codec import load_codec

            if self.codec_path is None:
                raise BadInput("This SSL embedder has no codec component, so it can only embed latents.")
            self._codec = load_codec(self.codec_path)
        return self._codec

    def embed_latents(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Codec latents [B, C, T] (mask [B, T], True = real frame) -> [B, dim]; differentiable in z."""
        return self.net(z, mask)

    @torch.inference_mode()
    def embed_audio(self, audios: list[Audio]) -> Tensor:
        """Clips (any rate, any channels, any lengths) -> L2-normalised [N, dim]."""
        if not audios:
            return torch.zeros(0, self.dim)
        for audio in audios:
            validate(audio)
        z, mask = pad_stack([self.codec.encode(audio) for audio in audios])
        return self.net(z, mask)


class MelEmbedder(TrainedEmbedder):
    """The judge embedder: log-mel of the mono 22.05 kHz downmix."""

    def mel(self, audio: Audio) -> Tensor:
        """One clip -> log-mel [n_mels, frames] as the judge sees it."""
        validate(audio)
        return self.net.spectrogram(mono_wave(audio, self.net.cfg.sample_rate))

    @torch.inference_mode()
    def embed_audio(self, audios: list[Audio]) -> Tensor:
        """Clips (any rate, any channels, any lengths) -> L2-normalised [N, dim]."""
        if not audios:
            return torch.zeros(0, self.dim)
        mel, mask = pad_stack([self.mel(audio) for audio in audios])
        return self.net(mel, mask)


ARCHITECTURES = {
    "latent": (LatentEmbedderConfig, LatentEmbedderNet),
    "mel": (MelEmbedderConfig, MelEmbedderNet),
}


def build_net(config: dict) -> LatentEmbedderNet | MelEmbedderNet:
    """The net a bundle config describes: {"arch": "latent" | "mel", **its config's fields}."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise BadInput(
            f"The embedder architecture {arch!r} is not one of {', '.join(ARCHITECTURES)}; re-export the bundle."
        )
    config_cls, net_cls = ARCHITECTURES[arch]
    try:
        return net_cls(config_cls(**config))
    except TypeError as e:
        raise BadInput(
            f"The embedder config does not fit the {arch} architecture ({e}); re-export it."
        ) from None


def net_config(net: LatentEmbedderNet | MelEmbedderNet) -> dict:
    """The bundle config of a net (the inverse of build_net)."""
    return {"arch": net.arch, **asdict(net.cfg)}


def load_embedder(
    path: str | Path, *, text_encoder: TextEncoder | None = None
) -> LatentEmbedder | MelEmbedder:
    """The embedder of a bundle (kind "embedder"); its config's `arch` says which one."""
    from pipelines.bundle import load_bundle

    bundle = load_bundle(path)
    if bundle.kind != "embedder":
        raise BadInput(
            f"The bundle {bundle.path} is a {bundle.kind or 'unknown'} bundle, not an embedder; "
            "pass an embedder bundle."
        )
    net = build_net(bundle.config)
    bundle.load_into("embedder", net)
    if isinstance(net, LatentEmbedderNet):
        codec = bundle.path if "codec" in bundle.meta.get("components", {}) else None
        return LatentEmbedder(net, codec, text_encoder)
    return MelEmbedder(net, text_encoder)


# ---------------------------------------------------------------- users' transformers models


class TransformersAudioEmbedder:
    """A user's transformers audio model (HuBERT, MERT, CLAP audio, ...) by local path or hub id.

    Each clip is fed alone at the feature extractor's rate (mono) and the last hidden state is
    mean-pooled over time; models with `get_audio_features` (CLAP) give their projected embedding.
    Nothing is downloaded: a hub id must already be in the local cache. Weights load from safetensors only.
    """

    def __init__(self, name_or_path: str, *, trust_remote_code: bool = False):
        from transformers import AutoFeatureExtractor, AutoModel

        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(
                name_or_path, local_files_only=True, trust_remote_code=trust_remote_code
            )
            self.model = AutoModel.from_pretrained(
                name_or_path, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code
            ).eval()
        except (OSError, ValueError) as e:
            raise BadInput(
                f"Could not load the audio model '{name_or_path}' ({str(e).splitlines()[0][:120]}); "
                "give a local model folder (with safetensors weights) or a hub id that is already downloaded."
            ) from None
        self.name = name_or_path
        self.sample_rate = int(self.extractor.sampling_rate)
        self.projected = hasattr(self.model, "get_audio_features")
        config = self.model.config
        self.dim = int(config.projection_dim if self.projected else config.hidden_size)

    @torch.inference_mode()
    def embed_audio(self, audios: list[Audio]) -> Tensor:
        """Clips -> L2-normalised [N, dim]."""
        out = []
        for audio in audios:
            validate(audio)
            x = mono_wave(audio, self.sample_rate).numpy()
            inputs = self.extractor(x, sampling_rate=self.sample_rate, return_tensors="pt")
            if self.projected:
                features = self.model.get_audio_features(**inputs)
                v = (features if torch.is_tensor(features) else features.pooler_output)[0]
            else:
                v = self.model(**inputs).last_hidden_state[0].mean(dim=0)
            out.append(F.normalize(v.float(), dim=-1))
        return torch.stack(out)

    def embed_text(self, prompts: list[str]) -> Tensor:
        raise BadInput(f"The audio model '{self.name}' has no text tower, so it cannot embed captions.")
