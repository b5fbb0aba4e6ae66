"""`soundloom bench generate`: how long text-to-audio takes on this machine, and where the time goes.

Loads the generator, warms up with two generations, then generates `seconds` (12) of audio for each
of `prompts` (20) distinct prompts of assets/prompts/dev.jsonl at the bundle's default steps, sampler
and guidance, and reports medians of the total time, the DiT time per step, text encoding and decode.
Each measured prompt is new to the text encoder's cache, so text time is a real encode.

The target (issue: generation speed) is 12 s of audio at 50 Euler steps with classifier-free guidance
in at most 3 s on 2 CPU cores; the verdict is printed only for runs with those settings.

`run_options_bench` (`soundloom bench generate --options`) measures each inference option of
pipelines/inference.py against the default in one run: fp32, int8, torch.compile, one thread and all
threads (and cuda or mps where present). Every option gets its own generator, warmed up alone; then the
same prompts and seeds go through every option in turn, the order rotated per prompt so a machine that
slows down or speeds up during the run does not favour one option. Besides the time it reports how far
each option's audio is from the default's (SNR in dB, same prompt and seed): a speed figure only, the
quality of an option is for `soundloom eval --int8 ...` to measure.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic_files import write_atomic

DEV_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "dev.jsonl"
TARGET = {"seconds": 12.0, "steps": 50, "sampler": "euler", "threads": 2, "max_total_s": 3.0}


def pick_prompts(path: Path, count: int, warmup: int) -> tuple[list[str], list[str]]:
    """`count` distinct prompts spread over the file (all categories), and `warmup` others to warm up with."""
    from training.eval_metrics import read_prompts

    prompts = list(dict.fromkeys(r["prompt"] for r in read_prompts(path)))
    count = min(count, len(prompts))
    picks = sorted({int(i) for i in np.linspace(0, len(prompts) - 1, count)})
    measured = [prompts[i] for i in picks]
    rest = [p for p in prompts if p not in measured] or measured
    return measured, [rest[i % len(rest)] for i in range(warmup)]


def run_bench(
    model_path: str | Path | None,
    json_out: str | Path | None = None,
    *,
    prompts: int = 20,
    seconds: float = 12.0,
    warmup: int = 2,
    prompts_file: str | Path = DEV_PROMPTS,
    options: dict | None = None,
) -> dict:
    """Measure generation speed; returns (and with json_out, writes) the report and prints a table.

    `prompts`, `seconds` and `warmup` exist so tests can make the bench cheap; the CLI uses the defaults.
    `options` are load_generator's inference keywords (bf16, int8, compile, threads, device).
    """
    from pipelines.generator import load_generator

    started = time.time()
    gen = load_generator(model_path, **(options or {}))
    measured, warm = pick_prompts(Path(prompts_file), prompts, warmup)
    print(f"generator bundle: {gen.bundle_path}", flush=True)
    for i, prompt in enumerate(warm):
        gen.generate(prompt, seconds=seconds, seed=i)

    rows = []
    for i, prompt in enumerate(measured):
        gen.generate(prompt, seconds=seconds, seed=1000 + i)
        rows.append({"prompt": prompt, **{k: round(v, 5) for k, v in gen.timings.items()}})
        print(f"  {i + 1:>2}/{len(measured)} {gen.timings['total_s']:.2f} s  {prompt}", flush=True)

    config = {
        "seconds": seconds,
        "steps": gen.default_steps,
        "guidance": gen.default_guidance,
        "sampler": gen.default_sampler,
        "bf16": gen.bf16,
        "inference": gen.options.label,
        "prompts": len(rows),
        "warmup": len(warm),
        "model_hash": gen.bundle_hash,
    }
    machine = machine_record()
    medians = median_timings(rows, seconds)
    report = {
        "bundle": str(gen.bundle_path),
        "machine": machine,
        "config": config,
        "median": medians,
        "target": verdict(config, machine, medians),
        "runs": rows,
        "wall_time_s": round(time.time() - started, 1),
    }
    print_table(report)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(json_out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_out}")
    return report


def verdict(config: dict, machine: dict, medians: dict) -> dict:
    """PASS / FAIL against the target when the run used the target's settings; otherwise not applicable."""
    same = (
        config["seconds"] == TARGET["seconds"]
        and config["steps"] == TARGET["steps"]
        and config["sampler"] == TARGET["sampler"]
        and config["guidance"] != 1.0  # guidance 1 skips the unconditional half: that is no CFG
    )
    out = {**TARGET, "applies": same, "threads_match": machine["torch_threads"] == TARGET["threads"]}
    out["result"] = ("PASS" if medians["total_s"] <= TARGET["max_total_s"] else "FAIL") if same else "n/a"
    return out


