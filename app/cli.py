"""The `soundloom` command line (also `python -m app`).

Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback), 1 internal error (one line; the
traceback only with SOUNDLOOM_DEBUG=1). Arguments are checked here, at the boundary; the heavy
modules (torch, the codec, the trainer) are imported inside the verb handlers so `--help` is fast.
"""

import os

# Offline by design: set before anything can import huggingface_hub or gradio. An explicit
# setting in the user's environment wins (e.g. to fetch a hub model they asked for by id).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

PROG = "soundloom"
REPO = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors that point at `--help`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {_one_line(message)}; see `{self.prog} --help`.\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- argument types


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{what} must be {noun}, not '{text}'") from None


def _whole(text: str) -> int:
    return _number(text, int, "the value")


def _decimal(text: str) -> float:
    return _number(text, float, "the value")


def _positive_int(text: str) -> int:
    value = _number(text, int, "the value")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {value}")
    return value


def _seed(text: str) -> int:
    value = _number(text, int, "the seed")
    if value < 0:
        raise argparse.ArgumentTypeError(f"the seed must be 0 or more, not {value}")
    return value


def _float_in(low: float, high: float, *, low_open: bool = True):
    """A float type accepting (low, high] (or [low, high] with low_open=False)."""

    def parse(text: str) -> float:
        value = _number(text, float, "the value")
        too_low = value <= low if low_open else value < low
        if too_low or not value <= high:  # `not <=` also rejects nan
            lower = "above" if low_open else "at least"
            raise argparse.ArgumentTypeError(f"must be {lower} {low:g} and at most {high:g}, not {text}")
        return value

    return parse


_hours = _float_in(0, 1000)
_seconds = _float_in(0, 600)
_unit = _float_in(0, 1, low_open=False)
_bpm = _float_in(20, 400, low_open=False)


def _samples(text: str) -> int:
    value = _number(text, int, "--samples")
    if not 5 <= value <= 1000:
        raise argparse.ArgumentTypeError(
            f"must be at least 5 (CCDS diversity needs them) and at most 1000, not {value}"
        )
    return value


def _port(text: str) -> int:
    value = _number(text, int, "the port")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be between 1 and 65535, not {value}")
    return value


# ---------------------------------------------------------------- path checks (raise BadInput)


def _existing_dir(path: str, flag: str) -> Path:
    from pipelines.errors import BadInput

    p = Path(path)
    if not p.exists():
        raise BadInput(f"The folder '{p}' given to {flag} does not exist; check the path.")
    if not p.is_dir():
        raise BadInput(f"'{p}' given to {flag} is a file, not a folder; give a folder.")
    return p


def _existing_file(path: str, flag: str) -> Path:
    from pipelines.errors import BadInput

    p = Path(path)
    if not p.exists():
        raise BadInput(f"The file '{p}' given to {flag} does not exist; check the path.")
    if p.is_dir():
        raise BadInput(f"'{p}' given to {flag} is a folder, not a file; give a file.")
    return p


def _output_dir(path: str, flag: str) -> Path:
    """A folder to write into: it may not exist yet, but it must not be a file."""
    from pipelines.errors import BadInput

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(f"'{p}' given to {flag} is a file; {flag} needs a folder.")
    return p


def _output_file(path: str, flag: str) -> Path:
    """A file to write: not a folder; its folder is created when missing (a fresh clone has no .cache/)."""
    from pipelines.errors import BadInput

    p = Path(path)
    if p.is_dir():
        raise BadInput(f"'{p}' given to {flag} is a folder; give a file name.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(
            f"Cannot create the folder '{p.parent}' for {flag} ({e.strerror or e}); pick another path."
        ) from None
    return p


# ---------------------------------------------------------------- handlers


def _not_yet(verb: str):
    def handler(args: argparse.Namespace) -> int:
        from pipelines.errors import BadInput

        raise BadInput(f"`{PROG} {verb}` is not available yet in this version.")

    return handler


