"""Live sound design: prompt morphs, seed neighbourhoods and endless streams (`soundloom live PROMPT`).

    from pipelines.live import morph, neighbours, stream
    a = morph(gen, "rain on a tin roof", "a crackling fire", 0.3, seed=5)    # 4 s preview at alpha 0.3
    near = neighbours(gen, "a glassy pluck", seed=5, count=4, amount=0.2)   # small variations of seed 5
    for chunk in stream(gen, "a slowly evolving drone", seed=1):            # Audio chunks, forever
        ...

- Morph: the two prompts' conditional velocities are blended, v = v_uncond + g ((1 - a) v_A + a v_B -
  v_uncond) (pipelines/conditioned.py), from the same seed's noise: a = 0 and 1 are exactly the two
  prompts' sounds, and the sound moves between them as a moves.
- Seed neighbourhoods: the start noise is cos(theta) eps(seed) + sin(theta) eps(seed, k), with theta =
  amount x 90 degrees, which keeps it standard normal: amount 0 is the seed's own sound, 1 an
  unrelated one, small amounts its neighbours. Ping-pong's fresh noise stays the seed's.
- Streams: windows of [known context | new frames] sampled one after another (known-frame
  continuation); each window's latent is decoded with DECODE_CONTEXT_FRAMES of left context, the last
  HOLD_FRAMES of every decode (the decoder's right edge, which lacks future context) are held back and
  re-decoded by the next window, and successive decodes are crossfaded over STREAM_FADE_MS. The slider
  (`alpha` as a callable) is read before each window.
- `play` sends a stream to the default output device through sounddevice, when there is one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from pipelines.audio import Audio
from pipelines.conditioned import (
    Conditions,
    base_settings,
    check_drop,
    continue_latent,
    decode,
    fill_info,
    frames_for,
    is_number,
    peak_safe_if_over,
    raised_cosine,
    rng_for,
    sample_window,
    settings_info,
    window_frames,
)
from pipelines.errors import BadInput
from pipelines.generator import MAX_SEED, Generator
from pipelines.samplers import latent_noise

PREVIEW_SECONDS = 4.0
FIRST_CHUNK_SECONDS = 1.0  # short, so the first audio comes quickly
CHUNK_SECONDS = 2.0
CONTEXT_SECONDS = 2.0
DECODE_CONTEXT_FRAMES = 8
HOLD_FRAMES = 2
STREAM_FADE_MS = 20.0
MAX_NEIGHBOURS = 16
MAX_STREAM_SECONDS = 24 * 3600.0


def _check_alpha(alpha) -> float:
    if not is_number(alpha) or not 0.0 <= alpha <= 1.0:
        raise BadInput(f"The morph position alpha must be a number from 0 to 1, not {alpha!r}.")
    return float(alpha)


def _weights(prompt: str, morph_to: str | None, alpha: float) -> list[tuple[str, float]]:
    if morph_to is None:
        return [(prompt, 1.0)]
    return [(prompt, 1.0 - alpha), (morph_to, alpha)]


def _check_second_prompt(gen: Generator, morph_to: str | None) -> None:
    if morph_to is not None:
        gen.settings(morph_to, seconds=min(1.0, gen.max_seconds))  # the same prompt checks as generate


def neighbour_noise(
    seed: int, index: int, amount: float, shape: tuple[int, ...], offset: float = 0.0
) -> torch.Tensor:
    """The flow's noise (latent_noise with `offset`) near seed's: cos(theta) eps(seed) + sin(theta) eps(seed, index),
    theta = amount * pi/2; both parts have the same law, so the mix does too."""
    base = latent_noise(shape, rng_for(seed), offset)
    if amount == 0.0:
        return base
    other_seed = (seed * 1_000_003 + 7919 * (index + 1)) % MAX_SEED
    other = latent_noise(shape, rng_for(other_seed), offset)
    theta = amount * math.pi / 2
    return math.cos(theta) * base + math.sin(theta) * other


def morph(
    gen: Generator,
    prompt: str,
    morph_to: str | None,
    alpha: float = 0.0,
    *,
    seconds: float = PREVIEW_SECONDS,
    seed: int | None = None,
    variation: float = 0.0,
    variation_index: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    callback=None,
    info: dict | None = None,
) -> Audio:
    """A short preview between `prompt` (alpha 0) and `morph_to` (alpha 1) from one seed's noise.

    `variation` 0..1 moves the noise towards neighbour `variation_index` of the seed (0: the seed itself).
    """
    alpha = _check_alpha(alpha)
    if not is_number(variation) or not 0.0 <= variation <= 1.0:
        raise BadInput(f"variation must be a number from 0 to 1, not {variation!r}.")
    _check_second_prompt(gen, morph_to)
    s = base_settings(gen, prompt, seconds, steps=steps, seed=seed, guidance=guidance, sampler=sampler)
    if s.seconds > gen.max_seconds:
        raise BadInput(f"seconds must be at most {gen.max_seconds:g} for a preview, not {seconds!r}.")
    n = round(s.seconds * gen.sample_rate)
    frames = frames_for(gen, n)
    noise = neighbour_noise(
        s.seed, variation_index, float(variation), (gen.codec.channels, frames), gen.noise_offset
    )
    z = sample_window(
        gen,
        _weights(s.prompt, morph_to, alpha),
        s,
        Conditions(frames),
        rng_for(s.seed),
        noise=noise,
        callback=callback,
    )
    fill_info(
        info,
        settings_info(
            s,
            "morph",
            morph_to=morph_to,
            alpha=alpha,
            variation=float(variation),
            variation_index=variation_index,
        ),
    )
    return peak_safe_if_over(decode(gen, z, n))


def neighbours(
    gen: Generator,
    prompt: str,
    *,
    seed: int,
    count: int = 4,
    amount: float = 0.2,
    seconds: float = PREVIEW_SECONDS,
    morph_to: str | None = None,
    alpha: float = 0.0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
) -> list[Audio]:
    """`count` small variations of the sound of `seed` (neighbours 1..count at distance `amount`)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_NEIGHBOURS:
        raise BadInput(f"count must be a whole number from 1 to {MAX_NEIGHBOURS}, not {count!r}.")
    return [
        morph(
            gen,
            prompt,
            morph_to,
            alpha,
            seconds=seconds,
            seed=seed,
            variation=amount,
            variation_index=k,
            steps=steps,
            guidance=guidance,
            sampler=sampler,
        )
        for k in range(1, count + 1)
    ]


