"""The generator's inference options (pipelines/inference.py): int8, fp32, threads, device refusals and the
torch.compile fallback on a tiny generator bundle, the CLI's flags, and `bench generate --options`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generator import PROMPT, tiny_generator_bundle

import app.cli as cli
from pipelines.errors import BadInput
from pipelines.generator import load_generator
from pipelines.inference import BF16_ENV, InferenceOptions, cpu_flags, native_bf16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_generator_bundle(tmp_path_factory.mktemp("generator"))


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((other - reference) ** 2)))


def test_int8_quantises_the_block_linears_and_stays_close_to_float32(bundle):
    fp32 = load_generator(bundle, bf16=False)
    assert fp32._sampling_dit is fp32.dit  # nothing to change: the DiT itself samples
    int8 = load_generator(bundle, int8=True, bf16=True)
    assert int8.options.label == "int8" and int8.codec.bf16  # bf16 still sets the codec; the DiT runs float32
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    quantised = {n for n, m in int8._sampling_dit.named_modules() if isinstance(m, Int8Linear)}
    assert quantised == {f"blocks.0.{name}" for name in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")}
    assert isinstance(int8.dit.blocks[0].attn.qkv, torch.nn.Linear)  # the loaded DiT is left as it was
    assert int8._sampling_dit.x_embedder.weight.dtype == torch.float32

    reference = fp32.generate(PROMPT, seconds=1.0, seed=4).samples
    a = int8.generate(PROMPT, seconds=1.0, seed=4).samples
    assert np.isfinite(a).all() and np.array_equal(a, int8.generate(PROMPT, seconds=1.0, seed=4).samples)
    assert not np.array_equal(a, reference)  # it did change the arithmetic ...
    assert snr_db(reference, a) > 20  # ... by rounding, not by breaking the model
    bf16 = load_generator(bundle, bf16=True).generate(PROMPT, seconds=1.0, seed=4).samples
    assert snr_db(reference, bf16) > 20


def test_threads_set_torchs_thread_count(bundle, keep_threads):
    target = 1 if keep_threads != 1 else 2
    gen = load_generator(bundle, threads=target)
    assert torch.get_num_threads() == target and gen.options.threads == target
    precision = "bf16" if native_bf16() else "fp32"
    assert gen.options.label == f"{precision}+{target} thread" + "s" * (target != 1)
    assert np.isfinite(gen.generate(PROMPT, seconds=0.5, seed=1).samples).all()


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"threads": 0}, "threads must be a whole number of at least 1"),
        ({"threads": 1.5}, "threads must be a whole number"),
        ({"int8": "yes"}, "int8 must be True or False"),
    ],
)
def test_bad_options_are_refused_in_one_sentence_before_loading(tmp_path, options, needle):
    with pytest.raises(BadInput, match=needle) as caught:
        load_generator(tmp_path / "no-such-bundle", **options)  # refused before the bundle is looked for
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_an_absent_device_is_refused_and_int8_is_cpu_only(bundle, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA GPU .* use --device cpu"):
            load_generator(bundle, device="cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(BadInput, match="no Apple MPS device"):
            load_generator(bundle, device="mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BadInput, match="int8 runs on the CPU only"):
        InferenceOptions(int8=True, device="cuda").check()
    assert InferenceOptions(device="cpu").check().label == ("bf16" if native_bf16() else "fp32")


@pytest.mark.parametrize("forced, expected", [("1", True), ("0", False), ("off", False), ("yes", True)])
def test_the_default_precision_follows_the_cpu_and_the_override(bundle, monkeypatch, forced, expected):
    monkeypatch.setenv(BF16_ENV, forced)
    options = InferenceOptions().check()
    assert options.bf16 is expected and options.changed == {}  # the decided default is no change
    gen = load_generator(bundle)
    assert gen.bf16 is expected and gen.codec.bf16 is expected
    dtype = gen._sampling_dit.x_embedder.weight.dtype
    assert dtype == (torch.bfloat16 if expected else torch.float32)
    assert InferenceOptions(bf16=not expected).check().changed == {"bf16": not expected}


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv(BF16_ENV, raising=False)
    flags = cpu_flags()
    assert native_bf16("cpu") == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert native_bf16("mps") is False
    for found, expected in ((frozenset({"avx2", "fma"}), False), (frozenset({"avx2", "avx512_bf16"}), True),
                            (frozenset({"amx_bf16", "amx_tile"}), True), (frozenset(), False)):  # fmt: skip
        monkeypatch.setattr("pipelines.inference.cpu_flags", lambda found=found: found)
        assert native_bf16("cpu") is expected


def test_compile_falls_back_uncompiled_with_one_warning(bundle, monkeypatch):
    expected = load_generator(bundle).generate(PROMPT, seconds=1.0, seed=2).samples

    def broken(*args, **kwargs):
        raise RuntimeError("inductor needs a C++ compiler")

    monkeypatch.setattr(
        torch, "compile", lambda model, **kwargs: broken
    )  # fails at the first call, as inductor does
    gen = load_generator(bundle, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = gen.generate(PROMPT, seconds=1.0, seed=2).samples
        second = gen.generate(PROMPT, seconds=1.0, seed=2).samples
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "torch.compile could not compile the DiT" in messages[0]
    assert "C++ compiler" in messages[0] and "runs uncompiled" in messages[0]
    assert np.array_equal(first, expected) and np.array_equal(second, expected)


def test_an_error_of_the_inputs_is_not_blamed_on_compile(bundle, monkeypatch):
    gen = load_generator(bundle)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    from pipelines.inference import CompiledOrEager

    compiled = CompiledOrEager(gen._sampling_dit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AssertionError, match="latent channels"):
            compiled(torch.zeros(1, 3, 4), torch.ones(1))  # the wrong channel count: the model's own error
    assert not caught and compiled.compiled is not None


@pytest.mark.slow
def test_compile_compiles_and_samples_the_same_sound(bundle):
    """A real torch.compile (inductor, C++ on CPU): tens of seconds, hence slow."""
    eager = load_generator(bundle).generate(PROMPT, seconds=1.0, seed=2).samples
    gen = load_generator(bundle, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback would warn
        compiled = gen.generate(PROMPT, seconds=1.0, seed=2).samples
    assert gen._sampling_dit.compiled is not None and gen._sampling_dit.failure is None
    assert snr_db(eager, compiled) > 30


# ---------------------------------------------------------------- the CLI and the bench


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_generate_takes_the_inference_flags(bundle, tmp_path, capsys, keep_threads):
    out = tmp_path / "int8.wav"
    code, _, err = run_main(
        capsys, "generate", PROMPT, "--model", bundle, "--seconds", "0.5", "--seed", "3", "--int8",
        "--threads", "1", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert out.is_file() and torch.get_num_threads() == 1
    expected = load_generator(bundle, int8=True).generate(PROMPT, seconds=0.5, seed=3).samples
    import soundfile as sf

    written, _ = sf.read(out, always_2d=True)
    assert np.allclose(written.T, expected, atol=2 / 32768)  # the int8 take, written in 16 bits
    for argv, needle in (
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "tpu"], "invalid choice"),
        (["--threads", "0"], "--threads"),
    ):
        if argv[1] == "cuda" and torch.cuda.is_available():
            continue
        code, _, err = run_main(
            capsys, "generate", PROMPT, "--model", bundle, "-o", tmp_path / "x.wav", *argv
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x.wav").exists()


def test_bench_generate_options_refusals(capsys, tmp_path):
    code, _, err = run_main(capsys, "bench", "generate", "--options", "--int8")
    assert code == 2 and "leave out --int8" in err
    code, _, err = run_main(capsys, "bench", "codec", "--compile")
    assert code == 2 and "--compile is for `soundloom bench generate`" in err


def test_bench_options_times_every_option_on_the_same_prompts(bundle, tmp_path, capsys, keep_threads):
    from training.bench_generate import run_options_bench

    other = {"fp32": {"bf16": False}} if native_bf16() else {"bf16": {"bf16": True}}  # not the default
    variants = {"default": {}, "int8": {"int8": True}, **other, "1 thread": {"threads": 1}}
    report = run_options_bench(
        bundle, tmp_path / "options.json", prompts=3, seconds=0.5, warmup=1, variants=variants
    )
    saved = json.loads((tmp_path / "options.json").read_text())
    assert saved["options"] == report["options"] and list(saved["options"]) == list(variants)
    assert torch.get_num_threads() == keep_threads  # the 1-thread option did not leak
    runs = saved["runs"]
    assert len(runs) == 3 * len(variants)
    for name in variants:  # every option saw the same three prompts
        assert sorted(r["prompt"] for r in runs if r["option"] == name) == sorted(
            r["prompt"] for r in runs if r["option"] == "default"
        )
    rows = saved["options"]
    assert rows["default"]["snr_db_vs_default"] is None and rows["default"]["speedup_total"] == 1.0
    assert rows["1 thread"]["snr_db_vs_default"] is None or rows["1 thread"]["snr_db_vs_default"] > 40
    assert 20 < rows["int8"]["snr_db_vs_default"] < 200 and rows["int8"]["label"] == "int8"
    (name,) = other  # a different precision: close, not the same
    assert 20 < rows[name]["snr_db_vs_default"] < 200 and rows[name]["label"] == name
    assert all(row["median"]["total_s"] > 0 and row["first_call_s"] > 0 for row in rows.values())
    assert all(row["compile_failed"] is None for row in rows.values())
    out = capsys.readouterr().out
    assert "1 thread" in out and "speedup" in out and "SNR" in out
