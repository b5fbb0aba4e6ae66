"""Model bundles: a folder with `model.json` and one `<name>.safetensors` per tensor group.

`model.json` holds `format_version`, `kind`, `config`, `files` (name -> sha256 of the file),
`components` (name -> {"sha256": bundle hash, "path": where it was}) and a training `card`.
Shared components (codec, text encoder, embedders) are referenced by hash, never copied. Every
checksum is verified on load and nothing is ever unpickled: safetensors and JSON only. A bundle
folder holding a pickle file (.pt, .pth, .pkl, .pickle, .bin, .ckpt), a tensor file name that is a
path or a pickle, or a file that is not safetensors under its checksum is refused.

Weights are stored as fp16, or by `quantize_bundle` (`soundloom bundle quantize`) as int8 with
one float32 scale per output row for every floating tensor of two or more dimensions and at least
INT8_MIN_VALUES values (`<key>` int8 beside `<key>#int8_scale`; '#' never occurs in a state-dict key), the
rest fp16. Loading dequantizes: the model computes in float as before, from half the bytes. A quantized
bundle's card records the bundle hash it was made from (`weights.quantized_from`), so a model that names
the full-precision bundle (an ARC model's `base_model`) still finds it (`same_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from pipelines.atomic_files import replace_folder, write_atomic
from pipelines.errors import BadInput

FORMAT_VERSION = 1
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")  # formats that unpickle on load
INT8_SCALE = "#int8_scale"  # suffix of the per-row scale beside an int8-stored tensor
INT8_MIN_VALUES = 4096  # smaller tensors (biases, norms, small tables) stay fp16


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HASHED_FIELDS = ("format_version", "kind", "config", "files", "components")


def bundle_hash(path: Path | str) -> str:
    """The sha256 of what a bundle computes: its format, kind, config, files' sha256s and components.

    The card (data, recipe, eval figures) is documentation and is left out, so adding eval figures to
    a card after export does not invalidate the bundles that reference this one.
    """
    meta = read_model_json(Path(path))
    canonical = json.dumps({k: meta.get(k) for k in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(canonical.encode())


def same_model(folder: Path, sha: str | None) -> bool:
    """Whether the bundle in `folder` is the bundle hashed `sha`, or an int8 copy of it (`quantize_bundle`)."""
    own = hash_or_none(folder)
    if not sha or own is None:
        return False
    weights = read_model_json(folder).get("card", {}).get("weights") or {}
    return sha in (own, weights.get("quantized_from") if isinstance(weights, dict) else None)


def hash_or_none(folder: Path) -> str | None:
    """bundle_hash of a folder that holds a readable bundle, else None."""
    try:
        return bundle_hash(folder) if (folder / "model.json").is_file() else None
    except BadInput:
        return None


def bundles_in(root: Path) -> list[Path]:
    """The bundle folders directly inside `root` (none when it is not a folder), by name."""
    return sorted(p.parent for p in root.glob("*/model.json")) if root.is_dir() else []


def update_card(path: Path | str, updates: dict) -> None:
    """Merge `updates` into a bundle's card (e.g. eval figures), rewriting model.json atomically."""
    model_json = Path(path) / "model.json"
    meta = json.loads(model_json.read_text())
    meta.setdefault("card", {}).update(updates)
    write_atomic(model_json, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        cast = tensor.to(dtype)
        # A value outside the smaller type's range would turn into inf: keep that tensor as it was.
        if torch.isfinite(cast).all() or not torch.isfinite(tensor).all():
            tensor = cast
    return tensor.contiguous().clone()  # clone: safetensors refuses tensors that share storage


def _int8_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per output row (dim 0): (values, scales)."""
    rows = tensor.detach().cpu().float().reshape(tensor.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    values = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.reshape(tensor.shape).contiguous(), scale.contiguous()


def _stored(group: dict[str, torch.Tensor], dtype: torch.dtype | None, int8: bool) -> dict[str, torch.Tensor]:
    """The tensors as a bundle file holds them: floating ones as `dtype`, or with `int8` the large ones as int8
    beside their row scales (module docstring)."""
    out = {}
    for key, t in group.items():
        assert not int8 or INT8_SCALE not in key, f"bad tensor key {key!r}"  # it would read as a scale
        if (
            int8
            and t.is_floating_point()
            and t.ndim >= 2
            and t.numel() >= INT8_MIN_VALUES
            and t.isfinite().all()
        ):
            out[key], out[key + INT8_SCALE] = _int8_rows(t)
        else:
            out[key] = _cast(t, dtype)
    return out


def _dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float32 tensors from stored ones: int8 values times their row scales, floating ones as float32."""
    out = {}
    for key, t in tensors.items():
        if key.endswith(INT8_SCALE):
            continue
        scale = tensors.get(key + INT8_SCALE)
        if scale is not None and t.dtype == torch.int8 and scale.shape == t.shape[:1]:
            out[key] = t.float() * scale.float().reshape(-1, *([1] * (t.ndim - 1)))
        else:
            out[key] = t.float() if t.is_floating_point() else t
    return out


def save_bundle(
    out_dir: Path | str,
    config: dict,
    tensors: dict[str, dict[str, torch.Tensor]],
    components: dict[str, Path] | None = None,
    dtype: torch.dtype | None = torch.float16,
    *,
    kind: str = "model",
    card: dict | None = None,
) -> Path:
    """Write a bundle atomically (temp folder, then rename); floating tensors are stored as `dtype` (None:
    as they are)."""
    out_dir = Path(out_dir).resolve()
    for name in list(tensors) + list(components or {}):
        assert _NAME.match(name), f"bad bundle entry name {name!r}"
    meta: dict = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "files": {},
        "components": {},
        "card": card or {},
    }
    for name, path in (components or {}).items():
        path = Path(path).resolve()
        meta["components"][name] = {"sha256": bundle_hash(path), "path": os.path.relpath(path, out_dir)}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, group in tensors.items():
            data = save_safetensors_bytes(_stored(group, dtype, False), metadata={"format": "pt"})
            (tmp / f"{name}.safetensors").write_bytes(data)
            meta["files"][name] = sha256_bytes(data)
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass
class Bundle:
    """A verified bundle on disk: its folder, its model.json, and lazy access to tensors and components."""

    path: Path
    meta: dict
    _components: dict[str, Bundle] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "")

    @property
    def card(self) -> dict:
        return self.meta.get("card", {})

    @property
    def files(self) -> list[str]:
        return sorted(self.meta["files"])

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of `<name>.safetensors` as float32 (int8-stored ones dequantized), checksum verified again."""
        if name not in self.meta["files"]:
            raise BadInput(
                f"The bundle {self.path} has no tensor file '{name}' (it has: {', '.join(self.files)})."
            )
        data = _read_verified(self.path, name, self.meta["files"][name])
        try:
            tensors = load_safetensors_bytes(data)
        except SafetensorError:
            raise BadInput(
                f"{self.path / (name + '.safetensors')} is not a readable safetensors file; "
                "re-export the bundle."
            ) from None
        return _dequantized(tensors)

    def load_into(self, name: str, module: torch.nn.Module) -> None:
        """Load `<name>.safetensors` into `module`: the same keys and shapes are required (BadInput if not)."""
        tensors = self.tensors(name)
        own = module.state_dict()
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or extra:
            raise BadInput(
                f"The bundle {self.path} '{name}' does not fit the model (missing {missing[:3]}, unexpected "
                f"{extra[:3]}); pass a bundle made with the same model config."
            )
        for key, t in tensors.items():
            if t.shape != own[key].shape:
                raise BadInput(
                    f"The bundle {self.path} '{name}' has {key} shaped {tuple(t.shape)} but the model needs "
                    f"{tuple(own[key].shape)}; pass a bundle made with the same model config."
                )
        module.load_state_dict({k: t.to(own[k].dtype) for k, t in tensors.items()}, strict=True)

    def component(self, name: str) -> Bundle:
        """The shared component bundle referenced by `name`, found by its sha256."""
        if name not in self._components:
            ref = self.meta.get("components", {}).get(name)
            if ref is None:
                raise BadInput(
                    f"The bundle {self.path} has no component '{name}'; re-export it with that component."
                )
            self._components[name] = load_bundle(_resolve_component(self.path, name, ref))
        return self._components[name]


def _read_verified(folder: Path, name: str, sha: str) -> bytes:
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise BadInput(
            f"The bundle {folder} is missing {path.name}; copy the whole bundle folder again or re-export it."
        )
    data = path.read_bytes()
    if sha256_bytes(data) != sha:
        raise BadInput(
            f"The checksum of {path} does not match model.json, so the file is damaged or was changed; "
            "copy the bundle again or re-export it."
        )
    if not _has_safetensors_header(data):
        raise BadInput(
            f"{path} is not a safetensors file (soundloom loads safetensors and JSON only, never pickles); "
            "re-export the bundle."
        )
    return data


def _has_safetensors_header(data: bytes) -> bool:
    """Whether `data` opens as safetensors does: a little-endian u64 length, then that many bytes of JSON."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if size < 2 or 8 + size > len(data):
        return False
    try:
        return isinstance(json.loads(data[8 : 8 + size]), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _resolve_component(folder: Path, name: str, ref: dict) -> Path:
    """Next to the bundle first (its stored relative path), then in assets/ by path, name or hash."""
    want, rel = ref["sha256"], Path(ref.get("path", name))
    candidates = [folder / rel, ASSETS_DIR / rel, ASSETS_DIR / rel.name, ASSETS_DIR / name]
    if ASSETS_DIR.is_dir():
        candidates += sorted(p.parent for p in ASSETS_DIR.glob("*/model.json"))
    for candidate in candidates:
        if (candidate / "model.json").is_file() and bundle_hash(candidate) == want:
            return candidate.resolve()
    raise BadInput(
        f"The bundle {folder} needs component '{name}' (sha256 {want[:12]}) but no folder with that hash was "
        f"found at {rel} or in {ASSETS_DIR}; put that component bundle back or re-export the bundle."
    )


def read_model_json(folder: Path):
    """A bundle folder's parsed model.json; one sentence when it is missing or not JSON."""
    model_json = folder / "model.json"
    if not model_json.is_file():
        raise BadInput(
            f"The folder {folder} is not a model bundle (model.json is missing); pass an exported bundle."
        )
    try:
        return json.loads(model_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{model_json} is not valid JSON; copy the bundle again or re-export it.") from None


def load_bundle(path: Path | str) -> Bundle:
    """Open a bundle folder, verifying model.json and the sha256 of every tensor file."""
    folder = Path(path)
    if not folder.is_dir():
        raise BadInput(f"No model bundle folder at {folder}; pass the folder of an exported bundle.")
    model_json = folder / "model.json"
    meta = read_model_json(folder)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise BadInput(f"{model_json} does not describe a bundle (no 'files' table); re-export the bundle.")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BadInput(
            f"The bundle {folder} has format version {version!r} but this soundloom reads version "
            f"{FORMAT_VERSION}; re-export it with this version."
        )
    for name in meta["files"]:
        if (
            not isinstance(name, str)
            or not _NAME.match(name)
            or name.startswith(".")
            or name.lower().endswith(PICKLE_SUFFIXES)
        ):
            raise BadInput(
                f"{model_json} names the tensor file {name!r}, which is not a plain safetensors name; "
                "soundloom loads safetensors and JSON only, so re-export the bundle."
            )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise BadInput(
            f"The bundle {folder} holds {pickles[0]}, a pickle file soundloom never loads; remove it or "
            "re-export the bundle (bundles hold safetensors and JSON only)."
        )
    for name, sha in meta["files"].items():
        _read_verified(folder, name, sha)
    return Bundle(path=folder.resolve(), meta=meta)


def quantize_bundle(source: Path | str, out: Path | str) -> tuple[Path, dict]:
    """An int8 copy of a bundle (module docstring) at `out`: same kind, config, components and card, the card
    saying how the weights are stored, what they were quantized from, and the largest relative change of a
    tensor (norm of the error over norm of the tensor). Returns the folder and that record."""
    src = load_bundle(source)
    out = Path(out).resolve()
    if out == src.path:
        raise BadInput(
            f"bundle quantize would overwrite {src.path} with its own copy; give another --out folder."
        )
    if (src.card.get("weights") or {}).get("storage", "").startswith("int8"):
        raise BadInput(
            f"The bundle {src.path} is already stored as int8; quantize its full-precision source."
        )
    groups = {name: src.tensors(name) for name in src.files}
    kept = {name: _stored(group, torch.float16, True) for name, group in groups.items()}
    worst, stored, total = 0.0, 0, 0
    for name, group in groups.items():
        back = _dequantized(kept[name])
        total += sum(t.numel() for t in group.values())
        for key in (k.removesuffix(INT8_SCALE) for k in kept[name] if k.endswith(INT8_SCALE)):
            t = group[key]
            stored += t.numel()
            worst = max(worst, float((back[key] - t).norm() / t.norm().clamp_min(1e-12)))
    record = {
        "storage": f"int8 with one float32 scale per output row (tensors of >= {INT8_MIN_VALUES} values), "
        "the rest fp16",
        "quantized_from": bundle_hash(src.path),
        "int8_share": round(stored / max(total, 1), 4),
        "max_relative_error": round(worst, 5),
    }
    components = {name: src.component(name).path for name in src.meta.get("components", {})}
    card = {**src.card, "weights": record}
    path = save_bundle(out, src.config, kept, components, None, kind=src.kind, card=card)  # stored as made
    return path, record
