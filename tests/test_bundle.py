"""Bundles: round trip, checksums, missing pieces, format version, components found by hash."""

import json
import shutil

import pytest
import torch

from pipelines import bundle as bundle_module
from pipelines.bundle import bundle_hash, load_bundle, save_bundle
from pipelines.errors import BadInput


def make_tensors() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "denoiser": {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
        "tables": {"index": torch.arange(5, dtype=torch.int64), "big": torch.tensor([1e6, -2.0])},
    }


def test_round_trip_casts_to_fp16_and_loads_fp32(tmp_path):
    tensors = make_tensors()
    out = save_bundle(tmp_path / "b", {"width": 4}, tensors, kind="dit", card={"steps": 3})
    meta = json.loads((out / "model.json").read_text())
    assert meta["format_version"] == bundle_module.FORMAT_VERSION
    assert meta["kind"] == "dit" and meta["config"] == {"width": 4} and meta["card"] == {"steps": 3}
    assert set(meta["files"]) == {"denoiser", "tables"}

    b = load_bundle(out)
    assert b.config == {"width": 4} and b.kind == "dit"
    w = b.tensors("denoiser")["w"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, tensors["denoiser"]["w"], atol=1e-3)
    tables = b.tensors("tables")
    assert tables["index"].dtype == torch.int64 and torch.equal(tables["index"], torch.arange(5))
    assert torch.equal(
        tables["big"], torch.tensor([1e6, -2.0])
    )  # fp16 would overflow: kept at full precision


def test_save_replaces_an_existing_bundle(tmp_path):
    save_bundle(tmp_path / "b", {"v": 1}, make_tensors())
    save_bundle(tmp_path / "b", {"v": 2}, {"only": {"x": torch.ones(2)}})
    b = load_bundle(tmp_path / "b")
    assert b.config == {"v": 2} and b.files == ["only"]
    assert not (tmp_path / "b" / "denoiser.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp folders left behind


def test_load_into_checks_keys_and_shapes(tmp_path):
    module = torch.nn.Linear(3, 2)
    save_bundle(tmp_path / "b", {}, {"head": module.state_dict()}, dtype=None)
    other = torch.nn.Linear(3, 2)
    load_bundle(tmp_path / "b").load_into("head", other)
    assert torch.equal(other.weight, module.weight)
    with pytest.raises(BadInput, match="shaped"):
        load_bundle(tmp_path / "b").load_into("head", torch.nn.Linear(4, 2))
    with pytest.raises(BadInput, match="does not fit"):
        load_bundle(tmp_path / "b").load_into("head", torch.nn.Linear(3, 2, bias=False))


def test_checksum_mismatch_is_detected(tmp_path):
    out = save_bundle(tmp_path / "b", {}, make_tensors())
    path = out / "denoiser.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="checksum"):
        load_bundle(out)


def test_missing_tensor_file_is_detected(tmp_path):
    out = save_bundle(tmp_path / "b", {}, make_tensors())
    (out / "tables.safetensors").unlink()
    with pytest.raises(BadInput, match="missing tables.safetensors"):
        load_bundle(out)


def test_bad_folders_and_model_json(tmp_path):
    with pytest.raises(BadInput, match="No model bundle folder"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="model.json is missing"):
        load_bundle(tmp_path / "empty")
    out = save_bundle(tmp_path / "b", {}, make_tensors())
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BadInput, match="format version 99"):
        load_bundle(out)
    (out / "model.json").write_text('{"format_version": 1, "files": ')
    with pytest.raises(BadInput, match="not valid JSON"):
        load_bundle(out)


def test_errors_are_one_sentence(tmp_path):
    with pytest.raises(BadInput) as info:
        load_bundle(tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0


def test_components_are_found_by_hash(tmp_path, monkeypatch):
    codec = save_bundle(tmp_path / "codec", {"latent": 8}, {"codec": {"w": torch.ones(2)}}, kind="codec")
    model = save_bundle(tmp_path / "model", {}, make_tensors(), components={"codec": codec})
    meta = json.loads((model / "model.json").read_text())
    assert meta["components"]["codec"] == {"sha256": bundle_hash(codec), "path": "../codec"}
    b = load_bundle(model)
    assert b.component("codec").config == {"latent": 8}
    assert torch.equal(b.component("codec").tensors("codec")["w"], torch.ones(2))
    with pytest.raises(BadInput, match="no component 'text'"):
        b.component("text")

    # Moved away from its component: found in assets/ by hash, even under another folder name.
    assets = tmp_path / "assets"
    assets.mkdir()
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(model, moved)
    shutil.move(codec, assets / "codec-v1")
    monkeypatch.setattr(bundle_module, "ASSETS_DIR", assets)
    assert load_bundle(moved).component("codec").path == (assets / "codec-v1").resolve()

    # A component with other contents (another hash) is refused.
    save_bundle(assets / "codec-v1", {"latent": 16}, {"codec": {"w": torch.zeros(2)}}, kind="codec")
    with pytest.raises(BadInput, match="needs component 'codec'"):
        load_bundle(moved).component("codec")


def test_bundle_hash_follows_contents(tmp_path):
    a = save_bundle(tmp_path / "a", {"x": 1}, make_tensors())
    b = save_bundle(tmp_path / "b", {"x": 1}, make_tensors())
    c = save_bundle(tmp_path / "c", {"x": 1}, {"denoiser": {"w": torch.zeros(1)}})
    assert bundle_hash(a) == bundle_hash(b) != bundle_hash(c)


def test_card_updates_keep_the_hash_and_the_references(tmp_path):
    from pipelines.bundle import update_card

    codec = save_bundle(tmp_path / "codec", {"latent": 16}, {"codec": {"w": torch.ones(2)}}, kind="codec")
    model = save_bundle(tmp_path / "model", {"x": 1}, make_tensors(), components={"codec": codec})
    before = bundle_hash(codec)
    update_card(codec, {"eval": {"mrstft": 0.3}})
    assert bundle_hash(codec) == before
    assert load_bundle(codec).card["eval"] == {"mrstft": 0.3}
    assert load_bundle(model).component("codec").path == codec.resolve()
    # a config change is a different model, so the hash moves
    meta = json.loads((codec / "model.json").read_text())
    meta["config"]["latent"] = 32
    (codec / "model.json").write_text(json.dumps(meta))
    assert bundle_hash(codec) != before