def print_table(report: dict) -> None:
    c, m, t = report["config"], report["median"], report["target"]
    print()
    print(
        f"{c['seconds']:g} s of audio, {c['steps']} {c['sampler']} steps, guidance {c['guidance']:g}, "
        f"{c['inference']}, {c['prompts']} prompts, {report['machine']['torch_threads']} torch threads "
        f"({report['machine']['cpu_count']} CPUs)"
    )
    print(f"{'median':<16} {'value':>10}")
    print(f"{'total':<16} {m['total_s']:>8.2f} s")
    print(f"{'DiT per step':<16} {m['dit_step_ms']:>7.1f} ms")
    print(f"{'text encoding':<16} {m['text_ms']:>7.1f} ms")
    print(f"{'decode':<16} {m['decode_ms']:>7.1f} ms")
    print(f"{'real time':<16} {m['x_realtime']:>8.2f} x")
    target = (
        f"target: {t['seconds']:g} s at {t['steps']} {t['sampler']} steps with CFG in <= "
        f"{t['max_total_s']:g} s on {t['threads']} cores"
    )
    if t["result"] == "n/a":
        print(f"{target}: n/a (this run used other settings)")
    else:
        threads = report["machine"]["torch_threads"]
        note = "" if t["threads_match"] else f" (measured on {threads} thread{'s' * (threads != 1)})"
        print(f"{target}: {t['result']}{note}")


def median_timings(rows: list[dict], seconds: float) -> dict:
    """Medians of generations' timings (rows of Generator.timings) and the real-time factor."""

    def median(key: str, scale: float = 1.0) -> float:
        return round(statistics.median(r[key] for r in rows) * scale, 2)

    return {
        "total_s": median("total_s"),
        "dit_step_ms": median("dit_step_ms"),
        "text_ms": median("text_s", 1e3),
        "decode_ms": median("decode_s", 1e3),
        "x_realtime": round(seconds / statistics.median(r["total_s"] for r in rows), 2),
    }


def machine_record() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- every inference option against the default


def option_variants() -> dict[str, dict]:
    """The options `bench generate --options` compares: name -> load_generator keywords ("default": none)."""
    threads, cpus = torch.get_num_threads(), os.cpu_count() or 1
    variants = {"default": {}, "fp32": {"bf16": False}, "int8": {"int8": True}, "compile": {"compile": True}}
    if threads != 1:
        variants["1 thread"] = {"threads": 1}
    if cpus != threads:
        variants[f"{cpus} threads"] = {"threads": cpus}
    if torch.cuda.is_available():
        variants["cuda"] = {"device": "cuda"}
    if torch.backends.mps.is_available():
        variants["mps"] = {"device": "mps"}
    return variants


def snr_db(reference: np.ndarray, other: np.ndarray) -> float | None:
    """10 log10(|reference|^2 / |other - reference|^2); None when they are identical."""
    reference = reference.astype(np.float64)
    error = float(np.sum((other - reference) ** 2))
    return None if error == 0.0 else round(10 * float(np.log10(float(np.sum(reference**2)) / error)), 2)


