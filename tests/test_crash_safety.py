"""Crash safety of training runs (issue 8): SIGKILL at random moments, checkpoints written aside with
checksums, damaged checkpoints passed over with one line, and a full disk that stops a run cleanly.

Every run is the tiny `toy` recipe. Each kill trial starts the trainer's command line
(`training.trainer.main`, what `python -m training.trainer` runs) in a child process, kills it with
SIGKILL after a random delay, and starts it again with --resume; the final weights must equal an
uninterrupted run's. The children are forked from a multiprocessing forkserver that imported the
trainer once, since a fresh interpreter spends seconds importing torch before each trial. Set
SOUNDLOOM_KILL_SEED to replay a run's delays.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest
from test_trainer import assert_same_weights, metrics, read_status, write_config
from tqdm import tqdm

import app.cli as cli
import training.checkpoint as checkpoint_module
from pipelines.errors import BadInput
from training.checkpoint import latest_good_checkpoint, list_checkpoints, prune_checkpoints, read_checkpoint
from training.jsonl import read_jsonl
from training.trainer import RunFolder, main, train

EVERY = 5  # ckpt_every in the kill trials: the most steps a kill may cost
FAST = {"recipe": {"step_delay_s": 0}}


@pytest.fixture(scope="module")
def processes():
    """A multiprocessing context whose children fork from a server that has imported the trainer.

    torch._dynamo is what AdamW's first step imports; preloaded, a child reaches its first step in
    well under a second."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["training.trainer", "training.toy_recipe", "torch._dynamo"])
    return context


def trainer_main(argv: list[str]) -> int:
    """training.trainer.main, with tqdm's lock a thread lock: its default multiprocessing lock would
    be a semaphore that a killed child leaves for the resource tracker to complain about."""
    tqdm.set_lock(threading.RLock())
    return main(argv)


def launch_trainer(processes, run: Path, config: Path, *, resume: bool) -> multiprocessing.Process:
    argv = ["--recipe", "toy", "--data", str(run.parent), "--out", str(run), "--config", str(config)]
    args = (argv + (["--resume"] if resume else []),)
    proc = processes.Process(target=trainer_main, args=args, daemon=True)
    proc.start()
    return proc


def first_status(run: Path, proc: multiprocessing.Process) -> dict:
    """The first status.json that `proc` wrote, as soon as it appears."""
    seen: dict = {}
    deadline = time.monotonic() + 120
    while seen.get("pid") != proc.pid:
        assert proc.is_alive(), f"the trainer exited early ({proc.exitcode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
        seen = read_status(run)
    return seen


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [r["step"] for r in read_jsonl(path, tolerate_torn_tail=True)] if path.exists() else []


def verified_steps(run: Path) -> list[int]:
    """The step of every checkpoint folder, each read and checked in full (AssertionError if one is not)."""
    steps = []
    for step, path in list_checkpoints(run / "checkpoints"):
        try:
            meta, _ = read_checkpoint(path)
        except ValueError as e:
            raise AssertionError(f"{path.name} is visible but damaged ({e})") from None
        assert meta["step"] == step
        steps.append(step)
    return steps


