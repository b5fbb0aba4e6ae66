"""LoRA adapters for the generator's DiT: low-rank updates beside frozen linear layers, and their bundles.

A LoRA layer computes y = W x + b + (alpha / rank) B A x with A [rank, in] and B [out, rank]: only A and B
learn, W and b stay the base generator's. B starts at zero, so a fresh adapter leaves every output
bit-identical (W x + b + 0). A starts as nn.Linear's own init, so B's first gradients are not zero.

Which layers (DEFAULT_TARGETS): in every DiT block, the attention's fused q/k/v projection and its output
projection, and the MLP's two layers. Attention is where the latent tokens read the prompt (the text
tokens go through the same qkv), so it is what new sounds under new words need; the MLP carries most of a
block's per-token transform (timbre, texture). One adapter on the fused qkv shares its down-projection A
between q, k and v (B's rows differ), which costs a third of three separate adapters. Left frozen:
- the adaLN modulation layers (dim -> 6 dim per block, the largest matrices): they see only the global
  condition (flow time, seconds, pooled prompt), and their zero-initialised gates are what keeps a block
  near the identity; the blocks' own layers adapt the sound without moving that schedule;
- the embedders and the text projection: the text projection also feeds the pitch and tempo priors, which
  stay frozen, so adapting it would move the priors' input under them;
- the pitch and tempo priors (pipelines/dit.py PromptPrior): classifiers trained on the base corpus's
  thousands of captions. A small folder of a user's sounds rarely names notes or tempos, and a prior
  retrained on tens of captions forgets (a folder of unpitched sounds teaches "no steady pitch" for every
  prompt); as whole modules they would also be several times the adapter's size.

Adapter bundle (pipelines/bundle.py, kind `generator-adapter`):
- config: the generator config the run trained with (`dit`, `time_shift`, `noise_offset`, sampler, ...)
  plus `adapter`: {"format": "lora", "rank", "alpha", "targets": [DiT module names]};
- files: `adapter.safetensors` holding `<target>.lora_a` [rank, in] and `<target>.lora_b` [out, rank];
- components: `base`, the base generator bundle by its bundle_hash and relative path, as every shared
  component is referenced; card: the training card plus `base_model` (name, sha256, recipe, steps).
`pipelines.load_generator(adapter, base=None)` finds the base (find_base) and merges the adapter into its
weights (apply_adapter: W += alpha / rank * B A), so an adapted generator samples as fast as its base.

To share: `pack_adapter` writes one safetensors file holding the bundle's tensor files, byte for byte, as
uint8 tensors and its model.json in the header's metadata (no archive, no pickle); `import_adapter` takes
that file (or an adapter folder), verifies it, checks it against its base and publishes it into a models
folder.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from pipelines.atomic_files import replace_folder, write_atomic
from pipelines.bundle import (
    _NAME,
    ASSETS_DIR,
    Bundle,
    bundle_hash,
    bundles_in,
    hash_or_none,
    load_bundle,
    read_model_json,
    save_bundle,
)
from pipelines.errors import BadInput

ADAPTER_KIND = "generator-adapter"
ADAPTER_FORMAT = "lora"
PACK_FORMAT = "soundloom-adapter-pack/1"  # the metadata tag of a packed (single-file) adapter
DEFAULT_TARGETS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.0", "blocks.*.mlp.2")
LORA_KEYS = ("lora_a", "lora_b")


class LoraLinear(nn.Module):
    """A linear layer's (frozen) weight and bias, under their own names so the base's keys load as they are,
    plus a trainable low-rank update scaled by alpha / rank."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = int(rank), float(alpha)
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's init, as the LoRA paper's A

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + update * self.scale


