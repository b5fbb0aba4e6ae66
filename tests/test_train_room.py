"""The studio's Train tab (app/train_room.py): data from a zip or an allowed folder, the captions table, the
dataset check, a tiny stage-adaptive run in a real worker process steered through the handlers (plots,
pause, resume, stop, the one-run rule, reattaching after a reload, the pause while the studio generates,
checkpoints used in the studio and compared), and one real browser driving it."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
from test_arc import base_generator_bundle, write_corpus
from test_generator import tiny_generator_bundle
from test_stage_adaptive import SA_DIT, no_controls, ssl_bundle
from test_stage_adaptive import recipe_settings as sa_recipe_settings
from test_static_recipe import tiny_codec_bundle

from app import train_worker as worker
from app.browser import CHROMIUM, free_port, launch_chromium
from app.studio import Studio, build_app, launch
from app.train_plots import PLOTS, overfitting_warning, plot_frame
from app.train_room import COMPARISON, CUSTOM, FULL, QUICK, QUICK_STEPS, REPLAY_DISTILL, SOURCES, TrainRoom
from app.zip_upload import ZipLimits, extract_zip
from pipelines.bundle import bundle_hash, quantize_bundle, update_card
from pipelines.errors import BadInput
from training.corpus import read_manifest
from training.dataset_check import check_dataset
from training.latent_cache import encode_corpus

SR = 44100
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and message.count(". ") == 0, message


def refused(call) -> str:
    with pytest.raises(gr.Error) as err:
        call()
    one_sentence(err.value.message)
    return err.value.message


def wait_for(condition, timeout: float, what: str, log: Path | None = None):
    """Poll `condition` until it returns something truthy; fail with the worker's log when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def tone_wav(path: Path, freq: float = 440.0, seconds: float = 0.5, amplitude: float = 0.3) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([x, x], 1), SR)
    return path


# ---------------------------------------------------------------- zips


