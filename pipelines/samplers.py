"""Rectified-flow samplers in the style of k-diffusion `sampling.py`.

A model is any callable `model(x, t, **extra_args) -> velocity` with x [B, ...] and t [B]; the flow
runs from noise at t = 1 to data at t = 0 along x_t = (1 - t) x0 + t eps, v = eps - x0, so the
clean estimate at any step is x0 = x - t v. Schedules are functions returning tensors; samplers are
plain functions that call `callback({"i", "t", "x", "denoised"})` once per step, which is how
progress bars and previews hook in. Nothing here knows of text, audio or UI: classifier-free
guidance and known (extend / repaint) frames are model wrappers.

Ping-pong sampling (for the few-step ARC generator) does not follow the velocity: each step takes the
clean estimate x0 = x - t v and noises it afresh to the next, lower level. Its schedule is even in
logSNR = 2 log((1 - t) / t), the log signal-to-noise ratio of x_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pipelines.dit import cat_inputs

Model = Callable[..., torch.Tensor]


def rf_times(steps: int, t_start: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """[steps + 1] times from t_start down to 0; shift > 1 spends more steps at high noise (SD3)."""
    assert steps >= 1 and 0.0 < t_start <= 1.0 and shift > 0
    u_start = t_start / (shift - (shift - 1) * t_start)  # the grid point that the shift maps to t_start
    u = torch.linspace(u_start, 0.0, steps + 1, dtype=torch.float64)
    return (shift * u / (1 + (shift - 1) * u)).float()


def latent_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, offset: float = 0.0
) -> torch.Tensor:
    """Unit-variance noise [B, C, T] for the flow; `offset` > 0 mixes in a per-channel constant over frames
    ("offset noise"), drawn after the i.i.d. part: (iid + offset * constant) / sqrt(1 + offset^2).

    Why: i.i.d. noise hides a clip's per-channel mean only by 1/sqrt(T). A held note's pitch and level are
    such means (hundreds of frames), so under i.i.d. noise the model learns to read them off x_t even at
    t = 0.95, and at sampling time reads the starting noise's own mean as the pitch: the pitch followed
    the seed, not the prompt (measured on the go/no-go model). Noise with a constant part hides the mean
    as well as any single frame, so the conditions must supply it.
    """
    noise = torch.randn(shape, generator=generator)
    if offset:
        constant = torch.randn((*shape[:-1], 1), generator=generator)
        noise = (noise + offset * constant) / math.sqrt(1.0 + offset * offset)
    return noise


def noise_to(init: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """A clean latent moved to noise level t along the flow: (1 - t) init + t noise."""
    return (1 - t) * init + t * noise


@torch.no_grad()
def sample_euler(
    model: Model,
    x: torch.Tensor,
    times: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Euler steps along the velocity from times[0] to times[-1]; x is the latent at times[0]."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        v = model(x, t * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x - t * v})
        x = x + (t_next - t) * v
    return x


@torch.no_grad()
def sample_heun(
    model: Model,
    x: torch.Tensor,
    times: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Heun's second-order method (2 model calls per step; the last step to t = 0 is Euler)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        v = model(x, t * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x - t * v})
        x_euler = x + (t_next - t) * v
        if t_next == 0:
            x = x_euler  # the velocity at t = 0 is never needed, and a model may not be trained there
        else:
            v_next = model(x_euler, t_next * s_in, **extra_args)
            x = x + (t_next - t) * (v + v_next) / 2
    return x


def logsnr_of(t: torch.Tensor) -> torch.Tensor:
    """logSNR of flow time t: 2 log((1 - t) / t), +inf at t = 0 and -inf at t = 1."""
    return 2 * (torch.log1p(-t) - torch.log(t))


def time_of_logsnr(logsnr: torch.Tensor) -> torch.Tensor:
    """The flow time with this logSNR: sigmoid(-logsnr / 2) (the inverse of logsnr_of)."""
    return torch.sigmoid(-logsnr / 2)


def pingpong_times(
    steps: int, logsnr_min: float = -6.0, logsnr_max: float = 2.0, t_start: float = 1.0
) -> torch.Tensor:
    """[steps + 1] times evenly spaced in logSNR from logsnr_min to logsnr_max, the ends pinned to 1 and 0.

    With t_start < 1 (from an init latent noised to t_start) the grid starts at that level instead and
    its first time is t_start; a start already cleaner than logsnr_max still spans at least one step of
    the full grid, so the times keep falling.
    """
    assert steps >= 1 and 0.0 < t_start <= 1.0 and logsnr_min < logsnr_max
    low = logsnr_min
    if t_start < 1.0:
        low = max(logsnr_min, float(logsnr_of(torch.tensor(t_start, dtype=torch.float64))))
    high = max(logsnr_max, low + (logsnr_max - logsnr_min) / steps)
    times = time_of_logsnr(torch.linspace(low, high, steps + 1, dtype=torch.float64))
    times[0], times[-1] = t_start, 0.0
    return times.float()


def _fresh_noise(
    like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None, offset: float = 0.0
) -> torch.Tensor:
    """latent_noise shaped like `like`; one generator per batch item keeps each item reproducible alone."""
    if isinstance(generator, list | tuple):
        assert len(generator) == like.shape[0], "one generator per batch item"
        shape = (1, *like.shape[1:])
        noise = torch.cat([latent_noise(shape, g, offset) for g in generator])
    else:
        noise = latent_noise(tuple(like.shape), generator, offset)
    return noise.to(dtype=like.dtype, device=like.device)


@torch.no_grad()
def sample_pingpong(
    model: Model,
    x: torch.Tensor,
    times: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable[[dict], None] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    noise_offset: float = 0.0,
) -> torch.Tensor:
    """Ping-pong steps: x0 = x - t_i v, then x = (1 - t_{i+1}) x0 + t_{i+1} fresh noise (x0 itself at 0).

    x is the latent at times[0]. The fresh noise comes from `generator` (torch's global one when None;
    a list gives one generator per batch item), so a seed makes the whole run reproducible; it is
    latent_noise with the model's `noise_offset`, the noise the model was trained on.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(times) - 1):
        t, t_next = times[i], times[i + 1]
        v = model(x, t * s_in, **extra_args)
        denoised = x - t * v
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": denoised})
        x = denoised if t_next == 0 else noise_to(denoised, _fresh_noise(x, generator, noise_offset), t_next)
    return x


