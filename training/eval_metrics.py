"""What `soundloom eval` measures: pure functions from generations (audio, embeddings) to numbers.

Two kinds of figures, so our own embedders never grade alone: judge-space figures (Fréchet
distance, text-audio adherence, CCDS diversity, memorisation) over embedding matrices, and DSP
checks made with librosa through `pipelines.analysis` (pitch, tempo, content filling the request,
clipping, loudness) plus a Fréchet distance over fixed librosa features. Headline figures are
text-only: nothing here parses a prompt into controls; the expected attributes come from the prompt
file. librosa is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipelines.analysis import (
    ANALYSIS_RATE,
    CLIP_HOP,
    FLOOR_DB,
    ClipAnalysis,
    analysis_mono,
    analyze_clip,
    analyze_frames,
)
from pipelines.audio import Audio, loudness_lufs
from pipelines.errors import BadInput

PITCH_CENTS = 50.0
TEMPO_TOLERANCE = 0.02
ACTIVE_DB = 40.0  # sustained: a frame is active when within this of the clip's loudest frame
ACTIVE_SHARE = 0.8  # ... for at least this share of frames
DECAY_DB = 20.0  # one-shot: the end lies at least this far below the peak
END_SECONDS = 0.1  # "the end" of a one-shot: the frames in its last 100 ms
CLIP_LEVEL = 0.999
CLIP_RUN = 3  # consecutive samples at CLIP_LEVEL that count as clipping, not a lone full-scale peak
LUFS_RANGE = (-40.0, -5.0)
FD_RIDGE = 1e-6  # added to covariance diagonals, relative to the mean variance: N < D sets stay well-posed
KINDS = ("sustained", "one-shot")
N_MFCC = 20
# Prompt-file fields and their types; "number" is a positive finite number. Only "prompt" is required.
PROMPT_FIELDS = {
    "prompt": "text",
    "id": "text",
    "seconds": "number",
    "pitch_hz": "number",
    "bpm": "number",
    "category": "text",
    "family": "text",
    "kind": "text",
    "key": "text",
}


# ---------------------------------------------------------------- judge-space figures


def _matrix(x) -> np.ndarray:
    """float64 [N, D] from a numpy array or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 2, f"expected an [N, D] matrix, got shape {x.shape}"
    return x


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below zero are rounding)."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [N, D] and b [M, D].

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), the trace of the root taken from symmetric
    square roots and an SVD: real where scipy.linalg.sqrtm drifts complex, and without squaring the
    condition number, so identical sets give 0 to rounding. A small ridge keeps sets with fewer rows
    than dimensions well-posed.
    """
    a, b = _matrix(a), _matrix(b)
    assert a.shape[1] == b.shape[1], f"dimensions differ: {a.shape[1]} vs {b.shape[1]}"
    assert len(a) >= 2 and len(b) >= 2, "a Fréchet distance needs at least two rows on each side"
    dim = a.shape[1]
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    ridge = FD_RIDGE * max((np.trace(cov_a) + np.trace(cov_b)) / (2 * dim), 1e-12)
    cov_a, cov_b = cov_a + ridge * np.eye(dim), cov_b + ridge * np.eye(dim)
    # tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2 = the sum of the singular values of S_a^1/2 S_b^1/2
    trace_root = np.linalg.svd(_sqrtm_psd(cov_a) @ _sqrtm_psd(cov_b), compute_uv=False).sum()
    mean_term = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
    return max(mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root), 0.0)


def adherence(audio_emb, text_emb) -> float:
    """Text-audio adherence: mean cosine between each generation's embedding and its prompt's, row by row."""
    audio_emb, text_emb = _matrix(audio_emb), _matrix(text_emb)
    assert audio_emb.shape == text_emb.shape, f"shapes differ: {audio_emb.shape} vs {text_emb.shape}"
    return float(np.mean(np.sum(_unit_rows(audio_emb) * _unit_rows(text_emb), axis=1)))


def ccds(embeddings_per_prompt: list) -> float:
    """Diversity (CCDS): mean pairwise cosine distance among each prompt's K samples, averaged over prompts."""
    assert embeddings_per_prompt, "no prompts"
    per_prompt = []
    for emb in embeddings_per_prompt:
        unit = _unit_rows(_matrix(emb))
        k = len(unit)
        assert k >= 2, "diversity needs at least two samples per prompt"
        upper = np.triu_indices(k, 1)
        per_prompt.append(float(np.mean(1.0 - (unit @ unit.T)[upper])))
    return float(np.mean(per_prompt))


