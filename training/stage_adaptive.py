"""Recipes `stage-adaptive`, `random-threshold` and `fixed-schedule`: rectified-flow training of the
generator's DiT (as `static`) whose emphasis moves, as training goes, from learning what a prompt means
to refining detail, driven by a regime variable r in [0, 1].

    soundloom train --recipe stage-adaptive --data DIR --out RUN --config training/configs/stage_adaptive.json

The formulation (ours: the paper behind the method gives no equations we could obtain; this follows its
abstract and the works it builds on: REPA, the dispersive loss, SD3's logit-normal timesteps). Every
constant is a setting in DEFAULTS, where its default is explained.

1. The regime variable r (`RegimeTracker`). Every probe_every steps the live model predicts the clean
   latent in one step, x0_hat = x_t - t v(x_t, t, c), for a fixed probe set: probe_clips val clips
   (train clips when the val split has none) cropped to segment_frames, their first captions, one fixed
   noise draw (PROBE_SEED) and the fixed times probe_times. The SSL embedder (setting ssl_embedder; never
   the judge) embeds x0_hat and the clean latent; D = 1 - cosine between them, averaged over clips and
   times. Then, over the trailing window of probes at steps >= step / window_ratio (an octave by default:
   a window that widens with the run, so late fits see more probes instead of a shrinking log-step span):
     - log D is smoothed by Tukey's running median of 3 (`median3`: one bad probe never counts),
     - slope = Theil-Sen slope of log D against log(1 + step) (the median of pairwise slopes),
     - descent = -slope, steepest = the largest descent so far (from regime_warmup on),
     - q_raw = clip(1 - descent / max(steepest, min_descent), 0, 1); q = EMA of q_raw (regime_smoothing),
     - r = max(r, clip((q - q_low) / (q_high - q_low), 0, 1)): r never goes back.
   Departure: the issue fits D against log step; we fit log D. Then the slope is scale-free (an
   elasticity), so a power law D ~ step^-a has the constant slope -a and reads as "still learning" however
   small D gets, where dD/dlog step would shrink with D and read as flattening. min_descent gives "flat" an
   absolute meaning (D falling less than ~3% per doubling of steps), so a curve that is flat from the start
   reaches r = 1 instead of being compared with its own noise. r stays 0 before regime_warmup steps, while
   the lr warms up and the first D values say little.
   The probe uses the LIVE model, not the EMA: r drives what the live model trains on next, and the EMA
   (decay 0.999) lags ~1000 steps, which on a log-step axis would delay every early reading. The noise is
   handled by the robust fit and the smoothing instead. The SSL embedder reads codec latents
   (pipelines/embedders.py), so x0_hat is embedded as a latent; the issue's decode-then-embed would decode
   and re-encode for nothing.
2. Decayed SSL guidance. A projection head (`AlignHead`, a recipe module) maps the DiT's token features
   after its first align_depth blocks (what `DiT.hidden_states(..., depth=align_depth)` returns; taken here
   by a forward hook on the training forward, so no second pass) per token through a linear layer, averages
   the tokens of the clip's frames, maps the mean by an MLP, and compares it with the SSL embedding of the
   clean crop:
   L_align = -cos. The DiT receives lambda(r) * dL_align, lambda(r) = lambda0 * (1 - r / lambda_cutoff) for
   r < lambda_cutoff and 0 past it; the total loss carries lambda(r) * L_align. The head itself always
   learns with weight 1 (Adam makes its step size independent of that weight), so the logged align_cos
   stays meaningful when lambda is 0 or guidance is switched off: it then reads how well the DiT's features
   still predict the SSL ones. Departure from REPA: our SSL embedder gives one vector per clip (attention
   pooled), so the alignment is clip-level, not patch-level.
   SSL features of the clean crops come from the latent cache: each crop is embedded alone, in float32,
   and kept in memory under a hash of its latent (ssl_cache_size entries). Most corpus clips are shorter
   than segment_frames, so their crop is the whole clip and is embedded once per run; longer clips' random
   crops are embedded when drawn. Embedding alone makes each feature independent of its batch, so a resumed
   run sees the same numbers.
3. Self-adaptive timesteps. t = sigmoid(loc(r) + t_scale * n) with probability 1 - t_uniform, else
   t ~ U(0, 1) (the floor: no noise range starves); loc(r) = t_loc_early + r (t_loc_late - t_loc_early)
   moves from the noisy side (t = 1 is noise) to the clean side. Logged: the distribution's exact mass in
   t_bins equal bins (t_hist0..), and the flow loss in the same bins (loss_tbin0.., absent when empty).
4. Structure-aware regularisation. Every group_every steps each DiT block is described by its parameter
   update since the previous check: per parameter tensor, log(rms update / rms weight), measured on a
   fixed random subset of sketch_coords coordinates (`BlockSketch`, a buffer-only recipe module, so the
   previous check's weights travel with the checkpoints). The blocks are cut into `groups` contiguous
   groups by dynamic programming (least within-group squared distance to the group mean), and the grouping
   is compared with the previous one by the adjusted Rand index. After stable_checks consecutive checks
   with ARI >= ari_stable, and with r >= r_structure, the structure loss latches on (once; the grouping of
   that moment is kept): L_struct = mean over group pairs and tokens of cos^2 between the groups'
   contributions to the residual stream (a group's output tokens minus its input tokens), a decorrelation
   that lets each group specialise, weighted by structure_weight ramped up over structure_ramp steps.
   Departure: "dispersive" in the sense of pushing the groups' features apart (decorrelating them), not the
   dispersive loss's push between samples of a batch, which would act within one feature space.

Controls (the same three mechanisms, another r): `random-threshold` drives them by a random monotone
curve: r is piecewise linear through control_knots switch points drawn uniformly (from the run's seed) in
control_range, the steps over which a measured run's r rose (`regime_range` reads them from its
metrics.jsonl); `fixed-schedule` drives them by r = step / schedule_steps. Both still probe and log D and
r_measured. Ablations: use_guidance, use_timesteps and use_structure switch each mechanism off (guidance
off: lambda = 0, the head still learns and logs; timesteps off: static's logit-normal(t_mean, t_std);
structure off: groupings are measured and logged, the loss never latches).

The comparison the issue asks for (not run here; `soundloom experiment stage-adaptive` will automate it),
per seed S in 0 1 2, at equal steps N, on the val split:
    C=training/configs/stage_adaptive.json
    soundloom train --recipe static --config training/configs/static.json --data D --out R/static-S \
        --steps N --set seed=S
    soundloom train --recipe stage-adaptive --config $C --data D --out R/sa-S --steps N --set seed=S
    # the steps where sa-S's r rose: python -c "from training.stage_adaptive import regime_range as f;
    #     print(list(f('R/sa-S/metrics.jsonl')))"  -> [A, B]
    soundloom train --recipe random-threshold --config $C --data D --out R/rt-S --steps N --set seed=S \
        --set 'recipe.control_range=[A,B]'
    soundloom train --recipe fixed-schedule --config $C --data D --out R/fs-S --steps N --set seed=S \
        --set recipe.schedule_steps=N
    # each mechanism alone (the other two off), e.g. guidance alone:
    soundloom train --recipe stage-adaptive --config $C --data D --out R/sa-guidance-S --steps N \
        --set seed=S --set recipe.use_timesteps=false --set recipe.use_structure=false
then `soundloom bundle export` each run and `soundloom eval --model BUNDLE --prompts ...` for FD against step.

Cost at the bundled sizes (training/configs/stage_adaptive.json: DiT dim 256 x 8 blocks, batch 16, 259
frames), counted in FLOPs with torch.utils.flop_counter because this machine's wall-clock timings swing
~3x with its background load: a static step (forward + backward) is 68 GFLOP; the hooks, the head and the
structure term add 2.4%; a probe (16 clips x 3 times, forward only, plus their SSL embeddings) is 92 GFLOP,
1.35% of the steps at probe_every 100; SSL features of a clean crop cost 0.5 GFLOP (11% of a step for a
batch of uncached crops), paid once per clip and then only for the ~9% of corpus clips longer than
segment_frames: ~1%; a grouping check reads 8 x ~11k coordinates (milliseconds) every 500 steps. About
5% of step time in all, against the issue's 15% budget.

Metrics (besides the trainer's and static's frac_*): loss_rf (the flow loss alone), r, r_measured,
regime_q, probe_d, d_slope (from the first fit on), align_lambda, align_cos, t_loc, t_hist0.., loss_tbin0..,
group_start1.. (first block of each group but the first, from the first grouping on), group_ari (from the
second on), group_stable, struct_on, struct_step (-1 before the latch), struct_weight, struct_loss (the
decorrelation under the grouping in use: the latched one, else the newest, else equal parts).
Everything these depend on is the recipe's state (state_dict), so a resumed run continues exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.dit import DiT, DiTConfig
from pipelines.errors import BadInput
from pipelines.samplers import latent_noise, noise_to
from training.recipes import recipe_settings
from training.static_recipe import DEFAULTS as STATIC_DEFAULTS
from training.static_recipe import StaticRecipe, logit_normal, module_device, to_device

if TYPE_CHECKING:
    from pipelines.embedders import LatentEmbedder

DEFAULTS = {
    **STATIC_DEFAULTS,  # data, conditions and dropout as `static`; t_mean / t_std only with use_timesteps off
    "ssl_embedder": None,  # SSL embedder bundle (kind embedder, arch latent); None: assets/ssl-embedder
    # ---- the regime variable
    "probe_every": 100,  # steps between probes (~1 train step of compute each: ~1% at the default)
    "probe_clips": 16,  # val clips in the probe set, spread over the split
    "probe_times": [
        0.5,
        0.7,
        0.9,
    ],  # flow times of the one-step predictions: mostly noise, where meaning shows
    "window_ratio": 2.0,  # the slope is fitted over the probes at steps >= step / window_ratio (an octave)
    "window_min_probes": 8,  # ... once the window holds at least this many (fewer make the first fits noisy)
    "regime_warmup": 1000,  # r, q and the steepest descent start moving at this step (the lr warms up to 500)
    "min_descent": 0.05,  # a descent of log D per log step below this is flat (D -3% per doubling)
    "regime_smoothing": 0.7,  # q = s q + (1 - s) q_raw at each fit
    "q_low": 0.1,  # q below this is noise: r = 0
    "q_high": 0.9,  # q above this is refinement: r = 1
    # ---- the controls' r
    "control_range": None,  # random-threshold: [first, last] step of the measured r's rise (regime_range)
    "control_knots": 3,  # random-threshold: switch points of the random monotone curve
    "schedule_steps": None,  # fixed-schedule: r = step / schedule_steps (the run's steps)
    # ---- decayed SSL guidance
    "use_guidance": True,
    "align_depth": 3,  # the head reads the tokens after this many blocks (REPA: about a third of the way in)
    "align_hidden": 512,  # the head's MLP width
    "lambda0": 0.5,  # the alignment weight at r = 0 (REPA's)
    "lambda_cutoff": 0.7,  # lambda falls linearly to 0 at this r and stays off past it
    "ssl_cache_size": 100000,  # clean-crop SSL features kept in memory (128 floats each)
    # ---- self-adaptive timesteps
    "use_timesteps": True,
    "t_loc_early": 1.0,  # logit-normal location at r = 0: median t = 0.73 (noisy: meaning)
    "t_loc_late": -1.0,  # ... at r = 1: median t = 0.27 (clean: detail)
    "t_scale": 1.0,  # logit-normal scale
    "t_uniform": 0.1,  # the uniform floor's share of the draws
    "t_bins": 8,  # bins of the logged timestep histogram and loss per bin
    # ---- structure-aware regularisation
    "use_structure": True,
    "group_every": 500,  # steps between groupings of the blocks (their update over these steps)
    "groups": 3,  # contiguous groups of blocks
    "sketch_coords": 1024,  # coordinates per parameter tensor that describe its update
    "ari_stable": 0.9,  # a grouping is stable when its ARI with the previous one reaches this
    "stable_checks": 3,  # ... this many checks in a row (with r >= r_structure) latch the loss on
    "r_structure": 0.3,
    "structure_weight": 0.1,  # the structure loss's weight after its ramp
    "structure_ramp": 1000,  # steps from the latch to the full weight
}
REGIMES = ("measured", "random", "linear")
PROBE_SEED = 40404  # the probe set's noise: fixed, so every probe measures the same thing
SKETCH_SEED = 40405  # which coordinates describe each block's parameter tensors
CONTROL_SEED_TAG = 40406  # mixed with the run's seed for the random-threshold curve
PROBE_CHUNK = 16  # probe clips per DiT forward (bounds memory)
DESCRIPTOR_EPS = 1e-8


# ---------------------------------------------------------------- 1. the regime variable


def median3(y: np.ndarray) -> np.ndarray:
    """Tukey's running median of 3: each inner value becomes the median of itself and its neighbours, each
    end the median of itself, its smoothed neighbour and the line through the two smoothed neighbours
    (so a straight line is kept exactly, and one outlier anywhere never survives). Fewer than 4 values are
    returned as they are."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 4:
        return y.copy()
    out = y.copy()
    out[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    out[0] = np.median([y[0], out[1], 2 * out[1] - out[2]])
    out[-1] = np.median([y[-1], out[-2], 2 * out[-2] - out[-3]])
    return out


def theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The median of the slopes between every pair of points with different x (robust to outliers)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    keep = dx != 0
    assert keep.any(), "a slope needs two points at different x"
    return float(np.median((y[j] - y[i])[keep] / dx[keep]))


@dataclass
class RegimeTracker:
    """r from the probes' discrepancies D (see the module docstring, 1.); JSON-able via asdict."""

    history: list = field(default_factory=list)  # [step, D] of the probes in the trailing window
    d: float | None = None  # the newest D
    slope: float | None = None  # the newest fitted slope of log D against log(1 + step)
    steepest: float = 0.0  # the largest descent (-slope) since regime_warmup
    q: float = 0.0  # smoothed normalised flatness
    r: float = 0.0

    def update(self, step: int, d: float, cfg: dict) -> float:
        """Add the probe of `step` (D = d) and return the new r."""
        assert d > 0, "D = 1 - cosine is positive unless the prediction is perfect"
        self.d = float(d)
        self.history.append([int(step), float(d)])
        self.history = [h for h in self.history if h[0] >= step / cfg["window_ratio"]]
        if len(self.history) < cfg["window_min_probes"]:
            return self.r
        steps, ds = np.array(self.history).T
        self.slope = theil_sen_slope(np.log1p(steps), median3(np.log(ds)))
        if step < cfg["regime_warmup"]:
            return self.r
        descent = -self.slope
        self.steepest = max(self.steepest, descent)
        q_raw = min(max(1.0 - descent / max(self.steepest, cfg["min_descent"]), 0.0), 1.0)
        s = cfg["regime_smoothing"]
        self.q = s * self.q + (1.0 - s) * q_raw
        mapped = (self.q - cfg["q_low"]) / (cfg["q_high"] - cfg["q_low"])
        self.r = max(self.r, min(max(mapped, 0.0), 1.0))
        return self.r


def control_knots(seed: int, low: float, high: float, knots: int) -> list[float]:
    """The random-threshold curve's switch points: `knots` steps uniform in [low, high], sorted."""
    rng = np.random.default_rng([CONTROL_SEED_TAG, seed])
    return sorted(float(v) for v in rng.uniform(low, high, knots))


def random_curve(step: int, low: float, knots: list[float]) -> float:
    """A monotone r: 0 up to `low`, then linear through (knot_i, i / len(knots)), 1 after the last knot."""
    xs = [float(low)] + list(knots)
    ys = [i / len(knots) for i in range(len(knots) + 1)]
    return float(np.interp(step, xs, ys))


def regime_range(metrics: Path | str, low: float = 0.05, high: float = 0.95) -> tuple[int, int]:
    """The steps over which a stage-adaptive run's r rose: the first logged step with r > low and the
    first with r >= high (the last logged step when r never got there): random-threshold's control_range."""
    from training.jsonl import read_jsonl

    rows = [row for row in read_jsonl(Path(metrics), tolerate_torn_tail=True) if "r" in row]
    if not rows:
        raise BadInput(f"{metrics} holds no regime variable r; pass the metrics of a stage-adaptive run.")
    first = next((row["step"] for row in rows if row["r"] > low), None)
    if first is None:
        raise BadInput(
            f"The regime variable in {metrics} never rose above {low}; it gives no range to draw from."
        )
    last = next((row["step"] for row in rows if row["r"] >= high), rows[-1]["step"])
    return int(first), int(max(last, first))


# ---------------------------------------------------------------- 2. decayed SSL guidance


def guidance_weight(r: float, lambda0: float, cutoff: float) -> float:
    """lambda(r): lambda0 at r = 0, falling linearly to 0 at r = cutoff, 0 past it."""
    return 0.0 if r >= cutoff else lambda0 * (1.0 - r / cutoff)


class AlignHead(nn.Module):
    """DiT tokens [B, N, dim] -> per token LayerNorm, linear, SiLU -> mean over the clip's tokens -> MLP ->
    [B, out] (not normalised). Only the first layer runs per token: a per-token MLP of the same width
    would cost ~7% of a training step at the bundled sizes, this one ~2%."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.token = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out))

    def forward(self, h: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        weights = token_mask.to(h.dtype)[..., None]
        pooled = (self.token(h) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.out(pooled).float()


def token_mask(lengths: torch.Tensor, frames: int, patch: int) -> torch.Tensor:
    """[B, ceil(frames / patch)] True where a token covers at least one of the clip's frames."""
    n = -(-frames // patch)
    return torch.arange(n, device=lengths.device)[None] * patch < lengths[:, None]


def scaled_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; its gradient times `scale` in the backward pass (no graph when scale is 0)."""
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


# ---------------------------------------------------------------- 3. self-adaptive timesteps


def timestep_location(r: float, early: float, late: float) -> float:
    return early + r * (late - early)


def sample_timesteps(n: int, loc: float, scale: float, uniform: float) -> torch.Tensor:
    """n flow times: logit-normal(loc, scale), or U(0, 1) with probability `uniform` (torch's global RNG;
    three draws every call, so the stream does not depend on the outcome)."""
    floor, flat, normal = torch.rand(n) < uniform, torch.rand(n), torch.randn(n)
    return torch.where(floor, flat, torch.sigmoid(loc + scale * normal))


def timestep_histogram(loc: float, scale: float, uniform: float, bins: int) -> list[float]:
    """The exact probability of each of `bins` equal bins of [0, 1] under sample_timesteps."""

    def cdf(t: float) -> float:  # of the logit-normal
        if t <= 0.0:
            return 0.0
        if t >= 1.0:
            return 1.0
        z = (math.log(t / (1.0 - t)) - loc) / scale
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    edges = [i / bins for i in range(bins + 1)]
    return [uniform / bins + (1.0 - uniform) * (cdf(b) - cdf(a)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------- 4. structure-aware regularisation


def adjusted_rand_index(a: list[int], b: list[int]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items (1: the same partition,
    ~0: as alike as chance). When chance agreement is already total (e.g. both put everything in one
    group) it is 1 for equal partitions and 0 otherwise."""
    assert len(a) == len(b) and len(a) > 0
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x):
        return float((x * (x - 1) // 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    best = (rows + cols) / 2.0
    if best == expected:
        return 1.0 if index == rows == cols else 0.0
    return (index - expected) / (best - expected)


def contiguous_groups(features: np.ndarray, groups: int) -> list[int]:
    """Labels 0..k-1 (k = min(groups, items)) cutting the rows of `features` [items, F] into k contiguous
    runs with the least total squared distance to their run's mean (dynamic programming; ties: earlier cuts)."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = min(groups, n)
    # cost[i, j]: squared distance to the mean of rows i..j-1, from prefix sums
    s1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])
    s2 = np.concatenate([[0.0], np.cumsum((x * x).sum(1))])
    cost = np.full((n + 1, n + 1), np.inf)
    for i in range(n):
        for j in range(i + 1, n + 1):
            seg = s1[j] - s1[i]
            cost[i, j] = s2[j] - s2[i] - (seg * seg).sum() / (j - i)
    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            options = best[g - 1, g - 1 : j] + cost[g - 1 : j, j]
            cut[g, j] = g - 1 + int(np.argmin(options))
            best[g, j] = options.min()
    labels = [0] * n
    j = n
    for g in range(k, 0, -1):
        i = cut[g, j]
        labels[i:j] = [g - 1] * (j - i)
        j = i
    return labels


def group_starts(labels: list[int]) -> list[int]:
    """The first item of each group but the first (labels are contiguous and increasing)."""
    return [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]


def equal_groups(items: int, groups: int) -> list[int]:
    """Contiguous groups of (nearly) equal size: the grouping the structure loss is logged under before any."""
    k = min(groups, items)
    return [i * k // items for i in range(items)]


def group_decorrelation(contributions: list[torch.Tensor]) -> torch.Tensor:
    """Mean over group pairs and tokens of cos^2 between the groups' contributions [B, N, dim] (0 for one)."""
    units = [F.normalize(c.float(), dim=-1, eps=1e-6) for c in contributions]
    terms = [
        (units[i] * units[j]).sum(-1).square().mean()
        for i in range(len(units))
        for j in range(i + 1, len(units))
    ]
    if not terms:
        return contributions[0].new_zeros((), dtype=torch.float32)
    return torch.stack(terms).mean()


class BlockSketch(nn.Module):
    """A fixed random subset of each DiT block's parameter coordinates, and their values at the last
    grouping check (a buffer: it is saved with the checkpoints and has nothing to train)."""

    def __init__(self, dit: DiT, coords: int):
        super().__init__()
        shapes = [p.numel() for p in dit.blocks[0].parameters()]
        g = torch.Generator().manual_seed(SKETCH_SEED)
        self.index = [torch.randperm(m, generator=g)[: min(coords, m)] for m in shapes]
        total = sum(len(i) for i in self.index)
        self.register_buffer("values", torch.zeros(len(dit.blocks), total))

    def read(self, dit: DiT) -> torch.Tensor:
        """The sketched coordinates of every block now: [blocks, coords in all]."""
        rows = []
        for block in dit.blocks:
            params = [p.detach().float().flatten() for p in block.parameters()]
            rows.append(torch.cat([p[i.to(p.device)] for p, i in zip(params, self.index)]))
        return torch.stack(rows)

    def descriptors(self, now: torch.Tensor) -> np.ndarray:
        """Per block and parameter tensor, log(rms update since the stored values / rms weight): [blocks, tensors]."""
        feats, start = [], 0
        for i in self.index:
            part = slice(start, start + len(i))
            start += len(i)
            update = (now[:, part] - self.values[:, part]).square().mean(1).sqrt()
            weight = now[:, part].square().mean(1).sqrt()
            feats.append(torch.log(update + DESCRIPTOR_EPS) - torch.log(weight + DESCRIPTOR_EPS))
        return torch.stack(feats, 1).cpu().double().numpy()


@dataclass
class StructureMonitor:
    """Groupings of the blocks, their stability and the latch (see the module docstring, 4.); JSON-able."""

    labels: list | None = None  # the newest grouping
    ari: float | None = None  # its ARI with the one before
    stable: int = 0  # consecutive checks with ari >= ari_stable
    on: bool = False
    on_step: int | None = None
    on_labels: list | None = None  # the grouping the loss uses, kept from the latch

    def check(self, step: int, features: np.ndarray, r: float, cfg: dict, enabled: bool = True) -> None:
        labels = contiguous_groups(features, cfg["groups"])
        if self.labels is not None:
            self.ari = adjusted_rand_index(self.labels, labels)
            self.stable = self.stable + 1 if self.ari >= cfg["ari_stable"] else 0
        self.labels = labels
        if enabled and not self.on and self.stable >= cfg["stable_checks"] and r >= cfg["r_structure"]:
            self.on, self.on_step, self.on_labels = True, int(step), list(labels)

    def weight(self, step: int, cfg: dict) -> float:
        """The structure loss's weight at `step`: 0 before the latch, then a linear ramp to structure_weight."""
        if not self.on:
            return 0.0
        ramp = cfg["structure_ramp"]
        share = 1.0 if ramp <= 0 else min(max((step - self.on_step) / ramp, 0.0), 1.0)
        return cfg["structure_weight"] * share


# ---------------------------------------------------------------- the recipes


class StageAdaptiveRecipe(StaticRecipe):
    name = "stage-adaptive"
    regime = "measured"

    def __init__(self, config: dict, data_dir: Path):
        config = dict(config or {})
        self.seed = int(config.get("seed", 0))
        cfg = recipe_settings(self.name, config, DEFAULTS)
        self._check_settings(cfg)  # before the codec and text encoder load, so a typo is refused at once
        super().__init__({key: cfg[key] for key in STATIC_DEFAULTS}, data_dir)
        self.config = cfg
        self.ssl_path = Path(cfg["ssl_embedder"]) if cfg["ssl_embedder"] else default_ssl_path()
        with torch.random.fork_rng(devices=[]):  # keep the teacher's construction out of the seeded stream
            self.ssl = self._load_ssl()
        self.head = AlignHead(self.dit_config.dim, cfg["align_hidden"], self.ssl.dim)
        self.sketch = BlockSketch(self.model, cfg["sketch_coords"])
        self.knots = (
            control_knots(self.seed, *cfg["control_range"], cfg["control_knots"])
            if self.regime == "random"
            else None
        )
        self._probe: dict | None = None
        self._ssl_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        # the recipe's state (state_dict)
        self.tracker = RegimeTracker()
        self.monitor = StructureMonitor()
        self.snapshot_step: int | None = None  # when sketch.values were read (None: never)
        self.probe_identity: dict | None = None  # the probe set a resumed run must find again

    # ---------------------------------------------------------------- settings

    def _check_settings(self, cfg: dict) -> None:
        name = self.name

        def number(key: str) -> bool:
            v = cfg[key]
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        def whole(key: str, least: int = 1) -> bool:
            v = cfg[key]
            return isinstance(v, int) and not isinstance(v, bool) and v >= least

        for key in ("use_guidance", "use_timesteps", "use_structure"):
            if not isinstance(cfg[key], bool):
                raise BadInput(f"The {name} setting {key} must be true or false (got {cfg[key]!r}).")
        floats = [k for k, v in DEFAULTS.items() if isinstance(v, float) and k not in STATIC_DEFAULTS]
        for key in floats + ["t_mean", "t_std"]:
            if not number(key):
                raise BadInput(f"The {name} setting {key} must be a number (got {cfg[key]!r}).")
        wholes = {
            "probe_every": 1,
            "probe_clips": 1,
            "window_min_probes": 4,
            "regime_warmup": 0,
            "control_knots": 1,
            "align_depth": 1,
            "align_hidden": 1,
            "ssl_cache_size": 0,
            "t_bins": 1,
            "group_every": 1,
            "groups": 1,
            "sketch_coords": 1,
            "stable_checks": 1,
            "structure_ramp": 0,
        }
        for key, least in wholes.items():
            if not whole(key, least):
                raise BadInput(
                    f"The {name} setting {key} must be a whole number of at least {least} (got {cfg[key]!r})."
                )
        times = cfg["probe_times"]
        if not (
            isinstance(times, list)
            and times
            and all(isinstance(t, int | float) and not isinstance(t, bool) and 0.0 < t <= 1.0 for t in times)
        ):
            raise BadInput(
                f"The {name} setting probe_times must be a list of flow times in (0, 1] (got {times!r})."
            )
        if not isinstance(cfg["dit"], dict):
            raise BadInput(f"The {name} setting dit must be a table of DiT settings (got {cfg['dit']!r}).")
        depth = cfg["dit"].get("depth", DiTConfig.__dataclass_fields__["depth"].default)
        depth = (
            depth if isinstance(depth, int) else cfg["align_depth"]
        )  # a bad depth is DiTConfig's to refuse
        checks = [
            (cfg["window_ratio"] > 1.0, "window_ratio must be above 1"),
            (cfg["min_descent"] > 0.0, "min_descent must be positive"),
            (0.0 <= cfg["regime_smoothing"] < 1.0, "regime_smoothing must be in [0, 1)"),
            (
                0.0 <= cfg["q_low"] < cfg["q_high"] <= 1.0,
                "q_low and q_high must satisfy 0 <= q_low < q_high <= 1",
            ),
            (cfg["align_depth"] <= depth, f"align_depth must be at most the DiT's depth ({depth})"),
            (cfg["lambda0"] >= 0.0, "lambda0 must be 0 or more"),
            (0.0 < cfg["lambda_cutoff"] <= 1.0, "lambda_cutoff must be above 0 and at most 1"),
            (cfg["t_scale"] > 0.0, "t_scale must be positive"),
            (0.0 <= cfg["t_uniform"] <= 1.0, "t_uniform must be a probability between 0 and 1"),
            (-1.0 <= cfg["ari_stable"] <= 1.0, "ari_stable must be between -1 and 1"),
            (0.0 <= cfg["r_structure"] <= 1.0, "r_structure must be between 0 and 1"),
            (cfg["structure_weight"] >= 0.0, "structure_weight must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInput(f"In the {name} settings, {message}.")
        if self.regime == "random":
            span = cfg["control_range"]
            if not (
                isinstance(span, list)
                and len(span) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in span)
                and 0 <= span[0] < span[1]
            ):
                raise BadInput(
                    f"The {name} recipe needs control_range: [first, last] step of a stage-adaptive run's rise "
                    f"in r, first < last (got {span!r}); training.stage_adaptive.regime_range reads it from "
                    "that run's metrics.jsonl."
                )
        if self.regime == "linear" and not whole("schedule_steps"):
            raise BadInput(
                f"The {name} recipe needs schedule_steps, the run's length in steps (got {cfg['schedule_steps']!r})."
            )

    def _load_ssl(self):
        from pipelines.bundle import bundle_hash, load_bundle
        from pipelines.embedders import LatentEmbedder, load_embedder

        if not (self.ssl_path / "model.json").is_file():
            raise BadInput(
                f"The {self.name} recipe needs the SSL embedder bundle, and {self.ssl_path} has none; build it "
                "with `make bundles` or set recipe.ssl_embedder to one."
            )
        bundle = load_bundle(self.ssl_path)
        role = str(bundle.card.get("role", ""))
        if bundle.kind != "embedder" or role.startswith("judge") or bundle.config.get("arch") != "latent":
            raise BadInput(
                f"{self.ssl_path} is not the SSL embedder (a latent embedder bundle); the judge never teaches, "
                "so set recipe.ssl_embedder to the ssl-embedder bundle."
            )
        embedder = load_embedder(self.ssl_path)
        assert isinstance(embedder, LatentEmbedder)
        codec_sha = bundle.meta.get("components", {}).get("codec", {}).get("sha256")
        if (
            codec_sha != bundle_hash(self.codec.bundle_path)
            or embedder.net.cfg.channels != self.codec.channels
        ):
            raise BadInput(
                f"The SSL embedder {self.ssl_path} reads another codec's latents than {self.codec.bundle_path}; "
                "use the SSL embedder trained on this codec's latent cache."
            )
        return embedder

    # ---------------------------------------------------------------- the regime variable

    def regime_at(self, step: int) -> float:
        """The r that drives the mechanisms at `step`: the measured one, or the control's."""
        if self.regime == "random":
            return random_curve(step, self.config["control_range"][0], self.knots)
        if self.regime == "linear":
            return min(step / self.config["schedule_steps"], 1.0)
        return self.tracker.r

    def probe_set(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The probe clips (first segment_frames of each), captions, masks, fixed noise and clean embeddings,
        on `device` (built on the CPU, the noise from its own fixed generator; embedded on `device`)."""
        if self._probe is not None and self._probe["x0"].device == torch.device(device):
            return self._probe
        from training.latent_cache import is_current, latent_root, read_entry

        cfg, frames = self.config, self.config["segment_frames"]
        split = "val"
        records = [r for r in self._split_records("val") if r["captions"]]
        if not records:
            split, records = "train", [r for r in self._split_records("train") if r["captions"]]
        if not records:
            raise BadInput(
                f"The corpus in {self.data_dir} has no clip with a caption to probe the model with."
            )
        records = records[:: max(1, len(records) // cfg["probe_clips"])][: cfg["probe_clips"]]
        identity = {
            "split": split,
            "ids": [r["id"] for r in records],
            "frames": frames,
            "times": [float(t) for t in cfg["probe_times"]],
            "seed": PROBE_SEED,
        }
        if self.probe_identity is not None and self.probe_identity != identity:
            raise BadInput(
                f"The probe set of this run ({len(self.probe_identity['ids'])} {self.probe_identity['split']} "
                "clips) is not in the corpus as it is now; resume with the corpus and settings the run began with."
            )
        root = latent_root(self.data_dir, self.codec)
        x0 = self.silence.expand(-1, frames).repeat(len(records), 1, 1)
        lengths = []
        for i, record in enumerate(records):
            path = root / f"{record['id']}.safetensors"
            if not is_current(path):
                raise BadInput(
                    f"The latent cache in {root} lacks the {split} clip {record['id']}; run "
                    f"`soundloom dataset encode {self.data_dir}` first."
                )
            z = read_entry(path)["z"]
            n = min(frames, z.shape[1])
            x0[i, :, :n] = z[:, :n].float()
            lengths.append(n)
        lengths = torch.tensor(lengths)
        text, text_mask = self.embed_text([r["captions"][0] for r in records])
        g = torch.Generator().manual_seed(PROBE_SEED)
        probe = {
            "x0": x0,
            "noise": latent_noise(tuple(x0.shape), g, float(self.config["noise_offset"])),
            "mask": torch.arange(frames)[None] < lengths[:, None],
            "seconds": lengths.float() / self.codec.latent_rate,
            "text": text,
            "text_mask": text_mask,
        }
        probe = to_device(probe, device)
        with torch.autocast(torch.device(device).type, enabled=False), torch.no_grad():
            probe["clean"] = self.teacher(device).embed_latents(probe["x0"], probe["mask"])
        self.probe_identity = identity
        self._probe = probe
        return self._probe

    def _split_records(self, split: str) -> list[dict]:
        from training.corpus import read_manifest

        records = read_manifest(self.data_dir, split=split)
        wanted = self.config["categories"]
        if wanted is not None:
            records = [r for r in records if r.get("params", {}).get("category") in set(wanted)]
        return records

    @torch.no_grad()
    def probe_discrepancy(self, dit: DiT) -> float:
        """D: 1 - cosine between the SSL embeddings of the one-step predictions and of the clean clips."""
        device = module_device(dit)
        p = self.probe_set(device)
        total, count = 0.0, 0
        for t in self.config["probe_times"]:
            for start in range(0, p["x0"].shape[0], PROBE_CHUNK):
                rows = slice(start, start + PROBE_CHUNK)
                x_t = noise_to(p["x0"][rows], p["noise"][rows], float(t))
                tt = torch.full((x_t.shape[0],), float(t), device=device)
                v = dit(
                    x_t, tt, text=p["text"][rows], text_mask=p["text_mask"][rows], seconds=p["seconds"][rows]
                )
                x0_hat = (x_t - float(t) * v.float()).float()
                with torch.autocast(x0_hat.device.type, enabled=False):
                    emb = self.teacher(device).embed_latents(x0_hat, p["mask"][rows])
                total += float((1.0 - (emb * p["clean"][rows]).sum(-1)).sum())
                count += x_t.shape[0]
        return max(total / count, 1e-12)

    # ---------------------------------------------------------------- SSL features of the clean crops

    def teacher(self, device: torch.device | str) -> LatentEmbedder:
        """The SSL embedder, its net moved to `device` (it is no trainer module: nothing else moves it)."""
        if module_device(self.ssl.net) != torch.device(device):
            self.ssl.net.to(device)
        return self.ssl

    def clean_features(self, x0: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """SSL embeddings [B, dim] of each clip's frames of x0 [B, C, T], each computed alone in float32
        on x0's device and cached under a hash of the crop's latent."""
        rows = []
        for crop, n in zip(x0, lengths):
            crop = crop[:, :n].float().contiguous()
            data = crop.cpu().numpy().tobytes()
            key = hashlib.blake2b(data, digest_size=16).digest() + n.to_bytes(4, "little")
            feature = self._ssl_cache.get(key)
            if feature is None:
                with torch.autocast(crop.device.type, enabled=False), torch.no_grad():
                    feature = self.teacher(crop.device).embed_latents(crop[None])[0]
                if self.config["ssl_cache_size"]:
                    self._ssl_cache[key] = feature
                    if len(self._ssl_cache) > self.config["ssl_cache_size"]:
                        self._ssl_cache.popitem(last=False)
            rows.append(feature)
        return torch.stack(rows)

    # ---------------------------------------------------------------- recipe protocol

    def modules(self) -> dict[str, nn.Module]:
        return {"dit": self.model, "align_head": self.head, "sketch": self.sketch}

    def state_dict(self) -> dict:
        return {
            "regime": asdict(self.tracker),
            "structure": asdict(self.monitor),
            "snapshot_step": self.snapshot_step,
            "probe": self.probe_identity,
        }

    def load_state_dict(self, state: dict) -> None:
        self.tracker = RegimeTracker(**state["regime"])
        self.monitor = StructureMonitor(**state["structure"])
        self.snapshot_step = state["snapshot_step"]
        self.probe_identity = state["probe"]
        self._probe = None  # rebuilt (and checked against probe_identity) at the next probe

    def _check_structure(self, step: int, dit: DiT, sketch: BlockSketch, r: float) -> None:
        """Group the blocks by their update since the last check, then remember the weights of now."""
        now = sketch.read(dit)
        if self.snapshot_step is not None:
            self.monitor.check(step, sketch.descriptors(now), r, self.config, self.config["use_structure"])
        sketch.values.copy_(now)
        self.snapshot_step = int(step)

    def loss(self, step: int, indices: list[int], modules: dict[str, nn.Module]):
        cfg = self.config
        dit: DiT = modules["dit"]
        head: AlignHead = modules["align_head"]
        if step % cfg["probe_every"] == 0:
            d = self.probe_discrepancy(dit)
            if not math.isfinite(d):
                raise BadInput(
                    f"The probe's discrepancy became {d} at step {step}; lower the learning rate "
                    "(--set lr=...) and --resume."
                )
            self.tracker.update(step, d, cfg)
        r = self.regime_at(step)
        if step % cfg["group_every"] == 0:
            self._check_structure(step, dit, modules["sketch"], r)

        device = module_device(dit)
        batch = self.batch(indices, device)
        x0, known_mask = batch["x0"], batch["known_mask"]
        b = x0.shape[0]
        loc = timestep_location(r, cfg["t_loc_early"], cfg["t_loc_late"])
        if cfg["use_timesteps"]:
            t = sample_timesteps(b, loc, cfg["t_scale"], cfg["t_uniform"])
        else:
            t = logit_normal(b, cfg["t_mean"] + math.log(cfg["time_shift"]), cfg["t_std"])
        t = t.to(device)  # drawn on the CPU, as every random tensor of the recipe
        # every block's input and output tokens of this forward (the autograd graph keeps them anyway)
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [blk.register_forward_hook(lambda m, a, out: seen.append((a[0], out))) for blk in dit.blocks]
        try:
            per_sample = self.flow_loss(dit, batch, t)
        finally:
            for hook in hooks:
                hook.remove()
        assert len(seen) == len(dit.blocks)
        loss_rf = per_sample.mean()

        # 2. decayed SSL guidance: the head learns at weight 1, the DiT gets lambda times the gradient
        lengths = (batch["seconds"] * self.codec.latent_rate).round().long()
        lam = guidance_weight(r, cfg["lambda0"], cfg["lambda_cutoff"]) if cfg["use_guidance"] else 0.0
        target = self.clean_features(x0, lengths.tolist())
        h = scaled_grad(seen[cfg["align_depth"] - 1][1], lam)
        pred = head(h, token_mask(lengths, x0.shape[-1], self.dit_config.patch))
        cos = F.cosine_similarity(pred, target, dim=-1).mean()
        loss_align = -cos
        align_term = loss_align + (lam - 1.0) * loss_align.detach()  # value lam * L, head gradient 1

        # 4. structure: decorrelation of the groups' contributions
        labels = self.monitor.on_labels or self.monitor.labels or equal_groups(len(dit.blocks), cfg["groups"])
        bounds = [0] + group_starts(labels) + [len(labels)]
        contributions = [seen[j - 1][1] - seen[i][0] for i, j in zip(bounds[:-1], bounds[1:])]
        struct_w = self.monitor.weight(step, cfg)
        if struct_w > 0:
            struct_loss = group_decorrelation(contributions)
            struct_term = struct_w * struct_loss
        else:
            with torch.no_grad():
                struct_loss = group_decorrelation(contributions)
            struct_term = 0.0
        loss = loss_rf + align_term + struct_term
        prior_info: dict = {}
        loss = loss + self.prior_terms(dit, batch, prior_info)

        info = {
            "frac_text": float(batch["text_mask"].any(dim=1).float().mean()),
            "frac_controls": float(batch["control_mask"].amax(dim=(1, 2)).mean()),
            "frac_known": float(known_mask.amax(dim=(1, 2)).mean()),
            "loss_rf": float(loss_rf.detach()),
            "r": float(r),
            "r_measured": self.tracker.r,
            "regime_q": self.tracker.q,
            "probe_d": float(self.tracker.d),
            "align_lambda": float(lam),
            "align_cos": float(cos.detach()),
            "t_loc": float(loc) if cfg["use_timesteps"] else float(cfg["t_mean"]),
            "group_stable": float(self.monitor.stable),
            "struct_on": float(self.monitor.on),
            "struct_step": float(self.monitor.on_step if self.monitor.on else -1),
            "struct_weight": float(struct_w),
            "struct_loss": float(struct_loss.detach()),
            **prior_info,
        }
        if self.tracker.slope is not None:
            info["d_slope"] = self.tracker.slope
        if self.monitor.labels is not None:
            for k, start in enumerate(group_starts(self.monitor.labels), start=1):
                info[f"group_start{k}"] = float(start)
        if self.monitor.ari is not None:
            info["group_ari"] = float(self.monitor.ari)
        bins = cfg["t_bins"]
        if cfg["use_timesteps"]:
            hist = timestep_histogram(loc, cfg["t_scale"], cfg["t_uniform"], bins)
        else:
            hist = timestep_histogram(cfg["t_mean"], cfg["t_std"], 0.0, bins)
        info.update({f"t_hist{k}": p for k, p in enumerate(hist)})
        which = (t * bins).long().clamp(max=bins - 1)
        for k in range(bins):
            if (which == k).any():
                info[f"loss_tbin{k}"] = float(per_sample.detach()[which == k].mean())
        return loss, info

    # ---------------------------------------------------------------- export

    def export(self, modules_ema: dict[str, nn.Module], out_dir: Path, card: dict | None = None) -> None:
        """A generator bundle (as static's) whose card also says how the regime went."""
        from pipelines.bundle import bundle_hash

        card = {
            **(card or {}),
            "stage_adaptive": {
                "regime": self.regime,
                "r": self.regime_at(int((card or {}).get("steps") or 0)),
                "r_measured": self.tracker.r,
                "structure_step": self.monitor.on_step,
                "mechanisms": {k: self.config[k] for k in ("use_guidance", "use_timesteps", "use_structure")},
                "ssl_embedder": {"bundle": self.ssl_path.name, "sha256": bundle_hash(self.ssl_path)},
                "probe": self.probe_identity,
            },
        }
        super().export(modules_ema, out_dir, card=card)


class RandomThresholdRecipe(StageAdaptiveRecipe):
    """Control: the mechanisms driven by a random monotone r drawn in control_range."""

    name = "random-threshold"
    regime = "random"


class FixedScheduleRecipe(StageAdaptiveRecipe):
    """Control: the mechanisms driven by r = step / schedule_steps."""

    name = "fixed-schedule"
    regime = "linear"


def default_ssl_path() -> Path:
    from pipelines.bundle import ASSETS_DIR

    return ASSETS_DIR / "ssl-embedder"
