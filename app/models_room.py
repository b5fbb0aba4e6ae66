"""The studio's Models tab: the generator bundles it can use, their model cards, and the switch.

    room = ModelsRoom(studio)
    room.bundles()                        # [BundleEntry]: what the tab lists
    room.switch(str(entry.path))          # the studio now generates with that bundle

Where it looks (`Studio.model_folders`): the bundled models (assets/) and the output folder's models/
(export a bundle there, `soundloom bundle export ... --out OUTPUTS/models/NAME`, and Refresh finds it),
plus the bundle the studio uses now wherever it lies. Only folders directly inside those that hold a
model.json are listed: generator bundles, LoRA adapters (load_generator merges one into its base), and
folders whose model.json cannot be read (so the tab shows why they cannot be used). A switch names a
listed folder by the path the list shows: a client cannot make the studio open any other folder. API:
/models (the list) and /switch_model (the switch, queued behind a running generation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.studio import Studio, _said_in_one_sentence
from pipelines.bundle import read_model_json
from pipelines.errors import BadInput

TABLE_HEADERS = ["model", "where", "recipe", "steps", "trained for", "in use", "folder"]
MAX_FIGURES = 16  # eval figures shown in a card's summary; the whole card is in the JSON beside it
# what load_generator makes a generator of: a generator bundle, or a LoRA adapter (pipelines/lora.py's
# ADAPTER_KIND) that it merges into its base generator
USABLE_KINDS = ("generator", "generator-adapter")


@dataclass(frozen=True)
class BundleEntry:
    """A listed bundle folder: its model.json when it could be read, else why not."""

    path: Path
    where: str
    meta: dict | None
    problem: str | None = None

    @property
    def card(self) -> dict:
        card = self.meta.get("card") if self.meta else None
        return card if isinstance(card, dict) else {}

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.where})"


def read_entry(folder: Path, where: str) -> BundleEntry | None:
    """The listing's entry for `folder`: None unless its model.json is a generator's or an adapter's (or
    cannot be read, so the tab can say why)."""
    if not (folder / "model.json").is_file():
        return None
    try:
        meta = read_model_json(folder)
    except BadInput as e:
        return BundleEntry(folder.resolve(), where, None, str(e))
    if not isinstance(meta, dict):
        return BundleEntry(
            folder.resolve(), where, None, f"{folder / 'model.json'} does not describe a bundle."
        )
    if meta.get("kind") not in USABLE_KINDS:
        return None  # a codec or an embedder: a part of a generator, not one to switch to
    return BundleEntry(folder.resolve(), where, meta)


class ModelsRoom:
    """The Models tab's handlers over one studio."""

    def __init__(self, studio: Studio):
        self.studio = studio

    def bundles(self) -> list[BundleEntry]:
        """Every listed bundle, the one in use first when it lies outside the searched folders."""
        entries: list[BundleEntry] = []
        for where, root in self.studio.model_folders():
            try:
                folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            except OSError:
                continue  # an unreadable folder lists nothing
            entries += [e for e in (read_entry(f, where) for f in folders) if e is not None]
        listed = {e.path for e in entries}
        active = read_entry(self.studio.model_path, "in use")
        if active is not None and active.path not in listed:
            entries.insert(0, active)
        return entries

    def listing(self, selected: str | None = None):
        """(active model, table, choices, card summary, card) for the tab; the card of `selected` when it
        is still listed, else of the model in use."""
        active, rows, choices, selected, summary, card = self.state(selected)
        return active, rows, gr.update(choices=choices, value=selected), summary, card

    def state(self, selected: str | None = None) -> tuple[str, list, list, str | None, str, dict]:
        """What `listing` shows, with the dropdown as its (label, folder) choices and the one selected."""
        entries = self.bundles()
        in_use = self.studio.model_path
        paths = [str(e.path) for e in entries]
        if selected not in paths:
            selected = str(in_use) if str(in_use) in paths else (paths[0] if paths else None)
        choices = [(e.label, str(e.path)) for e in entries]
        rows = [_row(e, e.path == in_use) for e in entries]
        return (self.active_line(), rows, choices, selected, *self.show(selected, entries))

    def active_line(self) -> str:
        path = self.studio.model_path
        if not (path / "model.json").is_file():
            return "**No model in use:** " + (self.studio.bundle_problem() or f"'{path}' holds no bundle.")
        loaded = "" if self.studio._generator is not None else " (loads at the first generation)"
        return f"**In use:** {path.name}{loaded}, `{path}`"

    def show(self, selected: str | None, entries: list[BundleEntry] | None = None) -> tuple[str, dict]:
        """The card of the listed bundle `selected`: (summary in Markdown, the whole model card)."""
        entry = self._find(selected, entries)
        if entry is None:
            return ("No generator bundle was found; train one and export it into the models folder.", {})
        return card_summary(entry), entry.card

    def switch(self, selected: str | None, progress=gr.Progress()):
        """Make the listed bundle `selected` (its folder, as the list shows it) the studio's model."""
        with _said_in_one_sentence():
            if selected is None or (isinstance(selected, str) and not selected.strip()):
                raise BadInput("No model was picked; choose one from the list first.")
            if not isinstance(selected, str):
                raise BadInput(f"A model is named by its folder as text, not {type(selected).__name__}.")
            entry = self._find(selected)
            if entry is None:
                raise BadInput(
                    f"'{Path(selected).name}' is not one of the studio's model bundles; pick one from the "
                    "list (Refresh finds newly exported ones)."
                )
            if entry.path != self.studio.model_path or self.studio._generator is None:
                progress(0, desc=f"loading {entry.path.name}")
                self.studio.switch_model(entry.path)  # BadInput for a broken bundle, the old one kept
        return self.listing(str(entry.path))

    def _find(self, selected: str | None, entries: list[BundleEntry] | None = None) -> BundleEntry | None:
        return next((e for e in entries or self.bundles() if str(e.path) == selected), None)


