"""The generator recipes (static, ARC, stage-adaptive) on the trainer's device.

Every random draw stays on the CPU, from the same generators in the same order, and is moved to the
modules' device only then; so a CPU run is bit for bit what it was before the recipes could train on a
GPU. The bundled base generator was trained with that code and its card must stay reproducible, so the
first tests hold tiny runs of each recipe to checksums recorded with the code before the change (commit
b70d22b): weights, EMA, optimizer state, every logged metric, the recipe's state and the previews.

No GPU is at hand where these tests were written, so no test here runs on CUDA or MPS. What stands in for
one is torch's "meta" device (tensors with a shape and no data): batches, held-out and probe sets built
for it, and the flow loss of a DiT moved to it, must hold nothing left on the CPU (an op mixing the two
fails), while drawing exactly what a CPU batch draws.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_static_recipe import click_train, tone
from tiny_models import TINY_CODEC
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.bundle import save_bundle
from pipelines.codec import CodecConfig, CodecModel
from pipelines.controls import CONTROL_NAMES
from pipelines.inference import BF16_ENV
from training.latent_cache import encode_corpus

SR = 44100
# the bundled static.json's DiT in miniature: pitch and tempo priors, x0-predicted measured channels
DIT = {
    "dim": 32,
    "depth": 4,
    "heads": 2,
    "mlp_ratio": 2.0,
    "max_seconds": 20.0,
    "pitch_classes": 24,
    "pitch_low": 48,
    "tempo_classes": 200,
    "tempo_low": 40,
    "x0_channels": 3,
}
DRUMS = {"style": "waltz", "meter": "3/4", "bars": 3, "kit": 0, "swing": 0.0, "fill": False}
CLIPS = [  # (name, audio, captions, split, bpm or None for a tone)
    ("low", lambda: tone(220.0, 0.8), ["a low tone", "a dull hum"], "train", None),
    ("mid", lambda: tone(440.0, 0.6), ["a tone at A4"], "train", None),
    ("high", lambda: tone(880.0, 0.7), ["a high beep"], "train", None),
    ("clicks", lambda: click_train(120.0, 1.0), ["clicks at 120 BPM"], "train", 120.0),
    ("fast", lambda: click_train(180.0, 0.7), ["fast clicks"], "train", 180.0),
    ("v1", lambda: tone(330.0, 0.5), ["a tone for validation"], "val", None),
    ("v2", lambda: click_train(90.0, 0.7), ["slow clicks for validation"], "val", 90.0),
    ("v3", lambda: tone(660.0, 0.4), ["a bright validation beep"], "val", None),
]

# sha256 of each tiny run (`run_digest`), recorded with the code before the recipes moved to a device, on
# the machine named below; elsewhere the fixture's inputs or torch's kernels may differ in the last bit,
# and the test says so instead of failing
RECORDED_ON = {
    "torch": "2.13.0+cpu",
    "cpu": "AVX512",
    "inputs": "1f82aeae80c35fa6498d6f784dcbdeeda605663e66c221e570927a29baaf107e",  # the latent cache
}
EXPECTED = {
    "static": "a2ef2d8c395104e5c345ce5603e3dd071a3ba64c48bd92a758d3ddb20f07164e",
    # recorded again when ARC's generator steps gained the prompt priors' cross-entropy, a deliberate change
    # of what the recipe computes (before: 62d4b86209a598343a4b70dc494b1814a9bb00fae8ca8bcd517018cd17105829)
    "arc": "6cb691b2625cf022092499b3a2ba00d1395a53e24bcbd8c035b07486cc04fa13",
    "stage-adaptive": "f33a9bbfe8516aef0d0b09c7927587f3ce6d03c2c28c32be24dac7846e08ad43",
}


def synthetic_controls(audio, frames: int, rate: float, *, beats_s=None, bars_s=None) -> SimpleNamespace:
    """Control channels without librosa (pyin costs minutes here): level per frame, a tone's one pitch
    from its spectrum's peak, and the beat phase of the clip's known grid."""
    mono = audio.samples.mean(axis=0).astype(np.float64)
    hop = int(round(audio.sample_rate / rate))
    values = np.zeros((len(CONTROL_NAMES), frames), np.float32)
    present = np.zeros(len(CONTROL_NAMES), dtype=bool)
    for i in range(frames):
        rms = float(np.sqrt(np.mean(mono[i * hop : (i + 1) * hop] ** 2))) if i * hop < len(mono) else 0.0
        values[0, i] = np.clip((20 * np.log10(rms + 1e-5) + 80) / 80, 0.0, 1.2)
    present[:2] = True
    power = np.abs(np.fft.rfft(mono)) ** 2
    if power.max() > 0.3 * power.sum():  # one partial holds the sound: a tone
        f0 = np.argmax(power) * audio.sample_rate / len(mono)
        values[2], values[3] = np.log2(f0 / 440.0) / 4.0, 1.0
        present[2:4] = True
    if beats_s is not None and len(beats_s) > 1:
        centres = (np.arange(frames) + 0.5) / rate
        phase = 2 * np.pi * np.interp(centres, beats_s, np.arange(len(beats_s)), right=np.nan)
        values[4], values[5] = np.nan_to_num(np.sin(phase)), np.nan_to_num(np.cos(phase), nan=1.0)
        present[4:6] = True
    return SimpleNamespace(values=values, present=present)


def write_corpus(root: Path) -> Path:
    (root / "audio").mkdir(parents=True)
    lines = []
    for name, make, captions, split, bpm in CLIPS:
        x = make()
        sf.write(root / "audio" / f"{name}.flac", np.stack([x, x], 1).astype(np.float32), SR)
        if bpm is None:
            params = {"category": "tone", "bpm": None, "beats_s": [], "bars_s": []}
        else:
            beats = [round(k * 60.0 / bpm, 4) for k in range(int(len(x) / SR * bpm / 60.0) + 1)]
            params = {"category": "drums", "bpm": bpm, **DRUMS, "beats_s": beats, "bars_s": []}
        record = {
            "id": name,
            "path": f"audio/{name}.flac",
            "captions": captions,
            "seconds": len(x) / SR,
            "split": split,
            "params": {**params, "brightness_hz": 3000.0},
        }
        lines.append(json.dumps(record))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tensors_digest(digest, tensors: dict[str, torch.Tensor]) -> None:
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        digest.update(f"{key} {t.dtype} {list(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny codec with measured level and pitch channels (so the DiT predicts them as x0), a corpus of
    tones and click loops encoded with it, and a tiny SSL embedder of its latents."""
    from test_stage_adaptive import ssl_bundle

    root = tmp_path_factory.mktemp("devices")
    torch.manual_seed(0)
    model = CodecModel(CodecConfig(**TINY_CODEC, harmonics=4, measured_gain=True))
    codec = save_bundle(root / "codec", asdict(model.cfg), {"codec": model.state_dict()}, kind="codec")
    data = write_corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.latent_cache.measure_controls", synthetic_controls)
        cache = encode_corpus(data, codec, progress=False)
    inputs = hashlib.sha256()
    for path in sorted(cache.glob("*.safetensors")):
        tensors_digest(inputs, load_file(path))
    return {
        "root": root,
        "codec": codec,
        "data": data,
        "ssl": ssl_bundle(root / "ssl", codec),
        "inputs": inputs.hexdigest(),
    }


