"""LoRA adapters (pipelines/lora.py): a fresh adapter changes nothing, a LoRA run of the static recipe trains
only its adapters and resumes exactly, its export is a small adapter bundle recorded against its base's hash
that loads back to the trained model, a wrong base is refused in one sentence, and adapters pack into one
file and import into a models folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli_errors import assert_one_line_error, run_main
from test_static_recipe import TINY_DIT, make_corpus, tiny_codec_bundle

from pipelines.bundle import bundle_hash, load_bundle
from pipelines.dit import DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.lora import (
    ADAPTER_KIND,
    DEFAULT_TARGETS,
    LoraLinear,
    add_lora,
    import_adapter,
    lora_state_dict,
    merge_lora,
    pack_adapter,
)
from training.latent_cache import encode_corpus

DIT = {**TINY_DIT, "pitch_classes": 12, "pitch_low": 48}  # with a pitch prior, which a LoRA run leaves alone
RANK = 4


def one_sentence(message: str) -> None:
    assert message.endswith(".") and ". " not in message.rstrip(".") and "\n" not in message, message


def perturbed_dit(seed: int) -> DiT:
    """A tiny DiT with random non-zero weights everywhere (adaLN-Zero's init would make every block the
    identity and the output zero, which no adapter inside the blocks could change)."""
    torch.manual_seed(seed)
    dit = DiT(DiTConfig(latent_channels=8, text_dim=384, **DIT))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return dit


def dit_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(2, 8, 21, generator=g),
        "t": torch.tensor([0.3, 0.8]),
        "text": torch.randn(2, 5, 384, generator=g),
        "text_mask": torch.tensor([[True] * 5, [True, True, True, False, False]]),
        "seconds": torch.tensor([0.4, 0.5]),
    }


def recipe_settings(codec: Path, **more) -> dict:
    return {"codec": str(codec), "segment_frames": 32, "dit": DIT, **more}


def lora_config(tmp: Path, codec: Path, steps: int, **settings) -> Path:
    config = {
        "steps": steps,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 2,
        "lr_schedule": "constant",
        "ema_decay": 0.9,
        "ckpt_every": 5,
        "log_every": 1,
        "threads": 1,
        "recipe": recipe_settings(codec, lora_rank=RANK, lora_alpha=4.0),
        **settings,
    }
    path = tmp / "lora.json"
    path.write_text(json.dumps(config))
    return path


def export_generator(recipe_config: dict, data: Path, out: Path, seed: int) -> Path:
    """A generator bundle exported by the static recipe itself, with a perturbed DiT (see perturbed_dit)."""
    from training.static_recipe import StaticRecipe

    recipe = StaticRecipe(recipe_config, data)
    recipe.export({"dit": perturbed_dit(seed)}, out, card={"recipe": "static", "steps": 0})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny cached corpus, its codec, and two generator bundles of the same shape (base and another)."""
    root = tmp_path_factory.mktemp("lora")
    codec = tiny_codec_bundle(root / "codec")
    data = make_corpus(root / "corpus")
    encode_corpus(data, codec, progress=False)
    config = recipe_settings(codec)
    base = export_generator(config, data, root / "models" / "base", seed=1)
    other = export_generator(config, data, root / "other", seed=2)
    return {"root": root, "codec": codec, "data": data, "base": base, "other": other}


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory) -> dict:
    """A 30-step LoRA run on the base, and its exported adapter (beside the base, as in a models folder)."""
    from training.trainer import export_run, train

    tmp = tmp_path_factory.mktemp("lora-run")
    config = lora_config(tmp, setup["codec"], 30)
    run = tmp / "run"
    checkpoint = train(
        "static", setup["data"], run, config_path=config, init_bundle=setup["base"], progress=False
    )
    adapter = export_run(run, setup["root"] / "models" / "my-lora")
    return {"run": run, "checkpoint": checkpoint, "adapter": adapter, "config": config}


# ---------------------------------------------------------------- the layer