# ---------------------------------------------------------------- the card, in words


def _row(entry: BundleEntry, active: bool) -> list:
    card = entry.card
    return [
        entry.path.name,
        entry.where,
        _text(card.get("recipe")) or ("(unreadable)" if entry.problem else ""),
        str(card["steps"]) if _is_count(card.get("steps")) else "",
        _duration(card.get("wall_time_s")),
        "yes" if active else "",
        str(entry.path),
    ]


def card_summary(entry: BundleEntry) -> str:
    """A bundle's model card in a few lines: what it is, how it was trained, on what, and how it measured."""
    lines = [f"### {entry.path.name}", f"`{entry.path}`", ""]
    if entry.problem:
        return "\n".join([*lines, f"**Cannot be used:** {entry.problem}"])
    card = entry.card
    config = entry.meta.get("config") if isinstance(entry.meta.get("config"), dict) else {}
    recipe, steps, wall = _text(card.get("recipe")), card.get("steps"), _duration(card.get("wall_time_s"))
    trained = [f"recipe **{recipe}**" if recipe else "recipe not recorded"]
    if _is_count(steps):
        trained.append(f"{steps} steps")
    if wall:
        trained.append(f"{wall} of training")
    lines.append(f"- kind: {entry.meta.get('kind')}")
    lines.append("- training: " + ", ".join(trained))
    lines.append("- data: " + _data_line(card.get("data")))
    sampling = [
        _text(config.get("sampler")) or "euler",
        f"{config['steps']} steps" if _is_count(config.get("steps")) else None,
        f"guidance {config['guidance']:g}" if _is_number(config.get("guidance")) else None,
    ]
    dit = config.get("dit") if isinstance(config.get("dit"), dict) else {}
    if _is_number(dit.get("max_seconds")):
        sampling.append(f"up to {dit['max_seconds']:g} s")
    lines.append("- sampling defaults: " + ", ".join(s for s in sampling if s))
    weights = card.get("weights") if isinstance(card.get("weights"), dict) else {}
    if _text(weights.get("storage")):  # an int8 copy (`soundloom bundle quantize`); others are fp16
        parts = [_text(weights["storage"])]
        if _is_number(weights.get("max_relative_error")):
            parts.append(f"largest change of a tensor {_number(weights['max_relative_error'])}")
        if _text(weights.get("quantized_from")):
            parts.append(f"a copy of bundle {_text(weights['quantized_from'])[:12]}")
        lines.append("- weights: " + "; ".join(parts))
    figures = _figures(card.get("eval"))
    if figures:
        lines.append("- eval: " + "; ".join(f"{k} {_number(v)}" for k, v in figures))
    else:
        lines.append("- eval: no figures recorded (`soundloom eval --update-card` adds them)")
    return "\n".join(lines)