def static_settings(setup: dict) -> dict:
    """The bundled static.json's recipe in miniature (its noise offset, time shift, measured weight, pitch
    hints and both priors)."""
    return {
        "codec": str(setup["codec"]),
        "segment_frames": 24,
        "dit": DIT,
        "measured_weight": 4.0,
        "time_shift": 4.0,
        "noise_offset": 1.0,
        "p_pitch_hint": 0.5,
        "pitch_prior_captions": 6,
        "tempo_prior_captions": 6,
        "tempo_caption_pool": 8,
        "preview_steps": 2,
    }


def arc_settings(setup: dict) -> dict:
    return {
        "codec": str(setup["codec"]),
        "segment_frames": 24,
        "dit": DIT,
        "time_shift": 4.0,
        "noise_offset": 1.0,
        "p_pitch_hint": 0.5,
        "d_head_hidden": 16,
        "heldout_every": 2,
        "heldout_clips": 3,
        "r_penalty": 0.01,
        "preview_steps": 2,
    }


def stage_adaptive_settings(setup: dict) -> dict:
    return {
        **static_settings(setup),
        "ssl_embedder": str(setup["ssl"]),
        "probe_every": 2,
        "probe_clips": 3,
        "window_ratio": 10.0,
        "window_min_probes": 4,
        "regime_warmup": 0,
        "align_depth": 2,
        "align_hidden": 16,
        "group_every": 2,
        "groups": 2,
        "sketch_coords": 16,
        "ari_stable": -1.0,
        "stable_checks": 1,
        "r_structure": 0.0,
        "structure_ramp": 2,
        "t_bins": 4,
    }


