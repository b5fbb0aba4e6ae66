"""Ping-pong sampling and the `arc` recipe (adversarial relativistic-contrastive post-training) on tiny
models: the schedule, the sampler, the derangement, the discriminator, the loss signs, the method itself
on a 1-D toy (ARC at one step recovers the modes that the base model at one step blurs), and a few-step
run through the trainer that resumes exactly and exports a bundle the generator runs by ping-pong."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_static_recipe import click_train, tiny_codec_bundle, tone
from torch import nn

from pipelines.bundle import load_bundle, save_bundle
from pipelines.controls import CONTROL_NAMES
from pipelines.dit import DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.samplers import (
    known_frames_model,
    logsnr_of,
    measured_hold_model,
    noise_to,
    pingpong_times,
    rf_times,
    sample_euler,
    sample_pingpong,
)
from pipelines.text_encoder import DEFAULT_NAME
from training.arc_recipe import (
    DEFAULTS,
    Discriminator,
    contrastive_loss,
    derangement,
    generator_times,
    logsnr_uniform,
    prompt_match_accuracy,
    relativistic_losses,
    shifted_grid,
    text_keys,
    truncated_depth,
)
from training.latent_cache import encode_corpus

SR = 44100
RATE = SR / 1024
ARC_DIT = {"dim": 32, "depth": 4, "heads": 2, "mlp_ratio": 2.0, "max_seconds": 20.0}
TINY = DiTConfig(latent_channels=8, **ARC_DIT)
METRICS = (
    "loss_g",
    "loss_d",
    "loss_c",
    "pairs",
    "d_real",
    "d_fake",
    "margin",
    "d_match_acc",
    "d_step",
    "r_penalty",
)


def random_dit(seed: int = 0) -> DiT:
    """A tiny DiT with non-zero weights everywhere (adaLN-Zero init would make every velocity 0)."""
    torch.manual_seed(seed)
    dit = DiT(TINY)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit.eval()


def text_inputs(b: int = 2, length: int = 5) -> dict:
    g = torch.Generator().manual_seed(11)
    return {
        "text": torch.randn(b, length, TINY.text_dim, generator=g),
        "text_mask": torch.ones(b, length, dtype=torch.bool),
        "seconds": torch.full((b,), 0.5),
    }


# ---------------------------------------------------------------- the ping-pong schedule and sampler


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_pingpong_times_are_even_in_logsnr_with_pinned_ends(steps):
    times = pingpong_times(steps)
    assert times.shape == (steps + 1,) and times[0] == 1.0 and times[-1] == 0.0
    assert (times.diff() < 0).all()
    inner = logsnr_of(times[1:-1].double())
    expected = torch.linspace(-6.0, 2.0, steps + 1, dtype=torch.float64)[1:-1]
    assert torch.allclose(inner, expected, atol=1e-4)  # the grid between the pinned ends
    other = pingpong_times(4, logsnr_min=-2.0, logsnr_max=6.0)
    assert torch.allclose(logsnr_of(other[1:-1].double()), torch.tensor([0.0, 2.0, 4.0]).double(), atol=1e-4)


@pytest.mark.parametrize("t_start", [0.9, 0.5, 0.1])
def test_pingpong_times_from_an_init_level_start_there_and_keep_falling(t_start):
    times = pingpong_times(4, t_start=t_start)
    assert times[0] == pytest.approx(t_start) and times[-1] == 0.0 and (times.diff() < 0).all()
    spacing = logsnr_of(times[:-1].double()).diff()
    assert torch.allclose(spacing, spacing[:1].expand_as(spacing), atol=1e-4)  # still even in logSNR
    if t_start == 0.5:  # logSNR 0: the grid runs from 0 to 2 in steps of 0.5
        assert torch.allclose(spacing, torch.full_like(spacing, 0.5), atol=1e-4)


def test_pingpong_lands_on_the_clean_estimate_and_calls_back_each_step():
    target = torch.randn(2, 8, 9)
    seen = []

    def model(x, t):  # the exact velocity when all data is `target`
        return (x - target) / t.view(-1, 1, 1)

    out = sample_pingpong(model, torch.randn(2, 8, 9), pingpong_times(4), callback=seen.append)
    assert torch.allclose(out, target, atol=1e-5)
    assert [s["i"] for s in seen] == [0, 1, 2, 3]
    assert [float(s["t"]) for s in seen] == pytest.approx(pingpong_times(4)[:-1].tolist())
    assert all(torch.allclose(s["denoised"], target, atol=1e-5) for s in seen)
    # between steps the state is the estimate noised afresh to the next level, not an Euler step
    x1 = seen[1]["x"]
    assert not torch.allclose(x1, noise_to(target, seen[0]["x"], seen[1]["t"]), atol=1e-3)


def test_pingpong_is_reproducible_from_a_seed():
    dit = random_dit()
    x = torch.randn(2, 8, 9, generator=torch.Generator().manual_seed(1))
    inputs = text_inputs()

    def run(generator):
        return sample_pingpong(dit, x, pingpong_times(4), extra_args=inputs, generator=generator)

    a = run(torch.Generator().manual_seed(5))
    assert torch.equal(a, run(torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, run(torch.Generator().manual_seed(6)), atol=1e-4)
    # one generator per item: each item's fresh noise is its own, whatever else shares the batch
    pair = run([torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    alone = sample_pingpong(
        dit,
        x[1:],
        pingpong_times(4),
        extra_args={k: v[1:] for k, v in inputs.items()},
        generator=[torch.Generator().manual_seed(8)],
    )
    assert torch.allclose(pair[1:], alone, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_pingpong_fresh_noise_is_the_models_offset_noise(offset):
    seen = []

    def model(x, t):  # x0 estimate is 0, so each next state is t_next * fresh noise
        return x / t.view(-1, 1, 1)

    frames = 2000
    sample_pingpong(
        model,
        torch.randn(1, 512, frames),
        pingpong_times(2),
        callback=seen.append,
        generator=torch.Generator().manual_seed(0),
        noise_offset=offset,
    )
    fresh = seen[1]["x"] / seen[1]["t"]
    assert abs(float(fresh.std()) - 1.0) < 0.1
    # the per-channel mean over frames: 1/sqrt(T) for plain noise, offset/sqrt(1+offset^2) with offset noise
    spread = float(fresh.mean(-1).std())
    expected = offset / math.sqrt(1 + offset**2) if offset else 1 / math.sqrt(frames)
    assert expected / 2 < spread < expected * 2


@pytest.mark.parametrize("t_start", [1.0, 0.6])
def test_pingpong_keeps_known_frames_through_the_known_frames_wrapper(t_start):
    dit = random_dit()
    g = torch.Generator().manual_seed(3)
    known = torch.randn(2, 8, 9, generator=g)
    noise = torch.randn(2, 8, 9, generator=g)
    known_mask = torch.zeros(2, 1, 9)
    known_mask[..., :4] = 1  # extend: the first 4 frames are given
    model = known_frames_model(dit, known, known_mask, noise)
    out = sample_pingpong(
        model,
        noise_to(known, noise, t_start),
        pingpong_times(4, t_start=t_start),
        extra_args=text_inputs(),
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.allclose(out[..., :4], known[..., :4], atol=1e-5)
    assert not torch.allclose(out[..., 4:], known[..., 4:], atol=1e-1)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_measured_hold_moves_only_the_last_channels_clean_estimate(weight):
    g = torch.Generator().manual_seed(5)
    source, guess = torch.randn(1, 8, 9, generator=g), torch.randn(1, 8, 9, generator=g)

    def model(x, t):  # a model whose clean estimate is always `guess`
        return (x - guess) / t.view(-1, 1, 1)

    held = measured_hold_model(model, source, 3, weight)
    x, t = torch.randn(1, 8, 9, generator=g), torch.tensor([0.4])
    x0 = x - 0.4 * held(x, t)
    assert torch.allclose(x0[:, :5], guess[:, :5], atol=1e-5)  # the other channels are the model's
    assert torch.allclose(x0[:, 5:], weight * source[:, 5:] + (1 - weight) * guess[:, 5:], atol=1e-5)
    out = sample_pingpong(held, x, pingpong_times(4, t_start=0.4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out[:, 5:], weight * source[:, 5:] + (1 - weight) * guess[:, 5:], atol=1e-5)


def test_pingpong_starts_from_an_init_latent_at_its_level():
    init, noise = torch.randn(1, 8, 9), torch.randn(1, 8, 9)
    calls = []

    def model(x, t):  # a model that believes every clip is `init`
        calls.append((x.clone(), t.clone()))
        return (x - init) / t.view(-1, 1, 1)

    start = noise_to(init, noise, 0.3)
    out = sample_pingpong(
        model, start, pingpong_times(3, t_start=0.3), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(calls[0][0], start) and float(calls[0][1]) == pytest.approx(0.3)
    assert len(calls) == 3 and all(float(t) < 0.3 for _, t in calls[1:])
    assert torch.allclose(out, init, atol=1e-5)


# ---------------------------------------------------------------- the derangement


def test_derangement_has_no_fixed_points_and_skips_identical_or_missing_captions():
    for n in range(2, 12):
        for seed in range(20):
            keys = [f"caption {i}" for i in range(n)]
            before = list(keys)
            perm, valid = derangement(keys, torch.Generator().manual_seed(seed))
            assert sorted(perm.tolist()) == list(range(n))  # a permutation
            assert all(perm[i] != i for i in range(n))  # no clip keeps its own caption
            assert valid.all() and keys == before  # all captions differ; the input is untouched
    keys = ["a cello", "a cello", "rain", "", "rain"]
    before = list(keys)
    for seed in range(50):
        perm, valid = derangement(keys, torch.Generator().manual_seed(seed))
        for i, j in enumerate(perm.tolist()):
            assert i != j
            assert bool(valid[i]) == (keys[i] != keys[j] and keys[i] != "" and keys[j] != "")
    assert keys == before
    with pytest.raises(AssertionError):
        derangement(["alone"])


def test_text_keys_are_equal_exactly_for_equal_prompt_embeddings():
    text = torch.randn(4, 3, 6)
    text[2] = text[0]
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[3] = False  # no text
    keys = text_keys(text, mask)
    assert keys[0] == keys[2] and keys[0] != keys[1] and keys[3] == b""
    mask[2, 2] = False  # the same tokens, one fewer of them: another prompt
    assert text_keys(text, mask)[2] != keys[0]


# ---------------------------------------------------------------- the discriminator and the losses


def test_discriminator_is_the_truncated_dit_plus_a_per_frame_head():
    base = random_dit()
    depth = truncated_depth(TINY.depth, 0.75)
    assert depth == 3 and truncated_depth(8, 0.75) == 6 and truncated_depth(1, 0.75) == 1
    disc = Discriminator(TINY, depth, head_hidden=16, head_kernel=3)
    assert len(disc.trunk.blocks) == 3 and not hasattr(disc.trunk, "final_layer")
    own = disc.trunk.state_dict()
    disc.trunk.load_state_dict({k: base.state_dict()[k] for k in own})
    x, t, inputs = torch.randn(2, 8, 9), torch.tensor([0.3, 0.8]), text_inputs()
    h = disc.trunk.hidden_states(x, t, **inputs)
    assert h.shape == (2, 5, TINY.dim)  # 9 frames in patches of 2
    assert torch.allclose(h, base.hidden_states(x, t, **inputs, depth=3), atol=1e-6)  # a prefix of the base
    logits = disc(x, t, **inputs)
    assert logits.shape == (2, 9) and logits.dtype == torch.float32
    assert torch.equal(logits, torch.zeros(2, 9))  # the head starts neutral
    with torch.no_grad():
        disc.head.out.weight.normal_()
    assert disc(x, t, **inputs).abs().sum() > 0
    # the base DiT's own output is its full-depth features through its final layer, as before
    full = base.hidden_states(x, t, **inputs)
    cond = base.t_embedder(t) + base.seconds_embedder(inputs["seconds"], 2)
    pooled = base.text_context(inputs["text"], inputs["text_mask"], 2)[2]
    out = base.final_layer(full, base.final_layer.adaLN_modulation(cond + base.text_pool(pooled)))
    out = out.view(2, 5, 2, 8).permute(0, 3, 1, 2).reshape(2, 8, 10)[..., :9]
    assert torch.allclose(out, base(x, t, **inputs), atol=1e-5)


def test_relativistic_and_contrastive_losses_have_the_right_signs():
    ones = torch.ones(2, 4)
    high, low = torch.full((2, 4), 3.0), torch.full((2, 4), -3.0)
    loss_g, loss_d = relativistic_losses(high, low, ones)  # D tells real from fake: D content, G not
    assert loss_d < math.log(2) < loss_g
    assert loss_d == pytest.approx(math.log1p(math.exp(-6.0)), rel=1e-5)
    loss_g, loss_d = relativistic_losses(low, high, ones)  # fooled: fake scores above real
    assert loss_g < math.log(2) < loss_d
    tie = relativistic_losses(high, high, ones)
    assert tie[0] == pytest.approx(math.log(2)) and tie[1] == pytest.approx(math.log(2))
    # frames with weight 0 (known frames) count for nothing
    weight = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    skewed = high.clone()
    skewed[:, 2:] = -100.0
    assert relativistic_losses(skewed, low, weight)[1] == pytest.approx(
        float(relativistic_losses(high, low, ones)[1])
    )

    valid = torch.tensor([True, True])
    assert contrastive_loss(high, low, valid, ones) < math.log(2) < contrastive_loss(low, high, valid, ones)
    only_first = torch.tensor([True, False])
    wrong_second = torch.stack([high[0], low[1]])
    assert contrastive_loss(wrong_second, low, only_first, ones) == pytest.approx(
        float(contrastive_loss(high, low, valid, ones))
    )  # an invalid pair (identical captions) is not counted
    assert float(contrastive_loss(high, low, torch.tensor([False, False]), ones)) == 0.0


def test_shifted_grid_moves_the_beat_half_a_beat_and_nothing_else():
    frames = torch.arange(40, dtype=torch.float32)
    beat_phase, bar_phase = (frames / 10) % 1.0, (frames / 40) % 1.0  # a beat is 10 frames, a 4/4 bar 40
    controls = torch.randn(2, len(CONTROL_NAMES), 40)
    index = {name: CONTROL_NAMES.index(name) for name in CONTROL_NAMES}
    for name, phase in (("beat", beat_phase), ("bar", bar_phase)):
        controls[:, index[f"{name}_sin"]] = torch.sin(2 * math.pi * phase)
        controls[:, index[f"{name}_cos"]] = torch.cos(2 * math.pi * phase)
    controls[1, index["beat_sin"] :, 20:] = 0.0  # absent beat and bar in the second half of clip 2
    moved = shifted_grid(controls)

    def phase_of(c, name):
        return torch.atan2(c[:, index[f"{name}_sin"]], c[:, index[f"{name}_cos"]]) / (2 * math.pi) % 1.0

    def wrapped(a, b):  # phase difference in (-0.5, 0.5]
        return (a - b + 0.5) % 1.0 - 0.5

    # five frames later on the beat (half of 10), and five frames of the 40-frame bar: 1/8 of it
    assert torch.allclose(wrapped(phase_of(moved, "beat")[0], beat_phase).abs(), torch.tensor(0.5), atol=1e-5)
    assert torch.allclose(wrapped(phase_of(moved, "bar")[0], bar_phase), torch.tensor(1 / 8), atol=1e-5)
    assert torch.equal(moved[1, index["beat_sin"] :, 20:], torch.zeros(4, 20))  # absent stays absent
    untouched = [index[n] for n in ("loudness", "onset", "log_f0", "voicing")]
    assert torch.equal(moved[:, untouched], controls[:, untouched])


def test_prompt_match_accuracy_counts_right_pairs_and_ties_half():
    own = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [5.0, 5.0]])
    other = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    valid = torch.tensor([True, True, True, False])
    assert prompt_match_accuracy(own, other, valid, torch.ones(4, 2)) == pytest.approx(0.5)  # 1 + 0 + 0.5
    assert (
        prompt_match_accuracy(own, other, torch.tensor([True, False, False, False]), torch.ones(4, 2)) == 1.0
    )


# ---------------------------------------------------------------- the method, shown on a 1-D toy
#
# Data: four narrow Gaussians at -3, -1, 1 and 3 (sigma 0.15). The "prompt" is a label, the sign, so what
# each prompt asks for has two modes: the case few-step sampling gets wrong. At t = 1 a rectified-flow
# model's clean estimate is E[x0 | prompt] = -2 or +2, so one Euler step (and one ping-pong step, the same
# estimate) puts every sample between the modes, where the data has none. ARC post-trains a copy of that
# model with the recipe's own pieces (its time draws, re-noising with the same noise, relativistic and
# contrastive losses, the derangement, D starting as a copy of the base's trunk with a zero head), and one
# ping-pong step of the result lands on the modes. CPU time: about 1 s for the base, 4 s for ARC.

TOY_MODES = torch.tensor([-3.0, -1.0, 1.0, 3.0])
TOY_SIGMA = 0.15
TOY_LABEL_OF_MODE = torch.tensor([0, 0, 1, 1])  # the prompt: the sign
TOY_CAPTIONS = ("below zero", "above zero")  # what the derangement compares (equal captions never pair)
TOY_HIDDEN = 64


def toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws of the mixture as latents [n, 1, 1] (one channel, one frame), and their labels [n]."""
    mode = torch.randint(0, len(TOY_MODES), (n,), generator=g)
    x0 = TOY_MODES[mode] + TOY_SIGMA * torch.randn(n, generator=g)
    return x0[:, None, None], TOY_LABEL_OF_MODE[mode]


