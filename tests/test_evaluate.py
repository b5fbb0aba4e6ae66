"""`soundloom eval`: the core graded with fake generators (synthesized tones, clicks and bursts) and a
fake judge, the reference cache, and the CLI's bad input (exit 2, one line) plus one run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import app.cli as cli
from pipelines.audio import Audio
from pipelines.bundle import save_bundle
from pipelines.errors import BadInput
from pipelines.inference import native_bf16
from training import eval_metrics as em
from training import evaluate as ev

SR = 44100
PROMPTS = [
    {"id": "p1", "prompt": "a sine on A3", "pitch_hz": 220.0, "kind": "sustained", "category": "note", "seconds": 0.5},
    {"id": "p2", "prompt": "noise clicks at 120 BPM", "bpm": 120.0, "category": "drums", "seconds": 3.0},
    {"id": "p3", "prompt": "a burst of noise", "kind": "one-shot", "category": "fx", "seconds": 0.5},
]  # fmt: skip
PROMPTS = [{key: p.get(key) for key in em.PROMPT_FIELDS} for p in PROMPTS]  # as read_prompts gives them
BY_TEXT = {p["prompt"]: p for p in PROMPTS}


def stereo(x: np.ndarray) -> Audio:
    return Audio(np.stack([x, x]).astype(np.float32), SR)


def synthesize(prompt: dict, seconds: float, rng: np.random.Generator, *, wrong: bool = False) -> Audio:
    """What the prompt asks for (a sine at its pitch, bursts at its tempo, noise of its kind), or with
    `wrong`: three semitones sharp, 10% fast, and the other kind."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    amplitude = rng.uniform(0.15, 0.35)
    kind = prompt.get("kind")
    if wrong and kind is not None:
        kind = "one-shot" if kind == "sustained" else "sustained"
    if prompt.get("bpm"):
        bpm = prompt["bpm"] * (1.1 if wrong else 1.0)
        x = np.zeros(n)
        burst = np.exp(-np.arange(2000) / 300.0) * rng.standard_normal(2000)
        burst *= 2.0 / np.abs(burst).max()  # peaks of the louder bursts at 2 * amplitude
        for k in range(int(seconds * bpm / 60.0) + 1):
            start = int(round(k * 60.0 / bpm * SR))
            if start + burst.size < n:
                x[start : start + burst.size] += burst * (1.0 if k % 4 == 0 else 0.5)
        return stereo(amplitude * x)
    if prompt.get("pitch_hz"):
        freq = prompt["pitch_hz"] * (2 ** (3 / 12) if wrong else 1.0)
        x = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        x += rng.uniform(0.0, 0.5) * np.sin(2 * np.pi * 2 * freq * t)  # a varying second harmonic
    else:
        x = np.convolve(rng.standard_normal(n), np.ones(int(rng.integers(1, 12))), mode="same")
        x /= np.abs(x).max()
    envelope = np.exp(-t / 0.04) if kind == "one-shot" else np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return stereo(amplitude * x * envelope)


def good_fake(text: str, seconds: float, seed: int) -> Audio:
    return synthesize(BY_TEXT[text], seconds, np.random.default_rng(seed))


def bad_fake(text: str, seconds: float, seed: int) -> Audio:
    """Wrong pitch, tempo and shape, and the same sound whatever the seed (a collapsed generator)."""
    return synthesize(BY_TEXT[text], seconds, np.random.default_rng(0), wrong=True)


class FakeJudge:
    """The judge embedder's interface: a fixed random projection of log band energies (mean and std over
    frames); a prompt's text embedding is the embedding of what good_fake makes of it."""

    dim = 16

    def __init__(self):
        self.projection = np.random.default_rng(7).standard_normal((48, self.dim))

    def embed_audio(self, audios: list[Audio]) -> torch.Tensor:
        rows = []
        for audio in audios:
            x = audio.samples.mean(axis=0)
            frames = x[: len(x) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
            power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
            edges = np.unique(np.geomspace(1, power.shape[1], 25).astype(int))
            bands = np.log10(
                np.stack([power[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:])]) + 1e-8
            )
            features = np.zeros(48)
            features[: 2 * len(bands)] = np.concatenate([bands.mean(axis=1), bands.std(axis=1)])
            rows.append(features @ self.projection)
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=1)

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """What good_fake makes of a known prompt; any other caption embeds as a burst of noise."""
        other = PROMPTS[2]["prompt"]
        return self.embed_audio([good_fake(p if p in BY_TEXT else other, 0.5, 12345) for p in prompts])


