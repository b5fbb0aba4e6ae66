"""The studio (app/studio.py) on a tiny generator bundle: its handlers called directly, the launched app
through gradio_client, one real browser (Playwright driving Debian's Chromium), and `soundloom studio`'s
launch checks."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from test_generator import MAX_SECONDS, PROMPT, SR, tiny_generator_bundle

import app.cli as cli
import app.studio as studio_module
import pipelines.generator as generator_module
from app.browser import CHROMIUM, free_port, launch_chromium
from app.studio import MAX_TAKES, Studio, build_app, launch
from pipelines import edit, loops, transform, voice
from pipelines.audio import Audio
from pipelines.errors import BadInput

# gradio 6's queue still calls two pandas options that pandas 3 deprecates; not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("studio-bundle"))


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Gradio's upload folder for this module's studio, set while it runs: the pipeline tabs read files
    from there only (Gradio reads the variable when an app starts and when it caches a file)."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def studio(bundle, uploads, tmp_path_factory) -> Studio:
    return Studio(bundle, tmp_path_factory.mktemp("studio-outputs"))


@pytest.fixture(scope="module")
def served(studio):
    """The studio launched on a free loopback port in this process's threads; its URL."""
    port = free_port()
    demo = launch(studio, host="127.0.0.1", port=port, block=False, preload=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def generate(studio: Studio, *args, history=None) -> tuple:
    """The handler's final outputs (it yields the wav takes first, then adds flac and mp3)."""
    *_, last = studio.generate(*args, [] if history is None else history)
    return last


def outputs_listing(studio: Studio) -> list[str]:
    return sorted(p.name for p in studio.outputs.iterdir()) if studio.outputs.exists() else []


# ---------------------------------------------------------------- handlers, called directly


def test_generate_handler_writes_takes_in_three_formats_and_records_history(studio):
    before = set(outputs_listing(studio))
    steps = studio.generate(PROMPT, 1.5, 4.0, 7, 2.0, [])  # sliders send floats: 4.0 steps, 2.0 variations
    first = next(steps)
    assert [Path(d).suffix for d in first[MAX_TAKES]] == [".wav", ".wav"]  # playable before mp3 encoding
    out = next(steps)
    assert next(steps, None) is None
    players, downloads, record, history, table, takes = out[:MAX_TAKES], *out[MAX_TAKES:]
    assert [p["visible"] for p in first[:MAX_TAKES]] == [True, True, False, False]
    assert [p["value"] for p in first[:MAX_TAKES]] == list(players) == takes + [None, None]

    wavs = [Path(t) for t in takes]
    assert all(p.parent == studio.outputs and p.suffix == ".wav" for p in wavs)
    assert sorted(Path(d).suffix for d in downloads) == [".flac", ".flac", ".mp3", ".mp3", ".wav", ".wav"]
    made = set(outputs_listing(studio)) - before
    assert made == {Path(d).name for d in downloads} | {Path(d).name + ".json" for d in downloads}
    for path in map(Path, downloads):
        info = sf.info(path)
        assert info.samplerate == SR and info.channels == 2
        if path.suffix != ".mp3":  # mp3 frames pad the end; wav and flac hold the exact length
            assert info.frames == round(1.5 * SR)
        else:
            assert abs(info.duration - 1.5) < 0.1

    # the takes are the generator's own sounds for seeds 7 and 8, written in 16 bits
    gen = studio.generator()
    for i, wav in enumerate(wavs):
        alone = gen.generate(PROMPT, seconds=1.5, steps=4, seed=7 + i)
        data, _ = sf.read(wav, dtype="float32", always_2d=True)
        np.testing.assert_allclose(data.T, alone.samples, atol=2e-4)

    assert {k: record[k] for k in ("prompt", "seconds", "steps", "seed", "variations")} == {
        "prompt": PROMPT,
        "seconds": 1.5,
        "steps": 4,
        "seed": 7,
        "variations": 2,
    }
    assert record["model_hash"] == gen.bundle_hash and record["guidance"] == gen.default_guidance
    assert len(history) == 1 and table == [[1, PROMPT, 1.5, 4, 7, 2, history[0]["made"]]]

    # a second sound (random seed) goes on top; selecting the older row gives its settings back
    out2 = generate(studio, "rain on a tin roof", 1.0, 4, -1, 1, history=history)
    history2, table2 = out2[MAX_TAKES + 2], out2[MAX_TAKES + 3]
    assert [row[0] for row in table2] == [2, 1] and table2[0][1] == "rain on a tin roof"
    drawn = out2[MAX_TAKES + 1]["seed"]
    assert isinstance(drawn, int) and drawn >= 0 and table2[0][4] == drawn
    restored = studio.restore_row(history2, 1)
    assert restored[:5] == (PROMPT, 1.5, 4, 7, 2)
    assert [p["value"] for p in restored[5:7]] == takes and not restored[7]["visible"]
    assert studio.restore_row(history2, 0)[:5] == ("rain on a tin roof", 1.0, 4, drawn, 1)


def test_plot_is_one_row_per_take(studio):
    takes = generate(studio, PROMPT, 1.0, 2, 3, 3)[-1]
    one, three = studio.plot(takes[:1]), studio.plot(takes)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert three.shape[1] == one.shape[1] and 2.5 < three.shape[0] / one.shape[0] < 3.5
    assert one.std() > 10  # something was drawn, not a blank canvas
    assert studio.plot([]) is None


@pytest.mark.parametrize(
    ("args", "source"),
    [
        (("", 1.0, 4, 1, 1), lambda gen: gen.settings("", seconds=1.0)),
        (("   ", 1.0, 4, 1, 1), lambda gen: gen.settings("   ", seconds=1.0)),
        ((PROMPT, MAX_SECONDS + 5, 4, 1, 1), lambda gen: gen.settings(PROMPT, seconds=MAX_SECONDS + 5)),
        ((PROMPT, 1.0, 2.5, 1, 1), lambda gen: gen.settings(PROMPT, seconds=1.0, steps=2.5)),
        ((PROMPT, 1.0, 4, -7, 1), lambda gen: gen.settings(PROMPT, seconds=1.0, seed=-7)),
        ((PROMPT, 1.0, 4, 1, MAX_TAKES + 1), None),
    ],
)
def test_bad_input_is_the_one_sentence_and_writes_nothing(studio, args, source):
    before = outputs_listing(studio)
    with pytest.raises(gr.Error) as err:
        generate(studio, *args)
    message = err.value.message
    if source is not None:
        with pytest.raises(BadInput) as want:
            source(studio.generator())
        assert message == str(want.value)
    else:
        assert f"between 1 and {MAX_TAKES}" in message
    assert "\n" not in message and "Traceback" not in message
    assert outputs_listing(studio) == before


def test_without_a_bundle_the_page_opens_and_says_how_to_get_one(tmp_path, monkeypatch):
    nowhere = lambda: tmp_path / "assets" / "generator"  # noqa: E731
    monkeypatch.setattr(generator_module, "default_generator_path", nowhere)
    monkeypatch.setattr(studio_module, "default_generator_path", nowhere)
    with pytest.raises(BadInput) as want:
        generator_module.load_generator()
    empty = Studio(None, tmp_path / "out")
    assert empty.bundle_problem() == str(want.value)
    demo = build_app(empty)
    notices = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "bundle-problem"]
    assert len(notices) == 1 and str(want.value) in notices[0].value
    with pytest.raises(gr.Error) as err:
        generate(empty, PROMPT, 1.0, 4, 1, 1)
    assert err.value.message == str(want.value)
    assert not (tmp_path / "out").exists()


