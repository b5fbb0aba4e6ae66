"""The generator's velocity model: a small diffusion transformer over codec latents.

In the style of facebookresearch/DiT `models.py`. Rectified flow: x_t = (1 - t) x0 + t eps and the
model predicts v = eps - x0. Each latent frame carries, concatenated before patching,
    x (C) | controls * control_mask (K) | control_mask (K) | known * known_mask (C) | known_mask (1)
so per-frame controls and known (extend / repaint) frames are native inputs, each with a presence
mask: a zero mask is "absent", which is also what every optional input defaults to. Pairs of frames
become one token (patch 2, right-padded when T is odd) with a fixed sin-cos position, so any length
works.

Each block is adaLN-Zero modulated attention, then an adaLN-Zero modulated MLP. The attention's
keys are the latent tokens and the text tokens together (self- and cross-attention in one softmax,
one kernel call); the text tokens start with a learned null token that is always attendable, so an
all-False text mask (the unconditional half of CFG) is well defined. The adaLN condition is the sum
of the timestep, seconds and pooled-text embeddings.

Run it under bf16 autocast inside torch.no_grad() (not inference_mode, which defeats autocast's
weight-cast cache), or cast the whole model to bf16 for inference, which is faster still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DiTConfig:
    """Defaults (6.9M parameters) are sized for CPU: 8 CFG steps over 12 s of latent (batch 2 x 259
    tokens) measured 135-280 ms on the dev machine's 2 shared cores with the model cast to bf16, and
    about 30% more under bf16 autocast. Time goes mostly to per-block overhead (elementwise ops, the
    attention kernel), not matmuls, hence few blocks and 2 heads; a 5M-parameter model is barely faster.
    """

    latent_channels: int = 32  # the codec's latent_dim
    patch: int = 2  # latent frames per token
    dim: int = 256
    depth: int = 6
    heads: int = 2  # 128-d heads: the CPU attention kernel's cost grows with the number of heads
    text_dim: int = 384  # the text encoder's dim
    controls: int = 8  # len(pipelines.controls.CONTROL_NAMES)
    mlp_ratio: float = 3.0
    max_seconds: float = 47.0  # seconds_total is embedded as seconds / max_seconds
    # The pitch prior (0: none): a head reading the prompt's tokens gives a distribution over `pitch_classes`
    # semitones (class k is MIDI pitch_low + k) plus "no steady pitch", whose expected embedding joins the
    # adaLN condition. See PromptPrior.
    pitch_classes: int = 0
    pitch_low: int = 24
    # The tempo prior (0: none): the same kind of head gives a distribution over `tempo_classes` whole BPM
    # (class k is tempo_low + k BPM) plus "no steady pulse". It has no input into the DiT's condition:
    # generation turns its pick into the beat-phase control (pipelines.generator.tempo_controls), the
    # per-frame input that training taught the DiT to follow.
    tempo_classes: int = 0
    tempo_low: int = 40
    # The last `x0_channels` latent channels (the codec's measured level, log-f0 and voicing) are predicted
    # as the clean latent x̂0 and returned as the velocity (x - x̂0) / t: a value a control names (the pitch
    # hint) is then an output the network copies, where as a velocity any error is multiplied by 1 / t and
    # the note came out 1-3 semitones off after 1500 steps (the generator issue's go/no-go).
    x0_channels: int = 0
    # Rhythm features (0: none): harmonics k = 1..H of the beat and bar phases (cos k·phase, sin k·phase,
    # each where its control is present), computed from the beat and bar controls. They reach the tokens
    # through their own zero-initialised patch embedding (`rhythm_embedder`), and, with the level channel
    # x0-predicted, a fitted profile of the level over the beat and the bar (`rhythm_skip`) joins that
    # channel's control skip. The controls alone are one sin-cos pair per phase: a smooth function of
    # phase, from which 10,000 steps did not learn to put hits on the beat (onsets on the eighth-note grid
    # 0.33 of the time with the grid given, 0.30 without it, real drum clips 0.77). With H = 6 grown on
    # that model for 2500 more steps (training/configs/rhythm.json): 0.51-0.57 with the grid (90, 123 and
    # 150 BPM), 0.28-0.31 without; text-only tempo within 2% went from 1% to 35% of dev prompts.
    rhythm_harmonics: int = 0

    @property
    def rhythm_features(self) -> int:
        """Feature channels per latent frame the rhythm harmonics make (beat and bar, cos and sin)."""
        return 4 * self.rhythm_harmonics

    @property
    def in_channels(self) -> int:
        """Channels per latent frame after concatenating every input and its mask."""
        return 2 * self.latent_channels + 2 * self.controls + 1


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, D] scaled and shifted per sample by [B, 1, D] vectors."""
    return torch.addcmul(shift, x, 1 + scale)  # one pass over x: elementwise ops cost as much as matmuls here


