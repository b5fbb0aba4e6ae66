"""The studio's Live tab (app/live_room.py) and Models tab (app/models_room.py) on tiny generator bundles:
handlers called directly, the launched app through gradio_client, and one real browser moving the morph
slider."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch
from test_generator import PROMPT, SR, tiny_generator_bundle

import app.live_room as live_room
import app.studio as studio_module
from app.browser import CHROMIUM, free_port, launch_chromium
from app.live_room import LiveRoom, machine_sentence
from app.models_room import ModelsRoom
from app.studio import MAX_TAKES, Studio, launch
from pipelines import live
from pipelines.bundle import bundle_hash, load_bundle, quantize_bundle, save_bundle
from pipelines.errors import BadInput
from pipelines.generator import load_generator

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
FIRE = "a crackling fire"
QUANTUM = 1 / 32767 + 1e-6  # what writing 16-bit samples may move a sample by
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the Live stream needs ffmpeg")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("live-bundle"))


@pytest.fixture(scope="module")
def gradio_cache(tmp_path_factory):
    """Gradio's cache and upload folder while this module's studios run (the previews are written there)."""
    folder = tmp_path_factory.mktemp("gradio-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def studio(bundle, gradio_cache, tmp_path_factory) -> Studio:
    return Studio(bundle, tmp_path_factory.mktemp("live-outputs"))


@pytest.fixture
def room(studio) -> LiveRoom:
    return LiveRoom(studio)


def one_sentence(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    assert re.search(r"\. [A-Z]", message) is None, message  # one sentence ("e.g. 'a cello'" is inside one)
    return message


def pcm_of(wav: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    assert sf.info(io.BytesIO(wav)).subtype == "PCM_16"
    return data.T, rate


# ---------------------------------------------------------------- Live: the preview


@pytest.mark.parametrize("morph_to", [FIRE, "", "   "])
def test_preview_is_the_morph_pipelines_sound_and_writes_no_file(studio, room, morph_to):
    before = sorted(studio.outputs.iterdir()) if studio.outputs.exists() else []
    # sliders send floats: seed 5.0, steps 2.0
    (rate, pcm), record = room.preview(PROMPT, morph_to, 0.4, 5.0, 0.25, 1.0, 2.0)
    second = morph_to if morph_to.strip() else None
    alone = live.morph(studio.generator(), PROMPT, second, 0.4, seconds=1.0, seed=5, variation=0.25, steps=2)
    assert rate == SR and pcm.dtype == np.int16 and pcm.shape == (SR, 2)
    np.testing.assert_allclose(pcm.T / 32767, alone.samples, atol=QUANTUM)
    assert np.abs(pcm).max() > 0
    assert {
        k: record[k] for k in ("pipeline", "prompt", "morph_to", "alpha", "seed", "variation", "steps")
    } == {
        "pipeline": "morph",
        "prompt": PROMPT,
        "morph_to": second,
        "alpha": 0.4,
        "seed": 5,
        "variation": 0.25,
        "steps": 2,
    }
    assert record["model_hash"] == studio.generator().bundle_hash
    assert (sorted(studio.outputs.iterdir()) if studio.outputs.exists() else []) == before


def test_the_morph_slider_moves_the_preview(room):
    (_, start), _ = room.preview(PROMPT, FIRE, 0.0, 2, 0.0, 0.5, 2)
    (_, middle), _ = room.preview(PROMPT, FIRE, 0.5, 2, 0.0, 0.5, 2)
    (_, again), _ = room.preview(PROMPT, FIRE, 0.0, 2, 0.0, 0.5, 2)
    assert np.array_equal(start, again)  # the same controls give the same preview
    assert np.abs(start.astype(np.int32) - middle).max() > 100


@pytest.mark.parametrize(
    "args",
    [
        ("", FIRE, 0.5, 1, 0.0, 1.0, 2),
        (PROMPT, FIRE, 1.5, 1, 0.0, 1.0, 2),
        (PROMPT, FIRE, 0.5, 1, -0.1, 1.0, 2),
        (PROMPT, FIRE, 0.5, 1, 0.0, 500.0, 2),
        (PROMPT, "\x00", 0.5, 1, 0.0, 1.0, 2),
    ],
)
def test_preview_bad_input_is_the_pipelines_one_sentence(studio, room, args):
    prompt, second, alpha, seed, variation, seconds, steps = args
    with pytest.raises(gr.Error) as err:
        room.preview(*args)
    with pytest.raises(BadInput) as want:
        live.morph(
            studio.generator(),
            prompt,
            second,
            alpha,
            seconds=seconds,
            seed=seed,
            variation=variation,
            steps=steps,
        )
    assert one_sentence(err.value.message) == str(want.value)


# ---------------------------------------------------------------- Live: the stream


@needs_ffmpeg
def test_stream_chunks_are_the_live_stream_follow_the_slider_and_stop(studio, room):
    gen = studio.generator()
    chunks = room.stream(PROMPT, FIRE, 0.0, 3.0, 2.0)
    wav, record, status = next(chunks)
    first, rate = pcm_of(wav)
    assert rate == SR and first.shape[0] == 2 and status.startswith("Streaming")
    assert record["pipeline"] == "live" and record["seed"] == 3 and record["endless"] is True

    # the same stream made by the pipeline, its slider moved to 1 after the first chunk
    position = [0.0]
    steered = live.stream(gen, PROMPT, morph_to=FIRE, alpha=lambda: position[0], seed=3, steps=2)
    unsteered = live.stream(gen, PROMPT, morph_to=FIRE, alpha=0.0, seed=3, steps=2)
    np.testing.assert_allclose(first, next(steered).samples, atol=QUANTUM)
    next(unsteered)
    position[0] = 1.0
    room.steer(1.0)  # the morph slider moved while the stream plays
    second, _ = pcm_of(next(chunks)[0])
    np.testing.assert_allclose(second, next(steered).samples, atol=QUANTUM)
    assert np.abs(second - next(unsteered).samples).max() > 0.01

    with pytest.raises(gr.Error) as err:  # one stream per page
        next(room.stream(PROMPT, "", 0.0, 1, 2))
    assert one_sentence(err.value.message) == "This page is already playing a stream; press Stop first."
    assert room.stop() == gr.skip()  # Stop's own reply leaves the status line to the stream:
    last = next(chunks)  # which ends itself with it (a reply of Stop's could land after and stay)
    sent = (first.shape[1] + second.shape[1]) / SR
    assert last[:2] == (gr.skip(), gr.skip()) and last[2] == f"Stopped after {sent:.1f} s."
    assert next(chunks, None) is None
    assert room.stop() == "Nothing is playing."
    assert next(room.stream(PROMPT, "", 0.0, 1, 2))[2].startswith("Streaming")  # a new one may start


@needs_ffmpeg
def test_stream_keeps_only_a_short_lead_over_real_time_and_stops_while_waiting(room, monkeypatch):
    monkeypatch.setattr(live_room, "STREAM_LEAD_SECONDS", 0.5)
    chunks = room.stream(PROMPT, "", 0.0, 1, 2)
    started = time.monotonic()
    sent, arrived = [], []
    for _ in range(3):
        wav, _, _ = next(chunks)
        arrived.append(time.monotonic() - started)
        sent.append(pcm_of(wav)[0].shape[1] / SR)
    # chunk k is given out no sooner than the audio before it minus the lead has played
    assert arrived[2] >= sent[0] + sent[1] - 0.5 - 0.05, (arrived, sent)

    threading.Timer(0.3, room.stop).start()  # Stop pressed while the stream makes or holds its next chunk
    assert next(chunks)[2] == f"Stopped after {sum(sent):.1f} s."
    assert next(chunks, None) is None


def test_stream_without_ffmpeg_is_one_sentence(room, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(gr.Error) as err:
        next(room.stream(PROMPT, "", 0.0, 1, 2))
    assert one_sentence(err.value.message).startswith("Streaming in the page needs FFmpeg")
    assert room._runs == {}


# ---------------------------------------------------------------- Live: play on this machine


def test_play_without_an_output_device_is_one_sentence(room, monkeypatch):
    problem = live.output_device_problem()
    if problem is not None:  # this machine: no sounddevice, or no output device
        with pytest.raises(gr.Error) as err:
            next(room.play(PROMPT, "", 0.0, 1, 2))
        assert one_sentence(err.value.message) == machine_sentence(problem)
        assert err.value.message.startswith("Cannot play on this machine: ")

    said = (
        "no audio output device was found (Error querying device -1); write the stream to a file with -o OUT"
    )
    monkeypatch.setattr(live, "output_device_problem", lambda: said)
    with pytest.raises(gr.Error) as err:
        next(room.play(PROMPT, "", 0.0, 1, 2))
    assert one_sentence(err.value.message) == (
        "Cannot play on this machine: no audio output device was found (Error querying device -1); press "
        "Stream to hear it in this page."
    )


def test_play_sends_the_stream_to_the_sound_card_until_stop(room, monkeypatch):
    played = []

    def sound_card(chunks, sample_rate):  # pipelines.live.play's part: write each chunk to the device
        assert sample_rate == SR
        for piece in chunks:
            played.append(piece)
            if len(played) == 2:
                room.stop()  # the Stop button
        return sum(p.seconds for p in played)

    monkeypatch.setattr(live, "output_device_problem", lambda: None)
    monkeypatch.setattr(live, "play", sound_card)
    steps = room.play(PROMPT, FIRE, 0.2, 4, 2)
    assert next(steps) == "Playing on this machine (Stop ends it)."
    assert next(steps) == f"Played {sum(p.seconds for p in played):.1f} s on this machine."
    assert next(steps, None) is None and len(played) == 2
    reference = live.stream(room.studio.generator(), PROMPT, morph_to=FIRE, alpha=0.2, seed=4, steps=2)
    np.testing.assert_allclose(played[0].samples, next(reference).samples)


# ---------------------------------------------------------------- Models


def other_generator(bundle: Path, out: Path, card: dict | None = None) -> Path:
    """A generator like `bundle` with other weights (so another hash), with `card`."""
    b = load_bundle(bundle)
    torch.manual_seed(1)
    dit = {k: v + 0.05 * torch.randn_like(v) for k, v in b.tensors("dit").items()}
    codec = b.component("codec").path
    return save_bundle(out, b.config, {"dit": dit}, components={"codec": codec}, kind="generator", card=card)


CARD = {
    "recipe": "static",
    "steps": 4500,
    "wall_time_s": 5400.0,
    "data": {
        "hours": 3.0,
        "seed": 0,
        "counts": {"clips": 2460},
        "soundfonts": [{"name": "TimGM6mb", "licence": "GPL-2.0 (TimGM6mb.sf2 by Tim Brechbill)"}],
    },
    "eval": {"config": {"steps": 50}, "headline": {"judge_fd": 12.5, "pitch_within_50c": 0.58}},
}


@pytest.fixture
def shelf(bundle, gradio_cache, tmp_path, monkeypatch) -> dict:
    """A studio on `bundle` whose bundled models are `bundle`'s folder (a generator and its codec) and whose
    models folder holds another generator with a full card, a damaged copy of it, a folder whose model.json
    is not JSON, and a folder with no model.json."""
    monkeypatch.setattr(studio_module, "default_generator_path", lambda: bundle.parent / "generator")
    outputs = tmp_path / "out"
    models = outputs / "models"
    other = other_generator(bundle, models / "cello-run", CARD)
    broken = models / "damaged"
    shutil.copytree(other, broken)
    data = bytearray((broken / "dit.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (broken / "dit.safetensors").write_bytes(bytes(data))
    (models / "garbled").mkdir()
    (models / "garbled" / "model.json").write_text("{not json")
    (models / "notes").mkdir()
    (models / "notes" / "readme.txt").write_text("not a bundle")
    return {
        "studio": Studio(bundle, outputs),
        "other": other,
        "broken": broken,
        "garbled": models / "garbled",
    }


def test_models_tab_lists_generators_with_their_cards(shelf, bundle):
    room = ModelsRoom(shelf["studio"])
    active, rows, choices, selected, summary, card = room.state()
    names = [(row[0], row[1], row[5]) for row in rows]
    # the codec beside the bundled generator is a part, not a model; a folder without model.json is not listed
    assert names == [
        ("generator", "bundled", "yes"),
        ("cello-run", "models folder", ""),
        ("damaged", "models folder", ""),
        ("garbled", "models folder", ""),
    ]
    assert selected == str(bundle.resolve()) and active.startswith("**In use:** generator")
    assert [value for _, value in choices] == [row[6] for row in rows]

    other = str(shelf["other"])
    assert rows[1][2:5] == ["static", "4500", "1 h 30 min"]
    summary, card = room.show(other)
    assert card == CARD
    for phrase in (
        "recipe **static**, 4500 steps, 1 h 30 min of training",
        "3 h corpus, 2460 clips, seed 0, SoundFonts TimGM6mb (GPL-2.0 (TimGM6mb.sf2 by Tim Brechbill))",
        "euler, 4 steps, guidance 4, up to 20 s",
        "eval: judge_fd 12.5; pitch_within_50c 0.58",
    ):
        assert phrase in summary, summary
    garbled, _ = room.show(str(shelf["garbled"]))
    assert "**Cannot be used:**" in garbled and "is not valid JSON" in garbled
    assert "no figures recorded" in room.show(str(bundle.resolve()))[0]
    assert "- weights:" not in summary  # fp16, as every bundle is unless quantized

    copy, record = quantize_bundle(shelf["other"], shelf["other"].parent / "cello-int8")
    summary = room.show(str(copy))[0]
    assert f"- weights: {record['storage']}; largest change of a tensor" in summary, summary
    assert f"a copy of bundle {bundle_hash(shelf['other'])[:12]}" in summary


def test_switching_models_and_refusing_a_broken_bundle(shelf, bundle):
    studio, other = shelf["studio"], shelf["other"]
    room, live_room_ = ModelsRoom(studio), LiveRoom(studio)
    old = studio.generator()
    active, rows, *_ = room.switch(str(other))
    assert studio.model_path == other and studio.generator().bundle_hash == bundle_hash(other)
    assert active.startswith("**In use:** cello-run") and [r[0] for r in rows if r[5] == "yes"] == [
        "cello-run"
    ]
    assert live_room_.preview(PROMPT, "", 0.0, 1, 0.0, 0.5, 2)[1]["model_hash"] == bundle_hash(other)

    now = studio.generator()
    with pytest.raises(BadInput) as want:
        load_generator(shelf["broken"])
    refusals = {
        str(shelf["broken"]): str(want.value),
        str(shelf["garbled"]): "is not valid JSON",
        "/etc": "'etc' is not one of the studio's model bundles; pick one from the list (Refresh finds newly "
        "exported ones).",
        str(shelf["garbled"].parent / "notes"): "'notes' is not one of the studio's model bundles",
        "": "No model was picked; choose one from the list first.",
    }
    for choice, said in refusals.items():
        with pytest.raises(gr.Error) as err:
            room.switch(choice)
        assert said in one_sentence(err.value.message), choice
        assert studio.model_path == other and studio.generator() is now  # the old one is kept
    assert "checksum" in str(want.value)

    room.switch(str(bundle))  # and back
    assert studio.generator().bundle_hash == old.bundle_hash


def test_a_switch_during_a_generation_leaves_that_generation_on_its_model(shelf, bundle):
    studio, other = shelf["studio"], shelf["other"]
    studio.generator()
    sampling, release = threading.Event(), threading.Event()

    def progress(value, desc=None, unit=None):  # the Generate tab's progress bar: held at the first step
        if desc == "sampling":
            sampling.set()
            release.wait(120)

    made = {}
    worker = threading.Thread(
        target=lambda: made.update(outputs=list(studio.generate(PROMPT, 0.5, 2, 1, 1, [], progress=progress)))
    )
    worker.start()
    try:
        assert sampling.wait(120)
        studio.switch_model(other)  # does not wait for the generation, nor disturb it
        assert worker.is_alive() and studio.model_path == other
    finally:
        release.set()
        worker.join(120)
    assert made["outputs"][-1][MAX_TAKES + 1]["model_hash"] == bundle_hash(bundle)
    after = list(studio.generate(PROMPT, 0.5, 2, 1, 1, []))[-1]
    assert after[MAX_TAKES + 1]["model_hash"] == bundle_hash(other)


# ---------------------------------------------------------------- the launched app, through gradio_client


@pytest.fixture(scope="module")
def served(studio):
    port = free_port()
    demo = launch(studio, host="127.0.0.1", port=port, block=False, preload=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served, verbose=False, httpx_kwargs={"timeout": 300})


def test_api_live_preview_and_a_bad_alpha(client, studio):
    from gradio_client.exceptions import AppError

    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/live", "/live_stream", "/models", "/switch_model"} <= set(named)
    wav, record = client.predict(PROMPT, FIRE, 0.5, 3, 0.1, 1.5, 2, api_name="/live")
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == SR and data.shape == (round(1.5 * SR), 2)
    alone = live.morph(studio.generator(), PROMPT, FIRE, 0.5, seconds=1.5, seed=3, variation=0.1, steps=2)
    np.testing.assert_allclose(data.T, alone.samples, atol=QUANTUM)
    assert record["alpha"] == 0.5 and record["morph_to"] == FIRE

    with pytest.raises(AppError) as err:
        client.predict(PROMPT, FIRE, 2.0, 3, 0.1, 1.5, 2, api_name="/live")
    with pytest.raises(BadInput) as want:
        live.morph(studio.generator(), PROMPT, FIRE, 2.0)
    assert str(want.value) in str(err.value) and "Traceback" not in str(err.value)


@needs_ffmpeg
def test_api_live_stream_streams_until_cancelled_and_frees_the_queue(client):
    job = client.submit(PROMPT, "", 0.0, 2, 2, api_name="/live_stream")
    deadline = time.monotonic() + 180
    while len(job.outputs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    outputs = job.outputs()
    assert len(outputs) >= 2, job.status()
    _, record, status = outputs[-1]
    assert record["pipeline"] == "live" and record["seed"] == 2 and status.startswith("Streaming")
    job.cancel()
    wav, _ = client.predict(PROMPT, "", 0.0, 1, 0.0, 0.5, 2, api_name="/live")  # the model queue is free
    assert sf.info(wav).frames == SR // 2


def test_api_models_and_switch_model(client, studio, bundle):
    from gradio_client.exceptions import AppError

    models = studio.outputs / "models"
    other = other_generator(bundle, models / "cello-run", CARD)
    broken = shutil.copytree(other, models / "damaged")
    (broken / "dit.safetensors").write_bytes(b"not the tensors model.json names")
    try:
        active, table, *_ = client.predict(None, api_name="/models")
        folders = [row[6] for row in table["data"]]
        assert {str(other), str(broken)} <= set(folders) and active.startswith("**In use:** generator")

        active, table, *_ = client.predict(str(other), api_name="/switch_model")
        assert active.startswith("**In use:** cello-run") and studio.model_path == other
        _, record = client.predict(PROMPT, "", 0.0, 1, 0.0, 0.5, 2, api_name="/live")
        assert record["model_hash"] == bundle_hash(other)

        with pytest.raises(AppError) as err:
            client.predict(str(broken), api_name="/switch_model")
        assert "checksum" in str(err.value) and "Traceback" not in str(err.value)
        with pytest.raises(AppError) as err:
            client.predict(str(bundle.parent / "codec"), api_name="/switch_model")
        assert "'codec' is not one of the studio's model bundles" in str(err.value)
        assert studio.model_path == other
    finally:
        studio.switch_model(bundle)  # the module's other tests hear the tiny bundle
        shutil.rmtree(models)


# ---------------------------------------------------------------- a real browser


def same_sound(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=QUANTUM)


def heard(audio) -> np.ndarray:
    """The samples [channels, n] of the file a page's <audio> element holds now (Gradio's player loads it
    into a blob: URL, read back through the page); empty when it holds none."""
    if not audio.get_attribute("src"):
        return np.zeros((2, 0), np.float32)
    url = audio.evaluate(
        "async el => { const blob = await (await fetch(el.src)).blob(); return await new Promise(done => {"
        " const r = new FileReader(); r.onload = () => done(r.result); r.readAsDataURL(blob); }); }"
    )
    data, _ = sf.read(io.BytesIO(base64.b64decode(url.split(",", 1)[1])), dtype="float32", always_2d=True)
    return data.T


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
@needs_ffmpeg
def test_browser_moves_the_morph_slider_and_hears_a_new_preview(served, studio, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    studio.generator()
    calls = []
    morph = live.morph

    def slow_morph(gen, prompt, morph_to, alpha, **kwargs):  # slow enough that slider moves arrive meanwhile
        calls.append(alpha)
        time.sleep(1.0)
        return morph(gen, prompt, morph_to, alpha, **kwargs)

    monkeypatch.setattr(live, "morph", slow_morph)
    # what the page's previews must be: the Live tab's defaults (seed 0, no variation, 4 s, the tiny
    # bundle's 4 steps) at morph 0.4, with the second prompt typed first and then another
    defaults = {"seconds": 4.0, "seed": 0, "variation": 0.0, "steps": 4}
    want = morph(studio.generator(), "a soft pad chord", "rain on a tin roof", 0.4, **defaults).samples
    fire = morph(studio.generator(), "a soft pad chord", "a crackling fire", 0.4, **defaults).samples
    shots = Path(os.environ.get("SOUNDLOOM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    outside = []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "request",
                lambda r: r.url.startswith((served, "data:", "blob:")) or outside.append(r.url),
            )
            page.goto(served)
            page.get_by_role("tab", name="Live").click()
            page.locator("#live-prompt").get_by_role("textbox").fill("a soft pad chord")
            page.locator("#live-morph-to").get_by_role("textbox").fill("rain on a tin roof")
            slider = page.locator("#live-alpha input[type=range]")

            slider.focus()
            slider.press("ArrowRight")  # 0.05: the first preview
            audio = page.locator("#live-preview audio[src]")
            audio.wait_for(state="attached", timeout=120_000)
            assert calls == [0.05]

            for _ in range(7):  # on to 0.4 while the first of these is being made
                slider.press("ArrowRight")
                page.wait_for_timeout(50)
            deadline = time.monotonic() + 180
            while not same_sound(heard(audio), want):  # the latest change's sound
                assert time.monotonic() < deadline, calls
                page.wait_for_timeout(500)
            page.wait_for_timeout(2000)  # room for a preview still queued to show itself (none should be)
            # the latest change won and nothing piled up: at most one preview for all the presses after
            # the one being made when they came
            assert calls[0] == 0.05 and calls[-1] == pytest.approx(0.4) and len(calls) <= 3, calls
            duration = audio.evaluate(
                "el => el.readyState >= 1 ? el.duration : new Promise(done =>"
                " el.addEventListener('loadedmetadata', () => done(el.duration), {once: true}))"
            )
            assert duration == pytest.approx(live.PREVIEW_SECONDS, abs=0.01)
            made = len(calls)

            second = page.locator("#live-morph-to").get_by_role("textbox")
            second.fill("a crackling fire")  # typing alone makes nothing; Enter does
            page.wait_for_timeout(500)
            assert len(calls) == made
            second.press("Enter")
            deadline = time.monotonic() + 180
            while not same_sound(heard(audio), fire):
                assert time.monotonic() < deadline, calls
                page.wait_for_timeout(500)
            assert len(calls) == made + 1
            page.screenshot(path=str(shots / "live.png"), full_page=True)

            page.locator("#live-stream-start").click()
            page.get_by_text("Streaming:").wait_for(timeout=120_000)
            page.locator("#live-stop").click()
            page.get_by_text("Stopped after").wait_for(timeout=30_000)

            page.get_by_role("tab", name="Models").click()
            page.locator("#models-card").get_by_text("sampling defaults").wait_for()
            page.screenshot(path=str(shots / "models.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
