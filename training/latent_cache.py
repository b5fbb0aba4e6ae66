"""Latent cache: each corpus clip encoded once by a codec, so generator training never touches audio.

Layout: `DATA/latents/<codec hash, 16 hex>/<clip id>.safetensors` holding `z` (float16 [C, T]), plus an
`index.json` naming the codec bundle. Files are written atomically, so an interrupted encode resumes
where it stopped. `LatentCacheWriter` is fed clip by clip, which is how `dataset build --latents`
streams rendered clips straight into the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from pipelines.atomic_files import write_atomic
from pipelines.audio import Audio, load_audio
from pipelines.bundle import bundle_hash
from pipelines.codec import Codec, load_codec


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
        return (self.root / f"{clip_id}.safetensors").exists()

    def add(self, clip_id: str, audio: Audio) -> Path:
        self._ensure_index()
        z = self.codec.encode(audio).to(torch.float16).contiguous()
        path = self.root / f"{clip_id}.safetensors"
        write_atomic(path, save({"z": z}, metadata={"seconds": f"{audio.seconds:.4f}"}))
        return path


def latent_root(data_dir: Path, codec: Codec) -> Path:
    return Path(data_dir) / "latents" / bundle_hash(codec.bundle_path)[:16]


def read_latent(path: Path) -> torch.Tensor:
    return load_file(str(path))["z"].float()


def encode_corpus(data_dir: Path, codec_path: Path | None = None, *, progress: bool = True) -> Path:
    """Encode every clip of a corpus that is not cached yet; returns the cache folder."""
    from tqdm import tqdm

    from training.corpus import read_manifest

    data_dir = Path(data_dir)
    writer = LatentCacheWriter(data_dir, load_codec(codec_path))
    todo = [rec for rec in read_manifest(data_dir) if not writer.has(rec["id"])]
    for rec in tqdm(todo, desc="encoding latents", unit="clip", disable=not progress, mininterval=1.0):
        writer.add(rec["id"], load_audio(data_dir / rec["path"]))
    return writer.root
