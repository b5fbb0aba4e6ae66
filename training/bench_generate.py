"""`soundloom bench generate`: how long text-to-audio takes on this machine, and where the time goes.

Loads the generator, warms up with two generations, then generates `seconds` (12) of audio for each
of `prompts` (20) distinct prompts of assets/prompts/dev.jsonl at the bundle's default steps, sampler
and guidance, and reports medians of the total time, the DiT time per step, text encoding and decode.
Each measured prompt is new to the text encoder's cache, so text time is a real encode.

The target (issue: generation speed) is 12 s of audio at 50 Euler steps with classifier-free guidance
in at most 3 s on 2 CPU cores; the verdict is printed only for runs with those settings.

`run_options_bench` (`soundloom bench generate --options`) measures each inference option of
pipelines/inference.py against the default in one run: the other precision (fp32 or bf16), int8,
torch.compile, one thread and all threads (and cuda or mps where present). Every option gets its own generator, warmed up alone; then the
same prompts and seeds go through every option in turn, the order rotated per prompt so a machine that
slows down or speeds up during the run does not favour one option. Besides the time it reports how far
each option's audio is from the default's (SNR in dB, same prompt and seed): a speed figure only, the
quality of an option is for `soundloom eval --int8 ...` to measure.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic_files import write_report

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
        write_report(json_out, report)
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
    from pipelines.inference import native_bf16

    other = {"fp32": {"bf16": False}} if native_bf16() else {"bf16": {"bf16": True}}  # the other precision
    variants = {"default": {}, **other, "int8": {"int8": True}, "compile": {"compile": True}}
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
        write_report(json_out, report)
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


# ---------------------------------------------------------------- two generators against each other


def run_compare_bench(
    model_path: str | Path | None,
    compare_path: str | Path,
    json_out: str | Path | None = None,
    *,
    prompts: int = 20,
    seconds: float = 12.0,
    warmup: int = 2,
    prompts_file: str | Path = DEV_PROMPTS,
    options: dict | None = None,
) -> dict:
    """`bench generate --compare`: --model against another generator bundle in one run, each at its own
    bundle's steps, sampler and guidance. Per model: the cold start (load_generator plus the first
    generation, before any warm-up), medians over the same prompts and seeds (the models alternate per
    prompt), and the DiT's FLOPs per generation against this machine's matmul rate in the precision the
    generators compute in (bf16 or float32: the compute floor of the sampling loop). Also the process's
    peak resident memory, once, for both models together.
    Returns (and with json_out, writes under "compare") the report and prints a table."""
    from pipelines.generator import load_generator

    started = time.time()
    measured, warm = pick_prompts(Path(prompts_file), prompts, warmup + 1)
    cold_prompt, warm = warm[0], warm[1:]
    paths = {"model": model_path, "compare": compare_path}
    gens, cold = {}, {}
    for role, path in paths.items():
        t0 = time.perf_counter()
        gen = load_generator(path, **(options or {}))
        loaded = time.perf_counter()
        gen.generate(cold_prompt, seconds=seconds, seed=0)
        done = time.perf_counter()
        gens[role] = gen
        cold[role] = {
            "cold_start_s": round(done - t0, 3),
            "load_s": round(loaded - t0, 3),
            "first_generate_s": round(done - loaded, 3),
        }
        print(f"{role}: {gen.bundle_path}, cold start {done - t0:.2f} s", flush=True)

    flops = {}
    for role, gen in gens.items():  # warm-up; its first generation also counts the DiT's FLOPs
        flops[role] = count_dit_flops(gen, warm[0] if warm else cold_prompt, seconds)
        for i, prompt in enumerate(warm[1:], start=1):
            gen.generate(prompt, seconds=seconds, seed=i)

    roles = list(gens)
    rows = []
    for i, prompt in enumerate(measured):
        for role in roles if i % 2 == 0 else roles[::-1]:
            gen = gens[role]
            gen.generate(prompt, seconds=seconds, seed=1000 + i)
            rows.append({"model": role, "prompt": prompt, **{k: round(v, 5) for k, v in gen.timings.items()}})
        print(f"  {i + 1:>2}/{len(measured)} {prompt}", flush=True)

    matmul = matmul_flops_per_s(dtype=torch.bfloat16 if gens["model"].bf16 else torch.float32)
    models = {}
    for role, gen in gens.items():
        own = [r for r in rows if r["model"] == role]
        medians = {
            **median_timings(own, seconds),
            "total_s": round(statistics.median(r["total_s"] for r in own), 5),
            "dit_s": round(statistics.median(r["dit_s"] for r in own), 5),
        }
        floor_s = flops[role]["flops"] / matmul["flops_per_s"]
        models[role] = {
            "bundle": str(gen.bundle_path),
            "model_hash": gen.bundle_hash,
            "steps": gen.default_steps,
            "sampler": gen.default_sampler,
            "guidance": gen.default_guidance,
            "inference": gen.options.label,
            **cold[role],
            "median": medians,
            "dit_flops": flops[role],
            "floor_s": round(floor_s, 6),
            "dit_s_over_floor": round(medians["dit_s"] / floor_s, 2) if floor_s > 0 else None,
        }
    m, c = models["model"]["median"], models["compare"]["median"]
    compare = {
        "machine": machine_record(),
        "config": {"seconds": seconds, "prompts": len(measured), "warmup": len(warm), "order": "alternating"},
        "models": models,
        "ratios": {
            "meaning": "compare / model medians: above 1, --model is the faster",
            "dit_s": round(c["dit_s"] / m["dit_s"], 3),
            "total_s": round(c["total_s"] / m["total_s"], 3),
        },
        "matmul": matmul,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_note": "the process's resident high-water mark (VmHWM), both models loaded and run together",
        "runs": rows,
        "wall_time_s": round(time.time() - started, 1),
    }
    report = {"compare": compare}
    print_compare_table(compare)
    if json_out:
        write_report(json_out, report)
    return report


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no formula for the CPU's fused attention; count it as the two matmuls it does."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


class _FirstCallFlops:
    """Wraps a sampling DiT: counts the FLOPs of its first forward (FlopCounterMode) and every forward."""

    def __init__(self, model):
        self.model, self.calls, self.flops, self.batch, self.frames = model, 0, None, None, None

    def __call__(self, x, t, **inputs):
        self.calls += 1
        if self.flops is not None:
            return self.model(x, t, **inputs)
        from torch.utils.flop_counter import FlopCounterMode

        custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            out = self.model(x, t, **inputs)
        self.flops, self.batch, self.frames = counter.get_total_flops(), int(x.shape[0]), int(x.shape[-1])
        return out


def count_dit_flops(gen, prompt: str, seconds: float) -> dict:
    """The DiT's FLOPs for one generation at the bundle's defaults: one forward at the generation's shape
    (batch 2 under guidance, where cfg_model runs both halves in one forward) times the forwards made."""
    wrapper = _FirstCallFlops(gen._sampling_dit)
    gen._sampling_dit = wrapper
    try:
        gen.generate(prompt, seconds=seconds, seed=0)
    finally:
        gen._sampling_dit = wrapper.model
    return {
        "flops": int(wrapper.flops * wrapper.calls),
        "flops_per_forward": int(wrapper.flops),
        "forwards": wrapper.calls,
        "batch": wrapper.batch,
        "frames": wrapper.frames,
    }


def matmul_flops_per_s(size: int = 2048, reps: int = 5, dtype: torch.dtype = torch.bfloat16) -> dict:
    """This machine's matmul rate in `dtype`: a size x size matmul, the fastest of `reps` after one warm-up."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "reps": reps, "best_s": round(best, 6),
            "flops_per_s": 2 * size**3 / best}  # fmt: skip