def test_dice_draws_seeds_the_generator_accepts(studio):
    seeds = {studio.random_seed() for _ in range(20)}
    assert len(seeds) > 15 and all(0 <= s < 2**31 for s in seeds)


# ---------------------------------------------------------------- the pipeline tabs, called directly


def tone(seconds: float, freq: float = 220.0, pulse_hz: float = 4.0) -> np.ndarray:
    """A pitched tone pulsing `pulse_hz` times a second, float32 [2, n] at 44.1 kHz."""
    t = np.arange(round(seconds * SR)) / SR
    x = (0.4 * np.exp(-8.0 * np.mod(t, 1.0 / pulse_hz)) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, x])


def upload(uploads: Path, name: str, samples: np.ndarray | None = None, notes=()) -> Path:
    """A file where Gradio keeps an upload (a folder of its own in the upload folder): audio, or MIDI notes."""
    path = uploads / secrets.token_hex(8) / name
    path.parent.mkdir()
    if samples is not None:
        sf.write(path, samples.T, SR)
    else:
        midi = pretty_midi.PrettyMIDI()
        midi.instruments.append(pretty_midi.Instrument(program=0))
        midi.instruments[0].notes.extend(
            pretty_midi.Note(velocity=100, pitch=p, start=a, end=b) for a, b, p in notes
        )
        midi.write(str(path))
    return path


