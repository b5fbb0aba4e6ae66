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
"""

from __future__ import annotations

import os

# Offline by design, before gradio (and through it huggingface_hub) is imported; as in app/cli.py an
# explicit setting in the user's environment wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from pipelines.atomic_files import write_atomic  # noqa: E402
from pipelines.audio import load_audio, save_audio  # noqa: E402
from pipelines.bundle import read_model_json  # noqa: E402
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
MAX_UPLOAD = "200mb"
MAX_HISTORY = 200  # rows kept per browser session
FORMATS = (".wav", ".flac", ".mp3")  # the wav first: the players use it
HISTORY_HEADERS = ["#", "prompt", "seconds", "steps", "seed", "variations", "made at"]
DEFAULT_SECONDS = 4.0
FALLBACK_MAX_SECONDS = 47.0  # DiTConfig's default, for a bundle whose model.json cannot be read yet
SEED_RANGE = 2**31
RANDOM_SEED = -1  # the seed box's "draw one for me"
REMOTE_FILE = re.compile(r"/file[=/]https?:", re.IGNORECASE)  # Gradio's file routes given a URL


def default_outputs() -> Path:
    return Path.home() / "soundloom-output"


# ---------------------------------------------------------------- state and event handlers


class Studio:
    """The studio's state and handlers: one generator, loaded lazily once, and the output folder."""

    def __init__(self, model: str | Path | None = None, outputs: str | Path | None = None):
        self.model = Path(model) if model is not None else None
        self.outputs = Path(outputs if outputs is not None else default_outputs()).expanduser().resolve()
        self._generator: Generator | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # the queue runs one generation at a time; direct calls too
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

    def preload(self) -> None:
        """Load the model in the background after the page is up, so the first click does not wait."""
        try:
            self.generator()
        except BadInput:
            pass  # the Generate tab says how to get a bundle, and a click says it again
        except Exception:
            traceback.print_exc()

    # -------------------------------------------------------- handlers

    def generate(self, prompt, seconds, steps, seed, variations, history, progress=gr.Progress()):
        """Make `variations` takes. Yields twice (players, downloads, settings, history, table, take
        paths): first as soon as the wavs are written, so the players fill at once, then with the flac
        and mp3 copies added to the downloads (mp3 encoding takes longer than a short generation)."""
        with _said_in_one_sentence():
            if self._generator is None:
                progress(0, desc="loading the model")
            gen = self.generator()
            steps, seed, variations = _whole(steps), _whole(seed), _whole(variations)
            seed = None if seed == RANDOM_SEED else seed  # the generator draws one and reports it
            if isinstance(variations, int) and not 1 <= variations <= MAX_TAKES:
                raise BadInput(
                    f"variations must be between 1 and {MAX_TAKES} in the studio, not {variations}."
                )
            with self._run_lock:
                started = time.perf_counter()

                def on_step(state: dict) -> None:  # last_settings holds this call's checked settings
                    progress((int(state["i"]) + 1, gen.last_settings.steps), desc="sampling", unit="steps")

                takes = gen.generate_variations(
                    prompt, seconds=seconds, steps=steps, seed=seed, variations=variations, callback=on_step
                )
                used = gen.last_settings
                elapsed = time.perf_counter() - started
            stems = self._stems(used, len(takes))
            wavs = self._write(takes, stems, ".wav", used, gen)

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
            others = [p for ext in FORMATS[1:] for p in self._write(takes, stems, ext, used, gen)]
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

    # -------------------------------------------------------- files

    def _stems(self, used, count: int) -> list[Path]:
        """Where take i goes in the output folder, less its extension: time, prompt and seed in the name."""
        try:
            self.outputs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(
                f"Cannot create the output folder '{self.outputs}' ({e.strerror or e}); start the studio "
                "with --outputs pointing at a folder you can write."
            ) from None
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        slug = re.sub(r"[^a-z0-9]+", "-", used.prompt.lower()).strip("-")[:40] or "sound"
        return [self.outputs / f"{stamp}_{slug}_seed{used.seed + i}" for i in range(count)]

    def _write(self, takes, stems: list[Path], ext: str, used, gen: Generator) -> list[Path]:
        """Each take as `ext`, with its settings file beside it (`soundloom generate --from` remakes it)."""
        paths = []
        for i, (audio, stem) in enumerate(zip(takes, stems)):
            path = stem.with_name(stem.name + ext)
            save_audio(audio, path)
            record = settings_record(replace(used, seed=used.seed + i), gen)
            write_atomic(settings_path(path), json.dumps(record, indent=2) + "\n")
            paths.append(path)
        return paths


def _whole(value):
    """A float with no fraction as an int (sliders and JSON clients send 4.0); anything else unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
        made = run.click(
            studio.generate,
            inputs=[prompt, seconds, steps, seed, variations, history],
            outputs=[*players, downloads, used, history, table, takes],
            api_name="generate",
            preprocess=False,  # the generator's checks say what is wrong, not the sliders' range errors
            show_progress_on=players[0],  # one progress bar (and one error badge), not one per output
            concurrency_id="model",
            concurrency_limit=1,
        )
        made.success(studio.plot, inputs=takes, outputs=picture, api_visibility="private")
        table.select(
            studio.restore,
            inputs=history,
            outputs=[prompt, seconds, steps, seed, variations, *players],
            queue=False,
            api_visibility="private",
        )
    return demo


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