def peak_rss_mib() -> float | None:
    """The process's resident set high-water mark (VmHWM) in MiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def print_compare_table(c: dict) -> None:
    cfg, m, models = c["config"], c["machine"], c["models"]
    a, b = models["model"], models["compare"]
    print()
    print(
        f"{cfg['seconds']:g} s of audio; medians over {cfg['prompts']} prompts after {cfg['warmup']} warm-up, "
        f"the models alternating per prompt; {m['torch_threads']} torch threads ({m['cpu_count']} CPUs)"
    )
    print(f"model:   {a['bundle']}")
    print(f"compare: {b['bundle']}")
    print(f"{'':<20}{'model':>14}{'compare':>14}{'compare/model':>15}")

    def line(label: str, left: str, right: str, ratio: str = "") -> None:
        print(f"{label:<20}{left:>14}{right:>14}{ratio:>15}")

    line(
        "sampling",
        f"{a['steps']} {a['sampler']} g{a['guidance']:g}",
        f"{b['steps']} {b['sampler']} g{b['guidance']:g}",
    )
    line("cold start s", f"{a['cold_start_s']:.2f}", f"{b['cold_start_s']:.2f}")
    line(
        "total s",
        f"{a['median']['total_s']:.3f}",
        f"{b['median']['total_s']:.3f}",
        f"{c['ratios']['total_s']:.2f}x",
    )
    line(
        "DiT s", f"{a['median']['dit_s']:.3f}", f"{b['median']['dit_s']:.3f}", f"{c['ratios']['dit_s']:.2f}x"
    )
    line("DiT per step ms", f"{a['median']['dit_step_ms']:.1f}", f"{b['median']['dit_step_ms']:.1f}")
    line("text ms", f"{a['median']['text_ms']:.1f}", f"{b['median']['text_ms']:.1f}")
    line("decode ms", f"{a['median']['decode_ms']:.1f}", f"{b['median']['decode_ms']:.1f}")
    line("x real time", f"{a['median']['x_realtime']:.1f}", f"{b['median']['x_realtime']:.1f}")
    line("DiT GFLOP", f"{a['dit_flops']['flops'] / 1e9:.2f}", f"{b['dit_flops']['flops'] / 1e9:.2f}")
    line("compute floor s", f"{a['floor_s']:.3f}", f"{b['floor_s']:.3f}")
    over = [f"{x['dit_s_over_floor']:.1f}x" if x["dit_s_over_floor"] is not None else "-" for x in (a, b)]
    line("DiT s / floor", *over)
    mm = c["matmul"]
    print(
        f"floor: DiT FLOPs (batch {a['dit_flops']['batch']} and {b['dit_flops']['batch']} per forward) at "
        f"{mm['flops_per_s'] / 1e9:.1f} GFLOP/s, the best {mm['size']}x{mm['size']} {mm['dtype']} matmul of {mm['reps']}"
    )
    rss = "n/a" if c["peak_rss_mib"] is None else f"{c['peak_rss_mib']:.0f} MiB"
    print(f"peak resident memory (VmHWM): {rss}, both models in one process")
