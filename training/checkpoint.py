"""Training checkpoints: atomic folders of safetensors with sha256 checksums, never pickles.

A checkpoint is `checkpoints/step_XXXXXXXX/` holding `modules.safetensors`, `ema.safetensors`,
`optimizer.safetensors` and `state.json` (step, rng, config, extra, the sha256 of each file, and
`state_sha256`, the sha256 of state.json's own text without that last key). It is written into a
hidden temp folder and renamed into place, so a reader sees a whole checkpoint or none; old ones are
renamed aside before they are deleted, so a kill never leaves half a checkpoint under a step name.
The optimizer's state dict is flattened: its tensors go to safetensors as `<param index>.<key>`,
everything else (param groups, non-tensor state) to JSON in state.json.
A recipe with optimizer groups (one AdamW per group, see training/trainer.py) has its optimizers
saved side by side: tensors as `<group>/<param index>.<key>`, the JSON under `{"groups": {group: ...}}`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from pipelines.atomic_files import replace_folder
from pipelines.bundle import sha256_bytes

STEP_DIR = re.compile(r"^step_(\d{8,})$")
FILES = ("modules", "ema", "optimizer")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def flatten_modules(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """One flat `<module>.<key>` tensor dict from several modules' state dicts."""
    return {f"{name}.{key}": t for name, m in modules.items() for key, t in m.state_dict().items()}


