"""Does the generator put its hits on the beat grid it is given? A probe, measured by librosa.

    python -m training.probe_beat_grid BUNDLE [--data DIR] [--prompts 8] [--bpm 90,123,150]

For the first `--prompts` drum clips of the corpus' test split, a caption ("<style>, <kit>") is rendered
by `pipelines.loops.beats` as 2 bars at each BPM, model only (no post-processing), once with the
beat-phase and bar-phase controls and once with both taken away. The figure is the share of librosa
onsets that land within 15% of an eighth note of the grid (chance is 0.30). The same figure for the
real test clips, on their own beat grid, is the ceiling. Used to measure the rhythm features
(`rhythm_harmonics` in pipelines/dit.py); figures in the README's "Bundled models".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TOLERANCE = 0.15  # of an eighth note, either side of a grid line


def on_grid_share(y: np.ndarray, sample_rate: int, bpm: float, start_s: float = 0.0) -> float:
    """Share of librosa's onsets within TOLERANCE of an eighth note of the grid (NaN without onsets)."""
    import librosa

    onsets = librosa.onset.onset_detect(y=y, sr=sample_rate, units="time")
    if len(onsets) == 0:
        return float("nan")
    phase = ((onsets - start_s) / (60.0 / bpm / 2.0)) % 1.0
    return float(np.mean(np.minimum(phase, 1.0 - phase) < TOLERANCE))


def main(argv: list[str] | None = None) -> None:
    from pipelines.audio import load_audio
    from pipelines.generator import load_generator
    from pipelines.loops import beats
    from training.corpus import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=".cache/bundles/corpus")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--bpm", default="90,123,150")
    args = parser.parse_args(argv)

    data = Path(args.data)
    drums = [r for r in read_manifest(data, split="test") if r["params"].get("category") == "drums"]
    real = []
    for record in drums:
        audio = load_audio(data / record["path"])
        params = record["params"]
        real.append(
            on_grid_share(audio.samples.mean(0), audio.sample_rate, params["bpm"], params["beats_s"][0])
        )
    print(f"real test drum clips ({len(real)}): on the grid {np.nanmean(real):.2f}")

    gen = load_generator(args.bundle)
    for bpm in (float(b) for b in args.bpm.split(",")):
        for drop, label in (((), "with the grid"), (("beat", "bar"), "grid taken away")):
            shares = []
            for i, record in enumerate(drums[: args.prompts]):
                caption = record["captions"][3].split(",")[0] + ", " + record["params"]["instrument"]
                audio = beats(gen, caption, bars=2, bpm=bpm, seed=i, drop=drop, post=False)
                shares.append(on_grid_share(audio.samples.mean(0), audio.sample_rate, bpm))
            print(f"{args.bundle} at {bpm:g} BPM, {label}: on the grid {np.nanmean(shares):.2f}", flush=True)


if __name__ == "__main__":
    main()