def test_a_fresh_adapter_leaves_every_output_bit_identical():
    dit = perturbed_dit(0)
    inputs = dit_inputs()
    with torch.no_grad():
        before = dit(**inputs)
        before_bf16 = copy.deepcopy(dit).to(torch.bfloat16)(**inputs)
    adapted = copy.deepcopy(dit)
    names = add_lora(adapted, RANK, 8.0)
    assert names == [
        f"blocks.{i}.{layer}" for i in range(2) for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert all(isinstance(adapted.get_submodule(n), LoraLinear) for n in names)
    with torch.no_grad():
        assert torch.equal(adapted(**inputs), before)
        assert torch.equal(copy.deepcopy(adapted).to(torch.bfloat16)(**inputs), before_bf16)
    # only the adapters learn; the base keeps its keys, so its tensors load as they are
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert (
        trainable
        == {f"{n}.{k}" for n in names for k in ("lora_a", "lora_b")}
        == set(lora_state_dict(adapted))
    )
    assert set(adapted.state_dict()) - trainable == set(dit.state_dict())
    merge_lora(adapted)  # B = 0: merging gives the base's weights bit for bit
    for key, value in dit.state_dict().items():
        assert torch.equal(adapted.state_dict()[key], value), key


def test_merging_computes_what_the_adapter_computes():
    dit = perturbed_dit(0)
    add_lora(dit, RANK, 8.0)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if name.endswith("lora_b"):
                p.copy_(0.05 * torch.randn_like(p))
        inputs = dit_inputs()
        adapted = dit(**inputs)
        assert not torch.allclose(adapted, perturbed_dit(0)(**inputs), atol=1e-3)  # the adapters do something
        merged = copy.deepcopy(dit)
        merge_lora(merged)
        assert not any(isinstance(m, LoraLinear) for m in merged.modules())
        torch.testing.assert_close(merged(**inputs), adapted, rtol=1e-4, atol=1e-5)


def test_bad_lora_settings_are_one_sentence(setup):
    from training.static_recipe import StaticRecipe

    for settings, needle in (
        ({"lora_rank": -1}, "lora_rank must be a whole number"),
        ({"lora_rank": True}, "lora_rank must be a whole number"),
        ({"lora_rank": 4, "lora_alpha": 0}, "lora_alpha must be a number above 0"),
        ({"lora_rank": 4, "lora_targets": ["blocks.*.attn.nope"]}, "names no linear layer"),
        ({"lora_rank": 4, "lora_targets": "blocks.*.attn.qkv"}, "lora_targets must be a list"),
        ({"lora_rank": 64}, "lora_rank must be from 1 to 32"),
    ):
        with pytest.raises(BadInput, match=needle) as caught:
            StaticRecipe(recipe_settings(setup["codec"], **settings), setup["data"])
        one_sentence(str(caught.value))
    assert (
        list(DEFAULT_TARGETS)
        == StaticRecipe(recipe_settings(setup["codec"]), setup["data"]).config["lora_targets"]
    )


# ---------------------------------------------------------------- training


def checkpoint_dit(checkpoint: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    flat = load_file(str(checkpoint / f"{which}.safetensors"))
    return {k.removeprefix("dit."): v for k, v in flat.items() if k.startswith("dit.")}


def fixed_loss(recipe, dit, seeds=range(6)) -> float:
    """The recipe's loss on every train clip under fixed draws: the same crops, drops, times and noise for
    any weights, so two models compare without the step-to-step noise of the training curve."""
    out = []
    with torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            out.append(float(recipe.loss(0, list(range(recipe.dataset_size())), {"dit": dit})[0]))
    return float(np.mean(out))


def test_a_lora_run_trains_only_the_adapters_and_its_loss_falls(setup, trained):
    from training.static_recipe import StaticRecipe

    base = load_bundle(setup["base"]).tensors("dit")
    for which in ("modules", "ema"):
        state = checkpoint_dit(trained["checkpoint"], which)
        adapters = {k for k in state if k.rpartition(".")[2] in ("lora_a", "lora_b")}
        assert set(state) - adapters == set(base)
        for key in base:  # the base, the priors and the fitted control skip included: bit-identical
            assert torch.equal(state[key], base[key]), (which, key)
        assert len(adapters) == 2 * 4 * DIT["depth"]
        assert all(state[k].abs().max() > 0 for k in adapters if k.endswith("lora_b")), which

    recipe = StaticRecipe(recipe_settings(setup["codec"], lora_rank=RANK, lora_alpha=4.0), setup["data"])
    recipe.init_from_bundle(load_bundle(setup["base"]), recipe.modules())
    before = fixed_loss(recipe, recipe.model)
    tuned = copy.deepcopy(recipe.model)
    tuned.load_state_dict(checkpoint_dit(trained["checkpoint"]), strict=True)
    after = fixed_loss(recipe, tuned)
    assert after < 0.8 * before, (before, after)  # 2.42 -> 1.56 when written


def test_a_lora_run_without_init_is_refused_before_anything_is_written(setup, tmp_path):
    from training.trainer import train

    config = lora_config(tmp_path, setup["codec"], 4)
    with pytest.raises(BadInput, match="pass --init with the generator bundle to adapt") as caught:
        train("static", setup["data"], tmp_path / "run", config_path=config, progress=False)
    one_sentence(str(caught.value))
    assert not (tmp_path / "run").exists()


def test_a_lora_run_resumes_exactly(setup, tmp_path):
    from training.trainer import train

    config = lora_config(tmp_path, setup["codec"], 10)
    whole = train(
        "static", setup["data"], tmp_path / "a", config_path=config, init_bundle=setup["base"], progress=False
    )
    train(
        "static",
        setup["data"],
        tmp_path / "b",
        config_path=config,
        init_bundle=setup["base"],
        steps=5,
        progress=False,
    )
    # the second leg needs no --init: the base weights and its record come back from the checkpoint
    resumed = train("static", setup["data"], tmp_path / "b", config_path=config, resume=True, progress=False)
    for which in ("modules", "ema", "optimizer"):
        a, b = (
            load_file(str(whole / f"{which}.safetensors")),
            load_file(str(resumed / f"{which}.safetensors")),
        )
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.equal(a[key], b[key]), (which, key)
    state = json.loads((resumed / "state.json").read_text())
    assert state["recipe_state"]["base"]["sha256"] == bundle_hash(setup["base"])


# ---------------------------------------------------------------- export and load


def tuned_dit(checkpoint: Path) -> DiT:
    """The run's EMA model as it trained: the base DiT with unmerged adapters."""
    dit = DiT(DiTConfig(latent_channels=8, text_dim=384, **DIT))
    add_lora(dit, RANK, 4.0)
    dit.load_state_dict(checkpoint_dit(checkpoint), strict=True)
    return dit.eval()


def test_export_writes_a_small_adapter_bundle_recorded_against_its_base(setup, trained):
    adapter = load_bundle(trained["adapter"])
    assert adapter.kind == ADAPTER_KIND and adapter.files == ["adapter"]
    spec = adapter.config["adapter"]
    assert spec["format"] == "lora" and spec["rank"] == RANK and spec["alpha"] == 4.0
    assert spec["targets"] == [
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert adapter.meta["components"]["base"] == {"sha256": bundle_hash(setup["base"]), "path": "../base"}
    assert adapter.config["dit"] == load_bundle(setup["base"]).config["dit"]
    assert set(adapter.tensors("adapter")) == {
        f"{t}.{k}" for t in spec["targets"] for k in ("lora_a", "lora_b")
    }
    card = adapter.card
    assert (
        card["recipe"] == "static" and card["steps"] == 30 and card["config"]["recipe"]["lora_rank"] == RANK
    )
    assert card["base_model"] == {
        "bundle": "base",
        "sha256": bundle_hash(setup["base"]),
        "recipe": "static",
        "steps": 0,
    }
    assert "path" not in json.dumps(card["base_model"])  # no absolute paths of this machine in a shipped card
    small = (trained["adapter"] / "adapter.safetensors").stat().st_size
    big = (setup["base"] / "dit.safetensors").stat().st_size
    assert small * 8 < big, (small, big)


def test_loading_an_adapter_reproduces_the_trained_model(setup, trained):
    from pipelines.generator import load_generator

    gen = load_generator(trained["adapter"])  # its base is found at the recorded path
    assert gen.bundle_path == trained["adapter"].resolve() and gen.base_path == setup["base"].resolve()
    assert gen.bundle_hash == bundle_hash(trained["adapter"])
    assert not any(isinstance(m, LoraLinear) for m in gen.dit.modules())  # merged: as fast as the base
    inputs = dit_inputs(3)
    with torch.no_grad():
        want = tuned_dit(trained["checkpoint"])(**inputs)
        got = gen.dit(**inputs)
        base = load_generator(setup["base"]).dit(**inputs)
    change = float((want - base).abs().max())
    assert change > 0.05  # the adapter moved the model
    assert float((got - want).abs().max()) < 0.01 * change  # adapters ship in float16: equal up to rounding
    audio = gen.generate("a low tone", seconds=0.3, steps=2, seed=0)
    assert audio.samples.shape == (2, round(0.3 * 44100)) and np.isfinite(audio.samples).all()


def test_a_wrong_base_is_refused_in_one_sentence_naming_both(setup, trained, tmp_path):
    import shutil

    from pipelines.generator import load_generator

    want, other = bundle_hash(setup["base"])[:12], bundle_hash(setup["other"])[:12]
    with pytest.raises(BadInput, match="was trained on the generator 'base'") as caught:
        load_generator(trained["adapter"], base=setup["other"])
    message = str(caught.value)
    one_sentence(message)
    assert want in message and other in message and str(setup["other"]) in message
    # the recorded place holds another model
    shutil.copytree(trained["adapter"], tmp_path / "models" / "my-lora")
    shutil.copytree(setup["other"], tmp_path / "models" / "base")
    with pytest.raises(BadInput, match="is another model") as caught:
        load_generator(tmp_path / "models" / "my-lora")
    one_sentence(str(caught.value))
    assert want in str(caught.value) and other in str(caught.value)
    # no base anywhere
    shutil.copytree(trained["adapter"], tmp_path / "alone" / "my-lora")
    with pytest.raises(BadInput, match="needs its base generator 'base'") as caught:
        load_generator(tmp_path / "alone" / "my-lora")
    one_sentence(str(caught.value))
    with pytest.raises(BadInput, match="is not a LoRA adapter bundle") as caught:
        load_generator(setup["base"], base=setup["other"])
    one_sentence(str(caught.value))
    # a wrong --init for a LoRA run: the recipe's checks name what differs
    from training.trainer import train

    config = lora_config(tmp_path, setup["codec"], 2)
    with pytest.raises(BadInput, match="is a codec bundle") as caught:
        train(
            "static",
            setup["data"],
            tmp_path / "run",
            config_path=config,
            init_bundle=setup["codec"],
            progress=False,
        )
    one_sentence(str(caught.value))


# ---------------------------------------------------------------- sharing


def test_pack_and_import_an_adapter(setup, trained, tmp_path):
    import shutil

    from pipelines.generator import load_generator

    packed = pack_adapter(trained["adapter"], tmp_path / "share" / "my-lora.safetensors")
    assert packed.stat().st_size < 2 * (trained["adapter"] / "adapter.safetensors").stat().st_size + 8192
    original = load_generator(trained["adapter"], bf16=False).dit.state_dict()

    # into a models folder that holds a copy of the base (under another name): found there by its hash
    shutil.copytree(setup["base"], tmp_path / "mine" / "gen-v1")
    shutil.copytree(setup["codec"], tmp_path / "codec")  # where the copy's codec reference points
    imported = import_adapter(packed, tmp_path / "mine")
    assert imported == (tmp_path / "mine" / "my-lora").resolve()
    assert bundle_hash(imported) == bundle_hash(trained["adapter"])  # model.json unchanged
    assert import_adapter(packed, tmp_path / "mine") == imported  # again: nothing to do
    gen = load_generator(imported, bf16=False)
    assert gen.base_path == (tmp_path / "mine" / "gen-v1").resolve()
    for key, value in original.items():
        assert torch.equal(gen.dit.state_dict()[key], value), key

    # into a folder where its base is not: refused without a base, or with the wrong one; nothing is left
    theirs = tmp_path / "theirs"
    with pytest.raises(BadInput, match="needs its base generator") as caught:
        import_adapter(packed, theirs)
    one_sentence(str(caught.value))
    with pytest.raises(BadInput, match="was trained on the generator 'base'") as caught:
        import_adapter(packed, theirs, base=setup["other"])
    one_sentence(str(caught.value))
    assert not theirs.exists()  # a refused import leaves nothing behind
    # with its base named: the copy records where that base is, so it loads alone afterwards
    imported = import_adapter(packed, theirs, base=setup["base"], name="cellos")
    assert imported.name == "cellos"
    assert load_generator(imported, bf16=False).base_path == setup["base"].resolve()
    with pytest.raises(BadInput, match="already holds another model"):
        import_adapter(packed, tmp_path / "mine", name="gen-v1")

    # a folder imports too (its recorded base path is read from where it is)
    folder = import_adapter(trained["adapter"], tmp_path / "elsewhere")
    assert load_generator(folder, bf16=False).base_path == setup["base"].resolve()

    # a damaged or foreign file is one sentence
    data = bytearray(packed.read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "damaged.safetensors").write_bytes(bytes(data))
    with pytest.raises(BadInput) as caught:
        import_adapter(tmp_path / "damaged.safetensors", tmp_path / "x")
    one_sentence(str(caught.value))
    with pytest.raises(BadInput, match="not a packed soundloom adapter"):
        import_adapter(setup["base"] / "dit.safetensors", tmp_path / "x")
    with pytest.raises(BadInput, match="not a LoRA adapter"):
        pack_adapter(setup["base"], tmp_path / "base.safetensors")


def test_cli_packs_imports_and_generates_with_an_adapter(setup, trained, tmp_path, capsys):
    packed = tmp_path / "my-lora.safetensors"
    code, out, err = run_main(capsys, "bundle", "pack-adapter", trained["adapter"], "--out", packed)
    assert code == 0 and packed.is_file(), err
    argv = ("bundle", "import-adapter", packed, "--into", tmp_path / "models")
    line = assert_one_line_error(*run_main(capsys, *argv, "--base", setup["other"])[::2])
    assert "was trained on the generator 'base'" in line
    code, out, err = run_main(capsys, *argv, "--base", setup["base"])
    assert code == 0 and "adapter imported as" in out, err
    wav = tmp_path / "take.wav"
    code, out, err = run_main(
        capsys, "generate", "a low tone", "--seconds", "0.3", "--steps", "2", "--seed", "1",
        "--model", tmp_path / "models" / "my-lora", "-o", wav,
    )  # fmt: skip
    assert code == 0 and wav.is_file(), err
    record = json.loads((tmp_path / "take.wav.json").read_text())
    assert record["model_hash"] == bundle_hash(tmp_path / "models" / "my-lora")


# ---------------------------------------------------------------- rhythm features grown on --init


def test_init_grows_rhythm_features_on_a_generator_without_them_keeping_its_function(setup):
    from dataclasses import replace

    from training.static_recipe import StaticRecipe

    config = recipe_settings(setup["codec"])
    recipe = StaticRecipe({**config, "dit": {**DIT, "rhythm_harmonics": 3}}, setup["data"])
    modules = recipe.modules()
    recipe.init_from_bundle(load_bundle(setup["base"]), modules)
    grown = modules["dit"].eval()
    base = DiT(replace(grown.cfg, rhythm_harmonics=0)).eval()
    load_bundle(setup["base"]).load_into("dit", base)
    for key, value in base.state_dict().items():
        assert torch.equal(grown.state_dict()[key], value), key
    assert grown.rhythm_embedder.weight.abs().sum() == 0
    g = torch.Generator().manual_seed(0)
    b, t = 2, 21
    controls = torch.zeros(b, 8, t)
    phase = torch.linspace(0, 6 * np.pi, t)
    controls[:, 4], controls[:, 5] = torch.sin(phase), torch.cos(phase)
    inputs = {
        "text": torch.randn(b, 5, 384, generator=g),
        "text_mask": torch.ones(b, 5, dtype=torch.bool),
        "seconds": torch.tensor([0.4, 0.5]),
        "controls": controls,
        "control_mask": torch.ones(b, 8, t),
    }
    x, tt = torch.randn(b, 8, t, generator=g), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.allclose(grown(x, tt, **inputs), base(x, tt, **inputs), atol=1e-6)


def test_lora_on_a_generator_without_rhythm_features_cannot_add_them(setup, tmp_path):
    from training.static_recipe import StaticRecipe

    config = recipe_settings(setup["codec"], lora_rank=4, lora_alpha=4.0)
    recipe = StaticRecipe({**config, "dit": {**DIT, "rhythm_harmonics": 3}}, setup["data"])
    with pytest.raises(BadInput, match="LoRA adapters cannot add") as caught:
        recipe.init_from_bundle(load_bundle(setup["base"]), recipe.modules())
    one_sentence(str(caught.value))
    # and a generator that has them takes a LoRA run as any other
    with_rhythm = {**recipe_settings(setup["codec"]), "dit": {**DIT, "rhythm_harmonics": 3}}
    bundle = export_generator(with_rhythm, setup["data"], tmp_path / "rhythmic", seed=3)
    assert load_bundle(bundle).config["dit"]["rhythm_harmonics"] == 3


# ---------------------------------------------------------------- a full fine-tune blended with its start


def full_config(tmp: Path, codec: Path, steps: int, **recipe) -> Path:
    """lora_config's run settings with a recipe that trains every weight (no adapters), plus `recipe`."""
    path = lora_config(tmp, codec, steps)
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "recipe": recipe_settings(codec, **recipe)}))
    return path


