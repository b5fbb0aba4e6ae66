"""Export options (pipelines/export.py) and their flags on every sound-making verb, measured on the files
written: rate, bit depth, channels, loudness, fades, trim, embedded settings, WAV loop points, batches
from a prompt list, `generate --from` without a sidecar, and the refusals."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from test_generator import tiny_generator_bundle

import app.cli as cli
from pipelines.audio import Audio
from pipelines.errors import BadInput
from pipelines.export import ExportOptions, export_audio, read_embedded
from pipelines.generator import read_settings, settings_path

SR = 44100
RECORD = {
    "soundloom_settings": 1,
    "prompt": "a warm cello note, A3 — slow bow, ünï 漢字",
    "seed": 11,
    "note": "x" * 5000,  # longer than libsndfile reads back from a WAV INFO string
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generator"))


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tone(seconds: float = 1.0, freq: float = 440.0, amplitude: float = 0.5, channels: int = 2) -> Audio:
    t = np.arange(round(seconds * SR)) / SR
    return Audio(np.tile(amplitude * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32), SR)


def lufs_of(path: Path) -> float:
    """Integrated loudness measured straight with pyloudnorm on the file as read back."""
    data, rate = sf.read(path, dtype="float64")
    return float(pyloudnorm.Meter(rate).integrated_loudness(data))


def riff_chunks(path: Path) -> dict[bytes, bytes]:
    """The chunks of a WAV file, parsed here with struct alone (not with the code under test)."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    chunks, pos = {}, 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunks[cid] = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    assert pos == len(data)
    return chunks


def info_fields(list_payload: bytes) -> dict[str, str]:
    assert list_payload[:4] == b"INFO"
    fields, pos = {}, 4
    while pos + 8 <= len(list_payload):
        key, size = list_payload[pos : pos + 4], struct.unpack_from("<I", list_payload, pos + 4)[0]
        fields[key.decode()] = list_payload[pos + 8 : pos + 8 + size].rstrip(b"\0").decode("utf-8")
        pos += 8 + size + (size & 1)
    return fields


def smpl_loops(path: Path) -> tuple[int, list[tuple[int, int, int]]]:
    """(sample period in ns, [(type, start, end), ...]) of a WAV file's smpl chunk."""
    payload = riff_chunks(path)[b"smpl"]
    header = struct.unpack_from("<9I", payload)
    loops = [struct.unpack_from("<6I", payload, 36 + 24 * i) for i in range(header[7])]
    return header[2], [(kind, start, end) for _, kind, start, end, _, _ in loops]


# ---------------------------------------------------------------- the Python API, measured on the file


@pytest.mark.parametrize(
    ("suffix", "rate", "bits", "channels", "subtype"),
    [
        (".wav", 44100, 16, 2, "PCM_16"),
        (".wav", 48000, 24, 1, "PCM_24"),
        (".flac", 48000, 16, 2, "PCM_16"),
        (".flac", 44100, 24, 1, "PCM_24"),
        (".mp3", 48000, None, 1, "MPEG_LAYER_III"),
        (".mp3", 44100, None, 2, "MPEG_LAYER_III"),
    ],
)
def test_rate_bit_depth_and_channels_are_what_the_file_holds(tmp_path, suffix, rate, bits, channels, subtype):
    path = export_audio(
        tone(1.0), tmp_path / f"o{suffix}", ExportOptions(sample_rate=rate, bits=bits, channels=channels)
    )
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (rate, channels, subtype)
    assert abs(info.frames - rate) <= (2000 if suffix == ".mp3" else 1)  # 1 s; MP3 frames pad the end
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    if suffix != ".mp3":  # the tone survives the resampling and downmix at its level
        assert np.max(np.abs(data)) == pytest.approx(0.5, abs=0.01)