def kill_resume_trials(processes, tmp_path: Path, kills: int) -> dict:
    """`kills` SIGKILLs at random moments, each followed by a --resume; then a resume to the end.

    One kill in four lands in the first half second of a process, while it restores its checkpoint
    and tidies the run folder; the others at a random moment of its training steps."""
    seed = int(os.environ.get("SOUNDLOOM_KILL_SEED", secrets.randbits(32)))
    rng = random.Random(seed)
    steps = 60 * kills + 20  # a trial runs at most ~45 steps, so no trial reaches the end
    config = write_config(
        tmp_path, steps=steps, ckpt_every=EVERY, keep_checkpoints=3, recipe={"step_delay_s": 0.02}
    )
    run = tmp_path / "killed"
    start, lost, mid_write, starts_seen = 0, [], 0, 0
    temps: set[Path] = set()
    for trial in range(kills):
        proc = launch_trainer(processes, run, config, resume=trial > 0)
        try:
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                seen = first_status(run, proc)
                # the first status a run writes (no ETA yet) holds the step it starts from: with --resume,
                # the newest checkpoint the last kill left; a later one when the poll came too late
                assert seen["step"] >= start, f"seed {seed}, trial {trial}: started at {seen['step']}"
                if seen["eta_s"] is None:
                    assert seen["step"] == start, f"seed {seed}, trial {trial}: started at {seen['step']}"
                    starts_seen += 1
                time.sleep(rng.uniform(0.0, 0.9))
        finally:
            proc.kill()  # SIGKILL
            proc.join()
        assert proc.exitcode == -signal.SIGKILL, f"seed {seed}: the run ended before the kill"
        reached = max(logged_steps(run), default=0)
        saved = verified_steps(run)  # no half-written checkpoint is ever visible
        latest = max(saved, default=0)
        assert 0 <= reached - latest <= EVERY, f"seed {seed}, trial {trial}: reached {reached}, saved {saved}"
        lost.append(reached - latest)
        now = set((run / "checkpoints").glob(".tmp-step_*"))
        mid_write += bool(now - temps)  # a temp folder this process left: killed while writing a checkpoint
        temps = now
        assert latest >= start, f"seed {seed}, trial {trial}: checkpoint step {start} was lost"
        start = latest

    # the rest without delay or periodic saves (their fsyncs dominate); saving never changes the weights
    fast = {**FAST, "ckpt_every": steps}
    resumed = train("toy", tmp_path, run, config_path=config, resume=True, overrides=fast, progress=False)
    straight = tmp_path / "straight"
    reference = train("toy", tmp_path, straight, config_path=config, overrides=fast, progress=False)
    assert resumed.name == reference.name == f"step_{steps:08d}"
    assert_same_weights(resumed, reference)
    got, want = metrics(run), metrics(straight)
    assert [r["step"] for r in got] == list(range(1, steps + 1))  # each step logged once
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-6)
    assert read_status(run)["state"] == "done"
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # temp folders of killed writes are cleared by the next save
    return {
        "seed": seed,
        "kills": kills,
        "steps_lost": lost,
        "killed_mid_checkpoint": mid_write,
        "resume_starts_seen": starts_seen,
    }


@pytest.mark.parametrize("kills", [5, pytest.param(20, marks=pytest.mark.slow)], ids=["5-kills", "20-kills"])
def test_sigkill_at_random_moments_then_resume_loses_at_most_one_interval(processes, tmp_path, kills):
    figures = kill_resume_trials(processes, tmp_path, kills)
    assert max(figures["steps_lost"]) <= EVERY
    print(f"\nkill trials: {figures}")


# ---------------------------------------------------------------- atomic writes and checksums


def test_checkpoints_are_written_aside_then_renamed_with_checksums(tmp_path, monkeypatch):
    published = []
    real = checkpoint_module.replace_folder

    def spy(tmp: Path, final: Path) -> None:
        assert tmp.parent == final.parent and tmp.name.startswith(".tmp-") and not final.exists()
        meta, _ = read_checkpoint(tmp)  # whole and verified before it gets its step name
        published.append(meta["step"])
        real(tmp, final)

    monkeypatch.setattr(checkpoint_module, "replace_folder", spy)
    final = train(
        "toy", tmp_path, tmp_path / "run", config_path=write_config(tmp_path, steps=10), progress=False
    )
    assert published == [5, 10]
    state = json.loads((final / "state.json").read_text())
    assert set(state["sha256"]) == {"modules", "ema", "optimizer"}
    assert all(len(s) == 64 for s in state["sha256"].values()) and len(state["state_sha256"]) == 64
    assert list(state)[-1] == "state_sha256"


