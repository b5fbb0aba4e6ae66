"""Recipe `arc`: adversarial relativistic-contrastive post-training of a generator bundle into a few-step
generator, run by ping-pong sampling without classifier-free guidance.

    soundloom train --recipe arc --init BUNDLE --data DIR --out RUN --config training/configs/arc.json

G, the generator, is the DiT of BUNDLE (a generator bundle; `dit` here must be its DiT config). At flow
time t it predicts the clean latent x0_hat = x_t - t v(x_t, t, c); t has logSNR uniform in
[g_logsnr_min, g_logsnr_max], and is exactly 1 (pure noise, where every ping-pong run starts) with
probability p_t_one. Known frames of x0_hat are the clip's own, as the sampler's known-frames wrapper
makes them.

D, the discriminator, is a copy of the same DiT cut to its first d_depth_fraction of blocks, whose token
features a light 1-D convolutional head turns into one logit per latent frame; D is trained whole.

Both sides see the clip re-noised to one level s (logSNR uniform in [d_logsnr_min, d_logsnr_max]) with
the SAME noise n: real_s = (1 - s) x0 + s n, fake_s = (1 - s) x0_hat + s n, each with the clip's text,
seconds, controls and known frames.
  - relativistic: delta = D(real_s) - D(fake_s) per frame; G minimises softplus(delta), D minimises
    softplus(-delta), both averaged over the frames G generated (not the known ones);
  - contrastive (D only): the same real_s must score lower under a mismatched prompt than under its
    own, softplus(-(D(real_s, c) - D(real_s, c_mismatched))), over the clip's frames. c_mismatched comes
    from a derangement of the batch (no clip keeps its own caption); pairs whose captions are identical,
    or where either has no text, do not count. Weighted by contrastive_weight (lambda);
  - beat-grid contrastive (D only, grid_contrastive_weight > 0): the same real_s must score lower
    with its beat grid moved by half a beat (`shifted_grid`) than with its own, over the frames where
    the beat control is present. The prompt contrast teaches D what a caption means; this one teaches it
    where the hits of a pulse belong, so G is pushed to put them on the grid it is given;
  - prompt priors (G only): the static recipe's cross-entropy terms of the pitch and tempo priors
    (StaticRecipe.prior_terms, same weights), added to L_G. The priors are heads on the DiT's text
    projection, which the adversarial loss moves; without these terms their picks drift;
  - optional approximate R1/R2 (r_penalty > 0): D's squared response to a small nudge of its real and
    fake inputs, ((D(x + r_sigma e) - D(x)) / r_sigma)^2, which estimates |grad D|^2 without double
    backward.
Steps alternate through the trainer's optimizer groups: d_steps discriminator steps, then g_steps
generator steps (D first: its head starts at zero, so G would learn nothing from it). The trainer's EMA
of G is what the bundle ships; its EMA of D is kept but never used.

Data, text, control and known-frame dropout come from the static recipe (this class extends it), so the
fast model still follows controls and fills known frames. Text is not dropped by default: the exported
model runs without CFG and never needs an unconditional prediction. As there, it trains on the modules'
device and draws every random tensor on the CPU first (the held-out pairs too, built once, then moved).

Metrics (besides the trainer's): loss_g (L_G, without the prior terms), loss_d (L_D), d_real and d_fake
(mean D logits on the generated frames), margin (mean delta), d_step (1 on discriminator steps), and,
from the newest discriminator step, loss_c (L_C), pairs (share of the batch with a valid mismatch),
r_penalty (when on), and with the beat-grid term loss_grid, grid_pairs (share of the batch with a beat
grid) and grid_acc (share of those D scores higher under their own grid; chance 0.5); d_match_acc is
D's prompt-match accuracy on held-out pairs: val clips under their own caption and under another's, at
a fixed noise level; a pair counts as right when the own caption scores higher (a tie counts half, so
chance is 0.5). It is measured every heldout_every steps. The newest figures are
the recipe's state (state_dict), so a resumed run logs exactly what an uninterrupted one does.

The bundled run, training/configs/arc.json (the recipe's own constants are explained at DEFAULTS):
  - dit: rhythm.json's (static.json's plus the rhythm features), the DiT of the base generator bundle
    (~9.8M parameters; D keeps 6 of its 8 blocks plus the head);
  - batch_size 8, steps 2500 (1250 updates each of G and D): measured here with one thread on a busy
    machine, a D step took 1.6 s and a G step 1.2 s at batch 8 (bf16 autocast, 259 frames), a static
    step 0.8 s; with per-step text encoding, held-out checks every 100 steps (~3 s each) and
    checkpoints, 2500 steps should take 45-75 minutes on two idle cores. Read the ETA in status.json
    after ~100 steps and lower --steps if it says more than 85 minutes;
  - lr 1e-4 (a third of the base's: G starts from a trained model), warmup 100, cosine to 1e-5; betas
    (0.5, 0.99): less momentum, as is usual for adversarial training, so each side reacts to the other's
    newest state; grad_clip 1 for both;
  - ema_decay 0.995: the EMA moves only on G steps, so its ~200-update horizon spans the last sixth of
    the run rather than the base's 0.999 (1000 updates, most of the run);
  - log_every 5 (odd, so records alternate between D and G steps), ckpt_every 250, previews every 500
    steps by 8 ping-pong steps without CFG, as the bundle will sample;
  - grid_contrastive_weight 1: on the rhythm base, two runs the same but for this term measured (55 dev
    prompts x 5, text only) tempo within 2% 19% without it and 49% with it (real clips 54%), pitch 83%
    both, judge FD 0.240 and 0.234; D tells a clip's own grid from one moved half a beat within a few
    hundred steps (grid_acc ~1).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.controls import CONTROL_NAMES
from pipelines.dit import RHYTHM_CONTROL_INDEX, DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.samplers import latent_noise, noise_to, time_of_logsnr
from training.recipes import recipe_settings
from training.static_recipe import DEFAULTS as STATIC_DEFAULTS
from training.static_recipe import StaticRecipe, module_device, to_device

GENERATOR, DISCRIMINATOR = "generator", "discriminator"
STATIC_KEYS = (  # the static recipe's settings that ARC uses (its t_mean / t_std sampling is not one)
    "codec",
    "text_encoder",
    "dit",
    "segment_frames",
    "categories",
    "p_drop_text",
    "p_drop_control_group",
    "p_drop_controls",
    "p_known",
    "p_pitch_from_text",  # a pitched DiT keeps the base training's pitch input and hints
    "p_drop_pitch",
    "p_pitch_hint",
    "p_grid_only",  # the fast model keeps following the tempo prior's grid
    # G's prompt priors read the text through the DiT's own text projection, which ARC moves: without their
    # cross-entropy on G steps they drifted (3 dev note prompts the base got right came out a semitone off,
    # every sample: pitch within 50 cents 77% -> 67%)
    "pitch_prior_weight",
    "pitch_prior_captions",
    "tempo_prior_weight",
    "tempo_prior_captions",
    "tempo_caption_pool",
    "preview_steps",
    "preview_guidance",
    "extra_data",
    "data_repeat",
    "time_shift",  # exported with the bundle; ping-pong sampling keeps its own logSNR grid
    "noise_offset",
)
DEFAULTS = {
    **{key: STATIC_DEFAULTS[key] for key in STATIC_KEYS},
    "p_drop_text": 0.0,  # the ARC model runs without CFG, so it never needs an unconditional prediction
    "preview_guidance": 1.0,  # previews sample as the bundle will: 8 ping-pong steps, no CFG
    "d_depth_fraction": 0.75,  # D keeps this share of the base DiT's blocks (at least one)
    "d_head_hidden": 128,  # channels of the head's hidden 1-D convolution
    "d_head_kernel": 3,  # the head's convolutions see this many tokens (2 frames each)
    "g_logsnr_min": -6.0,  # G's times: logSNR uniform in this range, the ping-pong schedule's range
    "g_logsnr_max": 2.0,
    "p_t_one": 0.25,  # ... and t = 1 with this probability: the first step of every ping-pong run
    "d_logsnr_min": -4.0,  # D's re-noising level s: logSNR uniform in this range (t ~ 0.88 .. 0.05), where
    "d_logsnr_max": 6.0,  # content and detail show; at noisier levels real and fake look alike
    "contrastive_weight": 1.0,  # lambda: the contrastive term's weight in D's loss
    "grid_contrastive_weight": 0.0,  # the beat-grid contrastive term's weight in D's loss (0: off)
    "r_penalty": 0.0,  # weight of the approximate R1/R2 penalty (0: off)
    "r_sigma": 0.01,  # the nudge it measures D's response to
    "d_steps": 1,  # per cycle: this many discriminator steps, then
    "g_steps": 1,  # this many generator steps
    "d_lr_scale": 1.0,  # D's lr is the schedule's times this
    "heldout_every": 100,  # measure D's prompt-match accuracy on held-out pairs every this many steps
    "heldout_clips": 64,  # val clips in the held-out set (spread over the val split)
    "heldout_logsnr": 2.0,  # the held-out pairs' noise level (t ~ 0.27)
}
EXPORT_SAMPLER = {"sampler": "pingpong", "steps": 8, "guidance": 1.0}
HELDOUT_SEED = 20250  # the held-out pairs' noise and derangement: fixed, so every measurement is comparable
HELDOUT_CHUNK = 16  # held-out clips per discriminator forward (bounds memory)


# ---------------------------------------------------------------- math


def logsnr_uniform(n: int, low: float, high: float) -> torch.Tensor:
    """n flow times whose logSNR is uniform in [low, high] (from torch's global generator)."""
    return time_of_logsnr(low + (high - low) * torch.rand(n))


def generator_times(n: int, low: float, high: float, p_one: float) -> torch.Tensor:
    """G's times: logSNR-uniform in [low, high], or exactly 1 with probability p_one."""
    one = torch.rand(n) < p_one
    return torch.where(one, torch.ones(n), logsnr_uniform(n, low, high))


def derangement(keys: list, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random permutation with no fixed point (item i is paired with perm[i] != i), and which pairs
    count: those whose keys differ and are both non-empty (an empty key is a clip without text)."""
    n = len(keys)
    assert n >= 2, "a derangement needs at least two items"
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # one cycle through a random order: nobody maps to itself
    valid = torch.tensor(
        [bool(keys[i]) and bool(keys[j]) and keys[i] != keys[j] for i, j in enumerate(perm.tolist())]
    )
    return perm, valid


def text_keys(text: torch.Tensor, text_mask: torch.Tensor) -> list[bytes]:
    """One key per batch row that is equal exactly when two rows carry the same prompt embedding (b"" for
    no text). Each caption is embedded alone, so equal captions give equal keys, and D cannot tell apart
    two captions that give equal ones."""
    return [
        tokens[mask].float().numpy().tobytes() if mask.any() else b""
        for tokens, mask in zip(text.detach().cpu(), text_mask.detach().cpu().bool())
    ]


def weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T] over the frames with weight (0 when the weights are all zero)."""
    return (x * weight).sum() / weight.sum().clamp(min=1e-8)


def relativistic_losses(
    d_real: torch.Tensor, d_fake: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_G, L_D) from per-frame logits [B, T] of real and fake at the same level with the same noise:
    delta = d_real - d_fake, L_G = softplus(delta), L_D = softplus(-delta), weighted means over frames."""
    delta = d_real - d_fake
    return weighted_mean(F.softplus(delta), weight), weighted_mean(F.softplus(-delta), weight)


def contrastive_loss(
    d_own: torch.Tensor, d_mismatched: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """L_C = softplus(-(D(x, c) - D(x, c_mismatched))) over the frames of the valid pairs (0 when none)."""
    return weighted_mean(F.softplus(d_mismatched - d_own), weight * valid[:, None].to(weight.dtype))


def prompt_match_accuracy(
    d_own: torch.Tensor, d_mismatched: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor
) -> float:
    """Share of the valid pairs whose clip scores higher (mean logit over its frames) under its own caption."""
    own, other = ((d * weight).sum(1) / weight.sum(1).clamp(min=1e-8) for d in (d_own, d_mismatched))
    right = (own > other).float() + 0.5 * (own == other).float()
    return float(right[valid].mean()) if valid.any() else float("nan")


def shifted_grid(controls: torch.Tensor, beats_per_bar: int = 4) -> torch.Tensor:
    """Controls [B, 8, T] with the beat grid moved half a beat later: the beat phase's sin-cos pair turned
    by pi, the bar phase's by pi / beats_per_bar (half a beat of the bar). Absent frames stay zero (a
    rotation keeps zeros), and every other control is untouched."""
    beat_sin, beat_cos, bar_sin, bar_cos = RHYTHM_CONTROL_INDEX
    out = controls.clone()
    for s_i, c_i, angle in ((beat_sin, beat_cos, math.pi), (bar_sin, bar_cos, math.pi / beats_per_bar)):
        sin, cos = controls[:, s_i], controls[:, c_i]
        out[:, s_i] = sin * math.cos(angle) + cos * math.sin(angle)
        out[:, c_i] = cos * math.cos(angle) - sin * math.sin(angle)
    return out


def truncated_depth(depth: int, fraction: float) -> int:
    """Blocks the discriminator keeps of a depth-`depth` DiT: floor(fraction * depth), at least one."""
    return max(1, math.floor(fraction * depth + 1e-9))


# ---------------------------------------------------------------- the discriminator


class FrameHead(nn.Module):
    """Token features [B, N, dim] -> one logit per latent frame [B, N * patch]: LayerNorm, then two 1-D
    convolutions along the tokens, the last one zero-initialised so D starts neutral (every logit 0)."""

    def __init__(self, dim: int, patch: int, hidden: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.out = nn.Conv1d(hidden, patch, kernel, padding=kernel // 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        y = self.out(F.gelu(self.conv(self.norm(h).transpose(1, 2))))  # [B, patch, N]
        return y.transpose(1, 2).reshape(b, -1)


class Discriminator(nn.Module):
    """The base DiT's first blocks (a trunk, same inputs as the DiT) and a FrameHead: logits [B, T]."""

    def __init__(self, cfg: DiTConfig, depth: int, head_hidden: int, head_kernel: int):
        super().__init__()
        self.trunk = DiT(replace(cfg, depth=depth))
        del self.trunk.final_layer  # the velocity head is not part of D (hidden_states never uses it)
        self.head = FrameHead(cfg.dim, cfg.patch, head_hidden, head_kernel)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **inputs) -> torch.Tensor:
        """x [B, C, T] at noise level t [B] (with the DiT's keyword inputs) -> logits [B, T] (float32)."""
        return self.head(self.trunk.hidden_states(x, t, **inputs))[:, : x.shape[-1]].float()