def make_zip(path: Path, entries: list[tuple], compression=zipfile.ZIP_DEFLATED) -> Path:
    """entries: (name, bytes) or (name, bytes, unix mode)."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for entry in entries:
            info = zipfile.ZipInfo(entry[0])
            info.compress_type = compression
            if len(entry) > 2:
                info.external_attr = entry[2] << 16
            z.writestr(info, entry[1])
    return path


def wav_bytes(freq: float = 440.0) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(SR // 4) / SR
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format="WAV")
    return buffer.getvalue()


def test_a_safe_zip_unpacks_its_sounds_and_captions_only(tmp_path):
    archive = make_zip(
        tmp_path / "kit.zip",
        [
            ("kit/kick.wav", wav_bytes(60)),
            ("kit/kick.txt", b"a deep kick drum"),
            ("kit/snare.wav", wav_bytes(200)),
            ("kit/readme.pdf", b"%PDF"),
            ("__MACOSX/._kick.wav", b"junk"),
            ("kit/.hidden.wav", wav_bytes()),
        ],
    )
    out = extract_zip(archive, tmp_path / "out")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["kit/kick.txt", "kit/kick.wav", "kit/snare.wav"]


@pytest.mark.parametrize(
    ("entries", "limits", "phrase"),
    [
        ([("../escape.wav", b"x")], ZipLimits(), "leaves its folder ('../escape.wav')"),
        ([("sounds/../../escape.wav", b"x")], ZipLimits(), "leaves its folder"),
        ([("/etc/cron.d/x.wav", b"x")], ZipLimits(), "leaves its folder"),
        ([("..\\..\\escape.wav", b"x")], ZipLimits(), "leaves its folder"),
        ([("C:/escape.wav", b"x")], ZipLimits(), "leaves its folder"),
        ([("link.wav", b"/etc/passwd", stat.S_IFLNK | 0o777)], ZipLimits(), "a link or special file"),
        ([(f"s{i}.wav", b"x") for i in range(6)], ZipLimits(max_files=5), "holds 7 files, more than the 5"),
        (
            [("big.wav", b"\0" * 3_000_000)],
            ZipLimits(max_bytes=2_000_000),
            "unpacks to 3.0 MB, more than the 2.0 MB",
        ),
        ([("bomb.wav", b"\0" * 5_000_000)], ZipLimits(), "inflates"),
    ],
)
def test_unsafe_zips_are_refused_in_one_sentence_and_leave_nothing(tmp_path, entries, limits, phrase):
    archive = make_zip(tmp_path / "bad.zip", [("ok.wav", wav_bytes()), *entries])
    with pytest.raises(BadInput) as err:
        extract_zip(archive, tmp_path / "out", limits)
    one_sentence(str(err.value))
    assert phrase in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escape.wav").exists()


def test_a_zip_whose_headers_lie_about_sizes_is_refused_and_leaves_nothing(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", [("a.wav", b"\0" * 400_000), ("b.wav", b"\0" * 400_000)])
    raw = bytearray(archive.read_bytes())
    central = raw.find(b"PK\x01\x02")  # each central directory entry's uncompressed size, at offset 24
    while central >= 0:
        raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
        central = raw.find(b"PK\x01\x02", central + 4)
    archive.write_bytes(bytes(raw))
    with pytest.raises(BadInput) as err:
        extract_zip(archive, tmp_path / "out", ZipLimits(max_bytes=500_000, max_ratio=1e9))
    one_sentence(str(err.value))
    assert not (tmp_path / "out").exists()


def test_a_damaged_zip_is_one_sentence(tmp_path):
    bad = tmp_path / "notazip.zip"
    bad.write_bytes(b"PK\x03\x04 but nothing after")
    with pytest.raises(BadInput) as err:
        extract_zip(bad, tmp_path / "out")
    assert "is not a zip file that can be read" in str(err.value)


# ---------------------------------------------------------------- data through the handlers


@pytest.fixture
def studio(tmp_path) -> Studio:
    return Studio(None, tmp_path / "outputs")


def test_folder_outside_the_allowed_roots_is_refused(studio, tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    tone_wav(other / "a.wav")
    (allowed / "inside").mkdir(parents=True)
    (allowed / "sneaky").symlink_to(other)
    room = TrainRoom(studio, tmp_path / "training", data_roots=[allowed])
    for folder in (other, allowed / "sneaky", allowed / "inside" / ".." / ".." / "other", "/etc"):
        message = refused(lambda folder=folder: room.prepare(SOURCES[2], 0.1, 0, None, str(folder), "x"))
        assert "is outside the folders the studio may read" in message and str(allowed) in message
    assert not (room.data_dir / "x").exists()
    assert "No folder was given" in refused(lambda: room.prepare(SOURCES[2], 0.1, 0, None, "  ", "x"))


def test_a_folder_under_a_root_becomes_a_dataset_with_editable_captions(studio, tmp_path):
    src = tmp_path / "allowed" / "my-sounds"
    tone_wav(src / "bell.wav", 880.0)
    (src / "bell.txt").write_text("a small bright bell\n")
    tone_wav(src / "hum.wav", 110.0)
    (src / "hum.txt").write_text("a low electrical hum\n")
    room = TrainRoom(studio, tmp_path / "training", data_roots=[tmp_path / "allowed"])
    choices, table, message = room.prepare(SOURCES[2], 0.1, 0, None, str(src), "")
    assert choices["value"] == "my-sounds" and room.datasets() == ["my-sounds"]
    assert "2 clips" in message
    assert sorted(row[1] for row in table) == ["a low electrical hum", "a small bright bell"]
    assert "exists already" in refused(lambda: room.prepare(SOURCES[2], 0.1, 0, None, str(src), "my-sounds"))

    edited = [[row[0], "a tiny glass bell" if "bell" in row[1] else row[1], *row[2:]] for row in table]
    assert room.save_captions("my-sounds", edited) == "Saved 1 changed caption(s) into 'my-sounds'."
    manifest = [
        json.loads(line) for line in (room.data_dir / "my-sounds" / "manifest.jsonl").read_text().splitlines()
    ]
    bell = next(r for r in manifest if "bell" in r["path"] or "bell" in r["id"])
    assert bell["captions"][0] == "a tiny glass bell" and bell["params"]["caption_source"] == "edited"
    assert room.save_captions("my-sounds", edited) == "No caption was changed."
    emptied = [[row[0], "  ", *row[2:]] if i == 0 else row for i, row in enumerate(edited)]
    assert "is empty" in refused(lambda: room.save_captions("my-sounds", emptied))


def test_an_uploaded_zip_becomes_a_dataset_and_a_bad_one_is_refused(studio, tmp_path, monkeypatch):
    uploads = tmp_path / "gradio-uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    room = TrainRoom(studio, tmp_path / "training", data_roots=[tmp_path / "allowed"])
    (uploads / "a1").mkdir(parents=True)
    good = make_zip(uploads / "a1" / "kit.zip", [("kick.wav", wav_bytes(60)), ("kick.txt", b"a kick drum")])
    _, table, _ = room.prepare(SOURCES[1], 0.1, 0, str(good), None, "")
    assert [row[1] for row in table] == ["a kick drum"] and room.datasets() == ["kit"]
    (uploads / "a2").mkdir()
    evil = make_zip(uploads / "a2" / "evil.zip", [("../../evil.wav", wav_bytes())])
    assert "leaves its folder" in refused(lambda: room.prepare(SOURCES[1], 0.1, 0, str(evil), None, ""))
    assert room.datasets() == ["kit"] and not (room.root / "uploads" / "evil").exists()
    outside = make_zip(tmp_path / "outside.zip", [("kick.wav", wav_bytes(60))])
    assert "not a file uploaded to the studio" in refused(
        lambda: room.prepare(SOURCES[1], 0.1, 0, str(outside), None, "")
    )


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_estimate_uses_the_step_time_of_the_precision_the_run_computes_in(monkeypatch, native):
    from pipelines.inference import BF16_ENV
    from training.dataset_check import STEP_SECONDS, STEP_SECONDS_FLOAT32, estimate_run

    monkeypatch.setenv(BF16_ENV, native)
    dit = {"dim": 256, "depth": 8, "mlp_ratio": 3.0}
    config = {
        "batch_size": 8,
        "steps": 100,
        "autocast_bf16": True,
        "recipe": {"dit": dit, "segment_frames": 259},
    }
    table = STEP_SECONDS if native == "1" else STEP_SECONDS_FLOAT32
    for recipe in ("static", "arc"):
        estimate = estimate_run(recipe, config, uncached_seconds=0.0, clips=10)
        assert estimate.seconds_per_step == pytest.approx(table[recipe])  # the reference run's own size
        assert estimate.train_s == pytest.approx(100 * table[recipe])
    doubled = estimate_run("static", {**config, "batch_size": 16}, uncached_seconds=0.0, clips=10)
    assert doubled.seconds_per_step == pytest.approx(2 * table["static"])
    fp32 = estimate_run("static", {**config, "autocast_bf16": False}, uncached_seconds=0.0, clips=10)
    assert fp32.seconds_per_step == pytest.approx(STEP_SECONDS_FLOAT32["static"])  # float32 asked for


def test_dataset_check_flags_duplicates_silent_and_broken_clips(studio, tmp_path):
    room = TrainRoom(studio, tmp_path / "training", data_roots=[tmp_path])
    data = room.data_dir / "mixed"
    (data / "audio").mkdir(parents=True)
    tone_wav(data / "audio" / "a.flac", 440.0)
    tone_wav(data / "audio" / "copy.flac", 440.0)  # the same sound again
    tone_wav(data / "audio" / "quiet.flac", 440.0, amplitude=1e-4)
    (data / "audio" / "broken.flac").write_bytes(b"fLaC not really")
    tone_wav(data / "audio" / "b.flac", 660.0)
    records = [
        {
            "id": name,
            "path": f"audio/{name}.flac",
            "captions": [f"clip {name}"],
            "split": "train",
            "seconds": 0.5,
        }
        for name in ("a", "copy", "quiet", "broken", "b", "missing")
    ]
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (data / "skipped.txt").write_text("odd.mp3: not audio\n")

    report = check_dataset(data)
    problems = {c.id: c.problem for c in report.clips}
    assert problems["a"] == "" and problems["b"] == ""
    assert problems["copy"] == "duplicate of a"
    assert problems["quiet"].startswith("silent (peak -8")
    assert (
        problems["broken"].startswith("broken: ")
        and problems["missing"] == "broken: the audio file is missing"
    )
    assert "1 duplicate, 1 silent, 2 broken" in report.summary() and "1 unreadable file" in report.summary()

    note, flagged, *players = room.check("mixed", CUSTOM, "static", "full fine-tune", 8, False, 300, 1, "")
    assert {row[0] for row in flagged} == {"copy", "quiet", "broken", "missing", "odd.mp3"}
    assert "Estimated" in note and "MB of disk" in note and "300 steps" in note
    shown = [p["value"] for p in players if p["visible"]]
    assert len(shown) == 3 and all(Path(p).is_file() for p in shown)
    assert "broken" not in " ".join(shown)


def test_run_settings_are_checked_before_anything_starts(tmp_path):
    studio = Studio(tmp_path / "no-model", tmp_path / "outputs")  # not the bundled generator: none active
    room = TrainRoom(studio, tmp_path / "training", data_roots=[tmp_path])
    write_corpus(room.data_dir / "tiny")
    args = ("tiny", CUSTOM, "static", "full fine-tune", 8, False, 10, 1)
    assert "not valid JSON" in refused(lambda: room.start(*args, "{lr: 1"))
    assert "Unknown setting 'lrr'" in refused(lambda: room.start(*args, '{"lrr": 1}'))
    assert "no prepared dataset 'nope'" in refused(lambda: room.start("nope", *args[1:], ""))
    assert "no active model to start from" in refused(
        lambda: room.start("tiny", CUSTOM, "static", "full fine-tune", 8, True, 10, 1, "")
    )
    assert "stage-adaptive run on this dataset first" in refused(
        lambda: room.start("tiny", CUSTOM, "random-threshold", "full fine-tune", 8, False, 10, 1, "")
    )
    assert "up to 3 hours" in refused(lambda: room.prepare(SOURCES[0], 5, 0, None, None, ""))
    assert room.jobs() == [] and room.running_job() is None
    # a preset fills the controls
    assert room.preset_changed(QUICK)[:4] == ("static", "full fine-tune", True, QUICK_STEPS)
    assert room.preset_changed(COMPARISON)[3] == 1200 and room.preset_changed(COMPARISON)[4]["visible"]


def test_the_quick_fine_tune_starts_from_the_flow_model_and_replays_its_corpus(tiny, tmp_path):
    """An ARC default is fine-tuned through the flow model it was made from; the quick preset replays that
    model's corpus (found by how it was built, with latents for its codec) so it keeps what it knew."""
    models = tmp_path / "models"
    base = base_generator_bundle(models / "flow", tiny["setup"]["codec"])
    built = {"format_version": 1, "seed": 7, "hours": 0.01, "categories": None}
    update_card(base, {"data": built})
    arc = models / "fast"
    shutil.copytree(base, arc)
    meta = json.loads((arc / "model.json").read_text())
    meta["config"].update(sampler="pingpong", steps=8, guidance=1.0)  # another model: another hash
    meta["card"] = {"recipe": "arc", "base_model": {"bundle": "flow", "sha256": bundle_hash(base)}}
    (arc / "model.json").write_text(json.dumps(meta))

    room = TrainRoom(Studio(arc, tmp_path / "outputs"), tmp_path / "training", data_roots=[tmp_path])
    mine = shutil.copytree(tiny["setup"]["data"], room.data_dir / "mine")
    replay = shutil.copytree(tiny["setup"]["data"], room.data_dir / "corpus")
    lines = (mine / "manifest.jsonl").read_text().splitlines()
    (mine / "manifest.jsonl").write_text(lines[0] + "\n")  # one clip of my own
    theirs = len(read_manifest(replay, split="train"))
    assert theirs >= 3 and read_manifest(mine, split="train")
    (replay / "corpus.json").write_text(
        json.dumps({**built, "state": "done", "counts": {"split": {"train": theirs}}})
    )
    args = ("mine", QUICK, "static", "LoRA adapters", 8, True, 10, 1, "")
    plan = room.plan(*args)
    assert plan.init.resolve() == base.resolve()
    assert plan.config["recipe"]["extra_data"] == [str(replay)]
    assert plan.config["recipe"]["data_repeat"] == theirs  # my clip fills half the batches
    assert plan.config["recipe"]["distill_replay"] == REPLAY_DISTILL > 0
    assert f"learn from {base.name}'s own predictions" in plan.notes[1]
    arc_plan = room.plan("mine", QUICK, "arc", FULL, 8, True, 10, 1, "")  # ARC has no flow target to distil
    assert arc_plan.config["recipe"]["extra_data"] == [str(replay)]
    assert "distill_replay" not in arc_plan.config["recipe"] and "predictions" not in arc_plan.notes[1]
    assert "few-step ARC model" in plan.notes[0] and plan.notes[1].startswith("Replaying flow's corpus")

    (replay / "corpus.json").write_text(json.dumps({**built, "seed": 8, "state": "done"}))  # built otherwise
    plan = room.plan(*args)
    assert "extra_data" not in plan.config["recipe"] and "distill_replay" not in plan.config["recipe"]
    assert "No copy of flow's training corpus" in plan.notes[1]
    custom = room.plan("mine", CUSTOM, "static", "LoRA adapters", 8, True, 10, 1, "")
    assert custom.init.resolve() == base.resolve() and len(custom.notes) == 1  # only the quick preset replays

    flow_room = TrainRoom(Studio(base, tmp_path / "outputs"), tmp_path / "training", data_roots=[tmp_path])
    plan = flow_room.plan(*args)
    assert plan.init.resolve() == base.resolve() and not any("ARC" in n for n in plan.notes)
    int8, _ = quantize_bundle(
        base, models / "flow-int8"
    )  # what assets/ ships: an int8 copy of the flow model
    shutil.rmtree(base)
    assert room.plan(*args).init.resolve() == int8
    shutil.rmtree(int8)
    assert "few-step ARC model; fine-tuning starts from the flow model it was made from (flow)" in refused(
        lambda: room.start(*args)
    )


