"""The one training loop for every recipe: AdamW, warmup + cosine lr, EMA, clipping, checkpoints, control.

A run folder holds `config.json`, `metrics.jsonl` (one JSON record per logged step), `status.json`
(state running/paused/stopped/done/failed, step, eta), `control.json` (`{"command": "pause" |
"resume" | "stop"}`, written by the studio or CLI and polled every step), `checkpoints/step_XXXXXXXX/`
(see training/checkpoint.py) and `previews/step_XXXXXXXX/`.

Randomness is a pure function of the step: the examples of step s are `batch_indices(seed, s, rank,
world_size, ...)` and the torch/numpy/random generators are reseeded with `step_seed(seed, s, rank)`
before every `loss()`, so a resumed run sees exactly the same data and noise. A recipe that draws each
example's noise from `sample_seed(seed, s, index)` (as `toy` does) sees the same in any process layout.

Under torchrun (RANK and WORLD_SIZE in the environment) several processes train one run together (see
training/distributed.py): `batch_size` is the global batch, split evenly over the processes; every
process follows rank 0's settings, checkpoint and control-file commands; gradients are averaged over the
processes after backward, so clipping, the optimizer(s) and the EMA see the same numbers everywhere and
the weights stay equal; the loss and metrics logged are the means over the processes; and only rank 0
touches the run folder (config, checkpoints, metrics, status, control, previews).

Adversarial recipes split their modules into optimizer groups (`recipe.optimizer_groups()`), each with
its own AdamW on the same lr schedule (times `recipe.lr_scale(group)` when the recipe has one). Step s
trains only the group `recipe.group_for_step(s)`: the other groups' parameters are frozen for that
step's loss and backward, and their optimizers and EMA weights are left alone. A recipe's own
JSON-able state (`recipe.state_dict()` / `load_state_dict`) is saved in every checkpoint and restored
on resume and export.

    python -m training.trainer --recipe toy --data DIR --out RUN [--steps N] [--config FILE]
        [--init BUNDLE] [--resume] [--set lr=1e-3 --set recipe.dim=16]
"""

from __future__ import annotations

import argparse
import copy
import errno
import hashlib
import inspect
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.atomic_files import write_atomic
from pipelines.bundle import Bundle, load_bundle
from pipelines.errors import BadInput
from pipelines.inference import native_bf16
from training.checkpoint import (
    FILES,
    latest_good_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    set_aside_newer,
    split_modules,
)
from training.distributed import Layout, ProcessGroup, training_device
from training.jsonl import read_jsonl
from training.recipes import Recipe, recipe_factory

__all__ = [
    "TrainConfig",
    "Recipe",
    "train",
    "export_run",
    "load_run_for_export",
    "RunSnapshot",
    "lr_at",
    "step_seed",
    "sample_seed",
    "batch_indices",
]

# written into a run's config.json beside the settings
RUN_RECORD_KEYS = ("recipe_name", "data_dir", "precision")
DEVICES = ("cpu", "cuda", "mps")