def sinusoidal_positions(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """[n, dim] fixed sin-cos embedding of token positions 0..n-1 (any n), as DiT's pos_embed."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=device) / (dim // 2))
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimestepEmbedder(nn.Module):
    """A scalar per sample (a flow time, a duration) -> sinusoidal features -> MLP -> [B, dim]."""

    def __init__(self, dim: int, scale: float = 1000.0, frequency_size: int = 256):
        super().__init__()
        self.scale = scale  # maps the scalar's useful range onto ~0..1000, as DiT's integer timesteps
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def sinusoid(t: torch.Tensor, size: int, max_period: float = 10000.0) -> torch.Tensor:
        half = size // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t * self.scale, self.frequency_size).to(self.mlp[0].weight.dtype))


class SecondsEmbedder(nn.Module):
    """seconds_total [B] -> [B, dim]; NaN (or None for the whole batch) means unknown: a learned vector."""

    def __init__(self, dim: int, max_seconds: float):
        super().__init__()
        self.embed = TimestepEmbedder(dim, scale=1000.0 / max_seconds)
        self.unknown = nn.Parameter(torch.zeros(dim))

    def forward(self, seconds: torch.Tensor | None, batch: int) -> torch.Tensor:
        if seconds is None:
            return self.unknown.expand(batch, -1)
        known = ~torch.isnan(seconds)
        emb = self.embed(torch.where(known, seconds, torch.zeros_like(seconds)))
        return torch.where(known[:, None], emb, self.unknown.to(emb.dtype))


class Attention(nn.Module):
    """Multi-head attention of the latent tokens over themselves and the text tokens (keys only).

    One softmax over [text; latent] keys does the work of self- plus cross-attention with one
    kernel call, which on CPU costs about half as much: the fused attention kernel's cost barely
    depends on how few keys it gets, so a separate cross-attention to ~15 text tokens costs as much
    as the self-attention to ~260 latent tokens.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] latent tokens, context [B, L, D] text tokens, mask [B, L + N] True = attend."""
        b, n, d = x.shape
        qkv = self.qkv(torch.cat([context, x], dim=1))  # text rows' queries are computed but unused
        q, k, v = qkv.view(b, -1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q[:, :, -n:], k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero attention (to latent and text tokens), adaLN-Zero MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6)  # text is not modulated by t: it matters at every t
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        # exact GELU: the tanh approximation is several times slower on CPU
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self, x: torch.Tensor, mod: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """mod = self.adaLN_modulation(c), computed by the caller (all blocks at once, in float32)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unsqueeze(1).chunk(6, dim=2)
        h = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), self.norm_context(text), mask)
        x = torch.addcmul(x, gate_msa, h)
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm -> linear back to `patch` latent frames per token."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = mod.unsqueeze(1).chunk(2, dim=2)
        return self.linear(modulate(self.norm(x), shift, scale))


# `pitch` inputs of DiT.forward, per sample: a class 0..pitch_classes-1, or one of these
# The x0-predicted channels are the codec's measured level, log-f0 and voicing (the last ones of these when
# fewer), which the controls measure too: each gets a linear skip from its control (see DiT.control_skip).
SKIP_CONTROLS = ("loudness", "log_f0", "voicing")
SKIP_CONTROL_INDEX = (0, 2, 3)  # their places in pipelines.controls.CONTROL_NAMES (kept torch-only here)
# beat_sin, beat_cos, bar_sin, bar_cos: their places in pipelines.controls.CONTROL_NAMES
RHYTHM_CONTROL_INDEX = (4, 5, 6, 7)
X0_MIN_T = 1e-3  # the x0-predicted channels' velocity (x - x̂0) / t is taken at t >= this
PITCH_NONE = -3  # replaced by the class index pitch_classes: "no steady pitch" (drums, noise, chords)
PITCH_ABSENT = -1  # nothing known about the pitch (the unconditional half of CFG)
PITCH_FROM_TEXT = -2  # the pitch prior's distribution for the prompt (absent where there is no prompt)


