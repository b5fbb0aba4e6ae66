"""The codec: 44.1 kHz stereo <-> a compact latent the diffusion model works in.

Encoder: log-magnitude STFT of mid and side (n_fft 2048, hop 512) -> ConvNeXt stack -> stride-2 conv
-> `latent_dim` channels at 44100 / 1024 ~= 43.07 Hz (the generator patches by 2 -> ~21.5 tokens/s).
Decoder (Vocos-style): latent -> ConvNeXt stack -> x2 upsample to the STFT frame rate -> ConvNeXt
stack -> per bin log-magnitude and phase for mid and side -> inverse STFT. No transposed-conv
waveform upsampling, so decoding is a few small matmuls per 11.6 ms frame plus one iSTFT: fast on CPU.

Latents are returned normalised per channel by the corpus statistics stored in the bundle
(`latent_mean`, `latent_std`), so the diffusion model sees std ~1 per channel.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.audio import Audio
from pipelines.errors import BadInput
from pipelines.harmonic import harmonic_stft, polar, yin_f0
from pipelines.inference import native_bf16


@dataclass
class CodecConfig:
    sample_rate: int = 44100
    n_fft: int = 2048
    hop: int = 512  # STFT hop; the latent hop is 2 * hop
    latent_dim: int = 32
    enc_dim: int = 192
    enc_blocks: int = 4  # at the STFT frame rate
    dec_dim: int = 256
    dec_blocks: int = 6  # at the STFT frame rate
    latent_blocks: int = 2  # at the latent rate, in both encoder and decoder
    # Harmonic path (0 = off, the first bundled codec). The last two latent channels are then not learned
    # but measured: the YIN log-f0 of the mid channel (held through unvoiced frames) and the voicing. The
    # decoder renders `harmonics` partials of that f0 per mid/side channel exactly into the STFT
    # (pipelines/harmonic.py), with amplitudes it predicts, and sums them with the magnitude/phase head,
    # which keeps noise, drums and whatever else is not one harmonic source. Pitch is thus explicit in the
    # latent: exact through the codec, and one smooth channel for the generator to draw.
    harmonics: int = 0
    # Measured level (False = off): one more latent channel, just before the pitch channels, holds the log
    # level of each frame (mid + side STFT energy). The encoder sees its spectrum divided by that level and
    # the decoder multiplies everything it draws by it, without seeing it: level passes through exactly
    # and the learned channels are level-free. Without it the codec compressed level (measured: a 24 dB
    # input range came out as ~12 dB, loud tones ~11 dB too quiet), and loudness is one channel to draw.
    measured_gain: bool = False

    @property
    def latent_hop(self) -> int:
        return 2 * self.hop

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.latent_hop

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def measured_dim(self) -> int:
        """Latent channels measured, not learned: [gain] then [log-f0, voicing], always the last ones."""
        return (PITCH_CHANNELS if self.harmonics else 0) + (1 if self.measured_gain else 0)

    @property
    def learned_dim(self) -> int:
        """Latent channels the encoder learns (all but the measured ones)."""
        return self.latent_dim - self.measured_dim

    @property
    def gain_channel(self) -> int | None:
        """Index of the measured level channel (None without it)."""
        return self.latent_dim - self.measured_dim if self.measured_gain else None


PITCH_CHANNELS = 2  # log2(f0 / F0_REF_HZ), voicing
F0_REF_HZ = 256.0  # the log-f0 channel's 0
HARMONIC_PEAK = (
    0.5  # the loudest one partial may be (linear amplitude; relative to the frame level with measured_gain)
)
RELATIVE_HARMONIC_PEAK = 2.0  # with measured_gain: a lone sinusoid of amplitude a has frame level a / sqrt 2
GAIN_FLOOR = 1e-5  # frame level of digital silence (-100 dB)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP, residual with a learned layer scale."""

    def __init__(self, dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 3 * dim)
        self.pw2 = nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        h = self.dwconv(x).transpose(1, 2)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


def stack(dim: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ConvNeXtBlock(dim, 1.0 / max(n, 1)) for _ in range(n)])


def mid_side(x: torch.Tensor) -> torch.Tensor:
    """[B, 2, N] left/right -> mid/side (and back: the transform is its own inverse up to a factor 2)."""
    return torch.stack([(x[:, 0] + x[:, 1]) * 0.5, (x[:, 0] - x[:, 1]) * 0.5], dim=1)


def left_right(ms: torch.Tensor) -> torch.Tensor:
    return torch.stack([ms[:, 0] + ms[:, 1], ms[:, 0] - ms[:, 1]], dim=1)


