"""The studio: a Gradio app in the browser over the pipelines (`soundloom studio`).

    from app.studio import Studio, build_app, launch
    studio = Studio(model="path/to/generator", outputs="~/soundloom-output")
    launch(studio, port=7860)                        # blocks; http://127.0.0.1:7860

Three parts, top to bottom: `Studio` holds the state and the event handlers (they call pipelines.*,
never model math, and turn a `BadInput` into a one-sentence gr.Error); `build_app` is the layout and
wires components to handlers; `launch` / `run_studio` serve it with the safety defaults (loopback
unless told otherwise, one generation at a time through a bounded queue, files served only from
the output folder, which may not hold the home folder, uploads capped, no fetching of URLs for
clients).

Tabs and their API names (the CLI's verbs): Generate (/generate), Live (/live: a morph preview,
/live_stream: an endless stream; app/live_room.py), Transform (/transform), Voice (/voice), Beats
(/beats), Edit (/extend and /repaint), Models (/models lists the bundles, /switch_model changes the
studio's model; app/models_room.py), Train (the training room, app/train_room.py; its events have no
API names). A tab that takes a file reads it only from Gradio's upload folder: what a client names as a
path is never opened.
"""

from __future__ import annotations

import os

# Offline by design, before gradio (and through it huggingface_hub) is imported; as in app/cli.py an
# explicit setting in the user's environment wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import concurrent.futures  # noqa: E402
import contextvars  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from pipelines import edit, loops, transform, voice  # noqa: E402
from pipelines.atomic_files import write_atomic  # noqa: E402
from pipelines.audio import INPUT_FORMATS, load_audio, save_audio  # noqa: E402
from pipelines.bundle import read_model_json  # noqa: E402
from pipelines.conditioned import pipeline_record  # noqa: E402
from pipelines.errors import BadInput  # noqa: E402
from pipelines.generator import (  # noqa: E402
    Generator,
    default_generator_path,
    load_generator,
    settings_path,
    settings_record,
)

MAX_TAKES = 4  # variations shown at once: one player each
MAX_QUEUE = 24  # waiting generations beyond this are refused with "the queue is full"
# Sessions (browser tabs, API clients) whose state the studio keeps; an older one starts afresh on its next
# request. Gradio keeps 10,000 by default, each with its own copy of the whole page's config (~1 MB of this
# studio's heap), so every new API client grew the server for good: 16 clients at a time took it from 631 to
# 694 MiB over four rounds, and `bench load` never came back to its baseline (issue 8).
SESSION_CAPACITY = 32
MAX_UPLOAD = "200mb"
MAX_HISTORY = 200  # rows kept per browser session
FORMATS = (".wav", ".flac", ".mp3")  # the wav first: the players use it
HISTORY_HEADERS = ["#", "prompt", "seconds", "steps", "seed", "variations", "made at"]
DEFAULT_SECONDS = 4.0
FALLBACK_MAX_SECONDS = 47.0  # DiTConfig's default, for a bundle whose model.json cannot be read yet
SEED_RANGE = 2**31
RANDOM_SEED = -1  # the seed box's "draw one for me"
REMOTE_FILE = re.compile(r"/file[=/]https?:", re.IGNORECASE)  # Gradio's file routes given a URL
METERS = ("4/4", "3/4", "6/8", "2/4", "5/4", "7/8", "12/8")  # the Beats tab's choices; others can be typed
DEFAULT_BPM = 120
DEFAULT_BARS = 4
DEFAULT_EXTEND_SECONDS = 2.0
UPLOAD_KINDS = ", ".join(INPUT_FORMATS[:-1]) + " or " + INPUT_FORMATS[-1]


def default_outputs() -> Path:
    return Path.home() / "soundloom-output"


# ---------------------------------------------------------------- state and event handlers