def reference_records(copies: int = 2) -> list[dict]:
    """Manifest-like records of good_fake clips (seeds the evaluation never uses) for each prompt."""
    out = []
    for p in PROMPTS:
        for k in range(copies):
            params = {"category": p["category"], "f0_hz": p["pitch_hz"], "bpm": p["bpm"]}
            out.append(
                {
                    "id": f"{p['id']}-{k}",
                    "captions": [p["prompt"]],
                    "params": params,
                    "_prompt": p,
                    "_seed": 1000 + k,
                }
            )
    return out


def load_reference_clip(record: dict) -> Audio:
    return synthesize(record["_prompt"], record["_prompt"]["seconds"], np.random.default_rng(record["_seed"]))


@pytest.fixture(scope="module")
def graded():
    judge = FakeJudge()
    reference = ev.measure_reference(reference_records(), load_reference_clip, judge)
    # "training clips": what the collapsed bad fake always returns, so it copies its training set
    train = judge.embed_audio([bad_fake(p["prompt"], p["seconds"], 0) for p in PROMPTS]).numpy()
    calls = []

    def counting_good(text, seconds, seed):
        calls.append((text, seconds, seed))
        return good_fake(text, seconds, seed)

    kwargs = dict(samples=5, judge=judge, train_embeddings=train)
    good = ev.evaluate(counting_good, PROMPTS, reference, **kwargs)
    bad = ev.evaluate(bad_fake, PROMPTS, reference, **kwargs)
    return good, bad, reference, calls


def test_a_good_fake_passes_the_dsp_checks_and_a_wrong_one_fails_them(graded):
    good, bad, _, _ = graded
    g, b = good["headline"], bad["headline"]
    assert g["pitch_accuracy"] == 1.0 and g["pitch_accuracy_prompts"] == 1
    assert g["tempo_accuracy"] == 1.0 and g["tempo_accuracy_prompts"] == 1
    assert g["fill_rate"] == 1.0 and g["fill_rate_prompts"] == 2
    assert b["pitch_accuracy"] == 0.0 and b["tempo_accuracy"] == 0.0 and b["fill_rate"] == 0.0
    for h in (g, b):
        assert h["clipping_rate"] == 0.0 and h["loudness_sane_rate"] == 1.0
        assert h["generations"] == 15 and h["prompts"] == 3
    wrong = [r["pitch_measured_hz"] for r in bad["generations"] if r["pitch_ok"] is not None]
    assert all(abs(em.cents_off(hz, 220.0) - 300) < 50 for hz in wrong)  # it heard the sharp note


def test_judge_and_librosa_figures_rank_the_fakes(graded):
    good, bad, _, _ = graded
    g, b = good["headline"], bad["headline"]
    assert g["fd_librosa"] < b["fd_librosa"] and g["fd_judge"] < b["fd_judge"]
    assert g["adherence"] > b["adherence"] and -1.0 <= b["adherence"] <= g["adherence"] <= 1.0
    assert b["ccds"] < 1e-6 < g["ccds"]  # the collapsed fake makes one sound per prompt
    assert b["memorisation_share"] == 1.0 and g["memorisation_share"] < 1.0


def test_breakdown_by_category_and_records(graded):
    good, _, _, calls = graded
    assert set(good["by_category"]) == {"note", "drums", "fx"}
    note = good["by_category"]["note"]
    assert note["prompts"] == 1 and note["pitch_accuracy"] == 1.0 and note["tempo_accuracy"] is None
    assert note["reference_clips"] == 2 and note["fd_librosa"] is not None
    assert good["by_category"]["drums"]["tempo_accuracy"] == 1.0
    records = good["generations"]
    assert len(records) == 15 and [r["sample"] for r in records[:5]] == [0, 1, 2, 3, 4]
    assert all(r["adherence"] is not None and r["seconds"] == r["seconds_asked"] for r in records)
    # text only: generate_fn sees each prompt's text and length, with a distinct seed per sample
    assert [c[:2] for c in calls[:5]] == [("a sine on A3", 0.5)] * 5
    assert len({c[2] for c in calls}) == 15
    assert [c[2] for c in calls] == [r["seed"] for r in records]


def test_seeds_follow_the_prompt_not_its_position():
    subset = ev.evaluate(good_fake, PROMPTS[2:], _tiny_reference(), samples=5)
    whole = [ev.generation_seed(0, PROMPTS[2], k) for k in range(5)]
    assert [r["seed"] for r in subset["generations"]] == whole
    assert ev.generation_seed(1, PROMPTS[2], 0) != whole[0]


