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


def test_int8_storage_halves_the_weights_and_loads_them_back_as_float(tmp_path):
    from pipelines.bundle import INT8_SCALE, quantize_bundle, same_model

    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(96, 128)
    torch.nn.init.normal_(layer.weight, std=0.05, generator=g)
    layer.weight.data[3] *= 40  # one loud row: per-row scales keep the quiet rows precise
    conv = torch.randn(64, 32, 3, generator=g)
    tensors = {"dit": {**layer.state_dict(), "conv": conv, "norm": torch.rand(128, generator=g)}}
    codec = save_bundle(tmp_path / "codec", {"latent": 8}, {"codec": {"w": torch.ones(2)}}, kind="codec")
    full = save_bundle(
        tmp_path / "full", {"x": 1}, tensors, {"codec": codec}, kind="generator", card={"steps": 9}
    )

    out, record = quantize_bundle(full, tmp_path / "int8")
    assert (out / "dit.safetensors").stat().st_size < 0.6 * (full / "dit.safetensors").stat().st_size
    b = load_bundle(out)
    assert b.kind == "generator" and b.config == {"x": 1} and b.card["steps"] == 9
    assert b.component("codec").path == codec.resolve()
    back = b.tensors("dit")
    assert set(back) == set(tensors["dit"]) and all(t.dtype == torch.float32 for t in back.values())
    for key in ("weight", "conv"):
        want = tensors["dit"][key].half().float()  # what the full bundle holds
        assert not torch.equal(back[key], want)  # really stored otherwise ...
        rows = want.reshape(want.shape[0], -1)
        error = (back[key] - want).reshape(rows.shape).abs().amax(1)
        assert (
            error <= rows.abs().amax(1) / 254 * 1.0001
        ).all()  # ... within half a step of each row's scale
    assert torch.equal(back["bias"], tensors["dit"]["bias"].half().float())  # small tensors: fp16 as before
    assert torch.equal(back["norm"], tensors["dit"]["norm"].half().float())
    assert 0 < record["max_relative_error"] < 0.01 and record["int8_share"] > 0.9
    stored = bundle_module.load_safetensors_bytes((out / "dit.safetensors").read_bytes())
    assert stored["weight"].dtype == torch.int8 and stored["weight" + INT8_SCALE].shape == (128,)

    module = torch.nn.Linear(96, 128)
    module.register_buffer("conv", torch.zeros(64, 32, 3))
    module.register_buffer("norm", torch.zeros(128))
    b.load_into("dit", module)
    assert torch.equal(module.weight.data, back["weight"])

    # the copy still answers to the hash of what it was made from, and to its own; nothing else does
    assert record["quantized_from"] == bundle_hash(full)
    assert same_model(out, bundle_hash(full)) and same_model(out, bundle_hash(out))
    assert not same_model(out, bundle_hash(codec)) and not same_model(full, bundle_hash(out))
    with pytest.raises(BadInput, match="already stored as int8"):
        quantize_bundle(out, tmp_path / "again")
    with pytest.raises(BadInput, match="would overwrite"):
        quantize_bundle(full, full)