class GenerationLock:
    """One generation at a time, used as `with studio._run_lock:` by every tab, with each of `guards` (context
    manager factories) held around the generation: the Train tab suspends its run meanwhile, so a sound made
    on the cores a run trains on comes as quickly as without it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.guards: list = []
        self._held: ExitStack | None = None

    def __enter__(self) -> GenerationLock:
        self._lock.acquire()
        stack = ExitStack()
        try:
            for guard in self.guards:
                stack.enter_context(guard())
        except BaseException:
            stack.close()
            self._lock.release()
            raise
        self._held = stack  # the lock is held, so no other generation can overwrite it
        return self

    def __exit__(self, *exc) -> None:
        stack, self._held = self._held, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self._lock.release()


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()


@contextmanager
def _freed_memory_handed_back():
    """Held around each generation: afterwards, the heap memory it freed goes back to the system. glibc keeps
    freed memory in its arenas (one per worker thread Gradio runs a handler on) for reuse, so without this the
    studio's resident size ratchets up with each burst of requests; `soundloom bench load` measures it."""
    try:
        yield
    finally:
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


class Studio:
    """The studio's state and handlers: one generator, loaded lazily once, and the output folder."""

    def __init__(self, model: str | Path | None = None, outputs: str | Path | None = None):
        self.model = Path(model) if model is not None else None
        self.outputs = Path(outputs if outputs is not None else default_outputs()).expanduser().resolve()
        self._generator: Generator | None = None
        self._load_lock = threading.Lock()
        self._run_lock = GenerationLock()  # the queue runs one generation at a time; direct calls too
        # Every generation (Generate, pipelines, Live previews and streams, the Train tab's A/B) runs on this
        # one thread (on_model_thread). Gradio hands each request to one of its many worker threads, and
        # every thread that ran the model kept its own few MB of memory (malloc arenas, thread-local
        # buffers) for good: 16 generations on 16 threads left RSS +50 MiB, on one thread +0.5 (issue 8).
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="soundloom-model")
        self.generation_guards = self._run_lock.guards  # held around each generation (the Train tab's pause)
        self.generation_guards.append(_freed_memory_handed_back)
        self.config = self._bundle_config()

    # -------------------------------------------------------- the model

    def _bundle_config(self) -> dict:
        """The bundle's config from its model.json (cheap: no tensors), to size the controls; {} if unreadable."""
        try:
            meta = read_model_json(self.model or default_generator_path())
        except BadInput:
            return {}
        config = meta.get("config") if isinstance(meta, dict) else None
        return config if isinstance(config, dict) else {}

    @property
    def max_seconds(self) -> float:
        dit = self.config.get("dit")
        value = dit.get("max_seconds") if isinstance(dit, dict) else None
        return float(value) if isinstance(value, int | float) and value > 0 else FALLBACK_MAX_SECONDS

    @property
    def default_steps(self) -> int:
        value = self.config.get("steps", 50)
        return value if isinstance(value, int) and value > 0 else 50

    def bundle_problem(self) -> str | None:
        """Why no generator can be loaded, in load_generator's own sentence, when the bundle is missing."""
        if (Path(self.model or default_generator_path()) / "model.json").is_file():
            return None  # a damaged bundle is reported when it loads, by the same BadInput
        try:
            load_generator(self.model)  # fails at once, before any weights, with the how-to sentence
        except BadInput as e:
            return str(e)
        return None

    def generator(self) -> Generator:
        """The generator, loaded on first use and kept; BadInput when the bundle is missing or damaged."""
        with self._load_lock:
            if self._generator is None:
                self._generator = load_generator(self.model)
            return self._generator

    @property
    def model_path(self) -> Path:
        """The folder of the bundle the studio uses now (the bundled default when none was given)."""
        return Path(self.model or default_generator_path()).resolve()

    def model_folders(self) -> list[tuple[str, Path]]:
        """Where the Models tab looks for bundles, as (what to call it, folder): the bundled models and
        the output folder's models/ (export a bundle there to find it in the studio)."""
        return [("bundled", default_generator_path().parent), ("models folder", self.outputs / "models")]

    def switch_model(self, model: str | Path) -> Generator:
        """Make the bundle at `model` the studio's model. It is loaded (checksums verified) before anything
        changes, so a broken bundle is refused with its BadInput and the old model stays. A generation
        already running finishes on the model it started with; generations asked for later use the new one."""
        path = Path(model).resolve()
        with self._load_lock:  # a generator() call waits for the switch and gets the new model
            gen = load_generator(path)
            self.model, self._generator = path, gen
            self.config = self._bundle_config()
        return gen

    def preload(self) -> None:
        """Load the model in the background after the page is up, so the first click does not wait."""
        try:
            self.generator()
        except BadInput:
            pass  # the Generate tab says how to get a bundle, and a click says it again
        except Exception:
            traceback.print_exc()

    def on_model_thread(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the studio's one model thread, with the caller's context (Gradio's
        progress reporting reads it); its result, or its exception raised here. Generations and the
        encoding of their files run there."""
        context = contextvars.copy_context()
        return self._model_thread.submit(context.run, fn, *args, **kwargs).result()

    # -------------------------------------------------------- handlers

    def generate(self, prompt, seconds, steps, seed, variations, history, progress=gr.Progress()):
        """Make `variations` takes. Yields twice (players, downloads, settings, history, table, take
        paths): first as soon as the wavs are written, so the players fill at once, then with the flac
        and mp3 copies added to the downloads (mp3 encoding takes longer than a short generation)."""
        with _said_in_one_sentence():
            if self._generator is None:
                progress(0, desc="loading the model")
            gen = self.generator()
            steps, seed, variations = _whole(steps), _seed(seed), _whole(variations)
            if isinstance(variations, int) and not 1 <= variations <= MAX_TAKES:
                raise BadInput(
                    f"variations must be between 1 and {MAX_TAKES} in the studio, not {variations}."
                )
            with self._run_lock:
                started = time.perf_counter()

                def on_step(state: dict) -> None:  # last_settings holds this call's checked settings
                    progress((int(state["i"]) + 1, gen.last_settings.steps), desc="sampling", unit="steps")

                takes = self.on_model_thread(
                    gen.generate_variations,
                    prompt,
                    seconds=seconds,
                    steps=steps,
                    seed=seed,
                    variations=variations,
                    callback=on_step,
                )
                used = gen.last_settings
                elapsed = time.perf_counter() - started
            stems = self._stems(used.prompt, used.seed, len(takes))
            records = [settings_record(replace(used, seed=used.seed + i), gen) for i in range(len(takes))]
            wavs = self.on_model_thread(self._write, takes, stems, ".wav", records)

        record = {
            **asdict(used),
            "variations": len(takes),
            "model": str(gen.bundle_path) if gen.bundle_path else None,
            "model_hash": gen.bundle_hash,
            "generation_time_s": round(elapsed, 3),
        }
        n = (history[0]["n"] + 1) if history else 1
        entry = {"n": n, "made": time.strftime("%H:%M:%S"), "files": [str(p) for p in wavs], **record}
        history = [entry, *(history or [])][:MAX_HISTORY]
        outputs = (*_players(wavs), entry["files"], record, history, _table(history), entry["files"][:])
        yield outputs

        with _said_in_one_sentence():
            others = [
                p
                for ext in FORMATS[1:]
                for p in self.on_model_thread(self._write, takes, stems, ext, records)
            ]
        entry["files"] = entry["files"] + [str(p) for p in others]
        players = [str(p) for p in wavs] + [None] * (MAX_TAKES - len(wavs))  # plain: API clients get paths
        yield (*players, entry["files"], *outputs[MAX_TAKES + 1 :])

    def plot(self, takes: list[str]):
        """The waveform and spectrogram picture of the takes just made (None when there are none)."""
        if not takes:
            return None
        from app.plots import waveform_and_spectrogram  # matplotlib loads at the first plot, not at start-up

        with _said_in_one_sentence():
            audio = [load_audio(p) for p in takes]
            return waveform_and_spectrogram(audio)  # rows titled "take 1", "take 2", ... as the players

    def restore(self, history: list[dict], evt: gr.SelectData):
        """A click on a history row: its settings back into the controls, its takes into the players."""
        return self.restore_row(history, evt.index[0] if isinstance(evt.index, list | tuple) else evt.index)

    def restore_row(self, history: list[dict], row: int):
        """Row `row` of the history table (newest first) as (prompt, seconds, steps, seed, variations, players...)."""
        if not history or not 0 <= row < len(history):
            return tuple(gr.skip() for _ in range(5 + MAX_TAKES))
        entry = history[row]
        wavs = [Path(f) for f in entry["files"] if f.endswith(".wav") and Path(f).is_file()]
        return (
            entry["prompt"],
            entry["seconds"],
            entry["steps"],
            entry["seed"],
            entry["variations"],
            *_players(wavs),
        )

    @staticmethod
    def random_seed() -> int:
        return secrets.randbelow(SEED_RANGE)

    # -------------------------------------------------------- the pipeline tabs
    # Each yields (player, downloads, settings) twice, as `generate` does: the wav first, then with its
    # flac and mp3 copies. Files come from Gradio's upload folder only (`_uploaded`).

    def transform(self, audio, prompt, strength, keep, seed, steps, progress=gr.Progress()):
        """Restyle an uploaded sound with a prompt (pipelines.transform)."""
        with _said_in_one_sentence():
            path = _uploaded(audio)
            if path is None:
                raise BadInput(f"No sound to transform was uploaded; upload a {UPLOAD_KINDS} file.")
            source = load_audio(path)
        steps = _whole(steps)

        def make(gen, callback, info):
            return transform.transform(
                gen,
                source,
                prompt,
                strength=strength,
                keep=keep,
                seed=_seed(seed),
                steps=steps,
                callback=callback,
                info=info,
            )

        yield from self._make("transform", make, steps, path, progress)

    def voice(self, recording, midi, prompt, seed, steps, progress=gr.Progress()):
        """The sound a prompt names, performed by a recorded or uploaded voice, or a MIDI file (pipelines.voice)."""
        with _said_in_one_sentence():
            given = [p for p in (_uploaded(recording), _uploaded(midi)) if p is not None]
            if not given:
                raise BadInput("No voice was given; record one, or upload a recording or a MIDI file.")
            if len(given) > 1:
                raise BadInput("Both a recording and a MIDI file were given; clear the one not to use.")
        path, steps = given[0], _whole(steps)

        def make(gen, callback, info):  # voice reads the path: a MIDI file, or audio through load_audio
            return voice.voice(gen, path, prompt, seed=_seed(seed), steps=steps, callback=callback, info=info)

        yield from self._make("voice", make, steps, path, progress)

    def beats(self, prompt, bpm, bars, meter, key, loop, align_to, seed, steps, progress=gr.Progress()):
        """Bars on an exact tempo grid, optionally a loop or aligned to an uploaded track (pipelines.loops)."""
        with _said_in_one_sentence():
            path = _uploaded(align_to)
            track = load_audio(path) if path is not None else None
        key = None if key is None or (isinstance(key, str) and not key.strip()) else key  # blank: no key
        steps = _whole(steps)

        def make(gen, callback, info):
            return loops.beats(
                gen,
                prompt,
                bars=_whole(bars),
                bpm=bpm,
                meter=meter,
                key=key,
                loop=bool(loop),
                align_to=track,
                seed=_seed(seed),
                steps=steps,
                callback=callback,
                info=info,
            )

        yield from self._make("beats", make, steps, path, progress)

    def extend(self, audio, prompt, seconds, seed, steps, progress=gr.Progress()):
        """An uploaded sound followed by `seconds` more of the prompt (pipelines.edit)."""
        with _said_in_one_sentence():
            path = _uploaded(audio)
            if path is None:
                raise BadInput(f"No sound to extend was uploaded; upload a {UPLOAD_KINDS} file.")
            source = load_audio(path)
        steps = _whole(steps)

        def make(gen, callback, info):
            return edit.extend(
                gen,
                source,
                prompt,
                seconds=seconds,
                seed=_seed(seed),
                steps=steps,
                callback=callback,
                info=info,
            )

        yield from self._make("extend", make, steps, path, progress)

    def repaint(self, audio, prompt, start, end, seed, steps, progress=gr.Progress()):
        """An uploaded sound with [start, end) seconds made afresh for the prompt (pipelines.edit)."""
        with _said_in_one_sentence():
            path = _uploaded(audio)
            if path is None:
                raise BadInput(f"No sound to repaint was uploaded; upload a {UPLOAD_KINDS} file.")
            source = load_audio(path)
        steps = _whole(steps)

        def make(gen, callback, info):
            return edit.repaint(
                gen,
                source,
                prompt,
                start=start,
                end=end,
                seed=_seed(seed),
                steps=steps,
                callback=callback,
                info=info,
            )

        yield from self._make("repaint", make, steps, path, progress)

    @staticmethod
    def edit_mode(mode: str):
        """The Edit tab's controls for `mode`: (extend's, repaint's) visibility."""
        return gr.update(visible=mode != "repaint"), gr.update(visible=mode == "repaint")

    def _make(self, verb: str, make, steps, source: Path | None, progress):
        """Run `make(gen, callback, info)`, one generation at a time, and write its take as the CLI does,
        with the pipeline's settings record beside each file (`source`: the uploaded file's name)."""
        with _said_in_one_sentence():
            if self._generator is None:
                progress(0, desc="loading the model")
            gen = self.generator()
            total = steps if isinstance(steps, int) and steps > 0 else gen.default_steps
            info: dict = {}
            with self._run_lock:
                started = time.perf_counter()

                def on_step(state: dict) -> None:  # long beats and extensions restart it per window
                    progress((int(state["i"]) + 1, total), desc="sampling", unit="steps")

                take = self.on_model_thread(make, gen, on_step, info)
                elapsed = time.perf_counter() - started
            record = pipeline_record({**info, "source": source.name if source else None}, gen)
            stems = self._stems(info["prompt"], info["seed"], 1, verb)
            wavs = self.on_model_thread(self._write, [take], stems, ".wav", [record])
        shown = {**record, "generation_time_s": round(elapsed, 3)}
        yield str(wavs[0]), [str(wavs[0])], shown

        with _said_in_one_sentence():
            others = [
                p
                for ext in FORMATS[1:]
                for p in self.on_model_thread(self._write, [take], stems, ext, [record])
            ]
        yield str(wavs[0]), [str(p) for p in (*wavs, *others)], shown

    # -------------------------------------------------------- files

    def _stems(self, prompt: str, seed: int, count: int, verb: str | None = None) -> list[Path]:
        """Where take i goes in the output folder, less its extension: time, verb (pipelines), prompt
        and seed in the name."""
        try:
            self.outputs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(
                f"Cannot create the output folder '{self.outputs}' ({e.strerror or e}); start the studio "
                "with --outputs pointing at a folder you can write."
            ) from None
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "sound"
        slug = f"{verb}-{slug}" if verb else slug
        return [self.outputs / f"{stamp}_{slug}_seed{seed + i}" for i in range(count)]

    def _write(self, takes, stems: list[Path], ext: str, records: list[dict]) -> list[Path]:
        """Each take as `ext`, with its settings record beside it (as the CLI writes them)."""
        paths = []
        for audio, stem, record in zip(takes, stems, records):
            path = stem.with_name(stem.name + ext)
            save_audio(audio, path)
            write_atomic(settings_path(path), json.dumps(record, indent=2) + "\n")
            paths.append(path)
        return paths


def _whole(value):
    """A float with no fraction as an int (sliders and JSON clients send 4.0); anything else unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _seed(value):
    """The seed box's value for a pipeline: -1 is None (the generator draws one and reports it)."""
    value = _whole(value)
    return None if value == RANDOM_SEED else value


def _uploaded(value) -> Path | None:
    """The file a client uploaded (a FileData dict, or its path), None when none was given.

    Gradio already refuses FileData outside its upload folder; this holds for direct calls too and
    after symlinks are followed, so a path a client names is never opened unless Gradio stored it."""
    path = value.get("path") if isinstance(value, dict) else value
    if path is None or path == "":
        return None
    if not isinstance(path, str | os.PathLike):
        raise BadInput(f"A file input must be an uploaded file, not {type(path).__name__}; upload the file.")
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(get_upload_folder())) or not real.is_file():
        raise BadInput(
            f"'{Path(path).name}' is not a file uploaded to the studio; upload it through the page "
            "(or gradio_client's handle_file)."
        )
    return real


