"""`soundloom eval`: K generations per prompt, from the prompt text alone, graded against a corpus split.

What it reports (every measurement comes from training/eval_metrics.py):
  - judge space (the judge embedder, which no generator trains against): Fréchet distance of the
    generations to the split's clips, text-audio adherence, CCDS diversity among each prompt's K
    samples, and the memorisation share against an evenly spaced subset of the train split;
  - librosa: a Fréchet distance over fixed librosa features, and the DSP checks each prompt asks for
    (pitch within 50 cents, tempo within 2%, content that fills the request) plus clipping and loudness;
  - the same DSP checks on the split's real clips, as the ceiling a perfect copy of the corpus would reach;
  - all of it overall (the headline) and per prompt category.

Report on the test split; tune on val (`--split val`). The reference side (the split's librosa
features, DSP records and judge embeddings, the train subset's judge embeddings) is cached under
DATA/.cache/eval, keyed by the clips' content (and the judge's hash), so a second eval is faster.

`evaluate` is the core: it takes a plain `generate_fn(prompt, seconds, seed) -> Audio`, so it runs
as well on a fake generator as on a bundle; `run` is the CLI's entry point around it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pipelines.atomic_files import write_atomic
from pipelines.audio import Audio
from pipelines.errors import BadInput
from training import eval_metrics as em

MIN_SAMPLES = 5  # CCDS wants at least five samples per prompt
DEFAULT_SAMPLES = 5
DEFAULT_SECONDS = 5.0  # for prompts that name no length: the corpus' clips are 1-10 s
REFERENCE_LIMIT = 1000  # split clips measured at most (evenly spaced)
TRAIN_LIMIT = 400  # train clips embedded at most for the memorisation share (evenly spaced)
EMBED_BATCH = 16
CACHE_VERSION = 1  # bump when a cached measurement (librosa features, DSP checks) changes
CACHE_DIR = Path(".cache") / "eval"

GenerateFn = Callable[[str, float, int], Audio]
Progress = Callable[[int, int], None]  # (done, total)


# ---------------------------------------------------------------- small helpers


def _rows(x) -> np.ndarray:
    """float32 [N, D] from a numpy array or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def evenly_spaced(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list, first and last included."""
    if len(items) <= limit:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit)]


def generation_seed(seed: int, prompt: dict, sample: int) -> int:
    """The seed of one generation: a function of (seed, prompt, sample), so a subset of prompts keeps its seeds."""
    text = f"{seed}|{prompt.get('id')}|{prompt['prompt']}|{sample}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clip_expectations(record: dict) -> dict:
    """A corpus clip's manifest as a prompt record: what `measure_generation` should find in it.

    The manifest says pitch and tempo but not whether a clip is meant as sustained or one-shot, so
    the kind is left out here and both kinds are measured beside it (see `measure_reference`).
    """
    params = record.get("params") or {}
    return {
        "prompt": str(record["id"]),
        "category": params.get("category"),
        "pitch_hz": params.get("f0_hz"),
        "bpm": params.get("bpm"),
        "kind": None,
    }


# ---------------------------------------------------------------- the reference side


def embed_clips(
    records: list[dict],
    load_clip: Callable[[dict], Audio],
    judge,
    *,
    progress: bool = False,
    desc: str = "embedding clips",
) -> np.ndarray:
    """Judge embeddings [N, D] of manifest records' clips, EMBED_BATCH clips at a time."""
    from tqdm import tqdm

    rows = []
    for first in tqdm(
        range(0, len(records), EMBED_BATCH),
        desc=desc,
        unit="batch",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0,
    ):
        rows.append(_rows(judge.embed_audio([load_clip(r) for r in records[first : first + EMBED_BATCH]])))
    return np.concatenate(rows) if rows else np.zeros((0, judge.dim), np.float32)


def measure_reference(
    records: list[dict],
    load_clip: Callable[[dict], Audio],
    judge=None,
    *,
    progress: bool = False,
) -> dict:
    """Librosa features, DSP records and judge embeddings of real clips (manifest records).

    Returns {"ids", "categories", "librosa" [N, 78], "dsp" (measure_generation records, plus whether
    each clip fills a sustained and a one-shot request), "judge" [N, D] | None, "judge_text" [N, D] |
    None (each clip's first caption)}.
    """
    from tqdm import tqdm

    features, dsp = [], []
    for record in tqdm(
        records,
        desc="measuring reference clips",
        unit="clip",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0,
    ):
        audio = load_clip(record)
        features.append(em.librosa_features(audio))
        measured = em.measure_generation(audio, clip_expectations(record))
        for kind in em.KINDS:
            measured[f"fills_{kind}"] = em.fills_request(audio, kind)[0]
        dsp.append(measured)
    reference = {
        "ids": [str(r["id"]) for r in records],
        "categories": [(r.get("params") or {}).get("category") for r in records],
        "librosa": np.stack(features) if features else np.zeros((0, 2 * (em.N_MFCC + 7 + 12)), np.float32),
        "dsp": dsp,
        "judge": None,
        "judge_text": None,
    }
    if judge is not None:
        reference.update(_judge_reference(records, load_clip, judge, progress=progress))
    return reference


def _judge_reference(records: list[dict], load_clip, judge, *, progress: bool) -> dict:
    """The clips' judge embeddings and their first captions' text embeddings."""
    captions = [(r.get("captions") or [""])[0] for r in records]
    return {
        "judge": embed_clips(records, load_clip, judge, progress=progress, desc="embedding reference clips"),
        "judge_text": _rows(judge.embed_text(captions)),
    }


def _content_key(data_dir: Path, records: list[dict]) -> str:
    """sha256 over the clips' manifest records and audio bytes: the cache key of anything measured from them."""
    digest = hashlib.sha256(f"eval-cache-{CACHE_VERSION}".encode())
    for record in records:
        digest.update(json.dumps(record, sort_keys=True).encode())
        digest.update(file_sha256(data_dir / record["path"]).encode())
    return digest.hexdigest()


def _read_cache(path: Path) -> dict | None:
    """A cache file's content, or None when it is missing or unreadable (it is then measured again)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, SafetensorError, ValueError):
        return None
    return {**meta, **tensors}


def _write_cache(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> None:
    """Write a cache entry (best effort: a read-only corpus just goes uncached). JSON first, tensors last,
    so a reader that finds the tensors finds their JSON."""
    from safetensors.numpy import save

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path.with_suffix(".json"), json.dumps(meta) + "\n")
        write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))
    except OSError:
        pass


def _clip_loader(data_dir: Path) -> Callable[[dict], Audio]:
    from pipelines.audio import load_audio

    def load(record: dict) -> Audio:
        try:
            return load_audio(data_dir / record["path"])
        except BadInput as e:
            raise BadInput(f"The corpus clip {record['path']} in '{data_dir}' is unreadable ({e}).") from None

    return load


def _split_records(data_dir: Path, split: str, limit: int) -> list[dict]:
    from training.corpus import read_manifest

    records = read_manifest(data_dir, split=split)
    missing = [r["path"] for r in records if not (data_dir / r["path"]).is_file()]
    if missing:
        raise BadInput(
            f"The corpus in '{data_dir}' lists {len(missing)} clip(s) that are missing, e.g. {missing[0]}; "
            "rebuild or repair the corpus."
        )
    return evenly_spaced(records, limit)


def reference_set(
    data_dir: Path | str,
    judge=None,
    *,
    judge_key: str | None = None,
    split: str = "test",
    limit: int = REFERENCE_LIMIT,
    progress: bool = False,
) -> dict:
    """`measure_reference` of a corpus split (evenly spaced, at most `limit` clips), cached by content.

    Judge embeddings are cached only when `judge_key` (e.g. the judge bundle's hash) names the judge.
    """
    data_dir = Path(data_dir)
    records = _split_records(data_dir, split, limit)
    if len(records) < 2:
        raise BadInput(
            f"The corpus in '{data_dir}' has {len(records)} {split} clip(s); evaluation needs at least two "
            "(clips are split by a hash of their material: build a bigger corpus)."
        )
    key = _content_key(data_dir, records)
    cache = data_dir / CACHE_DIR / f"{split}-{key[:16]}.safetensors"
    judge_cache = (
        cache.with_name(f"{split}-{key[:16]}-judge-{judge_key[:16]}.safetensors") if judge_key else None
    )

    load = _clip_loader(data_dir)
    cached = _read_cache(cache)
    if cached is None:
        reference = measure_reference(records, load, None, progress=progress)
        meta = {k: reference[k] for k in ("ids", "categories", "dsp")}
        _write_cache(cache, {"librosa": reference["librosa"]}, meta)
    else:
        reference = {k: cached[k] for k in ("ids", "categories", "librosa", "dsp")}
        reference["judge"] = reference["judge_text"] = None
    if judge is not None:
        cached = _read_cache(judge_cache) if judge_cache is not None else None
        if cached is None:
            cached = _judge_reference(records, load, judge, progress=progress)
            if judge_cache is not None:
                _write_cache(judge_cache, cached, {})
        reference["judge"], reference["judge_text"] = cached["judge"], cached["judge_text"]
    return reference


def embed_train_split(
    data_dir: Path | str,
    judge,
    *,
    judge_key: str | None = None,
    limit: int = TRAIN_LIMIT,
    progress: bool = False,
) -> np.ndarray | None:
    """Judge embeddings [N, D] of an evenly spaced subset of the train split (None if it has no clips)."""
    data_dir = Path(data_dir)
    records = _split_records(data_dir, "train", limit)
    if not records:
        return None
    path = None
    if judge_key:
        key = _content_key(data_dir, records)
        path = data_dir / CACHE_DIR / f"train-{key[:16]}-judge-{judge_key[:16]}.safetensors"
        cached = _read_cache(path)
        if cached is not None:
            return cached["judge"]
    embeddings = embed_clips(
        records, _clip_loader(data_dir), judge, progress=progress, desc="embedding train clips"
    )
    if path is not None:
        _write_cache(path, {"judge": embeddings}, {})
    return embeddings


# ---------------------------------------------------------------- the core


def ceiling_figures(dsp: list[dict], prompts: list[dict]) -> dict:
    """What the split's real clips score on the DSP checks: the ceiling of a model that copies the corpus.

    Pitch and tempo accuracy count the clips whose manifest names a pitch or tempo; the fill rate
    asks each prompt's kind of the clips of the prompt's category (all clips when the split has none
    of it), averaged over prompts like the generations' fill rate. The corpus' sustained sounds end
    in release tails, so their clips do not fill a "sustained" request all the way either.
    """
    summary = em.summarise(dsp)  # every clip is its own "prompt" here (clip_expectations)
    figures = {"clips": summary["generations"]}
    for name, key in (("pitch_accuracy", "pitch"), ("tempo_accuracy", "tempo")):
        figures[name], figures[f"{key}_clips"] = summary[name], summary[f"{name}_prompts"]
    figures["clipping_rate"] = summary["clipping_rate"]
    figures["loudness_sane_rate"] = summary["loudness_sane_rate"]
    figures["fill_rate"], figures["fill_rate_prompts"] = None, 0
    rates = []
    for prompt in prompts:
        if prompt.get("kind") is None:
            continue
        same = [r for r in dsp if r["category"] == prompt.get("category")] or dsp
        if not same:
            continue
        rates.append(float(np.mean([r[f"fills_{prompt['kind']}"] for r in same])))
    if rates:
        figures["fill_rate"], figures["fill_rate_prompts"] = float(np.mean(rates)), len(rates)
    for kind in em.KINDS:
        figures[f"fills_{kind}_share"] = float(np.mean([r[f"fills_{kind}"] for r in dsp])) if dsp else None
    return figures


def _figures(
    chosen: list[int],
    records: list[dict],
    gen_librosa: np.ndarray,
    gen_judge: np.ndarray | None,
    text_judge: np.ndarray | None,
    reference: dict,
    ref_chosen: list[int],
    train: np.ndarray | None,
) -> dict:
    """The headline figures over the generations `chosen`, against the reference clips `ref_chosen`."""
    figures = em.summarise([records[j] for j in chosen])
    figures["reference_clips"] = len(ref_chosen)
    both = len(chosen) >= 2 and len(ref_chosen) >= 2
    figures["fd_librosa"] = (
        em.frechet_distance(gen_librosa[chosen], reference["librosa"][ref_chosen]) if both else None
    )
    for name in ("fd_judge", "adherence", "ccds", "memorisation_share"):
        figures[name] = None
    if gen_judge is None or not chosen:
        return figures
    if both:
        figures["fd_judge"] = em.frechet_distance(gen_judge[chosen], reference["judge"][ref_chosen])
    figures["adherence"] = em.adherence(gen_judge[chosen], text_judge[chosen])
    groups: dict[int, list[int]] = {}
    for j in chosen:
        groups.setdefault(records[j]["prompt_index"], []).append(j)
    figures["ccds"] = em.ccds([gen_judge[g] for g in groups.values()])
    if train is not None:
        figures["memorisation_share"] = em.memorisation_share(gen_judge[chosen], train, reference["judge"])
    return figures


def evaluate(
    generate_fn: GenerateFn,
    prompts: list[dict],
    reference: dict,
    *,
    samples: int = DEFAULT_SAMPLES,
    judge=None,
    train_embeddings: np.ndarray | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Generate `samples` clips per prompt with `generate_fn(prompt text, seconds, seed)` and grade them.

    `prompts` are `read_prompts` records; `reference` is `measure_reference`/`reference_set` output
    (with judge embeddings when `judge` is given); `train_embeddings` are judge embeddings of train
    clips (the memorisation share is None without them). Returns {"headline", "by_category",
    "ceiling", "generations"}: judge-space figures are None without a judge.
    """
    assert samples >= 2, "diversity needs at least two samples per prompt"
    assert prompts, "no prompts"
    assert judge is None or reference.get("judge") is not None, "the reference has no judge embeddings"
    records, features, gen_judge, text_judge = [], [], [], []
    total, done = len(prompts) * samples, 0
    for index, prompt in enumerate(prompts):
        seconds = float(prompt.get("seconds") or DEFAULT_SECONDS)
        audios = []
        for k in range(samples):
            sample_seed = generation_seed(seed, prompt, k)
            started = time.perf_counter()
            audio = generate_fn(prompt["prompt"], seconds, sample_seed)
            elapsed = time.perf_counter() - started
            record = {"id": prompt.get("id"), "prompt_index": index, "sample": k, "seed": sample_seed}
            record.update(em.measure_generation(audio, prompt))
            record.update(
                seconds_asked=seconds,
                seconds=round(audio.seconds, 4),
                generate_s=round(elapsed, 4),
            )
            records.append(record)
            features.append(em.librosa_features(audio))
            audios.append(audio)
            done += 1
            if progress is not None:
                progress(done, total)
        if judge is not None:
            emb = _rows(judge.embed_audio(audios))
            text = np.repeat(_rows(judge.embed_text([prompt["prompt"]])), samples, axis=0)
            for k, record in enumerate(records[-samples:]):
                record["adherence"] = em.adherence(emb[k : k + 1], text[k : k + 1])
            gen_judge.append(emb)
            text_judge.append(text)

    gen_librosa = np.stack(features)
    gen_all = np.concatenate(gen_judge) if judge is not None else None
    text_all = np.concatenate(text_judge) if judge is not None else None
    every_ref = list(range(len(reference["librosa"])))

    def figures(chosen: list[int], ref_chosen: list[int]) -> dict:
        return _figures(
            chosen, records, gen_librosa, gen_all, text_all, reference, ref_chosen, train_embeddings
        )

    ceiling = ceiling_figures(reference["dsp"], prompts)
    if reference.get("judge") is not None:
        ceiling["adherence"] = em.adherence(reference["judge"], reference["judge_text"])
    report = {
        "headline": figures(list(range(len(records))), every_ref),
        "by_category": {},
        "ceiling": {"overall": ceiling, "by_category": {}},
        "generations": records,
    }
    for category in em.prompt_categories():
        chosen = [j for j, r in enumerate(records) if r["category"] == category]
        if not chosen:
            continue
        ref_chosen = [i for i, c in enumerate(reference["categories"]) if c == category]
        report["by_category"][category] = figures(chosen, ref_chosen)
        report["ceiling"]["by_category"][category] = ceiling_figures(
            [reference["dsp"][i] for i in ref_chosen], [p for p in prompts if p.get("category") == category]
        )
    return report


# ---------------------------------------------------------------- the table


def _cell(value, kind: str = "rate") -> str:
    if value is None:
        return "-"
    if kind == "rate":
        return f"{100 * value:.0f}%"
    if kind == "fd":
        return f"{value:.3g}"
    return f"{value:.3f}"


ROWS = (  # (label, key, kind)
    ("Fréchet distance, judge space", "fd_judge", "fd"),
    ("Fréchet distance, librosa features", "fd_librosa", "fd"),
    ("text-audio adherence (judge cosine)", "adherence", "num"),
    ("diversity, CCDS (judge)", "ccds", "num"),
    ("memorisation share", "memorisation_share", "rate"),
    ("pitch within 50 cents", "pitch_accuracy", "rate"),
    ("tempo within 2%", "tempo_accuracy", "rate"),
    ("fills the request", "fill_rate", "rate"),
    ("clipping", "clipping_rate", "rate"),
    ("loudness -40..-5 LUFS", "loudness_sane_rate", "rate"),
)


def format_report(report: dict) -> str:
    """The headline, the real clips' ceiling beside it, and the per-category breakdown, as plain text."""
    head, ceiling = report["headline"], report["ceiling"]["overall"]
    config = report["config"]
    sampling = " ".join(str(part) for part in (config["steps"], config.get("sampler"), "steps") if part)
    lines = [
        f"model {config['model']} ({config['model_hash'][:12]}), {sampling}, guidance {config['guidance']}, "
        f"{config.get('inference') or 'bf16'}, {config['samples']} samples x {head['prompts']} prompts, "
        f"seed {config['seed']}",
        f"reference: {head['reference_clips']} {config['split']} clips of {config['data']}",
        "",
        f"{'':<38} {'generated':>10} {config['split'] + ' clips':>11}",
    ]
    for label, key, kind in ROWS:
        lines.append(f"{label:<38} {_cell(head.get(key), kind):>10} {_cell(ceiling.get(key), kind):>11}")
    lines += ["", "by category (generated / real clips; FD librosa against the category's clips)"]
    columns = ("prompts", "pitch", "tempo", "fill", "clip", "loud", "adher.", "CCDS", "FD lib", "FD judge")
    lines.append(f"{'category':<10}" + "".join(f"{c:>10}" for c in columns))
    for category, fig in report["by_category"].items():
        ceil = report["ceiling"]["by_category"][category]
        cells = [
            str(fig["prompts"]),
            *(
                f"{_cell(fig[key])}/{_cell(ceil.get(key))}"
                for key in ("pitch_accuracy", "tempo_accuracy", "fill_rate")
            ),
            _cell(fig["clipping_rate"]),
            _cell(fig["loudness_sane_rate"]),
            _cell(fig["adherence"], "num"),
            _cell(fig["ccds"], "num"),
            _cell(fig["fd_librosa"], "fd"),
            _cell(fig["fd_judge"], "fd"),
        ]
        lines.append(f"{category:<10}" + "".join(f"{c:>10}" for c in cells))
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


# ---------------------------------------------------------------- the CLI's entry point


def corpus_from_card(bundle_path: Path, card: dict) -> Path:
    """The corpus a bundle's card records (relative to the working folder or the bundle's parent)."""
    recorded = card.get("data_dir")
    if recorded:
        for candidate in (Path(recorded), bundle_path.parent / recorded):
            if (candidate / "manifest.jsonl").is_file():
                return candidate
    raise BadInput(
        f"The model card of {bundle_path} names no corpus that exists here; pass --data DIR "
        "(a corpus built by `soundloom dataset build`)."
    )


def _first(result) -> Audio:
    return result[0] if isinstance(result, list | tuple) else result


def run(
    model: Path | str,
    prompts_path: Path | str,
    *,
    data: Path | str | None = None,
    judge_path: Path | str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    options: dict | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    max_prompts: int | None = None,
    split: str = "test",
    json_out: Path | str | None = None,
    update_card: bool = False,
    verbose: bool = True,
) -> dict:
    """Everything `soundloom eval` does: check the inputs, measure the reference, generate, grade, report.

    With `update_card`, the headline, the real clips' ceiling and the settings go into the bundle's model
    card under "eval" (the per-generation rows stay in the JSON). `verbose=False` draws no progress bars
    and prints no table (for callers that run many evaluations, such as `soundloom experiment`).

    `steps`, `sampler` and `guidance` override the bundle's sampling defaults (so a base model can be
    graded at 8 ping-pong steps); `options` are load_generator's inference keywords (bf16, int8, compile,
    threads, device: pipelines/inference.py), so what `--int8` does to quality is measured, not assumed.

    Inputs are checked before anything heavy loads. Without `judge_path` the bundled judge
    (assets/judge) is used when it exists; without it the judge-space figures are None, with a note.
    """
    from pipelines.bundle import ASSETS_DIR, bundle_hash, load_bundle
    from pipelines.generator import check_sampling
    from pipelines.inference import InferenceOptions

    started = time.time()
    check_sampling(sampler, guidance)
    options = dict(options or {})
    inference = InferenceOptions(**options).check()  # an absent device is refused before the reference
    if samples < MIN_SAMPLES:
        raise BadInput(
            f"--samples must be at least {MIN_SAMPLES} (CCDS diversity needs them), not {samples}."
        )
    model, prompts_path = Path(model), Path(prompts_path)
    prompts = em.read_prompts(prompts_path)
    if max_prompts is not None:
        prompts = evenly_spaced(prompts, max_prompts)
    bundle = load_bundle(model)
    from pipelines.lora import ADAPTER_KIND

    if bundle.kind not in ("generator", ADAPTER_KIND):  # an adapter runs on its base (load_generator)
        raise BadInput(
            f"{model} is a {bundle.kind or 'unknown'} bundle, not a generator; pass a generator bundle."
        )
    data_dir = Path(data) if data is not None else corpus_from_card(model, bundle.card)
    notes = []
    if judge_path is None and (ASSETS_DIR / "judge" / "model.json").is_file():
        judge_path = ASSETS_DIR / "judge"
    if judge_path is None:
        notes.append(
            "no judge embedder (assets/judge is missing; train one with `soundloom train --recipe "
            "judge-embedder`, or pass --judge), so the judge-space figures are null."
        )

    judge, judge_key = None, None
    if judge_path is not None:
        from pipelines.embedders import load_embedder

        judge, judge_key = load_embedder(judge_path), bundle_hash(judge_path)
    reference = reference_set(data_dir, judge, judge_key=judge_key, split=split, progress=verbose)
    train = None
    if judge is not None:
        train = embed_train_split(data_dir, judge, judge_key=judge_key, progress=verbose)
        if train is None:
            notes.append(f"the corpus in {data_dir} has no train clips, so the memorisation share is null.")

    from pipelines.generator import load_generator

    generator = load_generator(model, **options)
    max_seconds = float(getattr(generator, "max_seconds", float("inf")))
    overrides = {k: v for k, v in (("sampler", sampler), ("guidance", guidance)) if v is not None}
    if guidance is None:
        guidance = getattr(generator, "default_guidance", None) or bundle.config.get("guidance")
    if sampler is None:
        sampler = getattr(generator, "default_sampler", None) or bundle.config.get("sampler", "euler")

    def generate_fn(text: str, seconds: float, sample_seed: int) -> Audio:
        return _first(
            generator.generate(
                text, seconds=min(seconds, max_seconds), steps=steps, seed=sample_seed, **overrides
            )
        )

    from tqdm import tqdm

    with tqdm(
        total=len(prompts) * samples,
        desc="generating",
        unit="clip",
        file=sys.stderr,
        mininterval=1.0,
        disable=not verbose,
    ) as bar:
        report = evaluate(
            generate_fn,
            prompts,
            reference,
            samples=samples,
            judge=judge,
            train_embeddings=train,
            seed=seed,
            progress=lambda done, total: bar.update(1),
        )
    report["config"] = {
        "model": str(model),
        "model_hash": bundle_hash(model),
        "steps": steps or getattr(generator, "default_steps", None) or bundle.config.get("steps"),
        "guidance": guidance,
        "sampler": sampler,
        "inference": inference.label,
        "samples": samples,
        "seed": seed,
        "split": split,
        "data": str(data_dir),
        "prompts": str(prompts_path),
        "prompts_sha256": file_sha256(prompts_path),
        "prompts_used": len(prompts),
        "max_seconds": max_seconds if np.isfinite(max_seconds) else None,
        "judge": str(judge_path) if judge_path is not None else None,
        "judge_hash": judge_key,
        "train_clips_embedded": None if train is None else len(train),
        "text_only": True,
    }
    report["notes"] = notes
    report["wall_time_s"] = round(time.time() - started, 1)
    report = {
        key: report[key]
        for key in ("config", "headline", "ceiling", "by_category", "notes", "wall_time_s", "generations")
    }
    if verbose:
        print(format_report(report))
    if json_out is not None:
        write_atomic(json_out, json.dumps(_jsonable(report), indent=2) + "\n")
        print(f"wrote {json_out}")
    if update_card:
        from pipelines.bundle import update_card as write_card

        card = {key: report[key] for key in ("config", "headline", "ceiling", "notes", "wall_time_s")}
        write_card(model, {"eval": _jsonable(card)})
        print(f"recorded the figures in {model / 'model.json'}")
    return report


def _jsonable(value):
    """numpy scalars and non-finite floats made JSON-safe (NaN/inf -> null)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
