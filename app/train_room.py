"""The studio's Train tab (the training room): pick data, check it, choose a recipe or a preset, start a run
in a worker process, steer it, watch its plots and previews, and use its checkpoints.

    room = TrainRoom(studio)                       # its folder: OUTPUTS/training (data/, uploads/, runs/)
    room.prepare("a folder on this machine", ..., folder="~/my-sounds", name="mine")
    room.start("mine", "quick fine-tune on my sounds", ...)
    room.pause(); room.resume(); room.stop()       # through the run's control.json
    room.refresh(None, {})                         # status, plots, previews, checkpoints: all read from disk

Everything a run is lives on disk (app/train_worker.py: the job folder, the trainer's run folder), so the
tab reattaches to a running run after a browser reload or a studio restart; one run goes at a time. While
the studio generates a sound, the run's worker is suspended (SIGSTOP) and continued right after, so a sound
on 2 cores comes as fast as without a run; the tab says so. `TrainRoom` holds the handlers (no model math:
they call training.* and pipelines.*); `train_tab` is the layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from app import train_worker as worker
from app.studio import Studio, _said_in_one_sentence, _uploaded, _whole
from app.train_plots import PLOTS, MetricsReader, eval_frame, overfitting_warning, plot_frame
from app.zip_upload import ZipLimits, extract_zip
from pipelines.bundle import ASSETS_DIR
from pipelines.errors import BadInput
from training.dataset_check import duration_text

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
RECIPE_CONFIGS = {
    "static": "static.json",
    "stage-adaptive": "stage_adaptive.json",
    "random-threshold": "stage_adaptive.json",
    "arc": "arc.json",
}
RECIPE_LABELS = {
    "static": "static (rectified flow)",
    "stage-adaptive": "stage-adaptive",
    "random-threshold": "random-threshold (control)",
    "arc": "ARC post-training (few-step)",
}
FULL, LORA = "full fine-tune", "LoRA adapters"
QUICK, COMPARISON, CUSTOM = "quick fine-tune on my sounds", "reproduce the paper's comparison", "custom"
# The quick fine-tune: the static recipe from the active model (every weight), its corpus replayed beside the
# user's clips, sized for <= 20 minutes on 2 cores with AMX at the bundled DiT (~0.38 s a step at batch 16;
# 13.5 min from Start to the run's end, encoding, previews and checkpoints included; on a CPU without native
# bf16, float32 steps take ~2.8x as long: training/dataset_check.py). Measured (`soundloom bench
# finetune`, README): on a drum kit, full weights beat LoRA rank 8 (kit judge FD -26% against -18%; dev set
# +9.8% and +8.7%).
QUICK_STEPS = 2000
QUICK_SETTINGS = {
    "batch_size": 16,
    "lr": 1e-4,
    "warmup_steps": 50,
    "ema_decay": 0.995,  # 0.999 would still hold ~14% of the start model's weights after 2000 steps
    "ckpt_every": 500,
    "keep_checkpoints": 2,  # a full checkpoint with its optimizer state is ~120 MB
    "log_every": 10,
    "preview_every": 500,
}
QUICK_LORA_RANK = 16
# The quick fine-tune replays the start model's own corpus beside the user's clips when a copy with latents is
# on this machine, so the model keeps what it knew (README, "LoRA fine-tuning"): looked for among the folders
# in these places (the tab's datasets are added), the user's clips taking about this share of the batches.
REPLAY_PLACES = (worker.REPO / ".cache" / "bundles", worker.REPO / "data")
REPLAY_SHARE = 0.5
# ... and the replayed clips learn toward the start model's own predictions (recipe.distill_replay): on a drum
# kit, kit judge FD -28% / dev set +10% without, -34% / +2% with (README, "Train tab").
REPLAY_DISTILL = 1.0
CORPUS_IDENTITY = ("format_version", "seed", "hours", "categories")  # corpus.json keys a model card records
COMPARISON_STEPS, COMPARISON_SEEDS = 1200, 3
SOURCES = ("build the corpus", "upload a zip", "a folder on this machine")
PREVIEWS = 3  # preview players (the newest previews) and clip players in the dataset check
CAPTION_HEADERS = ["clip", "caption", "seconds", "split", "caption from"]
CHECK_HEADERS = ["clip", "problem", "seconds", "caption"]
CHECKPOINT_HEADERS = ["step", "saved at", "MB"]
POLL_SECONDS = 2.0
NAME = re.compile(r"[^A-Za-z0-9_.-]+")
FROZEN_NOTE = (
    "While the studio makes a sound (any tab), the run is paused: its worker process is suspended and goes on "
    "right after, so generating stays quick on 2 cores. Pause below pauses it for good (after saving a "
    "checkpoint) until Resume."
)

_frozen: dict[Path, int] = {}  # job folder -> generations holding it suspended, in this process
_frozen_lock = threading.Lock()


def default_data_roots() -> list[Path]:
    """Folders the tab may read sounds from: SOUNDLOOM_DATA_ROOTS (separated by os.pathsep), else home."""
    given = os.environ.get("SOUNDLOOM_DATA_ROOTS", "")
    roots = [Path(p) for p in given.split(os.pathsep) if p.strip()] if given.strip() else [Path.home()]
    return [p.expanduser().resolve() for p in roots]


@dataclass
class Plan:
    """What a start click runs: the job for app/train_worker.py, and the settings behind it."""

    kind: str  # "train" or "experiment"
    recipe: str
    data: Path
    config: dict = field(default_factory=dict)  # the trainer's settings (kind "train")
    init: Path | None = None
    steps: int = 0
    seeds: int = 1
    notes: list[str] = field(default_factory=list)  # what the plan chose for the user, to tell them

    def job(self, job_dir: Path) -> dict:
        encode = ["dataset", "encode", str(self.data)]
        codec = self.config.get("recipe", {}).get("codec")
        if codec:
            encode += ["--model", str(codec)]
        if self.kind == "experiment":
            experiment = [
                "experiment",
                "stage-adaptive",
                "--out",
                str(job_dir / "experiment"),
                "--data",
                str(self.data),
            ]
            experiment += ["--steps", str(self.steps), "--seeds", str(self.seeds)]
            stages = [{"name": "encode", "argv": encode}, {"name": "experiment", "argv": experiment}]
            runs = ["experiment/runs/*"]
        else:
            train = ["train", "--recipe", self.recipe, "--data", str(self.data), "--out", str(job_dir)]
            train += ["--config", str(job_dir / "settings.json")]
            if self.init is not None:
                train += ["--init", str(self.init)]
            stages = [{"name": "encode", "argv": encode}, {"name": "train", "argv": train}]
            runs = ["."]
        return {
            "name": job_dir.name,
            "kind": self.kind,
            "recipe": self.recipe,
            "stages": stages,
            "runs": runs,
        }


# ---------------------------------------------------------------- handlers


class TrainRoom:
    """The training room's state (all of it on disk under `root`) and its event handlers."""

    def __init__(
        self,
        studio: Studio,
        root: Path | str | None = None,
        data_roots: list[Path | str] | None = None,
        zip_limits: ZipLimits = ZipLimits(),
    ):
        self.studio = studio
        self.root = Path(root if root is not None else studio.outputs / "training").expanduser().resolve()
        roots = default_data_roots() if data_roots is None else data_roots
        self.data_roots = [Path(r).expanduser().resolve() for r in roots]
        self.zip_limits = zip_limits
        self._start_lock = threading.Lock()
        self._readers: dict[Path, MetricsReader] = {}
        self._told: dict[Path, float] = {}  # when the user was last told a generation pauses the run
        # the studio pauses the run while it generates: one guard per training folder
        studio.generation_guards[:] = [
            g
            for g in studio.generation_guards
            if getattr(getattr(g, "__self__", None), "root", None) != self.root
        ]
        studio.generation_guards.append(self.generating)
        for job in self.jobs():  # a worker an earlier studio left suspended mid-generation goes on
            if worker.job_alive(job):
                worker.thaw(job)

    # -------------------------------------------------------- folders

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        """The studio's models folder (the Models tab lists it): where "use in studio" exports to."""
        folders = dict(self.studio.model_folders()) if hasattr(self.studio, "model_folders") else {}
        return Path(folders.get("models folder", self.studio.outputs / "models"))

    def datasets(self) -> list[str]:
        """Prepared datasets (folders with a manifest under data/), newest first."""
        if not self.data_dir.is_dir():
            return []
        found = [p for p in self.data_dir.iterdir() if (p / "manifest.jsonl").is_file()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def jobs(self) -> list[Path]:
        """Job folders, newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = [p for p in self.runs_dir.iterdir() if (p / worker.JOB).is_file()]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def running_job(self) -> Path | None:
        """The job whose worker is alive now, found on disk (so a new page or studio finds it too)."""
        return next((job for job in self.jobs() if worker.job_alive(job)), None)

    def _dataset(self, name) -> Path:
        if not name:
            raise BadInput("No dataset is chosen; prepare one (step 1) or pick one from the list.")
        path = self.data_dir / str(name)
        if Path(str(name)).name != str(name) or not (path / "manifest.jsonl").is_file():
            raise BadInput(
                f"There is no prepared dataset '{name}'; prepare it first or pick one from the list."
            )
        return path

    def _job(self, name) -> Path | None:
        """The job the tab shows: the one named, else the running one, else the newest."""
        if name and Path(str(name)).name == str(name) and (self.runs_dir / str(name) / worker.JOB).is_file():
            return self.runs_dir / str(name)
        return self.running_job() or next(iter(self.jobs()), None)

    # -------------------------------------------------------- 1. data

    def prepare(self, source, hours, seed, zip_file, folder, name, progress=gr.Progress()):
        """Make a dataset from the chosen source; returns (dataset list, captions table, message)."""
        with _said_in_one_sentence():
            if source == SOURCES[0]:
                hours = float(hours or 0)
                seed = int(_whole(seed or 0))
                out = self._new_dataset(name or f"corpus-{hours:g}h-seed{seed}")
                self._build_corpus(out, hours, seed, progress)
            elif source == SOURCES[1]:
                path = _uploaded(zip_file)
                if path is None:
                    raise BadInput("No zip was uploaded; upload a .zip of your sounds.")
                out = self._new_dataset(name or path.stem)
                unpacked = self.root / "uploads" / out.name
                if unpacked.exists():
                    shutil.rmtree(unpacked)
                progress(0.1, desc="unpacking the zip")
                extract_zip(path, unpacked, self.zip_limits)
                progress(0.3, desc="reading and captioning the sounds")
                self._from_folder(unpacked, out)
            elif source == SOURCES[2]:
                src = self.allowed_folder(folder)
                out = self._new_dataset(name or src.name)
                progress(0.2, desc="reading and captioning the sounds")
                self._from_folder(src, out)
            else:
                raise BadInput(f"Choose where the sounds come from: {', '.join(SOURCES)}.")
        table = self.captions(out.name)
        message = (
            f"Dataset '{out.name}' is ready: {len(table)} clips. Check it, edit captions, then start a run."
        )
        return gr.update(choices=self.datasets(), value=out.name), table, message

    def allowed_folder(self, folder) -> Path:
        """`folder` resolved (links followed), refused unless it lies under one of the data roots."""
        if not folder or not str(folder).strip():
            raise BadInput("No folder was given; type the path of a folder of sounds.")
        path = Path(str(folder).strip()).expanduser().resolve()
        if not any(path == root or path.is_relative_to(root) for root in self.data_roots):
            roots = ", ".join(str(r) for r in self.data_roots)
            raise BadInput(
                f"The folder '{path}' is outside the folders the studio may read ({roots}); move the sounds "
                "under one of them, or start the studio with SOUNDLOOM_DATA_ROOTS naming their folder."
            )
        if not path.is_dir():
            raise BadInput(f"'{path}' is not a folder; give the folder that holds your sounds.")
        return path

    def _new_dataset(self, name: str) -> Path:
        clean = NAME.sub("-", str(name)).strip("-.")[:60]
        if not clean:
            raise BadInput("The dataset name has no letters or digits; give it a name like my-drums.")
        out = self.data_dir / clean
        if out.exists():
            raise BadInput(f"A dataset named '{clean}' exists already; choose another name.")
        return out

    def _from_folder(self, src: Path, out: Path) -> None:
        from training.corpus import from_folder

        try:
            from_folder(src, out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise

    def _build_corpus(self, out: Path, hours: float, seed: int, progress) -> None:
        """`soundloom dataset build` in a child process (its render pool forks; this server has threads)."""
        if not 0 < hours <= 3:
            raise BadInput(
                f"The studio builds corpora of up to 3 hours, not {hours:g}; use the CLI for more."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / f".{out.name}.build.log"
        argv = ["dataset", "build", "--out", str(out), "--hours", f"{hours:g}", "--seed", str(seed)]
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "app", *argv], cwd=worker.REPO, stdout=f, stderr=f)
        manifest = out / "manifest.jsonl"
        while proc.poll() is None:
            time.sleep(0.5)
            clips = manifest.read_text(errors="replace").count("\n") if manifest.is_file() else 0
            progress(min(clips * 5.5 / (hours * 3600), 0.99), desc=f"rendering the corpus: {clips} clips")
        if proc.returncode != 0:
            said = [
                line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")
            ]
            shutil.rmtree(out, ignore_errors=True)
            raise BadInput(
                said[-1].removeprefix("error: ") if said else f"The corpus build failed; see {log}."
            )
        log.unlink(missing_ok=True)

    def captions(self, dataset) -> list[list]:
        """The captions table of a dataset: clip, caption (editable), seconds, split, where it came from."""
        from training.corpus import read_manifest

        if not dataset:
            return []
        with _said_in_one_sentence():
            records = read_manifest(self._dataset(dataset))
        return [
            [
                r["id"],
                r["captions"][0] if r["captions"] else "",
                r.get("seconds"),
                r["split"],
                r.get("params", {}).get("caption_source", r.get("source", "")),
            ]
            for r in records
        ]

    def save_captions(self, dataset, table) -> str:
        """Write the table's captions back into the dataset's manifest."""
        from training.corpus import save_captions

        with _said_in_one_sentence():
            rows = table.values.tolist() if hasattr(table, "values") else list(table or [])
            edits = {str(row[0]): str(row[1]) for row in rows if row and row[0] not in (None, "")}
            changed = save_captions(self._dataset(dataset), edits)
        return (
            f"Saved {changed} changed caption(s) into '{dataset}'." if changed else "No caption was changed."
        )

    # -------------------------------------------------------- 2. the run's settings

    def plan(self, dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings) -> Plan:
        """The job a start click would run (BadInput in one sentence when a choice does not fit)."""
        from training.trainer import TrainConfig, _merge, read_json_file

        data = self._dataset(dataset)
        steps = _whole(steps)
        if not isinstance(steps, int) or steps < 1:
            raise BadInput(f"steps must be a whole number of at least 1, not {steps}.")
        extra = _settings(settings)
        if preset == COMPARISON:
            if not (ASSETS_DIR / "judge" / "model.json").is_file():
                raise BadInput(
                    "The comparison is judged by the judge embedder, which is missing; `make bundles` trains it."
                )
            seeds = _whole(seeds)
            if not isinstance(seeds, int) or not 1 <= seeds <= 10:
                raise BadInput(f"seeds must be a whole number from 1 to 10, not {seeds}.")
            return Plan("experiment", "stage-adaptive", data, steps=steps, seeds=seeds)
        if recipe not in RECIPE_CONFIGS:
            raise BadInput(f"Choose a recipe: {', '.join(RECIPE_CONFIGS)}.")
        config = read_json_file(CONFIGS / RECIPE_CONFIGS[recipe], "training config")
        if preset == QUICK:
            config = _merge(config, QUICK_SETTINGS)
        start_from, notes = None, []
        if init or recipe == "arc" or adaptation == LORA:
            start_from, said = flow_model(self.studio_model(), (self.models_dir, ASSETS_DIR))
            notes += said
            config = _merge(config, {"recipe": bundle_settings(start_from)})
            if preset == QUICK:
                # ARC learns from its discriminator, not from flow targets: nothing to distil
                replay, said = self.replay(
                    start_from, data, config["recipe"]["codec"], distill=recipe != "arc"
                )
                config = _merge(config, {"recipe": replay})
                notes.append(said)
        if adaptation == LORA:
            if not lora_available():
                raise BadInput("LoRA adapters are not in this soundloom yet; choose a full fine-tune.")
            if recipe != "static":
                raise BadInput(
                    f"LoRA adapters train with the static recipe, not {recipe}; choose static or a full fine-tune."
                )
            rank = _whole(rank)
            if not isinstance(rank, int) or not 1 <= rank <= 256:
                raise BadInput(f"The LoRA rank must be a whole number from 1 to 256, not {rank}.")
            config = _merge(config, {"recipe": {"lora_rank": rank}})
        if recipe == "random-threshold":
            config = _merge(config, {"recipe": {"control_range": self._control_range(data)}})
        config["steps"] = steps
        config = _merge(config, extra)
        TrainConfig.from_dict(
            config, "the run's settings"
        )  # a bad trainer setting is said before anything starts
        return Plan("train", recipe, data, config=config, init=start_from, steps=steps, notes=notes)

    def replay(self, start_from: Path, data: Path, codec: str, *, distill: bool = True) -> tuple[dict, str]:
        """The recipe settings that replay the start model's corpus beside `data` (none when no copy with latents
        for its codec is here), distilled from the start model when `distill`, and a sentence for the user
        saying which."""
        from pipelines.bundle import read_model_json
        from training.corpus import read_manifest

        recorded = read_model_json(start_from).get("card", {}).get("data") or {}
        found = find_corpus(recorded, (self.data_dir, *REPLAY_PLACES), Path(codec), besides=data)
        if found is None:
            return {}, (
                f"No copy of {start_from.name}'s training corpus with latents is on this machine, so this run "
                "trains on your clips alone and the model may forget more of what it knew; `soundloom dataset "
                f"build --out data/corpus --hours {recorded.get('hours', 3):g} --seed {recorded.get('seed', 0)}` "
                "then `soundloom dataset encode data/corpus` makes one (about half an hour)."
            )
        corpus, record = found
        own = max(1, len(read_manifest(data, split="train")))
        theirs = int(record["counts"]["split"]["train"])
        repeat = max(1, round(theirs * REPLAY_SHARE / (1 - REPLAY_SHARE) / own))
        replay = {"extra_data": [str(corpus)], "data_repeat": repeat}
        said = (
            f"Replaying {start_from.name}'s corpus ({corpus}, {theirs} clips) beside your {own} train clips, "
            f"which are counted {repeat} times so they fill about half of each batch"
        )
        if not distill:
            return replay, said + "."
        replay["distill_replay"] = REPLAY_DISTILL
        return (
            replay,
            f"{said}; the replayed clips learn from {start_from.name}'s own predictions, so it keeps what it knew.",
        )

    def studio_model(self) -> Path:
        """The studio's active generator bundle, to start a fine-tune from."""
        path = Path(getattr(self.studio, "model_path", None) or self.studio.model or "")
        if not (path / "model.json").is_file():
            raise BadInput(
                "There is no active model to start from (no generator bundle yet); untick 'start from the active "
                "model' to train from scratch, or pick a model in the Models tab."
            )
        return path

    def _control_range(self, data: Path) -> list[int]:
        """random-threshold's switch points: where the newest stage-adaptive run on this data saw r rise."""
        from training.stage_adaptive import regime_range

        for job in self.jobs():
            config = worker.read_json(job / "config.json")
            if config.get("recipe_name") == "stage-adaptive" and Path(config.get("data_dir", "")) == data:
                if (job / "metrics.jsonl").is_file():
                    return list(regime_range(job / "metrics.jsonl"))
        raise BadInput(
            "random-threshold draws its switch points from where a stage-adaptive run's r rose; train a "
            "stage-adaptive run on this dataset first."
        )

    def check(
        self, dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings, progress=gr.Progress()
    ):
        """The dataset check: (summary, flagged clips, clip players...) with the run's estimated time and disk."""
        from training.dataset_check import check_dataset

        with _said_in_one_sentence():
            data = self._dataset(dataset)
            report = check_dataset(
                data, on_clip=lambda i, n: progress((i, n), desc="listening", unit="clips")
            )
            try:
                plan = self.plan(dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings)
                estimate = " ".join([self.estimate(plan), *plan.notes])
            except BadInput as e:
                estimate = f"No estimate yet: {e}"
        flagged = [[c.id, c.problem, c.seconds, c.caption] for c in report.clips if c.problem]
        flagged += [
            [line.split(":", 1)[0], "broken: left out, unreadable", None, ""] for line in report.skipped
        ]
        playable = [c for c in report.clips if not c.problem.startswith("broken")][:PREVIEWS]
        players = [
            gr.update(value=str(data / c.path), label=f"{c.id}: {c.caption}"[:120], visible=True)
            for c in playable
        ]
        players += [gr.update(value=None, visible=False) for _ in range(PREVIEWS - len(players))]
        return f"{report.summary()}\n\n{estimate}", flagged, *players

    def estimate(self, plan: Plan) -> str:
        """The plan's estimated wall time and disk, in one line."""
        from pipelines.bundle import bundle_hash
        from pipelines.codec import default_codec_path
        from training.corpus import read_manifest
        from training.dataset_check import estimate_run
        from training.experiment import ARMS, SMALL
        from training.latent_cache import is_current
        from training.trainer import _merge, read_json_file

        records = read_manifest(plan.data)
        codec = Path(plan.config.get("recipe", {}).get("codec") or default_codec_path())
        cache = plan.data / "latents" / bundle_hash(codec)[:16] if (codec / "model.json").is_file() else None
        uncached = sum(
            float(r.get("seconds") or 0)
            for r in records
            if cache is None or not is_current(cache / f"{r['id']}.safetensors")
        )
        if plan.kind == "train":
            return estimate_run(
                plan.recipe, plan.config, uncached_seconds=uncached, clips=len(records)
            ).summary()
        total = 0.0
        for arm_recipe, config_path, _ in ARMS.values():
            config = _merge(
                _merge(read_json_file(config_path, "training config"), SMALL), {"steps": plan.steps}
            )
            total += estimate_run(arm_recipe, config, uncached_seconds=0.0, clips=len(records)).train_s
        runs = len(ARMS) * plan.seeds
        hours = (total * plan.seeds + uncached * 0.14) / 3600
        return f"Estimated {hours:.1f} h of training on 2 cores ({runs} runs of {plan.steps} steps), plus the evaluations."

    # -------------------------------------------------------- 3. start, pause, resume, stop

    def start(self, dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings) -> str:
        """Start the run in a worker process; one run at a time."""
        with _said_in_one_sentence(), self._start_lock:
            going = self.running_job()
            if going is not None:
                raise BadInput(
                    f"A run is already going ({going.name}); pause it, stop it or wait for it before starting another."
                )
            plan = self.plan(dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings)
            name = (
                time.strftime("%Y%m%d-%H%M%S")
                + "-"
                + ("comparison" if plan.kind == "experiment" else plan.recipe)
            )
            job_dir = self.runs_dir / name
            while job_dir.exists():
                job_dir = job_dir.with_name(job_dir.name + "x")
            worker.write_job(job_dir, plan.job(job_dir))
            if plan.kind == "train":
                (job_dir / "settings.json").write_text(json.dumps(plan.config, indent=1) + "\n")
            worker.launch_worker(job_dir)
        return " ".join(
            [
                f"Started {job_dir.name}; it runs in its own process, so reloading this page leaves it running.",
                *plan.notes,
            ]
        )

    def _steer(self, command: str) -> str:
        with _said_in_one_sentence():
            job = self.running_job()
            if job is None:
                raise BadInput("No run is going; start one first.")
            if command == "stop":
                worker.request_stop(job)
                return f"Stopping {job.name}: it saves a checkpoint first."
            run = worker.active_run(job)
            status = worker.read_json(run / "status.json") if run else {}
            if status.get("state") not in ("running", "paused"):
                raise BadInput(
                    f"{job.name} has not begun training yet (it is preparing its data); {command} it once it has."
                )
            worker.send(run, command)
        said = {"pause": "Pausing: it saves a checkpoint, then waits for Resume.", "resume": "Resuming."}
        return said[command]

    def pause(self) -> str:
        return self._steer("pause")

    def resume(self, name=None) -> str:
        """Resume a paused run; with none going, continue the shown run from its last checkpoint."""
        if self.running_job() is not None:
            return self._steer("resume")
        with _said_in_one_sentence(), self._start_lock:
            job = self._job(name)
            if job is None:
                raise BadInput("No run is going; start one first.")
            if worker.read_json(job / worker.WORKER).get("state") == "done":
                raise BadInput(f"{job.name} is done; start a new run to train further.")
            spec = worker.read_json(job / worker.JOB)
            for stage in spec.get("stages", []):
                if stage["name"] == "train" and "--resume" not in stage["argv"]:
                    stage["argv"].append("--resume")  # an experiment resumes by running again as it is
            (job / worker.STOP).unlink(missing_ok=True)
            worker.write_json(job / worker.JOB, spec)
            worker.write_json(job / worker.WORKER, {"state": "starting", "time": time.time()})
            worker.launch_worker(job)
        return f"Continuing {job.name} from its last checkpoint."

    def stop(self) -> str:
        return self._steer("stop")

    @contextmanager
    def generating(self):
        """Held around every generation the studio makes: the running job's worker is suspended meanwhile."""
        job = self.running_job()
        if job is None or not worker.CAN_FREEZE:
            yield
            return
        with _frozen_lock:
            _frozen[job] = _frozen.get(job, 0) + 1
            if _frozen[job] == 1:
                worker.freeze(job)
        if time.monotonic() - self._told.get(job, -1e9) > 60.0:  # a Live stream generates chunk after chunk
            self._told[job] = time.monotonic()
            gr.Info(
                f"The training run {job.name} is paused while this sound is made; it goes on right after."
            )
        try:
            yield
        finally:
            with _frozen_lock:
                _frozen[job] -= 1
                if _frozen[job] == 0:
                    del _frozen[job]
                    worker.thaw(job)

    # -------------------------------------------------------- 4. watching

    def status(self, job: Path | None) -> tuple[str, str]:
        """(one line of state, an HTML progress bar) of a job, read from its files."""
        if job is None:
            return "No run yet. Prepare a dataset, choose a recipe or preset, and press Start.", ""
        info = worker.read_json(job / worker.WORKER)
        alive = worker.job_alive(job)
        run = worker.active_run(job)
        status = worker.read_json(run / "status.json") if run else {}
        which = f"**{job.name}**" + (f" (run {run.name})" if run is not None and run != job else "")
        step, steps = status.get("step"), status.get("steps")
        progress = ""
        if isinstance(step, int) and isinstance(steps, int) and steps > 0:
            eta = status.get("eta_s")
            progress = (
                f'<progress value="{step}" max="{steps}" style="width:100%"></progress>'
                f"<div>step {step}/{steps} ({100 * step // steps}%)"
                + (f", ETA {duration_text(eta)}" if isinstance(eta, int | float) and alive else "")
                + (f", loss {status['loss']:.4g}" if isinstance(status.get("loss"), int | float) else "")
                + "</div>"
            )
        if alive:
            state = status.get("state")
            if info.get("stage_name") == "encode":
                state = "encoding the clips into the latent cache"
            elif state in ("done", "stopped"):
                state = "finishing"
            elif state not in ("running", "paused"):
                state = "starting"
            elif job in _frozen:
                state = "paused while the studio makes a sound"
            return f"{which}: {state}.", progress
        ended = info.get("state")
        if ended == "failed":
            return f"{which} failed: {info.get('message') or 'see its log'}", progress
        if ended == "stopped":
            return f"{which}: stopped at step {step} (Resume continues it).", progress
        if ended in worker.LIVE_STATES:
            return (
                f"{which} ended unexpectedly; its log (below) says why, and Resume continues it.",
                progress,
            )
        at = f" at step {step}" if isinstance(step, int) else ""
        return f"{which}: done{at}.", progress

    def refresh(self, name, seen):
        """Everything the tab shows of a job, for the timer: unchanged parts are skipped (gr.skip())."""
        seen = dict(seen or {})
        job = self._job(name if seen.get("picked") else None)  # follow the running run unless one was picked
        out: list = []
        status, progress = self.status(job)
        out += [status, progress, self.log_tail(job)]

        run = worker.active_run(job) if job is not None else None
        records = self._reader(run).read(run / "metrics.jsonl") if run is not None else []
        key = (str(run), len(records), records[-1].get("step") if records else None)
        fresh = seen.get("metrics") != [*key]
        seen["metrics"] = [*key]
        evals = self._evals(job)
        for spec in PLOTS:
            if not fresh and not (spec.name == "eval" and evals):
                out.append(gr.skip())
                continue
            frame = plot_frame(spec, records)
            if spec.name == "eval" and frame.empty and evals:
                frame = eval_frame(evals)
            steps = frame["step"].nunique() if not frame.empty else 0
            out.append(
                gr.update(value=frame, visible=not frame.empty, label=f"{spec.title} ({steps} points)")
            )
        warning = overfitting_warning(records)
        out.append(gr.update(value=f"**Overfitting?** {warning}" if warning else "", visible=bool(warning)))

        previews = self.previews(run)
        if seen.get("previews") != [str(p) for p, _ in previews]:
            seen["previews"] = [str(p) for p, _ in previews]
            out += [gr.update(value=str(p), label=label, visible=True) for p, label in previews]
            out += [gr.update(value=None, visible=False) for _ in range(PREVIEWS - len(previews))]
        else:
            out += [gr.skip() for _ in range(PREVIEWS)]

        table = self.checkpoints(run)
        if seen.get("checkpoints") != table or seen.get("job") != (job.name if job else None):
            first = not seen.get("checkpoints") or seen.get("job") != (job.name if job else None)
            seen["checkpoints"] = table
            steps = [row[0] for row in table]
            # the newest is chosen when the list first fills (A/B: the two newest); later only the choices
            # grow, so a pick stays
            picks = (
                [steps[-1], steps[-2] if len(steps) > 1 else steps[-1], steps[-1]] if steps else [None] * 3
            )
            out += [table] + [gr.update(choices=steps, **({"value": v} if first else {})) for v in picks]
        else:
            out += [gr.skip() for _ in range(4)]
        names = [j.name for j in self.jobs()]
        if seen.get("jobs") != names or seen.get("job") != (job.name if job else None):
            seen["jobs"], seen["job"] = names, job.name if job else None
            out.append(gr.update(choices=names, value=job.name if job else None))
        else:
            out.append(gr.skip())
        return (*out, seen)

    def _reader(self, run: Path) -> MetricsReader:
        if run not in self._readers:
            self._readers[run] = MetricsReader()
        return self._readers[run]

    def _evals(self, job: Path | None) -> list[dict]:
        path = job / "experiment" / "evals.jsonl" if job is not None else None
        if path is None or not path.is_file():
            return []
        return MetricsReader().read(path)

    def log_tail(self, job: Path | None, lines: int = 12) -> str:
        """The last lines of the worker's log, progress bars' carriage returns resolved."""
        if job is None or not (job / worker.LOG).is_file():
            return ""
        with open(job / worker.LOG, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
        shown = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
        return "\n".join([line for line in shown if line.strip()][-lines:])

    def previews(self, run: Path | None) -> list[tuple[Path, str]]:
        """The newest previews the trainer wrote (RUN/previews/step_N/*.wav), with their prompts."""
        folders = sorted((run / "previews").glob("step_*")) if run is not None else []
        for folder in reversed(folders):
            wavs = sorted(folder.glob("*.wav"))[:PREVIEWS]
            if wavs:
                step = int(folder.name.removeprefix("step_"))
                return [(w, f"step {step}: {_prompt_of(w)}"[:120]) for w in wavs]
        return []

    def checkpoints(self, run: Path | None) -> list[list]:
        """The run's checkpoints, oldest first: step, when saved, size in MB."""
        from training.checkpoint import list_checkpoints

        rows = []
        for step, path in list_checkpoints(run / "checkpoints") if run is not None else []:
            try:
                size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                saved = time.strftime("%H:%M:%S", time.localtime(path.stat().st_mtime))
            except FileNotFoundError:
                continue  # pruned while listed
            rows.append([step, saved, round(size / 1e6, 1)])
        return rows

    # -------------------------------------------------------- 5. using checkpoints

    def _export(self, name, step, out: Path) -> Path:
        from training.trainer import export_run

        job = self._job(name)
        run = worker.active_run(job) if job is not None else None
        step = _whole(step)
        if run is None or not isinstance(step, int):
            raise BadInput("No checkpoint is chosen; pick a step from the run's checkpoint list.")
        if (out / "model.json").is_file():
            return out
        return export_run(run, out, step=step)

    def use_checkpoint(self, name, step, progress=gr.Progress()) -> str:
        """Export a checkpoint into the studio's models folder and make it the studio's model."""
        with _said_in_one_sentence():
            job = self._job(name)
            progress(0.1, desc="exporting the checkpoint")
            out = self.models_dir / f"{job.name if job else 'run'}-step{_whole(step)}"
            bundle = self._export(name, step, out)
            progress(0.6, desc="loading it")
            self.studio.switch_model(bundle)
        return f"The studio now generates with {bundle.name} (in {bundle.parent}); the Models tab lists it."

    def compare(self, name, step_a, step_b, prompt, seconds, seed, progress=gr.Progress()):
        """Checkpoint A/B: the same prompt and seed through two checkpoints; (player A, player B, note)."""
        from pipelines.audio import save_audio

        with _said_in_one_sentence():
            job = self._job(name)
            seed = _whole(seed)
            if not isinstance(seed, int) or seed < 0:
                raise BadInput(f"The A/B seed must be a whole number of 0 or more, not {seed}.")
            paths = []
            for i, step in enumerate((step_a, step_b)):
                progress((i, 2), desc=f"checkpoint {'AB'[i]}: exporting")
                bundle = self._export(name, step, job / "ab" / f"step{_whole(step)}")
                with self.studio._run_lock:  # one generation at a time, the run suspended meanwhile
                    progress((i, 2), desc=f"checkpoint {'AB'[i]}: generating")
                    audio = self.studio.on_model_thread(_generate_once, bundle, prompt, seconds, seed)
                paths.append(
                    save_audio(audio, job / "ab" / f"step{_whole(step)}-seed{seed}-{_slug(prompt)}.wav")
                )
        labels = [f"{'AB'[i]}: step {_whole(s)}" for i, s in enumerate((step_a, step_b))]
        return (
            gr.update(value=str(paths[0]), label=labels[0]),
            gr.update(value=str(paths[1]), label=labels[1]),
            f"Seed {seed}, the same prompt and noise through both checkpoints.",
        )

    def export_adapter(self, name, step, progress=gr.Progress()):
        """A LoRA run's checkpoint as one shareable adapter file (checked against its base when imported)."""
        with _said_in_one_sentence():
            lora = _lora()
            job = self._job(name)
            progress(0.1, desc="exporting the adapter")
            folder = self._export(
                name, step, self.models_dir / f"{job.name if job else 'run'}-step{_whole(step)}"
            )
            if worker.read_json(folder / "model.json").get("kind") != lora.ADAPTER_KIND:
                raise BadInput(
                    "This run trained every weight, not LoRA adapters; use 'use in studio' to try it."
                )
            packed = lora.pack_adapter(folder, self.root / "adapters" / f"{folder.name}.safetensors")
        return str(
            packed
        ), f"Adapter {packed.name}: share this file; importing it checks it against its base model."

    def import_adapter(self, upload) -> str:
        """An adapter file someone shared, checked against its base generator, into the models folder."""
        with _said_in_one_sentence():
            lora = _lora()
            path = _uploaded(upload)
            if path is None:
                raise BadInput("No adapter file was uploaded; upload the .safetensors file an export made.")
            folder = lora.import_adapter(path, self.models_dir)
        return f"Imported {folder.name} into {folder.parent}; the Models tab lists it."

    # -------------------------------------------------------- presets

    @staticmethod
    def preset_changed(preset):
        """A preset fills the run's controls: (recipe, adaptation, start from the model, steps, seeds, recipe box)."""
        if preset == QUICK:
            return "static", FULL, True, QUICK_STEPS, gr.update(visible=False), gr.update(visible=True)
        if preset == COMPARISON:
            return (
                gr.skip(),
                gr.skip(),
                gr.skip(),
                COMPARISON_STEPS,
                gr.update(visible=True),
                gr.update(visible=False),
            )
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False), gr.update(visible=True)

    @staticmethod
    def source_changed(source):
        """Show the inputs of one data source."""
        return tuple(gr.update(visible=source == s) for s in SOURCES)