def _players(wavs: list[Path]) -> list:
    return [
        gr.update(value=str(wavs[i]), visible=True)
        if i < len(wavs)
        else gr.update(value=None, visible=i == 0)
        for i in range(MAX_TAKES)
    ]


def _table(history: list[dict]) -> list[list]:
    return [
        [e["n"], e["prompt"], e["seconds"], e["steps"], e["seed"], e["variations"], e["made"]]
        for e in history
    ]


@contextmanager
def _said_in_one_sentence():
    """User mistakes become their one-sentence gr.Error; anything else a plain sentence, traceback in the terminal."""
    try:
        yield
    except BadInput as e:
        raise gr.Error(str(e), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as e:
        traceback.print_exc()
        raise gr.Error(
            f"Something went wrong inside soundloom ({type(e).__name__}); the terminal running the studio "
            "shows the details.",
            print_exception=False,
        ) from None


# ---------------------------------------------------------------- layout


def build_app(studio: Studio) -> gr.Blocks:
    """The studio's page: components and the events that connect them to `studio`'s handlers."""
    from app import live_room, models_room, train_room  # they import this module: imported here, once loaded

    max_seconds = studio.max_seconds
    with gr.Blocks(title="soundloom studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        history = gr.State([])
        takes = gr.State([])
        gr.Markdown("# soundloom studio")
        with gr.Tab("Generate"):
            problem = studio.bundle_problem()
            if problem:
                gr.Markdown(f"**{problem}**", elem_id="bundle-problem")
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(
                        label="prompt",
                        placeholder="a warm cello note, A3, slow bow",
                        lines=2,
                        max_lines=6,
                        elem_id="prompt",
                    )
                    with gr.Row():
                        seconds = gr.Slider(
                            0.5,
                            max_seconds,
                            value=min(DEFAULT_SECONDS, max_seconds),
                            step=0.25,
                            label="seconds",
                        )
                        steps = gr.Slider(
                            1,
                            max(200, studio.default_steps),
                            value=studio.default_steps,
                            step=1,
                            precision=0,
                            label="steps",
                        )
                    with gr.Row(equal_height=True):
                        seed = gr.Number(RANDOM_SEED, label="seed (-1: random)", precision=0, scale=3)
                        dice = gr.Button("new seed", scale=1, min_width=90, elem_id="dice")
                        variations = gr.Slider(
                            1, MAX_TAKES, value=1, step=1, precision=0, label="variations", scale=3
                        )
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    used = gr.JSON(label="settings used")
                with gr.Column(scale=3):
                    players = [
                        gr.Audio(
                            label=f"take {i + 1}",
                            type="filepath",
                            interactive=False,
                            visible=i == 0,
                            buttons=["download"],
                            elem_id=f"take-{i + 1}",
                        )
                        for i in range(MAX_TAKES)
                    ]
                    picture = gr.Image(label="waveform and spectrogram", type="numpy", interactive=False)
                    downloads = gr.File(
                        label="downloads: wav, flac, mp3", file_count="multiple", interactive=False
                    )
            table = gr.Dataframe(
                headers=HISTORY_HEADERS,
                interactive=False,
                label="this session's sounds (select a row to restore its settings)",
                elem_id="history",
            )

        dice.click(studio.random_seed, outputs=seed, queue=False, api_visibility="private")
        made = _run_event(
            run,
            studio.generate,
            [prompt, seconds, steps, seed, variations, history],
            [*players, downloads, used, history, table, takes],
            "generate",
        )
        made.success(studio.plot, inputs=takes, outputs=picture, api_visibility="private")
        table.select(
            studio.restore,
            inputs=history,
            outputs=[prompt, seconds, steps, seed, variations, *players],
            queue=False,
            api_visibility="private",
        )

        live_room.live_tab(studio, demo)
        _transform_tab(studio)
        _voice_tab(studio)
        _beats_tab(studio)
        _edit_tab(studio)
        train_room.train_tab(studio)
        models_room.models_tab(studio)
    return demo


def _run_event(button: gr.Button, handler, inputs: list, outputs: list, api_name: str):
    """A click that runs a generation: queued behind any other (one model, one at a time), named for API
    clients, its progress and errors shown on the first output."""
    return button.click(
        handler,
        inputs=inputs,
        outputs=outputs,
        api_name=api_name,
        preprocess=False,  # the pipelines' checks say what is wrong, not the sliders' range errors
        show_progress_on=outputs[0],  # one progress bar (and one error badge), not one per output
        concurrency_id="model",
        concurrency_limit=1,
    )


def _prompt(verb: str, placeholder: str) -> gr.Textbox:
    return gr.Textbox(label="prompt", placeholder=placeholder, lines=2, max_lines=6, elem_id=f"{verb}-prompt")


def _seed_and_steps(studio: Studio, verb: str) -> tuple[gr.Number, gr.Slider]:
    """The seed box with its dice and the steps slider, as on the Generate tab."""
    with gr.Row(equal_height=True):
        seed = gr.Number(RANDOM_SEED, label="seed (-1: random)", precision=0, scale=3)
        dice = gr.Button("new seed", scale=1, min_width=90, elem_id=f"{verb}-dice")
        steps = gr.Slider(
            1,
            max(200, studio.default_steps),
            value=studio.default_steps,
            step=1,
            precision=0,
            label="steps",
            scale=3,
        )
    dice.click(studio.random_seed, outputs=seed, queue=False, api_visibility="private")
    return seed, steps


def _result(verb: str, *, loop: bool = False) -> list:
    """The result column of a pipeline tab: [player, downloads, settings used]."""
    return [
        gr.Audio(
            label="result",
            type="filepath",
            interactive=False,
            buttons=["download"],
            loop=loop,
            elem_id=f"{verb}-take",
        ),
        gr.File(label="downloads: wav, flac, mp3", file_count="multiple", interactive=False),
        gr.JSON(label="settings used"),
    ]


def _upload(label: str, elem_id: str, sources: list[str] | None = None) -> gr.Audio:
    return gr.Audio(label=label, sources=sources or ["upload"], type="filepath", elem_id=elem_id)


def _transform_tab(studio: Studio) -> None:
    with gr.Tab("Transform"):
        with gr.Row():
            with gr.Column(scale=2):
                source = _upload("sound to transform", "transform-source")
                prompt = _prompt("transform", "a glassy marimba")
                strength = gr.Slider(
                    0.0,
                    1.0,
                    value=transform.DEFAULT_STRENGTH,
                    step=0.05,
                    label="strength (0: the source as it is, 1: the prompt alone)",
                )
                keep = gr.CheckboxGroup(list(transform.KEEP), value=[], label="keep from the source")
                seed, steps = _seed_and_steps(studio, "transform")
                run = gr.Button("Transform", variant="primary", elem_id="transform")
            with gr.Column(scale=3):
                result = _result("transform")
    _run_event(run, studio.transform, [source, prompt, strength, keep, seed, steps], result, "transform")


def _voice_tab(studio: Studio) -> None:
    with gr.Tab("Voice"):
        with gr.Row():
            with gr.Column(scale=2):
                recording = _upload("voice: record or upload", "voice-source", ["microphone", "upload"])
                midi = gr.File(
                    label="or a MIDI file",
                    file_types=list(voice.MIDI_SUFFIXES),
                    type="filepath",
                    elem_id="voice-midi",
                )
                prompt = _prompt("voice", "a soft flute")
                seed, steps = _seed_and_steps(studio, "voice")
                run = gr.Button("Perform", variant="primary", elem_id="voice")
            with gr.Column(scale=3):
                result = _result("voice")
    _run_event(run, studio.voice, [recording, midi, prompt, seed, steps], result, "voice")


def _beats_tab(studio: Studio) -> None:
    with gr.Tab("Beats"):
        with gr.Row():
            with gr.Column(scale=2):
                prompt = _prompt("beats", "a tight funk drum loop")
                with gr.Row():
                    bpm = gr.Number(DEFAULT_BPM, label="bpm (empty: the track's)", min_width=100)
                    bars = gr.Number(DEFAULT_BARS, label="bars", precision=0, min_width=100)
                    meter = gr.Dropdown(
                        list(METERS), value=METERS[0], label="meter", allow_custom_value=True, min_width=100
                    )
                    key = gr.Textbox(label="key (optional)", placeholder="A minor", min_width=100)
                loop = gr.Checkbox(True, label="loop: the end runs on into the start")
                track = _upload("track to align to (optional: its tempo and downbeat)", "beats-track")
                seed, steps = _seed_and_steps(studio, "beats")
                run = gr.Button("Make bars", variant="primary", elem_id="beats")
            with gr.Column(scale=3):
                result = _result("beats", loop=True)
    _run_event(run, studio.beats, [prompt, bpm, bars, meter, key, loop, track, seed, steps], result, "beats")


def _edit_tab(studio: Studio) -> None:
    with gr.Tab("Edit"):
        with gr.Row():
            with gr.Column(scale=2):
                source = _upload("sound to edit", "edit-source")
                prompt = _prompt("edit", "the rain keeps falling")
                seed, steps = _seed_and_steps(studio, "edit")
                mode = gr.Radio(["extend", "repaint"], value="extend", label="edit", elem_id="edit-mode")
                with gr.Column(visible=True) as extending:
                    seconds = gr.Number(DEFAULT_EXTEND_SECONDS, label="seconds to add")
                    run_extend = gr.Button("Extend", variant="primary", elem_id="extend")
                with gr.Column(visible=False) as repainting:
                    with gr.Row():
                        start = gr.Number(0.5, label="repaint from (s)")
                        end = gr.Number(1.5, label="to (s)")
                    run_repaint = gr.Button("Repaint", variant="primary", elem_id="repaint")
            with gr.Column(scale=3):
                result = _result("edit")
    mode.change(
        studio.edit_mode, inputs=mode, outputs=[extending, repainting], queue=False, api_visibility="private"
    )
    _run_event(run_extend, studio.extend, [source, prompt, seconds, seed, steps], result, "extend")
    _run_event(run_repaint, studio.repaint, [source, prompt, start, end, seed, steps], result, "repaint")


# ---------------------------------------------------------------- serving


def launch(
    studio: Studio,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    open_browser: bool = False,
    block: bool = True,
    preload: bool = True,
) -> gr.Blocks:
    """Serve the studio at http://host:port; with block=False return the running app (call .close())."""
    _check_outputs_servable(studio.outputs)
    _check_port_free(host, port)
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=False,
        inbrowser=open_browser,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(studio.outputs)],
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        state_session_capacity=SESSION_CAPACITY,
        app_kwargs={"middleware": [Middleware(_NoRemoteFiles)]},
    )
    if preload:
        threading.Thread(target=studio.preload, name="soundloom-preload", daemon=True).start()
    if block:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"soundloom studio on http://{shown}:{port} (Ctrl-C to stop); sounds go to {studio.outputs}")
        sys.stdout.flush()
        demo.block_thread()  # returns on Ctrl-C, after closing the server
    return demo


def run_studio(
    *,
    model: str | Path | None = None,
    outputs: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    open_browser: bool = True,
) -> None:
    """What `soundloom studio` does: serve until Ctrl-C. The caller decides whether `host` may be public."""
    launch(Studio(model, outputs), host=host, port=port, auth=auth, open_browser=open_browser)


class _NoRemoteFiles:
    """Refuses `/file=<http(s) URL>`, which Gradio answers by fetching the URL itself: the studio serves
    its output folder and never goes online on a client's behalf."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and REMOTE_FILE.search(scope.get("path", "")):
            refused = PlainTextResponse(
                "The studio serves files from its output folder only.", status_code=403
            )
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _check_outputs_servable(outputs: Path) -> None:
    """Every file under the output folder can be fetched from the page: it must not hold the home folder."""
    home = Path.home().resolve()
    if outputs == Path(outputs.anchor) or home == outputs or outputs in home.parents:
        raise BadInput(
            f"The output folder '{outputs}' holds your home folder, and the studio serves every file in its "
            "output folder; pass --outputs a folder of its own, such as ~/soundloom-output."
        )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise BadInput(
                f"Cannot listen on {host}:{port} ({e.strerror or e}; another studio may be running); "
                "pass --port with a free port."
            ) from None
