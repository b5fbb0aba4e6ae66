"""The studio's Live tab: real-time sound design over pipelines/live.py.

    room = LiveRoom(studio)
    (rate, pcm), settings = room.preview("rain on a tin roof", "a crackling fire", 0.3, 5, 0.0, 4.0, 8)
    for wav_bytes, settings, status in room.stream("a slowly evolving drone", "", 0.0, 1, 8): ...

- Preview (/live): two prompts, the morph between them, a seed and a variation (the seed's
  neighbourhood). Every change makes a short preview again and plays it. Changes that arrive while one
  is being made are not queued one by one: the event runs in "always_last" mode, so when it finishes it
  runs once more with the controls as they are then, and the latest change wins.
- Stream (/live_stream): continuous audio in chunks (pipelines.live.stream) into Gradio's streaming
  player, kept at most STREAM_LEAD_SECONDS ahead of real time; the morph slider steers it while it plays
  and Stop ends it.
- Play on this machine: the same stream through the studio machine's own sound card (pipelines.live.play),
  or one sentence saying why it cannot.
Everything that runs the model goes through the studio's one-at-a-time queue ("model"), and each chunk
takes the studio's run lock, which is never held across a yield.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
import wave
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from app.studio import Studio, _said_in_one_sentence, _seed, _whole
from pipelines import live
from pipelines.audio import Audio
from pipelines.conditioned import pipeline_record
from pipelines.errors import BadInput

PREVIEW_STEPS = 8  # at most: the preview is for hearing a change at once (a ping-pong bundle needs fewer)
MAX_PREVIEW_SECONDS = 8.0
SEED_SLIDER_MAX = 9999
STREAM_LEAD_SECONDS = 4.0  # how far a stream may run ahead of real time: a short buffer, no pile-up
DIRECT = "direct call"  # the session key of handler calls made without a page (tests, scripts)


@dataclass
class _Run:
    """A stream or playback of one page: the morph position it follows, and its stop switch."""

    alpha: float
    stop: threading.Event = field(default_factory=threading.Event)

    def read_alpha(self) -> float:
        return self.alpha


class LiveRoom:
    """The Live tab's handlers over one studio; at most one stream or playback per page at a time."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self._runs: dict[str, _Run] = {}
        self._runs_lock = threading.Lock()

    @property
    def default_steps(self) -> int:
        return min(PREVIEW_STEPS, self.studio.default_steps)

    @property
    def max_seconds(self) -> float:
        return min(MAX_PREVIEW_SECONDS, self.studio.max_seconds)

    # -------------------------------------------------------- handlers

    def preview(self, prompt, morph_to, alpha, seed, variation, seconds, steps, progress=gr.Progress()):
        """A short sound between `prompt` (alpha 0) and `morph_to` (alpha 1, optional), seed's noise moved
        by `variation` towards a neighbour: ((rate, int16 samples [n, 2]), settings)."""
        with _said_in_one_sentence():
            if self.studio._generator is None:
                progress(0, desc="loading the model")
            gen = self.studio.generator()
            info: dict = {}
            with self.studio._run_lock:
                audio = self.studio.on_model_thread(
                    live.morph,
                    gen,
                    prompt,
                    _second_prompt(morph_to),
                    alpha,
                    seconds=seconds,
                    seed=_seed(seed),
                    variation=variation,
                    steps=_whole(steps),
                    info=info,
                )
            record = pipeline_record(info, gen)
        return (audio.sample_rate, pcm16(audio)), record

    def stream(self, prompt, morph_to, alpha, seed, steps, request: gr.Request = None):
        """Endless audio for the streaming player: yields (16-bit wav bytes of the next chunk, settings,
        status) until Stop, the page closing, or the caller dropping the generator."""
        with _said_in_one_sentence():
            if shutil.which("ffmpeg") is None:  # Gradio's streaming player encodes the chunks with it
                raise BadInput(
                    "Streaming in the page needs FFmpeg on the studio's machine (`apt install ffmpeg`); "
                    "install it, or use Play on this machine."
                )
            gen = self.studio.generator()
            run = self._start(request, alpha)
        try:
            with _said_in_one_sentence():
                info: dict = {}
                chunks = self._chunks(gen, prompt, morph_to, run, seed, steps, info)
                record = pipeline_record(info, gen)
            started, sent = time.monotonic(), 0.0
            for piece in chunks:
                ahead = sent - (time.monotonic() - started)
                if run.stop.wait(max(0.0, ahead - STREAM_LEAD_SECONDS)):
                    break  # stopped while this chunk was made, or while the listener caught up
                sent += piece.seconds
                yield wav_bytes(piece), record, f"Streaming: {sent:.1f} s so far (Stop ends it)."
            # the stream says it stopped itself, as its last status line: a reply of Stop's own could
            # reach the page before the stream's last line and be written over by it
            yield gr.skip(), gr.skip(), f"Stopped after {sent:.1f} s."
        finally:
            self._end(request, run)

    def play(self, prompt, morph_to, alpha, seed, steps, request: gr.Request = None):
        """The stream through this machine's sound card until Stop: yields the status line."""
        with _said_in_one_sentence():
            problem = live.output_device_problem()  # before the model loads, as `soundloom live` does
            if problem is not None:
                raise BadInput(machine_sentence(problem))
            gen = self.studio.generator()
            run = self._start(request, alpha)
        try:
            with _said_in_one_sentence():
                chunks = self._chunks(gen, prompt, morph_to, run, seed, steps, {})
            yield "Playing on this machine (Stop ends it)."
            with _said_in_one_sentence():
                played = live.play(chunks, gen.sample_rate)
            yield f"Played {played:.1f} s on this machine."
        finally:
            self._end(request, run)

    def stop(self, request: gr.Request = None):
        """Stop this page's stream or playback: it ends at its next chunk and writes the status line."""
        with self._runs_lock:
            run = self._runs.get(_session(request))
        if run is None:
            return "Nothing is playing."
        run.stop.set()
        return gr.skip()  # the stream or playback ends within a chunk and says so as its last line

    def steer(self, alpha, request: gr.Request = None) -> None:
        """The morph slider moved: a running stream of this page follows it from its next chunk."""
        with self._runs_lock:
            run = self._runs.get(_session(request))
        if run is not None and live.is_number(alpha) and 0.0 <= alpha <= 1.0:
            run.alpha = float(alpha)

    def forget(self, request: gr.Request = None) -> None:
        """The page was closed: whatever it was playing stops."""
        self.stop(request)

    # -------------------------------------------------------- streams

    def _chunks(self, gen, prompt, morph_to, run: _Run, seed, steps, info: dict):
        """The stream's chunks (arguments checked now), each made under the run lock, until `run` stops."""
        chunks = live.stream(
            gen,
            prompt,
            morph_to=_second_prompt(morph_to),
            alpha=run.read_alpha,
            seed=_seed(seed),
            steps=_whole(steps),
            info=info,
        )

        def until_stopped():
            while not run.stop.is_set():
                with _said_in_one_sentence(), self.studio._run_lock:
                    piece = self.studio.on_model_thread(next, chunks, None)
                if piece is None:
                    return
                yield piece

        return until_stopped()

    def _start(self, request, alpha) -> _Run:
        alpha = live._check_alpha(alpha)  # the pipeline's own check: the stream is given a callable
        key = _session(request)
        with self._runs_lock:
            running = self._runs.get(key)
            if running is not None and not running.stop.is_set():
                raise BadInput("This page is already playing a stream; press Stop first.")
            run = self._runs[key] = _Run(alpha)
        return run

    def _end(self, request, run: _Run) -> None:
        run.stop.set()
        with self._runs_lock:
            if self._runs.get(_session(request)) is run:
                del self._runs[_session(request)]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or DIRECT


