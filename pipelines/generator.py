"""Text to audio: the generator of a model bundle (DiT + codec + text encoder), sampled by rectified flow.

    from pipelines import load_generator
    gen = load_generator()                      # the bundled default (assets/generator), or a folder
    audio = gen.generate("a warm cello note, A3", seconds=6, seed=1)
    gen.last_settings.seed, gen.timings         # what made it, and where the time went

One call: encode the prompt (cached per prompt by the text encoder), draw noise from the seed, run
Euler or Heun steps of the DiT under classifier-free guidance (the unconditional half sees the same
text with an all-False mask, as in training) or ping-pong steps (the ARC model's sampler: guidance 1,
fresh noise at every step drawn from the seed too), decode each latent with the codec to exactly
round(seconds * 44100) samples of 44.1 kHz stereo. The only post-processing is peak safety: a
decoded peak above 0 dBFS is scaled down to -1 dBFS, so a file written in 16 bits never clips.

With a pitch prior and a bundle trained with pitch hints (config `pitch_hint`), the note the prior names
(P(no steady pitch) < 1/2) is also given as the steady-pitch hint control (pipelines.controls.pitch_hint:
log_f0 at that semitone, voicing left to the model). `self.last_pitch_midi` says what it chose.

With a tempo prior (a DiT whose config has tempo_classes), the prompt's tempo is read by that learned
head, not parsed: where it finds a steady pulse (P(no pulse) < 1/2), its most likely BPM becomes the
beat-phase control on every frame (downbeat at 0; `tempo_controls`), in both halves of guidance, so the
beat lands on a grid and text still decides everything else. `self.last_tempo_bpm` says what it chose.

How the DiT runs (bf16, int8, torch.compile, threads, device) is load_generator's keywords, described in
pipelines/inference.py; `gen.options` holds them.

Randomness comes only from the seed: the same settings give bit-identical audio, and variation i of
a batch uses seed + i, so it can be remade alone.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
import time
import unicodedata
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from pipelines.audio import Audio, peak_safe
from pipelines.codec import Codec, load_codec
from pipelines.controls import CONTROL_GROUPS, CONTROL_NAMES, beat_grid_controls, pitch_hint
from pipelines.dit import DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.inference import InferenceOptions, apply_threads, sampling_model
from pipelines.samplers import (
    cfg_model,
    latent_noise,
    pingpong_times,
    rf_times,
    sample_euler,
    sample_heun,
    sample_pingpong,
)
from pipelines.text_encoder import TextEncoder

SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "pingpong": sample_pingpong}
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 1000
MAX_VARIATIONS = 16
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1 - MAX_VARIATIONS  # variation i uses seed + i, which must stay a valid torch seed
SETTINGS_FORMAT = 1  # version of the settings file written beside generated audio
PULSE_THRESHOLD = 0.5  # the tempo prior's P(no steady pulse) below which generation follows its tempo
PITCHED_THRESHOLD = 0.5  # the pitch prior's P(no steady pitch) below which generation hints its note


def default_generator_path() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / "generator"


@dataclass
class GenerationSettings:
    """Everything that decides a generation's audio, given the model: enough to make it again."""

    prompt: str
    seconds: float
    steps: int
    seed: int
    guidance: float
    sampler: str


SETTINGS_TYPES = {
    "prompt": str,
    "seconds": int | float,
    "steps": int,
    "seed": int,
    "guidance": int | float,
    "sampler": str,
}
assert set(SETTINGS_TYPES) == {f.name for f in fields(GenerationSettings)}