def lora_targets(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The names of `model`'s linear layers that match any of `patterns` (shell-style, `*` spans dots), in
    module order; BadInput when a pattern matches none."""
    if (
        not isinstance(patterns, list | tuple)
        or not patterns
        or not all(isinstance(p, str) and p for p in patterns)
    ):
        raise BadInput(f"lora_targets must be a list of layer names such as {list(DEFAULT_TARGETS)}.")
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linear):
            raise BadInput(
                f"lora_targets: '{pattern}' names no linear layer of the DiT; use names like "
                f"{', '.join(DEFAULT_TARGETS)}."
            )
    return [name for name in linear if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def check_lora_settings(rank, alpha) -> None:
    """lora_rank a whole number >= 0 (0: no adapters) and lora_alpha a positive number, or BadInput."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= 4096:
        raise BadInput(f"lora_rank must be a whole number from 0 (train every weight) to 4096, not {rank!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1e4:
        raise BadInput(f"lora_alpha must be a number above 0 and at most 10000, not {alpha!r}.")


def add_lora(
    model: nn.Module, rank: int, alpha: float, targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS
) -> list[str]:
    """Wrap `model`'s target linear layers in LoraLinear (in place) and freeze every other parameter; returns
    the wrapped layers' names. The model computes exactly what it did until the adapters learn."""
    check_lora_settings(rank, alpha)
    names = lora_targets(model, targets)
    narrowest = min(
        min(model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in names
    )
    if not 1 <= rank <= narrowest:
        raise BadInput(
            f"lora_rank must be from 1 to {narrowest} (the narrowest adapted layer's width), not {rank}."
        )
    model.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoraLinear(getattr(owner, child), rank, alpha))
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors of a LoRA-wrapped model: `<layer>.lora_a` and `<layer>.lora_b`."""
    return {
        f"{name}.{key}": getattr(m, key).detach()
        for name, m in model.named_modules()
        if isinstance(m, LoraLinear)
        for key in LORA_KEYS
    }


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B A (computed in float32), in W's dtype: the plain layer a LoRA layer computes."""
    return (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every LoraLinear of `model` into a plain nn.Linear holding W + alpha / rank * B A (in place)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            plain = plain.to(dtype=m.weight.dtype, device=m.weight.device)
            plain.weight.copy_(merged_weight(m.weight, m.lora_a, m.lora_b, m.scale))
            if m.bias is not None:
                plain.bias.copy_(m.bias)
            plain.requires_grad_(m.weight.requires_grad)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain)


def load_base_into(bundle: Bundle, name: str, model: nn.Module) -> None:
    """Load a bundle's plain tensor file `name` into a LoRA-wrapped model: every key but the adapters'."""
    tensors = bundle.tensors(name)
    adapters = {k for k in model.state_dict() if k.rpartition(".")[2] in LORA_KEYS}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise BadInput(
            f"The bundle {bundle.path} '{name}' does not fit the model ({str(e).splitlines()[-1].strip()}); "
            "pass a bundle made with the same model config."
        ) from None
    if unexpected or set(missing) != adapters:
        wrong = sorted(unexpected) or sorted(set(missing) - adapters)
        raise BadInput(
            f"The bundle {bundle.path} '{name}' does not fit the model (first mismatch {wrong[:1]}); pass a "
            "bundle made with the same model config."
        )


# ---------------------------------------------------------------- adapter bundles


def adapter_spec(adapter: Bundle) -> dict:
    """An adapter bundle's checked `config.adapter`: {"format", "rank", "alpha", "targets"}."""
    spec = adapter.config.get("adapter")
    ok = (
        isinstance(spec, dict)
        and spec.get("format") == ADAPTER_FORMAT
        and isinstance(spec.get("rank"), int)
        and not isinstance(spec["rank"], bool)
        and spec["rank"] >= 1
        and isinstance(spec.get("alpha"), int | float)
        and math.isfinite(spec["alpha"])
        and spec["alpha"] > 0
        and isinstance(spec.get("targets"), list)
        and all(isinstance(t, str) for t in spec["targets"])
    )
    if not ok:
        raise BadInput(
            f"The adapter bundle {adapter.path} does not describe a LoRA adapter this soundloom reads; "
            "re-export it from its run."
        )
    return spec


def save_adapter(
    out_dir: Path | str,
    model: nn.Module,
    base: Path | str,
    base_sha256: str,
    config: dict,
    card: dict | None = None,
) -> Path:
    """Write the adapter bundle of a LoRA-wrapped DiT trained on the generator bundle `base`, which must still
    be the bundle whose hash the run recorded (`base_sha256`)."""
    base = Path(base)
    if not (base / "model.json").is_file():
        raise BadInput(
            f"The base generator {base} of this LoRA run (sha256 {base_sha256[:12]}) is gone; put it back "
            "there to export the adapter, which is recorded against it."
        )
    now = bundle_hash(base)
    if now != base_sha256:
        raise BadInput(
            f"The base generator at {base} has changed since this LoRA run started (sha256 {base_sha256[:12]} "
            f"then, {now[:12]} now); put the original back to export the adapter."
        )
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    assert layers, "the model has no LoRA layers"
    rank, alpha = layers[0][1].rank, layers[0][1].alpha
    assert all(m.rank == rank and m.alpha == alpha for _, m in layers)
    spec = {"format": ADAPTER_FORMAT, "rank": rank, "alpha": alpha, "targets": [name for name, _ in layers]}
    return save_bundle(
        out_dir,
        {**config, "adapter": spec},
        {"adapter": lora_state_dict(model)},
        components={"base": base},
        kind=ADAPTER_KIND,
        card=card,
    )


@torch.no_grad()
def apply_adapter(model: nn.Module, adapter: Bundle) -> None:
    """Merge an adapter bundle into a plain DiT of its base generator (in place): W += alpha / rank * B A."""
    spec = adapter_spec(adapter)
    if adapter.config.get("dit") != asdict(model.cfg):
        raise BadInput(
            f"The adapter bundle {adapter.path} was made for another DiT config than its base's; re-export it "
            "from its run."
        )
    tensors = adapter.tensors("adapter")
    expected = {f"{t}.{key}" for t in spec["targets"] for key in LORA_KEYS}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:1]
        raise BadInput(
            f"The adapter bundle {adapter.path} holds other tensors than its targets need ({odd}); re-export it."
        )
    scale = float(spec["alpha"]) / spec["rank"]
    for target in spec["targets"]:
        try:
            layer = model.get_submodule(target)
        except AttributeError:
            layer = None
        a, b = tensors[f"{target}.lora_a"], tensors[f"{target}.lora_b"]
        if (
            not isinstance(layer, nn.Linear)
            or tuple(a.shape) != (spec["rank"], layer.in_features)
            or tuple(b.shape) != (layer.out_features, spec["rank"])
        ):
            raise BadInput(
                f"The adapter bundle {adapter.path} does not fit its base generator at layer {target}; "
                "re-export it from its run."
            )
        layer.weight.copy_(merged_weight(layer.weight, a, b, scale))


def _base_ref(adapter: Bundle) -> dict:
    ref = adapter.meta.get("components", {}).get("base")
    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str):
        raise BadInput(
            f"The adapter bundle {adapter.path} records no base generator; re-export it from its LoRA run."
        )
    return ref