def audio_of(path: Path) -> Audio:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return Audio(np.ascontiguousarray(data.T), rate)


# Each tab: the handler's arguments (given a file-upload function), the pipeline call that must make the
# same sound, and the expected length in seconds. Sliders and number boxes send floats.
MELODY = [(0.0, 0.4, 60), (0.5, 0.9, 67)]
TAB_CASES = {
    "transform": (
        lambda up: (up("tone.wav", tone(1.0)), PROMPT, 0.5, ["rhythm"], 3.0, 2.0),
        lambda gen, path: transform.transform(
            gen, audio_of(path), PROMPT, strength=0.5, keep=["rhythm"], seed=3, steps=2
        ),
        1.0,  # the source's length
    ),
    "voice": (
        lambda up: (None, up("line.mid", notes=MELODY), "a soft flute", 3.0, 2.0),
        lambda gen, path: voice.voice(gen, path, "a soft flute", seed=3, steps=2),
        0.9,  # to the last note's end
    ),
    "beats": (
        lambda up: ("a funk drum loop", 150.0, 2.0, "3/4", "A minor", True, None, 3.0, 2.0),
        lambda gen, path: loops.beats(
            gen, "a funk drum loop", bars=2, bpm=150.0, meter="3/4", key="A minor", loop=True, seed=3, steps=2
        ),
        2 * 3 * 60 / 150,  # bars x beats per bar x 60 / bpm
    ),
    "extend": (
        lambda up: (up("tone.wav", tone(1.0)), "more rain", 0.5, 3.0, 2.0),
        lambda gen, path: edit.extend(gen, audio_of(path), "more rain", seconds=0.5, seed=3, steps=2),
        1.5,  # the source and the seconds added
    ),
    "repaint": (
        lambda up: (up("tone.wav", tone(1.0)), "a bell", 0.2, 0.6, 3.0, 2.0),
        lambda gen, path: edit.repaint(gen, audio_of(path), "a bell", start=0.2, end=0.6, seed=3, steps=2),
        1.0,  # the source's length
    ),
}


def run_tab(studio: Studio, verb: str, *args) -> tuple[tuple, tuple]:
    """A pipeline tab's handler: its two yields, the wav alone and then with the flac and mp3 added."""
    steps = getattr(studio, verb)(*args)
    first, last = next(steps), next(steps)
    assert next(steps, None) is None
    return first, last


@pytest.mark.parametrize("verb", list(TAB_CASES))
def test_pipeline_tab_writes_its_take_in_three_formats_with_settings(studio, uploads, verb):
    arguments, pipeline_call, seconds = TAB_CASES[verb]
    paths: list[Path] = []

    def up(name, samples=None, notes=()):
        paths.append(upload(uploads, name, samples, notes))
        return str(paths[-1])

    args = arguments(up)
    before = set(outputs_listing(studio))
    first, (wav, downloads, record) = run_tab(studio, verb, *args)
    assert first[0] == wav and first[1] == [wav]  # playable before the mp3 is encoded

    assert Path(wav).parent == studio.outputs and Path(wav).suffix == ".wav" and f"_{verb}-" in wav
    assert sorted(Path(d).suffix for d in downloads) == [".flac", ".mp3", ".wav"]
    made = set(outputs_listing(studio)) - before
    assert made == {Path(d).name for d in downloads} | {Path(d).name + ".json" for d in downloads}
    for path in map(Path, downloads):
        info = sf.info(path)
        assert info.samplerate == SR and info.channels == 2
        if path.suffix != ".mp3":
            assert info.frames == round(seconds * SR), path.name

    stored = json.loads(Path(wav + ".json").read_text())
    assert stored["soundloom_pipeline_settings"] == 1 and stored["pipeline"] == verb
    assert (
        stored["seed"] == 3
        and stored["steps"] == 2
        and stored["model_hash"] == studio.generator().bundle_hash
    )
    assert stored["source"] == (paths[0].name if paths else None)
    assert record == {**stored, "generation_time_s": record["generation_time_s"]}

    # the take is the pipeline's own sound for these settings, written in 16 bits
    alone = pipeline_call(studio.generator(), paths[0] if paths else None)
    np.testing.assert_allclose(audio_of(Path(wav)).samples, alone.samples, atol=2e-4)


