"""The CLI's boundary: bad arguments and files exit 2 with one line on stderr and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import app.cli as cli

REPO = Path(__file__).resolve().parent.parent


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def text_wav(tmp_path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all\n")
    return path


# ---------------------------------------------------------------- argparse-level errors (exit 2, one line)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required: VERB"),
        (["compose"], "invalid choice: 'compose'"),
        (["codec"], "required: ACTION"),
        (["dataset", "build"], "required: --out"),
        (["dataset", "build", "--out", "d", "--hours", "0"], "--hours: must be above 0"),
        (["dataset", "build", "--out", "d", "--hours", "-3"], "--hours"),
        (["dataset", "build", "--out", "d", "--hours", "1001"], "at most 1000"),
        (["dataset", "build", "--out", "d", "--hours", "lots"], "must be a number, not 'lots'"),
        (["dataset", "build", "--out", "d", "--hours", "nan"], "--hours"),
        (["dataset", "build", "--out", "d", "--seed", "-1"], "seed must be 0 or more"),
        (["dataset", "build", "--out", "d", "--seed", "1.5"], "whole number"),
        (["train", "--recipe", "codec", "--data", "d", "--out", "r", "--steps", "0"], "--steps"),
        (["train", "--recipe", "codec", "--data", "d", "--out", "r", "--steps", "-5"], "--steps"),
        (["train", "--data", "d", "--out", "r"], "required: --recipe"),
        (["bench", "everything"], "invalid choice"),
        (["transform", "in.wav", "warmer", "--strength", "2", "-o", "o.wav"], "--strength"),
        (["studio", "--port", "0"], "port"),
        (["beats", "drums", "--bpm", "5", "--bars", "4", "-o", "o.wav"], "--bpm"),
        (["codec", "roundtrip", "in.wav"], "required: -o/--output"),
        (["codec", "roundtrip", "in.wav", "-o", "o.wav", "--max-seconds", "0"], "--max-seconds"),
    ],
)
def test_usage_errors(capsys, argv, needle):
    code, out, err = run_main(capsys, *argv)
    line = assert_one_line_error(code, err)
    assert needle in line
    assert "--help" in line
    assert out == ""


# ---------------------------------------------------------------- boundary checks on files and folders


def test_codec_roundtrip_missing_input(capsys, tmp_path):
    code, _, err = run_main(capsys, "codec", "roundtrip", tmp_path / "missing.wav", "-o", tmp_path / "o.wav")
    assert "does not exist" in assert_one_line_error(code, err)


def test_codec_roundtrip_input_not_audio(capsys, tmp_path, text_wav):
    code, _, err = run_main(capsys, "codec", "roundtrip", text_wav, "-o", tmp_path / "o.wav")
    assert "Could not read" in assert_one_line_error(code, err)


def test_codec_roundtrip_input_is_folder(capsys, tmp_path):
    code, _, err = run_main(capsys, "codec", "roundtrip", tmp_path, "-o", tmp_path / "o.wav")
    assert "is a folder" in assert_one_line_error(code, err)


@pytest.mark.parametrize("name", ["o.xyz", "o.aiff", "o"])
def test_codec_roundtrip_unsupported_output(capsys, sine_wav, tmp_path, name):
    code, _, err = run_main(capsys, "codec", "roundtrip", sine_wav, "-o", tmp_path / name)
    assert "not supported" in assert_one_line_error(code, err)


def test_codec_roundtrip_output_is_folder(capsys, sine_wav, tmp_path):
    (tmp_path / "out.wav").mkdir()
    code, _, err = run_main(capsys, "codec", "roundtrip", sine_wav, "-o", tmp_path / "out.wav")
    assert "is a folder" in assert_one_line_error(code, err)


def test_codec_roundtrip_output_folder_missing(capsys, sine_wav, tmp_path):
    code, _, err = run_main(capsys, "codec", "roundtrip", sine_wav, "-o", tmp_path / "nowhere" / "o.wav")
    assert "does not exist" in assert_one_line_error(code, err)


def test_codec_roundtrip_zero_length_input(capsys, write_audio, tmp_path):
    path = write_audio("zero.wav", np.zeros((2, 0), np.float32))
    code, _, err = run_main(capsys, "codec", "roundtrip", path, "-o", tmp_path / "o.wav")
    assert "no audio samples" in assert_one_line_error(code, err)


def test_codec_roundtrip_nan_input(capsys, write_audio, signals, tmp_path):
    x = signals.sine(seconds=0.05)
    x[0, 3] = np.nan
    path = write_audio("nan.wav", x, subtype="FLOAT")
    code, _, err = run_main(capsys, "codec", "roundtrip", path, "-o", tmp_path / "o.wav")
    assert "NaN" in assert_one_line_error(code, err)


def test_codec_roundtrip_too_long_input(capsys, write_audio, signals, tmp_path):
    path = write_audio("long.wav", signals.noise(seconds=1.0, sample_rate=8000), sample_rate=8000)
    code, _, err = run_main(
        capsys, "codec", "roundtrip", path, "-o", tmp_path / "o.wav", "--max-seconds", "0.5"
    )
    assert "limit" in assert_one_line_error(code, err)


def test_dataset_from_folder_missing(capsys, tmp_path):
    code, _, err = run_main(capsys, "dataset", "from-folder", tmp_path / "nope", "--out", tmp_path / "c")
    assert "does not exist" in assert_one_line_error(code, err)


def test_dataset_from_folder_given_a_file(capsys, sine_wav, tmp_path):
    code, _, err = run_main(capsys, "dataset", "from-folder", sine_wav, "--out", tmp_path / "c")
    assert "not a folder" in assert_one_line_error(code, err)


def test_dataset_build_out_is_a_file(capsys, sine_wav):
    code, _, err = run_main(capsys, "dataset", "build", "--out", sine_wav, "--hours", "0.01")
    assert "needs a folder" in assert_one_line_error(code, err)


def test_train_missing_data(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "train", "--recipe", "codec", "--data", tmp_path / "nope", "--out", tmp_path / "r"
    )
    assert "--data does not exist" in assert_one_line_error(code, err)


def test_train_missing_config(capsys, tmp_path):
    argv = ["train", "--recipe", "codec", "--data", tmp_path, "--out", tmp_path / "r"]
    code, _, err = run_main(capsys, *argv, "--config", tmp_path / "nope.json")
    assert "--config does not exist" in assert_one_line_error(code, err)


def test_train_missing_init_bundle(capsys, tmp_path):
    argv = ["train", "--recipe", "codec", "--data", tmp_path, "--out", tmp_path / "r"]
    code, _, err = run_main(capsys, *argv, "--init", tmp_path / "nope")
    assert "--init does not exist" in assert_one_line_error(code, err)


def test_bundle_export_missing_run(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "bundle", "export", "--run", tmp_path / "nope", "--data", tmp_path, "--out", tmp_path / "b"
    )
    assert "--run does not exist" in assert_one_line_error(code, err)


def test_bundle_quantize(capsys, tmp_path):
    import torch

    from pipelines.bundle import save_bundle

    code, _, err = run_main(capsys, "bundle", "quantize", tmp_path / "nope", "--out", tmp_path / "q")
    assert "does not exist" in assert_one_line_error(code, err)
    code, _, err = run_main(capsys, "bundle", "quantize", tmp_path, "--out", tmp_path / "q")
    assert "model.json is missing" in assert_one_line_error(code, err) and not (tmp_path / "q").exists()
    full = save_bundle(tmp_path / "full", {}, {"dit": {"w": torch.randn(64, 64), "b": torch.zeros(64)}})
    code, out, err = run_main(capsys, "bundle", "quantize", full, "--out", tmp_path / "q")
    assert code == 0 and "int8 bundle written to" in out and "98.5% of the values int8" in out, err
    code, _, err = run_main(capsys, "bundle", "quantize", tmp_path / "q", "--out", tmp_path / "q2")
    assert "already stored as int8" in assert_one_line_error(code, err)


def test_bench_json_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_main(capsys, "bench", "codec", "--json", tmp_path / "file" / "b.json")
    assert "Cannot create the folder" in assert_one_line_error(code, err)


def test_train_unknown_recipe(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "train", "--recipe", "nosuch", "--data", tmp_path, "--out", tmp_path / "r"
    )
    from training.recipes import RECIPES

    names = ", ".join(sorted(RECIPES))
    assert f"There is no recipe 'nosuch'; choose one of: {names}." in assert_one_line_error(code, err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("lr=abc", "lr must be a number, not 'abc'"),
        ("steps=many", "steps must be a whole number"),
        ("betas=5", "betas must be a list of two numbers"),
        ("recipe..dim=4", "is not KEY=VALUE"),
    ],
)
def test_train_bad_override(capsys, tmp_path, override, needle):
    argv = ["train", "--recipe", "toy", "--data", tmp_path, "--out", tmp_path / "r", "--set", override]
    code, _, err = run_main(capsys, *argv)
    assert needle in assert_one_line_error(code, err)


def test_train_help_lists_the_registered_recipes(capsys, monkeypatch):
    from training.recipes import RECIPES

    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap hyphenated names such as random-threshold
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and f"one of {', '.join(sorted(RECIPES))}" in " ".join(out.split())


# ---------------------------------------------------------------- handlers reach the other modules (faked here)


def fake_module(monkeypatch, name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)


def test_codec_roundtrip_writes_output_and_warns_once(capsys, monkeypatch, write_audio, signals, tmp_path):
    class IdentityCodec:
        def roundtrip(self, audio):
            return audio

    models = []
    fake_module(
        monkeypatch, "pipelines.codec", load_codec=lambda path: models.append(path) or IdentityCodec()
    )
    path = write_audio("octo.wav", signals.noise(seconds=0.1, channels=8))
    code, out, err = run_main(
        capsys, "codec", "roundtrip", path, "-o", tmp_path / "back.flac", "--model", "m"
    )
    assert code == 0, err
    assert err.strip() == "warning: 'octo.wav' has 8 channels; it was downmixed to stereo."
    assert out.strip() == f"wrote {tmp_path / 'back.flac'}" and models == ["m"]
    assert (tmp_path / "back.flac").is_file()


def test_dataset_build_passes_arguments(capsys, monkeypatch, tmp_path):
    calls = []

    def build_corpus(out, hours=10.0, seed=0, *, progress=True, on_clip=None, categories=None):
        calls.append((out, hours, seed, on_clip, categories))
        return out

    fake_module(monkeypatch, "training.corpus", build_corpus=build_corpus)
    code, out, err = run_main(
        capsys, "dataset", "build", "--out", tmp_path / "c", "--hours", "0.5", "--seed", "3"
    )
    assert code == 0, err
    assert calls == [(tmp_path / "c", 0.5, 3, None, None)]  # no --latents: nothing streams
    run_main(capsys, "dataset", "build", "--out", tmp_path / "n", "--categories", "note,drums")
    assert calls[-1][-1] == ["note", "drums"]


def test_bench_json_creates_its_folder(capsys, monkeypatch, tmp_path):
    calls = []
    fake_module(monkeypatch, "training.bench_codec", run=lambda json_out, **kw: calls.append(json_out))
    target = tmp_path / ".cache" / "bench" / "codec.json"  # a fresh clone has no .cache/
    code, _, err = run_main(capsys, "bench", "codec", "--json", target)
    assert code == 0, err
    assert calls == [target] and target.parent.is_dir()


# ---------------------------------------------------------------- exit codes, warnings, help


def test_internal_error_is_one_line_exit_1(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something\ninside broke")

    monkeypatch.setattr(cli, "_doctor", broken)
    monkeypatch.delenv("SOUNDLOOM_DEBUG", raising=False)
    code, _, err = run_main(capsys, "doctor")
    line = assert_one_line_error(code, err, expected_code=1)
    assert "RuntimeError: something inside broke" in line and "SOUNDLOOM_DEBUG=1" in line

    monkeypatch.setenv("SOUNDLOOM_DEBUG", "1")
    code, _, err = run_main(capsys, "doctor")
    assert code == 1 and "Traceback" in err


def test_warnings_print_as_one_line(capsys, monkeypatch):
    def chatty(args):
        warnings.warn("'x.wav' has 8 channels; it was downmixed to stereo.", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_doctor", chatty)
    code, _, err = run_main(capsys, "doctor")
    assert code == 0
    assert err.strip() == "warning: 'x.wav' has 8 channels; it was downmixed to stereo."


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["codec", "roundtrip", "--help"],
        ["dataset", "build", "--help"],
        ["train", "--help"],
        ["--version"],
    ],
)
def test_help_exits_0(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and out and err == ""


def test_doctor(capsys):
    code, out, _ = run_main(capsys, "doctor")
    assert code == 0
    for item in (
        "python:",
        "torch:",
        "native bf16:",
        "TimGM6mb.sf2:",
        "FluidR3_GM.sf2:",
        "espeak-ng:",
        "free disk:",
    ):
        assert item in out


# ---------------------------------------------------------------- through a real process


def run_module(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOUNDLOOM_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "app", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_process_usage_error():
    result = run_module("dataset", "build", "--out", "x", "--hours", "-2")
    assert_one_line_error(result.returncode, result.stderr)
    assert result.stdout == ""


def test_process_missing_input(tmp_path):
    result = run_module("codec", "roundtrip", tmp_path / "missing.wav", "-o", tmp_path / "o.wav")
    assert "does not exist" in assert_one_line_error(result.returncode, result.stderr)


def test_process_help_is_light_and_offline():
    probe = (
        "import os, sys, app.cli as c; c.build_parser().format_help(); "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)), os.environ['HF_HUB_OFFLINE'], "
        "os.environ['GRADIO_ANALYTICS_ENABLED'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.split() == ["[]", "1", "False"], result.stderr
    result = run_module("--help")
    assert result.returncode == 0 and "codec" in result.stdout and "doctor" in result.stdout
