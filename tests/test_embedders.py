"""Audio embedders: shapes and normalisation, padding that never leaks, captions, the disjoint train
halves, tiny SSL and judge trainings through the trainer core, bundles, and the transformers adapter."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import TINY_CODEC

from pipelines.audio import Audio
from pipelines.bundle import save_bundle
from pipelines.codec import CodecConfig, CodecModel
from pipelines.embedders import (
    AudioEmbedder,
    LatentEmbedder,
    LatentEmbedderConfig,
    LatentEmbedderNet,
    MelEmbedder,
    MelEmbedderConfig,
    MelEmbedderNet,
    TransformersAudioEmbedder,
    load_embedder,
)
from pipelines.errors import BadInput
from training.embedder_recipe import (
    JudgeEmbedderRecipe,
    SSLEmbedderRecipe,
    half_of,
    train_half,
)

REPO = Path(__file__).resolve().parent.parent
TINY_LATENT = {"width": 32, "blocks": 1, "heads": 2, "dim": 16}
TINY_MEL = {"base_channels": 4, "stages": 2, "width": 32, "heads": 2, "dim": 16}
SR = 44100
KINDS = {  # four kinds of sound, each with two captions
    "low": ["a low sine tone", "a deep hum"],
    "high": ["a high whistle tone", "a piercing beep"],
    "noise": ["white noise hiss", "static noise"],
    "clicks": ["a fast click train", "rapid ticking clicks"],
}


def sound(kind: str, variant: int, seconds: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(variant)
    t = np.arange(int(SR * seconds)) / SR
    if kind == "low":
        x = 0.4 * np.sin(2 * np.pi * (110 + 15 * variant) * t)
    elif kind == "high":
        x = 0.3 * np.sin(2 * np.pi * (2000 + 200 * variant) * t)
    elif kind == "noise":
        x = 0.2 * rng.standard_normal(len(t))
    else:
        x = np.zeros(len(t))
        x[:: int(SR / (12 + variant))] = 0.9
    return np.stack([x, x]).astype(np.float32)


def material_in(half: str, stem: str) -> str:
    """A material id named after `stem` that falls in `half`, so each half holds every kind of sound."""
    n = 0
    while half_of({"id": "", "material_id": f"{stem}-{n}"}) != half:
        n += 1
    return f"{stem}-{n}"


def make_corpus(root: Path, variants: int = 4) -> Path:
    """16 train clips (4 kinds x 4 variants) split evenly over halves A and B, plus one val clip."""
    (root / "audio").mkdir(parents=True)
    lines = []
    for kind, captions in KINDS.items():
        for v in range(variants + (kind == "low")):
            clip_id = f"{kind}{v}"
            sf.write(root / "audio" / f"{clip_id}.flac", sound(kind, v).T, SR, subtype="PCM_16")
            split = "val" if v == variants else "train"
            rec = {
                "id": clip_id,
                "path": f"audio/{clip_id}.flac",
                "captions": captions,
                "seconds": 1.5,
                "material_id": material_in("AB"[v % 2], clip_id),
                "split": split,
                "params": {"category": kind},
            }
            lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_codec_bundle(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = CodecModel(CodecConfig(**TINY_CODEC))
    return save_bundle(path, asdict(model.cfg), {"codec": model.state_dict()}, kind="codec")


def train_config(tmp: Path, name: str, steps: int, recipe: dict) -> Path:
    cfg = {
        "steps": steps,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "ckpt_every": 100,
        "log_every": 1,
        "threads": 1,
        "recipe": recipe,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def write_latent_cache(data: Path, codec_path: Path) -> None:
    """The latent cache's layout (index.json, one safetensors file with `z` per clip), latents only: the
    SSL embedder reads nothing else, and measuring controls (pyin) would cost seconds per clip."""
    from safetensors.torch import save_file

    from pipelines.audio import load_audio
    from pipelines.codec import load_codec
    from training.corpus import read_manifest
    from training.latent_cache import latent_root

    codec = load_codec(codec_path)
    root = latent_root(data, codec)
    root.mkdir(parents=True)
    (root / "index.json").write_text(
        json.dumps({"codec_bundle": str(codec_path), "channels": codec.channels})
    )
    for rec in read_manifest(data):
        z = codec.encode(load_audio(data / rec["path"])).half().contiguous()
        save_file({"z": z}, str(root / f"{rec['id']}.safetensors"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus folder with a latent cache, tiny codec bundle), built once for the module."""
    tmp = tmp_path_factory.mktemp("embedders")
    codec = tiny_codec_bundle(tmp / "codec")
    data = make_corpus(tmp / "corpus")
    write_latent_cache(data, codec)
    return data, codec


