"""Style transfer: a sound restyled by a prompt (`soundloom transform INPUT PROMPT --strength S --keep ...`).

    from pipelines import load_generator
    from pipelines.transform import transform
    out = transform(gen, audio, "a glassy marimba", strength=0.6, keep=("rhythm",), seed=1)

The source is encoded by the codec, moved along the flow to noise level `strength` and sampled back
to t = 0 under the prompt: at 0 the source's own latent comes back (its codec decode), at 1 the
source's latent is ignored. The codec's measured channels (level, log-f0, voicing), which the DiT does
not read off its input, are held toward the source's by `hold_weight(strength)`. With `keep`, controls
measured on the source by pipelines/controls.py steer every step, so its rhythm (onsets, beat and bar
phase), melody (f0, voicing) or loudness survive while the timbre follows the prompt. There is no post-processing beyond the generator's peak safety.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.audio import Audio
from pipelines.conditioned import (
    Conditions,
    base_settings,
    control_tensors,
    decode,
    fill_info,
    frames_for,
    is_number,
    peak_safe_if_over,
    rng_for,
    sample_window,
    settings_info,
    source_audio,
)
from pipelines.controls import CONTROL_GROUPS, measure_controls
from pipelines.errors import BadInput
from pipelines.generator import Generator

KEEP = {"rhythm": ("onset", "beat", "bar"), "melody": ("pitch",), "loudness": ("loudness",)}
DEFAULT_STRENGTH = 0.6
HOLD_SIGMA = 1.0  # see hold_weight


def hold_weight(strength: float, sigma: float = HOLD_SIGMA) -> float:
    """How far the codec's measured channels (level, log-f0, voicing) stay the source's at `strength`.

    The DiT predicts those channels as x0 and, at low noise, barely reads them off its input: the base
    model's x̂0 missed the source's by 0.2-0.43 rms at t = 0.05 (the channels' own spread in that clip:
    0.08-0.49), so a transform at strength 0.1 put a piano phrase's notes elsewhere (chroma similarity
    0.95 at strength 0, 0.17 at 0.1, for ARC and base alike; the pitch lives in these channels: held
    entirely, the phrase kept 0.94 at strength 0.3 under a flute prompt). The clean estimate of these
    channels is therefore two estimates combined: the noised source, which at level s tells x0 within
    s / (1 - s), and the network's, taken within `sigma`; the source's weight is
    sigma^2 / (sigma^2 + (s / (1 - s))^2). With sigma 1 (the unit scale of the latents' other channels)
    that is (1 - s)^2 / ((1 - s)^2 + s^2), the share of the source's signal in the noised latent itself:
    0.99 at strength 0.1, 0.69 at 0.4, 0.31 at 0.6, 0.06 at 0.8, 0 at 1. (A sigma of 0.3, the network's
    miss, held 0.88 at 0.1, which still moved the phrase's notes: chroma 0.29.)
    """
    if strength >= 1.0:
        return 0.0
    spread = strength / (1.0 - strength)
    return sigma * sigma / (sigma * sigma + spread * spread)


def parse_keep(keep: str | Iterable[str] | None) -> tuple[str, ...]:
    """ "rhythm,melody" or ("rhythm", "melody") -> the checked, de-duplicated names, in KEEP's order."""
    if keep is None:
        return ()
    if not isinstance(keep, str | Iterable):
        raise BadInput(f"keep must name what to keep, e.g. 'rhythm,melody', not {keep!r}.")
    names = keep.split(",") if isinstance(keep, str) else list(keep)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in KEEP]
    if unknown:
        raise BadInput(f"Cannot keep {unknown[0]!r}; choose from {', '.join(KEEP)} (comma-separated).")
    return tuple(n for n in KEEP if n in names)


def transform(
    gen: Generator,
    audio: Audio,
    prompt: str,
    *,
    strength: float = DEFAULT_STRENGTH,
    keep: str | Iterable[str] = (),
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    callback=None,
    info: dict | None = None,
) -> Audio:
    """`audio` restyled by `prompt`, as long as the source (at most the model's window), 44.1 kHz stereo.

    `strength` 0..1 is the noise level the source latent is moved to; `keep` names what the source's
    controls hold in place: rhythm, melody, loudness. A kept group the source lacks (no clear pitch,
    no pulse) is simply absent. `info`, when given, receives the settings used.
    """
    if not is_number(strength) or not 0.0 <= strength <= 1.0:
        raise BadInput(f"strength must be a number from 0 to 1, not {strength!r}.")
    keep = parse_keep(keep)
    source = source_audio(audio, gen, "The source audio", max_seconds=gen.max_seconds)
    s = base_settings(gen, prompt, source.seconds, steps=steps, seed=seed, guidance=guidance, sampler=sampler)
    n = source.frames
    frames = frames_for(gen, n)
    z_source = gen.codec.encode(source)[:, :frames]
    cond = Conditions(frames, init=z_source, t_start=float(strength), hold_measured=hold_weight(strength))
    kept_groups = [g for name in keep for g in KEEP[name]]
    present = []
    if kept_groups:
        measured = measure_controls(source, frames, gen.codec.latent_rate)
        cond.controls, cond.control_mask = control_tensors(measured, kept_groups)
        present = [g for g in kept_groups if float(cond.control_mask[CONTROL_GROUPS[g][0]].max()) > 0]
    z = sample_window(gen, [(s.prompt, 1.0)], s, cond, rng_for(s.seed), callback=callback)
    fill_info(
        info,
        settings_info(s, "transform", strength=float(strength), keep=list(keep), controls_used=present),
    )
    return peak_safe_if_over(decode(gen, z, n))
