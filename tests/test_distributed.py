"""Distributed training (issue 8): two CPU processes over gloo train one run as one process would.

Each distributed run starts two processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT in the environment) and calls `train` in each; they are forked from a
multiprocessing forkserver that imported the trainer once, so a run costs a fraction of a second of CPU,
not two torch imports. Rank 1 gets a run folder of its own and its own working folder, neither of which may appear:
only rank 0 writes, and rank 1 must learn the control file's commands and the checkpoint it resumes from
through rank 0. The reference is one process training the same global batch.

Tolerance: the same global batch gives the same gradient up to float32 rounding (a mean of two
half-batch means instead of one mean). Measured over 8 AdamW steps: losses within 1.3e-7 relative, weights
and optimizer state within 6e-8; the tests allow 1e-6 for both. One more test starts `torchrun` itself on
the command line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import metrics, read_status, write_config
from torch import nn
from tqdm import tqdm

import app.cli as cli
from app.browser import free_port
from pipelines.errors import BadInput
from training.distributed import Layout
from training.recipes import RECIPES
from training.trainer import sample_seed, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
TOLERANCE = {"rel": 1e-6, "abs": 1e-7}  # per-step losses
WEIGHTS_ATOL = 1e-6


class StatefulGroupsRecipe:
    """ARC's shape in miniature: two modules trained in turn by their own optimizers, per-example noise
    (so any process layout draws the same), and a state each process updates from its own share of the
    batch (the first index it saw) that scales the next loss: unless every process trains with rank 0's
    state, as a single process of the whole batch would, the weights drift apart."""

    name = "stateful-groups"

    def __init__(self, config: dict, data_dir: Path):
        self.seed = int(config["seed"])
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)
        self.teacher = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
        self.first = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"a": self.a, "b": self.b}

    def dataset_size(self) -> int:
        return 24

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"first": ["a"], "second": ["b"]}

    def group_for_step(self, step: int) -> str:
        return "first" if step % 3 else "second"

    def state_dict(self) -> dict:
        return {"first": self.first}

    def load_state_dict(self, state: dict) -> None:
        self.first = state["first"]

    def loss(self, step: int, indices: list[int], modules: dict[str, nn.Module]):
        x = torch.stack(
            [
                torch.randn(4, generator=torch.Generator().manual_seed(sample_seed(self.seed, step, i)))
                for i in indices
            ]
        )
        err = (modules["b"](modules["a"](x)) - torch.tanh(x @ self.teacher)).square().mean()
        scale = 1.0 + 0.05 * self.first
        self.first = indices[0]
        return err * scale, {"scale": scale}


@pytest.fixture(scope="module")
def processes():
    """A multiprocessing context whose children fork from a server that has imported the trainer."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["training.trainer", "training.toy_recipe", "torch._dynamo", "test_distributed"]
    )
    return context


def steer(run: Path, pause_at: int | None, stop_at: int | None):
    """rank 0's on_metrics: after step `pause_at` the control file says pause, and resume once the run
    reports itself paused; after step `stop_at` it says stop."""

    def command(name: str) -> None:
        (run / "control.json").write_text(json.dumps({"command": name}))

    def resume_when_paused() -> None:
        deadline = time.monotonic() + 30
        while read_status(run).get("state") != "paused" and time.monotonic() < deadline:
            time.sleep(0.01)
        command("resume")

    def on_metrics(record: dict) -> None:
        if record["step"] == pause_at:
            command("pause")
            threading.Thread(target=resume_when_paused, daemon=True).start()
        if record["step"] == stop_at:
            command("stop")

    return on_metrics


def rank_main(
    rank: int, port: int, recipe: str, data: Path, runs: list[Path], config: Path, options: dict, results
):
    """One process of a 2-process run, set up as torchrun would; puts (rank, final checkpoint name), or
    (rank, "error: ...") when the run refuses its settings."""
    tqdm.set_lock(threading.RLock())  # no multiprocessing semaphore for the resource tracker
    RECIPES.setdefault(StatefulGroupsRecipe.name, StatefulGroupsRecipe)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.chdir(runs[rank].parent)  # a stray relative write would land here
    run = runs[rank]
    on_metrics = steer(run, options.get("pause_at"), options.get("stop_at")) if rank == 0 else None
    try:
        final = train(
            recipe,
            data,
            run,
            config_path=config,
            init_bundle=options.get("init"),
            resume=options.get("resume", False),
            progress=False,
            on_metrics=on_metrics,
        )
    except BadInput as e:
        results.put((rank, f"error: {e}"))
        return
    results.put((rank, final.name))


def train_two(
    processes, tmp_path: Path, recipe: str, config: Path, data: Path | None = None, **options
) -> tuple[Path, list[int]]:
    """Train on two processes into tmp_path/rank0/run (rank 1 is pointed at tmp_path/rank1/run) from `data`
    (default tmp_path); returns rank 0's run folder and the process ids, after checking both processes
    ended at the same checkpoint and wrote nothing else."""
    runs = [tmp_path / f"rank{r}" / "run" for r in (0, 1)]
    for run in runs:
        run.parent.mkdir(exist_ok=True)
    results = processes.Queue()
    port = free_port()
    procs = [
        processes.Process(
            target=rank_main,
            args=(r, port, recipe, data or tmp_path, runs, config, options, results),
            daemon=True,
        )
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0, 0], "a training process failed"
        ended = dict(results.get(timeout=5) for _ in procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert ended[0] == ended[1], f"the processes ended differently: {ended}"
    assert ended[0].startswith("step_"), ended[0]  # else the run's one-sentence refusal, in both
    assert sorted(os.listdir(runs[1].parent)) == [], "rank 1 wrote files"
    assert sorted(os.listdir(runs[0].parent)) == ["run"], "rank 0 wrote outside its run folder"
    return runs[0], [p.pid for p in procs]


def last_state(run: Path) -> dict:
    return json.loads((sorted((run / "checkpoints").iterdir())[-1] / "state.json").read_text())


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir())[-1]
    files = ("modules", "ema", "optimizer")
    return {f"{f}/{k}": t.clone() for f in files for k, t in load_file(last / f"{f}.safetensors").items()}