def _nearest_distance(queries: np.ndarray, refs: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each query's cosine distance to its nearest reference row, in blocks to bound memory."""
    queries, refs = _unit_rows(queries), _unit_rows(refs)
    assert queries.shape[1] == refs.shape[1] and len(refs) > 0
    out = np.empty(len(queries))
    for first in range(0, len(queries), block):
        out[first : first + block] = 1.0 - (queries[first : first + block] @ refs.T).max(axis=1)
    return out


def memorisation_share(gen_emb, train_emb, test_emb) -> float:
    """Share of generations closer to a training clip than the median test clip is (cosine, judge space).

    A held-out test clip's distance to its nearest training clip is what "new material from the same
    world" looks like; a generation nearer than the median of those is suspiciously close to a copy.
    """
    train = _matrix(train_emb)
    gen_distance = _nearest_distance(_matrix(gen_emb), train)
    threshold = float(np.median(_nearest_distance(_matrix(test_emb), train)))
    return float(np.mean(gen_distance < threshold))


# ---------------------------------------------------------------- librosa features


def librosa_features(audio: Audio) -> np.ndarray:
    """A fixed 78-d description that no embedder of ours shapes, for a second Fréchet distance.

    Mean and std over frames of 20 MFCCs, 7 spectral-contrast bands and 12 chroma bins (librosa's
    defaults, 2048-point frames, hop 512) of the 22.05 kHz mono signal every analysis reads.
    """
    import librosa

    y = analysis_mono(audio)
    power = np.abs(librosa.stft(y, n_fft=2048, hop_length=512)) ** 2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=ANALYSIS_RATE))
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)
    contrast = librosa.feature.spectral_contrast(S=np.sqrt(power), sr=ANALYSIS_RATE)
    chroma = librosa.feature.chroma_stft(S=power, sr=ANALYSIS_RATE, tuning=0.0)
    parts = [np.concatenate([f.mean(axis=1), f.std(axis=1)]) for f in (mfcc, contrast, chroma)]
    return np.nan_to_num(np.concatenate(parts)).astype(np.float32)


# ---------------------------------------------------------------- DSP checks


def cents_off(measured_hz: float, expected_hz: float) -> float:
    return 1200.0 * math.log2(measured_hz / expected_hz)


def pitch_correct(
    audio: Audio | ClipAnalysis, expected_hz: float, cents: float = PITCH_CENTS
) -> tuple[bool, float | None]:
    """(within `cents` of expected_hz, the clip's pitch from analyze_clip or None if it has none).

    No octave leniency: a note an octave off is the wrong note. Pass a ClipAnalysis to measure once
    and check several things.
    """
    clip = audio if isinstance(audio, ClipAnalysis) else analyze_clip(audio)
    if clip.f0_hz is None:
        return False, None
    return abs(cents_off(clip.f0_hz, expected_hz)) <= cents, clip.f0_hz


def tempo_correct(
    audio: Audio | ClipAnalysis, expected_bpm: float, tolerance: float = TEMPO_TOLERANCE
) -> tuple[bool, float | None]:
    """(tempo within `tolerance` (relative) of expected_bpm, the measured tempo or None without a pulse).

    Exact within 2%, no half- or double-time leniency: a loop at half the asked tempo does not fit a
    track at the asked one. Audio is measured without pyin (tempo does not need it).
    """
    if isinstance(audio, ClipAnalysis):
        tempo = audio.tempo_bpm
    else:
        tempo = analyze_frames(audio, ANALYSIS_RATE / CLIP_HOP, pitch=False).tempo_bpm
    if tempo is None:
        return False, None
    return abs(tempo / expected_bpm - 1.0) <= tolerance, tempo


def fills_request(audio: Audio, kind: str) -> tuple[bool, float]:
    """Whether the sound has the shape its kind asks for, with the figure that decided it.

    "sustained": active (within 40 dB of the loudest frame, as analyze_clip counts audible) for at
    least 80% of the frames; the figure is that share. "one-shot": the last 100 ms at least 20 dB
    below the peak, i.e. it decays before the end rather than being cut off; the figure is that drop
    in dB. Silence fills nothing. Levels are analyze_frames' RMS loudness at its clip frame rate.
    """
    assert kind in KINDS, f"kind must be one of {KINDS}"
    # known (empty) beats skip the beat tracker, which level measurements do not need
    frame_rate = ANALYSIS_RATE / CLIP_HOP
    level = analyze_frames(audio, frame_rate, beats_s=(), pitch=False).loudness_db
    peak = float(level.max())
    if peak <= FLOOR_DB + 1.0:
        return False, 0.0
    if kind == "sustained":
        share = float(np.mean(level > peak - ACTIVE_DB))
        return share >= ACTIVE_SHARE, share
    end_frames = max(1, int(math.ceil(END_SECONDS * frame_rate)))
    drop = peak - float(level[-end_frames:].max())
    return drop >= DECAY_DB, drop


def clipping(audio: Audio) -> bool:
    """True if any channel holds CLIP_RUN consecutive samples at |x| >= CLIP_LEVEL."""
    hot = np.abs(audio.samples) >= CLIP_LEVEL
    run = hot[:, : hot.shape[1] - CLIP_RUN + 1].copy()
    for k in range(1, CLIP_RUN):
        run &= hot[:, k : hot.shape[1] - CLIP_RUN + 1 + k]
    return bool(run.any())


def loudness_sane(audio: Audio) -> bool:
    """Integrated loudness within -40..-5 LUFS: audible, and not a wall of distortion."""
    low, high = LUFS_RANGE
    return low <= loudness_lufs(audio) <= high