def mid_side_stft(wav: torch.Tensor, cfg: CodecConfig) -> torch.Tensor:
    """Centred Hann STFT of mid and side: [B, 2, N] -> complex [B, 2, bins, N / hop + 1]."""
    b, _, n = wav.shape
    window = torch.hann_window(cfg.n_fft, device=wav.device)
    spec = torch.stft(mid_side(wav).reshape(b * 2, n), cfg.n_fft, cfg.hop, window=window, return_complex=True)
    return spec.reshape(b, 2, cfg.bins, -1)


def pitch_track(wav: torch.Tensor, cfg: CodecConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN f0 and voicing of the mid channel per STFT frame: [B, 2, N] -> ([B, N / hop + 1], same)."""
    return yin_f0(mid_side(wav)[:, 0], n_fft=cfg.n_fft, hop=cfg.hop, sample_rate=cfg.sample_rate)


def hold_voiced(log_f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """Each unvoiced frame takes the previous voiced frame's value (the first voiced one before any);
    a row with no voiced frame becomes 0 (256 Hz). [B, T] -> [B, T]."""
    frames = torch.arange(log_f0.shape[-1], device=log_f0.device).expand_as(log_f0)
    on = voiced > 0.5
    last = torch.where(on, frames, torch.full_like(frames, -1)).cummax(dim=-1).values
    first = (
        torch.where(on, frames, torch.full_like(frames, log_f0.shape[-1])).flip(-1).cummin(-1).values.flip(-1)
    )
    source = torch.where(last >= 0, last, first).clamp(max=log_f0.shape[-1] - 1)
    held = log_f0.gather(-1, source)
    return torch.where(on.any(-1, keepdim=True), held, torch.zeros_like(held))


def pitch_latent(f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """The two pitch channels at the latent rate from an STFT-rate track: [B, T] x2 -> [B, 2, (T - 1) / 2].

    Latent frame j covers STFT frames 2j and 2j + 1 (the encoder's stride-2 conv); log-f0 is their
    voicing-weighted mean, held through unvoiced frames."""
    log_f0 = hold_voiced(torch.log2(f0 / F0_REF_HZ), voiced)[:, :-1]
    v = voiced[:, :-1]
    b, t = log_f0.shape
    log_f0, v = log_f0.reshape(b, t // 2, 2), v.reshape(b, t // 2, 2)
    weight = v + 1e-3
    return torch.stack([(log_f0 * weight).sum(-1) / weight.sum(-1), v.mean(-1)], dim=1)


def channel_frames(z_raw: torch.Tensor, channel: int, frames: int) -> torch.Tensor:
    """One latent channel at the STFT frame rate, linearly interpolated (edges held): [B, C, T] -> [B, frames]."""
    up = F.interpolate(
        z_raw[:, channel].float()[:, None], scale_factor=2, mode="linear", align_corners=False
    )[:, 0]
    return (
        F.pad(up, (0, frames - up.shape[-1]), mode="replicate") if frames > up.shape[-1] else up[:, :frames]
    )


def pitch_frames(z_raw: torch.Tensor, frames: int) -> torch.Tensor:
    """f0 in Hz per STFT frame from a raw latent's log-f0 channel: [B, C, T] -> [B, frames]."""
    return F0_REF_HZ * torch.exp2(
        channel_frames(z_raw, -PITCH_CHANNELS, frames).clamp(-4.0, 4.0)
    )  # 16 Hz .. 4 kHz


def frame_level(spec: torch.Tensor) -> torch.Tensor:
    """Level per STFT frame from a mid/side STFT [B, 2, bins, T] -> [B, T]: the RMS of the frame's
    windowed samples (Parseval), floored at GAIN_FLOOR. A scaled input scales it exactly."""
    n_fft = 2 * (spec.shape[2] - 1)
    power = spec.abs().square()
    energy = 2 * power.sum(dim=(1, 2)) - power[:, :, 0].sum(1) - power[:, :, -1].sum(1)
    return (energy / n_fft**2 * (8 / 3)).sqrt().clamp(min=GAIN_FLOOR)  # 8/3 undoes the Hann window's power


def gain_latent(level: torch.Tensor) -> torch.Tensor:
    """The level channel at the latent rate: log2 of the per-STFT-frame level averaged over each latent
    frame's two STFT frames. [B, T] -> [B, 1, (T - 1) / 2]."""
    log = torch.log2(level)[:, :-1]
    return log.reshape(log.shape[0], -1, 2).mean(-1)[:, None]


def gain_frames(z_raw: torch.Tensor, channel: int, frames: int) -> torch.Tensor:
    """Linear level per STFT frame from a raw latent's level channel (interpolated in log): -> [B, frames]."""
    return torch.exp2(channel_frames(z_raw, channel, frames).clamp(max=4.0))  # at most +24 dBFS


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        extra = PITCH_CHANNELS if cfg.harmonics else 0  # the pitch track helps the learned channels too
        self.inp = nn.Conv1d(2 * cfg.bins + extra, cfg.enc_dim, kernel_size=1)
        self.frames = stack(cfg.enc_dim, cfg.enc_blocks)
        self.down = nn.Conv1d(cfg.enc_dim, cfg.enc_dim, kernel_size=4, stride=2, padding=1)
        self.latent = stack(cfg.enc_dim, cfg.latent_blocks)
        self.norm = nn.LayerNorm(cfg.enc_dim, eps=1e-6)
        self.out = nn.Conv1d(cfg.enc_dim, cfg.learned_dim, kernel_size=1)

    def forward(
        self, wav: torch.Tensor, pitch: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """[B, 2, N] with N a multiple of the latent hop -> raw latent [B, latent_dim, N / latent_hop].

        With the harmonic path the last two channels are the measured pitch (see CodecConfig); `pitch` is
        that track (f0, voicing per STFT frame, as `pitch_track` returns) when the caller already has it.
        """
        spec = mid_side_stft(wav, self.cfg)
        mag = spec.abs()
        if self.cfg.measured_gain:
            level = frame_level(spec)
            mag = mag / level[:, None, None]
        feats = torch.log(mag.clamp(min=1e-5)).flatten(1, 2)
        if self.cfg.harmonics:
            f0, voiced = pitch if pitch is not None else pitch_track(wav, self.cfg)
            track = torch.stack([torch.log2(f0 / F0_REF_HZ) * voiced, voiced], dim=1)
            feats = torch.cat([feats, track.to(feats.dtype)], dim=1)
        h = self.down(self.frames(self.inp(feats)))
        h = self.norm(self.latent(h).transpose(1, 2)).transpose(1, 2)
        z = self.out(h)
        if self.cfg.measured_gain:
            z = torch.cat([z, gain_latent(level).to(z.dtype)], dim=1)
        if self.cfg.harmonics:
            z = torch.cat([z, pitch_latent(f0, voiced).to(z.dtype)], dim=1)
        return z


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Conv1d(cfg.latent_dim, cfg.dec_dim, kernel_size=3, padding=1)
        self.latent = stack(cfg.dec_dim, cfg.latent_blocks)
        self.up = nn.ConvTranspose1d(cfg.dec_dim, cfg.dec_dim, kernel_size=2, stride=2)
        self.frames = stack(cfg.dec_dim, cfg.dec_blocks)
        self.norm = nn.LayerNorm(cfg.dec_dim, eps=1e-6)
        self.head = nn.Linear(cfg.dec_dim, 2 * 2 * cfg.bins)  # (log-magnitude, phase) x (mid, side)
        if cfg.harmonics:
            # per harmonic: mid log-amplitude and side/mid ratio (a per-harmonic pan)
            self.harmonic_head = nn.Linear(cfg.dec_dim, 2 * cfg.harmonics)
            # Start near silence (amplitudes ~1e-4): 64 partials at a stale f0 over a quiet clip would
            # otherwise swamp its spectral convergence (measured: MR-STFT spiking to 43).
            nn.init.normal_(self.harmonic_head.weight, std=0.01)
            start = (
                -6.0 if cfg.measured_gain else -8.0
            )  # relative amplitudes start at ~5e-3 of the frame level
            nn.init.constant_(self.harmonic_head.bias[: cfg.harmonics], start)
            nn.init.zeros_(self.harmonic_head.bias[cfg.harmonics :])

    def trunk(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, C, T] -> hidden frames [B, 2T + 1, dec_dim] (the float-heavy part).

        With measured_gain the trunk sees the level channel's frame-to-frame change, never the level itself,
        so what it draws is level-free (`spectrum` scales it)."""
        channel = self.cfg.gain_channel
        if channel is not None:
            log = z[:, channel]
            step = torch.cat([torch.zeros_like(log[:, :1]), log[:, 1:] - log[:, :-1]], dim=1)
            z = torch.cat([z[:, :channel], step[:, None], z[:, channel + 1 :]], dim=1)
        h = self.up(self.latent(self.inp(z)))
        h = F.pad(h, (0, 1), mode="replicate")  # centred STFT of N samples has N / hop + 1 frames
        return self.norm(self.frames(h).transpose(1, 2))

    def spectrum(self, h: torch.Tensor, z: torch.Tensor) -> Spectrum:
        """Hidden frames (and the raw latent they came from, for its pitch) -> the spectrum's parts, float32."""
        cfg = self.cfg
        b, frames, _ = h.shape
        out = self.head(h.to(self.head.weight.dtype)).float().reshape(b, frames, 2, 2, cfg.bins)
        spec = Spectrum(torch.exp(out[:, :, :, 0].clamp(max=7.0)), out[:, :, :, 1])
        if cfg.measured_gain:
            spec.gain = gain_frames(z, cfg.gain_channel, frames)
            spec.mag = spec.mag * spec.gain[:, :, None, None]
        if cfg.harmonics:
            hv = self.harmonic_head(h.to(self.harmonic_head.weight.dtype)).float()
            spec.f0 = pitch_frames(z, frames)
            # A sigmoid, not a clamped exp: a hard clamp has no gradient, and partials that overshoot early
            # stayed stuck at full level (measured: MR-STFT spiking from 1.4 to 47 by step 280).
            mid = self.harmonic_peak(spec) * torch.sigmoid(hv[..., : cfg.harmonics])
            spec.amps = torch.stack([mid, mid * torch.tanh(hv[..., cfg.harmonics :])], dim=2)
        return spec

    def harmonic_peak(self, spec: Spectrum) -> torch.Tensor | float:
        """The loudest one partial may be: HARMONIC_PEAK, or RELATIVE_HARMONIC_PEAK times the frame level
        ([B, T, 1]) with measured_gain."""
        if spec.gain is None:
            return HARMONIC_PEAK
        return RELATIVE_HARMONIC_PEAK * spec.gain[..., None]

    def complex_spectrum(self, spec: Spectrum) -> torch.Tensor:
        """The decoded STFT of mid and side, complex [B, 2, bins, T]."""
        cfg = self.cfg
        out = polar(spec.mag, spec.phase).permute(0, 2, 3, 1)
        if spec.f0 is not None:
            b, frames = spec.f0.shape
            f0 = spec.f0.repeat_interleave(2, dim=0)
            amps = spec.amps.transpose(1, 2).reshape(2 * b, frames, cfg.harmonics)
            harm = harmonic_stft(f0, amps, n_fft=cfg.n_fft, hop=cfg.hop, sample_rate=cfg.sample_rate)
            out = out + harm.reshape(b, 2, cfg.bins, frames)
        return out

    def synthesize(self, spec: Spectrum) -> torch.Tensor:
        """Decoded spectrum -> waveform [B, 2, (T - 1) * hop], in float32."""
        stft = self.complex_spectrum(spec).transpose(2, 3)  # [B, 2, T, bins]
        return left_right(overlap_add_istft(stft, self.cfg.n_fft, self.cfg.hop))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesize(self.spectrum(self.trunk(z), z))


@dataclass
class Spectrum:
    """What the decoder draws per STFT frame: residual magnitude and phase [B, T, 2 (mid, side), bins], and
    with the harmonic path, f0 [B, T] in Hz (from the latent) and harmonic amplitudes [B, T, 2, harmonics];
    with measured_gain, the frame level [B, T] (from the latent)."""

    mag: torch.Tensor
    phase: torch.Tensor
    f0: torch.Tensor | None = None
    amps: torch.Tensor | None = None
    gain: torch.Tensor | None = (
        None  # level per frame [B, T] (measured_gain), already applied to mag and amps
    )


def overlap_add_istft(spec: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Inverse of a centred, Hann-windowed STFT: spec [..., T, bins] -> [..., (T - 1) * hop].

    Equal to torch.istft(center=True) for hop dividing n_fft, but frames-major and without its
    generic unfold machinery, which dominates decode time on CPU.
    """
    *lead, frames, _ = spec.shape
    window = torch.hann_window(n_fft, device=spec.device)
    chunks = torch.fft.irfft(spec, n=n_fft, dim=-1) * window  # [..., T, n_fft]
    k = n_fft // hop
    chunks = chunks.reshape(*lead, frames, k, hop)
    out = chunks.new_zeros(*lead, frames + k - 1, hop)
    for j in range(k):
        out[..., j : j + frames, :] += chunks[..., j, :]
    wsq = (window**2).reshape(k, hop)
    norm = wsq.new_zeros(frames + k - 1, hop)
    for j in range(k):
        norm[j : j + frames] += wsq[j]
    out = out / norm.clamp(min=1e-8)
    out = out.reshape(*lead, (frames + k - 1) * hop)
    return out[..., n_fft // 2 : n_fft // 2 + (frames - 1) * hop]


class CodecModel(nn.Module):
    """Encoder + decoder with the latent normalisation buffers (identity until measured on a corpus)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))

    def normalise(self, z_raw: torch.Tensor) -> torch.Tensor:
        return (z_raw - self.latent_mean[:, None]) / self.latent_std[:, None]

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std[:, None] + self.latent_mean[:, None]

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.encoder(wav))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.denormalise(z))