def test_keep_change_exports_the_start_weights_plus_that_share_of_the_runs_change(setup, tmp_path):
    from training.trainer import export_run, train

    config = full_config(tmp_path, setup["codec"], 6, keep_change=0.25)
    checkpoint = train(
        "static",
        setup["data"],
        tmp_path / "run",
        config_path=config,
        init_bundle=setup["base"],
        progress=False,
    )
    out = export_run(tmp_path / "run", tmp_path / "blended")
    bundle = load_bundle(out)
    exported, start, run = (
        bundle.tensors("dit"),
        load_bundle(setup["base"]).tensors("dit"),
        checkpoint_dit(checkpoint),
    )
    assert exported.keys() == run.keys()
    moved = 0
    for key, w in run.items():
        if not w.is_floating_point():
            continue
        want = start[key].float() + 0.25 * (w.float() - start[key].float())
        assert torch.allclose(exported[key].float(), want.half().float(), atol=1e-3, rtol=1e-3), key
        moved += not torch.equal(w.half(), start[key].half())
    assert moved > 10  # the run changed the weights, so the blend is not the start model again
    assert bundle.card["blend"] == {
        "keep_change": 0.25,
        "start_sha256": bundle_hash(setup["base"]),
        "tensors_blended": sum(v.is_floating_point() for v in run.values()),
    }