def bundle_settings(bundle: Path) -> dict:
    """The recipe settings that make a run fit a generator bundle (its DiT, codec, text encoder, noise)."""
    from pipelines.bundle import load_bundle

    generator = load_bundle(bundle)
    if generator.kind != "generator":
        raise BadInput(
            f"The active model {bundle.name} is a {generator.kind} bundle; pick a generator in the Models tab."
        )
    config = generator.config
    return {
        "codec": str(generator.component("codec").path),
        "text_encoder": config.get("text_encoder"),
        "dit": config.get("dit", {}),
        "segment_frames": config.get("segment_frames", 259),
        "time_shift": float(config.get("time_shift", 1.0)),
        "noise_offset": float(config.get("noise_offset", 0.0)),
    }


def _generate_once(bundle: Path, prompt, seconds, seed):
    from pipelines.generator import load_generator

    return load_generator(bundle).generate(prompt, seconds=seconds, seed=seed)


def flow_model(active: Path, places: tuple[Path, ...]) -> tuple[Path, list[str]]:
    """The bundle a run starts from for the active model: itself, or for a few-step ARC model the flow model it
    was post-trained from (the recipes train a rectified flow, which an ARC model no longer is), found by the
    hash its card records (or an int8 copy of that bundle) beside it, in `places` or in assets/; with a sentence
    saying so."""
    from pipelines.bundle import bundles_in, read_model_json, same_model

    card = read_model_json(active).get("card", {})
    if card.get("recipe") != "arc":
        return active, []
    base = card.get("base_model") or {}
    name, want = str(base.get("bundle") or "its base"), base.get("sha256")
    candidates = [active.parent / name] + [p for root in (active.parent, *places) for p in bundles_in(root)]
    found = next((p for p in candidates if same_model(p, want)), None)
    if found is None:
        raise BadInput(
            f"The active model {active.name} is a few-step ARC model; fine-tuning starts from the flow model it was "
            f"made from ({name}), which is not beside it or in {ASSETS_DIR}; put it back or pick a flow model."
        )
    return found, [
        f"The active model {active.name} is a few-step ARC model, so the run starts from the flow model it was "
        f"made from, {found.name}; the result samples like {found.name} (more steps, with guidance)."
    ]


