"""Before a training run: what a corpus folder holds, what is wrong with it, and what the run will cost.

`check_dataset(DIR)` reads every clip of the manifest once and flags:
  - broken: the file is missing or cannot be decoded, holds no samples, or non-finite samples (and the files
    `dataset from-folder` skipped, from its skipped.txt);
  - silent: the peak is below SILENT_PEAK_DB;
  - duplicate: the same audio as an earlier clip (sha256 of its samples quantised to 16 bits, so the same
    sound saved twice counts whatever the file's container or name).
`estimate_run(...)` turns a training config into an estimated wall time (latent encoding of the clips not
cached yet, then the steps) and disk use (latent cache, checkpoints, previews). The time per step is a
measured figure at the bundled sizes on one of this project's 2-core machines, the one computing in the
precision the run will (STEP_SECONDS with native bf16, STEP_SECONDS_FLOAT32 without), scaled by the run's
batch, segment and DiT compute; it is an estimate, said as one.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.audio import load_audio, peak_db
from pipelines.errors import BadInput
from pipelines.inference import native_bf16
from training.corpus import read_manifest

SILENT_PEAK_DB = -60.0
# Seconds per step at batch 8, 259 frames, DiT 256 x 8 blocks (mlp 3) on 2 idle cores, from the bundled runs'
# wall times (README): static 10,000 steps at batch 16 in 80 min and the quick fine-tune's 2000 at batch 16
# in 767 s (0.48 and 0.38 s a step: ~0.22 at batch 8); ARC 2500 steps at batch 8 in 15.5 min (0.37);
# stage-adaptive adds ~5% to static. (The first figures here, 0.8 and 1.4, came from an older, slower
# trainer and told the quick fine-tune's users 53 minutes for a 13-minute run.)
STEP_SECONDS = {
    "static": 0.22,
    "stage-adaptive": 0.23,
    "random-threshold": 0.23,
    "fixed-schedule": 0.23,
    "arc": 0.37,
}
# The same on a 2-core AMD EPYC with AVX2 only (no native bf16, so the trainer computes in float32),
# measured on 2026-12-07 with `soundloom train --config training/configs/rhythm.json` (static) and
# `configs/arc.json`, from assets/generator-base, at batch 8 on a drum kit's clips: static 0.62 s a step
# (2.8x the AMX machine's), ARC 1.44 (3.9x); the stage-adaptive family scaled from static as above. With
# bf16 autocast forced there a static step took 12.6 s.
STEP_SECONDS_FLOAT32 = {
    "static": 0.62,
    "stage-adaptive": 0.65,
    "random-threshold": 0.65,
    "fixed-schedule": 0.65,
    "arc": 1.44,
}
REFERENCE = {"batch_size": 8, "segment_frames": 259, "block_flops": 8 * (10 + 2 * 3.0) * 256**2}
ENCODE_SECONDS_PER_AUDIO_SECOND = 0.14  # README: 3 h of corpus encoded in ~25 min (pyin dominates)
LATENT_RATE = 44100 / 1024
PREVIEW_BYTES = 2 * 44100 * 2 * 6  # one ~6 s 16-bit stereo wav


@dataclass
class ClipReport:
    id: str
    path: str
    seconds: float
    caption: str
    split: str
    problem: str = ""  # "", "broken: ...", "silent (peak -72 dBFS)", "duplicate of ID"


@dataclass
class DatasetReport:
    directory: Path
    clips: list[ClipReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files from-folder could not read

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.clips)

    def flagged(self, kind: str) -> list[ClipReport]:
        return [c for c in self.clips if c.problem.startswith(kind)]

    def summary(self) -> str:
        """One line: clips, minutes, splits and the problems found."""
        splits = {s: sum(c.split == s for c in self.clips) for s in ("train", "val", "test")}
        counts = ", ".join(f"{n} {s}" for s, n in splits.items() if n)
        problems = [
            f"{len(self.flagged(kind))} {kind}"
            for kind in ("duplicate", "silent", "broken")
            if self.flagged(kind)
        ]
        if self.skipped:
            problems.append(f"{len(self.skipped)} unreadable file(s) left out when the dataset was made")
        said = ", ".join(problems) if problems else "no duplicates, silent or broken clips"
        return f"{len(self.clips)} clips, {self.seconds / 60:.1f} min ({counts}); {said}."


def audio_fingerprint(samples: np.ndarray, sample_rate: int) -> str:
    """sha256 of the samples quantised to 16 bits (and the rate): equal for the same sound in any file."""
    quantised = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767).astype("<i2")
    digest = hashlib.sha256(f"{sample_rate}:{quantised.shape}".encode())
    digest.update(quantised.tobytes())
    return digest.hexdigest()


def check_dataset(directory: Path | str, on_clip=None) -> DatasetReport:
    """Every clip of the corpus in `directory`, each with its problem ("" when none); `on_clip(i, n)` after each."""
    directory = Path(directory)
    records = read_manifest(directory)
    report = DatasetReport(directory)
    skipped = directory / "skipped.txt"
    if skipped.is_file():
        report.skipped = [line for line in skipped.read_text(errors="replace").splitlines() if line.strip()]
    seen: dict[str, str] = {}
    for i, record in enumerate(records):
        caption = record["captions"][0] if record["captions"] else ""
        clip = ClipReport(
            record["id"], record["path"], float(record.get("seconds") or 0.0), caption, record["split"]
        )
        clip.problem = _problem(directory / record["path"], clip, seen)
        report.clips.append(clip)
        if on_clip is not None:
            on_clip(i + 1, len(records))
    return report


def _problem(path: Path, clip: ClipReport, seen: dict[str, str]) -> str:
    if not path.is_file():
        return "broken: the audio file is missing"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            audio = load_audio(path)
    except BadInput as e:
        return f"broken: {e}"
    clip.seconds = round(audio.seconds, 3)
    if audio.samples.size == 0:
        return "broken: no samples"
    if not np.isfinite(audio.samples).all():
        return "broken: samples that are not numbers"
    fingerprint = audio_fingerprint(audio.samples, audio.sample_rate)
    if fingerprint in seen:
        return f"duplicate of {seen[fingerprint]}"
    seen[fingerprint] = clip.id
    peak = peak_db(audio)
    if not peak > SILENT_PEAK_DB:
        return f"silent (peak {peak:.0f} dBFS)" if math.isfinite(peak) else "silent (all zeros)"
    return ""


# ---------------------------------------------------------------- estimates


@dataclass
class RunEstimate:
    steps: int
    seconds_per_step: float
    train_s: float
    encode_s: float
    parameters: int
    disk_bytes: int

    @property
    def total_s(self) -> float:
        return self.train_s + self.encode_s

    def summary(self) -> str:
        return (
            f"Estimated {duration_text(self.total_s)} on 2 cores ({self.steps} steps at ~{self.seconds_per_step:.2f} s"
            + (f", plus {duration_text(self.encode_s)} encoding clips" if self.encode_s >= 1 else "")
            + f") and {self.disk_bytes / 1e6:,.0f} MB of disk ({self.parameters / 1e6:.1f}M parameters)."
        )


def dit_parameters(dit: dict) -> int:
    """Parameters of a DiT of this config, counted on the meta device (no memory, no init)."""
    import torch

    from pipelines.dit import DiT, DiTConfig

    known = set(DiTConfig.__dataclass_fields__)
    with torch.device("meta"):
        model = DiT(DiTConfig(**{k: v for k, v in dit.items() if k in known}))
    return sum(p.numel() for p in model.parameters())


def estimate_run(recipe: str, config: dict, *, uncached_seconds: float, clips: int) -> RunEstimate:
    """Wall time and disk of training `recipe` with `config` (TrainConfig as a dict) on `clips` clips, of
    which `uncached_seconds` of audio still need encoding."""
    settings = config.get("recipe", {})
    dit = settings.get("dit", {})
    dim, depth = int(dit.get("dim", 256)), int(dit.get("depth", 6))
    block_flops = depth * (10 + 2 * float(dit.get("mlp_ratio", 3.0))) * dim**2
    frames = int(settings.get("segment_frames", REFERENCE["segment_frames"]))
    scale = (
        config.get("batch_size", 8)
        / REFERENCE["batch_size"]
        * frames
        / REFERENCE["segment_frames"]
        * block_flops
        / REFERENCE["block_flops"]
    )
    bf16 = bool(config.get("autocast_bf16", False)) and native_bf16(str(config.get("device", "cpu")))
    table = STEP_SECONDS if bf16 else STEP_SECONDS_FLOAT32
    per_step = table.get(recipe, table["static"]) * max(scale, 0.02)
    steps = int(config.get("steps", 0))
    parameters = dit_parameters(dit)
    if recipe == "arc":
        parameters = int(parameters * 1.75)  # the discriminator: three quarters of the DiT plus a head
    checkpoint = 4 * parameters * 4  # weights, EMA and Adam's two moments in float32
    kept = int(config.get("keep_checkpoints", 3)) + 1
    latents = int(clips * frames * (int(dit.get("latent_channels", 32)) + 8) * 2)
    previews = (
        (steps // max(int(config.get("preview_every") or 0), 1)) * PREVIEW_BYTES
        if config.get("preview_every")
        else 0
    )
    return RunEstimate(
        steps=steps,
        seconds_per_step=per_step,
        train_s=steps * per_step,
        encode_s=uncached_seconds * ENCODE_SECONDS_PER_AUDIO_SECOND,
        parameters=parameters,
        disk_bytes=checkpoint * kept + latents + previews,
    )


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
