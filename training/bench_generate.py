"""`soundloom bench generate`: how long text-to-audio takes on this machine, and where the time goes.

Loads the generator, warms up with two generations, then generates `seconds` (12) of audio for each
of `prompts` (20) distinct prompts of assets/prompts/dev.jsonl at the bundle's default steps, sampler
and guidance, and reports medians of the total time, the DiT time per step, text encoding and decode.
Each measured prompt is new to the text encoder's cache, so text time is a real encode.

The target (issue: generation speed) is 12 s of audio at 50 Euler steps with classifier-free guidance
in at most 3 s on 2 CPU cores; the verdict is printed only for runs with those settings.
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
) -> dict:
    """Measure generation speed; returns (and with json_out, writes) the report and prints a table.

    `prompts`, `seconds` and `warmup` exist so tests can make the bench cheap; the CLI uses the defaults.
    """
    from pipelines.generator import load_generator

    started = time.time()
    gen = load_generator(model_path)
    measured, warm = pick_prompts(Path(prompts_file), prompts, warmup)
    print(f"generator bundle: {gen.bundle_path}", flush=True)
    for i, prompt in enumerate(warm):
        gen.generate(prompt, seconds=seconds, seed=i)

    rows = []
    for i, prompt in enumerate(measured):
        gen.generate(prompt, seconds=seconds, seed=1000 + i)
        rows.append({"prompt": prompt, **{k: round(v, 5) for k, v in gen.timings.items()}})
        print(f"  {i + 1:>2}/{len(measured)} {gen.timings['total_s']:.2f} s  {prompt}", flush=True)

    def median(key: str, scale: float = 1.0) -> float:
        return round(statistics.median(r[key] for r in rows) * scale, 2)

    config = {
        "seconds": seconds,
        "steps": gen.default_steps,
        "guidance": gen.default_guidance,
        "sampler": gen.default_sampler,
        "bf16": gen.bf16,
        "prompts": len(rows),
        "warmup": len(warm),
        "model_hash": gen.bundle_hash,
    }
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    medians = {
        "total_s": median("total_s"),
        "dit_step_ms": median("dit_step_ms"),
        "text_ms": median("text_s", 1e3),
        "decode_ms": median("decode_s", 1e3),
        "x_realtime": round(seconds / statistics.median(r["total_s"] for r in rows), 2),
    }
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
        f"bf16 {c['bf16']}, {c['prompts']} prompts, {report['machine']['torch_threads']} torch threads "
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
