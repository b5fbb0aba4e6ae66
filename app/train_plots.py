"""What the training room plots from a run's metrics stream (RUN/metrics.jsonl), and when it warns.

Each plot names the metric keys it draws (a pattern over the keys the recipes log: training/trainer.py,
static_recipe.py, stage_adaptive.py, arc_recipe.py); a run shows only the plots whose keys it logs. A plot's
data is a long table (step, value, series) as gr.LinePlot takes it, thinned to at most MAX_POINTS steps.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

MAX_POINTS = 1500  # steps per plot: beyond this every k-th record is drawn (and always the newest)
VAL_KEYS = ("val_loss", "loss_val", "eval_loss")  # a validation figure in the metrics, where a run logs one
OVERFIT_EVALS = 3  # validation rising over this many evaluations in a row, while the training loss falls


@dataclass(frozen=True)
class PlotSpec:
    name: str  # the plot's elem_id is train-plot-NAME
    title: str
    keys: str  # a regular expression matched against whole metric keys
    y_title: str = "value"


PLOTS = (
    PlotSpec("loss", "loss", r"loss|loss_rf|val_loss|loss_val|eval_loss", "loss"),
    PlotSpec("regime", "regime variable r", r"r|r_measured|regime_q", "r"),
    PlotSpec("discrepancy", "SSL discrepancy D and its slope", r"probe_d|d_slope"),
    PlotSpec("guidance", "SSL-guidance weight", r"align_lambda|align_cos"),
    PlotSpec("timesteps", "timestep distribution (share of draws per bin)", r"t_hist\d+|t_loc", "share"),
    PlotSpec("timestep-loss", "loss per timestep bin", r"loss_tbin\d+|loss_t\d", "loss"),
    PlotSpec(
        "structure",
        "block-group stability and the structure loss",
        r"group_ari|group_stable|struct_on|struct_weight|struct_loss",
    ),
    PlotSpec("arc-losses", "ARC: generator and discriminator losses", r"loss_g|loss_d|loss_c", "loss"),
    PlotSpec(
        "arc-margins", "ARC: logits, margin and prompt-match accuracy", r"margin|d_real|d_fake|d_match_acc"
    ),
    PlotSpec(
        "eval",
        "evaluation figures",
        r"(eval|val)_(?!loss$)\w+|fd_\w+|adherence|pitch_accuracy|tempo_accuracy|pitch_prior_acc|tempo_prior_acc",
    ),
)


class MetricsReader:
    """Reads a metrics.jsonl incrementally: only the bytes appended since the last call are parsed."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0
        self.records: list[dict] = []

    def read(self, path: Path) -> list[dict]:
        if path != self.path:
            self.path, self.offset, self.records = path, 0, []
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.offset, self.records = 0, []
            return self.records
        if size < self.offset:  # rewritten (a resumed run drops records past its checkpoint)
            self.offset, self.records = 0, []
        with open(path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self.offset += len(whole)
        for line in whole.splitlines():
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int | float):
                self.records.append(record)
        return self.records


def thin(records: list[dict], limit: int = MAX_POINTS) -> list[dict]:
    """Every k-th record so at most about `limit` remain, always with the newest."""
    if len(records) <= limit:
        return records
    k = math.ceil(len(records) / limit)
    kept = records[::k]
    return kept if kept[-1] is records[-1] else [*kept, records[-1]]


def plot_keys(spec: PlotSpec, records: list[dict]) -> list[str]:
    """The keys of `spec` that these records log, in first-seen order."""
    pattern = re.compile(spec.keys)
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if key not in seen and key != "step" and pattern.fullmatch(key):
                seen[key] = None
    return list(seen)


def plot_frame(spec: PlotSpec, records: list[dict]) -> pd.DataFrame:
    """The long table (step, value, series) of one plot; empty when the run logs none of its keys."""
    keys = plot_keys(spec, records)
    rows = [
        (int(r["step"]), float(r[k]), k)
        for r in thin(records)
        for k in keys
        if isinstance(r.get(k), int | float) and math.isfinite(r[k])
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def eval_frame(evals: list[dict], figure: str = "fd_judge") -> pd.DataFrame:
    """An experiment's evaluations (its evals.jsonl) as one series per arm and seed."""
    rows = [
        (int(e["step"]), float(e[figure]), f"{e.get('arm')} s{e.get('seed')} {e.get('kind', '')}".strip())
        for e in evals
        if isinstance(e.get(figure), int | float) and math.isfinite(e[figure]) and "step" in e
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def overfitting_warning(records: list[dict]) -> str | None:
    """A sentence when the validation figure rose over the last OVERFIT_EVALS evaluations while the
    training loss fell over the same steps; None otherwise (and for runs that log no validation figure)."""
    for key in VAL_KEYS:
        val = [
            (r["step"], r[key])
            for r in records
            if isinstance(r.get(key), int | float) and math.isfinite(r[key])
        ]
        if len(val) < OVERFIT_EVALS + 1:
            continue
        last = val[-(OVERFIT_EVALS + 1) :]
        rising = all(b[1] > a[1] for a, b in zip(last, last[1:]))
        start, end = last[0][0], last[-1][0]
        losses = [
            r["loss"] for r in records if start <= r["step"] <= end and isinstance(r.get("loss"), int | float)
        ]
        if not rising or len(losses) < 4:
            continue
        half = len(losses) // 2
        early, late = sum(losses[:half]) / half, sum(losses[half:]) / (len(losses) - half)
        if late < early:
            return (
                f"Validation loss has risen over the last {OVERFIT_EVALS} evaluations ({last[0][1]:.4g} at step "
                f"{start} to {last[-1][1]:.4g} at step {end}) while the training loss keeps falling: the model "
                "is starting to overfit, so use an earlier checkpoint or stop the run."
            )
    return None