def flip_state_value(path: Path) -> None:
    """A bit flip that keeps state.json valid JSON: the saved elapsed time changes."""
    meta = json.loads(path.read_text())
    meta["elapsed_s"] += 1000.0
    path.write_text(json.dumps(meta, indent=1) + "\n")


DAMAGE = {
    "flipped byte in modules": lambda ck: _flip_byte(ck / "modules.safetensors"),
    "zero-length optimizer": lambda ck: (ck / "optimizer.safetensors").write_bytes(b""),
    "missing ema": lambda ck: (ck / "ema.safetensors").unlink(),
    "state value changed": lambda ck: flip_state_value(ck / "state.json"),
    "state not an object": lambda ck: (ck / "state.json").write_text("[1, 2]\n"),
    "state truncated": lambda ck: (ck / "state.json").write_text((ck / "state.json").read_text()[:40]),
}
REASON = {
    "flipped byte in modules": "modules.safetensors does not match its checksum",
    "zero-length optimizer": "optimizer.safetensors does not match its checksum",
    "missing ema": "ema.safetensors is missing",
    "state value changed": "state.json does not match its checksum",
    "state not an object": "state.json is not a JSON object",
    "state truncated": "state.json is truncated or not JSON",
}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_in_one_line_and_the_previous_good_one_used(tmp_path, damage):
    config = write_config(tmp_path, steps=10)
    run = tmp_path / "run"
    newest = train("toy", tmp_path, run, config_path=config, progress=False)
    DAMAGE[damage](newest)
    with pytest.raises(ValueError, match=REASON[damage]):
        read_checkpoint(newest)

    with pytest.warns(UserWarning) as caught:
        path, meta, _ = latest_good_checkpoint(run / "checkpoints")
    assert path.name == "step_00000005" and meta["step"] == 5
    (message,) = [str(w.message) for w in caught if "Checkpoint" in str(w.message)]
    assert message == (
        f"Checkpoint step_00000010 is damaged ({REASON[damage]}), so the previous good one is used instead."
    )

    # resumed from step 5, the run ends where an uninterrupted one does
    with pytest.warns(UserWarning, match="step_00000010 is damaged"):
        again = train("toy", tmp_path, run, config_path=config, resume=True, progress=False)
    straight = train("toy", tmp_path, tmp_path / "straight", config_path=config, progress=False)
    assert_same_weights(again, straight)


def test_a_checkpoint_under_the_wrong_step_name_is_passed_over(tmp_path):
    run = tmp_path / "run"
    train("toy", tmp_path, run, config_path=write_config(tmp_path, steps=10), progress=False)
    os.rename(run / "checkpoints" / "step_00000005", run / "checkpoints" / "step_00000015")
    with pytest.warns(UserWarning, match=r"step_00000015 is damaged \(state.json holds step 5\)"):
        path, _, _ = latest_good_checkpoint(run / "checkpoints")
    assert path.name == "step_00000010"


def test_the_cli_says_a_damaged_checkpoint_in_one_warning_line(tmp_path, capsys):
    config = write_config(tmp_path, steps=10)
    run = tmp_path / "run"
    (tmp_path / "data").mkdir()
    argv = ["train", "--recipe", "toy", "--data", str(tmp_path / "data"), "--out", str(run)]
    argv += ["--config", str(config)]
    assert cli.main(argv) == 0
    _flip_byte(run / "checkpoints" / "step_00000010" / "ema.safetensors")
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: Checkpoint step_00000010 is damaged (ema.safetensors does not match its checksum), "
        "so the previous good one is used instead."
    ]


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train("toy", tmp_path, run, config_path=write_config(tmp_path, steps=20), progress=False)
    root = run / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [5, 10, 15, 20]

    def killed_halfway(path, ignore_errors=False):
        if not Path(path).is_dir():
            return
        sorted(Path(path).iterdir())[0].unlink()  # one file gone, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_halfway)
    with pytest.raises(SystemExit):
        prune_checkpoints(root, keep=2)
    monkeypatch.undo()
    assert verified_steps(run) in ([10, 15, 20], [15, 20])  # whatever remains under a step name is whole
    prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000015", "step_00000020"]