def _tiny_reference() -> dict:
    fx = [r for r in reference_records() if r["params"]["category"] == "fx"]
    return ev.measure_reference(fx, load_reference_clip)


def test_without_a_judge_the_judge_figures_are_none():
    report = ev.evaluate(good_fake, PROMPTS[2:], _tiny_reference(), samples=5)
    head = report["headline"]
    assert head["fd_judge"] is head["adherence"] is head["ccds"] is head["memorisation_share"] is None
    assert head["fd_librosa"] is not None and head["fill_rate"] == 1.0


def test_a_category_the_split_lacks_gets_no_category_reference():
    chord = [dict(PROMPTS[2], category="chord")]  # the tiny reference holds fx clips only
    report = ev.evaluate(good_fake, chord, _tiny_reference(), samples=5)
    assert report["headline"]["fd_librosa"] is not None and report["headline"]["reference_clips"] == 2
    assert report["by_category"]["chord"]["fd_librosa"] is None
    assert report["by_category"]["chord"]["reference_clips"] == 0
    ceiling = report["ceiling"]["by_category"]["chord"]
    assert ceiling["clips"] == 0 and ceiling["fill_rate"] is None and ceiling["pitch_accuracy"] is None
    assert report["ceiling"]["overall"]["fill_rate"] == 1.0  # overall, a chord prompt is asked of every clip


def test_ceiling_counts_real_clips(graded):
    _, _, reference, _ = graded
    good = graded[0]
    ceiling = good["ceiling"]["overall"]
    assert ceiling["pitch_accuracy"] == 1.0 and ceiling["pitch_clips"] == 2  # two A3 clips
    assert ceiling["clips"] == 6 and ceiling["tempo_accuracy"] == 1.0 and ceiling["fill_rate"] == 1.0
    assert -1.0 <= ceiling["adherence"] <= 1.0
    # a sustained request asked of one-shot clips is not filled: the ceiling follows each prompt's category
    asked = [{"prompt": "x", "category": "fx", "kind": "sustained"}]
    assert ev.ceiling_figures(reference["dsp"], asked)["fill_rate"] == 0.0


def test_format_report_is_a_table(graded):
    good = dict(graded[0])
    good["config"] = {
        "model": "m",
        "model_hash": "ab" * 32,
        "steps": 8,
        "guidance": 4.0,
        "samples": 5,
        "seed": 0,
        "split": "test",
        "data": "corpus",
    }
    good["notes"] = ["a note"]
    text = ev.format_report(good)
    assert "pitch within 50 cents" in text and "100%" in text and "note: a note" in text
    assert len([line for line in text.splitlines() if line.startswith(("note ", "drums ", "fx "))]) == 3


# ---------------------------------------------------------------- the corpus reference and its cache


def write_corpus(root: Path) -> Path:
    """A corpus folder: 3 test clips and 2 train clips of noise, fx without pitch or tempo (no pyin)."""
    (root / "audio").mkdir(parents=True)
    records = []
    for i, split in enumerate(["test", "test", "test", "train", "train"]):
        x = 0.1 * np.random.default_rng(i).standard_normal(SR // 2) * np.hanning(SR // 2)
        path = f"audio/{i:06d}.flac"
        sf.write(root / path, np.stack([x, x]).T, SR)
        params = {"category": "fx", "f0_hz": None, "bpm": None}
        records.append(
            {"id": f"{i:06d}", "path": path, "captions": [f"noise {i}"], "split": split, "params": params}
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_reference_set_is_cached_by_content(tmp_path, monkeypatch):
    data = write_corpus(tmp_path / "corpus")
    judge = FakeJudge()
    first = ev.reference_set(data, judge, judge_key="f" * 64)
    assert first["ids"] == ["000000", "000001", "000002"] and first["judge"].shape == (3, 16)
    assert len(list((data / ".cache" / "eval").glob("*.safetensors"))) == 2

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(em, "librosa_features", no_measuring)
    monkeypatch.setattr(judge, "embed_audio", no_measuring)
    second = ev.reference_set(data, judge, judge_key="f" * 64)
    assert np.array_equal(first["librosa"], second["librosa"]) and np.allclose(
        first["judge"], second["judge"]
    )
    assert second["dsp"] == first["dsp"]
    # new content is measured again
    x = 0.1 * np.random.default_rng(9).standard_normal((SR // 2, 2))
    sf.write(data / "audio" / "000001.flac", x, SR)
    with pytest.raises(AssertionError, match="measured again"):
        ev.reference_set(data, None)
    monkeypatch.undo()
    train = ev.embed_train_split(data, judge, judge_key="f" * 64)
    assert train.shape == (2, 16)


# ---------------------------------------------------------------- the CLI


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def tiny_generator_bundle(path: Path, card: dict | None = None) -> Path:
    """A bundle folder of kind generator (its weights are not a working model: only its card is read)."""
    return save_bundle(
        path, {"steps": 8, "guidance": 3.0}, {"dit": {"w": torch.zeros(2)}}, kind="generator", card=card or {}
    )


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p["prompt"], "kind": p["kind"]}) + "\n" for p in PROMPTS[2:])
    )
    return path