def find_corpus(
    recorded: dict, places: tuple[Path, ...], codec: Path, besides: Path
) -> tuple[Path, dict] | None:
    """A corpus folder in one of `places` built as `recorded` (a model card's data record) says, whose train
    clips all have latents for `codec`, other than the dataset `besides`, with its corpus.json record; None
    when there is none."""
    from pipelines.bundle import bundle_hash
    from training.codec_recipe import corpus_card
    from training.corpus import CORPUS_INFO

    if not recorded or not (codec / "model.json").is_file():
        return None
    latents = bundle_hash(codec)[:16]
    for place in places:
        for made in sorted(place.glob(f"*/{CORPUS_INFO}")) if place.is_dir() else []:
            try:
                record = corpus_card(made.parent)
            except ValueError:  # a corpus.json that is not JSON: not a corpus to replay
                continue
            if (
                made.parent.resolve() == besides.resolve()
                or record.get("state") != "done"
                or any(record.get(k) != recorded.get(k) for k in CORPUS_IDENTITY)
            ):
                continue
            train = int(record.get("counts", {}).get("split", {}).get("train", 0))
            cached = made.parent / "latents" / latents
            if train and cached.is_dir() and sum(1 for _ in cached.glob("*.safetensors")) >= train:
                return made.parent, record
    return None