class ToyTrunk(nn.Module):
    """(x [B, 1, 1], t [B], label [B]) -> features [B, hidden]: the toy's stand-in for the DiT's blocks."""

    def __init__(self):
        super().__init__()
        self.label = nn.Embedding(2, TOY_HIDDEN)
        self.inp = nn.Linear(9, TOY_HIDDEN)
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.Linear(TOY_HIDDEN, TOY_HIDDEN),
            nn.SiLU(),
            nn.Linear(TOY_HIDDEN, TOY_HIDDEN),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        angles = 3.0 * t[:, None] * torch.arange(1, 5)
        h = self.inp(torch.cat([x.reshape(-1, 1), angles.sin(), angles.cos()], dim=1))
        return self.body(h + self.label(label))


class ToyVelocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = ToyTrunk()
        self.head = nn.Linear(TOY_HIDDEN, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x, t, label)).reshape(x.shape)


class ToyDiscriminator(nn.Module):
    """A copy of the base's trunk and a zero-initialised head: one logit per (one-frame) sample, [B, 1]."""

    def __init__(self, base: ToyVelocity):
        super().__init__()
        self.trunk = copy.deepcopy(base.trunk)
        self.head = nn.Linear(TOY_HIDDEN, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x, t, label))


def train_toy_base(g: torch.Generator, steps: int = 800) -> ToyVelocity:
    """Rectified flow: v(x_t, t, label) regressed on noise - x0, t uniform."""
    model = ToyVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(steps):
        x0, label = toy_batch(256, g)
        t = torch.rand(256, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = (model(noise_to(x0, noise, t[:, None, None]), t, label) - (noise - x0)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def arc_post_train_toy(
    base: ToyVelocity, g: torch.Generator, steps: int = 800, batch: int = 512
) -> tuple[ToyVelocity, ToyDiscriminator]:
    """ARC as training/arc_recipe.py does it, steps alternating D then G; returns (G's EMA, D)."""
    cfg = DEFAULTS
    gen, disc = copy.deepcopy(base), ToyDiscriminator(base)
    ema = copy.deepcopy(gen).requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.99))
    frames = torch.ones(batch, 1)
    for step in range(steps):
        d_step = step % 2 == 0
        x0, label = toy_batch(batch, g)
        t = generator_times(batch, cfg["g_logsnr_min"], cfg["g_logsnr_max"], cfg["p_t_one"])[:, None, None]
        x_t = noise_to(x0, torch.randn(x0.shape, generator=g), t)
        with torch.set_grad_enabled(not d_step):
            x0_hat = x_t - t * gen(x_t, t.flatten(), label)
        s = logsnr_uniform(batch, cfg["d_logsnr_min"], cfg["d_logsnr_max"])
        noise = torch.randn(x0.shape, generator=g)  # the same noise for real and fake
        real_s, fake_s = noise_to(x0, noise, s[:, None, None]), noise_to(x0_hat, noise, s[:, None, None])
        if d_step:
            perm, valid = derangement([TOY_CAPTIONS[k] for k in label], g)
            scores = disc(
                torch.cat([real_s, fake_s, real_s]), s.repeat(3), torch.cat([label, label, label[perm]])
            )
            d_real, d_fake, d_mismatched = scores.chunk(3)
            loss_d = relativistic_losses(d_real, d_fake, frames)[1]
            loss = loss_d + cfg["contrastive_weight"] * contrastive_loss(d_real, d_mismatched, valid, frames)
            opt_d.zero_grad()
            loss.backward()
            opt_d.step()
        else:
            d_real, d_fake = disc(torch.cat([real_s, fake_s]), s.repeat(2), torch.cat([label, label])).chunk(
                2
            )
            loss_g = relativistic_losses(d_real.detach(), d_fake, frames)[0]
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            with torch.no_grad():
                for kept, new in zip(ema.parameters(), gen.parameters()):
                    kept.lerp_(new, 0.02)
    return ema, disc