def run_options_bench(
    model_path: str | Path | None,
    json_out: str | Path | None = None,
    *,
    prompts: int = 20,
    seconds: float = 12.0,
    warmup: int = 2,
    prompts_file: str | Path = DEV_PROMPTS,
    variants: dict[str, dict] | None = None,
) -> dict:
    """Time every inference option against the default on the same prompts and seeds (medians after
    warm-up); returns (and with json_out, writes) the report and prints a table. `variants` maps a name to
    load_generator keywords and must hold "default" (None: option_variants())."""
    from pipelines.generator import load_generator

    started = time.time()
    variants = dict(variants or option_variants())
    assert "default" in variants, "the options are measured against the default"
    threads = torch.get_num_threads()
    measured, warm = pick_prompts(Path(prompts_file), prompts, warmup)
    gens, first_call = {}, {}
    for name, options in variants.items():
        gens[name] = gen = load_generator(model_path, **options)
        torch.set_num_threads(gen.options.threads or threads)
        for i, prompt in enumerate(warm):  # the first call pays torch.compile's compiling
            gen.generate(prompt, seconds=seconds, seed=i)
            if i == 0:
                first_call[name] = round(gen.timings["total_s"], 3)
        torch.set_num_threads(threads)
        print(
            f"{name}: {gen.options.label}, warmed up (first call {first_call.get(name, 0):.2f} s)", flush=True
        )

    names = list(variants)
    rows = []
    for i, prompt in enumerate(measured):
        audio = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            gen = gens[name]
            torch.set_num_threads(gen.options.threads or threads)
            audio[name] = gen.generate(prompt, seconds=seconds, seed=1000 + i).samples
            torch.set_num_threads(threads)
            rows.append(
                {"option": name, "prompt": prompt, **{k: round(v, 5) for k, v in gen.timings.items()}}
            )
        for row in rows[-len(names) :]:
            row["snr_db_vs_default"] = snr_db(audio["default"], audio[row["option"]])
        print(f"  {i + 1:>2}/{len(measured)} {prompt}", flush=True)

    default = gens["default"]
    report = {
        "bundle": str(default.bundle_path),
        "machine": machine_record(),
        "config": {
            "seconds": seconds,
            "steps": default.default_steps,
            "guidance": default.default_guidance,
            "sampler": default.default_sampler,
            "prompts": len(measured),
            "warmup": len(warm),
            "model_hash": default.bundle_hash,
        },
        "options": {},
        "runs": rows,
    }

    def median_of(option: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["option"] == option)

    for name, gen in gens.items():
        snrs = [
            r["snr_db_vs_default"] for r in rows if r["option"] == name and r["snr_db_vs_default"] is not None
        ]
        report["options"][name] = {
            "options": variants[name],
            "label": gen.options.label,
            "median": median_timings([r for r in rows if r["option"] == name], seconds),
            "speedup_total": round(median_of("default", "total_s") / median_of(name, "total_s"), 2),
            "speedup_dit": round(median_of("default", "dit_s") / median_of(name, "dit_s"), 2),
            "snr_db_vs_default": round(statistics.median(snrs), 2) if snrs else None,
            "first_call_s": first_call.get(name),
            "compile_failed": getattr(gen._sampling_dit, "failure", None),
        }
    report["wall_time_s"] = round(time.time() - started, 1)
    print_options_table(report)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(json_out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_out}")
    return report


def print_options_table(report: dict) -> None:
    c, m = report["config"], report["machine"]
    print()
    print(
        f"{c['seconds']:g} s of audio, {c['steps']} {c['sampler']} steps, guidance {c['guidance']:g}; medians "
        f"over {c['prompts']} prompts after {c['warmup']} warm-up, {m['torch_threads']} torch threads "
        f"({m['cpu_count']} CPUs)"
    )
    head = ("option", "runs as", "total s", "DiT/step ms", "text ms", "decode ms", "x real time", "speedup",
            "DiT speedup", "SNR dB", "1st call s")  # fmt: skip
    print(f"{head[0]:<11} {head[1]:<18}" + "".join(f"{h:>12}" for h in head[2:]))
    for name, row in report["options"].items():
        md = row["median"]
        snr = "-" if row["snr_db_vs_default"] is None else f"{row['snr_db_vs_default']:.1f}"
        cells = (f"{md['total_s']:.3f}", f"{md['dit_step_ms']:.1f}", f"{md['text_ms']:.1f}", f"{md['decode_ms']:.1f}",
                 f"{md['x_realtime']:.1f}", f"{row['speedup_total']:.2f}x", f"{row['speedup_dit']:.2f}x", snr,
                 f"{row['first_call_s'] or 0:.2f}")  # fmt: skip
        print(f"{name:<11} {row['label']:<18}" + "".join(f"{cell:>12}" for cell in cells))
        if row["compile_failed"]:
            print(f"{'':<11} torch.compile failed, so it ran uncompiled: {row['compile_failed']}")
    print(
        "SNR: the option's audio against the default's for the same prompt and seed (quality: soundloom eval)."
    )