# (handler, its arguments given an upload function, the pipeline call that says the same sentence or a
# phrase of the studio's own sentence)
BAD_TAB_INPUTS = {
    "transform without a sound": (
        "transform",
        lambda up: (None, PROMPT, 0.5, [], 1, 2),
        "No sound to transform was uploaded; upload a .wav, .flac, .ogg or .mp3 file.",
    ),
    "transform strength over 1": (
        "transform",
        lambda up: (up("tone.wav", tone(0.5)), PROMPT, 1.5, [], 1, 2),
        lambda gen, path: transform.transform(gen, audio_of(path), PROMPT, strength=1.5),
    ),
    "transform keeping timbre": (
        "transform",
        lambda up: (up("tone.wav", tone(0.5)), PROMPT, 0.5, ["timbre"], 1, 2),
        lambda gen, path: transform.parse_keep(["timbre"]),
    ),
    "transform of 50 ms": (
        "transform",
        lambda up: (up("blip.wav", tone(0.05)), PROMPT, 0.5, [], 1, 2),
        lambda gen, path: transform.transform(gen, audio_of(path), PROMPT),
    ),
    "voice without a voice": (
        "voice",
        lambda up: (None, None, PROMPT, 1, 2),
        "No voice was given; record one, or upload a recording or a MIDI file.",
    ),
    "voice, silent": (
        "voice",
        lambda up: (up("silence.wav", np.zeros((2, SR), np.float32)), None, PROMPT, 1, 2),
        lambda gen, path: voice.voice(gen, path, PROMPT),
    ),
    "voice, a recording and a MIDI file": (
        "voice",
        lambda up: (up("hum.wav", tone(0.5)), up("line.mid", notes=MELODY), PROMPT, 1, 2),
        "Both a recording and a MIDI file were given; clear the one not to use.",
    ),
    "beats at 1000 bpm": (
        "beats",
        lambda up: ("drums", 1000, 1, "4/4", "", False, None, 1, 2),
        lambda gen, path: loops.beats(gen, "drums", bars=1, bpm=1000),
    ),
    "beats, no bpm and no track": (
        "beats",
        lambda up: ("drums", None, 1, "4/4", "", False, None, 1, 2),
        lambda gen, path: loops.beats(gen, "drums", bars=1),
    ),
    "beats, 0 bars": (
        "beats",
        lambda up: ("drums", 120, 0, "4/4", "", False, None, 1, 2),
        lambda gen, path: loops.beats(gen, "drums", bars=0, bpm=120),
    ),
    "beats, 2.5 bars": (
        "beats",
        lambda up: ("drums", 120, 2.5, "4/4", "", False, None, 1, 2),
        lambda gen, path: loops.beats(gen, "drums", bars=2.5, bpm=120),
    ),
    "beats in 4/3": (
        "beats",
        lambda up: ("drums", 120, 1, "4/3", "", False, None, 1, 2),
        lambda gen, path: loops.parse_meter("4/3"),
    ),
    "extend by 0 s": (
        "extend",
        lambda up: (up("tone.wav", tone(0.5)), PROMPT, 0, 1, 2),
        lambda gen, path: edit.extend(gen, audio_of(path), PROMPT, seconds=0),
    ),
    "extend without a sound": (
        "extend",
        lambda up: (None, PROMPT, 1.0, 1, 2),
        "No sound to extend was uploaded; upload a .wav, .flac, .ogg or .mp3 file.",
    ),
    "repaint ending before it starts": (
        "repaint",
        lambda up: (up("tone.wav", tone(1.0)), PROMPT, 0.8, 0.4, 1, 2),
        lambda gen, path: edit.repaint(gen, audio_of(path), PROMPT, start=0.8, end=0.4),
    ),
    "repaint past the end": (
        "repaint",
        lambda up: (up("tone.wav", tone(1.0)), PROMPT, 0.5, 3.0, 1, 2),
        lambda gen, path: edit.repaint(gen, audio_of(path), PROMPT, start=0.5, end=3.0),
    ),
    "a file outside the upload folder": (
        "extend",
        lambda up: (str(Path(__file__).resolve()), PROMPT, 1.0, 1, 2),
        f"'{Path(__file__).name}' is not a file uploaded to the studio; upload it through the page "
        "(or gradio_client's handle_file).",
    ),
    "a link out of the upload folder": (
        "repaint",
        lambda up: (up("link.wav", link_to=up.outside), PROMPT, 0.2, 0.6, 1, 2),
        "'link.wav' is not a file uploaded to the studio; upload it through the page "
        "(or gradio_client's handle_file).",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TAB_INPUTS))
