"""`soundloom experiment stage-adaptive`: does the measured regime variable make training faster?

    soundloom experiment stage-adaptive --out DIR [--steps N] [--seeds 3] [--data CORPUS]

Trains every arm below at equal steps on a small config, once per seed, evaluates each run cheaply
along the way and fully at the end, and writes DIR/report.md with its plots. Rerun the same command after
an interruption: finished runs and evaluations are kept, an unfinished run resumes from its checkpoint.

Arms (training/stage_adaptive.py explains the mechanisms and the two controls):
    static             the baseline recipe, no mechanism
    stage-adaptive     the three mechanisms driven by the measured r
    random-threshold   the same mechanisms driven by a random monotone r whose switch points are drawn
                       from the steps over which this seed's stage-adaptive r rose (so it runs after it)
    fixed-schedule     the same mechanisms driven by r = step / steps
    guidance-only, timesteps-only, structure-only
                       stage-adaptive with the other two mechanisms switched off

Every arm starts from the bundled configs (training/configs/static.json, stage_adaptive.json), then
SMALL (a smaller DiT, so the matrix fits an afternoon here), then the settings that count steps scaled to
the run's length (`step_settings`), then the seed. Evaluation (training/evaluate.py, text only):
  - cheap, at every checkpoint (eval_every steps): eval_prompts dev prompts, eval_steps Euler steps with
    CFG, 5 samples each, against the corpus's val split; this is what the curves and "steps to reach the
    static recipe's final FD" are read from;
  - full, at the last step: final_prompts prompts (all by default) at final_steps, against the test split;
    this gives the final figures and the paired comparison.
The judge embedder (assets/judge, or --judge) is required: the target is stated in its space.

Files in DIR: runs/ARM-sSEED (run folders), evals.jsonl (one record per evaluation: arm, seed, step,
kind and the headline figures), report.md, curves.png, regime.png.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from pipelines.atomic_files import write_atomic
from pipelines.errors import BadInput

CONFIGS = Path(__file__).parent / "configs"
STATIC_CONFIG = CONFIGS / "static.json"
SA_CONFIG = CONFIGS / "stage_adaptive.json"

# name: (recipe, its config file, settings of its own beyond the shared ones)
ARMS: dict[str, tuple[str, Path, dict]] = {
    "static": ("static", STATIC_CONFIG, {}),
    "stage-adaptive": ("stage-adaptive", SA_CONFIG, {}),
    "random-threshold": ("random-threshold", SA_CONFIG, {}),
    "fixed-schedule": ("fixed-schedule", SA_CONFIG, {}),
    "guidance-only": ("stage-adaptive", SA_CONFIG, {"use_timesteps": False, "use_structure": False}),
    "timesteps-only": ("stage-adaptive", SA_CONFIG, {"use_guidance": False, "use_structure": False}),
    "structure-only": ("stage-adaptive", SA_CONFIG, {"use_guidance": False, "use_timesteps": False}),
}
CONTROLS = ("random-threshold", "fixed-schedule")

# The small config: the bundled DiT at 192 x 6 (about half its compute per step), the bundled batch.
SMALL = {"recipe": {"dit": {"dim": 192, "depth": 6, "heads": 3}}}
DEFAULT_STEPS = 1200
DEFAULT_SEEDS = 3
HEADLINE_FIGURES = ("fd_judge", "fd_librosa", "pitch_accuracy", "tempo_accuracy", "adherence")
TARGET_STEP_RATIO = 0.75  # stage-adaptive must reach static's final judge FD in at most this share of steps


def step_settings(recipe: str, steps: int, eval_every: int) -> dict:
    """The settings that count steps, scaled from the bundled configs (written for 20000 steps) to a run
    of `steps`: the lr warm-up, the regime warm-up, the probe and grouping intervals, the structure ramp
    and fixed-schedule's length; checkpoints fall on the evaluation steps and are all kept."""
    settings = {
        "steps": steps,
        "warmup_steps": max(1, steps // 40),
        "ckpt_every": eval_every,
        "keep_checkpoints": steps // eval_every + 1,
        "preview_every": 0,
    }
    if recipe != "static":
        settings["recipe"] = {
            "regime_warmup": steps // 20,
            "probe_every": max(1, steps // 60),
            "group_every": max(1, steps // 40),
            "structure_ramp": max(1, steps // 20),
            "schedule_steps": steps,
        }
    return settings


class Experiment:
    """One experiment folder: what to run, what has run, and the report."""

    def __init__(
        self,
        out: Path | str,
        data: Path | str,
        *,
        prompts: Path | str,
        judge: Path | str,
        steps: int = DEFAULT_STEPS,
        seeds: int = DEFAULT_SEEDS,
        eval_every: int | None = None,
        eval_prompts: int = 12,
        eval_steps: int = 16,
        final_prompts: int | None = None,
        final_steps: int = 50,
        arms: tuple[str, ...] = tuple(ARMS),
        overrides: dict | None = None,
        configs: dict[str, Path] | None = None,
    ):
        from training.trainer import _merge

        self.out, self.data = Path(out), Path(data)
        self.prompts, self.judge = Path(prompts), Path(judge)
        self.steps, self.seeds = steps, seeds
        self.eval_every = eval_every or max(1, steps // 4)
        if steps % self.eval_every:
            raise BadInput(
                f"--steps ({steps}) must be a multiple of the evaluation interval ({self.eval_every})."
            )
        self.eval_prompts, self.eval_steps = eval_prompts, eval_steps
        self.final_prompts, self.final_steps = final_prompts, final_steps
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise BadInput(f"There is no arm {unknown[0]!r}; choose from {', '.join(ARMS)}.")
        if "random-threshold" in arms and "stage-adaptive" not in arms:
            raise BadInput("random-threshold draws its range from stage-adaptive's r: run both arms.")
        self.arms = tuple(a for a in ARMS if a in arms)  # stage-adaptive before the control that reads it
        self.overrides = overrides if overrides is not None else SMALL
        self.configs = configs or {}  # recipe config file per config path, for tests' tiny configs
        self._merge = _merge
        if not (self.data / "manifest.jsonl").is_file():
            raise BadInput(
                f"{self.data} holds no corpus (manifest.jsonl); build one with `soundloom dataset build`."
            )
        if not (self.judge / "model.json").is_file():
            raise BadInput(
                f"The judge embedder {self.judge} is missing; train it first (`make bundles` does) or pass --judge."
            )

    # ------------------------------------------------------------ runs

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / f"{arm}-s{seed}"

    def run_settings(self, arm: str, seed: int) -> tuple[str, Path, dict]:
        """(recipe, config file, overrides) of one run."""
        from training.stage_adaptive import regime_range

        recipe, config, own = ARMS[arm]
        config = self.configs.get(config.name, config)
        settings = self._merge(self.overrides, step_settings(recipe, self.steps, self.eval_every))
        settings = self._merge(settings, {"seed": seed, "recipe": own} if own else {"seed": seed})
        if arm == "random-threshold":
            low, high = regime_range(self.run_dir("stage-adaptive", seed) / "metrics.jsonl")
            settings = self._merge(settings, {"recipe": {"control_range": [low, high]}})
        return recipe, config, settings

    def is_done(self, arm: str, seed: int) -> bool:
        status = self.run_dir(arm, seed) / "status.json"
        if not status.is_file():
            return False
        record = json.loads(status.read_text())
        return record.get("state") == "done" and record.get("step") == self.steps

    def train(self, arm: str, seed: int) -> None:
        from training.trainer import train

        recipe, config, settings = self.run_settings(arm, seed)
        train(recipe, self.data, self.run_dir(arm, seed), config_path=config, overrides=settings, resume=True)

    # ------------------------------------------------------------ evaluations

    @property
    def evals_path(self) -> Path:
        return self.out / "evals.jsonl"

    def evals(self) -> list[dict]:
        from training.jsonl import read_jsonl

        return read_jsonl(self.evals_path, tolerate_torn_tail=True) if self.evals_path.is_file() else []

    def evaluate(self, arm: str, seed: int) -> None:
        """The cheap evaluation at every kept checkpoint and the full one at the last, where missing."""
        from training.evaluate import run as run_eval
        from training.trainer import export_run

        done = {(e["arm"], e["seed"], e["step"], e["kind"]) for e in self.evals()}
        wanted = [(step, "cheap") for step in range(self.eval_every, self.steps + 1, self.eval_every)]
        wanted.append((self.steps, "full"))
        for step, kind in wanted:
            if (arm, seed, step, kind) in done:
                continue
            bundle = self.out / "bundles" / f"{arm}-s{seed}-{step}"
            if not (bundle / "model.json").is_file():
                export_run(self.run_dir(arm, seed), bundle, data_dir=self.data, step=step)
            cheap = kind == "cheap"
            started = time.monotonic()
            report = run_eval(
                bundle,
                self.prompts,
                data=self.data,
                judge_path=self.judge,
                steps=self.eval_steps if cheap else self.final_steps,
                max_prompts=self.eval_prompts if cheap else self.final_prompts,
                split="val" if cheap else "test",
                verbose=False,
            )
            record = {
                "arm": arm,
                "seed": seed,
                "step": step,
                "kind": kind,
                **{k: report["headline"].get(k) for k in HEADLINE_FIGURES},
                "eval_s": round(time.monotonic() - started, 1),
            }
            with open(self.evals_path, "a") as f:
                f.write(json.dumps(_finite(record)) + "\n")
            fd = record["fd_judge"]
            print(f"  {arm} seed {seed} step {step} ({kind}): judge FD {_fmt(fd)}", flush=True)
            if cheap:
                shutil.rmtree(bundle, ignore_errors=True)  # the full one's bundle is kept, to listen to

    # ------------------------------------------------------------ the whole matrix

    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        todo = [(arm, seed) for seed in range(self.seeds) for arm in self.arms]
        for i, (arm, seed) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {arm}, seed {seed}: {self.steps} steps", flush=True)
            if not self.is_done(arm, seed):
                self.train(arm, seed)
            self.evaluate(arm, seed)
        path = write_report(self)
        print(f"report in {path} ({(time.monotonic() - started) / 60:.0f} min this time)")
        return path


# ---------------------------------------------------------------- the report


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step where a falling curve of (step, value) reaches `target`, linearly interpolated
    between evaluations (None when it never does)."""
    previous = None
    for step, value in curve:
        if value is not None and value <= target:
            if previous is None:
                return float(step)
            (s0, v0) = previous
            return float(s0 + (step - s0) * (v0 - target) / (v0 - value)) if v0 != value else float(step)
        if value is not None:
            previous = (step, value)
    return None


def step_seconds(metrics: Path) -> float | None:
    """Training seconds per step of one run: the slope of its logged elapsed_s (which counts only the
    training loop's own time, across resumes) from its first logged step to its last, so the one-off
    start (caption encoding, loading) is left out. None without two logged steps."""
    from training.jsonl import read_jsonl

    if not metrics.is_file():
        return None
    rows = [r for r in read_jsonl(metrics, tolerate_torn_tail=True) if r.get("step") and "elapsed_s" in r]
    if len(rows) < 2 or rows[-1]["step"] <= rows[0]["step"]:
        return None
    return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])


def summarise(exp: Experiment) -> dict:
    """Everything the report says, as numbers: per arm and seed the cheap curves and the full figures,
    the steps to reach static's final judge FD, the paired comparisons and whether the target was met."""
    evals = exp.evals()
    curves: dict[str, dict[int, list[tuple[int, dict]]]] = {}
    final: dict[str, dict[int, dict]] = {}
    for e in sorted(evals, key=lambda e: e["step"]):
        if e["kind"] == "cheap":
            curves.setdefault(e["arm"], {}).setdefault(e["seed"], []).append((e["step"], e))
        else:
            final.setdefault(e["arm"], {})[e["seed"]] = e
    reach: dict[str, dict[int, float | None]] = {}
    for arm, by_seed in curves.items():
        for seed, rows in by_seed.items():
            base = curves.get("static", {}).get(seed)
            if not base or base[-1][1]["fd_judge"] is None:
                continue
            target = base[-1][1]["fd_judge"]  # static's last cheap judge FD: the same yardstick as the curve
            curve = [(step, row["fd_judge"]) for step, row in rows]
            reach.setdefault(arm, {})[seed] = steps_to_reach(curve, target)
    paired = {}
    for other in ("static", *CONTROLS):
        diffs = [
            final["stage-adaptive"][s]["fd_judge"] - final[other][s]["fd_judge"]
            for s in range(exp.seeds)
            if s in final.get("stage-adaptive", {})
            and s in final.get(other, {})
            and final["stage-adaptive"][s]["fd_judge"] is not None
            and final[other][s]["fd_judge"] is not None
        ]
        if diffs:
            paired[other] = {
                "diffs": diffs,
                "mean": float(np.mean(diffs)),
                "std": float(np.std(diffs)),
                "wins": sum(d < 0 for d in diffs),
                "seeds": len(diffs),
            }
    speed = {
        arm: {s: step_seconds(exp.run_dir(arm, s) / "metrics.jsonl") for s in range(exp.seeds)}
        for arm in exp.arms
    }
    sa_reach = reach.get("stage-adaptive", {})
    fast = [
        s
        for s in range(exp.seeds)
        if sa_reach.get(s) is not None and sa_reach[s] <= TARGET_STEP_RATIO * exp.steps
    ]
    # a control that was not run is not beaten
    beats_controls = all(
        c in paired and paired[c]["wins"] == paired[c]["seeds"] == exp.seeds for c in CONTROLS
    )
    target_met = len(fast) == exp.seeds and beats_controls
    return {
        "curves": curves,
        "final": final,
        "reach": reach,
        "paired": paired,
        "step_seconds": speed,
        "target": {
            "seeds_fast_enough": fast,
            "beats_both_controls_every_seed": beats_controls,
            "met": target_met,
        },
    }


def write_report(exp: Experiment) -> Path:
    """report.md, curves.png and regime.png from the experiment folder's evaluations and run metrics."""
    summary = summarise(exp)
    _plot_curves(exp, summary, exp.out / "curves.png")
    _plot_regime(exp, exp.out / "regime.png")
    lines = [
        "# Stage-adaptive training against its baselines",
        "",
        f"{exp.steps} steps per run, seeds 0..{exp.seeds - 1}, corpus `{exp.data}`, judge `{exp.judge}`.",
        f"Cheap evaluations every {exp.eval_every} steps ({exp.eval_prompts} prompts of `{exp.prompts}`, "
        f"{exp.eval_steps} Euler steps with CFG, 5 samples, val split); the full one at step {exp.steps} "
        f"({exp.final_prompts or 'all'} prompts, {exp.final_steps} steps, test split). "
        "Reproduce: `soundloom experiment stage-adaptive` with the same flags (`evals.jsonl` holds every figure).",
        "",
        "## Target",
        "",
        f"Stage-adaptive reaches the static recipe's final judge FD in <= {TARGET_STEP_RATIO:g}x the steps on "
        f"{len(summary['target']['seeds_fast_enough'])} of {exp.seeds} seeds; it beats both controls on every "
        f"seed: {'yes' if summary['target']['beats_both_controls_every_seed'] else 'no'}. "
        f"**Target {'met' if summary['target']['met'] else 'not met'}.**",
        "",
        "## Final figures (full evaluation, mean ± std over seeds)",
        "",
        "| arm | " + " | ".join(HEADLINE_FIGURES) + " | steps to static's final judge FD |",
        "| --- |" + " --- |" * (len(HEADLINE_FIGURES) + 1),
    ]
    for arm in exp.arms:
        rows = list(summary["final"].get(arm, {}).values())
        cells = [_mean_std([r.get(k) for r in rows]) for k in HEADLINE_FIGURES]
        reached = list(summary["reach"].get(arm, {}).values())
        never = sum(r is None for r in reached)
        steps = _mean_std([r for r in reached if r is not None], digits=0)
        cells.append(steps + (f" ({never} never)" if never else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired comparison of the final judge FD (stage-adaptive minus the other, per seed)", ""]
    for other, p in summary["paired"].items():
        diffs = ", ".join(f"{d:+.4g}" for d in p["diffs"])
        lines.append(
            f"- against {other}: {diffs}; mean {p['mean']:+.4g} ± {p['std']:.3g}; "
            f"stage-adaptive lower on {p['wins']} of {p['seeds']} seeds"
        )
    lines += [
        "",
        "## Training speed (seconds per step, from each run's logged elapsed time)",
        "",
        "The issue keeps the recipe's own cost (probes, SSL features, the head, the structure term) under "
        "15% of step time. Runs go one after another on the same machine, so background load moves these "
        "figures too.",
        "",
    ]
    static_speed = [v for v in summary["step_seconds"].get("static", {}).values() if v is not None]
    for arm in exp.arms:
        values = [v for v in summary["step_seconds"].get(arm, {}).values() if v is not None]
        if not values:
            continue
        cost = ""
        if arm != "static" and static_speed:
            cost = f"; {100 * (np.mean(values) / np.mean(static_speed) - 1):+.1f}% against static"
        lines.append(f"- {arm}: {_mean_std(values)} s{cost}")
    lines += [
        "",
        "## Curves",
        "",
        "![curves](curves.png)",
        "",
        "Mean over seeds, shaded from the lowest to the highest seed.",
        "",
        "## Regime variables",
        "",
        "![regime](regime.png)",
        "",
    ]
    path = exp.out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    write_atomic(exp.out / "summary.json", json.dumps(_finite(_keys_as_text(summary)), indent=1) + "\n")
    return path


def _plot_curves(exp: Experiment, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = ("fd_judge", "fd_librosa", "pitch_accuracy", "tempo_accuracy")
    fig, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 4))
    for ax, key in zip(axes, figures):
        for arm in exp.arms:
            by_seed = summary["curves"].get(arm, {})
            steps = sorted({step for rows in by_seed.values() for step, _ in rows})
            table = [[dict(rows).get(step, {}).get(key) for step in steps] for rows in by_seed.values()]
            values = np.array([[np.nan if v is None else v for v in row] for row in table], dtype=float)
            if values.size == 0 or np.isnan(values).all():
                continue
            ax.plot(steps, np.nanmean(values, 0), label=arm)
            ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.15)
        ax.set_title(key)
        ax.set_xlabel("step")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_regime(exp: Experiment, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.jsonl import read_jsonl

    keys = ("r", "probe_d", "align_lambda", "t_loc", "struct_weight")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))
    for arm in exp.arms:
        if ARMS[arm][0] == "static":
            continue
        for seed in range(exp.seeds):
            metrics = exp.run_dir(arm, seed) / "metrics.jsonl"
            if not metrics.is_file():
                continue
            rows = read_jsonl(metrics, tolerate_torn_tail=True)
            for ax, key in zip(axes, keys):
                points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), lw=0.8, label=arm if seed == 0 else None, color=_colour(arm))
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("step")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _colour(arm: str) -> str:
    return f"C{list(ARMS).index(arm)}"


def _mean_std(values: list, digits: int | None = None) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, std = float(np.mean(values)), float(np.std(values))
    if digits is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.4g} ± {std:.2g}"


def _fmt(value) -> str:
    return "null" if value is None else f"{value:.4g}"


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _keys_as_text(value):
    if isinstance(value, dict):
        return {str(k): _keys_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_keys_as_text(v) for v in value]
    return value