def split_modules(flat: dict[str, torch.Tensor], names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, t in flat.items():
        name, _, rest = key.partition(".")
        assert name in out, f"checkpoint tensor {key} belongs to no module"
        out[name][rest] = t
    return out


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = t
    for index, entry in rest["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


Optimizers = torch.optim.Optimizer | dict[str, torch.optim.Optimizer]


def flatten_optimizers(optimizer: Optimizers) -> tuple[dict[str, torch.Tensor], dict]:
    """One optimizer as flatten_optimizer does; a dict of them with each group's tensors under `<group>/`."""
    if not isinstance(optimizer, dict):
        return flatten_optimizer(optimizer.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    rests: dict[str, dict] = {}
    for name, opt in optimizer.items():
        assert "/" not in name and "." not in name, f"bad optimizer group name {name!r}"
        group_tensors, rests[name] = flatten_optimizer(opt.state_dict())
        tensors.update({f"{name}/{key}": t for key, t in group_tensors.items()})
    return tensors, {"groups": rests}


def restore_optimizers(optimizer: Optimizers, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Load what flatten_optimizers wrote; ValueError when the checkpoint holds other optimizers."""
    saved = rest.get("groups")
    if not isinstance(optimizer, dict):
        if saved is not None:
            raise ValueError(f"it holds optimizer groups {sorted(saved)} but the recipe has one optimizer")
        optimizer.load_state_dict(unflatten_optimizer(tensors, rest))
        return
    if saved is None or sorted(saved) != sorted(optimizer):
        held = "one optimizer" if saved is None else f"optimizer groups {sorted(saved)}"
        raise ValueError(f"it holds {held} but the recipe has optimizer groups {sorted(optimizer)}")
    for name, opt in optimizer.items():
        prefix = f"{name}/"
        mine = {key[len(prefix) :]: t for key, t in tensors.items() if key.startswith(prefix)}
        opt.load_state_dict(unflatten_optimizer(mine, saved[name]))


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return save_safetensors_bytes({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()})


def save_checkpoint(
    root: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    ema: dict[str, torch.nn.Module],
    optimizer: Optimizers,
    state: dict,
) -> Path:
    """Write `root/step_XXXXXXXX` atomically; `state` (JSON-able: rng, config, ...) goes into state.json.

    `optimizer` is one optimizer or a dict of them by group name (see flatten_optimizers)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        opt_tensors, opt_rest = flatten_optimizers(optimizer)
        payloads = {
            "modules": _tensor_bytes(flatten_modules(modules)),
            "ema": _tensor_bytes(flatten_modules(ema)),
            "optimizer": _tensor_bytes(opt_tensors),
        }
        sha = {}
        for name, data in payloads.items():
            (tmp / f"{name}.safetensors").write_bytes(data)
            sha[name] = sha256_bytes(data)
        meta = {**state, "step": step, "module_names": list(modules), "optimizer": opt_rest, "sha256": sha}
        meta["state_sha256"] = _state_sha256(meta)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
        # the same step may be saved again (e.g. a stop right after a periodic save)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _state_sha256(meta: dict) -> str:
    """The sha256 of state.json's text as json.dumps writes it, less the `state_sha256` key (always last).

    json.loads gives back the same text under json.dumps (key order, floats and all), so a reader
    recomputes it from the parsed file."""
    rest = {k: v for k, v in meta.items() if k != "state_sha256"}
    return sha256_bytes(json.dumps(rest, indent=1).encode())


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders under `root`, oldest first (whether or not they verify)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def read_checkpoint(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """state.json and the verified tensors of each file; ValueError with a reason when anything is off."""
    try:
        meta = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        raise ValueError("state.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("state.json is truncated or not JSON") from None
    if not isinstance(meta, dict):
        raise ValueError("state.json is not a JSON object")
    # checkpoints written before state.json carried its own checksum have no state_sha256
    if "state_sha256" in meta and meta["state_sha256"] != _state_sha256(meta):
        raise ValueError("state.json does not match its checksum")
    meta.pop("state_sha256", None)
    tensors = {}
    for name in FILES:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise ValueError(f"{file.name} is missing")
        data = file.read_bytes()
        sums = meta.get("sha256")
        if not isinstance(sums, dict) or sha256_bytes(data) != sums.get(name):
            raise ValueError(f"{file.name} does not match its checksum")
        try:
            tensors[name] = load_safetensors_bytes(data)
        except SafetensorError:
            raise ValueError(f"{file.name} is not a safetensors file") from None
    return meta, tensors


def latest_good_checkpoint(root: Path) -> tuple[Path, dict, dict[str, dict[str, torch.Tensor]]] | None:
    """The newest checkpoint that verifies, warning in one sentence about each newer one that does not."""
    for step, path in reversed(list_checkpoints(root)):
        try:
            meta, tensors = read_checkpoint(path)
            if meta.get("step") != step:
                raise ValueError(f"state.json holds step {meta.get('step')!r}")
        except ValueError as reason:
            warnings.warn(
                f"Checkpoint {path.name} is damaged ({reason}), so the previous good one is used instead.",
                stacklevel=2,
            )
            continue
        return path, meta, tensors
    return None


def restore_checkpoint(
    meta: dict,
    tensors: dict[str, dict[str, torch.Tensor]],
    modules: dict[str, torch.nn.Module],
    ema: dict[str, torch.nn.Module],
    optimizer: Optimizers,
) -> None:
    """Load a verified checkpoint into live modules, EMA copies and optimizer(s) (strict).

    Raises ValueError or RuntimeError when the checkpoint does not fit the recipe's modules.
    """
    names = meta["module_names"]
    if sorted(names) != sorted(modules):
        raise ValueError(f"it holds modules {names} but the recipe has {list(modules)}")
    for target, flat in ((modules, tensors["modules"]), (ema, tensors["ema"])):
        for name, sd in split_modules(flat, names).items():
            target[name].load_state_dict(sd, strict=True)
    restore_optimizers(optimizer, tensors["optimizer"], meta["optimizer"])


def set_aside_newer(root: Path, step: int) -> None:
    """Rename checkpoints newer than `step` (damaged ones) so the resumed run can write those steps again."""
    for s, path in list_checkpoints(root):
        if s > step:
            target = path.with_name(path.name + ".damaged")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(path, target)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temp folders left by killed runs."""
    for _, path in list_checkpoints(root)[: -max(keep, 1)]:
        # renamed first: a kill in the middle of rmtree leaves a hidden folder, not half a checkpoint
        aside = root / f".pruned-{path.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
    for path in root.glob(".pruned-step_*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-step_*"):
        if not path.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(path, ignore_errors=True)