def test_eval_missing_model_bundle(capsys, tmp_path, prompts_file):
    code, _, err = run_main(capsys, "eval", "--model", tmp_path / "nope", "--prompts", prompts_file)
    assert "--model does not exist" in one_line_error(code, err)


def test_eval_missing_prompts_file(capsys, tmp_path):
    model = tiny_generator_bundle(tmp_path / "gen")
    code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", tmp_path / "nope.jsonl")
    assert "--prompts does not exist" in one_line_error(code, err)


def test_eval_malformed_prompts_file(capsys, tmp_path):
    model = tiny_generator_bundle(tmp_path / "gen")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "rain"}\n{"prompt": "kick", "bpm": -3}\n')
    code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", bad)
    line = one_line_error(code, err)
    assert "Line 2" in line and "bpm" in line


def test_eval_of_a_generator_needs_prompts_and_of_an_embedder_needs_data(capsys, tmp_path):
    model = tiny_generator_bundle(tmp_path / "gen")
    code, _, err = run_main(capsys, "eval", "--model", model)
    assert "pass --prompts" in one_line_error(code, err)
    embedder = save_bundle(tmp_path / "emb", {}, {"embedder": {"w": torch.zeros(2)}}, kind="embedder")
    code, _, err = run_main(capsys, "eval", "--model", embedder)
    assert "pass --data" in one_line_error(code, err)


@pytest.mark.parametrize("samples", ["3", "0", "five"])
def test_eval_too_few_samples(capsys, tmp_path, prompts_file, samples):
    argv = ["eval", "--model", tmp_path, "--prompts", prompts_file, "--samples", samples]
    code, _, err = run_main(capsys, *argv)
    assert "--samples" in one_line_error(code, err)


def test_eval_without_data_when_the_card_names_none(capsys, tmp_path, prompts_file):
    for card in ({}, {"data_dir": "no-such-corpus"}):
        model = tiny_generator_bundle(tmp_path / f"gen{len(card)}", card)
        code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", prompts_file)
        assert "pass --data" in one_line_error(code, err)


def test_eval_refuses_a_bundle_that_is_not_a_generator(capsys, tmp_path, prompts_file):
    model = save_bundle(tmp_path / "codec", {}, {"codec": {"w": torch.zeros(2)}}, kind="codec")
    code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", prompts_file, "--data", tmp_path)
    assert "not a generator" in one_line_error(code, err)


class FakeGenerator:
    max_seconds = 0.75
    default_steps = 8
    default_guidance = 3.0

    def generate(self, prompt, *, seconds, steps=None, seed=None):
        assert seconds <= self.max_seconds and steps == 4
        return good_fake(prompt, seconds, seed)


def test_eval_end_to_end_with_a_fake_generator(capsys, tmp_path, prompts_file, monkeypatch):
    import pipelines.bundle
    import pipelines.generator

    data = write_corpus(tmp_path / "corpus")
    model = tiny_generator_bundle(tmp_path / "gen", {"data_dir": str(data)})
    monkeypatch.setattr(pipelines.generator, "load_generator", lambda path: FakeGenerator())
    monkeypatch.setattr(pipelines.bundle, "ASSETS_DIR", tmp_path / "no-assets")  # no bundled judge
    out = tmp_path / "eval" / "report.json"
    hash_before = pipelines.bundle.bundle_hash(model)
    code, stdout, err = run_main(
        capsys,
        "eval",
        "--model",
        model,
        "--prompts",
        prompts_file,
        "--steps",
        "4",
        "--json",
        out,
        "--update-card",
    )
    assert code == 0, err
    card = pipelines.bundle.read_model_json(Path(model))["card"]
    assert card["data_dir"] == str(data) and card["eval"]["headline"]["fill_rate"] == 1.0
    assert card["eval"]["config"]["steps"] == 4 and "generations" not in card["eval"]
    assert pipelines.bundle.bundle_hash(model) == hash_before  # the card is documentation, not the model
    assert "fills the request" in stdout and "judge-space figures are null" in stdout
    report = json.loads(out.read_text())
    config = report["config"]
    assert config["steps"] == 4 and config["guidance"] == 3.0 and config["samples"] == 5
    assert config["judge_hash"] is None and config["data"] == str(data)
    assert len(config["model_hash"]) == 64 and len(config["prompts_sha256"]) == 64
    assert report["headline"]["fd_judge"] is None and report["headline"]["fill_rate"] == 1.0
    assert report["headline"]["reference_clips"] == 3
    assert len(report["generations"]) == 5 and all(g["seconds"] == 0.75 for g in report["generations"])