def _base_name(adapter: Bundle) -> str:
    recorded = (adapter.card.get("base_model") or {}).get("bundle")
    return str(recorded or Path(_base_ref(adapter).get("path", "base")).name)


def _wrong_base(adapter: Bundle, base: Path, got: str) -> BadInput:
    want = _base_ref(adapter)["sha256"]
    return BadInput(
        f"The LoRA adapter {adapter.path} was trained on the generator '{_base_name(adapter)}' (sha256 "
        f"{want[:12]}), but {base} is another model (sha256 {got[:12]}); pass the generator it was trained on."
    )


def _search_places(adapter_dir: Path, rel: str, search: tuple[Path, ...] = ()) -> list[Path]:
    """Where an adapter's base is looked for: its recorded relative path, the adapter's neighbours (a models
    folder), the folders of `search`, then assets/."""
    places = [adapter_dir / rel] if rel else []
    for root in (adapter_dir.parent, *search, ASSETS_DIR):
        places += [p for p in bundles_in(root) if p != adapter_dir]
    return places


def find_base(
    adapter: Bundle, base: Path | str | None = None, *, search: tuple[Path | str, ...] = ()
) -> Path:
    """The base generator folder of an adapter bundle: `base` when given (it must have the recorded hash),
    else the first folder with that hash at the recorded path, beside the adapter, in a folder of `search`
    or in assets/."""
    ref = _base_ref(adapter)
    want = ref["sha256"]
    if base is not None:
        base = Path(base)
        read_model_json(base)  # one sentence when it is not a bundle
        got = bundle_hash(base)
        if got != want:
            raise _wrong_base(adapter, base, got)
        return base.resolve()
    rel = str(ref.get("path") or "")
    for place in _search_places(adapter.path, rel, tuple(Path(s) for s in search)):
        if hash_or_none(place) == want:
            return place.resolve()
    got = hash_or_none(adapter.path / rel) if rel else None
    if got is not None:
        raise _wrong_base(adapter, adapter.path / rel, got)
    raise BadInput(
        f"The LoRA adapter {adapter.path} needs its base generator '{_base_name(adapter)}' (sha256 {want[:12]}), "
        f"which is neither at its recorded place nor beside the adapter nor in {ASSETS_DIR}; pass that "
        "generator as the base (`soundloom bundle import-adapter ADAPTER --base BASE --into DIR`)."
    )


def check_adapter_fits(adapter: Bundle, base: Bundle) -> None:
    """Whether the adapter merges into this base's DiT (names, shapes, config), tried on a DiT built from the
    base's config, without loading any weights; BadInput if not. (The hash is find_base's check.)"""
    from pipelines.dit import DiT, DiTConfig

    try:
        config = DiTConfig(**base.config["dit"])
    except (KeyError, TypeError):
        raise BadInput(
            f"The generator bundle {base.path} has a DiT config this soundloom does not know."
        ) from None
    with torch.random.fork_rng(devices=[]):  # a DiT's init draws random weights: not from the caller's stream
        probe = DiT(config)
    apply_adapter(probe, adapter)


# ---------------------------------------------------------------- sharing