def stream(
    gen: Generator,
    prompt: str,
    *,
    morph_to: str | None = None,
    alpha: float | Callable[[], float] = 0.0,
    seconds: float | None = None,
    seed: int | None = None,
    first_seconds: float = FIRST_CHUNK_SECONDS,
    chunk_seconds: float = CHUNK_SECONDS,
    context_seconds: float = CONTEXT_SECONDS,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    drop: Iterable[str] = (),
    info: dict | None = None,
) -> Iterator[Audio]:
    """Continuous audio in chunks (44.1 kHz stereo Audio), `seconds` of it in all (None: endless).

    Arguments are checked here, before the first chunk is asked for. `alpha` may be a callable (a
    slider) read before each window. `drop=("known",)` samples every window without its context (the
    benches' negative control). `info`, when given, receives the settings used.
    """
    drop = check_drop(drop, ("known",))
    if not callable(alpha):
        _check_alpha(alpha)
    _check_second_prompt(gen, morph_to)
    if seconds is not None and (not is_number(seconds) or not 0 < seconds <= MAX_STREAM_SECONDS):
        raise BadInput(f"seconds must be above 0 and at most {MAX_STREAM_SECONDS:g}, or None for no end.")
    rate = gen.codec.latent_rate
    window = window_frames(gen)
    lengths = {
        "first_seconds": first_seconds,
        "chunk_seconds": chunk_seconds,
        "context_seconds": context_seconds,
    }
    for name, value in lengths.items():
        if not is_number(value) or value <= 0:
            raise BadInput(f"{name} must be a number of seconds above 0, not {value!r}.")
    first = max(HOLD_FRAMES + 1, round(first_seconds * rate))
    chunk = max(HOLD_FRAMES + 1, round(chunk_seconds * rate))
    context = max(1, round(context_seconds * rate))
    if max(first, chunk) + context > window:
        raise BadInput(
            f"A chunk plus its context must fit the model's {gen.max_seconds:g} s; shorten chunk_seconds "
            "or context_seconds."
        )
    s = base_settings(
        gen,
        prompt,
        seconds if seconds is not None else min(chunk_seconds, gen.max_seconds),
        steps=steps,
        seed=seed,
        guidance=guidance,
        sampler=sampler,
    )
    fill_info(
        info,
        settings_info(
            s,
            "live",
            morph_to=morph_to,
            alpha=None if callable(alpha) else float(alpha),
            endless=seconds is None,
            **({"seconds": None} if seconds is None else {}),
            first_seconds=first / rate,
            chunk_seconds=chunk / rate,
            context_seconds=context / rate,
            fade_ms=STREAM_FADE_MS,
            drop=list(drop),
        ),
    )
    total = None if seconds is None else round(seconds * gen.sample_rate)
    return _stream_chunks(gen, s, morph_to, alpha, total, first, chunk, context, "known" not in drop)