def losses(run: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- nets and wrappers


def test_mel_embedder_shapes_normalisation_and_padding():
    torch.manual_seed(0)
    judge = MelEmbedder(MelEmbedderNet(MelEmbedderConfig(**TINY_MEL)))
    assert isinstance(judge, AudioEmbedder) and judge.dim == 16
    a = Audio(sound("low", 0, 2.0), SR)
    b = Audio(sound("noise", 1, 0.7)[:1], 22050)  # mono, another rate, another length
    e = judge.embed_audio([a, b])
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    # padding the shorter clip in a batch changes nothing
    assert torch.allclose(e[1], judge.embed_audio([b])[0], atol=1e-5)
    assert not torch.allclose(e[0], e[1], atol=1e-3)
    assert judge.embed_audio([]).shape == (0, 16)
    with pytest.raises(BadInput):
        judge.embed_audio([Audio(np.zeros((1, 0), np.float32), SR)])


def test_latent_embedder_embeds_latents_differentiably_and_audio_through_its_codec(tmp_path):
    from pipelines.codec import load_codec

    torch.manual_seed(0)
    codec_path = tiny_codec_bundle(tmp_path / "codec")
    net = LatentEmbedderNet(LatentEmbedderConfig(channels=8, **TINY_LATENT))
    ssl = LatentEmbedder(net, codec_path)
    z = torch.randn(3, 8, 40, requires_grad=True)
    e = ssl.embed_latents(z)
    assert e.shape == (3, 16) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    e[:, 0].sum().backward()
    assert (
        z.grad is not None and z.grad.abs().sum() > 0
    )  # the stage-adaptive recipe backpropagates through it
    mask = torch.arange(40)[None] < torch.tensor([[40], [25], [10]])
    short = ssl.embed_latents(z[1:2, :, :25].detach())
    assert torch.allclose(ssl.embed_latents(z.detach(), mask)[1], short[0], atol=1e-5)

    clips = [Audio(sound("high", 0), SR), Audio(sound("clicks", 0, 0.5), SR)]
    got = ssl.embed_audio(clips)
    codec = load_codec(codec_path)
    want = ssl.embed_latents(codec.encode(clips[1])[None])[0]
    assert got.shape == (2, 16) and torch.allclose(got[1], want, atol=1e-5)
    with pytest.raises(BadInput, match="no codec"):
        LatentEmbedder(net, None).embed_audio(clips)


def test_embed_text_puts_similar_captions_closer():
    torch.manual_seed(0)
    judge = MelEmbedder(MelEmbedderNet(MelEmbedderConfig()))  # an untrained head keeps the encoder's geometry
    e = judge.embed_text(
        ["a soft piano note", "a gentle piano tone", "heavy distorted drums", "a piano note"]
    )
    assert e.shape == (4, 128) and torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[3, 0] > sim[3, 2] and sim[3, 1] > sim[1, 2]


def test_default_sizes_are_small_and_architectures_and_seeds_differ():
    from training.trainer import TrainConfig

    configs = {
        name: TrainConfig.from_dict(json.loads((REPO / "training" / "configs" / f"{name}.json").read_text()))
        for name in ("ssl_embedder", "judge_embedder")
    }
    ssl_net = LatentEmbedderNet(LatentEmbedderConfig(**configs["ssl_embedder"].recipe["net"]))
    judge_net = MelEmbedderNet(MelEmbedderConfig(**configs["judge_embedder"].recipe["net"]))
    assert configs["ssl_embedder"].seed != configs["judge_embedder"].seed
    assert ssl_net.arch != judge_net.arch and type(ssl_net) is not type(judge_net)
    assert SSLEmbedderRecipe.half != JudgeEmbedderRecipe.half
    for net in (ssl_net, judge_net):
        assert sum(p.numel() for p in net.parameters()) < 2_000_000
    assert ssl_net.cfg.dim == judge_net.cfg.dim == 128


# ---------------------------------------------------------------- halves


def test_halves_are_disjoint_cover_the_train_split_and_follow_the_material(tmp_path):
    lines = []
    for i in range(400):
        material = f"phrase{i // 2}"  # two clips (say, two instruments) per material
        split = ("train", "train", "train", "val", "test")[i % 5]
        rec = {"id": f"c{i}", "path": f"audio/c{i}.flac", "captions": ["x"], "split": split}
        lines.append(json.dumps({**rec, "material_id": material}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    a, b = train_half(tmp_path, "A"), train_half(tmp_path, "B")
    ids_a, ids_b = {r["id"] for r in a}, {r["id"] for r in b}
    train = {json.loads(line)["id"] for line in lines if json.loads(line)["split"] == "train"}
    assert not ids_a & ids_b and ids_a | ids_b == train
    assert 0.4 < len(a) / len(train) < 0.6
    by_material: dict[str, set[str]] = {}
    for rec in a + b:
        by_material.setdefault(rec["material_id"], set()).add(half_of(rec))
    assert all(len(halves) == 1 for halves in by_material.values())
    assert half_of({"id": "c1", "material_id": "phrase0"}) == half_of(
        {"id": "other", "material_id": "phrase0"}
    )


# ---------------------------------------------------------------- training


def test_views_are_a_function_of_the_seed(corpus):
    from training.trainer import seed_everything

    data, codec = corpus
    ssl = SSLEmbedderRecipe({"codec": str(codec), "net": TINY_LATENT}, data)
    judge = JudgeEmbedderRecipe({"net": TINY_MEL, "segment_seconds": 0.5}, data)
    for recipe in (ssl, judge):
        seed_everything(7)
        first = recipe.views([0, 1, 2])
        seed_everything(7)
        again = recipe.views([0, 1, 2])
        assert all(torch.equal(x, y) for x, y in zip(first, again))
        assert not torch.equal(first[0], first[2])  # the two views differ (noise, offsets)


def test_ssl_recipe_learns_on_half_a_and_exports_a_bundle(corpus, tmp_path):
    from training.trainer import export_run, train

    data, codec = corpus
    recipe = {"codec": str(codec), "net": TINY_LATENT, "crop_frames": 24, "shift_frames": 2}
    train(
        "ssl-embedder",
        data,
        tmp_path / "run",
        config_path=train_config(tmp_path, "ssl", 20, recipe),
        progress=False,
    )
    loss = losses(tmp_path / "run", "loss")
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:3]), loss
    assert losses(tmp_path / "run", "audio_text_top1")[-1] > 0.25

    bundle = export_run(tmp_path / "run", tmp_path / "ssl")
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["kind"] == "embedder" and meta["config"]["arch"] == "latent"
    assert meta["card"]["train_half"] == "A" and meta["card"]["train_clips"] == 8
    assert "codec" in meta["components"]
    ssl = load_embedder(bundle)
    assert isinstance(ssl, LatentEmbedder)
    audio = ssl.embed_audio([Audio(sound("low", 0), SR), Audio(sound("noise", 0), SR)])
    text = ssl.embed_text(["a low sine tone", "white noise hiss"])
    assert audio.shape == text.shape == (2, 16)
    assert torch.allclose(audio.norm(dim=1), torch.ones(2), atol=1e-5)


def test_judge_recipe_learns_on_half_b_and_exports_a_bundle(corpus, tmp_path):
    from training.trainer import export_run, train

    data, _ = corpus
    recipe = {"net": TINY_MEL, "segment_seconds": 0.5}
    train(
        "judge-embedder",
        data,
        tmp_path / "run",
        config_path=train_config(tmp_path, "judge", 20, recipe),
        progress=False,
    )
    loss = losses(tmp_path / "run", "loss")
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:3]), loss

    bundle = export_run(tmp_path / "run", tmp_path / "judge")
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["kind"] == "embedder" and meta["config"]["arch"] == "mel"
    assert meta["card"]["train_half"] == "B" and meta["card"]["train_clips"] == 8
    assert meta["components"] == {}
    judge = load_embedder(bundle)
    assert isinstance(judge, MelEmbedder)
    clips = [Audio(sound(kind, 1), SR) for kind in KINDS]
    sim = judge.embed_audio(clips) @ judge.embed_text([c[0] for c in KINDS.values()]).T
    assert sim.shape == (4, 4)
    assert (sim.argmax(dim=1) == torch.arange(4)).sum() >= 2  # trained: most clips nearest their caption

    # held-out figures (`soundloom eval` on an embedder bundle), here on the train split for want of a test one
    from training.embedder_eval import run as eval_embedder

    figures = eval_embedder(bundle, data, split="train", update_card=True, verbose=False)
    assert figures["clips"] == 16 and figures["chance_r1"] == 1 / 16
    assert figures["audio_to_text_r1"] > figures["chance_r1"]  # 4 kinds, one caption list each: ties allowed
    assert json.loads((bundle / "model.json").read_text())["card"]["eval"] == figures
    with pytest.raises(BadInput, match="fewer than 2"):
        eval_embedder(bundle, data, split="val", verbose=False)


