"""The training room's worker: a job of `soundloom` commands (encode the clips, then train) run one after
another in a process of its own, apart from the web server, so a browser reload, or the studio stopping,
leaves it running; the studio finds it again on disk.

A job folder (the training room's runs/NAME) holds:
    job.json      what to run: {"name", "kind": "train" | "experiment", "stages": [{"name", "argv"}], "runs"}
                  ("runs": the run folders it trains, or a folder whose subfolders are its run folders)
    worker.json   the worker's state: pid, state (running / stopped / done / failed), stage, message, times
    worker.log    what the commands print
    stop          present once a stop was asked for: no later stage starts
and, for a job that trains one run, the trainer's own files: it is that run's folder (config.json,
metrics.jsonl, status.json, control.json, checkpoints/, previews/).

    python -m app.train_worker JOB

Studio side: `launch_worker` starts it in a new session (its own process group), `job_alive` tells a live
worker from a finished or crashed one, `active_run` names the run folder being trained now (for the control
file), `freeze` / `thaw` suspend and continue the whole process group (SIGSTOP / SIGCONT) while the studio
generates a sound on the same cores: instant, and unlike the control file's pause it writes no checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.atomic_files import write_atomic
from pipelines.errors import BadInput

JOB, WORKER, LOG, STOP = "job.json", "worker.json", "worker.log", "stop"
REPO = Path(__file__).resolve().parent.parent
LIVE_STATES = ("starting", "running")
CAN_FREEZE = hasattr(signal, "SIGSTOP")


# ---------------------------------------------------------------- the job folder


def read_json(path: Path) -> dict:
    """A small JSON file written atomically by someone else; {} when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_job(job_dir: Path, job: dict) -> None:
    job_dir.mkdir(parents=True, exist_ok=False)
    write_json(job_dir / JOB, job)
    write_json(job_dir / WORKER, {"state": "starting", "time": time.time()})


def job_runs(job_dir: Path) -> list[Path]:
    """The run folders of a job that exist so far (an experiment makes them one by one)."""
    job = read_json(job_dir / JOB)
    runs: list[Path] = []
    for entry in job.get("runs", []):
        path = job_dir / entry
        if entry.endswith("/*"):
            parent = job_dir / entry[:-2]
            runs += sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        else:
            runs.append(path)
    return runs


