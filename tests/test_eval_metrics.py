"""training.eval_metrics: every measurement on synthesized audio or embeddings whose answer is known."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.analysis import ClipAnalysis, analyze_clip
from pipelines.audio import Audio
from pipelines.errors import BadInput
from training import eval_metrics as em
from training import synth

SR = 44100
DEV_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "dev.jsonl"


def mono(x: np.ndarray) -> Audio:
    return Audio(np.stack([x, x]).astype(np.float32), SR)


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> Audio:
    t = np.arange(int(seconds * SR)) / SR
    return mono(amplitude * np.sin(2 * np.pi * freq * t))


def pluck(freq: float = 330.0, seconds: float = 2.0, tau: float = 0.2) -> Audio:
    t = np.arange(int(seconds * SR)) / SR
    return mono(0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t / tau))


def click_train(bpm: float, seconds: float) -> Audio:
    """Short decaying noise bursts on every beat, accented on every fourth."""
    rng = np.random.default_rng(0)
    x = np.zeros(int(seconds * SR), np.float32)
    burst = (np.exp(-np.arange(600) / 80.0) * rng.standard_normal(600)).astype(np.float32)
    for k in range(int(seconds * bpm / 60.0) + 1):
        start = int(round(k * 60.0 / bpm * SR))
        if start + burst.size < x.size:
            x[start : start + burst.size] += burst * (1.0 if k % 4 == 0 else 0.5)
    return mono(x)


def clip_with(f0_hz=None, tempo_bpm=None) -> ClipAnalysis:
    return ClipAnalysis(
        seconds=2.0,
        loudness_lufs=-20.0,
        peak_db=-6.0,
        tempo_bpm=tempo_bpm,
        f0_hz=f0_hz,
        note=None,
        key=None,
        brightness_hz=1000.0,
        onset_count=1,
        is_sustained=True,
    )


# ---------------------------------------------------------------- DSP checks (librosa)


def test_pitch_of_a_220_hz_sine():
    audio = tone(220.0, 1.0)
    ok, measured = em.pitch_correct(audio, 220.0)
    assert ok and abs(em.cents_off(measured, 220.0)) < 10
    clip = analyze_clip(audio)
    assert not em.pitch_correct(clip, 233.0)[0]  # 99 cents: a semitone off
    assert em.pitch_correct(clip, 225.0)[0]  # 39 cents: within 50
    assert not em.pitch_correct(clip, 440.0)[0]  # no octave leniency
    assert em.pitch_correct(clip, 233.0, cents=120.0)[0]  # the tolerance is a parameter
    assert em.pitch_correct(clip_with(f0_hz=None), 220.0) == (False, None)


def test_tempo_of_a_120_bpm_click_train():
    audio = click_train(120.0, 6.0)
    ok, measured = em.tempo_correct(audio, 120.0)
    assert ok and abs(measured / 120.0 - 1) < 0.02
    assert not em.tempo_correct(audio, 126.0)[0]  # 5% off
    assert not em.tempo_correct(audio, 60.0)[0]  # half time is not the asked tempo
    assert em.tempo_correct(clip_with(tempo_bpm=122.0), 120.0) == (True, 122.0)  # 1.7%
    assert em.tempo_correct(clip_with(tempo_bpm=None), 120.0) == (False, None)


def test_fills_request_tells_sustained_from_one_shot():
    steady, decaying = tone(330.0, 2.0), pluck(seconds=2.0)
    ok, share = em.fills_request(steady, "sustained")
    assert ok and share > 0.95
    assert not em.fills_request(steady, "one-shot")[0]  # cut off at full level
    ok, drop = em.fills_request(decaying, "one-shot")
    assert ok and drop >= 20.0
    ok, share = em.fills_request(decaying, "sustained")  # above -40 dB for about 0.9 s of 2 s
    assert not ok and share < 0.6
    silence = mono(np.zeros(SR))
    assert em.fills_request(silence, "sustained") == (False, 0.0)
    assert em.fills_request(silence, "one-shot") == (False, 0.0)


def test_librosa_features_are_fixed_and_tell_sounds_apart():
    sine, noise = tone(440.0, 1.0), mono(0.1 * np.random.default_rng(0).standard_normal(SR))
    a, b = em.librosa_features(sine), em.librosa_features(noise)
    assert a.shape == b.shape == (78,) and a.dtype == np.float32
    assert np.isfinite(a).all() and np.isfinite(em.librosa_features(mono(np.zeros(SR // 2)))).all()
    assert np.linalg.norm(a - b) > 1.0
    assert np.allclose(a, em.librosa_features(tone(440.0, 1.0)))  # deterministic


def test_measure_generation_and_summary_of_a_sine():
    prompt = {"prompt": "a sine at A3", "pitch_hz": 220.0, "bpm": None, "kind": "sustained"}
    record = em.measure_generation(tone(220.0, 1.0), prompt)
    assert record["pitch_ok"] is True and record["fills"] is True
    assert record["tempo_ok"] is None and record["clipping"] is False and record["loudness_sane"] is True
    summary = em.summarise([record])
    assert summary["pitch_accuracy"] == 1.0 and summary["tempo_accuracy"] is None


# ---------------------------------------------------------------- DSP checks (no librosa)


def test_clipping():
    t = np.arange(SR) / SR
    square = np.clip(2.0 * np.sign(np.sin(2 * np.pi * 100 * t)), -1.0, 1.0)
    assert em.clipping(mono(square))
    assert not em.clipping(tone(440.0, 1.0, amplitude=0.9))
    x = np.zeros(1000)
    x[100] = 1.0  # a lone full-scale sample is a peak, not clipping
    x[200:202] = -1.0
    assert not em.clipping(mono(x))
    x[500:503] = -1.0
    assert em.clipping(mono(x))
    one_channel = np.zeros((2, 1000), np.float32)
    one_channel[1, 10:13] = 1.0
    assert em.clipping(Audio(one_channel, SR))


def test_loudness_sane():
    assert em.loudness_sane(tone(440.0, 1.0, amplitude=0.1))
    assert not em.loudness_sane(tone(440.0, 1.0, amplitude=1e-4))  # about -83 LUFS: inaudible
    t = np.arange(SR) / SR
    assert not em.loudness_sane(mono(np.sign(np.sin(2 * np.pi * 1000 * t))))  # a full-scale square
    assert not em.loudness_sane(mono(np.zeros(SR)))


# ---------------------------------------------------------------- judge-space figures


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 8))
    assert em.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = rng.standard_normal((2000, 8))
    shifted = b + 1.0  # unit shift in 8 dims: FD -> 8 for matching covariances
    assert em.frechet_distance(a, shifted) == pytest.approx(8.0, rel=0.05)
    assert em.frechet_distance(a, b) < 0.1
    assert em.frechet_distance(a, shifted) == pytest.approx(em.frechet_distance(shifted, a), rel=1e-6)
    wide = b * 2.0  # S_b = 4 I: tr(I + 4I - 2 * 2I) = 8
    assert em.frechet_distance(a, wide) == pytest.approx(8.0, rel=0.1)


def test_frechet_distance_matches_scipy_and_survives_few_rows():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 5)) + 0.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * np.real(sqrtm(sa @ sb)))
    assert em.frechet_distance(a, b) == pytest.approx(reference, rel=1e-4)
    few = rng.standard_normal((4, 384))  # N < D: singular covariances
    value = em.frechet_distance(few, few + 0.5)
    assert math.isfinite(value) and value == pytest.approx(384 * 0.25, rel=0.01)
    assert em.frechet_distance(torch.from_numpy(few), few) == pytest.approx(0.0, abs=1e-6)


def test_ccds_and_adherence():
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1))
    assert em.ccds([same, torch.tensor(same)]) == pytest.approx(0.0, abs=1e-12)
    orthogonal = np.eye(6)
    assert em.ccds([orthogonal]) == pytest.approx(1.0)
    assert em.ccds([same, orthogonal]) == pytest.approx(0.5)
    x = np.random.default_rng(0).standard_normal((10, 16))
    assert em.adherence(x, 3.0 * x) == pytest.approx(1.0)
    assert em.adherence(x, -x) == pytest.approx(-1.0)


def test_memorisation_share():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 32))
    test = rng.standard_normal((50, 32))
    assert em.memorisation_share(train[:20], train, test) == 1.0  # copies of training clips
    assert em.memorisation_share(train[:20] * 5.0 + 1e-3, train, test) == 1.0  # scale does not hide a copy
    far = -np.abs(rng.standard_normal((20, 32)))
    train_pos = np.abs(train)
    test_pos = np.abs(test)
    assert em.memorisation_share(far, train_pos, test_pos) == 0.0
    share = em.memorisation_share(rng.standard_normal((400, 32)), train, test)
    assert 0.3 < share < 0.7  # new draws from the same world sit where the test clips do


# ---------------------------------------------------------------- summaries


def test_summarise_weighs_prompts_equally():
    def rec(prompt, pitch_ok=None, tempo_ok=None, fills=None, clipping=False, sane=True):
        return {
            "prompt": prompt,
            "pitch_ok": pitch_ok,
            "tempo_ok": tempo_ok,
            "fills": fills,
            "clipping": clipping,
            "loudness_sane": sane,
        }

    records = [
        rec("cello A3", pitch_ok=True, fills=True),
        rec("cello A3", pitch_ok=False, fills=True),
        rec("cello A3", pitch_ok=False, fills=False, clipping=True),
        rec("cello A3", pitch_ok=False, fills=True),
        rec("drums 120", tempo_ok=True, fills=True, sane=False),
        rec("drums 120", tempo_ok=True, fills=False),
    ]
    summary = em.summarise(records)
    assert summary["generations"] == 6 and summary["prompts"] == 2
    assert summary["pitch_accuracy"] == pytest.approx(0.25) and summary["pitch_accuracy_prompts"] == 1
    assert summary["tempo_accuracy"] == pytest.approx(1.0) and summary["tempo_accuracy_prompts"] == 1
    assert summary["fill_rate"] == pytest.approx((0.75 + 0.5) / 2)
    assert summary["clipping_rate"] == pytest.approx((0.25 + 0.0) / 2)
    assert summary["loudness_sane_rate"] == pytest.approx((1.0 + 0.5) / 2)
    assert em.summarise([rec("x")])["fill_rate"] is None
    json.dumps(summary)  # headline figures go into reports and model.json


# ---------------------------------------------------------------- prompt files


NOTE_RE = re.compile(r"\b([A-G])([#b]?)(-?\d)\b")
PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def named_hz(prompt: str) -> float | None:
    """The equal-tempered frequency of the note a prompt names (A4 = 440 Hz), None if it names none."""
    if "middle C" in prompt:
        return 261.6255653005986
    match = NOTE_RE.search(prompt)
    if not match:
        return None
    letter, accidental, octave = match.groups()
    midi = PITCH_CLASSES[letter] + {"#": 1, "b": -1, "": 0}[accidental] + 12 * (int(octave) + 1)
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def test_dev_prompts_are_valid_and_say_what_they_expect():
    from training.corpus import CATEGORY_WEIGHTS

    prompts = em.read_prompts(DEV_PROMPTS)
    assert len(prompts) >= 45
    with_pitch = [p for p in prompts if p["pitch_hz"] is not None]
    with_bpm = [p for p in prompts if p["bpm"] is not None]
    assert len(with_pitch) >= 15 and len(with_bpm) >= 8
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    assert len({p["id"] for p in prompts}) == len(prompts)
    for p in prompts:
        assert p["category"] in CATEGORY_WEIGHTS, p
        assert p["seconds"] is not None and 1.0 <= p["seconds"] <= 10.0, p
        assert (p["family"] in synth.FAMILIES) if p["category"] == "fx" else p["family"] is None, p
        # the expected values are what the words say, to the cent (equal temperament, A4 = 440 Hz)
        named = named_hz(p["prompt"])
        if p["pitch_hz"] is not None:
            assert named is not None and abs(em.cents_off(p["pitch_hz"], named)) < 0.01, p
        bpm = re.search(r"(\d+) BPM", p["prompt"])
        assert (float(bpm.group(1)) if bpm else None) == p["bpm"], p
    assert {p["category"] for p in prompts} == set(CATEGORY_WEIGHTS)  # every category is exercised
    kinds = [p["kind"] for p in prompts if p["kind"] is not None]
    assert kinds.count("sustained") >= 10 and kinds.count("one-shot") >= 8
    assert next(p for p in prompts if p["prompt"].startswith("a warm cello"))["pitch_hz"] == 220.0


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message.rstrip(".")


@pytest.mark.parametrize(
    "lines, line_no, words",
    [
        (['{"prompt": "a"}', "", "{not json"], 3, "not valid JSON"),
        (['{"prompt": "a"}', '{"bpm": 120}'], 2, '"prompt"'),
        (['{"prompt": "   "}'], 1, '"prompt"'),
        (['{"prompt": 5}'], 1, '"prompt"'),
        (['{"prompt": "a", "pitch_hz": "A3"}'], 1, "positive number"),
        (['{"prompt": "a", "bpm": -120}'], 1, "positive number"),
        (['{"prompt": "a", "bpm": true}'], 1, "positive number"),
        (['{"prompt": "a", "category": "noises"}'], 1, "fx"),
        (['{"prompt": "a", "kind": "looped"}'], 1, "one-shot"),
        (['{"prompt": "a", "family": "tuba"}'], 1, "riser"),
        (['{"prompt": "a", "pitch": 220}'], 1, "unknown field"),
        (["[1, 2]"], 1, "not a JSON object"),
    ],
)
def test_read_prompts_errors_name_the_line(tmp_path, lines, line_no, words):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput) as error:
        em.read_prompts(path)
    message = str(error.value)
    assert f"Line {line_no} " in message and words in message and one_sentence(message), message


def test_read_prompts_files_and_defaults(tmp_path):
    for path in (tmp_path / "missing.jsonl", tmp_path):
        with pytest.raises(BadInput) as error:
            em.read_prompts(path)
        assert one_sentence(str(error.value))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BadInput, match="no prompts"):
        em.read_prompts(empty)
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"prompt": "rain", "bpm": null, "seconds": 4}\n\n{"prompt": "kick", "kind": "one-shot"}\n'
    )
    prompts = em.read_prompts(good)
    assert [p["prompt"] for p in prompts] == ["rain", "kick"]
    assert prompts[0]["bpm"] is None and prompts[0]["seconds"] == 4 and prompts[1]["kind"] == "one-shot"
    assert set(prompts[1]) == set(em.PROMPT_FIELDS)
