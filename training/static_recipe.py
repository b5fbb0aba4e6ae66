"""Recipe `static`: trains the generator's DiT (pipelines/dit.py) by rectified flow on cached latents.

x_t = (1 - t) x0 + t eps with t ~ logit-normal(t_mean, t_std), and the DiT regresses v = eps - x0 (MSE
over the frames it is not given). Every condition is dropped at random, so one model serves all
pipelines and classifier-free guidance:
  - text: the sample's caption (a random one of its record's captions), dropped with `p_drop_text`;
  - controls: each group of pipelines.controls dropped with `p_drop_control_group`, and all of them
    with `p_drop_controls`;
  - known frames: with `p_known` a random prefix (continuation / extend), inner span, or everything but
    an inner span (repaint) of the clip's frames is given clean;
  - seconds: the clip's true length; clips shorter than `segment_frames` are padded with the codec's
    latent of silence (the model learns to fall silent after `seconds`), longer ones are cropped;
  - pitch (a DiT with a pitch prior, `dit.pitch_classes` > 0): the clip's steady pitch measured from its
    controls (pipelines.controls.steady_pitch) is given as a class, or replaced by the prior's prediction
    from the caption (`p_pitch_from_text`, what generation uses), or dropped (`p_drop_pitch`, and always
    with the text). The prior itself learns by cross-entropy on the batch's captions plus
    `pitch_prior_captions` more per step, weighted by `pitch_prior_weight`. With `p_pitch_hint`, a clip
    with a steady pitch gets instead of its pitch controls the hint generation gives from the prior's pick
    (pipelines.controls.pitch_hint: log_f0 constant at its semitone, voicing absent): the class embedding
    alone brought generated notes within 2-3 semitones after 1500 steps, while a control is copied exactly.
  - tempo (a DiT with a tempo prior, `dit.tempo_classes` > 0): no DiT input (the pulse reaches the DiT as
    the beat-phase control, which training gives with the other controls); only the prior learns, by
    cross-entropy against the clip's known BPM (params.bpm; "no steady pulse" for corpus clips without one;
    clips without params are left out), softened over neighbouring BPM (`TEMPO_LABEL_SIGMA`), on the batch's
    captions plus `tempo_prior_captions` more per step, half of those from a pool of `tempo_caption_pool`
    captions written by the corpus captioner for the train clips' params at other tempos (so every BPM
    in range is seen in words, not only the corpus's), weighted by `tempo_prior_weight`. With
    `p_grid_only`, a clip with a beat grid gets its beat and bar controls and no loudness or onsets: the
    condition generation gives (the tempo prior's grid alone), which group dropout alone made rare (~2%).

The measured latent channels of the codec (level, log-f0, voicing) can weigh more in the loss
(`measured_weight`): each is one channel of 32, yet a wrong pitch or level is what a listener hears first.

LoRA fine-tuning (`lora_rank` > 0, with --init): the --init generator's weights stay frozen and only
rank-`lora_rank` adapters (pipelines/lora.py: scaled by `lora_alpha / lora_rank`, on the layers of
`lora_targets`) learn; the prompt priors stay frozen too (why: pipelines/lora.py). Everything else (data,
conditions, losses) is as above. `bundle export` of such a run writes an adapter bundle recorded against
the --init generator's hash. 0 (the default) trains every weight, from --init or from scratch.

A full fine-tune from --init can export a blend in weight space (`keep_change` below 1): the --init weights
plus that share of the run's change, w = w_init + keep_change (w_run - w_init), for every DiT tensor the
--init generator has. Blending a fine-tune with its start model keeps more of the start's generality than
the share of the change it gives up (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022). On a
drum kit here (the quick fine-tune at lr 2e-4), keeping 0.8 of the change gave up 12% of the run's gain on
the kit's held-out sounds and 60% of its drift on the dev set (judge FD: kit -30.0% -> -26.4%, dev +12.1%
-> +4.9%; README, "Train tab"). The run and its checkpoints are unchanged; only the export blends.

Replay distillation (`distill_replay` above 0, with --init and `extra_data`): a fine-tune replays a corpus
beside the user's clips so the model keeps what it knew, and the replayed clips' target moves from their
own eps - x0 toward the --init generator's velocity at the same x_t and conditions by that share: the
start model's prediction is the expectation of the noisy eps - x0 target the base was trained on, so at 1
those clips ask the run to keep the start model's function where it has no reason to change, without the
target's noise pulling it about (learning without forgetting, Li & Hoiem 2016, applied to replay). The
frozen start DiT runs once per step on the replayed rows only. On a drum kit here (the quick fine-tune,
2000 steps, lr 1e-4): kit judge FD -28.3% / dev set +9.7% without it, -34% / +2.2% with it at 1 (README,
"Train tab").

It reads only the corpus manifest and the latent cache (`soundloom dataset encode DIR` makes it), never
audio. All per-sample draws come from torch's global generator, which the trainer reseeds every step,
in a fixed order, so a resumed run sees the same crops, captions, drops, times and noise.

It trains on the trainer's device (cpu, cuda, mps: wherever the trainer put the modules). Every random
tensor is still drawn on the CPU, from the same generator in the same order, and moved there only then:
a CPU run is bit for bit what it was before the recipe could move, and a GPU run draws the same numbers.
The text encoder and the codec stay on the CPU (caption embeddings are cached; the codec only decodes
previews).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from pipelines.codec import Codec, default_codec_path, load_codec
from pipelines.controls import CONTROL_GROUPS, CONTROL_NAMES, drop_controls, pitch_hint, steady_pitch
from pipelines.dit import PITCH_ABSENT, PITCH_FROM_TEXT, PITCH_NONE, X0_MIN_T, DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.lora import DEFAULT_TARGETS, add_lora, check_lora_settings, load_base_into
from pipelines.samplers import latent_noise
from pipelines.text_encoder import DEFAULT_NAME, TextEncoder
from training.recipes import model_settings, recipe_settings

DEFAULTS = {
    "codec": None,  # codec bundle folder whose latent cache is read; None: the bundled assets/codec
    "text_encoder": DEFAULT_NAME,  # or a local folder of another transformers encoder
    "dit": {},  # DiTConfig overrides (latent_channels, text_dim and controls follow the codec and encoder)
    "segment_frames": 259,  # ~6 s at 43.07 Hz
    "categories": None,  # train only on these corpus categories (e.g. ["note"] for the pitch go/no-go); None: all
    "extra_data": [],  # more corpus folders (each encoded for the same codec) whose train clips join --data's
    # --data's clips count this many times in every epoch: a fine-tune on a few dozen sounds with the
    # bundled corpus as extra_data (replay, so the model keeps what it knew) sets their share of the batches
    "data_repeat": 1,
    # replayed (extra_data) clips learn toward the start model's own velocity instead of their noisy
    # eps - x0 target, by this share (0: off; needs --init): the run keeps the start model's function there
    "distill_replay": 0.0,
    "t_mean": 0.0,  # logit-normal timesteps: t = sigmoid(t_mean + t_std * n)
    "t_std": 1.0,
    # SD3's shift toward high noise, in training (the logit mean moves by ln(shift)) and in sampling (the
    # bundle's time grid): a latent of hundreds of frames that hold one note keeps its pitch and level
    # readable through noise that hides any single frame (averaging frames beats the noise down), so without
    # it the model reads those from the starting noise and ignores the prompt.
    "time_shift": 1.0,
    "noise_offset": 0.0,  # offset noise (pipelines.samplers.latent_noise), in training and in the bundle's sampling
    "p_drop_text": 0.1,
    "p_drop_control_group": 0.5,
    "p_drop_controls": 0.3,
    "p_known": 0.5,
    "p_pitch_from_text": 0.5,
    "p_drop_pitch": 0.1,
    "p_pitch_hint": 0.0,
    "p_grid_only": 0.0,
    "pitch_prior_weight": 0.1,
    "pitch_prior_captions": 48,
    "tempo_prior_weight": 0.1,
    "tempo_prior_captions": 48,
    "tempo_caption_pool": 2048,
    "measured_weight": 1.0,
    "preview_steps": 8,
    "preview_guidance": 4.0,
    # LoRA (pipelines/lora.py): 0 trains every weight; above 0 only adapters of this rank learn, on the
    # layers of lora_targets, beside the frozen --init generator. Alpha stays put when the rank changes, as
    # in the LoRA paper, so a higher rank needs no other learning rate.
    "lora_rank": 0,
    "lora_alpha": 8.0,
    "lora_targets": list(DEFAULT_TARGETS),
    # the share of a full fine-tune's change from its --init weights that the exported bundle keeps (1: all)
    "keep_change": 1.0,
}
PROBABILITIES = (
    "p_drop_text", "p_drop_control_group", "p_drop_controls", "p_known", "p_pitch_from_text", "p_drop_pitch",
    "p_pitch_hint", "p_grid_only",
)  # fmt: skip
KNOWN_FRACTION = (0.1, 0.9)  # a known span covers this share of the clip's frames
EXPORT_SAMPLER = {"sampler": "euler", "steps": 50, "guidance": 4.0}
TEMPO_UNKNOWN = -1  # a clip without params: its tempo is not known, and it does not teach the tempo prior
TEMPO_LABEL_SIGMA = 1.0  # BPM: the tempo prior's target is a normal over whole-BPM classes around the truth
TEMPO_POOL_SEED = 20261122  # the synthetic caption pool is the same in every run on the same data


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights are: the device the trainer moved it to, on which its inputs must be."""
    return next(module.parameters()).device