def measure_generation(audio: Audio, prompt: dict) -> dict:
    """One generation's DSP record for `summarise`: each check its prompt asks for, None where it asks none.

    `prompt` is a record from `read_prompts`; pyin runs only for prompts that name a pitch.
    """
    record = {
        "prompt": prompt["prompt"],
        "category": prompt.get("category"),
        "pitch_ok": None,
        "pitch_measured_hz": None,
        "tempo_ok": None,
        "tempo_measured_bpm": None,
        "fills": None,
        "fill_figure": None,
    }
    # one analysis serves pitch and tempo; without a pitch to check, tempo alone skips pyin
    clip = analyze_clip(audio) if prompt.get("pitch_hz") is not None else audio
    if prompt.get("pitch_hz") is not None:
        record["pitch_ok"], record["pitch_measured_hz"] = pitch_correct(clip, prompt["pitch_hz"])
    if prompt.get("bpm") is not None:
        record["tempo_ok"], record["tempo_measured_bpm"] = tempo_correct(clip, prompt["bpm"])
    if prompt.get("kind") is not None:
        record["fills"], record["fill_figure"] = fills_request(audio, prompt["kind"])
    record["clipping"] = clipping(audio)
    record["loudness_sane"] = loudness_sane(audio)
    return record


def _rate_over_prompts(records: list[dict], key: str) -> tuple[float | None, int]:
    """(mean over prompts of each prompt's share of True, number of prompts that had the check)."""
    by_prompt: dict[str, list[bool]] = {}
    for record in records:
        if record.get(key) is not None:
            by_prompt.setdefault(record["prompt"], []).append(bool(record[key]))
    if not by_prompt:
        return None, 0
    return float(np.mean([np.mean(values) for values in by_prompt.values()])), len(by_prompt)


def summarise(records: list[dict]) -> dict:
    """Headline DSP figures from `measure_generation` records (one per generation, K per prompt).

    Each rate is a mean over prompts of the per-prompt share, so every prompt weighs the same; pitch
    accuracy counts only prompts with pitch_hz, tempo accuracy only those with bpm, fill rate only
    those with a kind. A rate is None when no prompt asked for that check.
    """
    summary: dict = {"generations": len(records), "prompts": len({r["prompt"] for r in records})}
    for name, key in (
        ("pitch_accuracy", "pitch_ok"),
        ("tempo_accuracy", "tempo_ok"),
        ("fill_rate", "fills"),
        ("clipping_rate", "clipping"),
        ("loudness_sane_rate", "loudness_sane"),
    ):
        summary[name], summary[f"{name}_prompts"] = _rate_over_prompts(records, key)
    return summary


# ---------------------------------------------------------------- prompt files


def prompt_categories() -> tuple[str, ...]:
    """The corpus categories a prompt may name ("user" is what `dataset from-folder` gives its clips)."""
    from training.corpus import CATEGORY_WEIGHTS

    return (*CATEGORY_WEIGHTS, "user")


def read_prompts(path: str | Path) -> list[dict]:
    """The prompts of a JSON Lines file, checked: {"prompt": str} plus optional expected attributes.

    Optional fields: id, seconds, pitch_hz, bpm (positive numbers; null means not given), category
    (a corpus category), family (a procedural family), kind ("sustained" | "one-shot"), key. BadInput
    names the line of the first problem.
    """
    from training import synth
    from training.jsonl import read_jsonl

    path = Path(path)
    if not path.exists():
        raise BadInput(f"The prompts file '{path}' does not exist; check the path.")
    if path.is_dir():
        raise BadInput(f"'{path}' is a folder; give the path of a JSON Lines prompts file.")
    records = read_jsonl(path, tolerate_torn_tail=False)
    # read_jsonl skips blank lines; map each record back to its line for the messages
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if line.strip()]
    if not records:
        raise BadInput(f"'{path}' holds no prompts; write one JSON object with a \"prompt\" per line.")
    categories = prompt_categories()
    choices = {"category": categories, "family": tuple(synth.FAMILIES), "kind": KINDS}
    for record, line in zip(records, lines):
        where = f"Line {line} of '{path}'"
        unknown = [key for key in record if key not in PROMPT_FIELDS]
        if unknown:
            raise BadInput(
                f'{where} has an unknown field "{unknown[0]}"; the fields are {", ".join(PROMPT_FIELDS)}.'
            )
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInput(f'{where} has no "prompt" text; give every line a non-empty "prompt" string.')
        for key, value in record.items():
            if value is None and key != "prompt":
                continue
            if PROMPT_FIELDS[key] == "number":
                is_number = isinstance(value, int | float) and not isinstance(value, bool)
                if not is_number or not math.isfinite(value) or value <= 0:
                    raise BadInput(
                        f'{where} gives "{key}" as {json.dumps(value)}; it must be a positive number.'
                    )
            elif not isinstance(value, str):
                raise BadInput(f'{where} gives "{key}" as {json.dumps(value)}; it must be a string.')
            elif key in choices and value not in choices[key]:
                raise BadInput(f'{where} gives "{key}" as "{value}"; use one of {", ".join(choices[key])}.')
    return [{key: record.get(key) for key in PROMPT_FIELDS} for record in records]