def _data_line(data) -> str:
    if not isinstance(data, dict):
        return "not recorded"
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    parts = []
    if _is_number(data.get("hours")):
        parts.append(f"{data['hours']:g} h corpus")
    if _is_count(counts.get("clips")):
        parts.append(f"{counts['clips']} clips")
    if _is_count(data.get("seed")):
        parts.append(f"seed {data['seed']}")
    fonts = data.get("soundfonts") if isinstance(data.get("soundfonts"), list) else []
    licences = [
        f"{_text(f.get('name')) or '?'} ({_text(f.get('licence')) or 'licence not recorded'})"
        for f in fonts
        if isinstance(f, dict)
    ]
    if licences:
        parts.append("SoundFonts " + ", ".join(licences))
    return ", ".join(parts) or "recorded (see the card)"


def _figures(evaluation) -> list[tuple[str, float]]:
    """The eval figures worth a line: the headline when there is one, else every number (not the settings)."""
    if not isinstance(evaluation, dict):
        return []
    source = evaluation.get("headline") if isinstance(evaluation.get("headline"), dict) else evaluation
    found: list[tuple[str, float]] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if len(found) >= MAX_FIGURES or key in ("config", "notes"):
                continue
            name = f"{prefix}{key}"
            if _is_number(value):
                found.append((name, value))
            elif isinstance(value, dict):
                walk(value, name + ".")

    walk(source, "")
    return found


def _duration(seconds) -> str:
    if not _is_number(seconds) or seconds < 0:
        return ""
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------- layout


def models_tab(studio: Studio) -> None:
    room = ModelsRoom(studio)
    active_line, rows, choices, selected, summary_text, card_value = room.state()
    with gr.Tab("Models") as tab:
        active = gr.Markdown(active_line, elem_id="models-active")
        table = gr.Dataframe(
            rows or None,
            headers=TABLE_HEADERS,
            interactive=False,
            label="generator bundles (assets/ and the output folder's models/)",
            elem_id="models-table",
        )
        with gr.Row(equal_height=True):
            choice = gr.Dropdown(choices, value=selected, label="model", scale=4, elem_id="models-choice")
            use = gr.Button("Use this model", variant="primary", scale=1, elem_id="models-use")
            refresh = gr.Button("Refresh", scale=1, elem_id="models-refresh")
        with gr.Row():
            summary = gr.Markdown(summary_text, elem_id="models-card")
            card = gr.JSON(card_value, label="model card")
    shown = [active, table, choice, summary, card]
    # preprocess=False: a client names a folder the list shows, and the list may have grown since the page
    # was built (the dropdown would hold it to its first choices)
    refresh.click(room.listing, choice, shown, queue=False, preprocess=False, api_name="models")
    tab.select(room.listing, choice, shown, queue=False, preprocess=False, api_visibility="private")
    choice.input(room.show, choice, [summary, card], queue=False, preprocess=False, api_visibility="private")
    use.click(
        room.switch,
        inputs=choice,
        outputs=shown,
        api_name="switch_model",
        preprocess=False,
        show_progress_on=active,
        concurrency_id="model",  # waits for a running generation, as the generations wait for each other
        concurrency_limit=1,
    )