class RecordingGenerator(FakeGenerator):
    """A FakeGenerator that takes the sampler and guidance overrides, and records them."""

    default_sampler = "euler"

    def __init__(self):
        self.sampling = []

    def generate(self, prompt, *, seconds, steps=None, seed=None, **sampling):
        self.sampling.append({"steps": steps, **sampling})
        return good_fake(prompt, seconds, seed)


def test_eval_overrides_the_sampler_guidance_and_inference_options(
    capsys, tmp_path, prompts_file, monkeypatch
):
    import pipelines.bundle
    import pipelines.generator

    data = write_corpus(tmp_path / "corpus")
    model = tiny_generator_bundle(tmp_path / "gen", {"data_dir": str(data)})
    fake, loaded = RecordingGenerator(), {}
    monkeypatch.setattr(
        pipelines.generator, "load_generator", lambda path, **options: loaded.update(options) or fake
    )
    monkeypatch.setattr(pipelines.bundle, "ASSETS_DIR", tmp_path / "no-assets")
    out = tmp_path / "report.json"
    argv = [
        "--steps",
        "8",
        "--sampler",
        "pingpong",
        "--guidance",
        "1",
        "--int8",
        "--threads",
        "1",
        "--json",
        out,
    ]
    code, stdout, err = run_main(capsys, "eval", "--model", model, "--prompts", prompts_file, *argv)
    assert code == 0, err
    assert loaded == {"int8": True, "threads": 1}  # the inference options reach load_generator
    assert fake.sampling == [{"steps": 8, "sampler": "pingpong", "guidance": 1.0}] * 5
    config = json.loads(out.read_text())["config"]
    assert (config["steps"], config["sampler"], config["guidance"]) == (8, "pingpong", 1.0)
    assert config["inference"] == "int8+1 thread"
    assert "8 pingpong steps, guidance 1.0, int8+1 thread" in stdout

    fake.sampling.clear()  # without overrides the bundle's own sampler and guidance are reported
    code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", prompts_file, "--json", out)
    assert code == 0, err
    assert fake.sampling == [{"steps": None}] * 5
    config = json.loads(out.read_text())["config"]
    precision = "bf16" if native_bf16() else "fp32"
    assert (config["sampler"], config["guidance"], config["inference"]) == ("euler", 3.0, precision)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--guidance", "25"], "--guidance: must be at least 0 and at most 20"),
        (["--guidance", "-1"], "--guidance"),
        (["--sampler", "ddim"], "invalid choice: 'ddim'"),
        (["--threads", "0"], "--threads"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_eval_refuses_bad_sampling_flags_in_one_line(capsys, tmp_path, prompts_file, argv, needle):
    model = tiny_generator_bundle(tmp_path / "gen")
    code, _, err = run_main(capsys, "eval", "--model", model, "--prompts", prompts_file, *argv)
    assert needle in one_line_error(code, err)


def test_eval_refuses_an_absent_device_and_bad_overrides_before_measuring(
    capsys, tmp_path, prompts_file, monkeypatch
):
    data = write_corpus(tmp_path / "corpus")
    model = tiny_generator_bundle(tmp_path / "gen", {"data_dir": str(data)})

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured the reference despite bad input")

    monkeypatch.setattr(ev, "reference_set", no_measuring)
    if not torch.cuda.is_available():
        code, _, err = run_main(
            capsys, "eval", "--model", model, "--prompts", prompts_file, "--device", "cuda"
        )
        assert "no CUDA GPU" in one_line_error(code, err)
    for kwargs, needle in (
        ({"sampler": "ddim"}, "Unknown sampler"),
        ({"guidance": 30.0}, "guidance must be"),
    ):
        with pytest.raises(BadInput, match=needle):
            ev.run(model, prompts_file, **kwargs)
    embedder = save_bundle(tmp_path / "emb", {}, {"embedder": {"w": torch.zeros(2)}}, kind="embedder")
    code, _, err = run_main(capsys, "eval", "--model", embedder, "--data", data, "--int8")
    assert "--int8 is for evaluating a generator" in one_line_error(code, err)


# ---------------------------------------------------------------- bench steps


@pytest.fixture
def steps_setup(tmp_path, monkeypatch) -> dict:
    """A working tiny generator bundle (random weights), the fake corpus, a judge bundle that loads as
    FakeJudge, and a prompt file of one short prompt."""
    from test_generator import tiny_generator_bundle as working_generator_bundle

    import pipelines.embedders

    judge = save_bundle(tmp_path / "judge", {}, {"embedder": {"w": torch.zeros(2)}}, kind="embedder")
    monkeypatch.setattr(pipelines.embedders, "load_embedder", lambda path: FakeJudge())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": PROMPTS[2]["prompt"], "kind": "one-shot", "seconds": 0.5}) + "\n"
    )
    return {
        "model": working_generator_bundle(tmp_path / "models"),
        "data": write_corpus(tmp_path / "corpus"),
        "judge": judge,
        "prompts": prompts,
    }