def pack_adapter(adapter_dir: Path | str, out_file: Path | str) -> Path:
    """Write an adapter bundle as one shareable safetensors file (its files byte for byte, model.json in the
    metadata); returns the file."""
    adapter = load_bundle(adapter_dir)
    if adapter.kind != ADAPTER_KIND:
        raise BadInput(
            f"{adapter.path} is a {adapter.kind or 'unnamed'} bundle, not a LoRA adapter; pack the folder that "
            "`soundloom bundle export` wrote for a LoRA run."
        )
    adapter_spec(adapter)
    files = {
        name: torch.frombuffer(
            bytearray((adapter.path / f"{name}.safetensors").read_bytes()), dtype=torch.uint8
        )
        for name in adapter.files
    }
    metadata = {
        "format": PACK_FORMAT,
        "name": adapter.path.name,
        "model.json": (adapter.path / "model.json").read_text(),
    }
    out_file = Path(out_file)
    if out_file.is_dir():
        raise BadInput(f"{out_file} is a folder; give the adapter file's name, e.g. my-sounds.safetensors.")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_file, save_safetensors_bytes(files, metadata=metadata))
    return out_file


def _unpack(source: Path, folder: Path) -> str:
    """Write a packed adapter's files into the (empty) `folder`; returns the name it was packed under."""
    data = source.read_bytes()
    try:
        files = load_safetensors_bytes(data)
        metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        listed = set(json.loads(metadata["model.json"])["files"])
    except (SafetensorError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        metadata, files, listed = {}, {}, set()
    if metadata.get("format") != PACK_FORMAT or set(files) != listed:
        raise BadInput(
            f"{source} is not a packed soundloom adapter; give the file `soundloom bundle pack-adapter` wrote "
            "or an adapter bundle folder."
        )
    for name, tensor in files.items():
        if not _NAME.match(name) or name.startswith(".") or tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise BadInput(f"{source} holds an entry '{name}' a packed adapter never has; ask for it again.")
        (folder / f"{name}.safetensors").write_bytes(tensor.numpy().tobytes())
    (folder / "model.json").write_text(metadata["model.json"])
    return str(metadata.get("name") or source.stem)


def import_adapter(
    source: Path | str, models_dir: Path | str, *, base: Path | str | None = None, name: str | None = None
) -> Path:
    """Check a shared adapter (a packed file or a bundle folder) and copy it into `models_dir` as `name`
    (default: its own name); returns the new folder.

    It must verify (checksums, safetensors only), be a LoRA adapter, and fit its base generator: `base`, or
    the one find_base locates by hash (the models folder is searched too). Where the base would not be found
    again from the new place, the copy records the base's path relative to it, which changes the adapter's
    bundle hash. Importing the same adapter again is a no-op; another model under that name is refused.
    """
    source, models_dir = Path(source), Path(models_dir)
    if not source.exists():
        raise BadInput(f"No adapter at {source}; give a packed adapter file or an adapter bundle folder.")
    if models_dir.exists() and not models_dir.is_dir():
        raise BadInput(f"{models_dir} is a file; give a models folder to import into.")
    if name is not None and (not _NAME.match(name) or name.startswith(".")):
        raise BadInput(f"'{name}' cannot be a model folder name; use letters, digits, '-', '_' and '.'.")
    created = not models_dir.exists()
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".import-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        if source.is_dir():
            own_name = source.resolve().name
            for entry in [
                "model.json",
                *(f"{n}.safetensors" for n in read_model_json(source).get("files", {})),
            ]:
                if not (source / entry).is_file():
                    raise BadInput(
                        f"The adapter bundle {source} is missing {entry}; copy the whole folder again."
                    )
                shutil.copyfile(source / entry, tmp / entry)
        else:
            own_name = _unpack(source, tmp)
        adapter = load_bundle(tmp)  # checksums, safetensors only
        if adapter.kind != ADAPTER_KIND:
            raise BadInput(
                f"{source} is a {adapter.kind or 'unnamed'} bundle, not a LoRA adapter; import an adapter that "
                "`soundloom bundle export` wrote for a LoRA run."
            )
        if source.is_dir():  # its recorded relative path of the base means something from where it is
            adapter.path = source.resolve()
        base_path = find_base(adapter, base, search=(models_dir,))
        check_adapter_fits(adapter, load_bundle(base_path))

        name = name or own_name
        if not _NAME.match(name) or name.startswith("."):
            raise BadInput(f"'{name}' cannot be a model folder name; pass another name for the adapter.")
        final = (models_dir / name).resolve()
        ref = _base_ref(adapter)
        rel, want = str(ref.get("path") or ""), ref["sha256"]
        if not any(hash_or_none(p) == want for p in _search_places(final, rel)):
            meta = read_model_json(tmp)
            meta["components"]["base"]["path"] = os.path.relpath(base_path, final)
            write_atomic(tmp / "model.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if final.exists():
            if hash_or_none(final) == bundle_hash(tmp):
                return final
            raise BadInput(
                f"{final} already holds another model; pass another name for the imported adapter."
            )
        replace_folder(tmp, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(models_dir.iterdir()):
            models_dir.rmdir()  # a refused import leaves no trace