def _studio(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    host = "0.0.0.0" if args.listen else args.host
    auth = None
    if args.auth is not None:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            raise BadInput(
                "--auth needs a user name and a password as USER:PASS, e.g. --auth ana:long-secret."
            )
        auth = (user, password)
    loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
    if not loopback and auth is None and not args.insecure:
        raise BadInput(
            f"Listening on {host} lets other machines in; add --auth USER:PASS, or --insecure to allow anyone."
        )
    model = _existing_dir(args.model, "--model") if args.model else None
    outputs = _output_dir(args.outputs, "--outputs") if args.outputs else None
    from app.studio import run_studio

    run_studio(
        model=model, outputs=outputs, host=host, port=args.port, auth=auth, open_browser=not args.no_browser
    )
    return 0


def _codec_roundtrip(args: argparse.Namespace) -> int:
    from pipelines.audio import check_input_path, check_output_path, load_audio, save_audio

    check_input_path(args.input)
    out = check_output_path(args.output)
    audio = load_audio(args.input, max_seconds=args.max_seconds)
    from pipelines.codec import load_codec

    codec = load_codec(args.model)
    save_audio(codec.roundtrip(audio), out)  # decode(encode(audio)) trimmed to the input's length
    print(f"wrote {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pipelines.audio import check_output_path
    from pipelines.errors import BadInput

    given = [
        name
        for name, value in (
            ("a PROMPT", args.prompt),
            ("--from FILE", args.from_file),
            ("--prompts FILE", args.prompts),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise BadInput(f"Give either {given[0]} or {given[1]}, not both.")
    if not given:
        raise BadInput(
            "Give a PROMPT to generate from, --from FILE to remake a sound, or --prompts FILE for a batch."
        )
    if args.prompts is not None:
        return _generate_batch(args)
    if args.format is not None:
        raise BadInput("--format is for --prompts batches; with -o FILE its extension picks the format.")
    out = check_output_path(args.output)
    _check_variations(args.variations)
    from pipelines.generator import load_generator, read_settings, settings_record

    settings: dict = {"prompt": args.prompt, "seconds": 10.0}
    model, made_with, stored_export = args.model, None, None
    if args.from_file:
        stored, record = read_settings(args.from_file)
        settings, made_with, stored_export = vars(stored), record.get("model_hash"), record.get("export")
        if model is None and record.get("model") and Path(record["model"]).is_dir():
            model = record["model"]
    options = _export_options(args, stored_export, out)
    options.check(out)
    outs = _take_paths(out, args.variations)
    flags = {"seconds": args.seconds, "steps": args.steps, "seed": args.seed}
    settings.update({k: v for k, v in flags.items() if v is not None})  # flags given override the file
    gen = load_generator(model, **_inference_options(args))
    if made_with is not None and made_with != gen.bundle_hash:
        warnings.warn(
            f"{gen.bundle_path} is not the model bundle that made {args.from_file}, so the sound will differ.",
            stacklevel=2,
        )
    on_step, close = _step_progress("generating", total=lambda: gen.last_settings.steps)
    try:
        audios = gen.generate_variations(**settings, variations=args.variations, callback=on_step)
    finally:
        close()

    used = gen.last_settings
    print(f"seed {used.seed}")
    for i, (audio, path) in enumerate(zip(audios, outs)):
        record = settings_record(replace(used, seed=used.seed + i), gen)  # remakes this file alone
        _write_take(audio, path, record, options)
        print(f"wrote {path}" + (f" (seed {used.seed + i})" if len(outs) > 1 else ""))
    return 0


def _generate_batch(args: argparse.Namespace) -> int:
    """`generate --prompts FILE -o DIR`: every line checked (by the model too) before the first take is made."""
    from dataclasses import asdict, replace

    from app.prompt_list import at_line, read_prompt_list
    from pipelines.errors import BadInput

    prompts = _existing_file(args.prompts, "--prompts")
    folder = _batch_folder(args.output)
    suffix = "." + (args.format or "wav")
    options = _export_options(args, None, folder / f"take{suffix}")
    options.check(folder / f"take{suffix}")
    _check_variations(args.variations)
    lines = read_prompt_list(prompts)
    from pipelines.generator import load_generator, settings_record

    gen = load_generator(args.model, **_inference_options(args))
    jobs = []
    for line in lines:
        try:
            settings = gen.settings(
                line.prompt,
                seconds=_first_given(line.seconds, args.seconds, 10.0),
                steps=_first_given(line.steps, args.steps),
                seed=_first_given(line.seed, args.seed),
            )
        except BadInput as e:
            raise at_line(prompts, line.line, e) from None
        jobs.append((line, settings))
    folder.mkdir(exist_ok=True)  # only now: a bad line leaves nothing behind
    for k, (line, settings) in enumerate(jobs, start=1):
        on_step, close = _step_progress(f"[{k}/{len(jobs)}]", total=settings.steps)
        try:
            audios = gen.generate_variations(**asdict(settings), variations=args.variations, callback=on_step)
        finally:
            close()
        paths = _take_paths(folder / f"{line.name}{suffix}", args.variations)
        for i, (audio, path) in enumerate(zip(audios, paths)):
            _write_take(audio, path, settings_record(replace(settings, seed=settings.seed + i), gen), options)
            print(f"[{k}/{len(jobs)}] wrote {path} (seed {settings.seed + i})", flush=True)
    return 0


def _first_given(*values):
    return next((v for v in values if v is not None), None)


def _batch_folder(path: str) -> Path:
    """-o of a batch: a folder (it may not exist yet, but the folder holding it must)."""
    from pipelines.audio import OUTPUT_FORMATS
    from pipelines.errors import BadInput

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(
            f"With --prompts, -o names a folder for the takes, and '{p}' is a file; give a folder."
        )
    if not p.exists() and p.suffix.lower() in OUTPUT_FORMATS:
        raise BadInput(
            f"With --prompts, -o names a folder for the takes, not a file like '{p.name}'; give a folder "
            "(and --format for the files' format)."
        )
    if not p.parent.is_dir():
        raise BadInput(f"The folder '{p.parent}' that would hold '{p.name}' does not exist; create it first.")
    return p


def _check_variations(variations: int) -> None:
    from pipelines.errors import BadInput
    from pipelines.generator import MAX_VARIATIONS

    if variations > MAX_VARIATIONS:
        raise BadInput(f"--variations must be between 1 and {MAX_VARIATIONS}, not {variations}.")


def _take_paths(out: Path, variations: int) -> list[Path]:
    """OUT itself, or OUT_1 .. OUT_V (before the extension) for V variations."""
    if variations == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(1, variations + 1)]


def _export_options(args: argparse.Namespace, stored: dict | None, out: Path):
    """The export options of the flags given (verbs without export flags get the defaults); `stored` (an
    "export" record from --from FILE) fills in the flags not given."""
    from pipelines.export import DEFAULT_TRIM_DB, ExportOptions

    flags = vars(args)
    trim = flags.get("trim_db")
    if trim is None and flags.get("trim"):
        trim = DEFAULT_TRIM_DB
    given = {
        "sample_rate": flags.get("rate"),
        "bits": flags.get("bits"),
        "channels": flags.get("channels"),
        "trim_db": trim,
        "fade_in_ms": flags.get("fade_in"),
        "fade_out_ms": flags.get("fade_out"),
        "lufs": flags.get("lufs"),
    }
    base = ExportOptions.from_record(stored).to_record() if stored is not None else {}
    if out.suffix.lower() in (".mp3", ".ogg"):
        base.pop("bits", None)  # a remake as MP3 of a 24-bit WAV: the stored depth does not apply
    return ExportOptions(**{**base, **{k: v for k, v in given.items() if v is not None}})


def _write_take(audio, path: Path, record: dict, options, *, loop: bool = False) -> None:
    """Write one take: the audio (with `record` and the export options embedded), then its settings file."""
    import json

    from pipelines.atomic_files import write_atomic
    from pipelines.export import export_audio
    from pipelines.generator import settings_path

    record = {**record, "export": options.to_record()}
    export_audio(audio, path, options, metadata=record, loop=loop)
    write_atomic(settings_path(path), json.dumps(record, indent=2) + "\n")


def _step_progress(desc: str, total=None):
    """(callback, close) for a tqdm bar of sampler steps that starts at the first step (bad input draws none);
    `total` is the bar's length, or a function giving it then (the steps are settled by that time)."""
    from tqdm import tqdm

    bar = None

    def on_step(state: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total() if callable(total) else total,
                desc=desc,
                unit="step",
                disable=not sys.stderr.isatty(),
            )
        bar.update(1)

    def close() -> None:
        if bar is not None:
            bar.close()

    return on_step, close


def _run_pipeline(
    args: argparse.Namespace, make, *, source: Path | None = None, describe=None, loop: bool = False
) -> int:
    """Shared by the pipeline verbs: check -o and the export options, load the model, run
    `make(gen, callback, info, seed)` once per variation (seed, then the seed it drew + 1, ...), write each
    take with its settings file (OUT.json). `describe(info)` may add a line after the seed."""
    from pipelines.audio import check_output_path

    out = check_output_path(args.output)
    options = _export_options(args, None, out)
    options.check(out, loop=loop)
    variations = vars(args).get("variations", 1)
    _check_variations(variations)
    outs = _take_paths(out, variations)
    from pipelines.generator import load_generator

    gen = load_generator(args.model)
    from pipelines.conditioned import pipeline_record

    seed = args.seed
    for i, path in enumerate(outs):
        info: dict = {}
        on_step, close = _step_progress(args.verb)
        try:
            audio = make(gen, on_step, info, seed)
        finally:
            close()
        if i == 0:
            print(f"seed {info['seed']}")
            if describe is not None:
                print(describe(info))
        seed = info["seed"] + 1
        record = pipeline_record({**info, "source": str(source) if source else None}, gen)
        _write_take(audio, path, record, options, loop=loop)
        print(f"wrote {path}" + (f" (seed {info['seed']})" if len(outs) > 1 else ""))
    return 0


def _load_input(path: str):
    from pipelines.audio import check_input_path, load_audio

    return load_audio(check_input_path(path))


def _transform(args: argparse.Namespace) -> int:
    from pipelines.transform import parse_keep

    keep = parse_keep(args.keep)  # checked before anything loads
    source = _load_input(args.input)
    from pipelines.transform import transform

    def make(gen, callback, info, seed):
        return transform(
            gen,
            source,
            args.prompt,
            strength=args.strength,
            keep=keep,
            seed=seed,
            steps=args.steps,
            callback=callback,
            info=info,
        )

    return _run_pipeline(args, make, source=Path(args.input))


def _voice(args: argparse.Namespace) -> int:
    from pipelines.audio import check_input_path
    from pipelines.voice import MIDI_SUFFIXES

    path = check_input_path(args.input)
    source = path if path.suffix.lower() in MIDI_SUFFIXES else _load_input(args.input)
    from pipelines.voice import voice

    def make(gen, callback, info, seed):
        return voice(gen, source, args.prompt, seed=seed, steps=args.steps, callback=callback, info=info)

    return _run_pipeline(args, make, source=path)


def _beats(args: argparse.Namespace) -> int:
    from pipelines.loops import parse_key, parse_meter

    parse_meter(args.meter), parse_key(args.key)  # checked before anything loads
    track = _load_input(args.align_to) if args.align_to else None
    if args.downbeat_offset is not None and track is None:
        from pipelines.errors import BadInput

        raise BadInput("--downbeat-offset needs --align-to TRACK; give the track, or drop the offset.")
    if track is None and args.bpm is None:
        from pipelines.errors import BadInput

        raise BadInput("Give the tempo with --bpm B, or a track to follow with --align-to TRACK.")
    from pipelines.loops import beats

    def make(gen, callback, info, seed):
        return beats(
            gen,
            args.prompt,
            bpm=args.bpm,
            bars=args.bars,
            meter=args.meter,
            key=args.key,
            loop=args.loop,
            align_to=track,
            downbeat_offset=args.downbeat_offset,
            seed=seed,
            steps=args.steps,
            callback=callback,
            info=info,
        )

    def describe(info: dict) -> str:
        if info.get("starts_at_s") is None:
            return f"{info['samples']} samples: {info['bars']} bars of {info['beats_per_bar']} at {info['bpm']:g} BPM"
        return (
            f"in sync when started {info['starts_at_s']:.3f} s into {args.align_to} ({info['bpm']:.2f} BPM)"
        )

    source = Path(args.align_to) if args.align_to else None
    return _run_pipeline(args, make, source=source, describe=describe, loop=args.loop)


def _extend(args: argparse.Namespace) -> int:
    source = _load_input(args.input)
    from pipelines.edit import extend

    def make(gen, callback, info, seed):
        return extend(
            gen,
            source,
            args.prompt,
            seconds=args.seconds,
            seed=seed,
            steps=args.steps,
            callback=callback,
            info=info,
        )

    return _run_pipeline(args, make, source=Path(args.input))


def _repaint(args: argparse.Namespace) -> int:
    source = _load_input(args.input)
    from pipelines.edit import repaint

    def make(gen, callback, info, seed):
        return repaint(
            gen,
            source,
            args.prompt,
            start=args.start,
            end=args.end,
            seed=seed,
            steps=args.steps,
            callback=callback,
            info=info,
        )

    return _run_pipeline(args, make, source=Path(args.input))


def _live(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    if args.output is None:
        from pipelines.live import output_device_problem

        problem = output_device_problem()  # said before the model loads
        if problem is not None:
            raise BadInput(problem[0].upper() + problem[1:] + ".")
    elif args.seconds is None:
        raise BadInput("Writing a live stream to a file needs its length: add --seconds S.")
    from pipelines.live import play, stream

    if args.output is not None:

        def make(gen, callback, info, seed):
            import numpy as np

            from pipelines.audio import Audio

            chunks = stream(
                gen,
                args.prompt,
                morph_to=args.morph,
                alpha=args.alpha,
                seconds=args.seconds,
                seed=seed,
                steps=args.steps,
                info=info,
            )
            return Audio(np.concatenate([c.samples for c in chunks], axis=1), gen.sample_rate)

        return _run_pipeline(args, make)

    from pipelines.generator import load_generator

    gen = load_generator(args.model)
    info: dict = {}
    chunks = stream(
        gen,
        args.prompt,
        morph_to=args.morph,
        alpha=args.alpha,
        seconds=args.seconds,
        seed=args.seed,
        steps=args.steps,
        info=info,
    )
    print(f"seed {info['seed']}; playing (Ctrl-C stops)", flush=True)
    played = play(chunks, gen.sample_rate)
    print(f"played {played:.1f} s")
    return 0


def _dataset_build(args: argparse.Namespace) -> int:
    out = _output_dir(args.out, "--out")
    from training.corpus import build_corpus

    on_clip = None
    if args.latents:
        from pipelines.audio import load_audio
        from pipelines.codec import load_codec
        from training.latent_cache import LatentCacheWriter

        writer = LatentCacheWriter(out, load_codec(args.model))

        def on_clip(record: dict) -> None:
            writer.add_record(record, load_audio(out / record["path"]))

    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    path = build_corpus(
        out, hours=args.hours, seed=args.seed, progress=True, on_clip=on_clip, categories=categories
    )
    if args.latents:  # clips rendered by an earlier, interrupted build without --latents
        from training.latent_cache import encode_corpus

        print(f"latents in {encode_corpus(out, args.model)}")
    print(f"corpus ready in {path}")
    return 0


def _dataset_encode(args: argparse.Namespace) -> int:
    data = _existing_dir(args.folder, "dataset encode")
    from training.latent_cache import encode_corpus

    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    print(f"latents in {encode_corpus(data, args.model, categories=categories)}")
    return 0


def _dataset_from_folder(args: argparse.Namespace) -> int:
    src = _existing_dir(args.folder, "dataset from-folder")
    out = _output_dir(args.out, "--out")
    from training.corpus import from_folder

    path = from_folder(src, out)
    print(f"corpus ready in {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    data = _existing_dir(args.data, "--data")
    run = _output_dir(args.out, "--out")
    config = _existing_file(args.config, "--config") if args.config else None
    init = _existing_dir(args.init, "--init") if args.init else None
    from training.trainer import parse_overrides, train

    overrides = parse_overrides(args.set)
    if args.device:
        overrides["device"] = args.device
    path = train(
        args.recipe,
        data,
        run,
        steps=args.steps,
        config_path=config,
        init_bundle=init,
        resume=args.resume,
        overrides=overrides,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"last checkpoint: {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    if args.what == "steps":
        return _bench_steps(args)
    for flag, value in _steps_only_flags(args).items():
        if value is not None:
            raise BadInput(f"{flag} is for `{PROG} bench steps`; `bench {args.what}` does not take it.")
    if args.what != "generate":
        others = {"--options": args.options or None, "--compare": args.compare}
        for flag, value in {**_inference_flags(args), **others}.items():
            if value is not None:
                raise BadInput(
                    f"{flag} is for `{PROG} bench generate` and `bench steps`, not `bench {args.what}`."
                )
    models = args.model or []
    if len(models) > 1:
        raise BadInput(f"Only `{PROG} bench steps` takes several --model; `bench {args.what}` measures one.")
    args.model = models[0] if models else None
    if args.steps is not None:
        if len(args.steps) > 1:
            raise BadInput(
                f"--steps takes one number here; a list such as 1,2,4,8 is for `{PROG} bench steps`."
            )
        args.steps = args.steps[0]
    if args.what == "load":
        return _bench_load(args)
    if args.what == "finetune":
        return _bench_finetune(args)

    for flag, given in (("--requests", args.requests), ("--seconds", args.seconds), ("--steps", args.steps)):
        if given is not None:
            raise BadInput(f"{flag} is for `{PROG} bench load`; `bench {args.what}` does not take it.")
    if args.what == "generate":
        return _bench_generate(args)
    if args.what == "pipelines":
        return _bench_pipelines(args)
    if args.what != "codec":
        return _not_yet(f"bench {args.what}")(args)
    data = _existing_dir(args.data, "--data") if args.data else None
    json_out = _output_file(args.json, "--json") if args.json else None
    from training.bench_codec import run

    run(json_out, data=data, model=args.model, update_card=args.update_card)  # prints its own table
    return 0


def _bench_finetune(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    for flag, given in (
        ("--requests", args.requests),
        ("--seconds", args.seconds),
        ("--update-card", args.update_card),
    ):
        if given:
            raise BadInput(
                f"{flag} is not for `{PROG} bench finetune`; it takes --data, --model, --steps and --json."
            )
    if not args.data:
        raise BadInput(f"`{PROG} bench finetune` needs --data FOLDER, a folder of your sounds (ten or more).")
    folder = _existing_dir(args.data, "--data")
    model = _existing_dir(args.model, "--model") if args.model else None
    json_out = _output_file(args.json, "--json") if args.json else None
    from app.bench_finetune import run_bench

    run_bench(folder, json_out, model=model, steps=args.steps)  # prints its own table
    return 0


def _bench_load(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    for flag, given in (("--data", args.data), ("--update-card", args.update_card)):
        if given:
            raise BadInput(
                f"{flag} is for `{PROG} bench codec`; `bench load` takes --model, --requests, --seconds, "
                "--steps and --json."
            )
    model = _existing_dir(args.model, "--model") if args.model else None
    json_out = _output_file(args.json, "--json") if args.json else None
    from app.bench_load import REQUESTS, run_bench

    settings = {"seconds": args.seconds} if args.seconds is not None else {}  # else the studio's default
    run_bench(model, json_out, requests=args.requests or REQUESTS, steps=args.steps, **settings)  # + table
    return 0


def _bench_generate(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    for flag, given in (("--data", args.data), ("--update-card", args.update_card)):
        if given:
            raise BadInput(f"{flag} is for `{PROG} bench codec`; `bench generate` takes --model and --json.")
    json_out = _output_file(args.json, "--json") if args.json else None
    options = _inference_options(args)
    if args.compare is not None:
        if args.options:
            raise BadInput(
                "--compare times two generators and --options times the inference options of one; give one of them."
            )
        compare = _existing_dir(args.compare, "--compare")
        model = _existing_dir(args.model, "--model") if args.model else None
        from training.bench_generate import run_compare_bench

        run_compare_bench(model, compare, json_out, options=options)  # prints its own table
        return 0
    if args.options:
        if options:
            raise BadInput(
                f"--options measures every inference option against the default; leave out {', '.join(_inference_flags(args))}."
            )
        from training.bench_generate import run_options_bench

        run_options_bench(args.model, json_out)  # prints its own table
        return 0
    from training.bench_generate import run_bench

    run_bench(args.model, json_out, options=options)  # prints its own table
    return 0


def _steps_only_flags(args: argparse.Namespace) -> dict:
    return {
        "--prompts": args.prompts,
        "--judge": args.judge,
        "--samples": args.samples,
        "--max-prompts": args.max_prompts,
        "--split": args.split,
        "--sampler": args.sampler,
        "--guidance": args.guidance,
        "--png": args.png,
    }


def _bench_steps(args: argparse.Namespace) -> int:
    from pipelines.bundle import ASSETS_DIR
    from pipelines.errors import BadInput

    for flag, given in (
        ("--requests", args.requests),
        ("--seconds", args.seconds),
        ("--update-card", args.update_card or None),
        ("--options", args.options or None),
        ("--compare", args.compare),
    ):
        if given is not None:
            raise BadInput(f"{flag} is not for `{PROG} bench steps`; see `{PROG} bench --help`.")
    if not args.model:
        raise BadInput(
            "Give the generator bundles to measure, e.g. --model assets/generator --model assets/generator-base@euler."
        )
    prompts = _existing_file(args.prompts or str(ASSETS_DIR / "prompts" / "dev.jsonl"), "--prompts")
    data = _existing_dir(args.data, "--data") if args.data else None
    judge = _existing_dir(args.judge, "--judge") if args.judge else None
    json_out = _output_file(args.json, "--json") if args.json else None
    png_out = _output_file(args.png, "--png") if args.png else None
    from training.bench_steps import run

    run(  # prints its own table
        args.model,
        prompts,
        args.steps or [1, 2, 4, 8],
        data=data,
        judge_path=judge,
        sampler=args.sampler,
        guidance=args.guidance,
        options=_inference_options(args),
        samples=args.samples or 5,
        max_prompts=args.max_prompts,
        split=args.split or "test",
        json_out=json_out,
        png_out=png_out,
    )
    return 0


def _bench_pipelines(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    for flag, given in (("--data", args.data), ("--update-card", args.update_card)):
        if given:
            raise BadInput(f"{flag} is for `{PROG} bench codec`; `bench pipelines` takes --model and --json.")
    json_out = _output_file(args.json, "--json") if args.json else None
    from training.bench_pipelines import run_bench

    run_bench(args.model, json_out)  # prints its own table
    return 0


def _bundle_kind(folder: Path) -> str | None:
    """The `kind` a bundle's model.json declares (None when unreadable: the loader then says what is wrong)."""
    import json

    try:
        return json.loads((folder / "model.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _eval(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    model = _existing_dir(args.model, "--model")
    if _bundle_kind(model) == "embedder":  # held-out retrieval figures of an audio embedder
        sampling = {"--sampler": args.sampler, "--guidance": args.guidance, **_inference_flags(args)}
        for flag, value in sampling.items():
            if value is not None:
                raise BadInput(f"{flag} is for evaluating a generator; {model} is an embedder.")
        if not args.data:
            raise BadInput("Evaluating an embedder needs the corpus to measure on; pass --data DIR.")
        from training.embedder_eval import run as run_embedder_eval

        run_embedder_eval(
            model,
            _existing_dir(args.data, "--data"),
            split=args.split,
            json_out=_output_file(args.json, "--json") if args.json else None,
            update_card=args.update_card,
        )
        return 0
    if not args.prompts:
        raise BadInput(
            "Evaluating a generator needs its prompts; pass --prompts FILE (assets/prompts/dev.jsonl)."
        )
    prompts = _existing_file(args.prompts, "--prompts")
    data = _existing_dir(args.data, "--data") if args.data else None
    judge = _existing_dir(args.judge, "--judge") if args.judge else None
    json_out = _output_file(args.json, "--json") if args.json else None
    from training.evaluate import run

    run(  # prints its own table
        model,
        prompts,
        data=data,
        judge_path=judge,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        options=_inference_options(args),
        samples=args.samples,
        seed=args.seed,
        max_prompts=args.max_prompts,
        split=args.split,
        json_out=json_out,
        update_card=args.update_card,
    )
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from pipelines.bundle import ASSETS_DIR
    from training.experiment import ARMS, Experiment

    out = _output_dir(args.out, "--out")
    data = _existing_dir(args.data, "--data")
    judge = _existing_dir(args.judge, "--judge") if args.judge else ASSETS_DIR / "judge"
    prompts = _existing_file(args.prompts or str(ASSETS_DIR / "prompts" / "dev.jsonl"), "--prompts")
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else tuple(ARMS)
    Experiment(
        out,
        data,
        prompts=prompts,
        judge=judge,
        steps=args.steps,
        seeds=args.seeds,
        eval_every=args.eval_every,
        eval_prompts=args.eval_prompts,
        eval_steps=args.eval_steps,
        final_prompts=args.final_prompts,
        final_steps=args.final_steps,
        arms=arms,
    ).run()
    return 0


def _bundle_export(args: argparse.Namespace) -> int:
    run = _existing_dir(args.run, "--run")
    data = _existing_dir(args.data, "--data")
    out = _output_dir(args.out, "--out")
    from training.trainer import export_run

    path = export_run(run, out, data_dir=data, keep_change=args.keep_change)
    print(f"bundle written to {path or out}")
    return 0


def _bundle_quantize(args: argparse.Namespace) -> int:
    source = _existing_dir(args.bundle, "bundle quantize")
    out = _output_dir(args.out, "--out")
    from pipelines.bundle import quantize_bundle

    path, record = quantize_bundle(source, out)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e6
    print(
        f"int8 bundle written to {path}: {size:.1f} MB of tensors, {record['int8_share']:.1%} of the values "
        f"int8, largest relative change of a tensor {record['max_relative_error']:.4f}"
    )
    return 0


def _bundle_pack_adapter(args: argparse.Namespace) -> int:
    adapter = _existing_dir(args.adapter, "bundle pack-adapter")
    out = _output_file(args.out, "--out")
    from pipelines.lora import pack_adapter

    print(f"adapter packed into {pack_adapter(adapter, out)}")
    return 0


def _bundle_import_adapter(args: argparse.Namespace) -> int:
    from pipelines.errors import BadInput

    if not Path(args.source).exists():
        raise BadInput(f"'{args.source}' given to bundle import-adapter does not exist; check the path.")
    into = _output_dir(args.into, "--into")
    base = _existing_dir(args.base, "--base") if args.base else None
    from pipelines.lora import import_adapter

    path = import_adapter(args.source, into, base=base, name=args.name)
    print(f"adapter imported as {path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """Report what this machine has (app/doctor.py); never fails (exit 0)."""
    from app import doctor

    return doctor.run()


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("soundloom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


# ---------------------------------------------------------------- parser


def _export_parent() -> argparse.ArgumentParser:
    """The export flags every sound-making verb shares (pipelines.export.ExportOptions checks the values)."""
    parent = _Parser(add_help=False)
    g = parent.add_argument_group("export (how the file is written; defaults keep the sound as made)")
    g.add_argument("--rate", type=_whole, metavar="HZ", help="sample rate: 44100 (default) or 48000")
    g.add_argument("--bits", type=_whole, metavar="N", help="bit depth of .wav and .flac: 16 (default) or 24")
    g.add_argument("--channels", type=_whole, metavar="N", help="2 stereo (default) or 1 mono")
    g.add_argument(
        "--trim", action="store_true", help="cut leading and trailing silence (quieter than -60 dBFS)"
    )
    g.add_argument(
        "--trim-db", type=_decimal, metavar="DB", help="--trim with this threshold (-120..-10 dBFS)"
    )
    g.add_argument("--fade-in", type=_decimal, metavar="MS", help="raised-cosine fade-in (0..60000 ms)")
    g.add_argument("--fade-out", type=_decimal, metavar="MS", help="raised-cosine fade-out (0..60000 ms)")
    g.add_argument(
        "--lufs",
        type=_decimal,
        metavar="LUFS",
        help="integrated loudness target (BS.1770, -60..0); never pushes the peak above -1 dBFS",
    )
    return parent


def _inference_parent() -> argparse.ArgumentParser:
    """How the generator's DiT runs (pipelines/inference.py checks the values; an absent device is refused)."""
    parent = _Parser(add_help=False)
    g = parent.add_argument_group(
        "inference (how the generator runs; default: bf16 where the CPU multiplies it natively, AMX or "
        "AVX512-BF16, else float32; SOUNDLOOM_BF16=1 or 0 overrides)"
    )
    g.add_argument("--no-bf16", action="store_true", help="run the DiT and the codec in float32")
    g.add_argument(
        "--int8",
        action="store_true",
        help="dynamic int8 quantisation of the DiT blocks' linear layers (float32 around them; CPU only)",
    )
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the DiT (falls back uncompiled with a warning)"
    )
    g.add_argument("--threads", type=_positive_int, metavar="N", help="torch threads (default: torch's)")
    g.add_argument("--device", choices=["cpu", "cuda", "mps"], help="where the DiT samples (default cpu)")
    return parent


def _inference_flags(args: argparse.Namespace) -> dict:
    """The inference flags given ({flag: value}; flags left out are absent)."""
    flags = {
        "--no-bf16": args.no_bf16 or None,
        "--int8": args.int8 or None,
        "--compile": args.compile or None,
        "--threads": args.threads,
        "--device": args.device,
    }
    return {flag: value for flag, value in flags.items() if value is not None}


def _inference_options(args: argparse.Namespace) -> dict:
    """load_generator's keywords for the inference flags given."""
    names = {
        "--no-bf16": "bf16",
        "--int8": "int8",
        "--compile": "compile",
        "--threads": "threads",
        "--device": "device",
    }
    flags = _inference_flags(args)
    return {names[flag]: (False if flag == "--no-bf16" else value) for flag, value in flags.items()}


def _step_list(text: str) -> list[int]:
    """'8' or '1,2,4,8': whole numbers above 0."""
    values = [_number(part.strip(), int, "--steps") for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be whole numbers above 0 (e.g. 8, or 1,2,4,8), not '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    from training.recipes import RECIPES  # a registry of lazy factories: no torch here

    parser = _Parser(prog=PROG, description="soundloom: a local-first generative audio workstation.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str, handler, parents=()) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help, parents=list(parents))
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.wav .flac .mp3)")

    def model(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument("--model", required=required, metavar="BUNDLE", help="model bundle folder")

    def variations(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--variations",
            type=_positive_int,
            default=1,
            metavar="V",
            help="make V sounds (seeds SEED..SEED+V-1) written as OUT_1 .. OUT_V before the extension",
        )

    export = _export_parent()
    inference = _inference_parent()

    p = verb("studio", "open the browser studio", _studio)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument(
        "--outputs", metavar="DIR", help="where generated sounds are saved (default ~/soundloom-output)"
    )
    p.add_argument("--listen", action="store_true", help="listen on every network interface (0.0.0.0)")
    p.add_argument("--auth", metavar="USER:PASS", help="ask for this user name and password")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow --listen without --auth: anyone on the network may use it",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    model(p)

    p = verb("generate", "make sound from a text prompt", _generate, parents=[export, inference])
    p.epilog = (
        "Each output file carries its settings (prompt, seconds, steps, seed, guidance, sampler, the model "
        "bundle's hash and the export options) in its own metadata and beside it as OUT.json, e.g. "
        "song.wav.json. `--from song.wav` reads song.wav.json (or, without it, the settings inside "
        "song.wav) and makes the same file again; --seconds, --steps, --seed and export options given "
        "with --from override the stored values. `--prompts FILE -o DIR` makes one take per line of "
        'FILE (.txt: one prompt a line; .jsonl: {"prompt", "seconds", "steps", "seed", '
        '"name"} a line), every line checked before the first take is made.'
    )
    p.add_argument("prompt", nargs="?", metavar="PROMPT")
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="remake a generated file from its sidecar FILE.json, or the settings embedded in FILE",
    )
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="a batch: one take per line of FILE (.txt or .jsonl), written into the folder -o DIR",
    )
    p.add_argument(
        "--format",
        choices=["wav", "flac", "mp3"],
        help="the takes' format with --prompts (default wav); with -o FILE the extension decides",
    )
    p.add_argument("--seconds", type=_seconds, help="length in seconds (default 10)")
    p.add_argument("--steps", type=_positive_int, help="sampling steps (default: the model's, 50)")
    p.add_argument("--seed", type=_seed, help="seed for the noise (default: random, printed)")
    variations(p)
    model(p)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (.wav .flac .mp3); a folder with --prompts",
    )

    def sampling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=_seed, help="seed for the noise (default: random, printed)")
        p.add_argument("--steps", type=_positive_int, help="sampling steps (default: the model's)")

    pipeline_epilog = (
        "The settings, seed, model hash and export options that made the output are embedded in it and "
        "written beside it as OUT.json."
    )

    p = verb("transform", "restyle a sound with a prompt", _transform, parents=[export])
    p.epilog = pipeline_epilog
    p.add_argument("input", metavar="INPUT")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--strength", type=_unit, default=0.6, help="0..1: how far from the input to go")
    p.add_argument(
        "--keep",
        default="",
        metavar="rhythm,melody",
        help="what to keep from the input: rhythm, melody, loudness",
    )
    sampling(p)
    variations(p)
    model(p)
    output(p)

    p = verb("voice", "turn a voice recording (or a MIDI file) into sound", _voice, parents=[export])
    p.epilog = pipeline_epilog
    p.add_argument("input", metavar="INPUT", help="a recording (.wav .flac .ogg .mp3) or a MIDI file (.mid)")
    p.add_argument("prompt", metavar="PROMPT")
    sampling(p)
    variations(p)
    model(p)
    output(p)

    p = verb("beats", "make a beat-locked loop", _beats, parents=[export])
    p.epilog = pipeline_epilog
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--bpm", type=_bpm, help="tempo (20..400); with --align-to, the track's when left out")
    p.add_argument("--bars", type=_positive_int, required=True)
    p.add_argument("--meter", default="4/4")
    p.add_argument("--key", metavar="K", help="e.g. A minor, F#, Ebm")
    p.add_argument(
        "--loop",
        action="store_true",
        help="make the end run on seamlessly into the start (WAV output gets smpl loop points)",
    )
    p.add_argument("--align-to", metavar="TRACK", help="follow this track's tempo and start on its downbeat")
    p.add_argument(
        "--downbeat-offset",
        type=_float_in(0, 3600, low_open=False),
        metavar="S",
        help="the track's first downbeat in seconds (default: detected)",
    )
    sampling(p)
    variations(p)
    model(p)
    output(p)

    p = verb("extend", "continue a sound", _extend, parents=[export])
    p.epilog = pipeline_epilog
    p.add_argument("input", metavar="INPUT")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--seconds", type=_seconds, required=True)
    sampling(p)
    variations(p)
    model(p)
    output(p)

    p = verb("repaint", "regenerate a span of a sound", _repaint, parents=[export])
    p.epilog = pipeline_epilog
    p.add_argument("input", metavar="INPUT")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--start", type=_float_in(0, 3600, low_open=False), required=True, metavar="A")
    p.add_argument("--end", type=_float_in(0, 3600), required=True, metavar="B")
    sampling(p)
    variations(p)
    model(p)
    output(p)

    p = verb("live", "play a live stream through the sound card", _live)
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--morph", metavar="PROMPT2", help="a second prompt to morph towards")
    p.add_argument(
        "--alpha", type=_unit, default=0.5, help="0..1: where between PROMPT and PROMPT2 (with --morph)"
    )
    p.add_argument(
        "--seconds", type=_float_in(0, 86400), help="stop after S seconds (default: play until Ctrl-C)"
    )
    sampling(p)
    model(p)
    p.add_argument(
        "-o", "--output", metavar="OUT", help="write --seconds of the stream to OUT instead of playing"
    )

    p = verb("codec", "run the audio codec", None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "roundtrip", help="encode and decode a file", description="encode and decode a file"
    )
    q.set_defaults(handler=_codec_roundtrip)
    q.add_argument("input", metavar="INPUT")
    q.add_argument(
        "--max-seconds",
        type=_float_in(0, 36000),
        default=600.0,
        metavar="S",
        help="longest input accepted (600)",
    )
    model(q)
    output(q)

    p = verb("dataset", "build a training corpus", None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "build", help="render the built-in corpus", description="render the built-in corpus"
    )
    q.set_defaults(handler=_dataset_build)
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--hours", type=_hours, default=10.0, help="hours of audio (above 0, at most 1000)")
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument(
        "--latents", action="store_true", help="stream each clip into a latent cache as it is built"
    )
    q.add_argument(
        "--model", metavar="BUNDLE", help="codec bundle for --latents (default: the bundled codec)"
    )
    q.add_argument(
        "--categories",
        metavar="A,B",
        help="build only these categories, e.g. note (a note-rich corpus for a pitch go/no-go); default all",
    )
    q = actions.add_parser(
        "encode",
        help="encode a corpus into a latent cache",
        description="encode a corpus into a latent cache",
    )
    q.set_defaults(handler=_dataset_encode)
    q.add_argument("folder", metavar="DIR")
    q.add_argument("--model", metavar="BUNDLE", help="codec bundle (default: the bundled codec)")
    q.add_argument(
        "--categories",
        metavar="A,B",
        help="encode only clips of these categories (params.category), e.g. note; the rest can follow later",
    )
    q = actions.add_parser(
        "from-folder", help="make a corpus from your folder", description="make a corpus from your folder"
    )
    q.set_defaults(handler=_dataset_from_folder)
    q.add_argument("folder", metavar="DIR")
    q.add_argument("--out", required=True, metavar="DIR")

    p = verb("train", "train or fine-tune a model", _train)
    p.add_argument("--recipe", required=True, help=f"one of {', '.join(sorted(RECIPES))}")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="RUN")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--config", metavar="FILE", help="JSON training config")
    p.add_argument("--init", metavar="BUNDLE", help="start from this bundle")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument(
        "--device", choices=["cpu", "cuda", "mps"], help="where to train (default: the config's, else cpu)"
    )

    p = verb("experiment", "run a recipe comparison", _experiment)
    p.add_argument("name", choices=["stage-adaptive"])
    p.add_argument("--steps", type=_positive_int, default=1200, help="steps of every run (default 1200)")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--data", default=".cache/bundles/corpus", metavar="DIR", help="corpus with its latent cache"
    )
    p.add_argument("--judge", default=None, metavar="BUNDLE", help="judge embedder (default: assets/judge)")
    p.add_argument(
        "--prompts", default=None, metavar="FILE", help="prompts (default: assets/prompts/dev.jsonl)"
    )
    p.add_argument("--arms", default=None, metavar="A,B", help="a subset of the arms, comma-separated")
    p.add_argument("--eval-every", type=_positive_int, metavar="N", help="steps between cheap evaluations")
    p.add_argument("--eval-prompts", type=_positive_int, default=12, metavar="N")
    p.add_argument("--eval-steps", type=_positive_int, default=16, metavar="N")
    p.add_argument("--final-prompts", type=_positive_int, metavar="N", help="default: every prompt")
    p.add_argument("--final-steps", type=_positive_int, default=50, metavar="N")

    p = verb("eval", "evaluate a model", _eval, parents=[inference])
    model(p, required=True)
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="JSON Lines prompts (assets/prompts/dev.jsonl); a generator needs them, an embedder does not",
    )
    p.add_argument("--steps", type=_positive_int, help="sampling steps (default: the bundle's)")
    p.add_argument("--sampler", choices=["euler", "heun", "pingpong"], help="sampler (default: the bundle's)")
    p.add_argument(
        "--guidance",
        type=_float_in(0, 20, low_open=False),
        metavar="G",
        help="CFG scale 0..20 (default: the bundle's; 1 is none)",
    )
    p.add_argument("--json", metavar="OUT", help="also write every figure and generation as JSON")
    p.add_argument(
        "--data", metavar="DIR", help="corpus to compare with (default: the one in the model card)"
    )
    p.add_argument("--split", choices=["test", "val"], default="test", help="report on test, tune on val")
    p.add_argument("--judge", metavar="BUNDLE", help="judge embedder bundle (default: assets/judge)")
    p.add_argument(
        "--samples", type=_samples, default=5, metavar="K", help="generations per prompt (at least 5)"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--max-prompts", type=_positive_int, metavar="N", help="evenly spaced subset, for quick runs"
    )
    p.add_argument(
        "--update-card", action="store_true", help="record the headline figures in the bundle's model card"
    )

    p = verb("bench", "measure speed and quality", _bench, parents=[inference])
    p.epilog = (
        "bench steps: the eval's figures (judge and librosa FD, pitch and tempo accuracy, adherence, CCDS) at "
        "each of --steps (default 1,2,4,8) for each --model BUNDLE[@SAMPLER], drawn to --png and written to "
        "--json. bench generate --options: every inference option against the default, same prompts. "
        "bench generate --compare BUNDLE: --model against BUNDLE in one run (cold start, medians, memory, "
        "compute floor). bench finetune --data FOLDER: the Train tab's quick fine-tune on a folder of sounds, "
        "timed, with the eval's figures before and after on its held-out clips and on the dev prompts."
    )
    p.add_argument("what", choices=["codec", "generate", "pipelines", "load", "steps", "finetune"])
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument(
        "--requests", type=_positive_int, metavar="N", help="concurrent studio requests (load; default 16)"
    )
    p.add_argument("--seconds", type=_seconds, metavar="S", help="seconds per request (load; default 4)")
    p.add_argument(
        "--steps",
        type=_step_list,
        metavar="N",
        help="sampling steps (load; default: model's); steps: a list 1,2,4,8",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="corpus whose test split to measure (codec, steps); finetune: a folder of sounds",
    )
    p.add_argument("--update-card", action="store_true", help="record the figures in the bundle's model card")
    p.add_argument(
        "--model",
        action="append",
        metavar="BUNDLE",
        help="model bundle folder (steps: several, each BUNDLE[@SAMPLER])",
    )
    p.add_argument(
        "--options", action="store_true", help="generate: time every inference option against the default"
    )
    p.add_argument(
        "--compare", metavar="BUNDLE", help="generate: time --model against this generator bundle in one run"
    )
    p.add_argument("--prompts", metavar="FILE", help="steps: prompts (default assets/prompts/dev.jsonl)")
    p.add_argument("--judge", metavar="BUNDLE", help="steps: judge embedder bundle (default: assets/judge)")
    p.add_argument("--samples", type=_samples, metavar="K", help="steps: generations per prompt (default 5)")
    p.add_argument("--max-prompts", type=_positive_int, metavar="N", help="steps: evenly spaced subset")
    p.add_argument("--split", choices=["test", "val"], help="steps: the corpus split (default test)")
    p.add_argument(
        "--sampler", choices=["euler", "heun", "pingpong"], help="steps: for models without @SAMPLER"
    )
    p.add_argument(
        "--guidance", type=_float_in(0, 20, low_open=False), metavar="G", help="steps: CFG scale 0..20"
    )
    p.add_argument("--png", metavar="OUT", help="steps: draw the curves to this PNG")

    p = verb("bundle", "package a trained model", None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "export", help="write a bundle from a run", description="write a bundle from a run"
    )
    q.set_defaults(handler=_bundle_export)
    q.add_argument("--run", required=True, metavar="RUN")
    q.add_argument("--data", required=True, metavar="DIR")
    q.add_argument(
        "--keep-change",
        type=_float_in(0, 1, low_open=True),
        metavar="K",
        help="a full fine-tune from --init: keep this share of its change from the start weights (the run's "
        "recipe.keep_change unless given; 1 keeps all of it)",
    )
    q.add_argument("--out", required=True, metavar="DIR")
    help = "write an int8 copy of a bundle (half the size; it loads as float, as the original does)"
    q = actions.add_parser("quantize", help=help, description=help)
    q.set_defaults(handler=_bundle_quantize)
    q.add_argument("bundle", metavar="BUNDLE", help="the bundle folder to copy")
    q.add_argument("--out", required=True, metavar="DIR", help="the folder to write the int8 bundle to")
    help = "write a LoRA adapter bundle as one file to share"
    q = actions.add_parser("pack-adapter", help=help, description=help)
    q.set_defaults(handler=_bundle_pack_adapter)
    q.add_argument("adapter", metavar="ADAPTER", help="adapter bundle folder (bundle export of a LoRA run)")
    q.add_argument(
        "--out", required=True, metavar="FILE", help="the file to write (e.g. my-sounds.safetensors)"
    )
    help = "check a shared LoRA adapter against its base generator and copy it into a models folder"
    q = actions.add_parser("import-adapter", help=help, description=help)
    q.set_defaults(handler=_bundle_import_adapter)
    q.add_argument("source", metavar="SOURCE", help="a packed adapter file or an adapter bundle folder")
    q.add_argument("--into", required=True, metavar="DIR", help="the models folder to copy it into")
    q.add_argument("--base", metavar="BUNDLE", help="its base generator (default: found by its hash)")
    q.add_argument("--name", help="the adapter's folder name there (default: its own)")

    verb("doctor", "check this machine's setup", _doctor)
    return parser


# ---------------------------------------------------------------- entry point


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 bad input, 1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else 2

    from pipelines.errors import BadInput

    debug = os.environ.get("SOUNDLOOM_DEBUG") == "1"
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.handler(args) or 0)
        except BadInput as e:
            if debug:
                traceback.print_exc()
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted.", file=sys.stderr)
            return 130
        except Exception as e:
            if debug:
                traceback.print_exc()
            detail = _one_line(f"{type(e).__name__}: {e}")
            print(
                f"error: internal error ({detail}); run with SOUNDLOOM_DEBUG=1 for the traceback.",
                file=sys.stderr,
            )
            return 1
