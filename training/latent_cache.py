"""Latent cache: each corpus clip encoded once by a codec, so generator training never touches audio.

Layout: `DATA/latents/<codec hash, 16 hex>/<clip id>.safetensors` holding `z` (float16 [C, T]), the
clip's control channels measured on the same frames (`controls` float16 [8, T], `controls_present`
uint8 [8], see pipelines/controls.py), plus an `index.json` naming the codec bundle. Files are written
atomically, so an interrupted encode resumes where it stopped; files of an older format (no controls)
count as missing and are encoded again. `LatentCacheWriter` is fed clip by clip, which is how
`dataset build --latents` streams rendered clips straight into the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from pipelines.atomic_files import write_atomic
from pipelines.audio import Audio, load_audio
from pipelines.bundle import bundle_hash
from pipelines.codec import Codec, load_codec
from pipelines.controls import measure_controls
from pipelines.errors import BadInput

# Stored in each file's metadata; bump it when what a file holds (or how controls are measured) changes,
# and `encode_corpus` re-encodes the older files.
CACHE_FORMAT = "2"


class LatentCacheWriter:
    """Writes one latent file per clip; the cache folder and its index appear with the first clip."""

    def __init__(self, data_dir: Path, codec: Codec | None = None):
        self.codec = codec or load_codec()
        self.root = latent_root(Path(data_dir), self.codec)

    def _ensure_index(self) -> None:
        index = self.root / "index.json"
        if index.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        info = {
            "codec_bundle": str(self.codec.bundle_path),
            "codec_sha256": bundle_hash(self.codec.bundle_path),
            "latent_rate": self.codec.latent_rate,
            "channels": self.codec.channels,
        }
        write_atomic(index, json.dumps(info, indent=2) + "\n")

    def has(self, clip_id: str) -> bool:
        """True when the clip's file exists in the current format (an older one is as good as missing)."""
        return is_current(self.root / f"{clip_id}.safetensors")

    def add(
        self,
        clip_id: str,
        audio: Audio,
        *,
        beats_s: list[float] | None = None,
        bars_s: list[float] | None = None,
    ) -> Path:
        """Encode `audio` and measure its controls (with the clip's known beat grid, when it has one)."""
        self._ensure_index()
        z = self.codec.encode(audio).to(torch.float16).contiguous()
        controls = measure_controls(audio, z.shape[1], self.codec.latent_rate, beats_s=beats_s, bars_s=bars_s)
        tensors = {
            "z": z,
            "controls": torch.from_numpy(controls.values).to(torch.float16),
            "controls_present": torch.from_numpy(controls.present.astype("uint8")),
        }
        path = self.root / f"{clip_id}.safetensors"
        metadata = {"seconds": f"{audio.seconds:.4f}", "format": CACHE_FORMAT}
        write_atomic(path, save(tensors, metadata=metadata))
        return path

    def add_record(self, record: dict, audio: Audio) -> Path:
        """`add` for a manifest record: its beat and bar times (when it has a grid) replace estimated ones."""
        params = record.get("params") or {}
        return self.add(
            record["id"],
            audio,
            beats_s=params.get("beats_s") or None,  # [] means no known grid: estimate one
            bars_s=params.get("bars_s") or None,
        )


def latent_root(data_dir: Path, codec: Codec) -> Path:
    return Path(data_dir) / "latents" / bundle_hash(codec.bundle_path)[:16]


def is_current(path: Path) -> bool:
    """Whether `path` is a readable cache file of the current format (reads the header only)."""
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == CACHE_FORMAT
    except (OSError, SafetensorError):
        return False


def read_latent(path: Path) -> torch.Tensor:
    return load_file(str(path))["z"].float()


def read_entry(path: Path) -> dict[str, torch.Tensor]:
    """A cache file's `z` float32 [C, T], `controls` float32 [8, T] and `controls_present` bool [8]."""
    tensors = load_file(str(path))
    return {
        "z": tensors["z"].float(),
        "controls": tensors["controls"].float(),
        "controls_present": tensors["controls_present"].bool(),
    }


def encode_corpus(
    data_dir: Path,
    codec_path: Path | None = None,
    *,
    categories: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Encode every clip of a corpus (or of these `categories` only) that is not cached yet (or cached in an
    older format); returns the cache folder."""
    from tqdm import tqdm

    from training.corpus import read_manifest, require_clip_audio

    data_dir = Path(data_dir)
    records = read_manifest(data_dir)
    if categories is not None:
        known = {rec.get("params", {}).get("category") for rec in records}
        unknown = sorted(set(categories) - known)
        if unknown:
            raise BadInput(
                f"The corpus in {data_dir} has no clips of category '{unknown[0]}'; "
                f"its categories are {', '.join(sorted(str(k) for k in known))}."
            )
        records = [rec for rec in records if rec.get("params", {}).get("category") in set(categories)]
    writer = LatentCacheWriter(data_dir, load_codec(codec_path))
    todo = [rec for rec in records if not writer.has(rec["id"])]
    require_clip_audio(data_dir, todo)
    for rec in tqdm(todo, desc="encoding latents", unit="clip", disable=not progress, mininterval=1.0):
        writer.add_record(rec, load_audio(data_dir / rec["path"]))
    return writer.root