def _stack_inputs(rows: list[dict]) -> dict:
    """DiT keyword inputs of several batches concatenated along the batch (every key present in each)."""
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


# ---------------------------------------------------------------- the recipe


class ArcRecipe(StaticRecipe):
    name = "arc"

    def __init__(self, config: dict, data_dir: Path):
        cfg = recipe_settings("arc", config, DEFAULTS)
        super().__init__({key: cfg[key] for key in STATIC_KEYS}, data_dir)
        self.config = cfg
        self._check_settings()
        depth = truncated_depth(self.dit_config.depth, cfg["d_depth_fraction"])
        self.disc = Discriminator(self.dit_config, depth, cfg["d_head_hidden"], cfg["d_head_kernel"])
        self.heldout: list[dict] = []  # val clips for D's prompt-match accuracy (read with the train data)
        self._heldout_batch: dict[str, torch.Tensor] | None = None  # on the device it was last asked for
        # the recipe's state (state_dict): where G came from, and the newest periodic figures
        self.init: dict | None = None
        self.last: dict[str, float] = {}

    def _check_settings(self) -> None:
        cfg = self.config

        def number(name: str) -> bool:
            return isinstance(cfg[name], int | float) and not isinstance(cfg[name], bool)

        def whole(name: str) -> bool:
            return isinstance(cfg[name], int) and not isinstance(cfg[name], bool) and cfg[name] >= 1

        numbers = [k for k, v in DEFAULTS.items() if isinstance(v, float) and k not in STATIC_KEYS]
        for name in numbers:
            if not number(name) or not math.isfinite(cfg[name]):
                raise BadInput(f"The arc setting {name} must be a number (got {cfg[name]!r}).")
        for name in (
            "d_head_hidden",
            "d_head_kernel",
            "d_steps",
            "g_steps",
            "heldout_every",
            "heldout_clips",
        ):
            if not whole(name):
                raise BadInput(
                    f"The arc setting {name} must be a whole number of at least 1 (got {cfg[name]!r})."
                )
        checks = [
            (cfg["g_logsnr_min"] < cfg["g_logsnr_max"], "g_logsnr_min must be below g_logsnr_max"),
            (cfg["d_logsnr_min"] < cfg["d_logsnr_max"], "d_logsnr_min must be below d_logsnr_max"),
            (0.0 <= cfg["p_t_one"] <= 1.0, "p_t_one must be a probability between 0 and 1"),
            (0.0 < cfg["d_depth_fraction"] <= 1.0, "d_depth_fraction must be above 0 and at most 1"),
            (cfg["d_head_kernel"] % 2 == 1, "d_head_kernel must be odd, so each frame's logit is centred"),
            (cfg["contrastive_weight"] >= 0.0, "contrastive_weight must be 0 or more"),
            (cfg["grid_contrastive_weight"] >= 0.0, "grid_contrastive_weight must be 0 or more"),
            (cfg["r_penalty"] >= 0.0, "r_penalty must be 0 or more"),
            (cfg["r_sigma"] > 0.0, "r_sigma must be positive"),
            (cfg["d_lr_scale"] > 0.0, "d_lr_scale must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(f"In the arc settings, {message}.")

    # ---------------------------------------------------------------- data

    def _records(self, split: str) -> list[dict]:
        """The manifest's records of a split, in the categories the run trains on."""
        from training.corpus import read_manifest

        records = read_manifest(self.data_dir, split=split)
        wanted = self.config["categories"]
        if wanted is not None:
            records = [r for r in records if r.get("params", {}).get("category") in set(wanted)]
        return records

    def _read_cache(self) -> list[dict]:
        # checked on the manifest first, so a corpus that cannot work is refused before it is encoded
        if len({tuple(sorted(r["captions"])) for r in self._records("train")}) == 1:
            raise BadInput(
                f"Every train clip in {self.data_dir} has the same captions, so ARC's contrastive term has no "
                "mismatched prompt to learn from; add clips described differently."
            )
        data = super()._read_cache()
        self.heldout = self._read_heldout()
        return data

    def _read_heldout(self) -> list[dict]:
        """Up to heldout_clips val clips with a caption, spread over the val split, with their latents."""
        from training.latent_cache import is_current, latent_root, read_entry

        records = [r for r in self._records("val") if r["captions"]]
        records = records[:: max(1, len(records) // self.config["heldout_clips"])][
            : self.config["heldout_clips"]
        ]
        if len({r["captions"][0] for r in records}) < 2:
            raise BadInput(
                f"The corpus in {self.data_dir} has fewer than two val clips with different captions, so D's "
                "prompt matching cannot be measured on held-out pairs; add more sounds to it."
            )
        root = latent_root(self.data_dir, self.codec)
        clips = []
        for record in records:
            path = root / f"{record['id']}.safetensors"
            if not is_current(path):
                raise BadInput(
                    f"The latent cache in {root} lacks the val clip {record['id']}; run "
                    f"`soundloom dataset encode {self.data_dir}` first."
                )
            clips.append({"caption": record["captions"][0], "z": read_entry(path)["z"]})
        return clips

    def heldout_batch(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The held-out pairs on `device`, built once on the CPU: val clips cropped like training clips and
        noised to heldout_logsnr with fixed noise, their own captions' embeddings and a fixed derangement."""
        if self._heldout_batch is None:
            self.data  # noqa: B018 - reading the train data reads the held-out clips too
            frames = self.config["segment_frames"]
            n = len(self.heldout)
            x0 = self.silence.expand(-1, frames).repeat(n, 1, 1)
            lengths = []
            for i, clip in enumerate(self.heldout):
                m = min(frames, clip["z"].shape[1])
                x0[i, :, :m] = clip["z"][:, :m]
                lengths.append(m)
            g = torch.Generator().manual_seed(HELDOUT_SEED)
            captions = [clip["caption"] for clip in self.heldout]
            perm, valid = derangement(captions, g)
            text, text_mask = self.embed_text(captions)
            level = time_of_logsnr(torch.tensor(float(self.config["heldout_logsnr"])))
            lengths = torch.tensor(lengths)
            self._heldout_batch = {
                "x": noise_to(x0, latent_noise(tuple(x0.shape), g, self.noise_offset), level),
                "t": level.expand(n).clone(),
                "seconds": lengths.float() / self.codec.latent_rate,
                "text": text,
                "text_mask": text_mask,
                "perm": perm,
                "valid": valid,
                "frames": (torch.arange(frames)[None] < lengths[:, None]).float(),
            }
        self._heldout_batch = to_device(self._heldout_batch, device)
        return self._heldout_batch

    @torch.no_grad()
    def prompt_match(self, disc: Discriminator) -> float:
        """D's prompt-match accuracy on the held-out pairs (0.5 is chance)."""
        hb = self.heldout_batch(module_device(disc))
        own, other = [], []
        for start in range(0, hb["x"].shape[0], HELDOUT_CHUNK):
            rows = slice(start, start + HELDOUT_CHUNK)
            b = hb["x"][rows].shape[0]
            inputs = {
                "seconds": hb["seconds"][rows],
                "text": hb["text"][rows],
                "text_mask": hb["text_mask"][rows],
            }
            mismatched = {
                **inputs,
                "text": hb["text"][hb["perm"][rows]],
                "text_mask": hb["text_mask"][hb["perm"][rows]],
            }
            x, t = hb["x"][rows], hb["t"][rows]
            scores = disc(torch.cat([x, x]), torch.cat([t, t]), **_stack_inputs([inputs, mismatched]))
            own.append(scores[:b])
            other.append(scores[b:])
        return prompt_match_accuracy(torch.cat(own), torch.cat(other), hb["valid"], hb["frames"])

    # ---------------------------------------------------------------- recipe protocol

    def modules(self) -> dict[str, nn.Module]:
        return {"dit": self.model, "disc": self.disc}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {GENERATOR: ["dit"], DISCRIMINATOR: ["disc"]}

    def group_for_step(self, step: int) -> str:
        """d_steps discriminator steps, then g_steps generator steps, over and over (step 0 trains D)."""
        cycle = self.config["d_steps"] + self.config["g_steps"]
        return DISCRIMINATOR if step % cycle < self.config["d_steps"] else GENERATOR

    def lr_scale(self, group: str) -> float:
        return float(self.config["d_lr_scale"]) if group == DISCRIMINATOR else 1.0

    def state_dict(self) -> dict:
        return {"init": self.init, "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        self.init = state.get("init")
        self.last = dict(state.get("last") or {})

    def init_from_bundle(self, bundle, modules: dict[str, nn.Module]) -> None:
        """G is the bundle's DiT; D's trunk is its first blocks (D's head keeps its neutral init)."""
        from pipelines.bundle import bundle_hash

        self.check_init_bundle(bundle)
        bundle.load_into("dit", modules["dit"])
        tensors = bundle.tensors("dit")
        trunk = modules["disc"].trunk
        own = trunk.state_dict()
        trunk.load_state_dict({key: tensors[key].to(own[key].dtype) for key in own}, strict=True)
        self.init = {
            "bundle": bundle.path.name,
            "sha256": bundle_hash(bundle.path),
            "recipe": bundle.card.get("recipe"),
            "steps": bundle.card.get("steps"),
        }

    def loss(self, step: int, indices: list[int], modules: dict[str, nn.Module]):
        cfg = self.config
        if len(indices) < 2:
            raise BadInput(
                "ARC's contrastive term scores each clip under another clip's caption, so it needs a batch of "
                "at least 2 clips; raise batch_size."
            )
        if self.init is None:
            raise BadInput(
                "The arc recipe post-trains an existing generator; pass --init with a generator bundle "
                "(exported from --recipe static)."
            )
        gen, disc = modules["dit"], modules["disc"]
        device = module_device(gen)
        group = self.group_for_step(step)
        if step % cfg["heldout_every"] == 0:
            self.last["d_match_acc"] = self.prompt_match(disc)

        # every draw on the CPU, in the order it always had, then moved to the modules' device
        batch = self.batch(indices, device)
        x0, known_mask = batch["x0"], batch["known_mask"]
        b = x0.shape[0]
        inputs = {key: batch[key] for key in ("text", "text_mask", "seconds", "controls", "control_mask")}
        inputs.update(known=x0, known_mask=known_mask)

        t = generator_times(b, cfg["g_logsnr_min"], cfg["g_logsnr_max"], cfg["p_t_one"])[:, None, None]
        t = t.to(device)
        x_t = noise_to(x0, latent_noise(tuple(x0.shape), offset=self.noise_offset).to(device), t)
        with torch.set_grad_enabled(group == GENERATOR):
            x0_hat = x_t - t * gen(x_t, t.flatten(), **inputs)
            fake = known_mask * x0 + (1 - known_mask) * x0_hat  # known frames are given, as when sampling

        s = logsnr_uniform(b, cfg["d_logsnr_min"], cfg["d_logsnr_max"]).to(device)
        noise = latent_noise(tuple(x0.shape), offset=self.noise_offset).to(device)  # the same for both
        real_s, fake_s = noise_to(x0, noise, s[:, None, None]), noise_to(fake, noise, s[:, None, None])
        generated = 1.0 - known_mask[:, 0]  # [B, T]: the frames G made

        info: dict[str, float] = {"d_step": float(group == DISCRIMINATOR)}
        if group == GENERATOR:
            with torch.no_grad():
                d_real = disc(real_s, s, **inputs)
            d_fake = disc(fake_s, s, **inputs)
            loss_g, loss_d = relativistic_losses(d_real, d_fake, generated)
            loss = loss_g + self.prior_terms(gen, batch, info)  # the priors keep reading the moving text path
        else:
            perm, valid = derangement(text_keys(batch["text"], batch["text_mask"]))
            # a clip drawn twice (at an epoch's edge) may carry two of its own captions: not a mismatch
            valid &= torch.tensor(indices) != torch.tensor(indices)[perm]
            perm, valid = perm.to(device), valid.to(device)
            mismatched = {**inputs, "text": batch["text"][perm], "text_mask": batch["text_mask"][perm]}
            xs, rows = [real_s, fake_s, real_s], [inputs, inputs, mismatched]
            grid = cfg["grid_contrastive_weight"] > 0
            if grid:  # the same real clip under its beat grid moved by half a beat
                xs.append(real_s)
                rows.append({**inputs, "controls": shifted_grid(inputs["controls"])})
            if cfg["r_penalty"] > 0:
                nudges = [torch.randn(x0.shape, dtype=x0.dtype).to(device) for _ in range(2)]
                xs += [real_s + cfg["r_sigma"] * nudges[0], fake_s + cfg["r_sigma"] * nudges[1]]
                rows += [inputs, inputs]
            scores = list(disc(torch.cat(xs), s.repeat(len(xs)), **_stack_inputs(rows)).chunk(len(xs)))
            d_real, d_fake, d_mismatched = scores[:3]
            d_shifted = scores.pop(3) if grid else None
            loss_g, loss_d = relativistic_losses(d_real, d_fake, generated)
            seconds_frames = (batch["seconds"] * self.codec.latent_rate).round()
            in_clip = (torch.arange(x0.shape[-1], device=device)[None] < seconds_frames[:, None]).float()
            loss_c = contrastive_loss(d_real, d_mismatched, valid, in_clip)
            loss = loss_d + cfg["contrastive_weight"] * loss_c
            self.last.update(loss_c=float(loss_c.detach()), pairs=float(valid.float().mean()))
            if grid:
                # [B, T]: the frames where the beat grid is given (the batch's control dropout decides)
                beat = inputs["control_mask"][:, CONTROL_NAMES.index("beat_sin")].float()
                on_grid = beat.any(dim=1)
                loss_grid = contrastive_loss(d_real, d_shifted, on_grid, in_clip * beat)
                loss = loss + cfg["grid_contrastive_weight"] * loss_grid
                self.last.update(
                    loss_grid=float(loss_grid.detach()),
                    grid_pairs=float(on_grid.float().mean()),
                    grid_acc=prompt_match_accuracy(
                        d_real.detach(), d_shifted.detach(), on_grid, in_clip * beat
                    ),
                )
            if cfg["r_penalty"] > 0:
                nudged = torch.cat(scores[3:]) - torch.cat([d_real, d_fake])
                penalty = (nudged / cfg["r_sigma"]).square().mean()
                loss = loss + cfg["r_penalty"] * penalty
                self.last["r_penalty"] = float(penalty.detach())
        delta = (d_real - d_fake).detach()
        info.update(
            loss_g=float(loss_g.detach()),
            loss_d=float(loss_d.detach()),
            d_real=float(weighted_mean(d_real.detach(), generated)),
            d_fake=float(weighted_mean(d_fake.detach(), generated)),
            margin=float(weighted_mean(delta, generated)),
            **self.last,
        )
        return loss, info

    # ---------------------------------------------------------------- preview and export

    @torch.no_grad()
    def sample(self, dit: DiT, caption: str, frames: int, steps: int, guidance: float) -> torch.Tensor:
        """A latent [C, frames] for `caption` from noise by ping-pong steps (guidance 1: no CFG); each
        step's fresh noise is drawn on the CPU and moved to the DiT's device (pipelines.samplers)."""
        from pipelines.samplers import pingpong_times, sample_pingpong

        model, x = self.guided(dit, caption, frames, guidance)
        return sample_pingpong(model, x, pingpong_times(steps), noise_offset=self.noise_offset)[0]

    def bundle_config(self) -> dict:
        return {**super().bundle_config(), **EXPORT_SAMPLER}

    def export(self, modules_ema: dict[str, nn.Module], out_dir: Path, card: dict | None = None) -> None:
        """A generator bundle of G's EMA weights that pipelines.generator runs by 8 ping-pong steps."""
        card = {**(card or {}), "base_model": self.init, "discriminator_depth": len(self.disc.trunk.blocks)}
        super().export(modules_ema, out_dir, card=card)