def test_pipeline_tab_bad_input_is_one_sentence_and_writes_nothing(studio, uploads, tmp_path, case):
    verb, arguments, want = BAD_TAB_INPUTS[case]
    outside = tmp_path / "outside.wav"  # a real sound, readable, but never uploaded
    sf.write(outside, tone(1.0).T, SR)
    paths: list[Path] = []

    def up(name, samples=None, notes=(), link_to=None):
        if link_to is not None:
            path = uploads / secrets.token_hex(8) / name
            path.parent.mkdir()
            path.symlink_to(link_to)
        else:
            path = upload(uploads, name, samples, notes)
        paths.append(path)
        return str(path)

    up.outside = outside
    before = outputs_listing(studio)
    with pytest.raises(gr.Error) as err:
        run_tab(studio, verb, *arguments(up))
    message = err.value.message
    if callable(want):
        with pytest.raises(BadInput) as said:
            want(studio.generator(), paths[0] if paths else None)
        want = str(said.value)
    assert message == want
    assert "\n" not in message and "Traceback" not in message and message.count(". ") == 0
    assert outputs_listing(studio) == before


def test_the_beats_player_loops_and_edit_shows_one_mode(studio):
    players = {b.elem_id: b for b in build_app(studio).blocks.values() if isinstance(b, gr.Audio)}
    takes = {name: player.loop for name, player in players.items() if name.endswith("-take")}
    assert takes == {"transform-take": False, "voice-take": False, "beats-take": True, "edit-take": False}
    assert [u["visible"] for u in studio.edit_mode("extend")] == [True, False]
    assert [u["visible"] for u in studio.edit_mode("repaint")] == [False, True]


# ---------------------------------------------------------------- the launched app, through gradio_client


def test_api_generate_and_a_bad_prompt_through_gradio_client(served, studio):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    assert "/generate" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    result = client.predict(PROMPT, 1.25, 3, 11, 1, api_name="/generate")
    first, record = result[0], result[MAX_TAKES + 1]
    data, rate = sf.read(first, dtype="float32", always_2d=True)
    assert rate == SR and data.shape == (round(1.25 * SR), 2) and np.abs(data).max() > 0
    assert record["seed"] == 11 and record["steps"] == 3
    assert len(result[MAX_TAKES]) == 3  # wav, flac and mp3 to download

    with pytest.raises(AppError) as err:
        client.predict("", 1.0, 3, 1, 1, api_name="/generate")
    with pytest.raises(BadInput) as want:
        studio.generator().settings("", seconds=1.0)
    assert str(want.value) in str(err.value) and "Traceback" not in str(err.value)

    again = client.predict("a snare hit", 0.5, 2, 5, 1, api_name="/generate")  # the server stays up
    assert sf.info(again[0]).frames == round(0.5 * SR) and again[1] is None


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False)


@pytest.mark.parametrize("verb", list(TAB_CASES))
def test_api_pipeline_tab_through_gradio_client(client, tmp_path, verb):
    from gradio_client import handle_file

    arguments, _, seconds = TAB_CASES[verb]

    def up(name, samples=None, notes=()):  # a file of the client's own, which it uploads
        return handle_file(str(upload(tmp_path, name, samples, notes)))

    wav, downloads, record = client.predict(*arguments(up), api_name=f"/{verb}")
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == SR and data.shape == (round(seconds * SR), 2)
    assert record["pipeline"] == verb and record["seed"] == 3 and record["steps"] == 2
    assert sorted(Path(d).suffix for d in downloads) == [".flac", ".mp3", ".wav"]