class Generator:
    """A loaded generator bundle. `generate` makes one sound, `generate_variations` several at once."""

    def __init__(
        self,
        dit: DiT,
        codec: Codec,
        text_encoder: TextEncoder,
        config: dict,
        *,
        bf16: bool | None = None,
        int8: bool = False,
        compile: bool = False,
        threads: int | None = None,
        device: str = "cpu",
        bundle_path: Path | None = None,
        bundle_hash: str | None = None,
        base_path: Path | None = None,
    ):
        self.options = InferenceOptions(bf16, int8, compile, threads, device).check()
        apply_threads(self.options)
        self.dit = dit.eval()
        self.codec = codec
        self.text_encoder = text_encoder
        self.config = config
        self.bf16 = self.options.bf16  # decided: None became native_bf16(device)
        self.bundle_path = bundle_path
        self.bundle_hash = bundle_hash
        self.base_path = base_path  # a LoRA adapter's base generator (bundle_path is then the adapter)
        # what the samplers run: a bf16 (or int8, compiled, on-device) copy, or the DiT itself
        self._sampling_dit = sampling_model(self.dit, self.options)
        self.last_settings: GenerationSettings | None = None
        self.last_tempo_bpm: float | None = None
        self.last_pitch_midi: int | None = None
        self.timings: dict[str, float] = {}

    @property
    def max_seconds(self) -> float:
        return float(self.dit.cfg.max_seconds)

    @property
    def segment_frames(self) -> int:
        """The length of the crops the DiT was trained on, in latent frames. A crop cut from a longer clip
        was this long with `seconds` saying this length: that is how the model was shown a sound that goes
        on past the window (pipelines.conditioned.Conditions.continues)."""
        return int(self.config.get("segment_frames", 259))

    @property
    def time_shift(self) -> float:
        """The sampling grid's shift toward high noise, as the model was trained (1: none)."""
        return float(self.config.get("time_shift", 1.0))

    @property
    def noise_offset(self) -> float:
        """The offset-noise share the model was trained with (pipelines.samplers.latent_noise; 0: none)."""
        return float(self.config.get("noise_offset", 0.0))

    @property
    def measured_channels(self) -> int:
        """The codec's measured latent channels (level, log-f0, voicing): guidance leaves them alone."""
        return int(self.codec.cfg.measured_dim)

    @torch.no_grad()
    def prompt_tempo(self, tokens: torch.Tensor, mask: torch.Tensor) -> float | None:
        """The tempo prior's BPM for one encoded prompt (tokens [1, L, D], mask [1, L]), or None where it
        hears no steady pulse (or the model has no tempo prior)."""
        cfg = self.dit.cfg
        if not cfg.tempo_classes:
            return None
        k = _prior_pick(self.dit.tempo_logits(tokens, mask), PULSE_THRESHOLD)
        return None if k is None else float(cfg.tempo_low + k)

    @torch.no_grad()
    def prompt_pitch(self, tokens: torch.Tensor, mask: torch.Tensor) -> int | None:
        """The pitch prior's note (MIDI) for one encoded prompt, where the bundle was trained with pitch hints
        and the prior hears a steady pitch; otherwise None."""
        cfg = self.dit.cfg
        if not cfg.pitch_classes or not self.config.get("pitch_hint"):
            return None
        k = _prior_pick(self.dit.pitch_logits(tokens, mask), PITCHED_THRESHOLD)
        return None if k is None else cfg.pitch_low + k

    @property
    def default_steps(self) -> int:
        return int(self.config.get("steps", 50))

    @property
    def default_guidance(self) -> float:
        return float(self.config.get("guidance", 4.0))

    @property
    def default_sampler(self) -> str:
        return str(self.config.get("sampler", "euler"))

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # ---------------------------------------------------------------- public calls

    def generate(
        self,
        prompt: str,
        *,
        seconds: float = 10.0,
        steps: int | None = None,
        seed: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        callback=None,
    ) -> Audio:
        """One sound for `prompt`: 44.1 kHz stereo Audio of exactly round(seconds * 44100) samples.

        steps, guidance and sampler default to the bundle's; seed None draws a random seed, which is
        recorded with the other settings in `self.last_settings`. `callback({"i", "t", "x", "denoised"})`
        is called once per step (progress bars). A peak above 0 dBFS is scaled down to -1 dBFS.
        """
        return self.generate_variations(
            prompt,
            variations=1,
            seconds=seconds,
            steps=steps,
            seed=seed,
            guidance=guidance,
            sampler=sampler,
            callback=callback,
        )[0]

    def generate_variations(
        self,
        prompt: str,
        *,
        variations: int = 4,
        seconds: float = 10.0,
        steps: int | None = None,
        seed: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        callback=None,
    ) -> list[Audio]:
        """`variations` sounds for `prompt`, sampled as one batch; variation i is what `generate` gives
        with seed + i (up to float rounding that can differ between batch sizes). Otherwise as `generate`.
        """
        if isinstance(variations, bool) or not isinstance(variations, int):
            raise BadInput(f"variations must be a whole number, not {variations!r}.")
        if not 1 <= variations <= MAX_VARIATIONS:
            raise BadInput(f"variations must be between 1 and {MAX_VARIATIONS}, not {variations}.")
        settings = self.settings(
            prompt, seconds=seconds, steps=steps, seed=seed, guidance=guidance, sampler=sampler
        )
        self.last_settings = settings
        return self._run(settings, variations, callback)

    def settings(
        self,
        prompt: str,
        *,
        seconds: float = 10.0,
        steps: int | None = None,
        seed: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
    ) -> GenerationSettings:
        """The checked settings of a call, with the bundle's defaults and a random seed filled in."""
        if prompt is not None and not isinstance(prompt, str):
            raise BadInput(f"The prompt must be text, not {type(prompt).__name__}.")
        if prompt is None or not any(c.isprintable() and not c.isspace() for c in prompt):
            # only spaces or invisible characters: the text encoder would see an empty prompt
            raise BadInput("The prompt is empty; describe the sound you want, e.g. 'a warm cello note'.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadInput(
                f"The prompt is {len(prompt)} characters long; keep it to at most {MAX_PROMPT_CHARS}."
            )
        # a null byte or an escape code is never meant, and unsafe in logs and terminals
        control = next((c for c in prompt if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
        if control is not None:
            raise BadInput(
                f"The prompt holds the control character U+{ord(control):04X}; remove it and describe the "
                "sound in plain text."
            )
        if not _is_number(seconds) or not 0 < seconds <= self.max_seconds:
            raise BadInput(
                f"seconds must be above 0 and at most {self.max_seconds:g} (this model's longest), "
                f"not {seconds!r}."
            )
        steps = self.default_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise BadInput(f"steps must be a whole number from 1 to {MAX_STEPS}, not {steps!r}.")
        guidance = self.default_guidance if guidance is None else guidance
        sampler = self.default_sampler if sampler is None else sampler
        check_sampling(sampler, guidance)
        if seed is None:
            seed = secrets.randbelow(2**31)  # not from torch's global generator: a call never moves it
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise BadInput(f"The seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}.")
        return GenerationSettings(prompt, float(seconds), steps, seed, float(guidance), sampler)

    # ---------------------------------------------------------------- sampling

    def _run(self, s: GenerationSettings, variations: int, callback) -> list[Audio]:
        started = time.perf_counter()
        n_samples = max(1, round(s.seconds * self.sample_rate))
        frames = -(-n_samples // self.codec.cfg.latent_hop)  # ceil(seconds * latent_rate), in integers

        text = self.text_encoder.encode([s.prompt])
        text_done = time.perf_counter()

        tokens = text.tokens.expand(variations, -1, -1)
        mask = text.mask.expand(variations, -1)
        length = torch.full((variations,), frames / self.codec.latent_rate)
        cond = {"text": tokens, "text_mask": mask, "seconds": length}
        uncond = {"text": tokens, "text_mask": torch.zeros_like(mask), "seconds": length}
        self.last_tempo_bpm = self.prompt_tempo(text.tokens, text.mask)
        self.last_pitch_midi = self.prompt_pitch(text.tokens, text.mask)
        values, present = torch.zeros(len(CONTROL_NAMES), frames), torch.zeros(len(CONTROL_NAMES), frames)
        if self.last_tempo_bpm is not None:
            values, present = tempo_controls(self.last_tempo_bpm, frames, self.codec.latent_rate)
        if self.last_pitch_midi is not None:
            hint, hinted = pitch_hint(self.last_pitch_midi, frames)
            values, present = values + hint, present + hinted  # the two touch different channels
        if bool(present.any()):
            given = {
                "controls": values[None].expand(variations, -1, -1),
                "control_mask": present[None].expand(variations, -1, -1),
            }
            cond, uncond = {**cond, **given}, {**uncond, **given}
        generators = [torch.Generator().manual_seed(s.seed + i) for i in range(variations)]
        shape = (1, self.codec.channels, frames)
        noise = torch.cat([latent_noise(shape, g, self.noise_offset) for g in generators])
        model = cfg_model(
            self._sampling_dit, cond, uncond, s.guidance, unguided_channels=self.measured_channels
        )
        with torch.no_grad():  # not inference_mode: see pipelines/dit.py
            if s.sampler == "pingpong":  # its fresh noise continues each variation's own generator
                z = sample_pingpong(
                    model,
                    noise,
                    pingpong_times(s.steps),
                    callback=callback,
                    generator=generators,
                    noise_offset=self.noise_offset,
                )
            else:
                z = SAMPLERS[s.sampler](
                    model, noise, rf_times(s.steps, shift=self.time_shift), callback=callback
                )
        dit_done = time.perf_counter()

        out = []
        for i in range(variations):
            audio = self.codec.decode(z[i], n_samples=n_samples)
            if audio.samples.size and float(abs(audio.samples).max()) > 1.0:
                audio = peak_safe(audio, -1.0)
            out.append(audio)
        done = time.perf_counter()
        self.timings = {
            "text_s": text_done - started,
            "dit_s": dit_done - text_done,
            "dit_step_ms": 1e3 * (dit_done - text_done) / s.steps,
            "decode_s": done - dit_done,
            "total_s": done - started,
        }
        return out


def tempo_controls(bpm: float, frames: int, frame_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [8, frames], presence [8, frames]) holding only the beat group: a pulse at `bpm` from a beat
    at 0 s, measured as training measured clips with known beats (pipelines.controls.beat_grid_controls).
    Cached per (bpm, frames, rate), though the grid costs well under a millisecond now."""
    values, present = _tempo_controls(float(bpm), int(frames), float(frame_rate))
    return values.clone(), present.clone()


@functools.lru_cache(maxsize=64)
def _tempo_controls(bpm: float, frames: int, frame_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    seconds = frames / frame_rate
    beats = [60.0 * k / bpm for k in range(int(math.ceil(seconds * bpm / 60.0)) + 2)]
    controls = beat_grid_controls(beats, [], frames, frame_rate)
    present = torch.zeros(len(CONTROL_NAMES), 1)
    present[list(CONTROL_GROUPS["beat"])] = 1.0
    present = present.expand(-1, frames).contiguous()
    return torch.from_numpy(controls.values).float() * present, present


def _prior_pick(logits: torch.Tensor, none_threshold: float) -> int | None:
    """A prompt prior's most likely class for one prompt (logits [1, classes + 1]), or None where the last
    class ("none") has at least `none_threshold` of the probability."""
    probs = logits[0].float().softmax(dim=-1)
    return None if float(probs[-1]) >= none_threshold else int(probs[:-1].argmax())


def check_sampling(sampler: str | None = None, guidance: float | None = None) -> None:
    """Refuse an unknown sampler or a guidance scale out of range, in one sentence (None: not given)."""
    if sampler is not None and sampler not in SAMPLERS:
        raise BadInput(f"Unknown sampler {sampler!r}; use one of {', '.join(sorted(SAMPLERS))}.")
    if guidance is not None and (not _is_number(guidance) or not 0 <= guidance <= MAX_GUIDANCE):
        raise BadInput(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, not {guidance!r}.")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- loading


def load_generator(
    bundle: str | Path | None = None,
    *,
    bf16: bool | None = None,
    base: str | Path | None = None,
    int8: bool = False,
    compile: bool = False,
    threads: int | None = None,
    device: str = "cpu",
) -> Generator:
    """The generator of a bundle folder (None: the bundled default in assets/generator).

    bf16, int8, compile, threads and device say how its DiT runs (pipelines/inference.py); they are
    checked before anything loads.

    A LoRA adapter bundle (pipelines/lora.py) gives its base generator with the adapter merged into the DiT:
    the base is `base` when given (it must be the generator the adapter was trained on, by hash), else found
    by hash at its recorded path, beside the adapter or in assets/. The generator then names the adapter as
    its bundle (settings files record the adapter) and the base as `base_path`.
    """
    from pipelines.bundle import bundle_hash, load_bundle
    from pipelines.lora import ADAPTER_KIND, apply_adapter, find_base

    options = InferenceOptions(bf16, int8, compile, threads, device).check()
    path = Path(bundle) if bundle is not None else default_generator_path()
    if not (path / "model.json").is_file():
        if bundle is None:
            raise BadInput(
                "No generator is bundled yet; train one with `soundloom train --recipe static`, export it and pass --model."
            )
        if not path.exists():
            raise BadInput(f"The model bundle folder '{path}' does not exist; check the path.")
        raise BadInput(
            f"'{path}' is not a soundloom model bundle (it has no model.json); pass the folder of an "
            "exported generator bundle."
        )
    b = load_bundle(path)
    adapter = None
    if b.kind == ADAPTER_KIND:
        adapter, b = b, load_bundle(find_base(b, base))
    elif base is not None:
        raise BadInput(
            f"'{path}' is not a LoRA adapter bundle, so it takes no base; pass the adapter's folder."
        )
    if b.kind != "generator":
        raise BadInput(
            f"The bundle '{path}' is a {b.kind or 'unnamed'} bundle, not a generator; pass a generator "
            "bundle (made by `soundloom train --recipe static` and `soundloom bundle export`)."
        )
    config = b.config
    try:
        dit_config = DiTConfig(**config["dit"])
    except (KeyError, TypeError) as e:
        raise BadInput(
            f"The generator bundle '{path}' has a DiT config this soundloom does not know ({e}); re-export it."
        ) from None
    dit = DiT(dit_config)
    b.load_into("dit", dit)
    if adapter is not None:
        apply_adapter(dit, adapter)  # checks that it fits this DiT (config, layers, shapes)
        config = adapter.config  # what the adapter's run trained with
    codec = load_codec(b.component("codec").path, bf16=bf16)
    if codec.channels != dit_config.latent_channels:
        raise BadInput(
            f"The generator bundle '{path}' expects {dit_config.latent_channels} latent channels but its "
            f"codec has {codec.channels}; re-export the bundle with the codec it was trained on."
        )
    text_encoder = TextEncoder.load(config.get("text_encoder"))
    if text_encoder.dim != dit_config.text_dim:
        raise BadInput(
            f"The generator bundle '{path}' expects {dit_config.text_dim}-d text but its text encoder gives "
            f"{text_encoder.dim}; re-export the bundle with the encoder it was trained on."
        )
    named = adapter or b
    return Generator(
        dit,
        codec,
        text_encoder,
        config,
        **asdict(options),
        bundle_path=named.path,
        bundle_hash=bundle_hash(named.path),
        base_path=b.path if adapter is not None else None,
    )


# ---------------------------------------------------------------- settings files (`generate --from`)


def settings_path(audio_path: str | Path) -> Path:
    """The settings file beside a generated file: `song.wav` -> `song.wav.json` (a `.json` is itself)."""
    path = Path(audio_path)
    return path if path.suffix.lower() == ".json" else path.with_name(path.name + ".json")


def settings_record(settings: GenerationSettings, generator: Generator) -> dict:
    """What a settings file holds: the settings plus the model bundle they were made with."""
    return {
        "soundloom_settings": SETTINGS_FORMAT,
        **asdict(settings),
        "model": str(generator.bundle_path) if generator.bundle_path else None,
        "model_hash": generator.bundle_hash,
    }


def read_settings(audio_path: str | Path) -> tuple[GenerationSettings, dict]:
    """The settings that made `audio_path` (and the whole record): from the settings file beside it, or,
    where there is none, from the record embedded in the file itself (pipelines.export); BadInput when
    neither is there or what is there is malformed."""
    path = settings_path(audio_path)
    if path.is_file():
        where = f"The settings file '{path}'"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadInput(f"{where} is not valid JSON; generate the sound again.") from None
    else:
        from pipelines.export import read_embedded

        where = f"The settings embedded in '{audio_path}'"
        record = read_embedded(audio_path) if path != Path(audio_path) else None
        if record is None:
            raise BadInput(
                f"No settings file '{path}' found and '{Path(audio_path).name}' holds no embedded soundloom "
                "settings; --from reads what `soundloom generate` writes."
            )
    if not isinstance(record, dict) or record.get("soundloom_settings") != SETTINGS_FORMAT:
        source = path if path.is_file() else Path(audio_path)
        raise BadInput(
            f"'{source}' is not a soundloom settings file; give a file that `soundloom generate` wrote."
        )
    for name, kind in SETTINGS_TYPES.items():
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadInput(f"{where} lacks a valid '{name}'; generate the sound again to remake it.")
    return GenerationSettings(**{name: record[name] for name in SETTINGS_TYPES}), record