def test_plots_show_only_the_keys_a_run_logs_and_overfitting_is_said():
    static = [{"step": s, "loss": 1.0 / s, "loss_t0": 0.5, "frac_text": 0.9} for s in range(1, 11)]
    shown = {spec.name for spec in PLOTS if not plot_frame(spec, static).empty}
    assert shown == {"loss", "timestep-loss"}
    adaptive = [
        {**r, "r": 0.1 * r["step"], "probe_d": 0.5, "d_slope": -0.1, "t_hist0": 0.6, "t_hist1": 0.4}
        for r in static
    ]
    regime = plot_frame(next(s for s in PLOTS if s.name == "regime"), adaptive)
    assert list(regime["series"].unique()) == ["r"] and len(regime) == 10
    assert {s.name for s in PLOTS if not plot_frame(s, adaptive).empty} >= {
        "regime",
        "discrepancy",
        "timesteps",
    }

    assert overfitting_warning(static) is None  # no validation figure: no warning
    falling = [
        {"step": s, "loss": 1.0 / s, **({"val_loss": 0.5 - 0.01 * s} if s % 10 == 0 else {})}
        for s in range(1, 51)
    ]
    assert overfitting_warning(falling) is None
    rising = [
        {"step": s, "loss": 1.0 / s, **({"val_loss": 0.3 + 0.01 * s} if s % 10 == 0 else {})}
        for s in range(1, 51)
    ]
    said = overfitting_warning(rising)
    assert said and "overfit" in said and "step 20" in said and "step 50" in said
    one_sentence(said)