def active_run(job_dir: Path) -> Path | None:
    """The run folder trained now (running or paused), else the one that logged last."""
    runs = [r for r in job_runs(job_dir) if (r / "status.json").is_file()]
    going = [r for r in runs if read_json(r / "status.json").get("state") in ("running", "paused")]
    pool = going or runs
    return max(pool, key=lambda r: (r / "status.json").stat().st_mtime) if pool else None


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` runs a worker (a zombie child of this process is reaped and counts as gone)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # our child, just ended: reaped now
    except ChildProcessError:
        pass  # not our child (a worker started by an earlier studio)
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():  # a pid reused by another program is not our worker
        try:
            return b"app.train_worker" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def job_alive(job_dir: Path) -> bool:
    worker = read_json(job_dir / WORKER)
    if worker.get("state") == "starting" and "pid" not in worker:  # written, its process not launched yet
        return time.time() - float(worker.get("time", 0)) < 60.0
    return worker.get("state") in LIVE_STATES and pid_alive(worker.get("pid"))


def launch_worker(job_dir: Path) -> subprocess.Popen:
    """Start `python -m app.train_worker JOB` in its own session, its output in JOB/worker.log."""
    log = open(job_dir / LOG, "ab")  # noqa: SIM115 - the child holds it; ours closes below
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.train_worker", str(job_dir.resolve())],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()
    worker = read_json(job_dir / WORKER)
    write_atomic(job_dir / WORKER, json.dumps({**worker, "pid": proc.pid, "time": time.time()}) + "\n")
    threading.Thread(target=proc.wait, name="soundloom-worker-reaper", daemon=True).start()
    return proc


def send(run_dir: Path, command: str) -> None:
    """A command for the trainer through the run's control file (pause, resume or stop)."""
    assert command in ("pause", "resume", "stop")
    write_atomic(run_dir / "control.json", json.dumps({"command": command}) + "\n")


def request_stop(job_dir: Path) -> None:
    """No later stage starts, and whatever run is training saves and stops."""
    write_atomic(job_dir / STOP, f"{time.time()}\n")
    for run in job_runs(job_dir):
        if read_json(run / "status.json").get("state") in ("running", "paused"):
            send(run, "stop")


def _signal_group(job_dir: Path, sig: int) -> bool:
    pid = read_json(job_dir / WORKER).get("pid")
    if not pid_alive(pid):
        return False
    try:
        os.killpg(pid, sig)  # the worker leads its own session and group: its children stop with it
    except (ProcessLookupError, PermissionError):
        return False
    return True


def freeze(job_dir: Path) -> bool:
    """Suspend the worker and its children at once (SIGSTOP); False where it cannot be."""
    return CAN_FREEZE and _signal_group(job_dir, signal.SIGSTOP)


def thaw(job_dir: Path) -> bool:
    """Let a frozen worker go on (SIGCONT); harmless on one that is not frozen."""
    return CAN_FREEZE and _signal_group(job_dir, signal.SIGCONT)


# ---------------------------------------------------------------- the worker process


class _ErrorTee:
    """stderr that also remembers the last `error: ...` line a command printed (its one-sentence reason)."""

    def __init__(self, stream):
        self.stream, self.last_error = stream, ""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("error: "):
                self.last_error = line.removeprefix("error: ").strip()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _set_state(job_dir: Path, **fields) -> None:
    worker = read_json(job_dir / WORKER)
    write_atomic(job_dir / WORKER, json.dumps({**worker, **fields, "time": time.time()}) + "\n")


def _stop_watch(job_dir: Path, done: threading.Event) -> None:
    """Once a stop is asked: keep telling each run that trains to stop (an experiment starts one after
    another, and a trainer clears its control file as it starts), and end the process as soon as nothing
    trains: each run saved its checkpoint on stopping, and an encoding or a run still loading is resumable."""
    while not done.wait(0.5):
        if not (job_dir / STOP).exists():
            continue
        request_stop(job_dir)
        going = [
            r for r in job_runs(job_dir) if read_json(r / "status.json").get("state") in ("running", "paused")
        ]
        if not going:
            _set_state(job_dir, state="stopped", finished=time.time(), message="stopped; rerun to continue")
            sys.stdout.flush()
            os._exit(0)


def run_job(job_dir: Path) -> int:
    """Run the job's stages through the CLI in this process; returns the exit code of the last one."""
    from app import cli

    job = read_json(job_dir / JOB)
    _set_state(job_dir, state="running", pid=os.getpid(), started=time.time(), stage=None, message="")
    done = threading.Event()
    threading.Thread(target=_stop_watch, args=(job_dir, done), daemon=True).start()
    tee = _ErrorTee(sys.stderr)
    sys.stderr = tee
    code = 0
    try:
        for i, stage in enumerate(job.get("stages", [])):
            if (job_dir / STOP).exists():
                break
            _set_state(job_dir, stage=i, stage_name=stage["name"])
            print(f"== {stage['name']}: soundloom {' '.join(stage['argv'])}", flush=True)
            code = cli.main(stage["argv"])
            if code != 0:
                message = tee.last_error or f"{stage['name']} ended with exit code {code}"
                _set_state(job_dir, state="failed", finished=time.time(), exit_code=code, message=message)
                return code
    finally:
        done.set()
        sys.stderr = tee.stream
    stopped = (job_dir / STOP).exists() or any(
        read_json(r / "status.json").get("state") == "stopped" for r in job_runs(job_dir)[-1:]
    )
    _set_state(job_dir, state="stopped" if stopped else "done", finished=time.time(), exit_code=0)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / JOB).is_file():
        print("usage: python -m app.train_worker JOB (a job folder holding job.json)", file=sys.stderr)
        return 2
    try:
        return run_job(Path(args[0]))
    except BadInput as e:
        _set_state(Path(args[0]), state="failed", finished=time.time(), message=str(e))
        return 2
    except BaseException as e:
        _set_state(Path(args[0]), state="failed", finished=time.time(), message=f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