# ---------------------------------------------------------------- config


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # the global batch: split evenly over the processes of a distributed run
    lr: float = 3e-4
    weight_decay: float = 0.01  # on matrices only; biases and norms get none
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "cosine" (down to min_lr_ratio * lr at the last step) or "constant"
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping; the norm is logged either way
    ckpt_every: int = 500
    log_every: int = 10
    preview_every: int = 0  # 0: never
    seed: int = 0
    keep_checkpoints: int = 3
    threads: int | None = None  # torch.set_num_threads when set
    # bf16 autocast where the device multiplies bf16 natively (pipelines.inference.native_bf16: AMX or
    # AVX512-BF16, a bf16 CUDA GPU); elsewhere the run computes in float32, says so, and records it
    autocast_bf16: bool = False
    device: str = "cpu"  # "cpu", "cuda" (a process's LOCAL_RANK-th GPU) or "mps", where the recipe can
    recipe: dict = field(default_factory=dict)  # handed to the recipe's factory

    @classmethod
    def from_dict(cls, data: dict, source: str = "the training config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(RUN_RECORD_KEYS))
        if unknown:
            raise BadInput(
                f"Unknown setting '{unknown[0]}' in {source}; known settings: {', '.join(sorted(known))}."
            )
        types = {f.name: f.type for f in fields(cls)}
        config = cls(**{k: _coerce(k, v, types[k], source) for k, v in data.items() if k in known})
        checks = [
            (config.steps >= 0, "steps must be 0 or more"),
            (config.batch_size >= 1, "batch_size must be at least 1"),
            (config.lr > 0, "lr must be positive"),
            (all(0.0 <= b < 1.0 for b in config.betas), "betas must be two numbers in [0, 1)"),
            (config.warmup_steps >= 0, "warmup_steps must be 0 or more"),
            (config.lr_schedule in ("cosine", "constant"), "lr_schedule must be 'cosine' or 'constant'"),
            (0.0 <= config.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
            (config.ckpt_every >= 1, "ckpt_every must be at least 1"),
            (config.log_every >= 1, "log_every must be at least 1"),
            (config.preview_every >= 0, "preview_every must be 0 or more"),
            (config.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (config.threads is None or config.threads >= 1, "threads must be at least 1"),
            (config.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(f"In {source}, {message}.")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(name: str, value, kind: str, source: str):
    """`value` as the type TrainConfig declares for `name` (numeric text counts); BadInput if it is not one."""
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if value is None and optional:
        return None
    if kind == "int":
        number = _number(value)
        if number is not None and number == int(number):
            return int(number)
        wanted = "a whole number"
    elif kind == "float":
        number = _number(value)
        if number is not None:
            return float(number)
        wanted = "a number"
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        wanted = "true or false"
    elif kind == "str":
        if isinstance(value, str):
            return value
        wanted = "text"
    elif kind == "dict":
        if isinstance(value, dict):
            return value
        wanted = "a JSON object"
    else:
        assert kind == "tuple[float, float]", f"TrainConfig.{name} has a type _coerce does not know: {kind}"
        pair = [_number(v) for v in value] if isinstance(value, (list, tuple)) else []
        if len(pair) == 2 and None not in pair:
            return (float(pair[0]), float(pair[1]))
        wanted = "a list of two numbers like [0.9, 0.99]"
    shown = json.dumps(value) if not isinstance(value, str) else f"'{value}'"
    raise BadInput(f"In {source}, {name} must be {wanted}, not {shown}.")


def _number(value) -> float | None:
    """A finite int or float from a number or numeric text; None for anything else (bools included)."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def read_json_file(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"The {what} {path} does not exist; check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"The {what} {path} is not valid JSON; fix it or write it again.") from None
    if not isinstance(data, dict):
        raise BadInput(f"The {what} {path} must hold a JSON object of settings.")
    return data


def parse_overrides(pairs: list[str]) -> dict:
    """`["lr=1e-3", "recipe.codec.dim=16"]` -> `{"lr": 0.001, "recipe": {"codec": {"dim": 16}}}`.

    Values are parsed as JSON when they can be and kept as text otherwise; later pairs win, and
    tables (dicts) are merged key by key.
    """
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise BadInput(f"The override '{pair}' is not KEY=VALUE; write it like lr=1e-3 or recipe.dim=16.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for name in reversed(path):
            value = {name: value}
        out = _merge(out, value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, recursing where both hold a table, so a nested setting keeps its siblings."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


# ---------------------------------------------------------------- schedules and randomness


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of (0-based) `step`: linear warmup, then cosine to min_lr_ratio * lr, or constant."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(config.steps - config.warmup_steps - 1, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    low = config.lr * config.min_lr_ratio
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and tags; stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global generators for one process at one step."""
    return _mix("step", seed, step, rank)


def sample_seed(seed: int, step: int, index: int) -> int:
    """A seed for one example at one step, equal in every process layout (for per-sample noise)."""
    return _mix("sample", seed, step, index)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(_mix("epoch", seed, epoch))
    return tuple(torch.randperm(size, generator=g).tolist())


def batch_indices(seed: int, step: int, rank: int, world_size: int, batch_size: int, size: int) -> list[int]:
    """Example indices of one process at one step: every example once per epoch, in a seeded order."""
    first = (step * world_size + rank) * batch_size
    return [_epoch_order(seed, p // size, size)[p % size] for p in range(first, first + batch_size)]


# ---------------------------------------------------------------- optimizer and EMA


def make_optimizer(modules: dict[str, torch.nn.Module], config: TrainConfig) -> torch.optim.AdamW:
    seen: set[int] = set()
    decay, no_decay = [], []
    for module in modules.values():
        # a module may name parameters that are not weights (e.g. the DiT's fitted control lines)
        exempt = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if p.dim() >= 2 and name not in exempt else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    assert groups, "the recipe has no trainable parameters"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def optimizer_groups(recipe: Recipe, modules: dict[str, torch.nn.Module]) -> dict[str, list[str]] | None:
    """The recipe's optimizer groups (group -> module names), or None when it trains everything as one."""
    if not hasattr(recipe, "optimizer_groups"):
        return None
    groups = {name: list(names) for name, names in recipe.optimizer_groups().items()}
    named = sorted(n for names in groups.values() for n in names)
    assert groups and named == sorted(modules), f"optimizer groups {groups} must name each module once"
    assert hasattr(recipe, "group_for_step"), "a recipe with optimizer groups says which one each step trains"
    return groups


def make_optimizers(
    recipe: Recipe, modules: dict[str, torch.nn.Module], config: TrainConfig
) -> tuple[torch.optim.AdamW | dict[str, torch.optim.AdamW], dict[str, list[str]] | None]:
    """One AdamW over every module, or one per optimizer group (a dict by group name); and the groups."""
    groups = optimizer_groups(recipe, modules)
    if groups is None:
        return make_optimizer(modules, config), None
    optimizers = {g: make_optimizer({n: modules[n] for n in names}, config) for g, names in groups.items()}
    return optimizers, groups


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up over the first steps, so early EMA weights are not stuck at the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: dict[str, torch.nn.Module], modules: dict[str, torch.nn.Module], decay: float) -> None:
    for name, module in modules.items():
        for pe, p in zip(ema[name].parameters(), module.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(ema[name].buffers(), module.buffers(), strict=True):
            be.copy_(b)


def ema_copies(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    return {name: copy.deepcopy(m).requires_grad_(False).eval() for name, m in modules.items()}


# ---------------------------------------------------------------- run folder I/O


class RunFolder:
    """The run folder's files; every write is skipped unless `writer` (rank 0)."""

    def __init__(self, path: Path, writer: bool):
        self.path, self.writer = path, writer
        self.checkpoints = path / "checkpoints"
        self.metrics_path = path / "metrics.jsonl"
        self.control_path = path / "control.json"
        self._control_key: tuple | None = None
        self._command: str | None = None
        self._metrics = None
        # the folder is made by the first write (config.json, once the recipe has read its data), so a
        # run refused for bad data or settings leaves no empty run folder behind

    def write_json(self, name: str, data: dict) -> None:
        if self.writer:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BadInput(
                    f"Cannot create the run folder {self.path} ({e.strerror or e}); choose another --out."
                ) from None
            write_atomic(self.path / name, json.dumps(data, indent=1) + "\n")

    def clear_control(self) -> None:
        """Forget commands meant for an earlier process (a stale "stop" would end this run at once)."""
        if self.writer:
            self.control_path.unlink(missing_ok=True)

    def command(self) -> str | None:
        """The control file's command; re-read only when the file changed."""
        try:
            st = self.control_path.stat()
        except FileNotFoundError:
            self._control_key, self._command = None, None
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._control_key:
            try:
                command = json.loads(self.control_path.read_text()).get("command")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
                return self._command  # caught mid-write; keep the previous command and look again next step
            self._control_key = key
            self._command = command if command in ("pause", "resume", "stop") else None
        return self._command

    def keep_metrics_until(self, step: int) -> None:
        """Drop records past `step` (and a line cut short by a kill) before a resumed run logs them again."""
        if not self.writer or not self.metrics_path.exists():
            return
        records = read_jsonl(self.metrics_path, tolerate_torn_tail=True)
        kept = [r for r in records if r.get("step", 0) <= step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        if not self.writer:
            return
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a")  # noqa: SIM115 - held open for the whole run
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        if self._metrics is not None:
            try:
                self._metrics.close()
            except OSError:
                pass  # a full disk: a torn last line is dropped when the run resumes (keep_metrics_until)
            self._metrics = None


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop and save; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the loop


def resolve_config(
    run_dir: Path, config_path: Path | None, resume: bool, overrides: dict | None, steps: int | None
) -> TrainConfig:
    """Defaults < the run's config.json (when resuming) < --config FILE < overrides < steps."""
    data: dict = {}
    sources = []  # named in error messages, since a bad value may come from any of them
    if resume and (run_dir / "config.json").is_file():
        data = read_json_file(run_dir / "config.json", "run config")
        sources.append(str(run_dir / "config.json"))
    if config_path is not None:
        data = _merge(data, read_json_file(config_path, "training config"))
        sources.append(str(config_path))
    if overrides:
        data = _merge(data, overrides)
        sources.append("--set")
    if steps is not None:
        data["steps"] = steps
    return TrainConfig.from_dict(
        data, f"the training config ({', '.join(sources)})" if sources else "the training config"
    )


def build_recipe(recipe_name: str, config: TrainConfig, data_dir: Path) -> Recipe:
    make = recipe_factory(recipe_name)
    seed_everything(_mix("init", config.seed))  # module initialisation is a function of the seed
    return make({"seed": config.seed, **config.recipe}, Path(data_dir))


def init_from_bundle(bundle_path: Path, recipe: Recipe, modules: dict[str, torch.nn.Module]) -> None:
    """Load a bundle's tensors into the recipe's modules: by module name, or the recipe's own mapping."""
    bundle: Bundle = load_bundle(bundle_path)
    if hasattr(recipe, "init_from_bundle"):
        recipe.init_from_bundle(bundle, modules)
        return
    names = [name for name in modules if name in bundle.meta["files"]]
    if not names:
        raise BadInput(
            f"The bundle {bundle_path} holds none of this recipe's modules ({', '.join(modules)}); "
            "pass a bundle exported by the same recipe."
        )
    for name in names:
        bundle.load_into(name, modules[name])


def train(
    recipe_name: str,
    data_dir: Path | str,
    run_dir: Path | str,
    *,
    steps: int | None = None,
    config_path: Path | str | None = None,
    init_bundle: Path | str | None = None,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    on_metrics: Callable[[dict], None] | None = None,
) -> Path:
    """Train `recipe_name` into `run_dir` and return the final checkpoint folder.

    Ends with status "done" after `steps`, or "stopped" (after saving) on a control-file stop or
    SIGTERM/SIGINT. `on_metrics` receives every metrics record in-process (rank 0). A full disk ends
    it as "failed" with BadInput saying so; the last checkpoint stays whole. Started by torchrun, this
    process trains the run together with the others (see the module docstring).
    """
    processes = ProcessGroup(Layout.from_env())
    try:
        last = _train(
            processes,
            recipe_name,
            Path(data_dir),
            Path(run_dir),
            steps=steps,
            config_path=Path(config_path) if config_path else None,
            init_bundle=Path(init_bundle) if init_bundle else None,
            resume=resume,
            overrides=overrides,
            progress=progress,
            on_metrics=on_metrics,
        )
        processes.settle()  # not after a failure: a process that died would leave the others waiting
        return last
    finally:
        processes.close()


def share_checkpoint(processes: ProcessGroup, found: tuple | None) -> tuple | None:
    """Rank 0's checkpoint (path, state, tensors by file) in every process, so only rank 0 reads the run
    folder (which the machines of a multi-node run need not share); the others pass None."""
    if not processes.distributed:
        return found
    head = processes.broadcast_json(None if found is None else [str(found[0]), found[1]])
    if head is None:
        return None
    tensors = {name: processes.broadcast_named(None if found is None else found[2][name]) for name in FILES}
    return Path(head[0]), head[1], tensors


def mean_by_name(records: list[dict[str, float]]) -> dict[str, float]:
    """Each name's mean over the records that hold it (the processes' metrics of one step)."""
    names = list(dict.fromkeys(name for r in records for name in r))
    return {n: sum(r[n] for r in records if n in r) / sum(n in r for r in records) for n in names}


def _train(
    processes: ProcessGroup,
    recipe_name: str,
    data_dir: Path,
    run_dir: Path,
    *,
    steps: int | None,
    config_path: Path | None,
    init_bundle: Path | None,
    resume: bool,
    overrides: dict | None,
    progress: bool,
    on_metrics: Callable[[dict], None] | None,
) -> Path:
    rank, world_size = processes.layout.rank, processes.layout.world_size
    recipe_factory(recipe_name)  # an unknown name fails before anything is written
    config = resolve_config(run_dir, config_path, resume, overrides, steps)
    run = RunFolder(run_dir, writer=rank == 0)
    if resume and (run_dir / "config.json").is_file():
        saved = read_json_file(run_dir / "config.json", "run config").get("recipe_name", recipe_name)
        if saved != recipe_name:
            raise BadInput(
                f"The run {run_dir} was trained with the {saved} recipe; resume it with --recipe {saved}."
            )
    if not resume and list_checkpoints(run.checkpoints):
        raise BadInput(
            f"The run folder {run_dir} already holds checkpoints; pass --resume to continue it or choose a new folder."
        )
    processes.open()  # meets the other processes (nothing with one)
    # rank 0's settings everywhere: with --resume they come from its run folder, which others may not see
    config = TrainConfig.from_dict(processes.broadcast_json(config.to_dict()), "the training config")
    if config.batch_size % world_size:
        raise BadInput(
            f"batch_size {config.batch_size} does not split evenly over {world_size} processes; "
            f"make it a multiple of {world_size}."
        )
    device = training_device(config.device, processes.layout)
    if config.threads:
        torch.set_num_threads(config.threads)
    bf16 = config.autocast_bf16 and native_bf16(device.type)
    if config.autocast_bf16 and not bf16 and progress and run.writer:
        print(
            f"{recipe_name}: this {device.type} has no native bf16 matmul (AMX or AVX512-BF16), where bf16 "
            f"runs several times slower than float32, so autocast_bf16 is off for this run (float32).",
            file=sys.stderr,
        )

    recipe = build_recipe(recipe_name, config, data_dir)
    if device.type not in getattr(recipe, "devices", ("cpu",)):
        raise BadInput(f"The {recipe_name} recipe trains on the CPU only; set device to cpu.")
    modules = recipe.modules()
    size = recipe.dataset_size()
    if size < 1:
        raise BadInput(
            f"The {recipe_name} recipe found no training examples in {data_dir}; check the data folder."
        )
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]

    start, elapsed_before, last_saved = 0, 0.0, None
    found = latest_good_checkpoint(run.checkpoints) if resume and run.writer else None
    if resume and found is None and run.writer:
        if list_checkpoints(run.checkpoints):
            warnings.warn(
                f"No checkpoint in {run.checkpoints} could be read, so training starts from step 0.",
                stacklevel=2,
            )
        set_aside_newer(run.checkpoints, -1)
    found = share_checkpoint(processes, found)
    if found is None and init_bundle is not None:
        init_from_bundle(init_bundle, recipe, modules)
    elif found is None and getattr(recipe, "init_required", None):
        raise BadInput(recipe.init_required)  # before the run folder is written
    for module in modules.values():  # in place: the parameters stay the same objects
        module.to(device)
    # rank 0's weights everywhere (the seed makes them equal already; this keeps them so whatever happens)
    processes.broadcast_tensors_(
        [t.detach() for m in modules.values() for t in (*m.parameters(), *m.buffers())]
    )
    ema = ema_copies(modules)
    optimizer, groups = make_optimizers(recipe, modules, config)
    if found is not None:
        path, meta, tensors = found
        try:
            restore_checkpoint(meta, tensors, modules, ema, optimizer)
            if "recipe_state" in meta and hasattr(recipe, "load_state_dict"):
                recipe.load_state_dict(meta["recipe_state"])
        except (ValueError, RuntimeError) as e:
            raise BadInput(
                f"The checkpoint {path} does not fit the {recipe_name} recipe as configured now ({str(e).splitlines()[0]}); "
                "resume with the run's own config or start a new run."
            ) from None
        start, elapsed_before, last_saved = meta["step"], float(meta.get("elapsed_s", 0.0)), path
        if run.writer:
            set_aside_newer(run.checkpoints, start)
    run.keep_metrics_until(start)
    run.clear_control()
    run.write_json(
        "config.json",
        {
            "recipe_name": recipe_name,
            "data_dir": str(data_dir.resolve()),
            "precision": "bf16 autocast" if bf16 else "float32",
            **config.to_dict(),
        },
    )

    t0, paused_s, last_status = time.monotonic(), 0.0, 0.0
    step, loss_value = start, float("nan")

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t0 - paused_s

    def eta() -> float | None:
        done_here = step - start
        if done_here == 0:
            return None
        return (config.steps - step) * (time.monotonic() - t0 - paused_s) / done_here

    def status(state: str, message: str = "") -> None:
        nonlocal last_status
        last_status = time.monotonic()
        run.write_json(
            "status.json",
            {
                "state": state,
                "step": step,
                "steps": config.steps,
                "eta_s": eta(),
                "elapsed_s": round(elapsed(), 3),
                "loss": loss_value if math.isfinite(loss_value) else None,
                "checkpoint": str(last_saved) if last_saved else None,
                "recipe": recipe_name,
                "pid": os.getpid(),
                "time": time.time(),
                "message": message,
            },
        )

    def save() -> Path:
        nonlocal last_saved
        path = run.checkpoints / f"step_{step:08d}"
        if last_saved is not None and last_saved.name == path.name:
            return last_saved
        if run.writer:
            extra = {
                "recipe_name": recipe_name,
                "config": config.to_dict(),
                "elapsed_s": elapsed(),
                # every step reseeds torch/numpy/random from step_seed(seed, step, rank): no generator state to keep
                "rng": {
                    "seed": config.seed,
                    "rank": rank,
                    "next_step_seed": step_seed(config.seed, step, rank),
                },
            }
            if hasattr(recipe, "state_dict"):
                extra["recipe_state"] = recipe.state_dict()
            path = save_checkpoint(run.checkpoints, step, modules, ema, optimizer, extra)
            prune_checkpoints(run.checkpoints, config.keep_checkpoints)
        last_saved = path
        return path

    def agreed_command(signals: StopSignals) -> str | None:
        """The control file's command as rank 0 reads it, or "stop" once any process got SIGTERM/SIGINT:
        the same answer in every process, so they pause, resume and stop together."""
        order = [None, "pause", "stop"]
        mine = "stop" if signals.requested else (run.command() if run.writer else None)
        return order[processes.max_ints([order.index(mine if mine in order else None)])[0]]

    def agree_on_recipe_state() -> None:
        """The recipe's own state made rank 0's wherever it differs (each process updates it from its own
        share of the batch), so what is saved is what every process trains with."""
        if not processes.distributed or not hasattr(recipe, "state_dict"):
            return
        mine = recipe.state_dict()
        digest = _mix("recipe state", json.dumps(mine, sort_keys=True))
        highest, negated_lowest = processes.max_ints([digest, -digest])
        if highest != -negated_lowest:
            ours = processes.broadcast_json(mine)
            if rank != 0:
                recipe.load_state_dict(ours)

    def wait_while_paused(signals: StopSignals) -> str:
        """Sleep until the control file says resume or stop (or a signal arrives); returns which."""
        nonlocal paused_s
        save()  # a paused run can be closed without losing work
        status("paused")
        began = time.monotonic()
        bar.set_description("paused")
        try:
            while True:
                time.sleep(0.05)
                command = agreed_command(signals)
                if command == "stop":
                    return "stop"
                if command != "pause":
                    return "resume"
        finally:
            paused_s += time.monotonic() - began
            bar.set_description(recipe_name)

    show_bar = progress and run.writer and sys.stderr.isatty()
    bar = tqdm(total=config.steps, initial=start, desc=recipe_name, disable=not show_bar, file=sys.stderr)
    state = "running"
    status(state)
    last_line = time.monotonic()
    try:
        with StopSignals() as signals:
            while step < config.steps:
                command = agreed_command(signals)
                if command == "pause":
                    command = wait_while_paused(signals)
                    status("running")
                if command == "stop":
                    state = "stopped"
                    break
                agree_on_recipe_state()

                lr = lr_at(step, config)
                # with optimizer groups only this step's group trains: the others are frozen for its
                # loss and backward, and their optimizers (Adam moments) and EMA weights wait
                active, frozen = None, []
                step_optimizer, step_modules, step_params = optimizer, modules, params
                if groups is not None:
                    active = recipe.group_for_step(step)
                    assert active in groups, (
                        f"group_for_step({step}) gave {active!r}, not one of {list(groups)}"
                    )
                    step_optimizer = optimizer[active]
                    step_modules = {n: modules[n] for n in groups[active]}
                    step_params = [
                        p for m in step_modules.values() for p in m.parameters() if p.requires_grad
                    ]
                    idle = [n for n in modules if n not in step_modules]
                    frozen = [p for n in idle for p in modules[n].parameters() if p.requires_grad]
                    if hasattr(recipe, "lr_scale"):
                        lr = lr * recipe.lr_scale(active)
                for group in step_optimizer.param_groups:
                    group["lr"] = lr
                share = config.batch_size // world_size
                indices = batch_indices(config.seed, step, rank, world_size, share, size)
                seed_everything(step_seed(config.seed, step, rank))
                for m in modules.values():
                    m.train()
                for p in frozen:
                    p.requires_grad_(False)
                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss, info = recipe.loss(step, indices, modules)
                    loss_value = processes.mean(float(loss.detach().float()))  # every process judges the same
                    if not math.isfinite(loss_value):
                        # randomness is a pure function of the step, so resuming as is would replay this step
                        raise BadInput(
                            f"The loss became {loss_value} at step {step}; "
                            "lower the learning rate (--set lr=...) and --resume."
                        )
                    loss.backward()
                finally:
                    for p in frozen:
                        p.requires_grad_(True)
                processes.average_gradients(step_params)
                clip = config.grad_clip if config.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(step_params, clip))
                step_optimizer.step()
                for opt in optimizer.values() if groups is not None else [optimizer]:
                    opt.zero_grad(set_to_none=True)
                update_ema(ema, step_modules, ema_decay_at(step, config.ema_decay))
                step += 1
                bar.update(1)

                if step % config.log_every == 0 or step == config.steps:
                    measured = {
                        k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in info.items()
                    }
                    record = {
                        "step": step,
                        "time": time.time(),
                        "elapsed_s": round(elapsed(), 4),
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        **mean_by_name(processes.gather_json(measured)),  # each process measured its share
                    }
                    run.log(record)
                    bar.set_postfix(loss=f"{loss_value:.4g}")
                    if progress and run.writer and not show_bar and time.monotonic() - last_line > 30.0:
                        # logs and worker processes get a plain line with the ETA every 30 s
                        last_line = time.monotonic()
                        print(
                            f"{recipe_name}: {progress_line(step, config.steps, eta())}, loss {loss_value:.4g}",
                            file=sys.stderr,
                            flush=True,
                        )
                    if on_metrics is not None and run.writer:
                        on_metrics(record)
                if step % config.ckpt_every == 0 and step < config.steps:
                    save()
                    status(state)
                if (
                    config.preview_every
                    and step % config.preview_every == 0
                    and run.writer
                    and hasattr(recipe, "preview")
                ):
                    out = run.path / "previews" / f"step_{step:08d}"
                    out.mkdir(parents=True, exist_ok=True)
                    seed_everything(_mix("preview", config.seed, step))
                    with torch.no_grad():
                        recipe.preview(step, ema, out)
                if time.monotonic() - last_status > 1.0:
                    status(state)
            final = save()
            if state != "stopped":
                state = "done"
            status(state)
    except BaseException as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        if full:  # checkpoints are written aside and renamed, so the last one is whole
            kept = (
                f"the last checkpoint, {last_saved.name}, is intact"
                if last_saved
                else "no checkpoint was written"
            )
            message = (
                f"The disk holding {run.path} is full, so training stopped at step {step} and {kept}; "
                "free some space and run again with --resume."
            )
        try:
            status("failed", message)
        except OSError:
            pass  # a full disk may refuse status.json as well; the message still reaches the caller
        if full:
            raise BadInput(message) from None
        raise
    finally:
        bar.close()
        run.close()
    if progress and run.writer:
        print(
            f"{recipe_name}: {state} at step {step}/{config.steps}, loss {loss_value:.4g}, "
            f"{elapsed():.1f} s; checkpoint {final}",
            file=sys.stderr,
        )
    return final


def progress_line(step: int, steps: int, eta_s: float | None) -> str:
    """'step 120/4000 (3%), ETA 1h17m' for logs, where no progress bar is drawn."""
    eta = "unknown" if eta_s is None else f"{int(eta_s) // 3600}h{int(eta_s) % 3600 // 60:02d}m"
    return f"step {step}/{steps} ({100 * step // max(steps, 1)}%), ETA {eta}"


# ---------------------------------------------------------------- export


def training_card(run_dir: Path) -> dict:
    """What a bundle's card says about its training: recipe, settings, steps, wall time, last metrics."""
    record = read_json_file(run_dir / "config.json", "run config")
    status = {}
    if (run_dir / "status.json").is_file():
        status = read_json_file(run_dir / "status.json", "run status")
    last = None
    if (run_dir / "metrics.jsonl").is_file():
        records = read_jsonl(run_dir / "metrics.jsonl", tolerate_torn_tail=True)
        last = records[-1] if records else None
    return {
        "recipe": record.get("recipe_name"),
        "data_dir": _shareable_data_dir(record.get("data_dir"), run_dir),
        "config": {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS},
        "steps": status.get("step"),
        "wall_time_s": status.get("elapsed_s"),
        "final_metrics": last,
    }


def _shareable_data_dir(data_dir: str | None, run_dir: Path) -> str | None:
    """The data folder relative to the run folder's parent when it lies below it, else its name alone.

    A card ships inside bundles, so it must not carry this machine's absolute paths.
    """
    if not data_dir:
        return None
    relative = Path(os.path.relpath(data_dir, run_dir.resolve().parent))
    if relative.parts and relative.parts[0] != "..":
        return relative.as_posix()
    return Path(data_dir).name


@dataclass
class RunSnapshot:
    """A run's newest good checkpoint, read for export: settings, weights and how far it got."""

    path: Path  # the checkpoint folder
    recipe_name: str
    data_dir: Path  # where the run read its data
    config: dict  # TrainConfig as a dict; config["recipe"] is the recipe's table
    step: int
    wall_time_s: float
    modules: dict[str, dict[str, torch.Tensor]]  # live weights, by module name
    ema: dict[str, dict[str, torch.Tensor]]  # EMA weights, by module name: what a bundle ships
    recipe_state: dict | None = None  # the recipe's own state (recipe.state_dict()), when it keeps one


def load_run_for_export(run_dir: Path | str, step: int | None = None) -> RunSnapshot:
    """Read the newest checkpoint of a run that verifies (warning about damaged newer ones), or the
    checkpoint of `step`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise BadInput(
            f"{run_dir} is not a training run folder (config.json is missing); pass the --out of a train run."
        )
    record = read_json_file(run_dir / "config.json", "run config")
    if step is None:
        found = latest_good_checkpoint(run_dir / "checkpoints")
    else:
        path = dict(list_checkpoints(run_dir / "checkpoints")).get(step)
        if path is None:
            raise BadInput(f"The run {run_dir} has no checkpoint of step {step}; pick one it kept.")
        try:
            found = (path, *read_checkpoint(path))
        except ValueError as e:
            raise BadInput(f"The checkpoint {path} is damaged ({e}); pick another step.") from None
    if found is None:
        raise BadInput(
            f"The run {run_dir} has no readable checkpoint to export; train it for some steps first."
        )
    path, meta, tensors = found
    names = meta["module_names"]
    return RunSnapshot(
        path=path,
        recipe_name=meta.get("recipe_name", record.get("recipe_name", "")),
        data_dir=Path(record.get("data_dir", ".")),
        config=meta["config"],
        step=meta["step"],
        wall_time_s=float(meta.get("elapsed_s", 0.0)),
        modules=split_modules(tensors["modules"], names),
        ema=split_modules(tensors["ema"], names),
        recipe_state=meta.get("recipe_state"),
    )


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    data_dir: Path | str | None = None,
    step: int | None = None,
    keep_change: float | None = None,
) -> Path:
    """Write a bundle from the EMA weights of a run's newest good checkpoint (or that of `step`) through
    its recipe's export(); `keep_change` replaces the run's recipe.keep_change (training/static_recipe.py)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = load_run_for_export(run_dir, step)
    settings = run.config
    if keep_change is not None:
        settings = {**settings, "recipe": {**(settings.get("recipe") or {}), "keep_change": keep_change}}
    config = TrainConfig.from_dict(settings, str(run.path / "state.json"))
    try:
        recipe = build_recipe(run.recipe_name, config, Path(data_dir) if data_dir else run.data_dir)
    except BadInput as e:
        if keep_change is not None and "'keep_change'" in str(e):
            raise BadInput(
                f"--keep-change is for full fine-tunes of the flow recipes (static, stage-adaptive), not for runs "
                f"of --recipe {run.recipe_name}."
            ) from None
        raise
    if not hasattr(recipe, "export"):
        raise BadInput(f"The {run.recipe_name} recipe cannot export a bundle.")
    ema = ema_copies(recipe.modules())
    for name, state in run.ema.items():
        ema[name].load_state_dict(state, strict=True)
    if run.recipe_state is not None and hasattr(recipe, "load_state_dict"):
        recipe.load_state_dict(run.recipe_state)
    card = {**training_card(run_dir), "steps": run.step, "wall_time_s": round(run.wall_time_s, 1)}
    if "card" in inspect.signature(recipe.export).parameters:
        recipe.export(ema, out_dir, card=card)
    else:
        recipe.export(ema, out_dir)
    return out_dir


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.trainer", description="Train a recipe into a run folder."
    )
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--init", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", choices=DEVICES)
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    try:
        train(
            args.recipe,
            args.data,
            args.out,
            steps=args.steps,
            config_path=args.config,
            init_bundle=args.init,
            resume=args.resume,
            overrides=_merge(parse_overrides(args.set), {"device": args.device} if args.device else {}),
        )
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