# ---------------------------------------------------------------- a tiny run in a worker process


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny codec, SSL embedder and generator, and a training folder holding an encoded corpus."""
    root = tmp_path_factory.mktemp("train-room")
    codec = tiny_codec_bundle(root / "codec")
    training = root / "training"
    data = write_corpus(training / "data" / "tiny")
    with pytest.MonkeyPatch.context() as patch:  # pyin costs seconds per clip; these clips have no pitch
        patch.setattr("training.latent_cache.measure_controls", no_controls)
        encode_corpus(data, codec, progress=False)
    setup = {"codec": codec, "data": data, "ssl": ssl_bundle(root / "ssl", codec)}
    return {
        "root": root,
        "training": training,
        "generator": tiny_generator_bundle(root / "gen"),
        "setup": setup,
    }


def tiny_settings(tiny: dict, **extra) -> str:
    """Extra settings that make the stage-adaptive recipe tiny (and its run endless until stopped)."""
    recipe = sa_recipe_settings(
        tiny["setup"], t_bins=4, measured_weight=1.0, p_pitch_hint=0.0, preview_steps=2
    )
    recipe["dit"] = {**SA_DIT, "pitch_classes": 0, "tempo_classes": 0, "x0_channels": 0}
    settings = {
        "batch_size": 4,
        "lr": 2e-3,
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "ema_decay": 0.9,
        "ckpt_every": 5,
        "log_every": 1,
        "keep_checkpoints": 4,
        "preview_every": 10,
        "threads": 1,
        "autocast_bf16": False,
        "recipe": recipe,
        **extra,
    }
    return json.dumps(settings)


def stop_all(room: TrainRoom) -> None:
    """Teardown: every worker this test started ends (stopped through its files, else killed by its pid)."""
    for job in room.jobs():
        pid = worker.read_json(job / worker.WORKER).get("pid")
        if worker.job_alive(job):
            worker.thaw(job)
            worker.request_stop(job)
            deadline = time.monotonic() + 60
            while worker.job_alive(job) and time.monotonic() < deadline:
                time.sleep(0.5)
        if worker.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def step_of(job: Path) -> int:
    return int(worker.read_json(job / "status.json").get("step") or 0)


def test_a_tiny_run_through_the_handlers(tiny, tmp_path):
    studio = Studio(tiny["generator"], tmp_path / "outputs")
    room = TrainRoom(studio, tiny["training"], data_roots=[tmp_path])
    args = ("tiny", CUSTOM, "stage-adaptive", "full fine-tune", 8, False, 100000, 1)
    try:
        said = room.start(*args, tiny_settings(tiny))
        assert said.startswith("Started ") and "reloading this page leaves it running" in said
        job = room.running_job()
        assert job is not None and (job / "settings.json").is_file()
        log = job / worker.LOG
        # one run at a time
        assert refused(lambda: room.start(*args, tiny_settings(tiny))).startswith("A run is already going")

        wait_for(lambda: step_of(job) >= 6, 300, "six steps", log)
        status, progress, tail, *rest = room.refresh(None, {})
        plots = dict(zip([s.name for s in PLOTS], rest[: len(PLOTS)]))
        assert f"**{job.name}**: running." == status and "<progress" in progress and "ETA" in progress
        assert plots["regime"]["visible"] and len(plots["regime"]["value"]) >= 6
        assert "points)" in plots["regime"]["label"]
        assert (
            plots["discrepancy"]["visible"]
            and plots["timesteps"]["visible"]
            and plots["structure"]["visible"]
        )
        assert not plots["arc-losses"]["visible"] and not plots["arc-margins"]["visible"]
        seen = rest[-1]
        again = room.refresh(None, seen)  # the run shown has not changed: its list is not sent again
        assert again[-2] == gr.skip()

        # the studio generating suspends the worker; it goes on after
        pid = worker.read_json(job / worker.WORKER)["pid"]
        with studio._run_lock:
            wait_for(lambda: process_state(pid) == "T", 5, "the worker to be suspended")  # signals are async
            assert "paused while the studio makes a sound" in room.status(job)[0]
        wait_for(lambda: process_state(pid) != "T", 5, "the worker to go on")
        *_, last = studio.generate("a bell", 0.5, 2, 1, 1, [])  # a real generation, the run frozen meanwhile
        assert Path(last[-1][0]).is_file()
        wait_for(lambda: process_state(pid) != "T", 5, "the worker to go on")

        # pause (saves a checkpoint), resume, then a reload: a new room finds the running run on disk
        assert room.pause().startswith("Pausing")
        wait_for(lambda: worker.read_json(job / "status.json").get("state") == "paused", 120, "paused", log)
        held = step_of(job)
        time.sleep(2.0)
        assert step_of(job) == held and room.status(job)[0].endswith("paused.")
        assert room.checkpoints(job)[-1][0] == held  # a paused run can be closed without losing work
        room.resume()
        wait_for(lambda: step_of(job) > held + 2, 120, "steps after resuming", log)

        reloaded = TrainRoom(
            Studio(tiny["generator"], tmp_path / "outputs"), tiny["training"], data_roots=[tmp_path]
        )
        assert reloaded.running_job() == job
        status, *_ = reloaded.refresh(None, {})
        assert status == f"**{job.name}**: running."
        assert refused(lambda: reloaded.start(*args, tiny_settings(tiny))).startswith(
            "A run is already going"
        )

        wait_for(lambda: room.previews(job), 300, "a preview", log)
        preview, label = room.previews(job)[0]
        assert preview.suffix == ".wav" and sf.info(preview).frames > 0 and label.startswith("step ")

        assert reloaded.stop().startswith("Stopping")
        wait_for(lambda: not worker.job_alive(job), 120, "the worker to end", log)
        assert worker.read_json(job / worker.WORKER)["state"] == "stopped"
        final = step_of(job)
        status, progress, *_ = room.refresh(None, {})
        assert status == f"**{job.name}**: stopped at step {final} (Resume continues it)."
        table = room.checkpoints(job)
        assert table[-1][0] == final and all(row[2] > 0 for row in table)
        assert "No run is going" in refused(room.pause)

        # checkpoints: A/B at a fixed seed, then one used in the studio
        a, b = table[-2][0], table[-1][0]
        take_a, take_b, note = room.compare(None, a, b, "a noise burst", 0.5, 3)
        wav_a, wav_b = sf.read(take_a["value"])[0], sf.read(take_b["value"])[0]
        assert wav_a.shape == wav_b.shape == (SR // 2, 2) and not np.allclose(wav_a, wav_b)
        again_a, _, _ = room.compare(None, a, a, "a noise burst", 0.5, 3)
        np.testing.assert_array_equal(sf.read(again_a["value"])[0], wav_a)  # the same seed, the same sound
        assert "Seed 3" in note

        said = room.use_checkpoint(None, final)
        bundle = room.models_dir / f"{job.name}-step{final}"
        assert studio.model == bundle.resolve() and bundle.name in said
        assert studio.generator().bundle_path.resolve() == bundle.resolve()
        assert "not LoRA adapters" in refused(lambda: room.export_adapter(None, final))

        # Resume with nothing going continues the stopped run from its checkpoint, in a new worker
        assert room.resume(None) == f"Continuing {job.name} from its last checkpoint."
        wait_for(lambda: step_of(job) > final, 300, "steps after continuing", log)
        assert "--resume" in json.loads((job / worker.JOB).read_text())["stages"][-1]["argv"]
        room.stop()
        wait_for(lambda: not worker.job_alive(job), 120, "the worker to end again", log)
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # one unbroken record per step
    finally:
        stop_all(room)


# ---------------------------------------------------------------- a real browser


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_browser_starts_a_tiny_run_watches_the_regime_plot_and_stops_it(tiny, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    outputs = tmp_path / "outputs"
    # the tab's room lives in OUTPUTS/training: give it the encoded tiny corpus
    (outputs / "training" / "data").mkdir(parents=True)
    (outputs / "training" / "data" / "tiny").symlink_to(tiny["setup"]["data"])
    monkeypatch.setenv("SOUNDLOOM_DATA_ROOTS", str(tmp_path))
    studio = Studio(tiny["generator"], outputs)
    port = free_port()
    demo = launch(studio, host="127.0.0.1", port=port, block=False, preload=False)
    room = TrainRoom(studio)
    shots = Path(os.environ.get("SOUNDLOOM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.get_by_role("tab", name="Train").click()
                page.locator("#train-start").wait_for()
                page.locator("#train-recipe").get_by_label("stage-adaptive", exact=True).check()
                page.locator("#train-steps input").fill("100000")
                editor = page.locator("#train-settings .cm-content")
                editor.click()
                editor.fill(tiny_settings(tiny))
                page.locator("#train-start").click()
                page.locator("#train-said").get_by_text("Started").wait_for(timeout=60_000)

                plot = page.locator("#train-plot-regime")

                def points() -> int:
                    text = plot.inner_text() if plot.is_visible() else ""
                    found = [int(t) for t in __import__("re").findall(r"\((\d+) points\)", text)]
                    return found[0] if found else 0

                first = wait_for(points, 400, "the regime plot")
                wait_for(lambda: points() > first, 120, "the regime plot to gain points")
                page.wait_for_timeout(1500)
                page.screenshot(path=str(shots / "train-running.png"), full_page=True)

                page.locator("#train-stop").click()
                page.locator("#train-status").get_by_text("stopped at step").wait_for(timeout=120_000)
                job = room.jobs()[0]
                final = step_of(job)
                cell = page.locator("#train-checkpoints").get_by_text(str(final), exact=True)
                cell.first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / "train-stopped.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop_all(room)
        demo.close()
    print(f"\nregime plot gained points from {first}; stopped at step {final}; screenshots in {shots}")


def test_the_train_tab_is_in_the_studio(studio):
    demo = build_app(studio)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"train-start", "train-pause", "train-resume", "train-stop", "train-plot-regime"} <= ids
