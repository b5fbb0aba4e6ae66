"""The tiny `toy` recipe: a small MLP on synthetic data, so the trainer's tests run in seconds."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from pipelines.bundle import save_bundle
from training.trainer import sample_seed


class ToyRecipe:
    """A small MLP regressing a fixed random function; example i's data is a pure function of i (for tests).

    Config: dim, hidden, size (examples), noise (input noise, drawn for each example from
    `sample_seed(seed, step, index)`, so any process layout sees the same), data_seed, and step_delay_s
    (sleep in every loss, so tests can catch a run mid-flight).
    """

    name = "toy"
    devices = ("cpu", "cuda", "mps")

    def __init__(self, config: dict, data_dir: Path):
        self.seed = int(config.get("seed", 0))
        self.dim = int(config.get("dim", 8))
        self.hidden = int(config.get("hidden", 32))
        self.size = int(config.get("size", 256))
        self.noise = float(config.get("noise", 0.05))
        self.step_delay_s = float(config.get("step_delay_s", 0.0))
        self.data_seed = int(config.get("data_seed", 1234))
        self.config = {"dim": self.dim, "hidden": self.hidden}
        teacher = torch.Generator().manual_seed(self.data_seed)
        self.teacher = torch.randn(self.dim, self.dim, generator=teacher) / math.sqrt(self.dim)
        self.model = nn.Sequential(
            nn.Linear(self.dim, self.hidden),
            nn.LayerNorm(self.hidden),
            nn.GELU(),
            nn.Linear(self.hidden, self.dim),
        )

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def dataset_size(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.data_seed * 1_000_003 + index)
        x = torch.randn(self.dim, generator=g)
        return x, torch.sin(2.0 * x @ self.teacher)

    def loss(
        self, step: int, indices: list[int], modules: dict[str, nn.Module]
    ) -> tuple[Tensor, dict[str, float]]:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        x, y = (torch.stack(t) for t in zip(*(self.example(i) for i in indices)))
        noise = [
            torch.randn(self.dim, generator=torch.Generator().manual_seed(sample_seed(self.seed, step, i)))
            for i in indices
        ]
        device = next(modules["model"].parameters()).device
        x, y = (x + self.noise * torch.stack(noise)).to(device), y.to(device)
        pred = modules["model"](x).float()
        loss = torch.nn.functional.mse_loss(pred, y)
        return loss, {"mae": float((pred - y).abs().mean().detach())}

    def preview(self, step: int, modules: dict[str, nn.Module], out_dir: Path) -> None:
        x, y = self.example(0)
        pred = modules["model"](x[None].to(next(modules["model"].parameters()).device))[0].cpu()
        (out_dir / "preview.json").write_text(
            json.dumps({"step": step, "pred": pred.tolist(), "target": y.tolist()})
        )

    def export(self, modules: dict[str, nn.Module], out_dir: Path, card: dict | None = None) -> None:
        tensors = {"model": modules["model"].state_dict()}
        save_bundle(out_dir, self.config, tensors, dtype=torch.float32, kind="toy", card=card)
