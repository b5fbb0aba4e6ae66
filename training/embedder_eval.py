"""Held-out figures of an audio embedder bundle: how well its audio and caption spaces line up on clips
it never trained on (`soundloom eval --model assets/judge --data CORPUS`).

Each clip of the split is embedded once (its audio) and its first caption once (its text):
- `audio_to_text_r1` / `r5`: the share of clips whose own caption is the nearest (among the 5 nearest)
  of all the split's captions; `chance_r1` is 1/N.
- `text_to_audio_r1`: the same the other way round.
- `group16_r1`: audio-to-caption top-1 within random groups of 16 clips (the training batch size, chance
  1/16), averaged over groups, comparable with the training log's `audio_text_top1`.
- `category_match`: the share of clips whose nearest caption belongs to a clip of the same category.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.errors import BadInput

GROUP = 16
BATCH = 16


def retrieval_figures(audio: torch.Tensor, text: torch.Tensor, categories: list[str], seed: int = 0) -> dict:
    """Retrieval figures from L2-normalised audio and text rows of the same clips (row i pairs with i)."""
    n = len(audio)
    assert n == len(text) == len(categories) and n >= 2
    sims = audio.float() @ text.float().T  # [audio, text]
    own = torch.arange(n)
    a2t = sims.argsort(dim=1, descending=True)
    t2a = sims.T.argsort(dim=1, descending=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    groups = [order[i : i + GROUP] for i in range(0, n - GROUP + 1, GROUP)] or [order]
    group_hits = []
    for g in groups:
        idx = torch.as_tensor(g)
        group_hits.append(float((sims[idx][:, idx].argmax(dim=1) == torch.arange(len(g))).float().mean()))
    nearest = a2t[:, 0].tolist()
    return {
        "clips": n,
        "audio_to_text_r1": float((a2t[:, 0] == own).float().mean()),
        "audio_to_text_r5": float((a2t[:, :5] == own[:, None]).any(dim=1).float().mean()),
        "text_to_audio_r1": float((t2a[:, 0] == own).float().mean()),
        "chance_r1": 1.0 / n,
        "group16_r1": float(np.mean(group_hits)),
        "group16_chance": 1.0 / min(GROUP, n),
        "category_match": float(np.mean([categories[j] == categories[i] for i, j in enumerate(nearest)])),
    }


def run(
    model: Path | str,
    data: Path | str,
    *,
    split: str = "test",
    json_out: Path | str | None = None,
    update_card: bool = False,
    verbose: bool = True,
) -> dict:
    """Everything `soundloom eval` does for an embedder bundle: embed the split, measure, print, record."""
    from pipelines.audio import load_audio
    from pipelines.bundle import update_card as write_card
    from pipelines.embedders import load_embedder
    from training.corpus import read_manifest

    model, data = Path(model), Path(data)
    embedder = load_embedder(model)
    records = [r for r in read_manifest(data, split=split) if r.get("captions")]
    if len(records) < 2:
        raise BadInput(
            f"The {split} split of '{data}' has fewer than 2 captioned clips; build a larger corpus."
        )
    audio_rows, text_rows = [], []
    with torch.inference_mode():
        for i in tqdm(range(0, len(records), BATCH), desc="embedding", unit="batch", disable=not verbose):
            batch = records[i : i + BATCH]
            audio_rows.append(embedder.embed_audio([load_audio(data / r["path"]) for r in batch]))
            text_rows.append(embedder.embed_text([r["captions"][0] for r in batch]))
    categories = [str(r.get("params", {}).get("category", "")) for r in records]
    figures = {"split": split, **retrieval_figures(torch.cat(audio_rows), torch.cat(text_rows), categories)}
    if verbose:
        for key, value in figures.items():
            print(f"{key:>18}  {value:.3f}" if isinstance(value, float) else f"{key:>18}  {value}")
    if json_out:
        from pipelines.atomic_files import write_atomic

        write_atomic(Path(json_out), json.dumps(figures, indent=2) + "\n")
    if update_card:
        write_card(model, {"eval": figures})
    return figures