def assert_same_training(run: Path, reference: Path) -> None:
    got, want = metrics(run), metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for name in ("loss", "grad_norm", *(k for k in want[0] if k not in ("step", "time", "elapsed_s"))):
        assert [r[name] for r in got] == pytest.approx([r[name] for r in want], **TOLERANCE), name
    mine, theirs = final_tensors(run), final_tensors(reference)
    assert mine.keys() == theirs.keys()
    worst = max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine)
    assert worst <= WEIGHTS_ATOL, f"weights differ by up to {worst:.2e}"


def test_two_processes_train_the_toy_like_one_and_follow_rank_0s_control_file_and_checkpoint(
    processes, tmp_path
):
    config = write_config(tmp_path, steps=STEPS, batch_size=8, ckpt_every=100, recipe={"noise": 0.3})
    train("toy", tmp_path, tmp_path / "one", config_path=config, progress=False)

    # paused after step 2 and resumed, stopped after step 5: rank 1 sees neither command but through rank 0
    run, pids = train_two(processes, tmp_path, "toy", config, pause_at=2, stop_at=5)
    status = read_status(run)
    assert status["state"] == "stopped" and status["step"] == 5 and status["pid"] == pids[0]
    saved = [p.name for p in sorted((run / "checkpoints").iterdir())]
    assert saved == ["step_00000002", "step_00000005"]  # the pause saved one, the stop another

    # resumed from rank 0's checkpoint (rank 1's run folder never existed) to the end
    shutil.rmtree(tmp_path / "rank1")
    run, pids = train_two(processes, tmp_path, "toy", config, resume=True)
    assert read_status(run)["state"] == "done" and read_status(run)["pid"] == pids[0]
    assert_same_training(run, tmp_path / "one")
    config_record = json.loads((run / "config.json").read_text())
    assert config_record["batch_size"] == 8  # the global batch, as configured


def test_alternating_optimizers_and_recipe_state_stay_rank_0s(processes, tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPES, StatefulGroupsRecipe.name, StatefulGroupsRecipe)
    config = write_config(tmp_path, steps=STEPS, batch_size=6, ckpt_every=4, recipe={}, warmup_steps=0)
    train(StatefulGroupsRecipe.name, tmp_path, tmp_path / "one", config_path=config, progress=False)
    run, _ = train_two(processes, tmp_path, StatefulGroupsRecipe.name, config)
    assert_same_training(run, tmp_path / "one")
    assert last_state(run)["recipe_state"] == last_state(tmp_path / "one")["recipe_state"]


def test_a_global_batch_that_does_not_split_evenly_is_refused_in_one_sentence(processes, tmp_path):
    config = write_config(tmp_path, steps=2, batch_size=5)
    refusal = "error: batch_size 5 does not split evenly over 2 processes; make it a multiple of 2."
    with pytest.raises(AssertionError, match=refusal):
        train_two(processes, tmp_path, "toy", config)
    assert not (tmp_path / "rank0" / "run").exists()


def test_torchrun_starts_the_command_line_on_two_processes(tmp_path):
    """The README's launch command, for real: `torchrun --standalone --nproc_per_node=2 -m app train`."""
    config = write_config(tmp_path, steps=3, batch_size=4, ckpt_every=100)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [
        "-m",
        "app",
        "train",
        "--recipe",
        "toy",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
    ]
    command += ["--config", str(config), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # the workers' own errors come first in stderr, torchrun's summary last: show both (a rank once died
    # of SIGABRT here with only the summary to read)
    assert done.returncode == 0, done.stderr[:4000] + "\n...\n" + done.stderr[-1500:]
    assert done.stdout.count("last checkpoint:") == 1  # rank 0 speaks for the run
    train("toy", tmp_path, tmp_path / "one", config_path=config, progress=False)
    got, want = metrics(tmp_path / "run"), metrics(tmp_path / "one")
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], **TOLERANCE)
    assert read_status(tmp_path / "run")["state"] == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "one", "run"]


def test_the_process_layout_comes_from_torchruns_environment():
    assert Layout.from_env({}) == Layout(0, 1, 0)
    assert Layout.from_env({"RANK": "3"}) == Layout(0, 1, 0)  # no WORLD_SIZE: not a launcher's process
    assert Layout.from_env({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}) == Layout(5, 8, 1)
    with pytest.raises(BadInput, match="RANK 8 and WORLD_SIZE 8 in the environment name no process"):
        Layout.from_env({"WORLD_SIZE": "8", "RANK": "8"})
    with pytest.raises(BadInput, match="WORLD_SIZE must be a whole number, not 'two'"):
        Layout.from_env({"WORLD_SIZE": "two"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_training_on_a_missing_gpu_is_refused_in_one_line(tmp_path, capsys):
    config = write_config(tmp_path, steps=1)
    argv = ["train", "--recipe", "toy", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--config", str(config), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: device is cuda but this process (local rank 0) sees no CUDA GPU; "
        "start one process per GPU or set device to cpu.\n"
    )
    assert not (tmp_path / "run").exists()
