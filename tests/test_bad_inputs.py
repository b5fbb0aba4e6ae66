"""Bad-input suite (issue 8): what users get wrong, through the three surfaces: the `soundloom` CLI, the
Python API (pipelines.*, training's corpus readers) and the studio's API through gradio_client.

Every input gets one plain sentence (pipelines.errors.BadInput; the CLI prints one line and exits 2) or a
documented, safe clamp; a refusal leaves no output file behind, and the studio stays up (the next good
request works). One table per surface; ALREADY_COVERED lists the issue's inputs that neighbouring test
files check in the same way, which are not repeated here.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import test_studio
from conftest import noise, sine
from test_cli_errors import assert_one_line_error, run_main
from test_generator import SR, tiny_generator_bundle
from test_security import broken_generator, drop_first, transpose_a_matrix

import pipelines.generator as generator_module
from app.studio import MAX_TAKES, Studio, launch
from pipelines.audio import Audio, load_audio
from pipelines.edit import extend
from pipelines.errors import BadInput
from pipelines.generator import load_generator
from pipelines.loops import beats
from pipelines.transform import transform
from training.codec_recipe import AudioPool
from training.corpus import from_folder, read_manifest, split_of

pytestmark = test_studio.pytestmark  # gradio 6's queue and pandas 3: deprecation warnings that are not ours

ALREADY_COVERED = {  # the input: where it is checked (surface)
    "text file renamed .wav": "test_audio::test_text_file_renamed_wav (API), "
    "test_cli_errors::test_codec_roundtrip_input_not_audio (CLI)",
    "audio of zero frames": "test_audio::test_zero_length_audio (API), "
    "test_cli_errors::test_codec_roundtrip_zero_length_input (CLI)",
    "zero-byte .flac": "test_audio::test_empty_file (API)",
    "NaN and inf samples in a file": "test_audio::test_non_finite_samples (API), "
    "test_cli_errors::test_codec_roundtrip_nan_input (CLI, NaN)",
    "8 channels": "test_audio::test_eight_channels_downmixed_with_warning (API), "
    "test_cli_errors::test_codec_roundtrip_writes_output_and_warns_once (CLI)",
    "sample rates of 500 Hz and 1 MHz": "test_audio::test_absurd_sample_rate (API)",
    "digital silence as a voice": "test_pipelines (API and CLI, 'silent')",
    "empty and 2001-character prompts": "test_generator (API, CLI), test_studio (handler and client)",
    "seconds, steps, variations, seed out of range": "test_generator::test_bad_arguments_are_one_sentence "
    "(API), test_generator (CLI), test_studio (handler)",
    "strength 1.5 / -0.1 / nan, bpm 0 / 1000, bars 0": "test_pipelines (API and CLI)",
    "malformed manifest lines, records missing keys, torn tail": "test_corpus (API)",
    "bundle with a missing or mis-shaped tensor": "test_security (API and studio handler)",
}

HUGE = 1e30  # finite in float32, but its square is not


# ---------------------------------------------------------------- inputs, made once


def hour_long_wav(path: Path, seconds: int = 3600, rate: int = 8000) -> Path:
    """A valid 16-bit mono WAV of `seconds` of silence, written sparse: the header, then a hole the file
    system reads back as zeros, so an hour costs no time and (where holes are supported) no disk."""
    data = seconds * rate * 2
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header = (
        b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data)
    )
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return path


def square(seconds: float = 1.0, amplitude: float = 1.0) -> np.ndarray:
    """A 100 Hz square wave at `amplitude`, stereo float32: at 1.0 every sample sits at full scale."""
    t = np.arange(round(seconds * SR)) / SR
    wave = (amplitude * np.where(np.sin(2 * np.pi * 100 * t) >= 0, 1.0, -1.0)).astype(np.float32)
    return np.stack([wave, wave])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("bad-inputs-bundle"))


@pytest.fixture(scope="module")
def gen(bundle):
    return load_generator(bundle)


@pytest.fixture(scope="module")
def files(tmp_path_factory, bundle) -> SimpleNamespace:
    """Every bad file and folder of the tables, by name (and the bundles they are run with)."""
    d = tmp_path_factory.mktemp("bad-files")
    f = SimpleNamespace(dir=d, bundle=bundle, codec=bundle.parent / "codec")

    def write(name: str, samples: np.ndarray, rate: int = SR, subtype: str | None = None) -> Path:
        sf.write(d / name, samples.T, rate, subtype=subtype)
        return d / name

    def damaged(name: str, good: Path, at: int, patch: bytes | None = None) -> Path:
        """`good` cut off at byte `at`, or with `patch` written over the bytes from `at` on."""
        data = good.read_bytes()
        rest = b"" if patch is None else patch + data[at + len(patch) :]
        (d / name).write_bytes(data[:at] + rest)
        return d / name

    tone = square(1.0, 0.3)
    wav, flac = write("good.wav", tone), write("good.flac", tone)
    f.truncated_wav = damaged("truncated.wav", wav, 44 + SR * 2)  # the header promises twice the frames
    f.corrupt_wav = damaged("corrupt-header.wav", wav, 20, b"\x99\x99")  # an unknown sample format code
    f.truncated_flac = damaged("truncated.flac", flac, flac.stat().st_size // 2)
    f.corrupt_flac = damaged("corrupt.flac", flac, flac.stat().st_size // 2, b"\xff" * 256)
    f.zero_bytes = damaged("zero-bytes.wav", wav, 0)
    f.hour = hour_long_wav(d / "hour.wav")
    f.rate_8k = write("8k.wav", sine(220.0, 0.5, 8000, amplitude=0.3), 8000)
    f.rate_192k = write("192k.wav", sine(220.0, 0.5, 192000, amplitude=0.3), 192000)
    f.eight_channels = write("8ch.wav", noise(0.5, channels=8))
    inf = square(0.5, 0.3)
    inf[1, 100] = np.inf
    f.inf_samples = write("inf.wav", inf, subtype="FLOAT")
    f.huge_samples = write("huge.wav", square(0.5, HUGE), subtype="FLOAT")
    f.silence = write("silence.wav", np.zeros((2, SR // 2), np.float32))
    f.clipped = write("clipped.wav", square(0.5, 1.0), subtype="PCM_16")

    f.no_manifest = d / "no-manifest"
    f.no_manifest.mkdir()
    f.empty_manifest = d / "empty-manifest"
    f.empty_manifest.mkdir()
    (f.empty_manifest / "manifest.jsonl").write_text("")
    f.missing_clip = d / "missing-clip"  # a corpus whose manifest names a clip that is not there
    f.missing_clip.mkdir()
    record = {"id": "gone", "path": "audio/gone.flac", "captions": ["a bell"], "split": "train"}
    (f.missing_clip / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    f.one_unreadable = d / "one-unreadable"
    f.one_unreadable.mkdir()
    (f.one_unreadable / "notes.wav").write_text("my notes for the session, not audio\n")
    f.one_sound = d / "one-sound"  # one sound, named so that its split is not train
    f.one_sound.mkdir()
    name = next(f"kick-{i}.wav" for i in range(100) if split_of(f"folder:kick-{i}.wav") != "train")
    sf.write(f.one_sound / name, square(0.5, 0.5).T, SR)
    (f.one_sound / name).with_suffix(".txt").write_text("a kick drum\n")  # a caption: no analysis runs
    f.bundle_missing = broken_generator(bundle, "bundle-missing-tensor", drop_first)
    f.bundle_misshaped = broken_generator(bundle, "bundle-misshaped-tensor", transpose_a_matrix)
    return f


def one_sentence(message: str) -> str:
    """`message`, checked to be one plain sentence: one line, no traceback, ending in a full stop, no
    second sentence outside parentheses (libsndfile's own words in them may have two)."""
    assert "\n" not in message and "Traceback" not in message, message
    outside = re.sub(r"\([^()]*\)", "", message.replace("e.g. ", ""))
    assert message.endswith(".") and not re.search(r"[.;!?] [A-Z][a-z]", outside), message
    return message


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------- the CLI

MODEL = ["--model", "{bundle}", "--seed", "1", "--steps", "1"]
OUT = ["-o", "{out}"]
CLI_REFUSALS = {  # id: (argv, what the one line says)
    "truncated flac": (["codec", "roundtrip", "{truncated_flac}", *OUT], "the file may be damaged"),
    "corrupt wav header": (["codec", "roundtrip", "{corrupt_wav}", *OUT], "Could not read"),
    "zero-byte file": (["codec", "roundtrip", "{zero_bytes}", *OUT], "Could not read"),
    "hour-long file": (["codec", "roundtrip", "{hour}", *OUT], "3600.0 s long, more than the 600 s limit"),
    "inf samples": (["transform", "{inf_samples}", "a bell", *MODEL, *OUT], "NaN or infinite"),
    "samples of 1e30": (["voice", "{huge_samples}", "a flute", *MODEL, *OUT], "60 dB over full scale"),
    "100,000-character prompt": (["generate", "x" * 100_000, *MODEL, *OUT], "at most 2000"),
    "null byte in the prompt": (["generate", "a\x00bell", *MODEL, *OUT], "control character U+0000"),
    "negative seconds": (["generate", "a bell", "--seconds", "-1", *MODEL, *OUT], "--seconds"),
    "zero seconds": (["generate", "a bell", "--seconds", "0", *MODEL, *OUT], "--seconds"),
    "huge seconds": (["generate", "a bell", "--seconds", "1e9", *MODEL, *OUT], "at most 600"),
    "negative steps": (["generate", "a bell", "--steps", "-3", "--model", "{bundle}", *OUT], "--steps"),
    "zero steps": (["generate", "a bell", "--steps", "0", "--model", "{bundle}", *OUT], "--steps"),
    "huge steps": (["generate", "a bell", "--steps", "9" * 20, "--model", "{bundle}", *OUT], "1 to 1000"),
    "negative bpm": (["beats", "drums", "--bpm", "-120", "--bars", "1", *MODEL, *OUT], "--bpm"),
    "nan bpm": (["beats", "drums", "--bpm", "nan", "--bars", "1", *MODEL, *OUT], "--bpm"),
    "negative bars": (["beats", "drums", "--bpm", "120", "--bars", "-1", *MODEL, *OUT], "--bars"),
    "huge bars": (["beats", "drums", "--bpm", "120", "--bars", "100000", *MODEL, *OUT], "1 to 256"),
    "negative strength": (["transform", "{clipped}", "x", "--strength", "-0.5", *MODEL, *OUT], "--strength"),
    "bundle missing a tensor": (
        ["generate", "a bell", "--model", "{bundle_missing}", *OUT],
        "does not fit the model (missing",
    ),
    "bundle with a mis-shaped tensor": (
        ["generate", "a bell", "--model", "{bundle_misshaped}", *OUT],
        "shaped",
    ),
    "dataset of one unreadable file": (
        ["dataset", "from-folder", "{one_unreadable}", "--out", "{out_dir}"],
        "None of the 1 audio file(s)",
    ),
    "training data without a manifest": (
        ["train", "--recipe", "codec", "--data", "{no_manifest}", "--out", "{out_dir}"],
        "No manifest.jsonl",
    ),
    "manifest naming a missing clip": (
        ["dataset", "encode", "{missing_clip}", "--model", "{codec}"],
        "have no audio file (the first is 'audio/gone.flac')",
    ),
}


@pytest.fixture
def cli(monkeypatch, capsys, bundle, gen):
    """`soundloom ARGV...` in this process: (exit code, stdout, stderr). The tiny bundle is loaded once
    for every call; other bundles (the broken ones) load for real."""
    real = generator_module.load_generator

    def load(model=None, **kwargs):
        return gen if model is not None and Path(model) == bundle else real(model, **kwargs)

    monkeypatch.setattr(generator_module, "load_generator", load)
    return lambda *argv: run_main(capsys, *argv)


@pytest.mark.parametrize(("argv", "needle"), list(CLI_REFUSALS.values()), ids=list(CLI_REFUSALS))
def test_cli_refuses_in_one_line_and_writes_nothing(cli, files, tmp_path, argv, needle):
    made = tmp_path / "made"  # -o OUT and --out DIR both point in here
    made.mkdir()
    code, stdout, err = cli(*(a.format(**vars(files), out=made / "o.wav", out_dir=made / "d") for a in argv))
    assert needle in one_sentence(assert_one_line_error(code, err).removeprefix("error: "))
    assert stdout == ""
    assert list(made.iterdir()) == []  # not even an empty run or corpus folder is left behind
    assert not (files.missing_clip / "latents").exists()  # no latent cache was begun


CLI_CLAMPS = {  # id: (argv, the warning line on stderr or None); each writes 44.1 kHz stereo within full scale
    "8 kHz input": (["transform", "{rate_8k}", "a bell", *MODEL, *OUT], None),
    "192 kHz input": (["transform", "{rate_192k}", "a bell", *MODEL, *OUT], None),
    "8-channel input": (
        ["transform", "{eight_channels}", "a bell", *MODEL, *OUT],
        "warning: '8ch.wav' has 8 channels; it was downmixed to stereo.",
    ),
    "full-scale clipped input": (["transform", "{clipped}", "a bell", *MODEL, *OUT], None),
    "digital silence input": (["transform", "{silence}", "a bell", *MODEL, *OUT], None),
    "emoji prompt": (["generate", "🔔 a bell 🎻", "--seconds", "0.5", *MODEL, *OUT], None),
}


@pytest.mark.parametrize(("argv", "warning"), list(CLI_CLAMPS.values()), ids=list(CLI_CLAMPS))
def test_cli_handles_odd_but_valid_input_safely(cli, files, tmp_path, argv, warning):
    out = tmp_path / "o.wav"
    argv = [a.format(**vars(files), out=out) for a in argv]
    code, stdout, err = cli(*argv)
    assert code == 0, err
    assert err.strip().splitlines() == ([warning] if warning else [])
    assert stdout.splitlines()[-1] == f"wrote {out}"
    data, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == SR and data.shape[1] == 2 and np.isfinite(data).all() and np.abs(data).max() <= 1.0
    assert data.shape[0] == SR // 2  # every input is 0.5 s long, and a transform is as long as its source
    assert json.loads(out.with_name("o.wav.json").read_text())["seed"] == 1


# ---------------------------------------------------------------- the Python API


def tone_with(value: float) -> Audio:
    x = square(1.0, 0.3)
    x[1, 100] = value
    return Audio(x, SR)


API_REFUSALS = {  # id: (call(generator, files), what the sentence says)
    "truncated flac": (lambda g, f: load_audio(f.truncated_flac), "the file may be damaged"),
    "corrupt flac": (lambda g, f: load_audio(f.corrupt_flac), "the file may be damaged"),
    "hour-long file": (lambda g, f: load_audio(f.hour), "'hour.wav' is 3600.0 s long"),
    "file of 1e30 samples": (lambda g, f: load_audio(f.huge_samples), "60 dB over full scale"),
    "1-d samples": (
        lambda g, f: transform(g, Audio(square()[0], SR), "a bell"),
        "shaped [channels, n], not (44100,)",
    ),
    "inf sample": (lambda g, f: transform(g, tone_with(np.inf), "a bell"), "NaN or infinite"),
    "a sample of 1e30": (lambda g, f: transform(g, tone_with(HUGE), "a bell"), "peaks at 1e+30"),
    "null byte in the prompt": (lambda g, f: g.generate("a\x00bell", seconds=0.5), "U+0000"),
    "escape code in the prompt": (lambda g, f: g.generate("\x1b[2Ja bell", seconds=0.5), "U+001B"),
    "only zero-width characters": (lambda g, f: g.generate("\u200b\u200b", seconds=0.5), "prompt is empty"),
    "bytes for a prompt": (lambda g, f: g.generate(b"a bell", seconds=0.5), "must be text, not bytes"),
    "negative bpm": (lambda g, f: beats(g, "drums", bpm=-120, bars=1), "tempo must be from 20 to 400"),
    "nan bpm": (lambda g, f: beats(g, "drums", bpm=float("nan"), bars=1), "not nan"),
    "huge bars": (lambda g, f: beats(g, "drums", bpm=120, bars=10**9), "from 1 to 256"),
    "fractional bars": (lambda g, f: beats(g, "drums", bpm=120, bars=1.5), "whole number"),
    "huge seconds to extend": (lambda g, f: extend(g, tone_with(0.0), "x", seconds=1e9), "within 600 s"),
    "nan seconds to extend": (lambda g, f: extend(g, tone_with(0.0), "x", seconds=float("nan")), "not nan"),
    "infinite strength": (lambda g, f: transform(g, tone_with(0.0), "x", strength=float("inf")), "not inf"),
    "keep given a number": (lambda g, f: transform(g, tone_with(0.0), "x", keep=5), "keep must name"),
    "corpus without a manifest": (lambda g, f: AudioPool(f.no_manifest), "No manifest.jsonl"),
    "empty manifest": (lambda g, f: AudioPool(f.empty_manifest), "has no train clips"),
    "manifest naming a missing clip": (
        lambda g, f: AudioPool(f.missing_clip),
        "have no audio file (the first is 'audio/gone.flac')",
    ),
    "folder of one unreadable file": (
        lambda g, f: from_folder(f.one_unreadable, f.dir / "never-made"),
        "could be read, starting with 'notes.wav'",
    ),
}


@pytest.mark.parametrize(("call", "needle"), list(API_REFUSALS.values()), ids=list(API_REFUSALS))
def test_api_refuses_in_one_sentence_and_writes_nothing(gen, files, call, needle):
    before = files_under(files.dir)
    with pytest.raises(BadInput) as err:
        call(gen, files)
    assert needle in one_sentence(str(err.value))
    assert files_under(files.dir) == before  # no pool array, no .partial, no corpus folder


def test_api_a_dataset_of_one_file_is_built_and_training_on_it_says_what_is_missing(files, tmp_path):
    corpus = from_folder(files.one_sound, tmp_path / "corpus")
    (record,) = read_manifest(corpus)
    assert record["captions"] == ["a kick drum"] and record["split"] != "train"
    with pytest.raises(BadInput) as err:
        AudioPool(corpus, "train")
    assert "has no train clips" in one_sentence(str(err.value))
    assert not list(corpus.glob(".cache/*.int16*"))


def test_api_truncated_wav_is_read_up_to_where_its_data_ends(files):
    """libsndfile's clamp, documented in load_audio: the frames that are there, and no error."""
    assert load_audio(files.truncated_wav).frames == SR // 2


@pytest.mark.parametrize("name", ["rate_8k", "rate_192k"])
def test_api_low_and_high_rates_are_resampled_to_44k(files, name):
    audio = load_audio(getattr(files, name))
    assert audio.sample_rate == SR and audio.channels == 2 and audio.frames == SR // 2
    assert 0.25 < np.abs(audio.samples).max() < 0.35  # the level survives the resampler


@pytest.mark.parametrize(
    "source",
    [square(1.0, 1.0), np.zeros((2, SR), np.float32)],
    ids=["full-scale clipped source", "digital silence source"],
)
def test_api_clipped_and_silent_sources_transform_safely(gen, source):
    out = transform(gen, Audio(source, SR), "a bell", steps=1, seed=2)
    assert out.samples.shape == (2, SR) and np.isfinite(out.samples).all()
    assert np.abs(out.samples).max() <= 1.0


def test_api_emoji_prompt_is_kept_as_given(gen):
    out = gen.generate("🔔🎻", seconds=0.5, steps=1, seed=3)
    assert out.samples.shape == (2, SR // 2) and np.isfinite(out.samples).all()
    assert gen.last_settings.prompt == "🔔🎻"


# ---------------------------------------------------------------- the studio, through gradio_client


@pytest.fixture(scope="module")
def site(bundle, gen, tmp_path_factory):
    """The studio served on a free loopback port (sharing the loaded generator) and a client of it."""
    from gradio_client import Client

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        studio = Studio(bundle, tmp_path_factory.mktemp("studio-outputs"))
        studio._generator = gen
        port = test_studio.free_port()
        demo = launch(studio, host="127.0.0.1", port=port, block=False, preload=False)
        yield SimpleNamespace(studio=studio, client=Client(f"http://127.0.0.1:{port}/", verbose=False))
        demo.close()


def generate(site, prompt, seconds=0.5, steps=1, seed=1, variations=1):
    return site.client.predict(prompt, seconds, steps, seed, variations, api_name="/generate")


STUDIO_REFUSALS = {  # id: ((prompt, seconds, steps, seed, variations) as a client may send them, the sentence)
    "100,000-character prompt": (("x" * 100_000, 0.5, 1, 1, 1), "at most 2000"),
    "null byte in the prompt": (("a\x00bell", 0.5, 1, 1, 1), "control character U+0000"),
    "only zero-width characters": (("\u200b", 0.5, 1, 1, 1), "prompt is empty"),
    "a number for a prompt": ((5, 0.5, 1, 1, 1), "must be text, not int"),
    "negative seconds": (("a bell", -1, 1, 1, 1), "seconds must be above 0"),
    "zero seconds": (("a bell", 0, 1, 1, 1), "seconds must be above 0"),
    "huge seconds": (("a bell", 1e9, 1, 1, 1), "at most 20 (this model's longest)"),
    "text for seconds": (("a bell", "ten", 1, 1, 1), "not 'ten'"),
    "negative steps": (("a bell", 0.5, -5, 1, 1), "steps must be a whole number from 1 to 1000"),
    "zero steps": (("a bell", 0.5, 0, 1, 1), "not 0"),
    "huge steps": (("a bell", 0.5, 10**9, 1, 1), "not 1000000000"),
    "huge seed": (("a bell", 0.5, 1, 10**30, 1), "The seed must be a whole number"),
    "fractional seed": (("a bell", 0.5, 1, 1.5, 1), "not 1.5"),
    "zero variations": (("a bell", 0.5, 1, 1, 0), f"between 1 and {MAX_TAKES}"),
}


@pytest.mark.parametrize(("args", "needle"), list(STUDIO_REFUSALS.values()), ids=list(STUDIO_REFUSALS))
def test_studio_says_one_sentence_writes_nothing_and_stays_up(site, args, needle):
    from gradio_client.exceptions import AppError

    before = files_under(site.studio.outputs)
    with pytest.raises(AppError) as err:
        generate(site, *args)
    assert needle in one_sentence(str(err.value))  # the generator's sentence, not Gradio's generic one
    assert files_under(site.studio.outputs) == before


def test_studio_still_works_after_the_bad_requests_and_names_emoji_takes_safely(site):
    """Runs after the table above (pytest keeps file order): the same server makes an emoji prompt's takes."""
    result = generate(site, "🔔🎻", seed=9)
    assert sf.info(result[0]).frames == SR // 2
    assert result[MAX_TAKES + 1]["prompt"] == "🔔🎻"
    names = [Path(p).name for p in result[MAX_TAKES]]
    assert len(names) == 3
    assert all(re.fullmatch(r"\d{8}-\d{6}-\d{3}_sound_seed9\.(wav|flac|mp3)", n) for n in names), names