def test_retrieval_figures_on_planted_embeddings():
    from training.embedder_eval import retrieval_figures

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(64, 32), dim=1)
    audio = torch.nn.functional.normalize(text + 0.05 * torch.randn(64, 32), dim=1)
    cats = [str(i % 4) for i in range(64)]
    aligned = retrieval_figures(audio, text, cats)
    assert aligned["audio_to_text_r1"] == aligned["text_to_audio_r1"] == aligned["group16_r1"] == 1.0
    assert aligned["category_match"] == 1.0
    shuffled = retrieval_figures(audio, text[torch.randperm(64)], cats)
    assert shuffled["audio_to_text_r1"] < 0.1 and shuffled["group16_r1"] < 0.3


def test_recipes_refuse_bad_settings_and_missing_latents(corpus, tmp_path):
    data, codec = corpus
    with pytest.raises(BadInput, match="crop_frame"):
        SSLEmbedderRecipe({"codec": str(codec), "crop_frame": 3}, data)
    with pytest.raises(BadInput, match="channels"):
        SSLEmbedderRecipe({"codec": str(codec), "net": {"channels": 32}}, data)
    with pytest.raises(BadInput, match="dataset encode"):
        SSLEmbedderRecipe(
            {"codec": str(tiny_codec_bundle(tmp_path / "other", seed=1))}, data
        )  # another codec: no cache
    with pytest.raises(BadInput, match="noise_db"):
        JudgeEmbedderRecipe({"noise_db": [-20, -40]}, data)


def test_load_embedder_refuses_other_bundles_and_bad_configs(tmp_path):
    from pipelines.embedders import build_net

    with pytest.raises(BadInput, match="not an embedder"):
        load_embedder(tiny_codec_bundle(tmp_path / "codec"))
    with pytest.raises(BadInput, match="architecture"):
        build_net({"arch": "transformer"})
    with pytest.raises(BadInput, match="divisible"):
        build_net({"arch": "mel", "n_mels": 60})
    with pytest.raises(BadInput, match="does not fit"):
        build_net({"arch": "latent", "depth": 3})


# ---------------------------------------------------------------- users' models


def test_transformers_adapter_embeds_audio_and_has_no_text_tower(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "w2v")
    user = TransformersAudioEmbedder(str(tmp_path / "w2v"))
    assert isinstance(user, AudioEmbedder) and user.dim == 32
    e = user.embed_audio([Audio(sound("low", 0, 0.5), SR), Audio(sound("noise", 0, 0.3)[:1], 22050)])
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(BadInput, match="no text tower"):
        user.embed_text(["a tone"])
    with pytest.raises(BadInput, match="Could not load"):
        TransformersAudioEmbedder(str(tmp_path / "missing"))