def test_keep_change_needs_init_a_full_fine_tune_and_a_share_in_0_1(setup, tmp_path):
    from training.trainer import train

    def attempt(name, init, **recipe):
        config = full_config(tmp_path, setup["codec"], 2, **recipe)
        with pytest.raises(BadInput) as caught:
            train(
                "static", setup["data"], tmp_path / name, config_path=config, init_bundle=init, progress=False
            )
        one_sentence(str(caught.value))
        assert not (tmp_path / name).exists()
        return str(caught.value)

    assert "pass --init with that generator bundle" in attempt("no-init", None, keep_change=0.5)
    assert "set keep_change 1 (or lora_rank 0)" in attempt(
        "lora", setup["base"], keep_change=0.5, lora_rank=2
    )
    for bad in (0, 1.5, -0.2, True, "half"):
        assert "keep_change must be a number above 0 and at most 1" in attempt(
            "bad", setup["base"], keep_change=bad
        )


def test_a_blended_export_whose_start_model_changed_is_refused_in_one_sentence(setup, tmp_path, capsys):
    import shutil

    from training.trainer import export_run, train

    start = shutil.copytree(setup["base"], tmp_path / "start")
    config = full_config(tmp_path, setup["codec"], 2, keep_change=0.5)
    train("static", setup["data"], tmp_path / "run", config_path=config, init_bundle=start, progress=False)
    shutil.rmtree(start)
    shutil.copytree(setup["other"], start)  # another generator where the start was
    with pytest.raises(BadInput, match="is not the one this run started from") as caught:
        export_run(tmp_path / "run", tmp_path / "out")
    one_sentence(str(caught.value))
    assert not (tmp_path / "out").exists()
    shutil.rmtree(start)
    with pytest.raises(BadInput, match="which is not there any more"):
        export_run(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # what the sentence offers works: the run's own weights, unblended
    out = export_run(tmp_path / "run", tmp_path / "out", keep_change=1.0)
    assert "blend" not in load_bundle(out).card
    code, _, err = run_main(
        capsys, "bundle", "export", "--run", tmp_path / "run", "--data", setup["data"], "--out", tmp_path / "cli",
        "--keep-change", "0",
    )  # fmt: skip
    assert "--keep-change" in assert_one_line_error(code, err)
    assert not (tmp_path / "cli").exists()


# ---------------------------------------------------------------- replay distillation (full fine-tune)


def distill_recipe(setup, share: float):
    """A static recipe from the base bundle whose extra_data replays the same tiny corpus, distilled by `share`."""
    from training.static_recipe import StaticRecipe

    config = recipe_settings(
        setup["codec"], extra_data=[str(setup["data"])], distill_replay=share, p_known=0.0
    )
    recipe = StaticRecipe(config, setup["data"])
    modules = recipe.modules()
    recipe.init_from_bundle(load_bundle(setup["base"]), modules)
    return recipe, modules["dit"]


def test_distill_replay_teaches_the_replayed_clips_the_start_models_velocity(setup):
    """At the start of a fine-tune the model is its --init: with distill_replay 1 the replayed rows' target is
    that model's own velocity, so their loss is zero, while the user's rows keep the eps - x0 target."""
    torch.manual_seed(0)
    recipe, dit = distill_recipe(setup, 1.0)
    dit.eval()  # no dropout: the student is exactly the teacher here
    own = len(recipe.data) // 2  # --data's clips come first, the replayed copy after
    assert not any(d.get("replay") for d in recipe.data[:own]) and all(d["replay"] for d in recipe.data[own:])
    indices = [0, 1, own, own + 1]
    t = torch.full((4,), 0.5)

    def losses(share_recipe):
        torch.manual_seed(1)  # the same crops, drops and noise for both recipes
        batch = share_recipe.batch(indices)
        with torch.no_grad():
            return share_recipe.flow_loss(dit, batch, t), batch

    distilled, batch = losses(recipe)
    assert batch["replay"].tolist() == [False, False, True, True]
    assert float(distilled[2:].max()) < 1e-6  # replayed rows: the teacher's own answer
    assert float(distilled[:2].min()) > 1e-3  # the user's rows: the data's target, as before
    plain, _ = losses(distill_recipe(setup, 0.0)[0])
    assert torch.allclose(plain[:2], distilled[:2]) and float(plain[2:].min()) > 1e-3
    half, _ = losses(distill_recipe(setup, 0.5)[0])
    # a share s of the way: the target error scales by (1 - s), the squared error by (1 - s)^2
    assert torch.allclose(half[2:], 0.25 * plain[2:], rtol=1e-3, atol=1e-7)


def test_distill_replay_needs_init_replayed_data_and_a_share_in_0_1(setup, tmp_path):
    from training.static_recipe import StaticRecipe
    from training.trainer import train

    for bad in (-0.1, 1.5, True, "all"):
        with pytest.raises(BadInput, match="distill_replay must be a number from 0 to 1") as caught:
            StaticRecipe(
                recipe_settings(setup["codec"], extra_data=[str(setup["data"])], distill_replay=bad),
                setup["data"],
            )
        one_sentence(str(caught.value))
    with pytest.raises(BadInput, match="this run replays none") as caught:
        StaticRecipe(recipe_settings(setup["codec"], distill_replay=1.0), setup["data"])
    one_sentence(str(caught.value))
    config = full_config(tmp_path, setup["codec"], 2, extra_data=[str(setup["data"])], distill_replay=1.0)
    with pytest.raises(BadInput, match="pass --init with that generator bundle") as caught:
        train("static", setup["data"], tmp_path / "no-init", config_path=config, progress=False)
    one_sentence(str(caught.value))
    assert not (tmp_path / "no-init").exists()
    checkpoint = train(  # with --init it runs, and its loss is finite
        "static",
        setup["data"],
        tmp_path / "run",
        config_path=config,
        init_bundle=setup["base"],
        progress=False,
    )
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert checkpoint.exists() and losses and all(np.isfinite(x) for x in losses if x is not None)
