"""Conditioned sampling: the one sampler call behind every creative pipeline (transform, voice, beats,
extend, repaint, live).

Each pipeline turns its inputs into the same few things and hands them to `sample_window`:
  - prompts with weights: one prompt at weight 1, or two blended for a morph. Blending happens at the
    velocity, v = v_uncond + g (sum_i w_i v_i - v_uncond), which is exact at the ends (weight 0 is
    never run) and needs no padding of token sequences of different lengths;
  - per-frame controls [8, T] with their presence mask (pipelines/controls.py), given to both halves
    of classifier-free guidance, so guidance sharpens the prompt while the controls are followed as
    the model learned them (with dropout, not guidance);
  - known latent frames [C, T] with a mask [1, T] (extend, repaint, streams): held on their flow path
    by `known_frames_model` and also shown to the DiT as inputs, as in training;
  - an init latent noised to `t_start` (style transfer); t_start 0 returns it unchanged.
Randomness comes from one torch.Generator per call, seeded by the pipeline, so a seed remakes a
sound; chunked continuation (`sample_long`) draws each window's noise from it in turn.

A pipeline returns Audio; its settings (what `info` receives) are written by the CLI beside the file
under "soundloom_pipeline_settings", which `generate --from` refuses: a transform is not a generation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from pipelines.audio import Audio, peak_safe, resample, to_channels, validate
from pipelines.controls import CONTROL_GROUPS, CONTROL_NAMES, Controls
from pipelines.errors import BadInput
from pipelines.generator import GenerationSettings, Generator
from pipelines.samplers import (
    cfg_model,
    known_frames_model,
    latent_noise,
    measured_hold_model,
    noise_to,
    pingpong_times,
    rf_times,
    sample_euler,
    sample_heun,
    sample_pingpong,
)

PIPELINE_SETTINGS_FORMAT = 1
MIN_SOURCE_SECONDS = 0.2  # shorter inputs hold too few latent frames (and analysis frames) to follow
CONTEXT_SHARE = 1 / 3  # of a continuation window given to known frames from before


@dataclass
class Conditions:
    """Everything a window is sampled with besides the prompts; tensors are per window, without batch."""

    frames: int
    controls: torch.Tensor | None = None  # [8, frames] values
    control_mask: torch.Tensor | None = None  # [8, frames] presence
    known: torch.Tensor | None = None  # [C, frames] latent held where known_mask is 1
    known_mask: torch.Tensor | None = None  # [1, frames]
    init: torch.Tensor | None = None  # [C, frames] latent to start from, noised to t_start
    t_start: float = 1.0
    # 0..1: how far the clean estimate of the codec's measured channels is held to init's at every step
    # (samplers.measured_hold_model; style transfer, pipelines/transform.py)
    hold_measured: float = 0.0
    # The sound goes on past the window's end (a stream, a loop, a window of a long continuation), so the
    # `seconds` condition says so: at least segment_frames, as for the training crops of longer clips.
    # Otherwise it is the window's length, which the model reads as "the sound ends here": clips shorter
    # than a crop end with a release into silence. A 120 s stream told that every 4 s window ends fell
    # silent (below -60 dB) in 4 to 19 of its seconds; told it goes on, in none (README, live).
    continues: bool = False


# ---------------------------------------------------------------- inputs


def source_audio(audio: Audio, gen: Generator, what: str, *, max_seconds: float | None = None) -> Audio:
    """`audio` checked (finite, long enough, not too long) and converted to the generator's rate, stereo."""
    if not isinstance(audio, Audio):
        raise BadInput(f"{what} must be audio (pipelines.Audio), not {type(audio).__name__}.")
    validate(audio, what)
    if audio.seconds < MIN_SOURCE_SECONDS:
        raise BadInput(
            f"{what} is {audio.seconds * 1000:.0f} ms long; give at least {MIN_SOURCE_SECONDS:g} s of audio."
        )
    if max_seconds is not None and audio.seconds > max_seconds + 1e-9:
        raise BadInput(
            f"{what} is {audio.seconds:.1f} s long, more than the {max_seconds:g} s this model handles at "
            "once; trim it."
        )
    return to_channels(resample(audio, gen.sample_rate), 2)


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def frames_for(gen: Generator, n_samples: int) -> int:
    """Latent frames that cover n_samples: ceil(n / hop)."""
    return -(-n_samples // gen.codec.cfg.latent_hop)


def window_frames(gen: Generator) -> int:
    """The longest window the DiT takes at once, in latent frames."""
    return int(math.floor(gen.max_seconds * gen.codec.latent_rate))


def control_tensors(controls: Controls, groups: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [8, T], mask [8, T]) of `controls`, keeping only the named groups that it has."""
    keep = np.zeros(len(CONTROL_NAMES), dtype=bool)
    for name in groups:
        keep[list(CONTROL_GROUPS[name])] = True
    present = torch.from_numpy(controls.present & keep).float()[:, None].expand(-1, controls.frames)
    values = torch.from_numpy(controls.values).float() * present
    return values, present.contiguous()


def check_drop(drop: Iterable[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """The names in `drop` (inputs hidden from the model: negative controls), checked against `allowed`."""
    drop = tuple(drop)
    unknown = [d for d in drop if d not in allowed]
    if unknown:
        raise BadInput(f"Cannot drop {unknown[0]!r}; this pipeline can drop {', '.join(allowed)}.")
    return drop


def base_settings(
    gen: Generator,
    prompt: str,
    seconds: float,
    *,
    steps: int | None,
    seed: int | None,
    guidance: float | None,
    sampler: str | None,
) -> GenerationSettings:
    """The generator's own checks and defaults for prompt, steps, seed, guidance and sampler.

    `seconds` may exceed the model's window (chunked pipelines); it is checked by the caller.
    """
    s = gen.settings(
        prompt,
        seconds=min(seconds, gen.max_seconds),
        steps=steps,
        seed=seed,
        guidance=guidance,
        sampler=sampler,
    )
    return replace(s, seconds=float(seconds))


def settings_info(s: GenerationSettings, pipeline: str, **extra) -> dict:
    """What a pipeline reports in `info`: its name, the generation settings and its own arguments."""
    return {"pipeline": pipeline, **asdict(s), **extra}


def pipeline_record(info: dict, gen: Generator) -> dict:
    """The settings file written beside a pipeline's output (`info` plus the model it was made with)."""
    return {
        "soundloom_pipeline_settings": PIPELINE_SETTINGS_FORMAT,
        **info,
        "model": str(gen.bundle_path) if gen.bundle_path else None,
        "model_hash": gen.bundle_hash,
    }


def fill_info(info: dict | None, values: dict) -> None:
    if info is not None:
        info.clear()
        info.update(values)


# ---------------------------------------------------------------- sampling


def _text_inputs(gen: Generator, prompt: str, seconds: torch.Tensor) -> tuple[dict, dict]:
    text = gen.text_encoder.encode([prompt])
    cond = {"text": text.tokens, "text_mask": text.mask, "seconds": seconds}
    uncond = {"text": text.tokens, "text_mask": torch.zeros_like(text.mask), "seconds": seconds}
    return cond, uncond


def guided_model(gen: Generator, prompts: Sequence[tuple[str, float]], guidance: float, extra: dict):
    """The DiT under classifier-free guidance for weighted prompts (weights sum to 1; zeros are skipped)."""
    parts = []
    for prompt, weight in prompts:
        if weight <= 0.0:
            continue
        cond, uncond = _text_inputs(gen, prompt, extra["seconds"])
        per_frame = {k: v for k, v in extra.items() if k != "seconds"}
        parts.append(
            (
                weight,
                cfg_model(
                    gen._sampling_dit,
                    {**cond, **per_frame},
                    {**uncond, **per_frame},
                    guidance,
                    unguided_channels=gen.measured_channels,
                ),
            )
        )
    assert parts, "at least one prompt needs a weight above 0"
    if len(parts) == 1:
        return parts[0][1]
    total = sum(w for w, _ in parts)

    def blended(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return sum((w / total) * model(x, t, **kwargs) for w, model in parts)

    return blended


@torch.no_grad()
def sample_window(
    gen: Generator,
    prompts: Sequence[tuple[str, float]],
    s: GenerationSettings,
    cond: Conditions,
    rng: torch.Generator,
    *,
    noise: torch.Tensor | None = None,
    callback=None,
) -> torch.Tensor:
    """One window's latent [C, frames], sampled from `rng`'s noise (or the `noise` [C, frames] given)."""
    frames = cond.frames
    assert 1 <= frames <= window_frames(gen) + 1, f"{frames} frames exceed the model's window"
    if noise is None:
        noise = latent_noise((1, gen.codec.channels, frames), rng, gen.noise_offset)
    else:
        noise = noise.reshape(1, gen.codec.channels, frames).float()
    if cond.init is not None and cond.t_start <= 0.0:
        return cond.init.float().clone()

    length = max(frames, gen.segment_frames) if cond.continues else frames
    extra: dict = {"seconds": torch.full((1,), length / gen.codec.latent_rate)}
    if cond.controls is not None:
        extra["controls"], extra["control_mask"] = (
            cond.controls[None].float(),
            cond.control_mask[None].float(),
        )
    model = guided_model(gen, prompts, s.guidance, extra)
    if cond.init is not None and cond.hold_measured > 0 and gen.measured_channels:
        model = measured_hold_model(model, cond.init[None].float(), gen.measured_channels, cond.hold_measured)
    if cond.known is not None:
        model = known_frames_model(model, cond.known[None].float(), cond.known_mask[None].float(), noise)
    x = noise if cond.init is None else noise_to(cond.init[None].float(), noise, cond.t_start)
    if s.sampler == "pingpong":
        z = sample_pingpong(
            model,
            x,
            pingpong_times(s.steps, t_start=cond.t_start),
            callback=callback,
            generator=rng,
            noise_offset=gen.noise_offset,
        )
    else:
        sample = sample_heun if s.sampler == "heun" else sample_euler
        z = sample(model, x, rf_times(s.steps, t_start=cond.t_start, shift=gen.time_shift), callback=callback)
    return z[0].float()


def continue_latent(
    gen: Generator,
    prompts: Sequence[tuple[str, float]],
    s: GenerationSettings,
    context: torch.Tensor | None,
    frames: int,
    rng: torch.Generator,
    *,
    controls: torch.Tensor | None = None,
    control_mask: torch.Tensor | None = None,
    continues: bool = False,
    callback=None,
) -> torch.Tensor:
    """`frames` new latent frames [C, n] that follow the known `context` [C, k] (None: a fresh start).

    The window sampled is [context | new]; controls / control_mask [8, k + n] cover the whole window.
    `continues`: the sound goes on after the new frames (Conditions.continues).
    """
    k = 0 if context is None else context.shape[1]
    known = mask = None
    if k:
        known = torch.cat([context.float(), context.new_zeros(context.shape[0], frames)], dim=1)
        mask = torch.cat([torch.ones(1, k), torch.zeros(1, frames)], dim=1)
    window = Conditions(k + frames, controls, control_mask, known=known, known_mask=mask, continues=continues)
    return sample_window(gen, prompts, s, window, rng, callback=callback)[:, k:]


def sample_long(
    gen: Generator,
    prompts: Sequence[tuple[str, float]],
    s: GenerationSettings,
    frames: int,
    rng: torch.Generator,
    *,
    controls: torch.Tensor | None = None,
    control_mask: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    use_known: bool = True,
    continues: bool = False,
    callback=None,
) -> torch.Tensor:
    """`frames` latent frames after `prefix` [C, P] (None: from nothing), longer than one window by chunked
    continuation: each window holds up to a third of known frames from before and new frames after.

    controls / control_mask [8, P + frames] cover the prefix and the new frames. `use_known=False`
    samples each window without its context (the negative control for continuation). Every window but
    the last is told the sound goes on (Conditions.continues); the last, only when `continues`.
    """
    window = window_frames(gen)
    most_context = max(1, int(window * CONTEXT_SHARE))
    z = prefix.float() if prefix is not None else torch.zeros(gen.codec.channels, 0)
    start = z.shape[1]
    target = start + frames
    while z.shape[1] < target:
        k = min(z.shape[1], most_context) if use_known else 0
        n = min(window - k, target - z.shape[1])
        lo, hi = z.shape[1] - k, z.shape[1] + n
        window_controls = {}
        if controls is not None:
            window_controls = {"controls": controls[:, lo:hi], "control_mask": control_mask[:, lo:hi]}
        context = z[:, lo:] if k else None
        goes_on = continues or z.shape[1] + n < target
        new = continue_latent(
            gen, prompts, s, context, n, rng, continues=goes_on, callback=callback, **window_controls
        )
        z = torch.cat([z, new], dim=1)
    return z[:, start:]


def decode(gen: Generator, z: torch.Tensor, n_samples: int) -> Audio:
    """Latent [C, T] -> Audio of n_samples at the codec's rate (no peak handling: callers decide)."""
    return gen.codec.decode(z, n_samples=n_samples)


def peak_safe_if_over(audio: Audio) -> Audio:
    """The generator's only post-processing: a peak above 0 dBFS scaled down to -1 dBFS."""
    if audio.samples.size and float(np.abs(audio.samples).max()) > 1.0:
        return peak_safe(audio, -1.0)
    return audio


def rng_for(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def raised_cosine(n: int) -> np.ndarray:
    """n fade-in weights rising from near 0 to near 1 (half a Hann window); 1 - w fades out."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / max(n, 1))).astype(np.float32)