def lora_available() -> bool:
    try:
        from training.static_recipe import DEFAULTS
    except ImportError:
        return False
    return "lora_rank" in DEFAULTS


def _lora():
    try:
        from pipelines import lora
    except ImportError:
        raise BadInput(
            "LoRA adapters are not in this soundloom yet; export the whole model instead."
        ) from None
    return lora


def _settings(text) -> dict:
    """The advanced-settings box: a JSON object merged over the recipe's config (empty: nothing)."""
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError as e:
        raise BadInput(
            f"The extra settings are not valid JSON ({e.msg} at line {e.lineno}); fix them or clear the box."
        ) from None
    if not isinstance(value, dict):
        raise BadInput(
            'The extra settings must be a JSON object, like {"lr": 1e-4, "recipe": {"p_known": 0.3}}.'
        )
    return value


def _prompt_of(wav: Path) -> str:
    text = wav.with_suffix(".txt")
    return text.read_text(errors="replace").strip() if text.is_file() else wav.stem


def _slug(prompt) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(prompt).lower()).strip("-")[:40] or "sound"


# ---------------------------------------------------------------- layout


def train_tab(studio: Studio, room: TrainRoom | None = None) -> TrainRoom:
    """The Train tab's components and events; returns its room."""
    room = room or TrainRoom(studio)
    seen = gr.State({})
    with gr.Tab("Train", elem_id="train-tab"):
        gr.Markdown(FROZEN_NOTE)
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown("### 1. Data")
                source = gr.Radio(
                    list(SOURCES), value=SOURCES[2], label="sounds from", elem_id="train-source"
                )
                with gr.Group(visible=False) as build_box:
                    hours = gr.Slider(0.05, 3.0, value=0.2, step=0.05, label="hours of corpus")
                    corpus_seed = gr.Number(0, label="seed", precision=0)
                with gr.Group(visible=False) as zip_box:
                    zipped = gr.File(
                        label="a .zip of sounds", file_types=[".zip"], type="filepath", elem_id="train-zip"
                    )
                with gr.Group(visible=True) as folder_box:
                    folder = gr.Textbox(
                        label=f"folder (under {', '.join(str(r) for r in room.data_roots)})",
                        placeholder=str(room.data_roots[0] / "my-sounds") if room.data_roots else "",
                        elem_id="train-folder",
                    )
                name = gr.Textbox(label="dataset name (optional)", elem_id="train-dataset-name")
                prepare = gr.Button("Prepare data", elem_id="train-prepare")
                datasets = room.datasets()
                dataset = gr.Dropdown(
                    datasets,
                    value=datasets[0] if datasets else None,
                    label="dataset",
                    elem_id="train-dataset",
                )
                data_note = gr.Markdown()
                with gr.Accordion("captions (edit, then save)", open=False):
                    captions = gr.Dataframe(
                        room.captions(datasets[0]) if datasets else None,
                        headers=CAPTION_HEADERS,
                        interactive=True,
                        label="captions",
                        elem_id="train-captions",
                    )
                    save = gr.Button("Save captions", elem_id="train-save-captions")
                check = gr.Button("Check dataset", elem_id="train-check")
                check_note = gr.Markdown(elem_id="train-check-note")
                flagged = gr.Dataframe(headers=CHECK_HEADERS, interactive=False, label="flagged clips")
                clip_players = [
                    gr.Audio(
                        type="filepath",
                        interactive=False,
                        visible=False,
                        label=f"clip {i + 1}",
                        elem_id=f"train-clip-{i + 1}",
                    )
                    for i in range(PREVIEWS)
                ]
            with gr.Column(scale=3):
                gr.Markdown("### 2. Run")
                preset = gr.Radio(
                    [QUICK, COMPARISON, CUSTOM], value=CUSTOM, label="preset", elem_id="train-preset"
                )
                with gr.Group() as recipe_box:
                    recipe = gr.Radio(
                        [(label, key) for key, label in RECIPE_LABELS.items()],
                        value="static",
                        label="recipe",
                        elem_id="train-recipe",
                    )
                    with gr.Row():
                        adaptation = gr.Radio(
                            [FULL, LORA], value=FULL, label="what learns", elem_id="train-adaptation"
                        )
                        rank = gr.Number(QUICK_LORA_RANK, label="LoRA rank", precision=0, minimum=1)
                    init = gr.Checkbox(False, label="start from the active model", elem_id="train-init")
                with gr.Row():
                    steps = gr.Number(
                        QUICK_STEPS, label="steps", precision=0, minimum=1, elem_id="train-steps"
                    )
                    seeds = gr.Number(COMPARISON_SEEDS, label="seeds", precision=0, visible=False)
                settings = gr.Code(
                    label='extra settings (JSON merged over the recipe\'s config, e.g. {"lr": 1e-4})',
                    language="json",
                    lines=3,
                    elem_id="train-settings",
                )
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    pause = gr.Button("Pause", elem_id="train-pause")
                    resume = gr.Button("Resume", elem_id="train-resume")
                    stop = gr.Button("Stop and save", variant="stop", elem_id="train-stop")
                said = gr.Markdown(elem_id="train-said")
                status = gr.Markdown(elem_id="train-status")
                progress = gr.HTML(elem_id="train-progress")
                run_pick = gr.Dropdown([], label="run shown (newest by default)", elem_id="train-run")
                with gr.Accordion("worker log", open=False):
                    log = gr.Textbox(
                        lines=8, max_lines=12, interactive=False, show_label=False, elem_id="train-log"
                    )
        gr.Markdown("### 3. Watch")
        warning = gr.Markdown(visible=False, elem_id="train-warning")
        plots = []
        for i in range(0, len(PLOTS), 2):
            with gr.Row():
                for spec in PLOTS[i : i + 2]:
                    plots.append(
                        gr.LinePlot(
                            x="step",
                            y="value",
                            color="series",
                            label=spec.title,
                            y_title=spec.y_title,
                            visible=False,
                            elem_id=f"train-plot-{spec.name}",
                        )
                    )
        with gr.Row():
            previews = [
                gr.Audio(
                    type="filepath",
                    interactive=False,
                    visible=False,
                    label="preview",
                    elem_id=f"train-preview-{i + 1}",
                )
                for i in range(PREVIEWS)
            ]
        gr.Markdown("### 4. Checkpoints")
        with gr.Row():
            with gr.Column():
                checkpoints = gr.Dataframe(
                    headers=CHECKPOINT_HEADERS, interactive=False, elem_id="train-checkpoints"
                )
                with gr.Row():
                    use_step = gr.Dropdown([], label="checkpoint", elem_id="train-use-step")
                    use = gr.Button("Use in studio", elem_id="train-use")
                    export = gr.Button("Export LoRA adapter")
                adapter_file = gr.File(label="adapter file", interactive=False)
                adapter_upload = gr.File(
                    label="import a LoRA adapter (.safetensors)", file_types=[".safetensors"], type="filepath"
                )
                import_button = gr.Button("Import adapter")
                used = gr.Markdown()
            with gr.Column():
                gr.Markdown("Checkpoint A/B: the same prompt and seed through two checkpoints.")
                with gr.Row():
                    step_a = gr.Dropdown([], label="A")
                    step_b = gr.Dropdown([], label="B")
                ab_prompt = gr.Textbox(label="prompt", value="a warm cello note, A3")
                with gr.Row():
                    ab_seconds = gr.Number(4.0, label="seconds")
                    ab_seed = gr.Number(1, label="seed", precision=0)
                compare = gr.Button("Compare", elem_id="train-compare")
                take_a = gr.Audio(type="filepath", interactive=False, label="A", elem_id="train-take-a")
                take_b = gr.Audio(type="filepath", interactive=False, label="B", elem_id="train-take-b")
                ab_note = gr.Markdown()
        timer = gr.Timer(POLL_SECONDS)

    private = {"api_visibility": "private"}
    run_inputs = [dataset, preset, recipe, adaptation, rank, init, steps, seeds, settings]
    source.change(room.source_changed, source, [build_box, zip_box, folder_box], queue=False, **private)
    preset.change(
        room.preset_changed,
        preset,
        [recipe, adaptation, init, steps, seeds, recipe_box],
        queue=False,
        **private,
    )
    prepare.click(
        room.prepare,
        [source, hours, corpus_seed, zipped, folder, name],
        [dataset, captions, data_note],
        **private,
    )
    dataset.change(room.captions, dataset, captions, **private)
    save.click(room.save_captions, [dataset, captions], data_note, **private)
    check.click(room.check, run_inputs, [check_note, flagged, *clip_players], **private)
    start.click(room.start, run_inputs, said, concurrency_id="train-steer", **private).then(
        lambda: {}, None, seen, queue=False, **private
    )  # the tab follows the new run
    pause.click(room.pause, None, said, concurrency_id="train-steer", **private)
    resume.click(room.resume, run_pick, said, concurrency_id="train-steer", **private)
    stop.click(room.stop, None, said, concurrency_id="train-steer", **private)
    watched = [
        status,
        progress,
        log,
        *plots,
        warning,
        *previews,
        checkpoints,
        use_step,
        step_a,
        step_b,
        run_pick,
        seen,
    ]
    timer.tick(
        room.refresh, [run_pick, seen], watched, show_progress="hidden", concurrency_limit=None, **private
    )
    run_pick.input(lambda: {"picked": True}, None, seen, queue=False, **private)  # draw that run afresh
    use.click(room.use_checkpoint, [run_pick, use_step], used, **private)
    export.click(room.export_adapter, [run_pick, use_step], [adapter_file, used], **private)
    import_button.click(room.import_adapter, adapter_upload, used, **private)
    compare.click(
        room.compare,
        [run_pick, step_a, step_b, ab_prompt, ab_seconds, ab_seed],
        [take_a, take_b, ab_note],
        concurrency_id="model",
        **private,
    )
    return room
