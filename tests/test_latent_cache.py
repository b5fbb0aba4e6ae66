"""The corpus builder streams clips into a latent cache; `dataset encode` fills the gaps."""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
from tiny_models import TINY_CODEC as TINY

from app.cli import main
from pipelines.bundle import save_bundle
from pipelines.codec import CodecConfig, CodecModel
from training.corpus import read_manifest
from training.latent_cache import read_latent


def tiny_codec_bundle(path):
    torch.manual_seed(0)
    model = CodecModel(CodecConfig(**TINY))
    return save_bundle(path, asdict(model.cfg), {"codec": model.state_dict()}, kind="codec")


def test_build_streams_into_latent_cache_and_encode_resumes(tmp_path):
    bundle = tiny_codec_bundle(tmp_path / "codec")
    out = tmp_path / "corpus"
    code = main(
        ["dataset", "build", "--out", str(out), "--hours", "0.004", "--latents", "--model", str(bundle)]
    )
    assert code == 0
    records = read_manifest(out)
    roots = list((out / "latents").iterdir())
    assert len(roots) == 1 and (roots[0] / "index.json").exists()
    for rec in records:
        z = read_latent(roots[0] / f"{rec['id']}.safetensors")
        assert z.shape == (8, math.ceil(rec["seconds"] * 44100 / 1024))
        assert torch.isfinite(z).all()

    # Lose one latent: `dataset encode` writes exactly the missing one back.
    victim = roots[0] / f"{records[0]['id']}.safetensors"
    kept = roots[0] / f"{records[1]['id']}.safetensors"
    before = kept.stat().st_mtime_ns
    victim.unlink()
    assert main(["dataset", "encode", str(out), "--model", str(bundle)]) == 0
    assert victim.exists() and kept.stat().st_mtime_ns == before