def test_api_pipeline_tab_bad_input_is_the_sentence_and_the_server_stays_up(client, studio, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    before = outputs_listing(studio)
    with pytest.raises(AppError) as err:
        client.predict("drums", 1000, 1, "4/4", "", False, None, 1, 2, api_name="/beats")
    with pytest.raises(BadInput) as want:
        loops.beats(studio.generator(), "drums", bars=1, bpm=1000)
    assert str(want.value) in str(err.value) and "Traceback" not in str(err.value)
    with pytest.raises(AppError) as err:
        client.predict(None, PROMPT, 1.0, 1, 2, api_name="/extend")
    assert "No sound to extend was uploaded" in str(err.value)
    assert outputs_listing(studio) == before

    source = handle_file(str(upload(tmp_path, "tone.wav", tone(0.5))))
    wav, _, _ = client.predict(source, "a bell", 0.1, 0.3, 1, 2, api_name="/repaint")
    assert sf.info(wav).frames == round(0.5 * SR)


def test_files_are_served_from_the_output_folder_only(served, studio):
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{served}gradio_api/file={path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    generate(studio, PROMPT, 0.5, 2, 1, 1)
    made = next(studio.outputs.glob("*.wav"))
    assert status(str(made)) == 200
    repo_file = Path(__file__).resolve()
    for path in (
        "/etc/passwd",
        str(repo_file),
        f"{studio.outputs}/../{studio.outputs.name}/../../etc/passwd",
    ):
        assert status(path) in (403, 404), path


def test_auth_keeps_out_whoever_lacks_the_password(studio):
    from gradio_client import Client

    port = free_port()
    demo = launch(studio, port=port, auth=("ana", "long-secret"), block=False, preload=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        for path in ("config", "gradio_api/info"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url + path, timeout=10)
            assert err.value.code == 401
        client = Client(url, auth=("ana", "long-secret"), verbose=False)
        assert sf.info(client.predict("a bell", 0.5, 2, 1, 1, api_name="/generate")[0]).frames == SR // 2
    finally:
        demo.close()


# ---------------------------------------------------------------- a real browser


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_browser_types_a_prompt_generates_and_plays(served, studio, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    studio.generator()  # loaded, so the timing below is the click's, not the model's load
    outside = []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "request",
                lambda r: r.url.startswith((served, "data:", "blob:")) or outside.append(r.url),
            )
            started = time.perf_counter()
            page.goto(served)
            page.locator("#prompt textarea").wait_for()
            ready_s = time.perf_counter() - started

            page.locator("#prompt textarea").fill("a soft pad chord")
            page.locator("#generate").click()
            started = time.perf_counter()
            audio = page.locator("#take-1 audio[src]")
            audio.wait_for(state="attached", timeout=30_000)
            to_audio_s = time.perf_counter() - started
            duration = audio.evaluate(
                "el => el.readyState >= 1 ? el.duration : new Promise(done =>"
                " el.addEventListener('loadedmetadata', () => done(el.duration), {once: true}))"
            )
            assert duration == pytest.approx(4.0, abs=0.01)  # the seconds slider's default

            cell = page.locator('#history [data-testid="cell-0-1"]')  # newest row, prompt column
            cell.wait_for()
            assert cell.inner_text().strip() == "a soft pad chord"
            page.locator("#prompt textarea").fill("something else")
            cell.click()  # selecting the row restores its settings
            page.wait_for_function("document.querySelector('#prompt textarea').value === 'a soft pad chord'")

            page.get_by_text("waveform and spectrogram").wait_for()
            page.wait_for_timeout(500)
            shots = Path(os.environ.get("SOUNDLOOM_SCREENSHOTS", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "studio.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []  # offline by design: the page asks nothing of the internet
    print(f"\npage ready {ready_s:.2f} s, click to audio {to_audio_s:.2f} s")


# ---------------------------------------------------------------- `soundloom studio`


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["studio", "--listen"], "add --auth USER:PASS, or --insecure"),
        (["studio", "--host", "0.0.0.0", "--no-browser"], "Listening on 0.0.0.0"),
        (["studio", "--listen", "--auth", "nopassword"], "USER:PASS"),
        (["studio", "--listen", "--auth", ":secret"], "USER:PASS"),
        (["studio", "--model", "/nonexistent/bundle"], "does not exist"),
    ],
)
def test_cli_refuses_unsafe_or_bad_launches_with_one_line(capsys, argv, needle):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_cli_port_in_use_is_one_line(capsys, tmp_path, bundle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_main(
            capsys, "studio", "--port", port, "--no-browser", "--model", bundle, "--outputs", tmp_path / "o"
        )
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"127.0.0.1:{port}" in err and "--port" in err