def test_defaults_write_the_sound_as_made(tmp_path):
    audio = tone(0.5)
    path = export_audio(audio, tmp_path / "o.wav")
    data, rate = sf.read(path, dtype="int16", always_2d=True)
    expected = np.round(np.clip(audio.samples.T, -1, 1) * 32767).astype(np.int16)
    assert rate == SR and sf.info(path).subtype == "PCM_16"
    assert np.abs(data.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
@pytest.mark.parametrize(("target", "kind"), [(-23.0, "chord"), (-14.0, "chord"), (-16.0, "white noise")])
def test_loudness_target_is_met_within_half_an_lu(tmp_path, suffix, target, kind):
    # white noise is the hard case for MP3: its encoder's low-pass takes ~0.5 LU away
    rng = np.random.default_rng(0)
    if kind == "chord":
        x = (
            tone(2.0, 220.0, 0.02).samples
            + tone(2.0, 660.0, 0.01).samples
            + 0.002 * rng.standard_normal((2, 2 * SR))
        )
    else:
        x = 0.01 * rng.standard_normal((2, 2 * SR))
    path = export_audio(Audio(x.astype(np.float32), SR), tmp_path / f"o{suffix}", ExportOptions(lufs=target))
    assert abs(lufs_of(path) - target) < 0.5


def test_a_target_that_would_clip_stops_at_minus_1_dbfs_and_says_so(tmp_path):
    audio = tone(2.0, amplitude=0.05)
    audio.samples[:, SR] = 0.9  # one click: the peak sits far above the sine's loudness
    with pytest.warns(UserWarning, match=r"Reaching -6 LUFS would put the peak at \+\d") as caught:
        path = export_audio(audio, tmp_path / "o.wav", ExportOptions(lufs=-6.0, bits=24))
    reached = float(str(caught[0].message).split("the file is at ")[1].split(" LUFS")[0])
    data, _ = sf.read(path, dtype="float64")
    assert 20 * np.log10(np.max(np.abs(data))) == pytest.approx(-1.0, abs=0.01)
    assert lufs_of(path) == pytest.approx(reached, abs=0.1) and reached < -6.0 - 3.0


def test_fades_are_raised_cosine_of_the_given_lengths(tmp_path):
    flat = Audio(np.full((2, SR), 0.5, np.float32), SR)  # a constant: what comes back is the gain
    path = export_audio(flat, tmp_path / "o.wav", ExportOptions(bits=24, fade_in_ms=100, fade_out_ms=250))
    gain = sf.read(path, dtype="float64")[0][:, 0] / 0.5
    n, fade_in, fade_out = SR, round(0.100 * SR), round(0.250 * SR)
    assert gain[0] == 0.0 and gain[-1] == 0.0
    assert gain[fade_in // 2] == pytest.approx(0.5, abs=1e-4)
    assert gain[n - 1 - fade_out // 2] == pytest.approx(0.5, abs=1e-4)
    np.testing.assert_allclose(gain[fade_in : n - fade_out], 1.0, atol=1e-6)
    rise = lambda k: 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)  # noqa: E731
    np.testing.assert_allclose(gain[:fade_in], rise(fade_in), atol=1e-6)  # as long as asked, and that shape
    np.testing.assert_allclose(gain[n - fade_out :], rise(fade_out)[::-1], atol=1e-6)
    assert np.all(np.diff(gain[:fade_in]) >= 0) and np.all(np.diff(gain[n - fade_out :]) <= 0)


def test_fades_longer_than_the_sound_are_shortened_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="shortened to fit"):
        path = export_audio(tone(0.1), tmp_path / "o.flac", ExportOptions(fade_in_ms=200, fade_out_ms=200))
    data = sf.read(path)[0]
    assert len(data) == round(0.1 * SR) and np.all(data[0] == 0) and np.all(data[-1] == 0)


def test_trim_cuts_what_is_quieter_than_the_threshold(tmp_path):
    rng = np.random.default_rng(1)
    hiss = 1e-5 * rng.standard_normal((2, round(1.8 * SR)))  # about -85 dBFS
    x = hiss.copy()
    start = round(0.3 * SR)
    x[:, start : start + SR] += tone(1.0, amplitude=0.5).samples
    audio = Audio(x.astype(np.float32), SR)
    trimmed = export_audio(audio, tmp_path / "t.wav", ExportOptions(trim_db=-60.0, bits=24))
    data = sf.read(trimmed)[0]
    assert abs(len(data) - SR) <= 3  # the tone's first and last samples near zero may go
    kept = export_audio(audio, tmp_path / "k.wav", ExportOptions(trim_db=-120.0))
    assert sf.info(kept).frames == audio.frames  # its hiss reaches -120 dBFS at both ends: nothing to cut
    with pytest.warns(UserWarning, match="never reaches -60 dBFS"):
        whole = export_audio(
            Audio(hiss.astype(np.float32), SR), tmp_path / "h.wav", ExportOptions(trim_db=-60)
        )
    assert sf.info(whole).frames == hiss.shape[1]


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
def test_the_record_is_embedded_and_read_back_from_each_format(tmp_path, suffix):
    audio = tone(0.5)
    path = export_audio(audio, tmp_path / f"o{suffix}", metadata=RECORD)
    assert read_embedded(path) == RECORD
    if suffix == ".wav":  # a LIST/INFO chunk, read here without the code under test
        fields = info_fields(riff_chunks(path)[b"LIST"])
        assert json.loads(fields["ICMT"]) == RECORD and fields["ISFT"] == "soundloom"
        assert fields["INAM"] == RECORD["prompt"].encode("ascii", "replace").decode()
        np.testing.assert_allclose(sf.read(path, dtype="float32")[0].T, audio.samples, atol=1 / 32767)
    else:  # a Vorbis comment in FLAC, an ID3 comment in MP3, as libsndfile reads them
        with sf.SoundFile(path) as f:
            assert json.loads(f.comment) == RECORD
            title = f.title
        assert title == (
            RECORD["prompt"] if suffix == ".flac" else RECORD["prompt"].encode("ascii", "replace").decode()
        )
    assert read_embedded(tmp_path / "nothing.wav") is None
    plain = tmp_path / f"plain{suffix}"
    sf.write(plain, audio.samples.T, SR)
    assert read_embedded(plain) is None


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_loop_in_wav_gets_one_forward_smpl_loop_over_the_whole_take(tmp_path, rate):
    period = SR // 441 * 4  # 400 samples: the loop holds whole cycles of a 110.25 Hz tone
    audio = tone(period * 200 / SR, freq=SR / period)
    path = export_audio(audio, tmp_path / "loop.wav", ExportOptions(sample_rate=rate, bits=24), loop=True)
    frames = sf.info(path).frames
    assert abs(frames - audio.frames * rate / SR) <= 1
    period_ns, loops = smpl_loops(path)
    assert period_ns == round(1e9 / rate) and loops == [(0, 0, frames - 1)]
    data = sf.read(path)[0][:, 0]
    steps = np.abs(np.diff(data))
    assert abs(data[0] - data[-1]) <= 1.5 * steps.max()  # resampled as a cycle: the seam is no click
    plain = export_audio(audio, tmp_path / "plain.wav")
    assert b"smpl" not in riff_chunks(plain)


# ---------------------------------------------------------------- the verbs


def test_generate_writes_every_option_and_from_remakes_it_bit_identical_without_a_sidecar(
    bundle, tmp_path, capsys
):
    flags = ["--rate", "48000", "--bits", "24", "--channels", "1", "--fade-in", "20", "--lufs", "-20"]
    first = tmp_path / "take.flac"
    code, stdout, err = run_main(
        capsys, "generate", "a warm cello note", "--seconds", "1.5", "--seed", "7", "--model", bundle, *flags,
        "-o", first,
    )  # fmt: skip
    assert code == 0, err
    info = sf.info(first)
    assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_24")
    assert abs(info.frames - 1.5 * 48000) <= 1
    data = sf.read(first, dtype="float64")[0]
    assert data[0] == 0.0 and abs(lufs_of(first) + 20.0) < 0.5
    record = read_embedded(first)
    assert record == json.loads(settings_path(first).read_text())
    assert record["seed"] == 7 and record["prompt"] == "a warm cello note" and len(record["model_hash"]) == 64
    assert record["export"] == {
        "sample_rate": 48000, "bits": 24, "channels": 1, "trim_db": None,
        "fade_in_ms": 20.0, "fade_out_ms": 0.0, "lufs": -20.0,
    }  # fmt: skip

    settings_path(first).unlink()  # no sidecar: --from reads the settings inside the file
    assert read_settings(first)[0].seed == 7
    again = tmp_path / "again.flac"
    code, stdout, err = run_main(capsys, "generate", "--from", first, "-o", again)
    assert code == 0, err
    assert stdout.splitlines()[0] == "seed 7"
    assert np.array_equal(sf.read(again, dtype="int32")[0], sf.read(first, dtype="int32")[0])
    assert sf.info(again).subtype == "PCM_24" and read_embedded(again) == record

    as_mp3 = tmp_path / "again.mp3"  # a stored bit depth does not apply to MP3; flags override the rest
    code, _, err = run_main(capsys, "generate", "--from", again, "--rate", "44100", "-o", as_mp3)
    assert code == 0, err
    assert (sf.info(as_mp3).samplerate, sf.info(as_mp3).channels) == (44100, 1)
    assert read_embedded(as_mp3)["export"]["bits"] is None


def test_from_a_wav_without_a_sidecar_is_bit_identical(bundle, tmp_path, capsys):
    first = tmp_path / "take.wav"
    argv = ["generate", "rain on a tin roof", "--seconds", "1", "--seed", "3", "--model", bundle, "-o", first]
    assert run_main(capsys, *argv)[0] == 0
    settings_path(first).unlink()
    code, _, err = run_main(capsys, "generate", "--from", first, "-o", tmp_path / "again.wav")
    assert code == 0, err
    assert np.array_equal(sf.read(tmp_path / "again.wav", dtype="int16")[0], sf.read(first, dtype="int16")[0])


def test_beats_loop_writes_smpl_loop_points_and_variations_reproduce(bundle, tmp_path, capsys):
    out = tmp_path / "loop.wav"
    argv = ["beats", "a funk drum loop", "--bpm", "120", "--bars", "1", "--loop", "--model", bundle]
    code, stdout, err = run_main(capsys, *argv, "--seed", "3", "--variations", "2", "-o", out)
    assert code == 0, err
    takes = [tmp_path / "loop_1.wav", tmp_path / "loop_2.wav"]
    assert stdout.splitlines()[-2:] == [f"wrote {takes[0]} (seed 3)", f"wrote {takes[1]} (seed 4)"]
    for take, seed in zip(takes, (3, 4)):
        assert smpl_loops(take)[1] == [(0, 0, 2 * SR - 1)]  # 1 bar of 4/4 at 120 BPM: 2 s
        assert read_embedded(take)["seed"] == seed == json.loads(settings_path(take).read_text())["seed"]
    alone = tmp_path / "alone.wav"
    assert run_main(capsys, *argv, "--seed", "4", "-o", alone)[0] == 0
    assert np.array_equal(sf.read(alone, dtype="int16")[0], sf.read(takes[1], dtype="int16")[0])


def test_transform_takes_the_export_flags(bundle, tmp_path, capsys):
    source = tmp_path / "tone.wav"
    sf.write(source, tone(1.0).samples.T, SR)
    out = tmp_path / "bell.mp3"
    code, _, err = run_main(
        capsys, "transform", source, "a bell", "--seed", "1", "--rate", "48000", "--channels", "1",
        "--lufs", "-18", "--model", bundle, "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert (sf.info(out).samplerate, sf.info(out).channels) == (48000, 1)
    assert abs(lufs_of(out) + 18.0) < 0.5
    record = read_embedded(out)
    assert record["pipeline"] == "transform" and record["export"]["lufs"] == -18.0


def test_a_prompt_list_makes_one_take_per_line(bundle, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sounds for the intro\nrain on a tin roof\n\n  a deep gong  \n")
    folder = tmp_path / "takes"
    code, stdout, err = run_main(
        capsys, "generate", "--prompts", prompts, "--seconds", "0.5", "--seed", "9", "--variations", "2",
        "--format", "flac", "--model", bundle, "-o", folder,
    )  # fmt: skip
    assert code == 0, err
    names = ["001-rain-on-a-tin-roof_1", "001-rain-on-a-tin-roof_2", "002-a-deep-gong_1", "002-a-deep-gong_2"]
    paths = [folder / f"{n}.flac" for n in names]
    assert stdout.splitlines() == [
        f"[1/2] wrote {paths[0]} (seed 9)", f"[1/2] wrote {paths[1]} (seed 10)",
        f"[2/2] wrote {paths[2]} (seed 9)", f"[2/2] wrote {paths[3]} (seed 10)",
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in paths] + [f"{p.name}.json" for p in paths]
    )
    for path, prompt in zip(paths, ["rain on a tin roof"] * 2 + ["a deep gong"] * 2):
        assert read_embedded(path)["prompt"] == prompt and sf.info(path).frames == round(0.5 * SR)

    lines = tmp_path / "prompts.jsonl"
    lines.write_text(
        json.dumps({"prompt": "a snare hit", "name": "snare", "seconds": 0.25, "seed": 4, "category": "x"})
        + "\n"
        + json.dumps({"prompt": "a kick drum", "steps": 2})
        + "\n"
    )
    code, stdout, err = run_main(capsys, "generate", "--prompts", lines, "--model", bundle, "-o", folder)
    assert code == 0, err
    snare, kick = folder / "snare.wav", folder / "002-a-kick-drum.wav"
    assert sf.info(snare).frames == round(0.25 * SR) and read_embedded(snare)["seed"] == 4
    assert sf.info(kick).frames == 10 * SR and read_embedded(kick)["steps"] == 2


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("p.txt", "rain\n\x01 a beep\n", "Line 2 of"),
        ("p.txt", "# only a comment\n\n", "holds no prompts"),
        ("p.txt", "rain\n" + "x" * 2001 + "\n", "Line 2 of '{path}': the prompt is 2001 characters"),
        ("p.jsonl", '{"prompt": "rain"}\n{"prompt": "fire"\n', "Line 2 of '{path}' is not valid JSON"),
        ("p.jsonl", '{"prompt": "rain"}\n{"text": "fire"}\n', "Line 2 of '{path}' has no \"prompt\""),
        ("p.jsonl", '{"prompt": "rain", "seconds": 25}\n', "Line 1 of '{path}': seconds must be above 0"),
        ("p.jsonl", '{"prompt": "rain", "seconds": "ten"}\n', "not a number"),
        ("p.jsonl", '{"prompt": "rain", "seed": -1}\n', "Line 1 of '{path}': the seed must be"),
        ("p.jsonl", '{"prompt": "a", "name": "x"}\n{"prompt": "b", "name": "x"}\n', "Lines 1 and 2"),
        ("p.jsonl", '{"prompt": "a", "name": "../up"}\n', "not a plain file name"),
        ("p.csv", "rain\n", "give a .txt file"),
    ],
)
def test_bad_lines_are_refused_in_one_sentence_before_anything_is_written(
    bundle, tmp_path, capsys, name, text, needle
):
    prompts = tmp_path / name
    prompts.write_text(text)
    folder = tmp_path / "takes"
    code, stdout, err = run_main(capsys, "generate", "--prompts", prompts, "--model", bundle, "-o", folder)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle.format(path=prompts) in lines[0] and stdout == ""
    assert not folder.exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "rain", "--rate", "22050"], "sample rate must be 44100 or 48000 Hz, not 22050"),
        (["generate", "rain", "--rate", "fast"], "--rate: the value must be a whole number"),
        (["generate", "rain", "--bits", "8"], "bit depth must be 16 or 24"),
        (["generate", "rain", "--bits", "24", "-o", "{out}/o.mp3"], "MP3 files have no bit depth"),
        (["generate", "rain", "--channels", "3"], "1 mono, 2 stereo"),
        (["generate", "rain", "--trim-db", "5"], "trim threshold must be from -120 to -10 dBFS"),
        (["generate", "rain", "--fade-in", "-1"], "fade-in must be from 0 to 60000 ms"),
        (["generate", "rain", "--fade-out", "70000"], "fade-out must be from 0 to 60000 ms"),
        (["generate", "rain", "--lufs", "3"], "loudness target must be from -60 to 0 LUFS"),
        (["generate", "rain", "--lufs", "nan"], "loudness target"),
        (["generate", "rain", "--format", "flac"], "--format is for --prompts batches"),
        (["generate", "rain", "--prompts", "{out}/p.txt"], "not both"),
        (["generate", "--prompts", "{tmp}/p.txt", "-o", "{out}/x.wav"], "names a folder"),
        (["generate", "rain", "--variations", "17"], "between 1 and 16"),
        (["beats", "drums", "--bpm", "120", "--bars", "1", "--loop", "--fade-out", "10"], "break its seam"),
        (["beats", "drums", "--bpm", "120", "--bars", "1", "--loop", "--trim"], "break its seam"),
        (["transform", "{tmp}/tone.wav", "a bell", "--lufs", "-80"], "loudness target"),
        (["repaint", "{tmp}/tone.wav", "a bell", "--start", "0", "--end", "1", "--variations", "20"], "16"),
    ],
)
def test_bad_export_values_are_refused_in_one_sentence_and_nothing_is_written(
    bundle, tmp_path, capsys, argv, needle
):
    sf.write(tmp_path / "tone.wav", tone(1.0).samples.T, SR)
    (tmp_path / "p.txt").write_text("rain\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(tmp=tmp_path, out=out) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(out / "o.wav")]
    code, stdout, err = run_main(capsys, *argv, "--model", bundle)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0] and "Traceback" not in err and stdout == ""
    assert list(out.iterdir()) == []


def test_export_options_refuse_bad_values_from_python_and_from_records():
    with pytest.raises(BadInput, match="sample rate must be 44100 or 48000 Hz, not 96000"):
        ExportOptions(sample_rate=96000)
    with pytest.raises(BadInput, match="must be 44100 or 48000"):
        ExportOptions(sample_rate=44100.0)
    with pytest.raises(BadInput, match="are not soundloom export options"):
        ExportOptions.from_record({"sample_rate": 48000, "dither": True})
    assert ExportOptions.from_record(ExportOptions(lufs=-14.0).to_record()) == ExportOptions(lufs=-14.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # defaults never warn
        ExportOptions().check("x.mp3")