def _stream_chunks(
    gen: Generator,
    s,
    morph_to: str | None,
    alpha,
    total: int | None,
    first: int,
    chunk: int,
    context: int,
    use_known: bool,
) -> Iterator[Audio]:
    hop = gen.codec.cfg.latent_hop
    fade = round(STREAM_FADE_MS * gen.sample_rate / 1000)
    assert fade <= HOLD_FRAMES * hop and min(first, chunk) > HOLD_FRAMES
    w = raised_cosine(fade)[None]
    rng = rng_for(s.seed)
    z = torch.zeros(gen.codec.channels, 0)  # the latest latent frames (at most `keep` of them)
    keep = max(context, DECODE_CONTEXT_FRAMES + HOLD_FRAMES + 1)
    made = 0  # latent frames made so far; z holds the last z.shape[1] of them
    emitted = 0  # samples given out so far
    pending = None  # the previous decode's held-back samples from `emitted` on
    while total is None or emitted < total:
        a = _check_alpha(alpha()) if callable(alpha) else alpha
        n_new = first if made == 0 else chunk
        if total is not None:
            n_new = max(1, min(n_new, -(-total // hop) - made))
        k = min(z.shape[1], context) if use_known else 0
        prompts = _weights(s.prompt, morph_to, a)
        context_z = z[:, z.shape[1] - k :] if k else None
        new = continue_latent(gen, prompts, s, context_z, n_new, rng, continues=True)
        z = torch.cat([z, new], dim=1)
        made += n_new

        done = total is not None and made * hop >= total
        until = total if done else (made - HOLD_FRAMES) * hop
        lead = min(z.shape[1], made - emitted // hop + DECODE_CONTEXT_FRAMES)  # decoder's left context
        audio = decode(gen, z[:, z.shape[1] - lead :], lead * hop).samples
        audio_from = (made - lead) * hop  # the sample audio[:, 0] stands for
        piece = np.array(audio[:, emitted - audio_from : until - audio_from], dtype=np.float32)
        if pending is not None:
            m = min(fade, piece.shape[1], pending.shape[1])
            piece[:, :m] = (1 - w[:, :m]) * pending[:, :m] + w[:, :m] * piece[:, :m]
        pending = np.array(audio[:, until - audio_from :], dtype=np.float32)
        emitted = until
        z = z[:, max(0, z.shape[1] - keep) :]
        if piece.shape[1]:  # clipped, not scaled: a gain per chunk would step at the seams
            yield Audio(np.clip(piece, -1.0, 1.0), gen.sample_rate)


def output_device_problem() -> str | None:
    """None when sounddevice can play on a default output device here, else why not (one sentence)."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the module is there but PortAudio is not
        return (
            f"sounddevice cannot be used here ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
            "install it with `pip install sounddevice`, or write the stream to a file with -o OUT"
        )
    try:
        device = sounddevice.query_devices(kind="output")
    except Exception as e:  # PortAudioError and ValueError when there is no default output
        return f"no audio output device was found ({' '.join(str(e).split())[:80]}); write the stream to a file with -o OUT"
    if not device or int(device.get("max_output_channels", 0)) < 1:
        return "the default audio device has no output channels; write the stream to a file with -o OUT"
    return None


def play(
    chunks: Iterable[Audio], sample_rate: int, *, on_chunk: Callable[[float], None] | None = None
) -> float:
    """Play chunks through the default output device until they end (or Ctrl-C); returns seconds played."""
    problem = output_device_problem()
    if problem is not None:
        raise BadInput(problem[0].upper() + problem[1:] + ".")
    import sounddevice

    played = 0.0
    with sounddevice.OutputStream(samplerate=sample_rate, channels=2, dtype="float32") as out:
        for piece in chunks:
            out.write(np.ascontiguousarray(piece.samples.T))
            played += piece.seconds
            if on_chunk is not None:
                on_chunk(played)
    return played


def first_audio_latency(chunks: Iterator[Audio]) -> tuple[float, Audio]:
    """(seconds until the first chunk of `chunks` arrives, that chunk)."""
    started = time.perf_counter()
    piece = next(chunks)
    return time.perf_counter() - started, piece