@torch.no_grad()
def toy_samples(
    model: nn.Module, sampler: str, steps: int, n: int = 2000
) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples [n] from noise (half of each label, fixed seed), and their labels [n]."""
    g = torch.Generator().manual_seed(5)
    label = torch.arange(n) % 2
    x = torch.randn(n, 1, 1, generator=g)

    def velocity(x, t):
        return model(x, t, label)

    if sampler == "pingpong":
        return sample_pingpong(velocity, x, pingpong_times(steps), generator=g).flatten(), label
    return sample_euler(velocity, x, rf_times(steps)).flatten(), label


def near_a_mode(x: torch.Tensor) -> torch.Tensor:
    """[n] bool: within 2 sigma of a mode's centre (95% of real draws are)."""
    return (x[:, None] - TOY_MODES).abs().min(dim=1).values < 2 * TOY_SIGMA


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)  # generator_times and logsnr_uniform draw from torch's global generator
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead
    try:
        base = train_toy_base(g)
        arc, disc = arc_post_train_toy(base, g)
    finally:
        torch.set_num_threads(threads)
    return base, arc, disc


def test_arc_at_one_step_recovers_the_modes_that_the_base_at_one_step_blurs(toy):
    base, arc, disc = toy
    many, label = toy_samples(base, "euler", 32)
    blurred, _ = toy_samples(base, "euler", 1)
    assert torch.allclose(toy_samples(base, "pingpong", 1)[0], blurred, atol=1e-5)  # the same x0 estimate
    recovered, _ = toy_samples(arc, "pingpong", 1)
    mixture_mean = 4.0 * label - 2.0  # -2 for the negative label, +2 for the positive

    def between(x: torch.Tensor) -> float:
        """Share of samples within 0.5 of their prompt's mixture mean: in the gap, 6 sigma from any mode."""
        return float(((x - mixture_mean).abs() < 0.5).float().mean())

    # the base learnt the mixture: with 32 steps most samples find a mode ...
    assert near_a_mode(many).float().mean() > 0.7
    # ... but at one step it blurs them: its samples sit between the modes, at the prompt's mixture mean
    assert near_a_mode(blurred).float().mean() < 0.05
    assert between(blurred) > 0.85
    # ARC at one ping-pong step puts them back on the modes ...
    assert near_a_mode(recovered).float().mean() > 0.8
    assert between(recovered) < 0.15
    # ... on the modes of its own prompt ...
    nearest = (recovered[:, None] - TOY_MODES).abs().argmin(dim=1)
    assert (TOY_LABEL_OF_MODE[nearest] == label).float().mean() > 0.98
    # What it does not do: keep every mode. Here each prompt's samples all land on one of its two modes
    # (shares of -3, -1, 1, 3 measured 0, 0.5, 0, 0.5): the adversarial game rewards realism and the right
    # prompt, and nothing in it rewards covering both modes of one prompt. The real model's CCDS diversity
    # (soundloom eval) is where that cost is measured.

    # the contrastive term taught D which prompt a real sample belongs to (held-out draws; chance is 0.5)
    g = torch.Generator().manual_seed(9)
    x0, own = toy_batch(1000, g)
    perm, valid = derangement([TOY_CAPTIONS[k] for k in own], g)
    level = torch.full((1000,), 0.27)  # logSNR ~ 2, as the recipe's held-out pairs
    x = noise_to(x0, torch.randn(x0.shape, generator=g), level[:, None, None])
    with torch.no_grad():
        accuracy = prompt_match_accuracy(
            disc(x, level, own), disc(x, level, own[perm]), valid, torch.ones(1000, 1)
        )
    assert accuracy > 0.9