def to_device(tensors: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on `device` (the same objects when they are there already, as on the CPU)."""
    return {key: value.to(device) for key, value in tensors.items()}


def logit_normal(n: int, mean: float, std: float) -> torch.Tensor:
    """n flow times in (0, 1) whose logits are normal: most weight mid-way, where the velocity is hardest."""
    return torch.sigmoid(mean + std * torch.randn(n))


def known_spans(lengths: list[int], frames: int, p_known: float) -> torch.Tensor:
    """Known-frame masks [B, 1, frames]: with p_known a prefix, an inner span, or all but an inner span of
    the first lengths[i] frames (extend / infill / repaint); otherwise none."""
    b = len(lengths)
    use, kind, size, where = torch.rand(b) < p_known, torch.randint(0, 3, (b,)), torch.rand(b), torch.rand(b)
    mask = torch.zeros(b, 1, frames)
    for i, n in enumerate(lengths):
        if not use[i]:
            continue
        low, high = KNOWN_FRACTION
        span = max(1, min(n - 1, round((low + (high - low) * float(size[i])) * n)))
        start = 0 if kind[i] == 0 else int(float(where[i]) * (n - span + 1))
        start = min(start, n - span)
        mask[i, 0, start : start + span] = 1.0
        if kind[i] == 2:  # repaint: known everywhere in the clip except the span
            mask[i, 0, :n] = 1.0 - mask[i, 0, :n]
    return mask


def rf_loss(
    v: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample MSE [B] over the frames with weight 1 (weight [B, 1, T], broadcast over channels), each
    channel's squared error times `channel_weight` ([C] or per sample [B, C]; default 1) and divided by C."""
    err = (v.float() - target).square() * weight
    if channel_weight is not None:
        err = err * channel_weight[..., None]
    return err.sum(dim=(1, 2)) / (weight.sum(dim=(1, 2)) * v.shape[1]).clamp(min=1.0)


def pitch_class(midi: float | None, cfg: DiTConfig) -> int:
    """A steady pitch (MIDI, or None) as the DiT's pitch input: its semitone class, or PITCH_NONE (also
    for pitches outside the classes' range)."""
    if midi is None:
        return PITCH_NONE
    k = round(midi) - cfg.pitch_low
    return k if 0 <= k < cfg.pitch_classes else PITCH_NONE


def tempo_class(bpm: float | None, cfg: DiTConfig) -> int:
    """A clip's known tempo as the tempo prior's target: its whole-BPM class, or tempo_classes ("no steady
    pulse") when it has none; a tempo outside the classes' range is TEMPO_UNKNOWN (left out)."""
    if bpm is None:
        return cfg.tempo_classes
    k = round(float(bpm)) - cfg.tempo_low
    return k if 0 <= k < cfg.tempo_classes else TEMPO_UNKNOWN


def tempo_targets(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Soft targets [B, classes + 1] for tempo labels [B] (class or `classes` for no pulse): a normal of
    TEMPO_LABEL_SIGMA BPM around a tempo (the prior's errors are ordinal: 121 for 120 is nearly right)."""
    grid = torch.arange(classes + 1, dtype=torch.float32, device=labels.device)
    pulse = labels < classes
    weights = torch.exp(-0.5 * ((grid[None] - labels[:, None].float()) / TEMPO_LABEL_SIGMA) ** 2)
    weights[:, classes] = 0.0
    none = torch.zeros(len(labels), classes + 1, device=labels.device)
    none[:, classes] = 1.0
    out = torch.where(pulse[:, None], weights, none)
    return out / out.sum(dim=1, keepdim=True)


class StaticRecipe:
    name = "static"
    devices = ("cpu", "cuda", "mps")

    def __init__(self, config: dict, data_dir: Path):
        self.config = cfg = recipe_settings("static", config, DEFAULTS)
        model_settings("dit", cfg["dit"], set(DiTConfig.__dataclass_fields__))
        for name in PROBABILITIES:
            value = cfg[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise BadInput(f"{name} must be a probability between 0 and 1 (got {cfg[name]}).")
        offset = cfg["noise_offset"]
        if isinstance(offset, bool) or not isinstance(offset, int | float) or not 0.0 <= offset <= 10.0:
            raise BadInput(f"noise_offset must be a number from 0 to 10 (0 is plain noise; got {offset}).")
        shift = cfg["time_shift"]
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0.1 <= shift <= 100.0:
            raise BadInput(f"time_shift must be a number from 0.1 to 100 (1 is no shift; got {shift}).")
        for name in ("pitch_prior_weight", "tempo_prior_weight", "measured_weight"):
            value = cfg[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 100.0:
                raise BadInput(f"{name} must be a number from 0 to 100 (got {value}).")
        repeat = cfg["data_repeat"]
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 10000:
            raise BadInput(f"data_repeat must be a whole number from 1 to 10000 (got {repeat!r}).")
        for name in ("pitch_prior_captions", "tempo_prior_captions", "tempo_caption_pool"):
            extra = cfg[name]
            if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra <= 65536:
                raise BadInput(f"{name} must be a whole number from 0 to 65536 (got {extra}).")
        segment = cfg["segment_frames"]
        if not (isinstance(segment, int) and segment >= 4):
            raise BadInput(f"segment_frames must be a whole number of at least 4 (got {segment}).")
        check_lora_settings(cfg["lora_rank"], cfg["lora_alpha"])
        keep = cfg["keep_change"]
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
            raise BadInput(f"keep_change must be a number above 0 and at most 1 (got {keep!r}).")
        if keep < 1.0 and cfg["lora_rank"]:
            raise BadInput(
                "keep_change blends a full fine-tune with its --init weights; a LoRA run's adapters are "
                "kept apart from those, so set keep_change 1 (or lora_rank 0)."
            )
        distill = cfg["distill_replay"]
        if isinstance(distill, bool) or not isinstance(distill, int | float) or not 0.0 <= distill <= 1.0:
            raise BadInput(f"distill_replay must be a number from 0 to 1 (got {distill!r}).")
        if distill > 0 and not cfg["extra_data"]:
            raise BadInput(
                "distill_replay acts on replayed clips and this run replays none; name the start model's "
                "corpus in extra_data, or set distill_replay 0."
            )
        if cfg["lora_rank"] and self.name != "static":
            raise BadInput(
                f"lora_rank is for --recipe static; the {self.name} recipe trains every weight, so set lora_rank 0."
            )
        self.data_dir = Path(data_dir)
        extra = cfg["extra_data"]
        if not isinstance(extra, list) or not all(isinstance(d, str) and d for d in extra):
            raise BadInput(f"extra_data must be a list of corpus folders (got {extra!r}).")
        self.data_dirs = [self.data_dir, *(Path(d) for d in extra)]
        self.codec_path = Path(cfg["codec"]) if cfg["codec"] else default_codec_path()

        # Loading the codec and the text encoder builds modules (which draws random init weights) before
        # loading theirs: keep those draws out of the seeded stream, so the DiT's init depends on the seed only.
        with torch.random.fork_rng(devices=[]):
            self.codec: Codec = load_codec(self.codec_path)
            self.text_encoder = TextEncoder.load(cfg["text_encoder"])
        dit = {
            "latent_channels": self.codec.channels,
            "text_dim": self.text_encoder.dim,
            "controls": len(CONTROL_NAMES),
        }
        for key, value in dit.items():
            if cfg["dit"].get(key, value) != value:
                raise BadInput(
                    f"dit.{key} must be {value} to fit the codec and text encoder (got {cfg['dit'][key]})."
                )
        self.dit_config = DiTConfig(**{**cfg["dit"], **dit})
        measured = self.codec.cfg.measured_dim
        if self.dit_config.x0_channels not in (0, measured):
            which = (
                f"or the codec's {measured} measured channels"
                if measured
                else "for a codec without measured channels"
            )
            raise BadInput(f"dit.x0_channels must be 0 {which} (got {self.dit_config.x0_channels}).")
        self.model = DiT(self.dit_config)
        # LoRA: adapters wrap the target layers and everything else is frozen; the base weights come from --init
        self.lora_layers: list[str] = []
        if cfg["lora_rank"]:
            self.lora_layers = add_lora(self.model, cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_targets"])
        # the --init generator (state_dict): a card's base_model, and what an adapter bundle is recorded against
        self.base: dict | None = None
        self.base_path: str | None = None
        self._start_dit: DiT | None = None  # distill_replay's teacher, loaded on first use
        weights = torch.ones(self.codec.channels)
        weights[self.codec.channels - self.codec.cfg.measured_dim :] = float(cfg["measured_weight"])
        self.channel_weight = weights
        self._data: list[dict] | None = None
        self._silence: torch.Tensor | None = None
        self._tempo_pool: list[tuple[str, int]] | None = None
        self._captions_warm = False
        self._skip_fitted = False
        self._tempo_known: list[int] | None = None

    # ---------------------------------------------------------------- data

    @property
    def data(self) -> list[dict]:
        """The train clips: record fields plus their cached latent, controls and presence, read once."""
        if self._data is None:
            self._data = self._read_cache()
        return self._data

    def _read_cache(self) -> list[dict]:
        own = self._read_corpus(self.data_dir) * self.config["data_repeat"]  # the same clips, counted again
        replayed = [clip for folder in self.data_dirs[1:] for clip in self._read_corpus(folder)]
        for clip in replayed:
            clip["replay"] = True
        data = own + replayed
        # every caption's embedding stays cached: the priors read many captions per step
        # recipes that do not train the tempo prior (arc) have no pool setting
        pool = self.config.get("tempo_caption_pool", 0) if self.dit_config.tempo_classes else 0
        self.text_encoder.cache_size = max(
            self.text_encoder.cache_size, 2 * sum(len(d["captions"]) for d in data) + 2 * pool
        )
        self._tempo_pool = self.tempo_caption_pool(data, pool) if pool else []
        return data

    def _warm_captions(self) -> None:
        """Every caption the run can draw, encoded in one batched pass instead of one at a time inside the
        first thousand steps. The first embed_text asks for it, so work that never embeds a caption (fitting
        the skips, exporting a checkpoint: ~80 s for the bundled corpus) never pays it."""
        if self._captions_warm:
            return
        captions = [c for d in self.data for c in d["captions"]] + [c for c, _ in self._tempo_pool or []]
        if len(captions) > 1000:
            print(f"Encoding {len(set(captions)):,} captions once (about 10 ms each)...", file=sys.stderr)
        self.text_encoder.warm(captions)
        self._captions_warm = True

    def tempo_caption_pool(self, data: list[dict], size: int) -> list[tuple[str, int]]:
        """`size` (caption, tempo class) pairs: the corpus captioner's words for train clips with a known
        tempo, re-described at a tempo drawn uniformly over the prior's classes; only captions that name
        that tempo are kept (the others could not tell it)."""
        from training.captions import captions_for

        cfg = self.dit_config
        rhythmic = [d for d in data if d.get("params") and d["params"].get("bpm")]
        if not rhythmic:
            return []
        rng = np.random.default_rng(TEMPO_POOL_SEED)
        pool: list[tuple[str, int]] = []
        for _ in range(20 * size):
            if len(pool) == size:
                break
            clip = rhythmic[int(rng.integers(len(rhythmic)))]
            k = int(rng.integers(cfg.tempo_classes))
            params = {**clip["params"], "bpm": float(cfg.tempo_low + k)}
            try:
                said = captions_for(params, clip["seconds"], params.get("brightness_hz") or 1000.0, rng)
            except KeyError:  # params the corpus captioner does not know (a user's folder): nothing to add
                continue
            named = [c for c in said if f"{cfg.tempo_low + k} BPM" in c]
            if named:
                pool.append((named[int(rng.integers(len(named)))], k))
        return pool

    def _read_corpus(self, data_dir: Path) -> list[dict]:
        """The train clips of one corpus folder with their cached latents and controls."""
        from training.corpus import read_manifest
        from training.latent_cache import is_current, latent_root, read_entry

        if not data_dir.is_dir():
            raise BadInput(f"The corpus folder {data_dir} does not exist; check --data and extra_data.")
        records = read_manifest(data_dir, split="train")
        if not records:
            raise BadInput(
                f"The corpus in {data_dir} has no train clips (clips are split by a hash of their "
                "material, about 80% train); add more sounds to it."
            )
        wanted = self.config["categories"]
        if wanted is not None:
            records = [r for r in records if r.get("params", {}).get("category") in set(wanted)]
            if not records:
                raise BadInput(
                    f"The corpus in {data_dir} has no train clips in the categories {list(wanted)}; "
                    "check the `categories` setting against the manifest's params.category."
                )
        root = latent_root(data_dir, self.codec)
        missing = [r["id"] for r in records if not is_current(root / f"{r['id']}.safetensors")]
        if missing:
            model = "" if self.config["codec"] is None else f" --model {self.codec_path}"
            raise BadInput(
                f"The latent cache in {root} lacks {len(missing)} of {len(records)} train clips (or holds them "
                f"without controls); run `soundloom dataset encode {data_dir}{model}` first."
            )
        data = []
        for rec in records:
            entry = read_entry(root / f"{rec['id']}.safetensors")
            midi = steady_pitch(entry["controls"], entry["controls_present"])
            params = rec.get("params") or {}
            tempo = tempo_class(params.get("bpm"), self.dit_config) if params else TEMPO_UNKNOWN
            data.append(
                {
                    "id": rec["id"],
                    "captions": list(rec["captions"]) or [""],
                    "z": entry["z"].half(),
                    "controls": entry["controls"].half(),
                    "present": entry["controls_present"],
                    "pitch": pitch_class(midi, self.dit_config),
                    "tempo": tempo,
                    # what the tempo prior's caption pool re-describes (clips with a known tempo only)
                    "params": params if params.get("bpm") and self.dit_config.tempo_classes else None,
                    "seconds": float(rec.get("seconds") or 0.0),
                }
            )
        return data

    @property
    def noise_offset(self) -> float:
        """The offset-noise share of the flow's noise (pipelines.samplers.latent_noise)."""
        return float(self.config["noise_offset"])

    @property
    def silence(self) -> torch.Tensor:
        """The codec's latent frame of silence [C, 1], the padding after a clip ends."""
        if self._silence is None:
            from pipelines.audio import Audio

            hop = self.codec.cfg.latent_hop
            z = self.codec.encode(Audio(np.zeros((2, 16 * hop), dtype=np.float32), self.codec.sample_rate))
            self._silence = z[:, 4:-4].mean(dim=1, keepdim=True)  # away from the STFT's edge frames
        return self._silence

    def embed_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, L, D], mask [B, L]) for captions; "" (or None) is no text: an all-False mask row.

        Each caption is encoded alone and in float32, so its embedding never depends on what shared its
        batch or on the trainer's autocast (a resumed run must see the same numbers).
        """
        rows = []
        with torch.autocast("cpu", enabled=False):
            self._warm_captions()  # float32 like the rest: the run's autocast must not reach the cache
            for caption in captions:
                rows.append(self.text_encoder.encode([caption]).tokens[0] if caption else None)
        longest = max([1] + [r.shape[0] for r in rows if r is not None])
        tokens = torch.zeros(len(captions), longest, self.text_encoder.dim)
        mask = torch.zeros(len(captions), longest, dtype=torch.bool)
        for i, r in enumerate(rows):
            if r is not None:
                tokens[i, : r.shape[0]] = r
                mask[i, : r.shape[0]] = True
        return tokens, mask

    def batch(self, indices: list[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Crops of `segment_frames` with their conditions on `device`, built on the CPU with every draw from
        torch's (seeded) global RNG, so any device sees the same batch."""
        cfg, frames = self.config, self.config["segment_frames"]
        b = len(indices)
        starts, picks = torch.rand(b), torch.rand(b)
        x0 = self.silence.expand(-1, frames).repeat(b, 1, 1)
        controls = torch.zeros(b, len(CONTROL_NAMES), frames)
        control_mask = torch.zeros(b, len(CONTROL_NAMES), frames)
        lengths, captions = [], []
        for i, index in enumerate(indices):
            clip = self.data[index]
            total = clip["z"].shape[1]
            n = min(total, frames)
            start = min(int(float(starts[i]) * (total - n + 1)), total - n)
            x0[i, :, :n] = clip["z"][:, start : start + n].float()
            controls[i, :, :n] = clip["controls"][:, start : start + n].float()
            control_mask[i, :, :n] = clip["present"].float()[:, None]
            lengths.append(n)
            options = clip["captions"]
            captions.append(options[min(int(float(picks[i]) * len(options)), len(options) - 1)])
        keep_text = torch.rand(b) >= cfg["p_drop_text"]
        captions = [c if keep else "" for c, keep in zip(captions, keep_text.tolist())]
        measured, measured_mask = controls.clone(), control_mask.clone()
        controls, control_mask = drop_controls(
            controls, control_mask, None, cfg["p_drop_control_group"], p_all=cfg["p_drop_controls"]
        )
        known_mask = known_spans(lengths, frames, cfg["p_known"])
        text, text_mask = self.embed_text(captions)
        # pitch: the measured class, the prior's guess from the caption, or absent (always without text)
        pitch = torch.tensor([self.data[i]["pitch"] for i in indices], dtype=torch.long)
        pitch_target = torch.where(pitch == PITCH_NONE, self.dit_config.pitch_classes, pitch)
        if self.dit_config.pitch_classes:  # no draws otherwise: runs without a prior keep their streams
            from_text, drop = torch.rand(b) < cfg["p_pitch_from_text"], torch.rand(b) < cfg["p_drop_pitch"]
            pitch = torch.where(from_text, PITCH_FROM_TEXT, pitch)
            pitch = torch.where(drop | ~keep_text, PITCH_ABSENT, pitch)
            if (
                cfg["p_pitch_hint"] > 0
            ):  # the steady pitch as generation hints it (pipelines.controls.pitch_hint)
                hint = (torch.rand(b) < cfg["p_pitch_hint"]) & (pitch_target < self.dit_config.pitch_classes)
                for i in torch.nonzero(hint).flatten().tolist():
                    n = lengths[i]
                    midi = self.dit_config.pitch_low + int(pitch_target[i])
                    values, present = pitch_hint(midi, n)
                    group = list(CONTROL_GROUPS["pitch"])
                    controls[i, group, :n], control_mask[i, group, :n] = values[group], present[group]
        if cfg["p_grid_only"] > 0:  # no draws otherwise: runs without it keep their streams
            # generation's own condition: the beat and bar grid (the tempo prior's pick), no loudness or
            # onsets. Left to group dropout alone, a clip met it ~2% of the time, and 4000 steps later the
            # generated onsets sat no nearer the grid than chance.
            grid = [*CONTROL_GROUPS["beat"], *CONTROL_GROUPS["bar"]]
            has_grid = measured_mask[:, CONTROL_GROUPS["beat"][0], 0] > 0
            level = [*CONTROL_GROUPS["loudness"], *CONTROL_GROUPS["onset"]]
            for i in torch.nonzero((torch.rand(b) < cfg["p_grid_only"]) & has_grid).flatten().tolist():
                controls[i, grid], control_mask[i, grid] = measured[i, grid], measured_mask[i, grid]
                controls[i, level], control_mask[i, level] = 0.0, 0.0
        batch = {
            "x0": x0,
            "pitch": pitch,
            "pitch_target": pitch_target,
            "tempo_target": torch.tensor([self.data[i]["tempo"] for i in indices], dtype=torch.long),
            "seconds": torch.tensor(lengths, dtype=torch.float32) / self.codec.latent_rate,
            "text": text,
            "text_mask": text_mask,
            "controls": controls,
            "control_mask": control_mask,
            "known_mask": known_mask,
        }
        if self.config.get("distill_replay", 0.0) > 0:
            batch["replay"] = torch.tensor([bool(self.data[i].get("replay")) for i in indices])
        return to_device(batch, device)

    # ---------------------------------------------------------------- recipe protocol

    def modules(self) -> dict[str, torch.nn.Module]:
        if self.dit_config.x0_channels and not self._skip_fitted:
            self.fit_control_skip(self.model)
            self.fit_rhythm_skip(self.model)
            self._skip_fitted = True
        return {"dit": self.model}

    @torch.no_grad()
    def fit_control_skip(self, dit: DiT, clips: int = 400) -> None:
        """Set the DiT's control skip (pipelines.dit) to the line from each control to the measured latent
        channel it measures: for log-f0 the exact one the two definitions give, for level and voicing the
        least-squares line over the frames of up to `clips` train clips where that control is present.
        Deterministic: the first clips, no draws; fitted on the CPU, where the data is, whatever the DiT's
        device."""
        from pipelines.codec import F0_REF_HZ
        from pipelines.dit import SKIP_CONTROL_INDEX

        k = self.dit_config.x0_channels
        for j, control in enumerate(SKIP_CONTROL_INDEX[-k:]):
            if control == CONTROL_NAMES.index("log_f0"):
                # exact by definitions: control log2(f0 / 440) / 4, latent log2(f0 / F0_REF_HZ) normalised
                # (a least-squares line is biased by the trackers' disagreements: slope 2.62 for 2.70)
                channel = self.codec.channels - k + j
                mean = float(self.codec.model.latent_mean[channel])
                std = float(self.codec.model.latent_std[channel])
                line = [4.0 / std, (np.log2(440.0 / F0_REF_HZ) - mean) / std]
                dit.control_skip[j] = torch.tensor(line, device=dit.control_skip.device)
                continue
            xs, ys = [], []
            for clip in self.data[:clips]:
                if not bool(clip["present"][control]):
                    continue
                c = clip["controls"][control].float()
                keep = (
                    clip["controls"][CONTROL_NAMES.index("voicing")].float() > 0.5 if control == 2 else None
                )
                z = clip["z"][self.codec.channels - k + j].float()
                xs.append(c if keep is None else c[keep])
                ys.append(z if keep is None else z[keep])
            x, y = (torch.cat(xs), torch.cat(ys)) if xs else (torch.zeros(0), torch.zeros(0))
            if x.numel() < 2 or float(x.var()) < 1e-8:
                continue  # nothing to fit: the skip stays zero and the DiT learns alone
            slope = float(((x - x.mean()) * (y - y.mean())).mean() / x.var(unbiased=False))
            line = [slope, float(y.mean()) - slope * float(x.mean())]
            dit.control_skip[j] = torch.tensor(line, device=dit.control_skip.device)

    def fit_rhythm_skip(self, dit: DiT, clips: int = 1000) -> None:
        """Set the DiT's rhythm skip (pipelines.dit, where it has one) to the least-squares profile of the
        level channel over the beat and bar phases' harmonics, on the frames of up to `clips` train clips
        with a beat grid (each clip's mean level taken out: the profile shapes the level within a clip and
        leaves its loudness to the network). Deterministic, like fit_control_skip."""
        if not hasattr(dit, "rhythm_skip"):
            return
        from pipelines.dit import rhythm_features

        level = self.codec.channels - self.dit_config.x0_channels  # the first x0-predicted channel
        beat = CONTROL_NAMES.index("beat_sin")
        xs, ys = [], []
        for clip in self.data[:clips]:
            if not bool(clip["present"][beat]):
                continue
            present = clip["present"].float()[:, None].expand(-1, clip["controls"].shape[1])
            feats = rhythm_features(clip["controls"][None].float(), present[None], self.dit_config)[0]
            z = clip["z"][level].float()
            xs.append(feats.T)
            ys.append(z - z.mean())
        if not xs:
            return  # no clip with a beat grid: the skip stays zero and the rhythm embedding learns alone
        x, y = torch.cat(xs), torch.cat(ys)
        solution = torch.linalg.lstsq(x.double(), y.double()[:, None]).solution[:, 0]
        with torch.no_grad():
            dit.rhythm_skip.copy_(solution.float().to(dit.rhythm_skip.device))

    def dataset_size(self) -> int:
        return len(self.data)

    @property
    def init_required(self) -> str | None:
        """Why this run cannot start without --init (the trainer refuses it before writing anything), or None."""
        if self.lora_layers:
            return (
                "lora_rank above 0 trains LoRA adapters on an existing generator; pass --init with the "
                "generator bundle to adapt, or set lora_rank 0 to train every weight."
            )
        if self.config.get("distill_replay", 0.0) > 0:
            return (
                "distill_replay above 0 learns the replayed clips from the generator the run starts from; pass "
                "--init with that generator bundle, or set distill_replay 0."
            )
        if self.config.get("keep_change", 1.0) < 1.0:
            return (
                "keep_change below 1 blends the result with the generator it started from; pass --init with "
                "that generator bundle, or set keep_change 1."
            )
        return None

    def check_init_bundle(self, bundle) -> None:
        """--init must be a generator whose DiT, codec, text encoder and noise offset are this run's."""
        from dataclasses import fields

        from pipelines.bundle import bundle_hash

        if bundle.kind != "generator":
            raise BadInput(
                f"The {self.name} run starts from a generator, but {bundle.path} is a {bundle.kind or 'unnamed'} "
                "bundle; pass --init a generator bundle (exported from --recipe static)."
            )
        try:
            theirs = DiTConfig(**bundle.config["dit"])
        except (KeyError, TypeError):
            raise BadInput(
                f"The generator bundle {bundle.path} has no DiT config this soundloom knows."
            ) from None
        for f in fields(DiTConfig):
            if f.name == "rhythm_harmonics" and theirs.rhythm_harmonics == 0:
                continue  # a DiT without rhythm features grows them (init_from_bundle)
            if getattr(theirs, f.name) != getattr(self.dit_config, f.name):
                raise BadInput(
                    f"The generator bundle {bundle.path} has a DiT with {f.name} {getattr(theirs, f.name)} but "
                    f"this {self.name} run is set to {getattr(self.dit_config, f.name)}; set recipe.dit to the "
                    "bundle's config.dit (in its model.json)."
                )
        codec_sha = bundle.meta.get("components", {}).get("codec", {}).get("sha256")
        if codec_sha != bundle_hash(self.codec.bundle_path):
            raise BadInput(
                f"The generator bundle {bundle.path} was trained with another codec than {self.codec.bundle_path}; "
                "set recipe.codec to the codec it was trained with."
            )
        if bundle.config.get("text_encoder") != self.config["text_encoder"]:
            raise BadInput(
                f"The generator bundle {bundle.path} reads text with {bundle.config.get('text_encoder')!r} "
                f"but this {self.name} run is set to {self.config['text_encoder']!r}; set recipe.text_encoder "
                "to match."
            )
        theirs_offset = float(bundle.config.get("noise_offset", 0.0))
        if theirs_offset != self.noise_offset:
            raise BadInput(
                f"The generator bundle {bundle.path} was trained with noise_offset {theirs_offset:g} but this "
                f"{self.name} run is set to {self.noise_offset:g}; set recipe.noise_offset to {theirs_offset:g}."
            )

    def init_from_bundle(self, bundle, modules: dict[str, torch.nn.Module]) -> None:
        """--init: the generator's DiT (checked to be the one this run is set up for), whose name and hash are
        kept for the card and, in a LoRA run, for the adapter bundle; LoRA adapters keep their zero start."""
        from pipelines.bundle import bundle_hash

        self.check_init_bundle(bundle)
        grown = self.dit_config.rhythm_harmonics and not bundle.config["dit"].get("rhythm_harmonics")
        if grown:  # its rhythm embedding starts at zero (the DiT's function unchanged) and its skip is fitted
            if self.lora_layers:
                raise BadInput(
                    f"The generator bundle {bundle.path} has no rhythm features, which LoRA adapters cannot add; "
                    "set recipe.dit.rhythm_harmonics to 0 for a LoRA run on it, or train every weight."
                )
            dit = modules["dit"]
            rhythm = {k: v for k, v in dit.state_dict().items() if k.startswith("rhythm_")}
            before = DiT(replace(self.dit_config, rhythm_harmonics=0)).to(module_device(dit))
            bundle.load_into("dit", before)
            dit.load_state_dict({**before.state_dict(), **rhythm}, strict=True)
            self.fit_rhythm_skip(dit)
        elif self.lora_layers:
            load_base_into(bundle, "dit", modules["dit"])
        else:
            bundle.load_into("dit", modules["dit"])
        self.base = {
            "bundle": bundle.path.name,
            "sha256": bundle_hash(bundle.path),
            "recipe": bundle.card.get("recipe"),
            "steps": bundle.card.get("steps"),
        }
        self.base_path = str(bundle.path)

    def blended_with_start(self, state: dict[str, torch.Tensor], keep: float) -> tuple[dict, dict]:
        """`state` moved back towards the --init generator's DiT: w_init + keep (w - w_init) for every tensor the
        --init bundle has in the same shape (others, such as features the run grew, stay as trained), and the
        card's record of it. BadInput when that bundle is gone or is no longer the one the run started from."""
        from pipelines.bundle import load_bundle, same_model

        start = Path(self.base_path or "")
        if self.base is None or not (start / "model.json").is_file():
            raise BadInput(
                f"This run's export blends it with the generator it started from ({start}), which is not there "
                "any more; put it back, or export with --keep-change 1."
            )
        if not same_model(start, self.base["sha256"]):
            raise BadInput(
                f"The generator at {start} is not the one this run started from (its hash differs); put that "
                "one back, or export with --keep-change 1."
            )
        init = load_bundle(start).tensors("dit")
        blended, kept = {}, 0
        for key, value in state.items():
            w0 = init.get(key)
            if value.is_floating_point() and w0 is not None and w0.shape == value.shape:
                w0 = w0.to(value.device, torch.float32)
                blended[key] = (w0 + keep * (value.float() - w0)).to(value.dtype)
                kept += 1
            else:
                blended[key] = value
        return blended, {"keep_change": keep, "start_sha256": self.base["sha256"], "tensors_blended": kept}

    def state_dict(self) -> dict:
        return {"base": self.base, "base_path": self.base_path}

    def load_state_dict(self, state: dict) -> None:
        self.base, self.base_path = state.get("base"), state.get("base_path")

    def loss(self, step: int, indices: list[int], modules: dict[str, torch.nn.Module]):
        cfg = self.config
        dit: DiT = modules["dit"]
        device = module_device(dit)
        batch = self.batch(indices, device)
        t = logit_normal(len(indices), cfg["t_mean"] + float(np.log(cfg["time_shift"])), cfg["t_std"])
        t = t.to(device)
        per_sample = self.flow_loss(dit, batch, t)
        info = {
            "frac_text": float(batch["text_mask"].any(dim=1).float().mean()),
            "frac_controls": float(batch["control_mask"].amax(dim=(1, 2)).mean()),
            "frac_known": float(batch["known_mask"].amax(dim=(1, 2)).mean()),
        }
        quartile = (t * 4).long().clamp(max=3)
        for q in range(4):  # mean loss per timestep quartile, for the timestep histogram (absent when empty)
            if (quartile == q).any():
                info[f"loss_t{q}"] = float(per_sample.detach()[quartile == q].mean())
        loss = per_sample.mean()
        if self.dit_config.pitch_classes or self.dit_config.tempo_classes:
            info["loss_rf"] = float(loss.detach())
        return loss + self.prior_terms(dit, batch, info), info

    def flow_loss(self, dit: DiT, batch: dict, t: torch.Tensor) -> torch.Tensor:
        """Per-sample rectified-flow loss [B] at flow times t: noise x0 (offset noise), run the DiT on every
        condition of the batch, MSE to eps - x0 on the frames not given, measured channels weighted. The
        noise is drawn on the CPU and moved to the batch's device."""
        x0, known_mask = batch["x0"], batch["known_mask"]
        eps = latent_noise(tuple(x0.shape), offset=self.noise_offset).to(x0.device)
        tt = t[:, None, None]
        inputs = dict(
            text=batch["text"],
            text_mask=batch["text_mask"],
            seconds=batch["seconds"],
            controls=batch["controls"],
            control_mask=batch["control_mask"],
            known=x0,
            known_mask=known_mask,
            **({"pitch": batch["pitch"]} if self.dit_config.pitch_classes else {}),
        )
        x_t = (1 - tt) * x0 + tt * eps
        v = dit(x_t, t, **inputs)
        target = eps - x0
        share = float(self.config.get("distill_replay", 0.0))
        rows = torch.nonzero(batch["replay"]).flatten() if share > 0 else None
        if rows is not None and len(rows):  # the start model's velocity on the replayed rows only
            with torch.no_grad():
                v_start = self.start_dit(module_device(dit))(
                    x_t[rows], t[rows], **{k: value[rows] for k, value in inputs.items()}
                )
            target = target.clone()
            target[rows] = (1 - share) * target[rows] + share * v_start.float()
        weight = self.channel_weight.to(x0.device)
        k = self.dit_config.x0_channels
        if k:  # x0-predicted channels: their velocity error times t is the error of x̂0, which is the loss
            weight = weight[None].repeat(len(t), 1)
            weight[:, -k:] *= t[:, None].float().clamp(min=X0_MIN_T).square()
        return rf_loss(v, target, 1.0 - known_mask, weight)

    def start_dit(self, device) -> DiT:
        """The --init bundle's DiT, frozen (distill_replay's teacher), loaded once."""
        if self._start_dit is None:
            from pipelines.bundle import load_bundle

            if not self.base_path:
                raise BadInput(
                    "recipe.distill_replay needs the model the run starts from; pass --init BUNDLE."
                )
            bundle = load_bundle(Path(self.base_path))
            grown = self.dit_config.rhythm_harmonics and not bundle.config["dit"].get("rhythm_harmonics")
            start = DiT(replace(self.dit_config, rhythm_harmonics=0) if grown else self.dit_config)
            bundle.load_into("dit", start)
            self._start_dit = start.to(device).eval().requires_grad_(False)
        return self._start_dit

    def prior_terms(self, dit: DiT, batch: dict, info: dict) -> torch.Tensor | float:
        """The pitch and tempo priors' weighted losses (0 for a DiT without them); logs each one's loss and
        accuracy into `info`."""
        total: torch.Tensor | float = 0.0
        if self.dit_config.pitch_classes:
            prior_loss, accuracy = self.pitch_prior_loss(dit, batch)
            info.update(loss_pitch_prior=float(prior_loss.detach()), pitch_prior_acc=accuracy)
            total = total + self.config["pitch_prior_weight"] * prior_loss
        if self.dit_config.tempo_classes:
            prior_loss, accuracy = self.tempo_prior_loss(dit, batch)
            info.update(loss_tempo_prior=float(prior_loss.detach()), tempo_prior_acc=accuracy)
            total = total + self.config["tempo_prior_weight"] * prior_loss
        return total

    def tempo_prior_loss(self, dit: DiT, batch: dict) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the tempo prior against soft targets (`tempo_targets`) on the batch's captions
        of known tempo, `tempo_prior_captions` / 2 more from the data and as many from the caption pool (all
        drawn from torch's seeded generator), and the share of them whose pick is within 2% (or "no pulse"
        where that is the truth)."""
        classes, low = self.dit_config.tempo_classes, self.dit_config.tempo_low
        n = self.config["tempo_prior_captions"]
        pool = self._tempo_pool or []
        n_pool = n // 2 if pool else 0
        if self._tempo_known is None:  # the clips whose tempo is known never change within a run
            self._tempo_known = [i for i, d in enumerate(self.data) if d["tempo"] != TEMPO_UNKNOWN]
        known = self._tempo_known
        n_data = (n - n_pool) if known else 0
        clips = torch.randint(0, max(1, len(known)), (n_data,)).tolist()
        picks = torch.rand(n_data).tolist()
        pooled = torch.randint(0, max(1, len(pool)), (n_pool,)).tolist()
        captions, labels = [], []
        for c, pick in zip(clips, picks):
            clip = self.data[known[c]]
            options = clip["captions"]
            captions.append(options[min(int(pick * len(options)), len(options) - 1)])
            labels.append(clip["tempo"])
        for j in pooled:
            captions.append(pool[j][0])
            labels.append(pool[j][1])

        device = batch["text"].device
        keep = batch["text_mask"].any(dim=1) & (batch["tempo_target"] != TEMPO_UNKNOWN)
        parts = [(batch["text"][keep], batch["text_mask"][keep], batch["tempo_target"][keep])]
        if captions:
            text, mask = self.embed_text(captions)
            label = torch.tensor(labels, dtype=torch.long)
            parts.append((text.to(device), mask.to(device), label.to(device)))
        parts = [p for p in parts if len(p[2])]
        if not parts:
            return torch.zeros((), requires_grad=True, device=device), float("nan")
        logits = torch.cat([dit.tempo_logits(text, mask) for text, mask, _ in parts]).float()
        target = torch.cat([p[2] for p in parts])
        loss = -(tempo_targets(target, classes) * logits.log_softmax(dim=1)).sum(dim=1).mean()
        pick = logits.argmax(dim=1)
        both_none = (pick == classes) & (target == classes)
        both_pulse = (pick < classes) & (target < classes)
        close = (pick + low).float() / (target + low).float().clamp(min=1)
        right = both_none | (both_pulse & ((close - 1).abs() <= 0.02))
        return loss, float(right.float().mean())

    def pitch_prior_loss(self, dit: DiT, batch: dict) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the pitch prior on the batch's captions plus `pitch_prior_captions` more (drawn
        from torch's seeded generator), and its accuracy on them."""
        n = self.config["pitch_prior_captions"]
        clips, picks = torch.randint(0, len(self.data), (n,)).tolist(), torch.rand(n).tolist()
        captions = []
        for index, pick in zip(clips, picks):
            options = self.data[index]["captions"]
            captions.append(options[min(int(pick * len(options)), len(options) - 1)])
        extra_text, extra_mask = self.embed_text(captions) if n else (None, None)
        extra_target = torch.tensor([self.data[i]["pitch"] for i in clips], dtype=torch.long)
        extra_target = torch.where(extra_target == PITCH_NONE, self.dit_config.pitch_classes, extra_target)

        keep = batch["text_mask"].any(dim=1)  # rows whose caption was not dropped
        parts = [(batch["text"][keep], batch["text_mask"][keep], batch["pitch_target"][keep])]
        if n:
            device = batch["text"].device
            parts.append((extra_text.to(device), extra_mask.to(device), extra_target.to(device)))
        parts = [p for p in parts if len(p[2])]
        logits = torch.cat([dit.pitch_logits(text, mask) for text, mask, _ in parts])
        target = torch.cat([p[2] for p in parts])
        accuracy = float((logits.argmax(dim=1) == target).float().mean())
        return torch.nn.functional.cross_entropy(logits.float(), target), accuracy

    # ---------------------------------------------------------------- preview and export

    def preview_caption(self) -> str:
        from training.corpus import read_manifest

        records = read_manifest(self.data_dir, split="val") or read_manifest(self.data_dir, split="train")
        return records[0]["captions"][0] if records and records[0]["captions"] else ""

    def guided(
        self, dit: DiT, caption: str, frames: int, guidance: float
    ) -> tuple[Callable[..., torch.Tensor], torch.Tensor]:
        """(model, x): the DiT under classifier-free guidance for `caption`, and the starting noise [1, C,
        frames] (drawn on the CPU from torch's global generator), both on the DiT's device."""
        from pipelines.samplers import cfg_model

        device = module_device(dit)
        text, text_mask = self.embed_text([caption])
        text, text_mask = text.to(device), text_mask.to(device)
        seconds = torch.tensor([frames / self.codec.latent_rate]).to(device)
        cond = {"text": text, "text_mask": text_mask, "seconds": seconds}
        uncond = {"text": text, "text_mask": torch.zeros_like(text_mask), "seconds": seconds}
        x = latent_noise((1, self.codec.channels, frames), offset=self.noise_offset).to(device)
        model = cfg_model(dit, cond, uncond, guidance, unguided_channels=self.codec.cfg.measured_dim)
        return model, x

    @torch.no_grad()
    def sample(self, dit: DiT, caption: str, frames: int, steps: int, guidance: float) -> torch.Tensor:
        """A latent [C, frames] for `caption` from noise by Euler steps with classifier-free guidance."""
        from pipelines.samplers import rf_times, sample_euler

        model, x = self.guided(dit, caption, frames, guidance)
        return sample_euler(model, x, rf_times(steps, shift=float(self.config["time_shift"])))[0]

    def preview(self, step: int, modules: dict[str, torch.nn.Module], out_dir: Path) -> None:
        """One WAV (and its prompt) sampled by the EMA model for the first val caption."""
        from pipelines.audio import save_audio

        cfg = self.config
        caption = self.preview_caption()
        z = self.sample(
            modules["dit"].eval(),
            caption,
            cfg["segment_frames"],
            cfg["preview_steps"],
            cfg["preview_guidance"],
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        # the codec stays on the CPU, whatever device the DiT trains on
        save_audio(self.codec.decode(z.cpu()), out_dir / f"step{step:08d}_val0.wav")
        (out_dir / f"step{step:08d}_val0.txt").write_text(caption + "\n")

    def bundle_config(self) -> dict:
        return {
            "dit": asdict(self.dit_config),
            "latent_rate": self.codec.latent_rate,
            "latent_channels": self.codec.channels,
            "sample_rate": self.codec.sample_rate,
            "text_encoder": self.config["text_encoder"],
            "controls": list(CONTROL_NAMES),
            "segment_frames": self.config["segment_frames"],
            "time_shift": float(self.config["time_shift"]),
            "noise_offset": self.noise_offset,
            "pitch_hint": bool(self.dit_config.pitch_classes and self.config["p_pitch_hint"] > 0),
            **EXPORT_SAMPLER,
        }

    def export(
        self, modules_ema: dict[str, torch.nn.Module], out_dir: Path, card: dict | None = None
    ) -> None:
        from pipelines.bundle import save_bundle
        from training.codec_recipe import corpus_card

        card = {**(card or {}), "data": corpus_card(self.data_dir)}
        if len(self.data_dirs) > 1:
            card["extra_data"] = [corpus_card(d) for d in self.data_dirs[1:]]
        if self.base is not None:
            card.setdefault("base_model", self.base)
        if self.lora_layers:
            from pipelines.lora import save_adapter

            if self.base is None or self.base_path is None:
                raise BadInput(
                    "This LoRA run records no base generator (its checkpoint predates that record); train it "
                    "again with --init to export an adapter."
                )
            save_adapter(
                Path(out_dir),
                modules_ema["dit"],
                self.base_path,
                self.base["sha256"],
                self.bundle_config(),
                card,
            )
            return
        state = {k: v.detach() for k, v in modules_ema["dit"].state_dict().items()}
        if self.config.get("keep_change", 1.0) < 1.0:
            state, card["blend"] = self.blended_with_start(state, float(self.config["keep_change"]))
        save_bundle(
            Path(out_dir),
            self.bundle_config(),
            {"dit": state},
            components={"codec": self.codec.bundle_path},
            kind="generator",
            card=card,
        )