def pad_to_hop(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad to a whole number of hops, and to at least two (the centred STFT's reflection needs them)."""
    n = wav.shape[-1]
    target = max(2 * hop, math.ceil(n / hop) * hop)
    return F.pad(wav, (0, target - n))


class Codec:
    """Inference wrapper: Audio in, normalised latent [C, T] out, and back."""

    def __init__(self, model: CodecModel, *, bf16: bool | None = None, bundle_path: Path | None = None):
        """bf16 None: bf16 where this CPU multiplies it natively (pipelines.inference.native_bf16)."""
        self.model = model.eval()
        self.cfg = model.cfg
        self.bf16 = bf16 = native_bf16("cpu") if bf16 is None else bf16
        self.bundle_path = bundle_path
        # A bf16 copy of the decoder: AMX matmuls without autocast re-casting the weights on every call.
        # The head stays float32: it emits phase angles, which bf16 would quantise (0.25 rad steps past 32).
        self.decoder = model.decoder
        if bf16:
            self.decoder = copy.deepcopy(model.decoder).to(torch.bfloat16)
            self.decoder.head.float()
            if model.cfg.harmonics:
                self.decoder.harmonic_head.float()

    @property
    def latent_rate(self) -> float:
        return self.cfg.latent_rate

    @property
    def channels(self) -> int:
        return self.cfg.latent_dim

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def _wav(self, audio: Audio) -> torch.Tensor:
        from pipelines.audio import resample, to_channels

        audio = to_channels(resample(audio, self.cfg.sample_rate), 2)
        return torch.from_numpy(audio.samples).float()[None]

    @torch.inference_mode()
    def encode(self, audio: Audio) -> torch.Tensor:
        """Any Audio -> latent [latent_dim, ceil(n / 1024)] (resampled to 44.1 kHz stereo, zero-padded)."""
        wav = pad_to_hop(self._wav(audio), self.cfg.latent_hop)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            z = self.model.encode(wav)
        return z.float()[0]

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, n_samples: int | None = None) -> Audio:
        """Latent [C, T] (or [B, C, T] -> first item) -> 44.1 kHz stereo Audio of T * 1024 (or n_samples) samples."""
        if z.dim() == 2:
            z = z[None]
        z = self.model.denormalise(z.float())
        h = self.decoder.trunk(z.to(next(self.decoder.parameters()).dtype))
        wav = self.decoder.synthesize(self.decoder.spectrum(h, z))[0]
        if n_samples is not None:
            wav = wav[:, :n_samples]
        return Audio(wav.numpy().astype("float32"), self.cfg.sample_rate)

    def roundtrip(self, audio: Audio) -> Audio:
        n = round(audio.seconds * self.cfg.sample_rate)
        return self.decode(self.encode(audio), n_samples=n)


def default_codec_path() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "codec"


def load_codec(path: str | Path | None = None, *, bf16: bool | None = None) -> Codec:
    """The codec of a bundle folder (a codec bundle, or a model bundle whose `codec` component is one)."""
    from pipelines.bundle import load_bundle

    bundle = load_bundle(Path(path) if path else default_codec_path())
    if bundle.kind != "codec":
        bundle = bundle.component("codec")
    try:
        cfg = CodecConfig(**bundle.config)
    except TypeError as e:
        raise BadInput(
            f"The codec bundle at {bundle.path} has a config this soundloom does not know ({e}); re-export it."
        ) from None
    model = CodecModel(cfg)
    try:
        model.load_state_dict(bundle.tensors("codec"))
    except RuntimeError as e:
        raise BadInput(
            f"The codec bundle at {bundle.path} does not match its config ({str(e).splitlines()[0][:120]}); "
            "rebuild it with `make bundles`."
        ) from None
    return Codec(model, bf16=bf16, bundle_path=bundle.path)