# ---------------------------------------------------------------- the recipe through the trainer

CLIPS = [  # (name, audio, captions, split)
    ("low", lambda: tone(220.0, 0.8), ["a low tone", "a dull hum"], "train"),
    ("mid", lambda: tone(440.0, 0.6), ["a tone at A4"], "train"),
    ("high", lambda: tone(880.0, 0.7), ["a high beep"], "train"),
    ("clicks", lambda: click_train(120.0, 1.0), ["clicks at 120 BPM"], "train"),
    ("fast", lambda: click_train(240.0, 0.7), ["fast clicks"], "train"),
    ("v1", lambda: tone(330.0, 0.5), ["a tone for validation"], "val"),
    ("v2", lambda: click_train(90.0, 0.7), ["slow clicks for validation"], "val"),
    ("v3", lambda: tone(660.0, 0.4), ["a bright validation beep"], "val"),
]


def write_corpus(root: Path, clips=CLIPS) -> Path:
    (root / "audio").mkdir(parents=True)
    lines = []
    for name, make, captions, split in clips:
        x = make()
        sf.write(root / "audio" / f"{name}.flac", np.stack([x, x], 1).astype(np.float32), SR)
        record = {
            "id": name,
            "path": f"audio/{name}.flac",
            "captions": captions,
            "seconds": len(x) / SR,
            "split": split,
            "params": {"beats_s": [], "bars_s": []},
        }
        lines.append(json.dumps(record))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def base_generator_bundle(path: Path, codec: Path) -> Path:
    """A generator bundle as --recipe static exports one, with a random (non-zero) tiny DiT."""
    dit = random_dit(seed=1)
    config = {
        "dit": asdict(TINY),
        "latent_rate": RATE,
        "latent_channels": 8,
        "sample_rate": SR,
        "text_encoder": DEFAULT_NAME,
        "controls": list(CONTROL_NAMES),
        "segment_frames": 24,
        "sampler": "euler",
        "steps": 50,
        "guidance": 4.0,
    }
    card = {"recipe": "static", "steps": 0}
    return save_bundle(
        path, config, {"dit": dit.state_dict()}, components={"codec": codec}, kind="generator", card=card
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("arc")
    codec = tiny_codec_bundle(root / "codec")
    data = write_corpus(root / "corpus")
    encode_corpus(data, codec, progress=False)
    return {"root": root, "codec": codec, "data": data, "base": base_generator_bundle(root / "base", codec)}


def arc_config(tmp: Path, codec: Path, steps: int, recipe: dict | None = None, **settings) -> Path:
    config = {
        "steps": steps,
        "batch_size": 4,
        "lr": 2e-3,
        "warmup_steps": 0,
        "lr_schedule": "constant",  # a shorter first leg must see the same lr as the whole run
        "ema_decay": 0.9,
        "ckpt_every": 3,
        "log_every": 1,
        "keep_checkpoints": 10,
        "threads": 1,
        "recipe": {
            "codec": str(codec),
            "segment_frames": 24,
            "dit": ARC_DIT,
            "d_head_hidden": 16,
            "heldout_every": 2,
            "heldout_clips": 3,
            "r_penalty": 0.01,
            **(recipe or {}),
        },
        **settings,
    }
    path = tmp / "arc.json"
    path.write_text(json.dumps(config))
    return path


def records(run: Path) -> list[dict]:
    from training.jsonl import read_jsonl

    return read_jsonl(run / "metrics.jsonl", tolerate_torn_tail=False)


@pytest.fixture(scope="module")
def straight_run(setup, tmp_path_factory) -> Path:
    """Six steps of arc from the base bundle, uninterrupted."""
    from training.trainer import train

    tmp = tmp_path_factory.mktemp("straight")
    config = arc_config(tmp, setup["codec"], 6)
    train("arc", setup["data"], tmp / "run", config_path=config, init_bundle=setup["base"], progress=False)
    return tmp / "run"


def test_arc_run_logs_every_metric_and_moves_g_from_the_base(setup, straight_run):
    rows = records(straight_run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert set(METRICS) <= r.keys(), set(METRICS) - r.keys()
        assert all(math.isfinite(r[k]) for k in METRICS)
    assert [r["d_step"] for r in rows] == [1.0, 0.0] * 3  # D, G, D, G, ...
    assert all(0.0 <= r["d_match_acc"] <= 1.0 and 0.0 < r["pairs"] <= 1.0 for r in rows)
    assert rows[0]["d_real"] == rows[0]["d_fake"] == 0.0  # D's head starts neutral
    assert any(abs(r["margin"]) > 0 for r in rows[1:])  # and learns to tell them apart
    final = load_file(straight_run / "checkpoints" / "step_00000006" / "modules.safetensors")
    base = load_bundle(setup["base"]).tensors("dit")
    assert any(not torch.equal(final[f"dit.{k}"], t) for k, t in base.items())  # G moved
    state = json.loads((straight_run / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["recipe_state"]["init"]["sha256"] and set(state["optimizer"]["groups"]) == {
        "generator",
        "discriminator",
    }


def test_arc_resumes_exactly_after_a_crash(setup, straight_run, tmp_path):
    from training.trainer import train

    config = arc_config(tmp_path, setup["codec"], 6)
    run = tmp_path / "crashed"

    def crash_after_step_4(record):
        if record["step"] == 4:
            raise KeyboardInterrupt  # the newest checkpoint is step 3

    with pytest.raises(KeyboardInterrupt):
        train(
            "arc",
            setup["data"],
            run,
            config_path=config,
            init_bundle=setup["base"],
            progress=False,
            on_metrics=crash_after_step_4,
        )
    resumed = train("arc", setup["data"], run, config_path=config, resume=True, progress=False)
    want = straight_run / "checkpoints" / "step_00000006"
    for file in ("modules", "ema", "optimizer"):
        a, b = load_file(want / f"{file}.safetensors"), load_file(resumed / f"{file}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    assert records(run) == [
        {**r, "time": g["time"], "elapsed_s": g["elapsed_s"]}
        for r, g in zip(records(straight_run), records(run))
    ]


def test_arc_exports_a_pingpong_bundle_the_generator_runs(setup, straight_run, tmp_path):
    from pipelines.generator import load_generator
    from training.trainer import export_run

    bundle = load_bundle(export_run(straight_run, tmp_path / "fast"))
    assert bundle.kind == "generator" and bundle.files == ["dit"]
    assert {k: bundle.config[k] for k in ("sampler", "steps", "guidance")} == {
        "sampler": "pingpong",
        "steps": 8,
        "guidance": 1.0,
    }
    assert bundle.card["recipe"] == "arc" and bundle.card["base_model"]["bundle"] == "base"
    gen = load_generator(bundle.path)
    audio = gen.generate("a low tone", seconds=1.5, seed=3)
    assert audio.sample_rate == SR and audio.samples.shape == (2, round(1.5 * SR))
    assert np.isfinite(audio.samples).all() and gen.last_settings.sampler == "pingpong"
    assert np.array_equal(gen.generate("a low tone", seconds=1.5, seed=3).samples, audio.samples)
    assert not np.allclose(gen.generate("a low tone", seconds=1.5, seed=4).samples, audio.samples)
    twins = gen.generate_variations("a low tone", variations=2, seconds=1.5, seed=3)
    np.testing.assert_allclose(twins[0].samples, audio.samples, atol=1e-4)  # variation i is seed + i alone
    # an ARC model is not blended with its start (bundle export --keep-change): one sentence, nothing written
    with pytest.raises(BadInput, match="not for runs of --recipe arc"):
        export_run(straight_run, tmp_path / "blend", keep_change=0.5)
    assert not (tmp_path / "blend").exists()


def tiny_arc(setup: dict, **settings):
    """An ArcRecipe on the test corpus with the tiny DiT (settings override the recipe's)."""
    from training.arc_recipe import ArcRecipe

    base = {"codec": str(setup["codec"]), "segment_frames": 24, "dit": ARC_DIT, "heldout_clips": 3}
    return ArcRecipe({**base, **settings}, setup["data"])


def test_arc_loss_leaves_the_batch_untouched(setup):
    recipe = tiny_arc(setup)
    recipe.init_from_bundle(load_bundle(setup["base"]), recipe.modules())
    kept = {}
    make_batch = recipe.batch

    def spy(indices, *args):
        batch = make_batch(indices, *args)
        kept.update({k: v.clone() for k, v in batch.items()})
        kept["live"] = batch
        return batch

    recipe.batch = spy
    for step in (0, 1):  # a discriminator step (with the derangement), then a generator step
        torch.manual_seed(step)
        loss, info = recipe.loss(step, [0, 1, 2, 3], recipe.modules())
        assert torch.isfinite(loss)
        for key, value in kept["live"].items():
            assert torch.equal(value, kept[key]), key


def test_arc_grid_term_scores_the_real_clip_under_a_moved_grid(setup):
    recipe = tiny_arc(setup, grid_contrastive_weight=1.0, p_drop_controls=0.0, p_drop_control_group=0.0)
    recipe.init_from_bundle(load_bundle(setup["base"]), recipe.modules())
    modules = recipe.modules()
    beat, bar = CONTROL_NAMES.index("beat_sin"), CONTROL_NAMES.index("bar_sin")
    for i in (0, 2):  # the test corpus has no pulse: give two clips a beat grid of 6 frames, bars of 4
        clip = recipe.data[i]
        n = clip["controls"].shape[-1]
        phase = torch.arange(n, dtype=torch.float32) / 6
        for index, period in ((beat, 1.0), (bar, 4.0)):
            clip["controls"][index] = torch.sin(2 * math.pi * phase / period)
            clip["controls"][index + 1] = torch.cos(2 * math.pi * phase / period)
            clip["present"][index : index + 2] = True
    torch.manual_seed(0)
    loss, info = recipe.loss(0, [0, 1, 2, 3], modules)  # a discriminator step
    assert torch.isfinite(loss) and math.isfinite(info["loss_grid"])
    assert info["grid_pairs"] == 0.5 and 0.0 <= info["grid_acc"] <= 1.0  # clips 0 and 2 of 4
    assert info["loss_grid"] > 0  # softplus over the clips with a grid: never 0 where there are some


def test_arc_trains_a_pitched_dit_with_the_base_trainings_pitch_settings(setup):
    dit = {**ARC_DIT, "pitch_classes": 12, "pitch_low": 48, "tempo_classes": 10}
    recipe = tiny_arc(setup, dit=dit, p_pitch_hint=0.5)
    assert recipe.config["p_pitch_from_text"] == 0.5 and recipe.config["p_pitch_hint"] == 0.5
    recipe.init = {"bundle": "random weights"}  # no pitched base bundle here: G and D keep their init
    modules = recipe.modules()
    gen = modules["dit"]
    for step in (0, 1):  # a discriminator step, then a generator step
        torch.manual_seed(step)
        gen.zero_grad()
        loss, info = recipe.loss(step, [0, 1, 2, 3], modules)
        assert torch.isfinite(loss)
        loss.backward()
        # G steps keep training the prompt priors (they read the text projection that ARC moves)
        prior_grads = [p.grad for p in [*gen.pitch_prior.parameters(), *gen.tempo_prior.parameters()]]
        if step == 1:
            assert math.isfinite(info["loss_pitch_prior"]) and math.isfinite(info["loss_tempo_prior"])
            assert all(g is not None and g.abs().sum() > 0 for g in prior_grads)
            assert loss.item() > info["loss_g"]  # L_G plus the priors' cross-entropy
        else:
            assert "loss_pitch_prior" not in info and all(g is None for g in prior_grads)


def test_arc_says_why_it_cannot_run(setup, tmp_path):
    from training.arc_recipe import ArcRecipe
    from training.trainer import train

    base = {"codec": str(setup["codec"]), "segment_frames": 24, "dit": ARC_DIT, "heldout_clips": 3}
    config = arc_config(tmp_path, setup["codec"], 2)

    def one_sentence(caught):
        message = str(caught.value)
        assert message.endswith(".") and ". " not in message.rstrip("."), message

    with pytest.raises(BadInput, match="batch of at least 2 clips") as caught:
        train(
            "arc",
            setup["data"],
            tmp_path / "a",
            config_path=config,
            init_bundle=setup["base"],
            overrides={"batch_size": 1},
            progress=False,
        )
    one_sentence(caught)
    with pytest.raises(BadInput, match="pass --init") as caught:
        train("arc", setup["data"], tmp_path / "b", config_path=config, progress=False)
    one_sentence(caught)
    with pytest.raises(BadInput, match="is a codec bundle") as caught:
        train(
            "arc",
            setup["data"],
            tmp_path / "c",
            config_path=config,
            init_bundle=setup["codec"],
            progress=False,
        )
    one_sentence(caught)
    with pytest.raises(BadInput, match="has a DiT with dim 32 but this arc run is set to 48") as caught:
        train(
            "arc",
            setup["data"],
            tmp_path / "d",
            config_path=config,
            init_bundle=setup["base"],
            overrides={"recipe": {"dit": {**ARC_DIT, "dim": 48}}},
            progress=False,
        )
    one_sentence(caught)
    with pytest.raises(BadInput, match="set recipe.noise_offset to") as caught:
        train(
            "arc",
            setup["data"],
            tmp_path / "e",
            config_path=config,
            init_bundle=setup["base"],
            overrides={"recipe": {"noise_offset": 0.5}},
            progress=False,
        )
    one_sentence(caught)
    with pytest.raises(BadInput, match="p_t_one must be a probability"):
        ArcRecipe({**base, "p_t_one": 2.0}, setup["data"])
    with pytest.raises(BadInput, match="Unknown arc recipe setting 't_mean'"):
        ArcRecipe({**base, "t_mean": 0.0}, setup["data"])

    same = [(name, make, ["the same sound"], split) for name, make, _, split in CLIPS]
    data = write_corpus(tmp_path / "same", same)
    with pytest.raises(BadInput, match="contrastive term has no mismatched prompt") as caught:
        ArcRecipe(base, data).dataset_size()
    one_sentence(caught)


def test_arc_preview_samples_by_pingpong_without_cfg(setup, tmp_path, monkeypatch):
    from pipelines import samplers
    from training.arc_recipe import ArcRecipe

    recipe = ArcRecipe(
        {"codec": str(setup["codec"]), "segment_frames": 20, "dit": ARC_DIT, "heldout_clips": 3},
        setup["data"],
    )
    used = []
    pingpong = samplers.sample_pingpong

    def spy(model, x, times, **kwargs):
        used.append(times)
        return pingpong(model, x, times, **kwargs)

    monkeypatch.setattr(samplers, "sample_pingpong", spy)
    torch.manual_seed(0)
    recipe.preview(4, {"dit": random_dit(), "disc": recipe.disc}, tmp_path / "preview")
    wav, sr = sf.read(tmp_path / "preview" / "step00000004_val0.wav", always_2d=True)
    assert sr == SR and wav.shape == (20 * 1024, 2) and np.isfinite(wav).all()
    assert len(used) == 1 and torch.equal(used[0], pingpong_times(8))


def test_the_bundled_arc_config_fits_the_bundled_base_model():
    from training.arc_recipe import DEFAULTS
    from training.recipes import recipe_settings
    from training.trainer import TrainConfig

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    arc = json.loads((configs / "arc.json").read_text())
    config = TrainConfig.from_dict(arc)
    settings = recipe_settings("arc", config.recipe, DEFAULTS)
    assert set(settings) == set(config.recipe)  # every constant is set explicitly in the file
    # the base is the rhythm stage: static.json's DiT with its rhythm features grown (rhythm.json)
    assert settings["dit"] == json.loads((configs / "rhythm.json").read_text())["recipe"]["dit"]
    assert config.batch_size >= 2 and config.log_every % 2 == 1


def test_cli_says_in_one_line_why_an_arc_run_cannot_work(setup, tmp_path, capsys):
    import app.cli as cli

    config = arc_config(tmp_path, setup["codec"], 2)
    argv = ["train", "--recipe", "arc", "--data", setup["data"], "--config", config, "--init", setup["base"]]
    for extra, needle in (
        (["--out", tmp_path / "small", "--set", "batch_size=1"], "needs a batch of at least 2 clips"),
        (["--out", tmp_path / "late", "--set", "recipe.p_t_one=-1"], "p_t_one must be a probability"),
    ):
        code = cli.main([str(a) for a in argv + extra])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