def test_bench_steps_evaluates_every_curve_at_every_step_count(capsys, tmp_path, steps_setup):
    s = steps_setup
    out, png = tmp_path / "steps" / "steps.json", tmp_path / "steps" / "steps.png"
    code, stdout, err = run_main(
        capsys, "bench", "steps", "--model", s["model"], "--model", f"{s['model']}@pingpong", "--steps", "2,1",
        "--prompts", s["prompts"], "--data", s["data"], "--judge", s["judge"], "--json", out, "--png", png,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["config"]["steps"] == [1, 2] and report["config"]["data"] == str(s["data"])
    curves = report["curves"]
    assert [c["label"] for c in curves] == ["generator", "generator @pingpong"]
    assert [c["sampler"] for c in curves] == ["euler", "pingpong"]  # the bundle's own, then the override
    for curve in curves:
        assert [p["steps"] for p in curve["points"]] == [1, 2]
        for point in curve["points"]:
            assert (
                point["config"]["steps"] == point["steps"] and point["config"]["sampler"] == curve["sampler"]
            )
            head = point["headline"]
            assert head["generations"] == 5 and head["prompts"] == 1
            for key in ("fd_judge", "fd_librosa", "adherence", "ccds"):
                assert isinstance(head[key], float), key
    # the same seeds and prompts at every point: other samplers give other sound at 2 steps (at 1 step
    # Euler and ping-pong are the same map, x1 - v: both predict x0 once and stop there)
    fd = [[p["headline"]["fd_librosa"] for p in c["points"]] for c in curves]
    assert fd[0][0] == pytest.approx(fd[1][0], rel=1e-4) and fd[0][1] != fd[1][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "generator @pingpong" in stdout and "judge FD" in stdout and f"wrote {png}" in stdout


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--model", "{model}@ddim"], "the sampler 'ddim'"),
        (["--model", "{tmp}/nowhere"], "does not exist"),
        (["--model", "{judge}"], "not a generator"),
        (["--model", "{model}", "--model", "{model}"], "given twice"),
        (["--model", "{model}", "--steps", "0"], "--steps"),
        (["--model", "{model}", "--guidance", "99"], "--guidance"),
        (["--model", "{model}", "--options"], "--options is not for"),
    ],
)
def test_bench_steps_refuses_bad_input_before_evaluating(
    capsys, tmp_path, steps_setup, monkeypatch, extra, needle
):
    import training.evaluate

    def no_eval(*args, **kwargs):
        raise AssertionError("evaluated despite bad input")

    monkeypatch.setattr(training.evaluate, "run", no_eval)
    s = steps_setup
    fill = {"model": s["model"], "tmp": tmp_path, "judge": s["judge"]}
    argv = [a.format(**fill) for a in extra]
    code, _, err = run_main(capsys, "bench", "steps", *argv, "--prompts", s["prompts"], "--data", s["data"])
    assert needle in one_line_error(code, err)
    code, _, err = run_main(capsys, "bench", "generate", "--png", tmp_path / "x.png")
    assert "--png is for `soundloom bench steps`" in one_line_error(code, err)
