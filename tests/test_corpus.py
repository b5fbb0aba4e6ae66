"""training.corpus and friends: what the builder renders is what its manifest says, splits never leak."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import soundfile as sf

from pipelines import analysis
from pipelines.audio import Audio
from pipelines.errors import BadInput
from training import captions, corpus, synth
from training.jsonl import read_jsonl
from training.soundfonts import available_soundfonts

SR = 44100
FONTS = available_soundfonts()
BY_NAME = {f.name: f for f in FONTS}


def plans_where(predicate, limit: int, seed: int = 0, search: int = 3000) -> list[corpus.ClipPlan]:
    """The first `limit` plans of the corpus for `seed` that satisfy `predicate`."""
    found = []
    for index in range(search):
        plan = corpus.plan_clip(seed, index, FONTS)
        if predicate(plan, found):
            found.append(plan)
            if len(found) == limit:
                break
    assert len(found) == limit
    return found


def beat_tempo(audio: Audio, bpm: float, window: float = 0.05) -> float:
    """Tempo measured from the onset autocorrelation peak within +-`window` of the stated beat period.

    Checks the longest power-of-two multiple of the beat that fits the clip twice, for precision;
    a render more than `window` off its stated tempo would measure at the window's edge and fail.
    """
    import librosa

    hop = 64
    env = librosa.onset.onset_strength(
        y=analysis.analysis_mono(audio), sr=analysis.ANALYSIS_RATE, hop_length=hop
    )
    x = env - env.mean()
    ac = np.correlate(x, x, mode="full")[x.size - 1 :]
    period = 60.0 / bpm * analysis.ANALYSIS_RATE / hop
    beats = 1
    while 2 * beats * period < 0.55 * x.size:
        beats *= 2
    lo, hi = int(beats * period * (1 - window)), int(math.ceil(beats * period * (1 + window)))
    k = lo + int(np.argmax(ac[lo : hi + 1]))
    a, b, c = ac[k - 1], ac[k], ac[k + 1]
    peak = k + (0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c else 0.0)
    return 60.0 * beats / (peak * hop / analysis.ANALYSIS_RATE)


# ---------------------------------------------------------------- what the builder covers


def test_builder_covers_enough_material():
    assert len(corpus.PROGRAMS) >= 40
    assert len(corpus.DRUM_PATTERNS) >= 10
    assert len(synth.FAMILIES) >= 12
    assert len(captions.GM_NAMES) == 128
    for pattern in corpus.DRUM_PATTERNS.values():
        steps = pattern.steps_per_beat * int(pattern.meter[0])
        assert all(len(line) == steps for line in pattern.parts.values()), pattern.name
        assert 60 <= pattern.bpm[0] <= pattern.bpm[1] <= 180
    plans = corpus.plan_corpus(0, 0.5, FONTS)
    assert sum(p.seconds for p in plans) >= 1800
    seconds = np.array([p.seconds for p in plans])
    assert seconds.min() >= 1.0 and seconds.max() <= 10.0
    assert 0.5 < np.mean((seconds >= 2) & (seconds <= 6)) < 0.95  # mostly 2-6 s, with variety
    assert {p.params["category"] for p in plans} == set(corpus.CATEGORY_WEIGHTS)


@pytest.mark.parametrize("family", sorted(synth.FAMILIES))
def test_every_procedural_family_renders(family):
    params = synth.draw_params(family, np.random.default_rng([7, 1]))
    json.dumps(params)  # manifest-ready
    x = synth.render(params, np.random.default_rng([7, 2]))
    again = synth.render(params, np.random.default_rng([7, 2]))
    assert x.dtype == np.float32 and x.shape == (2, round(params["seconds"] * SR))
    assert np.isfinite(x).all() and np.abs(x).max() == pytest.approx(0.9, abs=1e-3)
    assert np.sqrt(np.mean(x**2)) > 0.003
    assert np.array_equal(x, again)


def test_procedural_sounds_are_stereo():
    wide = 0
    for k, family in enumerate(sorted(synth.FAMILIES)):
        x = synth.render(synth.draw_params(family, np.random.default_rng([k])), np.random.default_rng([k, 1]))
        wide += float(np.corrcoef(x[0], x[1])[0, 1]) < 0.97 or not np.allclose(
            np.std(x[0]), np.std(x[1]), rtol=0.05
        )
    assert wide >= len(synth.FAMILIES) // 2


# ---------------------------------------------------------------- renders match their manifest


def test_single_notes_match_manifest_pitch():
    import librosa

    plans = plans_where(
        lambda p, found: (
            p.params["category"] == "note"
            and p.params["program"] in (0, 6, 24, 40, 42, 56, 61, 65, 68, 71, 73, 89)
            and 48 <= p.params["midi"] <= 84
            and p.params["program"] not in {q.params["program"] for q in found}
        ),
        limit=4,
    )
    for plan in plans:
        audio, record = corpus.render_clip(plan, BY_NAME)
        f0, _, _ = librosa.pyin(analysis.analysis_mono(audio), fmin=60, fmax=1500, sr=analysis.ANALYSIS_RATE)
        voiced = f0[~np.isnan(f0)]
        assert voiced.size > 10, record["params"]["instrument"]
        error = 1200 * math.log2(float(np.median(voiced)) / record["params"]["f0_hz"])
        assert abs(error) < 30, (record["params"]["instrument"], record["params"]["note"], error)


def test_drum_patterns_match_manifest_tempo():
    plans = plans_where(
        lambda p, found: (
            p.params["category"] == "drums"
            and p.seconds <= 6.5
            and p.params["style"] not in {q.params["style"] for q in found}
        ),
        limit=4,
    )
    for plan in plans:
        audio, record = corpus.render_clip(plan, BY_NAME)
        bpm = record["params"]["bpm"]
        assert abs(beat_tempo(audio, bpm) / bpm - 1) < 0.02, (record["params"]["style"], bpm)
        beats = record["params"]["beats_s"]
        assert np.allclose(np.diff(beats), 60.0 / bpm, atol=1e-4) and record["params"]["bars_s"][0] == 0.0


def test_material_never_straddles_splits():
    plans = corpus.plan_corpus(0, 3.0, FONTS)
    split_of_material: dict[str, set] = {}
    programs_of_material: dict[str, set] = {}
    for plan in plans:
        split_of_material.setdefault(plan.material_id, set()).add(corpus.split_of(plan.material_id))
        programs_of_material.setdefault(plan.material_id, set()).add(plan.params["program"])
    assert all(len(s) == 1 for s in split_of_material.values())
    assert any(len(p) > 1 for p in programs_of_material.values())  # phrases do recur with other programs
    shares = np.array([[corpus.split_of(m) == s for s in corpus.SPLITS] for m in split_of_material]).mean(
        axis=0
    )
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.05)


# ---------------------------------------------------------------- a real (tiny) build


REQUIRED = {
    "id",
    "path",
    "captions",
    "seconds",
    "source",
    "licence",
    "provenance",
    "material_id",
    "split",
    "params",
}
PARAMS = {"category", "program", "instrument", "f0_hz", "note", "bpm", "key", "beats_s", "bars_s", "velocity"}


def digests(folder) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "audio").glob("*.flac"))
    }


def test_build_manifest_resume_and_determinism(tmp_path):
    out = corpus.build_corpus(tmp_path / "a", hours=0.006, seed=5, progress=False, workers=1)
    records = corpus.read_manifest(out)
    assert len(records) >= 3
    for record in records:
        assert REQUIRED <= record.keys() and PARAMS <= record["params"].keys()
        assert len(record["captions"]) >= 3 and all(isinstance(c, str) and c for c in record["captions"])
        assert record["split"] == corpus.split_of(record["material_id"])
        info = sf.info(str(out / record["path"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 2, "PCM_16", "FLAC")
        assert info.frames == round(record["seconds"] * SR)
        data, _ = sf.read(str(out / record["path"]))
        assert 20 * np.log10(np.abs(data).max()) <= corpus.PEAK_CEILING_DB + 0.01
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["state"] == "done" and meta["counts"]["clips"] == len(records) and meta["x_realtime"] > 0
    assert (
        all(len(f["sha256"]) == 64 for f in meta["soundfonts"])
        and meta["soundfonts"][0]["name"] == "TimGM6mb"
    )

    first = digests(out)
    # interrupted build: one clip's audio and the manifest's last line are gone
    (out / records[0]["path"]).unlink()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:-1]) + '\n{"id": "0000')
    corpus.build_corpus(out, hours=0.006, seed=5, progress=False, workers=1)
    assert digests(out) == first
    assert corpus.read_manifest(out) == records

    # the same seed elsewhere (with two workers) gives the same clips; another seed does not
    other = corpus.build_corpus(tmp_path / "b", hours=0.006, seed=5, progress=False, workers=2)
    assert digests(other) == first
    with pytest.raises(BadInput):
        corpus.build_corpus(out, hours=0.006, seed=6, progress=False)


def test_a_corpus_of_chosen_categories(tmp_path):
    plans = corpus.plan_corpus(1, 0.2, FONTS, ["note"])
    assert {p.params["category"] for p in plans} == {"note"}
    assert len({p.params["midi"] for p in plans}) > 30  # the whole pool of notes, not a few repeats
    assert len({p.material_id for p in plans}) > 0.6 * len(plans)
    mixed = corpus.plan_corpus(1, 0.3, FONTS, ["drums", "note"])
    assert {p.params["category"] for p in mixed} == {"drums", "note"}
    # no categories is the full corpus, drawn exactly as before the option existed
    assert corpus.plan_corpus(0, 0.1, FONTS, None) == corpus.plan_corpus(0, 0.1, FONTS)

    out = corpus.build_corpus(
        tmp_path / "n", hours=0.003, seed=2, progress=False, workers=1, categories=["note"]
    )
    assert {r["params"]["category"] for r in corpus.read_manifest(out)} == {"note"}
    assert json.loads((out / "corpus.json").read_text())["categories"] == ["note"]
    with pytest.raises(BadInput, match="other categories"):
        corpus.build_corpus(out, hours=0.003, seed=2, progress=False, workers=1)
    with pytest.raises(BadInput, match="no corpus category 'notes'"):
        corpus.build_corpus(tmp_path / "x", hours=0.003, seed=2, progress=False, categories=["notes"])
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_read_manifest_errors(tmp_path):
    with pytest.raises(BadInput, match="No manifest.jsonl"):
        corpus.read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(
        '{"id": "a", "path": "a.flac", "captions": ["x"], "split": "val"}\n{oops\n'
    )
    with pytest.raises(BadInput, match="Line 2"):
        corpus.read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(
        '{"id": "a", "path": "a.flac", "captions": ["x"], "split": "val"}\n'
    )
    assert (
        len(corpus.read_manifest(tmp_path, split="val")) == 1
        and corpus.read_manifest(tmp_path, "train") == []
    )
    with pytest.raises(BadInput, match="Unknown split"):
        corpus.read_manifest(tmp_path, split="dev")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("[1, 2]", "Line 1 of .* is not a JSON object"),
        ('"clip"', "Line 1 of .* is not a JSON object"),
        (
            '{"id": "a", "path": "a.flac"}',
            "Record 1 of .* is not a clip record \\(it has no captions, split\\)",
        ),
        ('{"id": "a", "path": 3, "captions": [], "split": "val"}', "path that is not text"),
        ('{"id": "a"', "Line 1 of .* is not valid JSON"),  # a finished manifest has no torn tail
    ],
)
def test_manifest_lines_that_are_not_records(tmp_path, line, needle):
    (tmp_path / "manifest.jsonl").write_text(line)
    with pytest.raises(BadInput, match=needle):
        corpus.read_manifest(tmp_path)


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3')
    assert read_jsonl(path, tolerate_torn_tail=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(BadInput, match="Line 4"):
        read_jsonl(path, tolerate_torn_tail=False)
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')  # damage in the middle is never a torn tail
    with pytest.raises(BadInput, match="Line 2"):
        read_jsonl(path, tolerate_torn_tail=True)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(BadInput, match="not UTF-8"):
        read_jsonl(path, tolerate_torn_tail=True)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_damaged_corpus_info_is_bad_input(tmp_path, text):
    (tmp_path / "corpus.json").write_text(text)
    with pytest.raises(BadInput, match="corpus.json' is damaged"):
        corpus.build_corpus(tmp_path, hours=0.001, progress=False, workers=1)


# ---------------------------------------------------------------- a user's folder


def test_from_folder(tmp_path, signals, write_audio):
    src = tmp_path / "mine"
    src.mkdir()
    write_audio("mine/kick.wav", signals.clicks(every=0.5, seconds=1.0))
    (src / "kick.txt").write_text("punchy kick drum\nkick one-shot\n")
    write_audio("mine/pad.flac", signals.noise(seconds=1.0))
    (src / "captions.csv").write_text("file,caption\npad.flac,airy noise pad\n")
    write_audio("mine/tone.wav", signals.sine(220.0, seconds=1.5))
    (src / "broken.wav").write_bytes(b"RIFF0000WAVEnot really audio")

    out = corpus.from_folder(src, tmp_path / "corpus")
    records = {r["params"]["original"]: r for r in corpus.read_manifest(out)}
    assert set(records) == {"kick.wav", "pad.flac", "tone.wav"}
    assert records["kick.wav"]["captions"] == ["punchy kick drum", "kick one-shot"]
    assert records["pad.flac"]["captions"] == ["airy noise pad"]
    assert (
        records["tone.wav"]["captions"][0].startswith("A3") and records["tone.wav"]["params"]["note"] == "A3"
    )
    for record in records.values():
        assert REQUIRED <= record.keys() and (out / record["path"]).is_file()
        assert record["split"] == corpus.split_of(record["material_id"])
    skipped = (out / "skipped.txt").read_text()
    assert "broken.wav" in skipped and skipped.count("\n") == 1
    with pytest.raises(BadInput):
        corpus.from_folder(tmp_path / "missing", tmp_path / "c2")


# ---------------------------------------------------------------- captions


def test_captions_read_like_people_write():
    note = {"category": "note", "program": 42, "instrument": "cello", "midi": 57, "note": "A3", "f0_hz": 220.0,
            "velocity": 40, "note_seconds": 3.2}  # fmt: skip
    texts = captions.captions_for(note, 4.0, 400.0, np.random.default_rng(0))
    assert texts[0] == "cello, A3, sustained, dark, 4s"
    assert "A cello plays a long low A note." in texts
    strings = {**note, "program": 50, "instrument": "synth strings"}
    assert any(
        t.startswith("Synth strings play ")
        for t in captions.captions_for(strings, 4.0, 400.0, np.random.default_rng(0))
    )
    for plan in corpus.plan_corpus(1, 0.3, FONTS):
        texts = captions.captions_for(plan.params, plan.seconds, 1500.0, np.random.default_rng(0))
        assert len(set(texts)) >= 3 and all("None" not in t and "  " not in t for t in texts), texts


def test_name_words_read_sample_library_names():
    from training.captions import name_words

    assert name_words("Audiophob/101450__menegass__tomh.wav") == ["tom drum"]
    assert name_words("104227__minorr__hhat-paiste-302-14-open-p.wav") == ["hi-hat"]
    assert name_words("Kicks/BD_hard.wav") == ["kick drum"]
    assert name_words("SnareRoll.flac") == ["snare drum"]
    assert name_words("122557__anillogic__trimo-c3.wav") == []  # 'rim' inside a word is not a rimshot
    assert name_words("take3.wav") == []
