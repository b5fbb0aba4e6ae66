"""`soundloom experiment stage-adaptive`: the matrix of runs, its evaluations, resume and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_stage_adaptive import SA_DIT, no_controls, recipe_settings, ssl_bundle
from test_static_recipe import tiny_codec_bundle

import training.experiment as experiment
from pipelines.errors import BadInput
from training.experiment import ARMS, Experiment, step_settings, steps_to_reach, summarise
from training.latent_cache import encode_corpus

SR = 44100


def write_corpus(root: Path) -> Path:
    """Train, val and test clips of shaped noise, fx without pitch or tempo (no pyin when measured)."""
    (root / "audio").mkdir(parents=True)
    records = []
    splits = ["train"] * 5 + ["val"] * 3 + ["test"] * 3
    for i, split in enumerate(splits):
        n = SR // 2 + 2000 * i
        x = 0.2 * np.random.default_rng(i).standard_normal(n) * np.hanning(n)
        path = f"audio/{i:03d}.flac"
        sf.write(root / path, np.stack([x, x]).T.astype(np.float32), SR)
        params = {"category": "fx", "f0_hz": None, "bpm": None}
        captions = [f"a burst of noise number {i}", "a noise burst"]
        records.append(
            {"id": f"{i:03d}", "path": path, "captions": captions, "split": split, "params": params}
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("experiment")
    codec = tiny_codec_bundle(root / "codec")
    data = write_corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.latent_cache.measure_controls", no_controls)
        encode_corpus(data, codec, progress=False)
    setup = {"codec": codec, "data": data, "ssl": ssl_bundle(root / "ssl", codec)}
    setup["judge"] = ssl_bundle(root / "judge", codec, arch="mel")
    trainer = {"batch_size": 4, "lr": 2e-3, "lr_schedule": "constant", "ema_decay": 0.5, "log_every": 1}
    trainer["threads"] = 1
    static = {**trainer, "recipe": {"codec": str(codec), "segment_frames": 24, "dit": SA_DIT}}
    sa = {**trainer, "recipe": recipe_settings(setup)}
    configs = {}
    for name, config in (("static.json", static), ("stage_adaptive.json", sa)):
        configs[name] = root / name
        configs[name].write_text(json.dumps(config))
    setup["configs"] = configs
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p, "seconds": 0.5, "category": "fx"}) + "\n"
            for p in ("a noise burst", "hiss")
        )
    )
    setup["prompts"] = prompts
    return setup


def make(setup: dict, out: Path, **settings) -> Experiment:
    given = {
        "prompts": setup["prompts"],
        "judge": setup["judge"],
        "configs": setup["configs"],
        "overrides": {},
        "steps": 4,
        "seeds": 1,
        "eval_every": 2,
        "eval_steps": 2,
        "final_steps": 2,
    }
    return Experiment(out, setup["data"], **{**given, **settings})


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(100, 10.0), (200, 6.0), (300, 4.0)]
    assert steps_to_reach(curve, 8.0) == pytest.approx(150.0)
    assert steps_to_reach(curve, 4.0) == 300.0
    assert steps_to_reach(curve, 12.0) == 100.0  # reached at the first evaluation
    assert steps_to_reach(curve, 3.0) is None  # never
    assert steps_to_reach([(100, None), (200, 5.0)], 6.0) == 200.0


def test_step_seconds_is_the_loop_time_per_step_without_the_start(tmp_path):
    from training.experiment import step_seconds

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 10, "elapsed_s": 80.0}, {"step": 20, "elapsed_s": 86.0}, {"step": 40, "elapsed_s": 98.0}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 50, "elap')  # a torn tail
    assert step_seconds(metrics) == pytest.approx(0.6)  # not 98 / 40: the 80 s before step 10 is the start
    metrics.write_text(json.dumps(rows[0]) + "\n")
    assert step_seconds(metrics) is None
    assert step_seconds(tmp_path / "none.jsonl") is None


def test_settings_that_count_steps_scale_with_the_run():
    sa = step_settings("stage-adaptive", 1200, 300)
    assert sa["steps"] == 1200 and sa["ckpt_every"] == 300 and sa["keep_checkpoints"] == 5
    assert sa["recipe"] == {
        "regime_warmup": 60,
        "probe_every": 20,
        "group_every": 30,
        "structure_ramp": 60,
        "schedule_steps": 1200,
    }
    assert "recipe" not in step_settings("static", 1200, 300)  # static would refuse the regime's settings


def test_random_threshold_draws_from_its_seeds_measured_range_and_ablations_switch_off(setup, tmp_path):
    exp = make(setup, tmp_path / "x", seeds=2)
    metrics = exp.run_dir("stage-adaptive", 1) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(
        "".join(json.dumps({"step": s, "r": min(max(s - 2, 0) / 4, 1.0)}) + "\n" for s in range(10))
    )
    recipe, config, settings = exp.run_settings("random-threshold", 1)
    assert recipe == "random-threshold" and config == setup["configs"]["stage_adaptive.json"]
    assert settings["recipe"]["control_range"] == [3, 6] and settings["seed"] == 1
    _, _, alone = exp.run_settings("timesteps-only", 0)
    assert alone["recipe"]["use_guidance"] is False and alone["recipe"]["use_structure"] is False
    assert "use_timesteps" not in alone["recipe"]
    recipe, config, settings = exp.run_settings("static", 0)
    assert recipe == "static" and config == setup["configs"]["static.json"] and settings["steps"] == 4


def test_bad_settings_are_one_sentence(setup, tmp_path):
    with pytest.raises(BadInput, match="There is no arm 'nosuch'"):
        make(setup, tmp_path / "x", arms=("static", "nosuch"))
    with pytest.raises(BadInput, match="random-threshold draws its range from stage-adaptive"):
        make(setup, tmp_path / "x", arms=("static", "random-threshold"))
    with pytest.raises(BadInput, match="must be a multiple of the evaluation interval"):
        make(setup, tmp_path / "x", steps=5)
    with pytest.raises(BadInput, match="judge embedder .* is missing"):
        make(setup, tmp_path / "x", judge=tmp_path / "nojudge")
    assert not (tmp_path / "x").exists()


def test_the_matrix_trains_evaluates_resumes_and_reports(setup, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    exp = make(setup, out, arms=("static", "stage-adaptive"))
    report = exp.run()
    evals = exp.evals()
    assert sorted((e["arm"], e["step"], e["kind"]) for e in evals) == sorted(
        (arm, step, kind)
        for arm in ("static", "stage-adaptive")
        for step, kind in ((2, "cheap"), (4, "cheap"), (4, "full"))
    )
    assert all(e["fd_judge"] is not None and e["fd_librosa"] is not None for e in evals)
    for arm in ("static", "stage-adaptive"):
        status = json.loads((exp.run_dir(arm, 0) / "status.json").read_text())
        assert status["state"] == "done" and status["step"] == 4
    assert (out / "bundles" / "static-s0-4" / "model.json").is_file()  # the full evaluation's bundle stays
    assert not (out / "bundles" / "static-s0-2").exists()
    text = report.read_text()
    assert "| stage-adaptive |" in text and "against static:" in text and "**Target" in text
    for png in ("curves.png", "regime.png"):
        assert (out / png).stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    sa, st = summary["final"]["stage-adaptive"]["0"], summary["final"]["static"]["0"]
    assert summary["paired"]["static"]["diffs"] == [pytest.approx(sa["fd_judge"] - st["fd_judge"])]
    assert summary["target"]["beats_both_controls_every_seed"] is False  # the controls were not run
    for arm in ("static", "stage-adaptive"):
        rows = [json.loads(line) for line in (exp.run_dir(arm, 0) / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r.get("step") and "elapsed_s" in r]
        slope = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])
        assert summary["step_seconds"][arm]["0"] == pytest.approx(slope) and slope > 0
    assert "- stage-adaptive: " in text and "% against static" in text

    # a second run of the same command trains and evaluates nothing again
    def refuse(*args, **kwargs):
        raise AssertionError("ran again")

    monkeypatch.setattr(Experiment, "train", refuse)
    monkeypatch.setattr("training.evaluate.run", refuse)
    make(setup, out, arms=("static", "stage-adaptive")).run()
    assert len(exp.evals()) == len(evals)


def test_the_target_needs_every_seed(setup, tmp_path):
    exp = make(setup, tmp_path / "t", steps=400, eval_every=100, seeds=2, arms=tuple(ARMS))
    exp.out.mkdir()
    rows = []
    for seed in range(2):
        for arm, curve in (
            ("static", [9, 7, 6, 5]),
            ("stage-adaptive", [8, 5, 4, 3 + seed * 3]),  # seed 1 ends worse than the controls
            ("random-threshold", [9, 7, 6, 4.5]),
            ("fixed-schedule", [9, 7, 5, 4]),
        ):
            for i, fd in enumerate(curve):
                step = 100 * (i + 1)
                rows.append({"arm": arm, "seed": seed, "step": step, "kind": "cheap", "fd_judge": fd})
            rows.append({"arm": arm, "seed": seed, "step": 400, "kind": "full", "fd_judge": curve[-1]})
    exp.evals_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(exp)
    assert summary["reach"]["stage-adaptive"] == {0: 200.0, 1: 200.0}  # FD 5 reached at step 200
    assert summary["reach"]["static"] == {0: 400.0, 1: 400.0}
    assert summary["paired"]["random-threshold"]["wins"] == 1  # seed 1: 6 against 4.5
    assert summary["target"]["seeds_fast_enough"] == [0, 1] and summary["target"]["met"] is False
    assert experiment.write_report(exp).read_text().count("Target not met") == 1


def test_cli_says_what_is_missing_in_one_line(setup, tmp_path, capsys):
    import app.cli as cli

    out = tmp_path / "exp"
    argv = ["experiment", "stage-adaptive", "--out", str(out), "--data", str(setup["data"])]
    code = cli.main([*argv, "--judge", str(tmp_path / "nojudge")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--judge" in err[0] and "does not exist" in err[0]
    code = cli.main([*argv, "--judge", str(setup["judge"]), "--steps", "10", "--eval-every", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --steps (10) must be a multiple of the evaluation interval (3)."]
    assert not out.exists()
