"""The trainer core on the toy recipe: exact resume after SIGKILL, control file, signals, corrupted
checkpoints, metrics stream, bundles in and out. Every run is a few dozen tiny steps."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.bundle import load_bundle
from pipelines.errors import BadInput
from pipelines.inference import BF16_ENV
from training.checkpoint import flatten_optimizer, read_checkpoint, unflatten_optimizer
from training.trainer import (
    RunFolder,
    TrainConfig,
    batch_indices,
    export_run,
    load_run_for_export,
    lr_at,
    parse_overrides,
    resolve_config,
    train,
    training_card,
)

REPO = Path(__file__).resolve().parents[1]
TOY = {"size": 32, "dim": 4, "hidden": 16}


def write_config(tmp_path: Path, name: str = "config.json", recipe: dict | None = None, **settings) -> Path:
    config = {
        "steps": 20,
        "batch_size": 4,
        "lr": 0.01,
        "warmup_steps": 3,
        "ema_decay": 0.9,
        "ckpt_every": 5,
        "log_every": 1,
        "keep_checkpoints": 10,
        "threads": 1,
        "recipe": {**TOY, **(recipe or {})},
        **settings,
    }
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = ("modules", "ema")  # cloned: load_file maps the file, which a test may damage afterwards
    return {f"{f}/{k}": t.clone() for f in files for k, t in load_file(path / f"{f}.safetensors").items()}


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.allclose(ta[key], tb[key], atol=1e-6), key


def start_trainer(run: Path, config: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "training.trainer", "--recipe", "toy", "--data", str(run.parent)]
    cmd += ["--out", str(run), "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def read_status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lr_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1)
    config.lr_schedule = "constant"
    assert lr_at(50, config) == 1.0


def test_batches_cover_each_example_once_per_epoch_and_split_across_ranks():
    seen = [i for step in range(4) for i in batch_indices(7, step, 0, 1, 8, 32)]
    assert sorted(seen) == list(range(32))
    assert batch_indices(7, 4, 0, 1, 8, 32) != batch_indices(7, 0, 0, 1, 8, 32)  # a new order next epoch
    two = [batch_indices(7, 0, r, 2, 4, 32) for r in (0, 1)]
    assert two[0] + two[1] == batch_indices(7, 0, 0, 1, 8, 32)  # same global batch in another layout


def test_config_rejects_unknown_and_bad_settings(tmp_path):
    with pytest.raises(BadInput, match="Unknown setting 'lrr'"):
        TrainConfig.from_dict({"lrr": 1})
    with pytest.raises(BadInput, match="batch_size"):
        TrainConfig.from_dict({"batch_size": 0})
    assert parse_overrides(["lr=1e-3", "recipe.dim=16", "lr_schedule=constant"]) == {
        "lr": 1e-3,
        "recipe": {"dim": 16},
        "lr_schedule": "constant",
    }


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"lr": "abc"}, "lr must be a number, not 'abc'"),
        ({"steps": "ten"}, "steps must be a whole number"),
        ({"steps": 1.5}, "steps must be a whole number, not 1.5"),
        ({"steps": True}, "steps must be a whole number"),
        ({"lr": float("nan")}, "lr must be a number"),
        ({"betas": 5}, "betas must be a list of two numbers"),
        ({"betas": [0.9]}, "betas must be a list of two numbers"),
        ({"betas": [0.9, 1.5]}, "betas must be two numbers in"),
        ({"autocast_bf16": "yes"}, "autocast_bf16 must be true or false"),
        ({"lr_schedule": 3}, "lr_schedule must be text"),
        ({"lr_schedule": "linear"}, "lr_schedule must be 'cosine' or 'constant'"),
        ({"recipe": [1]}, "recipe must be a JSON object"),
        ({"threads": "two"}, "threads must be a whole number"),
    ],
)
def test_config_says_which_setting_has_the_wrong_type(settings, needle):
    with pytest.raises(BadInput, match=re.escape(needle)) as caught:
        TrainConfig.from_dict(settings)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")  # one sentence


def test_config_coerces_numeric_text_and_overrides():
    config = TrainConfig.from_dict(
        {"steps": "100", "lr": "2e-3", "betas": ["0.8", 0.9], "threads": None, "autocast_bf16": "true"}
    )
    assert config.steps == 100 and isinstance(config.steps, int) and config.lr == 0.002
    assert config.betas == (0.8, 0.9) and config.threads is None and config.autocast_bf16 is True
    assert TrainConfig.from_dict({"ckpt_every": 1e3}).ckpt_every == 1000
    with pytest.raises(BadInput, match="lr must be a number, not 'abc'"):
        TrainConfig.from_dict(parse_overrides(["lr=abc"]))
    with pytest.raises(BadInput, match="betas must be a list"):
        TrainConfig.from_dict(parse_overrides(["betas=5"]))


def test_overrides_reach_into_nested_tables_and_merge(tmp_path):
    assert parse_overrides(
        ["recipe.codec.latent_dim=16", "recipe.codec.hop=256", "recipe.dim=4", "lr=1e-3"]
    ) == {"recipe": {"codec": {"latent_dim": 16, "hop": 256}, "dim": 4}, "lr": 1e-3}
    assert parse_overrides(['recipe={"a": 1, "b": {"c": 2}}', "recipe.b.d=3"]) == {
        "recipe": {"a": 1, "b": {"c": 2, "d": 3}}
    }
    for bad in ("recipe..x=1", "=3", ".lr=1", "lr"):
        with pytest.raises(BadInput, match="is not KEY=VALUE"):
            parse_overrides([bad])
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"recipe": {"codec": {"latent_dim": 8, "hop": 512}, "dim": 2}}))
    resolved = resolve_config(tmp_path, config, False, parse_overrides(["recipe.codec.hop=256"]), None)
    assert resolved.recipe == {"codec": {"latent_dim": 8, "hop": 256}, "dim": 2}


def test_nan_loss_says_to_lower_lr_and_resume(tmp_path, monkeypatch):
    from training import toy_recipe

    def nan_loss(self, step, indices, modules):
        return modules["model"](torch.zeros(1, self.dim)).sum() * float("nan"), {}

    monkeypatch.setattr(toy_recipe.ToyRecipe, "loss", nan_loss)
    with pytest.raises(BadInput, match=re.escape("lower the learning rate (--set lr=...) and --resume.")):
        train("toy", tmp_path, tmp_path / "run", config_path=write_config(tmp_path), progress=False)


def test_unknown_recipe_writes_nothing(tmp_path):
    with pytest.raises(BadInput, match="There is no recipe 'nosuch'; choose one of: arc, codec, "):
        train("nosuch", tmp_path, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_keep_metrics_until_drops_later_records_and_a_torn_tail(tmp_path):
    run = RunFolder(tmp_path, writer=True)
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    run.metrics_path.write_text("\n".join(lines) + '\n{"step": 4, "lo')
    run.keep_metrics_until(2)
    assert run.metrics_path.read_text() == lines[0] + "\n" + lines[1] + "\n"


def test_training_card_holds_no_absolute_data_path(tmp_path):
    config = write_config(tmp_path, steps=0)
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere" / "corpus").mkdir(parents=True)
    train("toy", tmp_path / "data", tmp_path / "runs" / "a", config_path=config, progress=False)
    train("toy", tmp_path / "data", tmp_path / "b", config_path=config, progress=False)
    train("toy", tmp_path / "elsewhere" / "corpus", tmp_path / "c", config_path=config, progress=False)
    assert training_card(tmp_path / "runs" / "a")["data_dir"] == "data"  # the run's parent holds no data
    assert training_card(tmp_path / "b")["data_dir"] == "data"
    assert training_card(tmp_path / "c")["data_dir"] == "elsewhere/corpus"
    assert training_card(tmp_path / "c")["config"]["steps"] == 0


def test_optimizer_state_survives_flattening():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    tensors, rest = flatten_optimizer(opt.state_dict())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    json.dumps(rest)  # the rest is plain JSON
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=0.1)
    copies = {k: t.clone() for k, t in tensors.items()}  # load_state_dict would share the live tensors
    opt2.load_state_dict(unflatten_optimizer(copies, json.loads(json.dumps(rest))))
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (twin, opt2)):
        m(x).square().mean().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight)


def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    config = write_config(tmp_path, steps=30, recipe={"step_delay_s": 0.03})
    fast = {"recipe": {"step_delay_s": 0}}
    run = tmp_path / "killed"
    proc = start_trainer(run, config)
    wait_for(lambda: (run / "checkpoints" / "step_00000005").is_dir(), proc)
    proc.kill()
    proc.wait()
    assert read_status(run)["state"] == "running" and read_status(run)["step"] < 30
    assert not (run / "checkpoints" / "step_00000030").exists()

    resumed = train("toy", tmp_path, run, config_path=config, resume=True, overrides=fast, progress=False)
    reference = train(
        "toy", tmp_path, tmp_path / "straight", config_path=config, overrides=fast, progress=False
    )
    assert resumed.name == reference.name == "step_00000030"
    assert_same_weights(resumed, reference)
    got, want = metrics(run), metrics(tmp_path / "straight")
    assert [r["step"] for r in got] == list(
        range(1, 31)
    )  # records past the checkpoint were logged again, once
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-6)
    assert read_status(run)["state"] == "done"


def test_control_file_pauses_resumes_and_stops(tmp_path):
    config = write_config(tmp_path, steps=100000, ckpt_every=100000, recipe={"step_delay_s": 0.005})
    run = tmp_path / "run"
    result: list = []

    def work():
        try:
            result.append(train("toy", tmp_path, run, config_path=config, progress=False))
        except BaseException as e:  # surfaced by the assertion below
            result.append(e)

    def command(c):
        (run / "control.json").write_text(json.dumps({"command": c}))

    def logged_steps():
        return (
            len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        )

    thread = threading.Thread(target=work)
    thread.start()
    try:
        wait_for(lambda: logged_steps() >= 3)
        command("pause")
        wait_for(lambda: read_status(run).get("state") == "paused")
        paused_at = read_status(run)["step"]
        assert (run / "checkpoints" / f"step_{paused_at:08d}").is_dir()  # pausing saves
        time.sleep(0.3)
        assert logged_steps() == paused_at and read_status(run)["state"] == "paused"

        command("resume")
        wait_for(lambda: logged_steps() >= paused_at + 3)
        command("stop")
        thread.join(timeout=30)
    finally:
        if thread.is_alive():
            command("stop")
            thread.join(timeout=30)
    final = result[0]
    assert isinstance(final, Path), final
    status = read_status(run)
    assert status["state"] == "stopped" and paused_at + 3 <= status["step"] < 100000
    assert final.name == f"step_{status['step']:08d}"
    meta, _ = read_checkpoint(final)
    assert meta["step"] == status["step"]


def test_sigterm_stops_and_saves(tmp_path):
    config = write_config(tmp_path, steps=1000, ckpt_every=5)
    run = tmp_path / "run"

    def on_metrics(record):  # runs inside the loop, so the trainer's handler is surely installed
        if record["step"] == 7:
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    final = train("toy", tmp_path, run, config_path=config, progress=False, on_metrics=on_metrics)
    assert signal.getsignal(signal.SIGTERM) == before  # the trainer's handler is removed again
    status = read_status(run)
    assert status["state"] == "stopped" and status["step"] in (7, 8)
    assert final.name == f"step_{status['step']:08d}"
    meta, _ = read_checkpoint(final)
    assert meta["step"] == status["step"]


@pytest.mark.parametrize("damage", ["truncate weights", "truncate state"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    config = write_config(tmp_path, steps=15)
    run = tmp_path / "run"
    first = train("toy", tmp_path, run, config_path=config, progress=False)
    expected = checkpoint_tensors(first)
    victim = first / ("modules.safetensors" if damage == "truncate weights" else "state.json")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    with pytest.warns(UserWarning, match=r"step_00000015 is damaged .* previous good one"):
        again = train("toy", tmp_path, run, config_path=config, resume=True, progress=False)
    assert again.name == "step_00000015"
    got = checkpoint_tensors(again)
    for key, t in expected.items():
        assert torch.allclose(got[key], t, atol=1e-6), key
    assert (run / "checkpoints" / "step_00000015.damaged").is_dir()


def test_metrics_status_previews_and_keep_last(tmp_path):
    config = write_config(tmp_path, steps=12, log_every=2, preview_every=6, keep_checkpoints=2)
    run = tmp_path / "run"
    seen: list[dict] = []
    final = train("toy", tmp_path, run, config_path=config, progress=False, on_metrics=seen.append)
    records = metrics(run)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    for r in records:
        assert {"step", "time", "elapsed_s", "loss", "lr", "grad_norm", "mae"} <= r.keys()
        assert all(isinstance(r[k], float) for k in ("loss", "lr", "grad_norm", "mae"))
    assert seen == records
    assert read_status(run)["state"] == "done" and read_status(run)["step"] == 12
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010", "step_00000012"]
    assert final == run / "checkpoints" / "step_00000012"
    assert json.loads((run / "previews" / "step_00000006" / "preview.json").read_text())["step"] == 6
    assert json.loads((run / "config.json").read_text())["recipe_name"] == "toy"

    with pytest.raises(BadInput, match="already holds checkpoints"):
        train("toy", tmp_path, run, config_path=config, progress=False)
    with pytest.raises(BadInput, match="was trained with the toy recipe"):
        train("codec", tmp_path, run, resume=True, progress=False)


@pytest.mark.parametrize("native, precision", [("1", "bf16 autocast"), ("0", "float32")])
def test_bf16_autocast_only_where_the_cpu_multiplies_bf16(tmp_path, monkeypatch, capsys, native, precision):
    from training import toy_recipe

    monkeypatch.setenv(BF16_ENV, native)
    seen = []
    real_loss = toy_recipe.ToyRecipe.loss

    def loss(self, step, indices, modules):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_loss(self, step, indices, modules)

    monkeypatch.setattr(toy_recipe.ToyRecipe, "loss", loss)
    config = write_config(tmp_path, steps=2, autocast_bf16=True)
    train("toy", tmp_path, tmp_path / "run", config_path=config, progress=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == precision
    assert seen == [native == "1"] * 2
    said = "no native bf16 matmul" in capsys.readouterr().err
    assert said is (native == "0")


def test_export_then_init_from_the_bundle(tmp_path):
    config = write_config(tmp_path, steps=5, autocast_bf16=True)
    run = tmp_path / "run"
    final = train("toy", tmp_path, run, config_path=config, progress=False)
    out = export_run(run, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert bundle.kind == "toy" and bundle.card["recipe"] == "toy" and bundle.card["steps"] == 5
    ema = load_file(final / "ema.safetensors")
    for key, t in bundle.tensors("model").items():
        assert torch.equal(t, ema[f"model.{key}"])

    snapshot = load_run_for_export(run)
    assert snapshot.step == 5 and snapshot.recipe_name == "toy" and snapshot.config["recipe"]["dim"] == 4
    assert torch.equal(snapshot.ema["model"]["0.weight"], ema["model.0.weight"])

    started = train(
        "toy", tmp_path, tmp_path / "init", config_path=config, steps=0, init_bundle=out, progress=False
    )
    weights = load_file(started / "modules.safetensors")
    assert all(torch.equal(t, weights[f"model.{k}"]) for k, t in bundle.tensors("model").items())

    with pytest.raises(BadInput, match="shaped"):
        train(
            "toy",
            tmp_path,
            tmp_path / "wrong",
            config_path=config,
            init_bundle=out,
            overrides={"recipe": {"hidden": 8}},
        )