# ---------------------------------------------------------------- a full disk


def full_disk_after(monkeypatch, *, checkpoint_step: int | None = None, metrics_step: int | None = None):
    """From the given checkpoint (or metrics line) on, writes fail with ENOSPC after writing half."""
    real_write_bytes, real_log = Path.write_bytes, RunFolder.log

    def write_bytes(self, data):
        if checkpoint_step is not None and f".tmp-step_{checkpoint_step:08d}" in str(self):
            real_write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, data)

    def log(self, record):
        if metrics_step is not None and record["step"] >= metrics_step:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record)[:12])  # what fit on the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_log(self, record)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(RunFolder, "log", log)


def disk_full_message(run: Path, step: int, last: str) -> str:
    return (
        f"The disk holding {run} is full, so training stopped at step {step} and the last checkpoint, "
        f"{last}, is intact; free some space and run again with --resume."
    )


def finish_and_compare(tmp_path: Path, run: Path, config: Path) -> None:
    again = train("toy", tmp_path, run, config_path=config, resume=True, progress=False)
    straight = train("toy", tmp_path, tmp_path / "straight", config_path=config, progress=False)
    assert_same_weights(again, straight)
    assert [r["step"] for r in metrics(run)] == list(range(1, 21))


def test_a_full_disk_while_checkpointing_stops_cleanly_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    config = write_config(tmp_path, steps=20)
    run = tmp_path / "run"
    (tmp_path / "data").mkdir()
    full_disk_after(monkeypatch, checkpoint_step=10)
    code = cli.main(
        [
            "train",
            "--recipe",
            "toy",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(run),
            "--config",
            str(config),
        ]
    )
    monkeypatch.undo()
    want = disk_full_message(run, 10, "step_00000005")
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [f"error: {want}"]
    status = read_status(run)
    assert status["state"] == "failed" and status["message"] == want and status["step"] == 10
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000005"]  # no temp left
    assert verified_steps(run) == [5]
    finish_and_compare(tmp_path, run, config)


def test_a_full_disk_while_logging_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = write_config(tmp_path, steps=20)
    run = tmp_path / "run"
    full_disk_after(monkeypatch, metrics_step=13)
    with pytest.raises(BadInput) as err:
        train("toy", tmp_path, run, config_path=config, progress=False)
    monkeypatch.undo()
    want = disk_full_message(run, 13, "step_00000010")
    assert str(err.value) == want and "\n" not in want
    status = read_status(run)
    assert status["state"] == "failed" and status["message"] == want
    assert verified_steps(run) == [5, 10]
    assert (run / "metrics.jsonl").read_text().splitlines()[-1].startswith('{"step": 13')  # a torn line
    finish_and_compare(tmp_path, run, config)


def test_a_disk_too_full_for_the_status_file_still_says_why(tmp_path, monkeypatch):
    config = write_config(tmp_path, steps=20)
    run = tmp_path / "run"
    full_disk_after(monkeypatch, checkpoint_step=10)
    import training.trainer as trainer_module

    real_write_atomic = trainer_module.write_atomic

    def write_atomic(path, data):
        if Path(path).name == "status.json" and json.loads(data)["state"] == "failed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_atomic(path, data)

    monkeypatch.setattr(trainer_module, "write_atomic", write_atomic)
    with pytest.raises(BadInput, match="is full, so training stopped at step 10"):
        train("toy", tmp_path, run, config_path=config, progress=False)
    monkeypatch.undo()
    assert read_status(run)["state"] == "running"  # the last status the disk took
    assert verified_steps(run) == [5]
    finish_and_compare(tmp_path, run, config)
