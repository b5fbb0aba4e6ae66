"""Extend and repaint: new sound around kept sound, through the DiT's known-latent + mask inputs.

    from pipelines.edit import extend, repaint
    longer = extend(gen, audio, "the rain keeps falling", seconds=4, seed=1)
    fixed = repaint(gen, audio, "a single soft bell", start=1.5, end=2.5, seed=1)

The source is encoded; its latent frames are known (held on their flow path at every sampler step
and shown to the DiT with a mask, as in training) and the rest is sampled. The decode of the sampled
window is then spliced into the untouched source (post-processing: `post=False` returns the window's
raw decode instead, the model-only output):
  - extend: the source's samples are kept up to EDIT_FADE_MS before its end; over those last 20 ms
    the source crossfades (raised cosine) into the decode, which continues past the end. The source
    is padded at its START to a whole number of latent frames, so every known frame is a full frame
    of the source and the seam lies on a frame boundary.
  - repaint: everything outside [start, end) is the source, sample for sample; inside, the source
    crossfades into the decode over the region's first 20 ms and back over its last 20 ms. Every
    latent frame that overlaps the region is sampled afresh.
Longer sources are fine: only a window around the edit (at most the model's length) is sampled and
decoded. Extensions longer than one window continue window by window (`sample_long`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from pipelines.audio import MAX_SECONDS, Audio
from pipelines.conditioned import (
    CONTEXT_SHARE,
    Conditions,
    base_settings,
    check_drop,
    decode,
    fill_info,
    is_number,
    peak_safe_if_over,
    raised_cosine,
    rng_for,
    sample_long,
    sample_window,
    settings_info,
    source_audio,
    window_frames,
)
from pipelines.errors import BadInput
from pipelines.generator import Generator

EDIT_FADE_MS = 20.0
MIN_REPAINT_SECONDS = 0.1  # the region must hold both 20 ms crossfades and at least a few latent frames
DROP = ("known",)


def _fade(gen: Generator) -> int:
    return round(EDIT_FADE_MS * gen.sample_rate / 1000)


def extend(
    gen: Generator,
    audio: Audio,
    prompt: str,
    *,
    seconds: float,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    post: bool = True,
    drop: Iterable[str] = (),
    callback=None,
    info: dict | None = None,
) -> Audio:
    """`audio` followed by `seconds` more of `prompt`: len(audio) + round(seconds * 44100) samples.

    `drop=("known",)` samples the new part without the source's frames (the benches' negative control).
    """
    drop = check_drop(drop, DROP)
    source = source_audio(audio, gen, "The audio to extend", max_seconds=MAX_SECONDS)
    if not is_number(seconds) or not 0.0 < seconds <= MAX_SECONDS - source.seconds:
        raise BadInput(
            f"seconds must be above 0 and keep the result within {MAX_SECONDS:g} s "
            f"(at most {max(MAX_SECONDS - source.seconds, 0):.1f} here), not {seconds!r}."
        )
    s = base_settings(gen, prompt, seconds, steps=steps, seed=seed, guidance=guidance, sampler=sampler)
    hop = gen.codec.cfg.latent_hop
    n0 = source.frames
    n_out = n0 + round(seconds * gen.sample_rate)
    pad = (-n0) % hop  # source padded at its start, so that it ends on a frame boundary
    context_frames = max(1, int(window_frames(gen) * CONTEXT_SHARE))
    lead = min((n0 + pad) // hop, context_frames)  # known frames before the new ones
    keep_from = n0 + pad - lead * hop  # padded-source sample where the known frames start
    padded = np.pad(source.samples, ((0, 0), (pad, 0)))
    z_known = gen.codec.encode(Audio(padded[:, keep_from:], source.sample_rate))[:, :lead]
    new_frames = -(-(n_out - n0) // hop)
    z_new = sample_long(
        gen,
        [(s.prompt, 1.0)],
        s,
        new_frames,
        rng_for(s.seed),
        prefix=z_known,
        use_known="known" not in drop,
        callback=callback,
    )
    made = decode(gen, torch.cat([z_known, z_new], dim=1), lead * hop + (n_out - n0))
    start = keep_from - pad  # source sample where the decode starts (negative: inside the padding)
    made = peak_safe_if_over(made)
    out = np.zeros((2, n_out), np.float32)
    if post:
        fade = min(_fade(gen), n0)
        seam = n0 - fade
        out[:, :seam] = source.samples[:, :seam]
        w = raised_cosine(fade)[None]
        out[:, seam:n0] = (1 - w) * source.samples[:, seam:n0] + w * made.samples[
            :, seam - start : n0 - start
        ]
        out[:, n0:] = made.samples[:, n0 - start :]
    else:  # the model's own decode from where it starts; the source before it (far from the seam)
        first = max(start, 0)
        out[:, :first] = source.samples[:, :first]
        out[:, first:] = made.samples[:, first - start :]
    fill_info(
        info,
        settings_info(
            s,
            "extend",
            source_seconds=source.seconds,
            fade_ms=EDIT_FADE_MS if post else None,
            post=post,
            drop=list(drop),
        ),
    )
    return Audio(out, gen.sample_rate)


def repaint(
    gen: Generator,
    audio: Audio,
    prompt: str,
    *,
    start: float,
    end: float,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    post: bool = True,
    drop: Iterable[str] = (),
    callback=None,
    info: dict | None = None,
) -> Audio:
    """`audio` with [start, end) seconds made afresh for `prompt`; as long as the source.

    `drop=("known",)` samples the window without the source's frames (the benches' negative control).
    """
    drop = check_drop(drop, DROP)
    source = source_audio(audio, gen, "The audio to repaint", max_seconds=MAX_SECONDS)
    length = source.seconds
    for name, value in (("start", start), ("end", end)):
        if not is_number(value):
            raise BadInput(f"The repaint {name} must be a number of seconds, not {value!r}.")
    if start >= end:
        raise BadInput(f"The repaint start ({start:g} s) must come before its end ({end:g} s).")
    if start < 0 or end > length + 1e-9:
        raise BadInput(
            f"The repaint region {start:g}-{end:g} s lies outside the clip, which is {length:.2f} s long."
        )
    if end - start < MIN_REPAINT_SECONDS:
        raise BadInput(
            f"The repaint region is {end - start:.3f} s; make it at least {MIN_REPAINT_SECONDS:g} s."
        )
    hop = gen.codec.cfg.latent_hop
    window = window_frames(gen)
    a, b = round(start * gen.sample_rate), min(round(end * gen.sample_rate), source.frames)
    first, stop = a // hop, -(-b // hop)  # every frame overlapping [a, b)
    region = stop - first
    if region > window - 2:
        raise BadInput(
            f"The repaint region is {end - start:.1f} s; this model repaints at most "
            f"{(window - 2) / gen.codec.latent_rate:.1f} s at a time."
        )
    s = base_settings(gen, prompt, end - start, steps=steps, seed=seed, guidance=guidance, sampler=sampler)
    total = -(-source.frames // hop)
    side = (window - region) // 2
    lo = max(0, first - side)
    hi = min(total, stop + (window - region - (first - lo)))
    lo = max(0, hi - window) if hi - lo < window else lo
    z = gen.codec.encode(Audio(source.samples[:, lo * hop : hi * hop], source.sample_rate))[:, : hi - lo]
    mask = torch.ones(1, hi - lo)
    mask[:, first - lo : stop - lo] = 0.0
    cond = Conditions(hi - lo)
    if "known" not in drop:
        cond.known, cond.known_mask = z, mask
    painted = sample_window(gen, [(s.prompt, 1.0)], s, cond, rng_for(s.seed), callback=callback)
    span = min(hi * hop, source.frames) - lo * hop
    made = peak_safe_if_over(decode(gen, painted, span))
    out = np.array(source.samples, dtype=np.float32)
    if post:
        fade = _fade(gen)
        w = raised_cosine(fade)[None]
        inside = made.samples[:, a - lo * hop : b - lo * hop]
        piece = np.array(inside)
        piece[:, :fade] = (1 - w) * source.samples[:, a : a + fade] + w * inside[:, :fade]
        piece[:, -fade:] = w[:, ::-1] * inside[:, -fade:] + (1 - w[:, ::-1]) * source.samples[:, b - fade : b]
        out[:, a:b] = piece
    else:  # the model's own decode over the whole window; the source outside it
        out[:, lo * hop : lo * hop + span] = made.samples
    fill_info(
        info,
        settings_info(
            s,
            "repaint",
            start=float(start),
            end=float(end),
            source_seconds=length,
            fade_ms=EDIT_FADE_MS if post else None,
            post=post,
            drop=list(drop),
        ),
    )
    return Audio(out, gen.sample_rate)
