"""The trainer's optimizer groups (one AdamW per group, one group trained per step) and recipe state
(saved in every checkpoint, restored on resume and export), on a tiny two-module recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pipelines.bundle import load_bundle, save_bundle
from pipelines.errors import BadInput
from training.checkpoint import flatten_optimizers, read_checkpoint, restore_optimizers
from training.recipes import RECIPES
from training.trainer import export_run, train

LR_SCALE_SECOND = 0.5


class TwoGroupRecipe:
    """y = b(a(x)) regressing a fixed map; group "first" trains `a`, "second" trains `b`, alternating by
    step. Its state (a count of loss calls) scales the loss, so a resume that lost it would drift."""

    name = "two-groups"

    def __init__(self, config: dict, data_dir: Path):
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)
        self.calls = 0
        self.teacher = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))

    def modules(self) -> dict[str, nn.Module]:
        return {"a": self.a, "b": self.b}

    def dataset_size(self) -> int:
        return 16

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"first": ["a"], "second": ["b"]}

    def group_for_step(self, step: int) -> str:
        return "first" if step % 2 == 0 else "second"

    def lr_scale(self, group: str) -> float:
        return LR_SCALE_SECOND if group == "second" else 1.0

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]

    def loss(self, step: int, indices: list[int], modules: dict[str, nn.Module]):
        x = torch.randn(len(indices), 4)
        self.calls += 1
        err = (modules["b"](modules["a"](x)) - torch.tanh(x @ self.teacher)).square().mean()
        return err * (1.0 + 0.1 * self.calls), {"calls": float(self.calls)}

    def export(self, modules: dict[str, nn.Module], out_dir: Path, card: dict | None = None) -> None:
        tensors = {name: m.state_dict() for name, m in modules.items()}
        save_bundle(out_dir, {"calls": self.calls}, tensors, dtype=torch.float32, kind="toy", card=card)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(RECIPES, "two-groups", TwoGroupRecipe)


def config_file(tmp_path: Path, **settings) -> Path:
    config = {
        "steps": 8,
        "batch_size": 4,
        "lr": 0.01,
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "ema_decay": 0.9,
        "ckpt_every": 1,
        "log_every": 1,
        "keep_checkpoints": 100,
        "threads": 1,
        **settings,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def weights(checkpoint: Path, file: str = "modules") -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in load_file(checkpoint / f"{file}.safetensors").items()}


def changed_modules(before: dict, after: dict) -> set[str]:
    return {key.partition(".")[0] for key in before if not torch.equal(before[key], after[key])}


def test_each_step_trains_only_its_group(tmp_path):
    run = tmp_path / "run"
    train("two-groups", tmp_path, run, config_path=config_file(tmp_path), progress=False)
    for step in range(8):
        before, after = (run / "checkpoints" / f"step_{s:08d}" for s in (step, step + 1))
        if step == 0:
            continue  # no checkpoint before the first step
        trained = "a" if step % 2 == 0 else "b"
        assert changed_modules(weights(before), weights(after)) == {trained}, step
        assert changed_modules(weights(before, "ema"), weights(after, "ema")) == {trained}, step


def test_idle_optimizers_keep_their_moments_and_lr_scales_apply(tmp_path):
    run = tmp_path / "run"
    final = train("two-groups", tmp_path, run, config_path=config_file(tmp_path, steps=7), progress=False)
    meta, tensors = read_checkpoint(final)
    groups = meta["optimizer"]["groups"]
    assert sorted(groups) == ["first", "second"]
    # 7 steps: "first" trained at steps 0, 2, 4, 6 and "second" at 1, 3, 5; Adam counts only its own
    adam_steps = {
        group: {
            float(t)
            for key, t in tensors["optimizer"].items()
            if key.startswith(f"{group}/") and key.endswith(".step")
        }
        for group in groups
    }
    assert adam_steps == {"first": {4.0}, "second": {3.0}}
    assert {g: groups[g]["param_groups"][0]["lr"] for g in groups} == {
        "first": 0.01,
        "second": pytest.approx(0.01 * LR_SCALE_SECOND),
    }
    assert {key.partition("/")[0] for key in tensors["optimizer"]} == {"first", "second"}
    assert meta["recipe_state"] == {"calls": 7}


def test_resume_restores_every_optimizer_and_the_recipe_state_exactly(tmp_path):
    config = config_file(tmp_path, ckpt_every=3)
    straight = train("two-groups", tmp_path, tmp_path / "straight", config_path=config, progress=False)
    seen = []

    def crash_after_step_4(record):
        seen.append(record["step"])
        if record["step"] == 4:
            raise KeyboardInterrupt  # a crash after step 4 was logged; the newest checkpoint is step 3

    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train("two-groups", tmp_path, run, config_path=config, progress=False, on_metrics=crash_after_step_4)
    assert seen == [1, 2, 3, 4] and not (run / "checkpoints" / "step_00000004").exists()
    resumed = train("two-groups", tmp_path, run, config_path=config, resume=True, progress=False)

    for file in ("modules", "ema", "optimizer"):
        a, b = weights(straight, file), weights(resumed, file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    assert read_checkpoint(resumed)[0]["recipe_state"] == {"calls": 8}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert [(r["loss"], r["calls"]) for r in lines] == [(r["loss"], r["calls"]) for r in want]


def test_export_sees_the_recipe_state(tmp_path):
    run = tmp_path / "run"
    train("two-groups", tmp_path, run, config_path=config_file(tmp_path, steps=5), progress=False)
    bundle = load_bundle(export_run(run, tmp_path / "bundle"))
    assert bundle.config == {"calls": 5}


def test_optimizer_layouts_must_match_on_restore():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    single = torch.optim.AdamW(list(a.parameters()) + list(b.parameters()))
    grouped = {"first": torch.optim.AdamW(a.parameters()), "second": torch.optim.AdamW(b.parameters())}
    tensors, rest = flatten_optimizers(grouped)
    with pytest.raises(ValueError, match="optimizer groups"):
        restore_optimizers(single, tensors, json.loads(json.dumps(rest)))
    tensors, rest = flatten_optimizers(single)
    with pytest.raises(ValueError, match="one optimizer"):
        restore_optimizers(grouped, tensors, json.loads(json.dumps(rest)))


def test_resuming_a_grouped_run_with_another_recipe_layout_is_bad_input(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train("two-groups", tmp_path, run, config_path=config_file(tmp_path, steps=2), progress=False)
    monkeypatch.setattr(TwoGroupRecipe, "optimizer_groups", lambda self: {"all": ["a", "b"]})
    with pytest.raises(BadInput, match="does not fit the two-groups recipe"):
        train(
            "two-groups",
            tmp_path,
            run,
            config_path=config_file(tmp_path, steps=4),
            resume=True,
            progress=False,
        )