def run_config(tmp: Path, name: str, recipe: dict) -> Path:
    """Four steps with the bundled configs' bf16 autocast, a preview at the end."""
    config = {
        "steps": 4,
        "batch_size": 4,
        "lr": 2e-3,
        "warmup_steps": 1,
        "ema_decay": 0.9,
        "ckpt_every": 100,
        "log_every": 1,
        "preview_every": 4,
        "threads": 1,
        "autocast_bf16": True,
        "recipe": recipe,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def runs(setup) -> dict[str, Path]:
    """Tiny runs of static, then ARC from static's exported bundle, then stage-adaptive, on the CPU."""

    root = setup["root"]
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        # the bundled configs' bf16 autocast is what these runs check, also on a CPU without native bf16
        patch.setenv(BF16_ENV, "1")
        _train_all(setup, root, out)
    return out


def _train_all(setup, root: Path, out: dict) -> None:
    from training.trainer import export_run, train

    config = run_config(root, "static", static_settings(setup))
    train("static", setup["data"], root / "static", config_path=config, progress=False)
    out["static"] = root / "static"
    base = export_run(root / "static", root / "base")
    config = run_config(root, "arc", arc_settings(setup))
    train("arc", setup["data"], root / "arc", config_path=config, init_bundle=base, progress=False)
    out["arc"] = root / "arc"
    config = run_config(root, "stage-adaptive", stage_adaptive_settings(setup))
    train("stage-adaptive", setup["data"], root / "sa", config_path=config, progress=False)
    out["stage-adaptive"] = root / "sa"


def run_digest(run: Path) -> str:
    """sha256 of a run's final weights, EMA and optimizer state, its metrics (less wall-clock times), the
    recipe's state and the samples of its previews."""
    digest = hashlib.sha256()
    final = sorted((run / "checkpoints").iterdir())[-1]
    for name in ("modules", "ema", "optimizer"):
        tensors_digest(digest, load_file(final / f"{name}.safetensors"))
    state = json.loads((final / "state.json").read_text())
    digest.update(json.dumps(state.get("recipe_state"), sort_keys=True).encode())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = {k: v for k, v in json.loads(line).items() if k not in ("time", "elapsed_s")}
        digest.update(json.dumps(row, sort_keys=True).encode())
    previews = sorted((run / "previews").rglob("*.wav"))
    assert previews, "the run wrote no preview"
    for wav in previews:
        digest.update(sf.read(wav, dtype="float32")[0].tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("recipe", ["static", "arc", "stage-adaptive"])
def test_a_cpu_run_is_bit_identical_to_the_code_before_devices(setup, runs, recipe):
    here = {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "inputs": setup["inputs"],
    }
    if here != RECORDED_ON:
        pytest.skip(f"the checksums were recorded on {RECORDED_ON}, this is {here}")
    assert run_digest(runs[recipe]) == EXPECTED[recipe]


# ---------------------------------------------------------------- the meta device: no tensor left behind

FRAMES = 24  # the runs' segment_frames: the one whole number the recipes read back (a clip's length)
INDICES = [0, 1, 2, 3]


def stand_in(dtype: torch.dtype) -> bool | float | int:
    """What a meta tensor's value reads as: True, 0.5, or FRAMES."""
    return True if dtype == torch.bool else 0.5 if dtype.is_floating_point else FRAMES


class MetaValues(TorchDispatchMode):
    """Lets a loss whose metrics read numbers run on the meta device: reading a meta tensor (float(),
    bool(), .tolist(), .cpu()) gives stand-ins, and a boolean mask keeps every row. Any other op that
    meets a meta and a CPU tensor still fails, which is what the tests look for."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.device.type == "meta":
            if func is torch.ops.aten._local_scalar_dense.default:
                return stand_in(x.dtype)
            if (
                func is torch.ops.aten._to_copy.default
                and torch.device(kwargs.get("device", "meta")).type == "cpu"
            ):
                return torch.full(x.shape, stand_in(x.dtype), dtype=kwargs.get("dtype") or x.dtype)
            if (
                func is torch.ops.aten.index.Tensor
                and args[1][0] is not None
                and args[1][0].dtype == torch.bool
            ):
                assert len(args[1]) == 1, "a boolean mask on the first dimensions only"
                mask = args[1][0]
                return x.new_empty((mask.numel(), *x.shape[mask.dim() :]))
        return func(*args, **kwargs)


def build_recipe(name: str, setup: dict):
    from training.arc_recipe import ArcRecipe
    from training.stage_adaptive import StageAdaptiveRecipe
    from training.static_recipe import StaticRecipe

    if name == "arc":
        recipe = ArcRecipe(arc_settings(setup), setup["data"])
        recipe.init = {"bundle": "random weights"}  # G and D keep their init: enough to move tensors
        return recipe
    if name == "stage-adaptive":
        return StageAdaptiveRecipe(stage_adaptive_settings(setup), setup["data"])
    return StaticRecipe(static_settings(setup), setup["data"])


@pytest.mark.parametrize("name", ["static", "arc", "stage-adaptive"])
def test_losses_and_previews_run_where_the_modules_are_with_the_cpus_draws(
    setup, name, tmp_path, monkeypatch
):
    """Modules on the meta device: the loss (two steps: ARC's D then G step; stage-adaptive's probe and
    structure check at step 0), its backward pass and a preview run there, which they cannot if a batch,
    noise, time, mask, weight or prior tensor stayed on the CPU; and they draw from the CPU's generator
    exactly what the same calls draw with the modules on the CPU (a draw made on the modules' device
    would not come from it)."""
    autocast = torch.autocast  # the DiT switches autocast off on its input's device, which meta is not
    monkeypatch.setattr(
        torch, "autocast", lambda kind, *a, **k: autocast("cpu" if kind == "meta" else kind, *a, **k)
    )
    recipe = build_recipe(name, setup)
    cpu_modules = recipe.modules()
    drawn = []
    for step in (0, 1):
        torch.manual_seed(step)
        recipe.loss(step, INDICES, cpu_modules)
        drawn.append(torch.random.get_rng_state())
    torch.manual_seed(2)
    recipe.preview(2, {k: copy.deepcopy(m).eval() for k, m in cpu_modules.items()}, tmp_path / "cpu")
    drawn.append(torch.random.get_rng_state())

    meta_modules = {k: copy.deepcopy(m).to("meta") for k, m in cpu_modules.items()}
    with MetaValues():
        for step in (0, 1):
            torch.manual_seed(step)
            loss, _ = recipe.loss(step, INDICES, meta_modules)
            assert loss.device.type == "meta" and loss.requires_grad
            loss.backward()
            assert torch.equal(torch.random.get_rng_state(), drawn[step]), f"step {step} drew otherwise"
        torch.manual_seed(2)
        recipe.preview(2, meta_modules, tmp_path / "meta")
        assert torch.equal(torch.random.get_rng_state(), drawn[2]), "the preview drew otherwise"
        grads = [p.grad for m in meta_modules.values() for p in m.parameters() if p.grad is not None]
        assert grads and all(g.device.type == "meta" for g in grads)

        built = {"batch": recipe.batch(INDICES, "meta")}
        if name == "arc":
            built["held-out pairs"] = recipe.heldout_batch("meta")
        if name == "stage-adaptive":
            built["probe set"] = recipe.probe_set("meta")
    for what, tensors in built.items():
        left = sorted(k for k, v in tensors.items() if v.device.type != "meta")
        assert not left, f"the {what} left {left} on the CPU"
    assert (tmp_path / "meta" / "step00000002_val0.wav").is_file()


def test_a_batch_on_another_device_is_the_cpu_batch_moved(setup):
    """The same draws, in the same order, whatever the device: the meta batch has the CPU batch's shapes
    and dtypes and leaves the generator where the CPU batch left it."""
    recipe = build_recipe("static", setup)
    torch.manual_seed(5)
    cpu = recipe.batch(INDICES)
    after = torch.random.get_rng_state()
    torch.manual_seed(5)
    meta = recipe.batch(INDICES, "meta")
    assert torch.equal(torch.random.get_rng_state(), after)
    assert meta.keys() == cpu.keys()
    for key, value in cpu.items():
        assert value.device.type == "cpu" and meta[key].device.type == "meta", key
        assert (meta[key].shape, meta[key].dtype) == (value.shape, value.dtype), key


def test_the_generator_recipes_accept_every_device_the_trainer_knows():
    from training.arc_recipe import ArcRecipe
    from training.stage_adaptive import FixedScheduleRecipe, RandomThresholdRecipe, StageAdaptiveRecipe
    from training.static_recipe import StaticRecipe
    from training.trainer import DEVICES

    for recipe in (StaticRecipe, ArcRecipe, StageAdaptiveRecipe, RandomThresholdRecipe, FixedScheduleRecipe):
        assert set(recipe.devices) == set(DEVICES), recipe.name