class PromptPrior(nn.Module):
    """Prompt tokens -> logits over classes of a clip's property plus "none" (the last class): the pitch
    prior (semitones, "no steady pitch") and the tempo prior (whole BPM, "no steady pulse").

    Attention pooling (a few learned queries) over the projected text tokens, then an MLP. It is trained by
    cross-entropy against the pitch measured on each training clip (pipelines.controls.steady_pitch), so a
    prompt naming a note yields that note's class, and a prompt that names none yields a spread over the
    plausible ones. Why a separate head: the velocity loss carries almost no gradient about a clip's pitch
    (one latent channel of 32), so a DiT trained on a few hundred notes learns pitch-from-text far too slowly
    (1% of dev prompts within 50 cents after 2000 steps), while a classifier on the same frozen MiniLM tokens
    reaches 98% on unseen captions (probe in the generator issue's notes).
    """

    def __init__(self, dim: int, classes: int, queries: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.out = nn.Sequential(nn.Linear(queries * dim, dim), nn.GELU(), nn.Linear(dim, classes))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, D] (the DiT's projected text, null token first), mask [B, L] -> logits [B, classes]."""
        k = self.key(self.norm(tokens))
        scores = torch.einsum("bld,qd->bql", k, self.queries.to(k.dtype)) / math.sqrt(k.shape[-1])
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
        return self.out(torch.einsum("bql,bld->bqd", attn, k).flatten(1)).float()


class DiT(nn.Module):
    """Velocity v(x_t, t | text, seconds, controls, known frames) over latents [B, C, T]."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.x_embedder = nn.Linear(cfg.patch * cfg.in_channels, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.dim)
        self.seconds_embedder = SecondsEmbedder(cfg.dim, cfg.max_seconds)
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.dim))
        self.null_text = nn.Parameter(torch.zeros(1, 1, cfg.dim))  # always attendable
        self.text_pool = nn.Linear(cfg.dim, cfg.dim)  # pooled prompt -> adaLN condition
        if cfg.pitch_classes:
            self.pitch_prior = PromptPrior(cfg.dim, cfg.pitch_classes + 1)
            # classes, then "no steady pitch", then "absent"
            self.pitch_embed = nn.Embedding(cfg.pitch_classes + 2, cfg.dim)
        if cfg.tempo_classes:
            self.tempo_prior = PromptPrior(cfg.dim, cfg.tempo_classes + 1)
        if cfg.x0_channels:
            # x̂0 of measured channel j += present_j * (slope_j * control_j + offset_j): the control that
            # measures the same quantity, joined by a line. The training recipe fits the line on the data
            # before step 0 (StaticRecipe.fit_control_skip): learnt from zero at Adam's step size the slope
            # (~4 per control unit) would take ~10k steps, and until then the DiT ignored its pitch controls
            # (x̂0 moved a quarter-octave for a control an octave up after 1000 steps).
            assert cfg.x0_channels <= len(SKIP_CONTROLS), "x0_channels: at most the level, log-f0 and voicing"
            self.control_skip = nn.Parameter(torch.zeros(cfg.x0_channels, 2))  # [slope, offset] per channel
        if cfg.rhythm_harmonics:
            self.rhythm_embedder = nn.Linear(cfg.patch * cfg.rhythm_features, cfg.dim)
            if cfg.x0_channels == len(SKIP_CONTROLS):  # the level channel is x0-predicted
                # level x̂0 += sum_f rhythm_skip[f] * feature_f: fitted before step 0 (StaticRecipe.fit_rhythm_skip)
                self.rhythm_skip = nn.Parameter(torch.zeros(cfg.rhythm_features))
        self.blocks = nn.ModuleList([DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg.dim, cfg.patch, cfg.latent_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for embedder in (self.t_embedder, self.seconds_embedder.embed):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.null_text, std=0.02)
        if self.cfg.pitch_classes:
            # Pitch is ordinal: class k starts as a sin-cos code of k, so near semitones start near each other,
            # and at the scale of the timestep and text terms of the condition (row norm ~sqrt(dim / 2)).
            # Initialised at std 0.02 instead, the rows never grew (norm 0.35 after 750 steps, against ~9-14
            # for the other terms) and the DiT ignored the pitch input altogether.
            classes, dim = self.cfg.pitch_classes, self.cfg.dim
            with torch.no_grad():
                self.pitch_embed.weight[:classes] = TimestepEmbedder.sinusoid(
                    torch.arange(classes, dtype=torch.float32) * 10.0, dim
                )
                nn.init.normal_(self.pitch_embed.weight[classes:], std=math.sqrt(0.5))
        nn.init.normal_(self.seconds_embedder.unknown, std=0.02)
        # adaLN-Zero: every block starts as the identity, and the output starts at zero velocity
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.cfg.rhythm_harmonics:  # starts as no input: a DiT grown from one without keeps its function
            nn.init.zeros_(self.rhythm_embedder.weight)
            nn.init.zeros_(self.rhythm_embedder.bias)

    def frame_inputs(
        self,
        x: torch.Tensor,
        controls: torch.Tensor | None,
        control_mask: torch.Tensor | None,
        known: torch.Tensor | None,
        known_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """[B, in_channels, T]: every per-frame input next to its presence mask (zeros when absent)."""
        b, _, t = x.shape
        k = self.cfg.controls
        if controls is None or control_mask is None:
            controls, control_mask = x.new_zeros(b, k, t), x.new_zeros(b, k, t)
        if known is None or known_mask is None:
            known, known_mask = torch.zeros_like(x), x.new_zeros(b, 1, t)
        control_mask, known_mask = control_mask.to(x.dtype), known_mask.to(x.dtype)
        return torch.cat([x, controls * control_mask, control_mask, known * known_mask, known_mask], dim=1)

    def text_context(
        self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected text with the null token first: (tokens [B, 1+L, D], mask [B, 1+L], pooled [B, D])."""
        null = self.null_text.expand(batch, -1, -1)
        if text is None:
            tokens = null
            mask = torch.ones(batch, 1, dtype=torch.bool, device=null.device)
        else:
            if text_mask is None:
                text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            tokens = torch.cat([null, self.text_proj(text).to(null.dtype)], dim=1)
            mask = torch.cat([torch.ones_like(text_mask[:, :1]), text_mask.bool()], dim=1)
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * weights).sum(1) / weights.sum(1)
        return tokens, mask, pooled

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        seconds: torch.Tensor | None = None,
        controls: torch.Tensor | None = None,
        control_mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        pitch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, T] noisy latent, t [B] in [0, 1] -> velocity [B, C, T] (float32).

        `pitch` [B] (long; only for a model with a pitch prior): a class, PITCH_NONE, PITCH_ABSENT or
        PITCH_FROM_TEXT; None means PITCH_FROM_TEXT for every sample, which is what generation uses.
        """
        b, c, n_frames = x.shape
        p = self.cfg.patch
        args = (x, t, text, text_mask, seconds, controls, control_mask, known, known_mask, pitch)
        h, final_mod = self._trunk(*args, len(self.blocks), True)
        out = self.final_layer(h, final_mod)  # [B, N, p * C]
        n = h.shape[1]
        out = out.view(b, n, p, c).permute(0, 3, 1, 2).reshape(b, c, n * p)[..., :n_frames].float()
        k = self.cfg.x0_channels
        if k:
            x0_hat = out[:, -k:]
            if controls is not None:
                line, gate = self.skip_term(controls, control_mask)
                x0_hat = gate * line + (1 - gate) * (x0_hat + line)
            tt = t.float().reshape(-1, 1, 1).clamp(min=X0_MIN_T)
            out = torch.cat([out[:, :-k], (x[:, -k:].float() - x0_hat) / tt], dim=1)
        return out

    def skip_term(
        self, controls: torch.Tensor, control_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(line, gate) [B, x0_channels, T]: the control skip's line (zero where its control is absent), and
        where x̂0 is that line alone (1) rather than line + network (0).

        The gate is the log-f0 channel's, on frames where the log-f0 control is present and voiced (the
        voicing control above 1/2, or absent as in the pitch hint): there the latent's log-f0 is the
        control's, by the two channels' definitions (2 cents median apart on the note corpus), so the pitch
        is exact by construction; a network term, however small, put notes 1-5 semitones off after 1500
        steps. Level and voicing are measured differently from their controls, so they keep the network.
        """
        k = self.cfg.x0_channels
        index = list(SKIP_CONTROL_INDEX[-k:])
        values = controls[:, index].float()
        present = torch.ones_like(values) if control_mask is None else control_mask[:, index].float()
        skip = self.control_skip.float()
        gate = torch.zeros_like(values)
        if k >= 2:  # the log-f0 channel is the second to last
            f0, voicing = SKIP_CONTROL_INDEX[1], SKIP_CONTROL_INDEX[2]
            # The log-f0 line is set by the definitions and never learnt: left trainable, it drifted to
            # slope 2.52 for 2.70 in 4500 steps and put every hinted note 50-110 cents off.
            fixed = torch.zeros(k, 1, dtype=torch.bool, device=skip.device)
            fixed[index.index(f0)] = True
            skip = torch.where(fixed, skip.detach(), skip)
            voiced_mask = None if control_mask is None else control_mask[:, voicing].float()
            voiced = (controls[:, voicing].float() > 0.5).float()
            if voiced_mask is not None:
                voiced = voiced_mask * voiced + (1 - voiced_mask)
            f0_present = present[:, index.index(f0)]
            gate[:, index.index(f0)] = f0_present * voiced
        line = present * (skip[:, 0, None] * values + skip[:, 1, None])
        if self.cfg.rhythm_harmonics and k == len(SKIP_CONTROLS):
            profile = torch.einsum(
                "bft,f->bt", rhythm_features(controls, control_mask, self.cfg), self.rhythm_skip.float()
            )
            line = torch.cat([line[:, :1] + profile[:, None], line[:, 1:]], dim=1)  # the level channel
        return line, gate

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay: the control skip's lines are fitted values, not weights."""
        fitted = {"control_skip"} if self.cfg.x0_channels else set()
        return fitted | ({"rhythm_skip"} if hasattr(self, "rhythm_skip") else set())

    def hidden_states(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        seconds: torch.Tensor | None = None,
        controls: torch.Tensor | None = None,
        control_mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        depth: int | None = None,
        pitch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token features [B, ceil(T / patch), dim] after the first `depth` blocks (all when None), as
        `forward` computes them; what a discriminator built on this DiT reads."""
        depth = len(self.blocks) if depth is None else depth
        assert 0 <= depth <= len(self.blocks), f"depth {depth} of a {len(self.blocks)}-block DiT"
        args = (x, t, text, text_mask, seconds, controls, control_mask, known, known_mask, pitch)
        return self._trunk(*args, depth, False)[0]

    def pitch_logits(self, text: torch.Tensor | None, text_mask: torch.Tensor | None) -> torch.Tensor:
        """The pitch prior's logits [B, pitch_classes + 1] for prompts (the last class: no steady pitch)."""
        assert self.cfg.pitch_classes, "this DiT has no pitch prior"
        return self._prior_logits(self.pitch_prior, text, text_mask)

    def tempo_logits(self, text: torch.Tensor | None, text_mask: torch.Tensor | None) -> torch.Tensor:
        """The tempo prior's logits [B, tempo_classes + 1] for prompts (the last class: no steady pulse)."""
        assert self.cfg.tempo_classes, "this DiT has no tempo prior"
        return self._prior_logits(self.tempo_prior, text, text_mask)

    def _prior_logits(
        self, prior: PromptPrior, text: torch.Tensor | None, text_mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch = 1 if text is None else text.shape[0]
        dtype = self.x_embedder.weight.dtype
        context, mask, _ = self.text_context(None if text is None else text.to(dtype), text_mask, batch)
        return prior(context, mask)

    def pitch_condition(
        self, pitch: torch.Tensor | None, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, dim] adaLN term for `pitch` (see forward): a class's embedding, or the prior's expectation."""
        b, classes = context.shape[0], self.cfg.pitch_classes
        if pitch is None:
            pitch = torch.full((b,), PITCH_FROM_TEXT, dtype=torch.long, device=context.device)
        has_text = context_mask[:, 1:].any(dim=1)  # the null token is always there
        index = torch.where(pitch == PITCH_NONE, classes, pitch)
        index = torch.where(
            (pitch == PITCH_ABSENT) | ((pitch == PITCH_FROM_TEXT) & ~has_text), classes + 1, index
        )
        table = self.pitch_embed.weight.float()
        out = table[index.clamp(min=0)]
        prior = (pitch == PITCH_FROM_TEXT) & has_text
        if bool(prior.any()):
            probs = self.pitch_prior(context, context_mask).softmax(dim=-1)  # [B, classes + 1]
            out = torch.where(prior[:, None], probs @ table[: classes + 1], out)
        return out

    def _trunk(
        self, x, t, text, text_mask, seconds, controls, control_mask, known, known_mask, pitch, depth, final
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens after the first `depth` blocks, and the final layer's modulation when `final`."""
        b, c, n_frames = x.shape
        p = self.cfg.patch
        assert c == self.cfg.latent_channels, f"expected {self.cfg.latent_channels} latent channels, got {c}"
        dtype = self.x_embedder.weight.dtype  # float32 (autocast decides) or a model cast to bf16
        h = self.frame_inputs(x, controls, control_mask, known, known_mask).to(dtype)
        h = F.pad(h, (0, (-n_frames) % p))
        n = h.shape[-1] // p
        h = h.view(b, -1, n, p).permute(0, 2, 3, 1).reshape(b, n, p * self.cfg.in_channels)
        h = self.x_embedder(h) + sinusoidal_positions(n, self.cfg.dim, x.device).to(dtype)
        if self.cfg.rhythm_harmonics and controls is not None:
            r = rhythm_features(controls, control_mask, self.cfg).to(dtype)
            r = F.pad(r, (0, (-n_frames) % p)).view(b, -1, n, p).permute(0, 2, 3, 1).reshape(b, n, -1)
            h = h + self.rhythm_embedder(r)

        context, context_mask, pooled = self.text_context(
            None if text is None else text.to(dtype), text_mask, b
        )
        mask = torch.cat([context_mask, context_mask.new_ones(b, n)], dim=1)  # [B, L + N]: text, then latent
        blocks = self.blocks[:depth]
        # The adaLN inputs are [B, dim] matmuls: in float32 they cost less than casting their weights.
        with torch.autocast(x.device.type, enabled=False):
            cond = self.t_embedder(t) + self.seconds_embedder(seconds, b) + self.text_pool(pooled.to(dtype))
            if self.cfg.pitch_classes:
                cond = cond + self.pitch_condition(pitch, context, context_mask).to(cond.dtype)
            mods = [block.adaLN_modulation(cond) for block in blocks]
            final_mod = self.final_layer.adaLN_modulation(cond) if final else None
        for block, mod in zip(blocks, mods):
            h = block(h, mod, context, mask)
        return h, final_mod


def rhythm_features(
    controls: torch.Tensor, control_mask: torch.Tensor | None, cfg: DiTConfig
) -> torch.Tensor:
    """[B, 4H, T] float32: cos and sin of k times the beat phase, then of the bar phase, k = 1..H, each
    zero where its control is absent (the phases are read back from their sin-cos controls)."""
    beat_sin, beat_cos, bar_sin, bar_cos = RHYTHM_CONTROL_INDEX
    c = controls.float()
    feats = []
    for s_i, c_i in ((beat_sin, beat_cos), (bar_sin, bar_cos)):
        phase = torch.atan2(c[:, s_i], c[:, c_i])
        present = torch.ones_like(phase) if control_mask is None else control_mask[:, s_i].float()
        for k in range(1, cfg.rhythm_harmonics + 1):
            feats += [present * torch.cos(k * phase), present * torch.sin(k * phase)]
    return torch.stack(feats, dim=1)


def cat_inputs(a: dict, b: dict) -> dict:
    """Concatenate two DiT keyword-input dicts along the batch (for CFG), filling a missing side as absent."""
    a, b = _explicit_text_mask(a), _explicit_text_mask(b)
    out = {}
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            out[key] = None
            continue
        if va is None or vb is None:
            ref = vb if va is None else va
            # NaN seconds is "unknown", PITCH_ABSENT an absent pitch; zeros (with a zero or False mask) are
            # "absent" for everything else
            if key == "seconds":
                fill = torch.full_like(ref, math.nan)
            elif key == "pitch":
                fill = torch.full_like(ref, PITCH_ABSENT)
            else:
                fill = torch.zeros_like(ref)
            va, vb = (fill, vb) if va is None else (va, fill)
        if key in ("text", "text_mask") and va.shape[1] != vb.shape[1]:
            longest = max(va.shape[1], vb.shape[1])
            va, vb = (_pad_tokens(v, longest) for v in (va, vb))
        out[key] = torch.cat([va, vb], dim=0)
    return out


def _explicit_text_mask(inputs: dict) -> dict:
    """Text without a mask means every token is real; say so, so the other half of a batch can differ."""
    text = inputs.get("text")
    if text is None or inputs.get("text_mask") is not None:
        return inputs
    return {**inputs, "text_mask": torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)}


def _pad_tokens(v: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad text [B, L, D] or a text mask [B, L] to `length` tokens with zeros / False."""
    pad = (0, 0, 0, length - v.shape[1]) if v.dim() == 3 else (0, length - v.shape[1])
    return F.pad(v, pad)