def cfg_model(dit: Model, cond: dict, uncond: dict, scale: float, *, unguided_channels: int = 0) -> Model:
    """Classifier-free guidance: v_uncond + scale (v_cond - v_uncond), both halves in one forward.

    The last `unguided_channels` latent channels (a codec's measured level, log-f0 and voicing) take the
    conditional velocity alone. Guidance extrapolates whatever the prompt changes, and extrapolating a
    measured quantity overshoots it: at scale 4 a prompt's pitch came out 1-2 octaves beyond the note
    asked for (220 Hz asked, ~105 Hz made; 659 asked, ~1600 made) and its level 10-30 dB too loud.
    """

    def model(x: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        if scale == 1.0:  # guidance is the identity: skip the unconditional half
            return dit(x, t, **{**cond, **extra_args})
        inputs = cat_inputs({**cond, **extra_args}, {**uncond, **extra_args})
        v_cond, v_uncond = dit(torch.cat([x, x]), torch.cat([t, t]), **inputs).chunk(2)
        v = v_uncond + scale * (v_cond - v_uncond)
        if unguided_channels:
            v[:, -unguided_channels:] = v_cond[:, -unguided_channels:]
        return v

    return model


def known_frames_model(
    model: Model, known: torch.Tensor, known_mask: torch.Tensor, noise: torch.Tensor
) -> Model:
    """Hold the frames where known_mask is 1 on their flow path (1 - t) known + t noise (extend, repaint).

    The model sees the known latent and mask as inputs, its input x carries the known frames at the
    current noise level, and their velocity is the path's own (noise - known), so an Euler or Heun step
    from t to any t' lands them exactly at level t': they come out equal to `known` at t = 0. Start
    the sampler from noise_to(init, noise, t_start) with the same `noise` (at t_start = 1, just `noise`).

    Above t = 0 the known frames' velocity is taken from the sampler's own x, (x - known) / t, which is
    the path's velocity wherever x is on the path (Euler, Heun) and still gives the clean estimate
    x - t v = known where a sampler left the path by noising afresh (ping-pong).
    """
    path_velocity = noise - known

    def wrapped(x: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        level = t.view(-1, *([1] * (x.dim() - 1)))
        known_velocity = torch.where(level > 0, (x - known) / level.clamp(min=1e-12), path_velocity)
        x = known_mask * noise_to(known, noise, level) + (1 - known_mask) * x
        v = model(x, t, known=known, known_mask=known_mask, **extra_args)
        return known_mask * known_velocity + (1 - known_mask) * v

    return wrapped


def measured_hold_model(model: Model, source: torch.Tensor, channels: int, weight: float) -> Model:
    """Pull the clean estimate x - t v of the last `channels` latent channels toward `source`'s by `weight`
    (0: the model's own, 1: the source's), at every step; the other channels are the model's.

    For the codec's measured channels (level, log-f0, voicing), which the DiT predicts as x0 and, at low
    noise, does not read off its input (pipelines/transform.py says what that did to style transfer).
    """
    assert channels >= 1 and 0.0 <= weight <= 1.0

    def wrapped(x: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        v = model(x, t, **extra_args)
        level = t.view(-1, *([1] * (x.dim() - 1)))
        x0 = x - level * v
        held = torch.cat(
            [x0[:, :-channels], weight * source[:, -channels:] + (1 - weight) * x0[:, -channels:]], 1
        )
        return torch.where(level > 0, (x - held) / level.clamp(min=1e-12), v)

    return wrapped
