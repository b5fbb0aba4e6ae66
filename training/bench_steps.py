"""`soundloom bench steps`: the evaluation's figures against the number of sampling steps, per model.

    soundloom bench steps --model assets/generator --model assets/generator-base@pingpong \\
        --model assets/generator-base@euler --steps 1,2,4,8 --json steps.json --png steps.png

Each curve is a generator bundle, optionally with `@SAMPLER` (euler, heun, pingpong) to sample it other
than its bundle does: the question it answers is whether the ARC model at 8 ping-pong steps beats the base
model at 8 steps of either sampler, and how each degrades towards 1 step. Every point is one full
`soundloom eval` (training.evaluate.run, same prompts, seeds and reference clips, whose measurements are
cached under the corpus after the first point). The figures drawn: judge FD, librosa FD, pitch and tempo
accuracy, judge adherence and CCDS diversity (judge figures stay empty without a judge embedder).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.atomic_files import write_atomic
from pipelines.errors import BadInput
from training.evaluate import DEFAULT_SAMPLES, _jsonable, corpus_from_card

FIGURES = (  # (key in an eval's headline, title, lower is better)
    ("fd_judge", "Fréchet distance, judge", True),
    ("fd_librosa", "Fréchet distance, librosa", True),
    ("pitch_accuracy", "pitch within 50 cents", False),
    ("tempo_accuracy", "tempo within 2%", False),
    ("adherence", "text-audio adherence (judge)", False),
    ("ccds", "diversity, CCDS (judge)", False),
)


@dataclass(frozen=True)
class Curve:
    model: Path
    sampler: str | None  # None: the bundle's own

    @property
    def label(self) -> str:
        return self.model.name + (f" @{self.sampler}" if self.sampler else "")


def parse_curve(spec: str, default_sampler: str | None = None) -> Curve:
    """'BUNDLE' or 'BUNDLE@SAMPLER' (a folder whose own name holds '@' is taken whole)."""
    from pipelines.generator import SAMPLERS

    path, sampler = Path(spec), default_sampler
    if "@" in spec and not path.is_dir():
        folder, _, sampler = spec.rpartition("@")
        if sampler not in SAMPLERS:
            raise BadInput(
                f"--model {spec} asks for the sampler {sampler!r}; use BUNDLE@SAMPLER with one of "
                f"{', '.join(sorted(SAMPLERS))}."
            )
        path = Path(folder)
    return Curve(path, sampler)


def check_curve(curve: Curve, data: Path | None) -> None:
    """Refuse, before any evaluation runs, a model that is not a generator bundle or names no corpus."""
    from pipelines.bundle import read_model_json
    from pipelines.lora import ADAPTER_KIND

    if not curve.model.is_dir():
        raise BadInput(f"The folder '{curve.model}' given to --model does not exist; check the path.")
    record = read_model_json(curve.model)
    if record.get("kind") not in ("generator", ADAPTER_KIND):
        raise BadInput(f"{curve.model} is a {record.get('kind') or 'unknown'} bundle, not a generator.")
    if data is None:
        corpus_from_card(curve.model, record.get("card") or {})


def run(
    models: list[str | Path],
    prompts_path: str | Path,
    steps: list[int],
    *,
    data: str | Path | None = None,
    judge_path: str | Path | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    options: dict | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    max_prompts: int | None = None,
    split: str = "test",
    json_out: str | Path | None = None,
    png_out: str | Path | None = None,
) -> dict:
    """Evaluate every model (`BUNDLE[@SAMPLER]`; `sampler` for those without one) at every step count;
    returns (and writes to json_out / draws to png_out) {"config", "curves": [{"label", "model", "sampler",
    "points": [{"steps", "headline", "config", "wall_time_s"}]}]} and prints a table."""
    from pipelines.generator import MAX_STEPS, check_sampling
    from training import evaluate

    started = time.time()
    check_sampling(sampler, guidance)
    if not models:
        raise BadInput("Give at least one --model to measure.")
    if not steps or any(
        isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STEPS for n in steps
    ):
        raise BadInput(f"--steps must list whole numbers from 1 to {MAX_STEPS}, e.g. 1,2,4,8; not {steps!r}.")
    steps = sorted(set(steps))
    curves = [parse_curve(str(m), sampler) for m in models]
    if len({(c.model.resolve(), c.sampler) for c in curves}) < len(curves):
        raise BadInput("The same --model (and sampler) is given twice; give each curve once.")
    for curve in curves:
        check_curve(curve, Path(data) if data is not None else None)

    results = []
    for curve in curves:
        points = []
        for n in steps:
            report = evaluate.run(
                curve.model,
                prompts_path,
                data=data,
                judge_path=judge_path,
                steps=n,
                sampler=curve.sampler,
                guidance=guidance,
                options=options,
                samples=samples,
                seed=seed,
                max_prompts=max_prompts,
                split=split,
                verbose=False,
            )
            points.append(
                {
                    "steps": n,
                    "headline": report["headline"],
                    "config": report["config"],
                    "wall_time_s": report["wall_time_s"],
                }
            )
            head = report["headline"]
            print(
                f"{curve.label}, {n} steps: "
                + ", ".join(f"{key} {_cell(head.get(key))}" for key, _, _ in FIGURES)
                + f" ({report['wall_time_s']:.0f} s)",
                flush=True,
            )
        first = points[0]["config"]
        results.append(
            {
                "label": curve.label,
                "model": str(curve.model),
                "model_hash": first["model_hash"],
                "sampler": first["sampler"],
                "guidance": first["guidance"],
                "points": points,
            }
        )
    result = {
        "config": {
            "steps": steps,
            "prompts": str(prompts_path),
            "samples": samples,
            "seed": seed,
            "max_prompts": max_prompts,
            "split": split,
            "guidance": guidance,
            "data": results[0]["points"][0]["config"]["data"],
            "judge": results[0]["points"][0]["config"]["judge"],
        },
        "curves": results,
        "wall_time_s": round(time.time() - started, 1),
    }
    print(format_table(result))
    if json_out is not None:
        write_atomic(json_out, json.dumps(_jsonable(result), indent=2) + "\n")
        print(f"wrote {json_out}")
    if png_out is not None:
        plot_curves(result, Path(png_out))
        print(f"wrote {png_out}")
    return result


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_table(result: dict) -> str:
    """One row per (curve, steps), one column per figure."""
    names = ("judge FD", "librosa FD", "pitch", "tempo", "adherence", "CCDS")
    width = max(len(c["label"]) for c in result["curves"]) + 2
    lines = [f"{'model':<{width}}{'steps':>6}" + "".join(f"{n:>12}" for n in names)]
    for curve in result["curves"]:
        for point in curve["points"]:
            head = point["headline"]
            cells = "".join(f"{_cell(head.get(key)):>12}" for key, _, _ in FIGURES)
            lines.append(f"{curve['label']:<{width}}{point['steps']:>6}" + cells)
    return "\n".join(lines)


def plot_curves(result: dict, path: Path) -> None:
    """One panel per figure, steps on a log2 axis, one line per curve (points without a value skipped)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["config"]["steps"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title, lower) in zip(axes.flat, FIGURES):
        for curve in result["curves"]:
            xy = [(p["steps"], p["headline"].get(key)) for p in curve["points"]]
            xy = [(x, y) for x, y in xy if y is not None]
            if xy:
                ax.plot(*zip(*xy), marker="o", label=curve["label"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.set_title(f"{title} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes.flat[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
