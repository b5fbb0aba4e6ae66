"""The recipe registry and the Recipe protocol every recipe follows (`toy` lives in training/toy_recipe.py).

A recipe says what is trained (`modules`), on how many examples (`dataset_size`) and how a batch of
example indices becomes a loss; the trainer owns everything else (optimizer, schedule, EMA,
checkpoints, metrics, control). `RECIPES[name](recipe_config, data_dir)` builds one; the trainer
passes the `recipe` table of the training config with `seed` added, under a fixed torch seed, so
module initialisation is a function of the seed. Every recipe module is imported only when used,
so this registry stays free of torch and `soundloom --help` can list the names quickly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipelines.errors import BadInput

if TYPE_CHECKING:
    from torch import Tensor, nn


class Recipe(Protocol):
    name: str

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules (built once; the same objects on every call); saved in checkpoints."""
        ...

    def dataset_size(self) -> int: ...

    def loss(
        self, step: int, indices: list[int], modules: dict[str, nn.Module]
    ) -> tuple[Tensor, dict[str, float]]:
        """A scalar loss for these example indices, plus named floats for the metrics stream."""
        ...

    # Optional, looked up with hasattr:
    #   preview(step, modules_ema, out_dir) -> None           audio previews every preview_every steps
    #   export(modules_ema, out_dir, card=None) -> None        write a bundle (card: the training card)
    #   init_from_bundle(bundle, modules) -> None              custom --init mapping (default: by file name)
    #   init_required -> str | None                            why the run cannot start without --init (a
    #                                                          LoRA run adapts an existing model): the trainer
    #                                                          refuses a fresh run without it in that sentence
    #
    #   optimizer_groups() -> dict[str, list[str]]             group name -> module names (every module in
    #                                                          exactly one group; names without "/" or ".").
    #                                                          Each group gets its own AdamW on the same lr
    #                                                          schedule, saved and restored with checkpoints.
    #   group_for_step(step) -> str                            (required with optimizer_groups) the group that
    #                                                          step trains: a pure function of the step, so a
    #                                                          resumed run alternates the same way. Only that
    #                                                          group's optimizer steps and its modules' EMA
    #                                                          moves; the other groups' parameters are frozen
    #                                                          during the step's loss and backward (they get no
    #                                                          gradients, and no Adam moment or decay drift).
    #   lr_scale(group) -> float                               a group's multiplier on the scheduled lr (1 if absent)
    #
    #   state_dict() -> dict                                   the recipe's own JSON-able state (counters, the
    #   load_state_dict(state) -> None                         newest figure of a periodic measurement, ...):
    #                                                          saved in every checkpoint's state.json, restored
    #                                                          on resume and before export.


def recipe_settings(recipe: str, config: dict | None, defaults: dict) -> dict:
    """A recipe's settings: its defaults overridden by `config` (less the trainer's `seed`); unknown keys
    are a BadInput naming the known ones."""
    config = {k: v for k, v in (config or {}).items() if k != "seed"}  # the trainer adds its seed
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise BadInput(
            f"Unknown {recipe} recipe setting '{unknown[0]}'; known: {', '.join(sorted(defaults))}."
        )
    return {**defaults, **config}


def model_settings(what: str, settings: dict, known: set[str]) -> None:
    """A model config table (`codec`, `dit`, ...) may only name fields its dataclass has."""
    bad = sorted(set(settings) - known)
    if bad:
        raise BadInput(f"Unknown {what} setting '{bad[0]}'; known: {', '.join(sorted(known))}.")


def _lazy(module: str, attr: str) -> Callable[[dict, Path], Recipe]:
    """A factory that imports its recipe module only when that recipe is used."""

    def make(config: dict, data_dir: Path) -> Recipe:
        return getattr(importlib.import_module(module), attr)(config, data_dir)

    return make


RECIPES: dict[str, Callable[[dict, Path], Recipe]] = {
    "toy": _lazy("training.toy_recipe", "ToyRecipe"),
    "codec": _lazy("training.codec_recipe", "CodecRecipe"),
    "static": _lazy("training.static_recipe", "StaticRecipe"),
    "arc": _lazy("training.arc_recipe", "ArcRecipe"),
    "stage-adaptive": _lazy("training.stage_adaptive", "StageAdaptiveRecipe"),
    "random-threshold": _lazy("training.stage_adaptive", "RandomThresholdRecipe"),
    "fixed-schedule": _lazy("training.stage_adaptive", "FixedScheduleRecipe"),
    "ssl-embedder": _lazy("training.embedder_recipe", "SSLEmbedderRecipe"),
    "judge-embedder": _lazy("training.embedder_recipe", "JudgeEmbedderRecipe"),
}


def recipe_factory(name: str) -> Callable[[dict, Path], Recipe]:
    """The factory registered as `name`; BadInput listing the recipes when there is none."""
    if name not in RECIPES:
        raise BadInput(f"There is no recipe '{name}'; choose one of: {', '.join(sorted(RECIPES))}.")
    return RECIPES[name]