def _second_prompt(value) -> str | None:
    """The morph target: None when the box is empty (a plain preview of the first prompt)."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def machine_sentence(problem: str) -> str:
    """pipelines.live's reason for not playing (worded for the CLI), as the studio says it."""
    return (
        "Cannot play on this machine: "
        + problem.replace("write the stream to a file with -o OUT", "press Stream to hear it in this page")
        + "."
    )


def pcm16(audio: Audio) -> np.ndarray:
    """Samples as 16-bit integers [n, channels], as written to wav (Gradio would rescale floats to their peak)."""
    return np.ascontiguousarray((np.clip(audio.samples, -1.0, 1.0).T * 32767.0).round().astype(np.int16))


def wav_bytes(audio: Audio) -> bytes:
    """A chunk as a 16-bit wav file in memory: what Gradio's streaming player takes without re-encoding."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(audio.samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(pcm16(audio).tobytes())
    return buffer.getvalue()


# ---------------------------------------------------------------- layout


def live_tab(studio: Studio, demo: gr.Blocks) -> None:
    room = LiveRoom(studio)
    with gr.Tab("Live"):
        with gr.Row():
            with gr.Column(scale=2):
                # one line each, so Enter remakes the preview (in a multi-line box it starts a new line)
                prompt = gr.Textbox(
                    label="prompt", placeholder="rain on a tin roof", max_lines=1, elem_id="live-prompt"
                )
                morph_to = gr.Textbox(
                    label="morph to (optional second prompt)",
                    placeholder="a crackling fire",
                    max_lines=1,
                    elem_id="live-morph-to",
                )
                alpha = gr.Slider(
                    0.0,
                    1.0,
                    value=0.0,
                    step=0.05,
                    label="morph (0: the prompt, 1: the second)",
                    elem_id="live-alpha",
                )
                with gr.Row():
                    seed = gr.Slider(
                        0, SEED_SLIDER_MAX, value=0, step=1, precision=0, label="seed", elem_id="live-seed"
                    )
                    variation = gr.Slider(
                        0.0,
                        1.0,
                        value=0.0,
                        step=0.05,
                        label="variation (0: the seed's own sound, 1: an unrelated one)",
                        elem_id="live-variation",
                    )
                with gr.Row():
                    seconds = gr.Slider(
                        0.5,
                        room.max_seconds,
                        value=min(live.PREVIEW_SECONDS, room.max_seconds),
                        step=0.5,
                        label="preview seconds",
                        elem_id="live-seconds",
                    )
                    steps = gr.Slider(
                        1,
                        max(50, studio.default_steps),
                        value=room.default_steps,
                        step=1,
                        precision=0,
                        label="steps",
                        elem_id="live-steps",
                    )
                gr.Markdown(
                    "Press Enter in a prompt or move a slider: the preview is made again and plays. "
                    "**Stream** plays without end (the morph slider steers it); **Play on this machine** "
                    "sends the stream to this computer's sound card."
                )
            with gr.Column(scale=3):
                preview = gr.Audio(
                    label="preview",
                    interactive=False,
                    autoplay=True,
                    buttons=["download"],
                    elem_id="live-preview",
                )
                streamed = gr.Audio(
                    label="stream", streaming=True, autoplay=True, interactive=False, elem_id="live-stream"
                )
                with gr.Row():
                    start = gr.Button("Stream", variant="primary", elem_id="live-stream-start")
                    play = gr.Button("Play on this machine", elem_id="live-play")
                    stop = gr.Button("Stop", variant="stop", elem_id="live-stop")
                status = gr.Markdown(elem_id="live-status")
                used = gr.JSON(label="settings used", elem_id="live-used")

    model_queue = {"concurrency_id": "model", "concurrency_limit": 1, "preprocess": False}
    gr.on(
        [
            prompt.submit,
            morph_to.submit,
            alpha.change,
            seed.change,
            variation.change,
            seconds.change,
            steps.change,
        ],
        room.preview,
        inputs=[prompt, morph_to, alpha, seed, variation, seconds, steps],
        outputs=[preview, used],
        api_name="live",
        trigger_mode="always_last",  # while one preview is made, further changes wait as one: the latest
        show_progress="minimal",
        show_progress_on=preview,
        **model_queue,
    )
    alpha.change(room.steer, inputs=alpha, queue=False, api_visibility="private")
    stream_inputs = [prompt, morph_to, alpha, seed, steps]
    start.click(
        room.stream,
        inputs=stream_inputs,
        outputs=[streamed, used, status],
        api_name="live_stream",
        show_progress="minimal",
        show_progress_on=status,
        **model_queue,
    )
    play.click(
        room.play,
        inputs=stream_inputs,
        outputs=status,
        api_visibility="private",
        show_progress_on=status,
        **model_queue,
    )
    # no `cancels`: a cancelled event's last status line could land after Stop's and stay on the page;
    # the stream and the playback watch their stop switch between chunks and end themselves
    stop.click(room.stop, outputs=status, queue=False, api_visibility="private")
    demo.unload(room.forget)
