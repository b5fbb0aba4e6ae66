"""The stage-adaptive recipe (issue 4) on synthetic signals and tiny models: the regime variable r on
known discrepancy curves, the slope fit, the guidance schedule, the timestep sampler, the adjusted Rand
index, the contiguous grouping and the structure latch, then a few-step run through the trainer that logs
every metric, resumes exactly after a crash and exports a generator bundle the generator runs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_arc import write_corpus
from test_static_recipe import tiny_codec_bundle
from tiny_models import TINY_CODEC

from pipelines.bundle import load_bundle, save_bundle
from pipelines.codec import CodecConfig, CodecModel
from pipelines.controls import CONTROL_NAMES
from pipelines.dit import DiT, DiTConfig
from pipelines.embedders import (
    LatentEmbedderConfig,
    LatentEmbedderNet,
    MelEmbedderConfig,
    MelEmbedderNet,
    net_config,
)
from pipelines.errors import BadInput
from training.latent_cache import encode_corpus
from training.stage_adaptive import (
    DEFAULTS,
    BlockSketch,
    RegimeTracker,
    StructureMonitor,
    adjusted_rand_index,
    contiguous_groups,
    control_knots,
    equal_groups,
    group_decorrelation,
    group_starts,
    guidance_weight,
    median3,
    random_curve,
    regime_range,
    sample_timesteps,
    scaled_grad,
    theil_sen_slope,
    timestep_histogram,
    timestep_location,
)

SR = 44100
SA_DIT = {"dim": 32, "depth": 4, "heads": 2, "mlp_ratio": 2.0, "max_seconds": 20.0}
TINY_SSL = {"width": 32, "blocks": 1, "heads": 2, "dim": 16}

# ---------------------------------------------------------------- 1. the regime variable


def run_regime(curve, steps: int = 20000, every: int = 100, **settings) -> list[tuple[int, float]]:
    """(step, r) after each probe of a discrepancy curve D(step), with the default settings."""
    cfg = {**DEFAULTS, **settings}
    tracker = RegimeTracker()
    return [(s, tracker.update(s, curve(s), cfg)) for s in range(0, steps + 1, every)]


def r_at(path: list[tuple[int, float]], step: int) -> float:
    return [r for s, r in path if s <= step][-1]


NOISE = np.random.default_rng(0).standard_normal(1000)
TAU = 2000


def exponential(s: int) -> float:
    """Fast descent, then flat at 0.2 from about 5 tau on (1% noise)."""
    return (0.2 + 0.6 * math.exp(-s / TAU)) * (1 + 0.01 * NOISE[s // 100])


def flat(s: int) -> float:
    return 0.5 * (1 + 0.02 * NOISE[s // 100])


def power_law(s: int) -> float:
    return 0.8 * ((s + 100) / 100) ** -0.3 * (1 + 0.02 * NOISE[s // 100])


def test_theil_sen_slope_recovers_a_line_and_ignores_an_outlier():
    x = np.log1p(np.arange(100, 1100, 100))
    y = 0.7 - 0.35 * x
    assert theil_sen_slope(x, y) == pytest.approx(-0.35, abs=1e-12)
    bad = y.copy()
    bad[3] += 5.0
    assert theil_sen_slope(x, bad) == pytest.approx(-0.35, abs=1e-12)  # the median of 45 pairs ignores 9
    assert abs(np.polyfit(x, bad, 1)[0] + 0.35) > 0.1  # where least squares is pulled off
    assert theil_sen_slope([0, 0, 1, 2], [1, 2, 3, 5]) == pytest.approx(2.0)  # equal x give no slope


def test_median3_removes_one_spike_anywhere_and_keeps_a_line():
    line = np.linspace(1.0, 2.0, 7)
    assert np.allclose(median3(line), line)
    for k in range(7):
        spiked = line.copy()
        spiked[k] = 50.0
        filtered = median3(spiked)
        assert filtered.max() <= 2.0, k
    assert np.array_equal(median3([3.0, 1.0, 7.0]), [3.0, 1.0, 7.0])  # too few to tell


def test_r_stays_low_while_d_falls_fast_reaches_one_after_it_flattens_and_never_decreases():
    path = run_regime(exponential)
    rs = [r for _, r in path]
    assert all(0.0 <= r <= 1.0 for r in rs)
    assert all(b >= a for a, b in zip(rs, rs[1:]))
    assert r_at(path, 3 * TAU) < 0.05  # D still falls steeply (its log-log slope peaks near 2 tau)
    assert r_at(path, 7 * TAU) > 0.8  # D within 0.5% of its floor
    assert rs[-1] > 0.99


def test_r_on_a_noisy_flat_curve_reaches_one_within_a_few_windows():
    path = run_regime(flat)
    reached = [s for s, r in path if r >= 1.0]
    # warmup ends at 1000; the first window of 8 probes is 700..1400; each window is an octave of steps
    assert reached and reached[0] <= 4 * DEFAULTS["regime_warmup"], reached[:1]


def test_r_on_a_power_law_that_never_flattens_stays_below_half():
    path = run_regime(power_law)
    assert max(r for _, r in path) < 0.5
    clean = run_regime(lambda s: 0.8 * ((s + 1) / 100) ** -0.3)
    assert max(r for _, r in clean) < 0.05  # a constant log-log slope is always the steepest


@pytest.mark.parametrize("spike_at", [1200, 3400, 3800, 6000, 9000])
@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_single_spike_moves_r_by_at_most_a_tenth(spike_at, factor):
    base = run_regime(exponential, steps=12000)
    spiked = run_regime(lambda s: exponential(s) * (factor if s == spike_at else 1.0), steps=12000)
    assert max(abs(a - b) for (_, a), (_, b) in zip(base, spiked)) <= 0.1


def test_r_is_zero_before_warmup_and_the_tracker_state_is_json():
    cfg = {**DEFAULTS, "regime_warmup": 1000}
    tracker = RegimeTracker()
    for s in range(0, 1000, 100):
        assert tracker.update(s, 0.5, cfg) == 0.0
    for s in range(1000, 3000, 100):
        tracker.update(s, 0.5, cfg)
    state = json.loads(json.dumps(asdict(tracker)))
    again = RegimeTracker(**state)
    assert again == tracker and again.r == 1.0 and again.slope == 0.0
    assert min(h[0] for h in again.history) >= 2900 / cfg["window_ratio"]  # only the window is kept


def test_control_curves_are_monotone_and_span_their_range():
    knots = control_knots(seed=3, low=1000, high=5000, knots=3)
    assert knots == sorted(knots) and all(1000 <= k <= 5000 for k in knots)
    assert knots != control_knots(seed=4, low=1000, high=5000, knots=3)
    assert knots == control_knots(seed=3, low=1000, high=5000, knots=3)
    rs = [random_curve(s, 1000, knots) for s in range(0, 8000, 50)]
    assert all(b >= a for a, b in zip(rs, rs[1:]))
    assert random_curve(999, 1000, knots) == 0.0 and random_curve(knots[-1], 1000, knots) == 1.0
    assert random_curve(knots[0], 1000, knots) == pytest.approx(1 / 3)


def test_regime_range_reads_where_r_rose(tmp_path):
    rows = [{"step": s, "r": min(max((s - 300) / 400, 0.0), 1.0)} for s in range(10, 1001, 10)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert regime_range(path) == (330, 680)  # first r > 0.05, first r >= 0.95
    path.write_text("".join(json.dumps({"step": s, "r": 0.0}) + "\n" for s in range(10, 100, 10)))
    with pytest.raises(BadInput, match="never rose"):
        regime_range(path)


# ---------------------------------------------------------------- 2. guidance


def test_guidance_weight_decays_linearly_and_is_off_past_the_cutoff():
    assert guidance_weight(0.0, 0.5, 0.7) == 0.5
    assert guidance_weight(0.35, 0.5, 0.7) == pytest.approx(0.25)
    assert guidance_weight(0.7, 0.5, 0.7) == 0.0 and guidance_weight(0.9, 0.5, 0.7) == 0.0
    ws = [guidance_weight(r, 0.5, 0.7) for r in np.linspace(0, 1, 21)]
    assert all(b <= a for a, b in zip(ws, ws[1:]))


def test_scaled_grad_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scaled_grad(x * 3, 0.25)
    assert torch.equal(y, x.detach() * 3)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((2,), 0.75))
    assert not scaled_grad(x * 3, 0.0).requires_grad


# ---------------------------------------------------------------- 3. timesteps


def test_timestep_sampler_moves_with_r_and_keeps_the_uniform_floor():
    torch.manual_seed(0)
    loc = [timestep_location(r, 1.0, -1.0) for r in (0.0, 0.5, 1.0)]
    draws = [sample_timesteps(40000, mu, 1.0, 0.1) for mu in loc]
    medians = [float(t.median()) for t in draws]
    assert medians[0] > 0.65 and medians[2] < 0.35 and medians[0] > medians[1] > medians[2]
    # two-sample Kolmogorov-Smirnov between r = 0 and r = 1: far beyond the 0.001 critical value (~0.014)
    grid = torch.linspace(0, 1, 1001)
    cdfs = [(t[None] <= grid[:, None]).float().mean(1) for t in (draws[0], draws[2])]
    assert float((cdfs[0] - cdfs[1]).abs().max()) > 0.3
    # the floor: at r = 0 the logit-normal puts ~0.03% of its mass below t = 0.05; the floor puts 0.5%
    low = float((draws[0] < 0.05).float().mean())
    assert 0.004 < low < 0.007
    high = float((draws[2] > 0.95).float().mean())
    assert 0.004 < high < 0.007
    assert 0.0 <= float(torch.cat(draws).min()) and float(torch.cat(draws).max()) <= 1.0


def test_timestep_histogram_is_the_exact_distribution():
    torch.manual_seed(1)
    for r in (0.0, 0.6):
        mu = timestep_location(r, 1.0, -1.0)
        hist = timestep_histogram(mu, 1.0, 0.1, 8)
        assert len(hist) == 8 and sum(hist) == pytest.approx(1.0, abs=1e-12)
        assert min(hist) >= 0.1 / 8
        t = sample_timesteps(50000, mu, 1.0, 0.1)
        empirical = torch.bincount((t * 8).long().clamp(max=7), minlength=8).float() / 50000
        assert torch.allclose(empirical, torch.tensor(hist, dtype=torch.float32), atol=0.01)


# ---------------------------------------------------------------- 4. structure


def test_adjusted_rand_index_on_hand_worked_cases():
    assert adjusted_rand_index([0, 0, 1, 1, 2], [0, 0, 1, 1, 2]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1, 2], [2, 2, 0, 0, 1]) == 1.0  # relabelled
    # [0,0,1,1] vs [0,0,0,1]: sum C(n_ij,2) = 1, rows 2, cols 3, C(4,2) = 6: expected 1, max 2.5 -> 0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # [0,0,0,1,1,1] vs [0,0,1,1,1,1]: index 4, rows 6, cols 7, C(6,2) = 15: (4 - 2.8) / (6.5 - 2.8)
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(1.2 / 3.7)
    # a partition into singletons against one group: index 0, rows 0, cols 6 -> expected 0, max 3
    assert adjusted_rand_index([0, 1, 2, 3], [0, 0, 0, 0]) == 0.0
    assert adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0  # worse than chance


def brute_force_groups(x: np.ndarray, k: int) -> float:
    """The least within-group squared distance over every cut of x's rows into k contiguous runs."""
    from itertools import combinations

    best = math.inf
    for cuts in combinations(range(1, len(x)), k - 1):
        bounds = [0, *cuts, len(x)]
        cost = sum(((x[i:j] - x[i:j].mean(0)) ** 2).sum() for i, j in zip(bounds[:-1], bounds[1:]))
        best = min(best, cost)
    return best


def grouping_cost(x: np.ndarray, labels: list[int]) -> float:
    labels = np.asarray(labels)
    return sum(((x[labels == g] - x[labels == g].mean(0)) ** 2).sum() for g in np.unique(labels))


def test_contiguous_groups_recover_a_planted_structure_and_are_optimal():
    rng = np.random.default_rng(0)
    means = np.repeat(rng.normal(0, 3, (3, 6)), [3, 3, 2], axis=0)
    labels = contiguous_groups(means + rng.normal(0, 0.2, means.shape), 3)
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2] and group_starts(labels) == [3, 6]
    for _ in range(5):
        x = rng.normal(0, 1, (7, 4))
        for k in (1, 2, 3, 4):
            got = contiguous_groups(x, k)
            assert got == sorted(got) and len(set(got)) == k
            assert grouping_cost(x, got) == pytest.approx(brute_force_groups(x, k))
    assert contiguous_groups(rng.normal(0, 1, (2, 3)), 3) == [0, 1]
    assert equal_groups(8, 3) == [0, 0, 0, 1, 1, 1, 2, 2]


SETTINGS = {**DEFAULTS, "groups": 3, "ari_stable": 0.9, "stable_checks": 3, "r_structure": 0.3}


def monitor_run(features, rs) -> StructureMonitor:
    monitor, fired = StructureMonitor(), []
    for check, (x, r) in enumerate(zip(features, rs)):
        was = monitor.on
        monitor.check(500 * (check + 1), x, r, SETTINGS)
        fired += [check] if monitor.on and not was else []
    monitor.fired = fired
    return monitor


def test_structure_latch_fires_once_on_planted_groups_and_never_on_noise():
    rng = np.random.default_rng(1)
    centres = np.repeat(rng.normal(0, 2, (3, 12)), [2, 4, 2], axis=0)
    planted = [centres + rng.normal(0, 0.3, centres.shape) for _ in range(40)]
    rs = [min(1.0, c / 20) for c in range(40)]  # r passes r_structure = 0.3 at check 6
    monitor = monitor_run(planted, rs)
    assert monitor.fired == [6], monitor.fired  # stable from check 1 on; waits for r
    assert monitor.on_labels == [0, 0, 1, 1, 1, 1, 2, 2] and monitor.on_step == 3500
    assert monitor.ari == 1.0 and monitor.stable == 39
    for seed in range(5):
        noise = np.random.default_rng(100 + seed)
        unstructured = [noise.normal(0, 1, (8, 12)) for _ in range(40)]
        quiet = monitor_run(unstructured, [1.0] * 40)
        assert quiet.fired == [] and not quiet.on, seed
        assert quiet.ari is not None
    off = StructureMonitor()
    for c, x in enumerate(planted[:10]):
        off.check(c, x, 1.0, SETTINGS, enabled=False)
    assert not off.on and off.stable == 9  # measured, never latched


def test_structure_weight_ramps_from_the_latch():
    cfg = {**DEFAULTS, "structure_weight": 0.2, "structure_ramp": 100}
    monitor = StructureMonitor(on=True, on_step=1000, on_labels=[0, 1])
    assert monitor.weight(1000, cfg) == 0.0
    assert monitor.weight(1050, cfg) == pytest.approx(0.1)
    assert monitor.weight(5000, cfg) == pytest.approx(0.2)
    assert StructureMonitor().weight(5000, cfg) == 0.0
    assert monitor.weight(1001, {**cfg, "structure_ramp": 0}) == pytest.approx(0.2)


def test_group_decorrelation_is_zero_for_orthogonal_and_one_for_parallel_contributions():
    a = torch.zeros(2, 3, 4)
    a[..., 0] = 1.0
    b = torch.zeros(2, 3, 4)
    b[..., 1] = -2.0
    assert float(group_decorrelation([a, b])) == 0.0
    assert float(group_decorrelation([a, -3 * a])) == pytest.approx(1.0)
    assert float(group_decorrelation([a, b, a])) == pytest.approx(1 / 3)
    assert float(group_decorrelation([a])) == 0.0


def test_block_sketch_describes_each_blocks_update():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_channels=8, **SA_DIT))
    sketch = BlockSketch(dit, coords=64)
    assert sketch.values.shape[0] == 4 and all(len(i) <= 64 for i in sketch.index)
    with torch.no_grad():
        for p in dit.parameters():  # no zero-initialised tensor (their relative update is always 1)
            p.add_(0.05 * torch.randn_like(p))
    sketch.values.copy_(sketch.read(dit))
    with torch.no_grad():
        for k, block in enumerate(dit.blocks):
            for p in block.parameters():
                p.add_(10.0 ** (k - 6) * torch.randn_like(p))  # block k moves 10x more than block k - 1
    feats = sketch.descriptors(sketch.read(dit))
    assert feats.shape == (4, len(list(dit.blocks[0].parameters())))
    per_block = np.median(feats, axis=1)
    assert np.all(np.diff(per_block) > 1.5)  # log(10) = 2.3 apart
    assert np.all(sketch.descriptors(sketch.values) < -15)  # no update: log(eps)


def test_block_outputs_taken_by_hooks_are_the_dits_hidden_states():
    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_channels=8, **SA_DIT))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 8, 10), torch.tensor([0.3, 0.8])
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append(out)) for b in dit.blocks]
    dit(x, t)
    for h in hooks:
        h.remove()
    for depth in (1, 2, 4):
        assert torch.equal(seen[depth - 1], dit.hidden_states(x, t, depth=depth))


# ---------------------------------------------------------------- the recipe through the trainer

METRICS = (
    "loss_rf",
    "r",
    "r_measured",
    "regime_q",
    "probe_d",
    "d_slope",
    "align_lambda",
    "align_cos",
    "t_loc",
    "t_hist0",
    "t_hist3",
    "group_start1",
    "group_ari",
    "group_stable",
    "struct_on",
    "struct_step",
    "struct_weight",
    "struct_loss",
)


def ssl_bundle(path: Path, codec: Path, arch: str = "latent") -> Path:
    torch.manual_seed(2)
    if arch == "latent":
        net = LatentEmbedderNet(LatentEmbedderConfig(channels=8, **TINY_SSL))
        card, components = {"role": "SSL teacher"}, {"codec": codec}
    else:
        net = MelEmbedderNet(MelEmbedderConfig(base_channels=4, stages=2, width=32, heads=2, dim=16))
        card, components = {"role": "judge (evaluation only)"}, {}
    state = {k: v.detach() for k, v in net.state_dict().items()}
    return save_bundle(
        path, net_config(net), {"embedder": state}, components=components, kind="embedder", card=card
    )


def no_controls(audio, frames: int, rate: float, **grid) -> SimpleNamespace:
    """Every control absent: what measure_controls gives a clip without pitch or pulse, without measuring."""
    n = len(CONTROL_NAMES)
    return SimpleNamespace(values=np.zeros((n, frames), np.float32), present=np.zeros(n, dtype=bool))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stage_adaptive")
    codec = tiny_codec_bundle(root / "codec")
    data = write_corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as patch:  # pyin costs seconds per clip; this recipe reads no controls
        patch.setattr("training.latent_cache.measure_controls", no_controls)
        encode_corpus(data, codec, progress=False)
    return {"codec": codec, "data": data, "ssl": ssl_bundle(root / "ssl", codec)}


def recipe_settings(setup: dict, **extra) -> dict:
    return {
        "codec": str(setup["codec"]),
        "ssl_embedder": str(setup["ssl"]),
        "segment_frames": 24,
        "dit": SA_DIT,
        "probe_every": 1,
        "probe_clips": 3,
        "window_ratio": 10.0,
        "window_min_probes": 4,
        "regime_warmup": 0,
        "align_depth": 2,
        "align_hidden": 16,
        "group_every": 2,
        "groups": 2,
        "sketch_coords": 16,
        "ari_stable": -1.0,  # every grouping counts as stable: the latch fires at the first comparison
        "stable_checks": 1,
        "r_structure": 0.0,
        "structure_ramp": 2,
        "t_bins": 4,
        **extra,
    }


def sa_config(tmp: Path, setup: dict, steps: int, recipe: dict | None = None, **settings) -> Path:
    config = {
        "steps": steps,
        "batch_size": 4,
        "lr": 2e-3,
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "ema_decay": 0.9,
        "ckpt_every": 3,
        "log_every": 1,
        "keep_checkpoints": 10,
        "threads": 1,
        "recipe": recipe_settings(setup, **(recipe or {})),
        **settings,
    }
    path = tmp / "stage_adaptive.json"
    path.write_text(json.dumps(config))
    return path


def records(run: Path) -> list[dict]:
    from training.jsonl import read_jsonl

    return read_jsonl(run / "metrics.jsonl", tolerate_torn_tail=False)


@pytest.fixture(scope="module")
def straight_run(setup, tmp_path_factory) -> Path:
    """Eight steps of stage-adaptive from scratch, uninterrupted."""
    from training.trainer import train

    tmp = tmp_path_factory.mktemp("straight")
    train("stage-adaptive", setup["data"], tmp / "run", config_path=sa_config(tmp, setup, 8), progress=False)
    return tmp / "run"


def test_stage_adaptive_run_logs_every_metric(setup, straight_run):
    rows = records(straight_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in METRICS:
        assert any(key in r for r in rows), key
        assert all(math.isfinite(r[key]) for r in rows if key in r), key
    assert any(k.startswith("loss_tbin") for r in rows for k in r)
    assert all(sum(r[f"t_hist{k}"] for k in range(4)) == pytest.approx(1.0) for r in rows)
    rs = [r["r"] for r in rows]
    assert all(0.0 <= x <= 1.0 for x in rs) and all(b >= a for a, b in zip(rs, rs[1:]))
    assert all(0.0 < r["probe_d"] <= 2.0 and -1.0 <= r["align_cos"] <= 1.0 for r in rows)
    # groupings at steps 2, 4, 6: compared from step 4 on, stable at once, so the loss latches at 4
    assert "group_ari" not in rows[2] and "group_ari" in rows[4]  # rows[k] is the loss of step k
    on = [r["step"] - 1 for r in rows if r["struct_on"] == 1.0]
    assert on and on[0] == 4 and all(r["struct_step"] == 4.0 for r in rows if r["struct_on"])
    weights = {r["step"] - 1: r["struct_weight"] for r in rows}
    assert weights[3] == 0.0 and weights[4] == 0.0 and weights[5] == pytest.approx(0.05) and weights[6] == 0.1
    loss_terms = rows[-1]["loss_rf"] - rows[-1]["align_lambda"] * rows[-1]["align_cos"]
    assert rows[-1]["loss"] == pytest.approx(loss_terms + 0.1 * rows[-1]["struct_loss"], rel=1e-4, abs=1e-5)
    state = json.loads((straight_run / "checkpoints" / "step_00000008" / "state.json").read_text())
    saved = state["recipe_state"]
    assert saved["structure"]["on"] and saved["structure"]["on_step"] == 4
    assert saved["probe"]["split"] == "val" and len(saved["probe"]["ids"]) == 3
    assert saved["regime"]["d"] == rows[-1]["probe_d"]
    sketch = load_file(straight_run / "checkpoints" / "step_00000008" / "modules.safetensors")[
        "sketch.values"
    ]
    assert sketch.abs().sum() > 0


def test_stage_adaptive_resumes_exactly_after_a_crash(setup, straight_run, tmp_path):
    from training.trainer import train

    config = sa_config(tmp_path, setup, 8)
    run = tmp_path / "crashed"

    def crash_after_step_5(record):
        if record["step"] == 5:
            raise KeyboardInterrupt  # the newest checkpoint is step 3

    with pytest.raises(KeyboardInterrupt):
        train(
            "stage-adaptive",
            setup["data"],
            run,
            config_path=config,
            progress=False,
            on_metrics=crash_after_step_5,
        )
    resumed = train("stage-adaptive", setup["data"], run, config_path=config, resume=True, progress=False)
    want = straight_run / "checkpoints" / "step_00000008"
    for file in ("modules", "ema", "optimizer"):
        a, b = load_file(want / f"{file}.safetensors"), load_file(resumed / f"{file}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    assert (
        json.loads((want / "state.json").read_text())["recipe_state"]
        == json.loads((resumed / "state.json").read_text())["recipe_state"]
    )
    assert records(run) == [
        {**r, "time": g["time"], "elapsed_s": g["elapsed_s"]}
        for r, g in zip(records(straight_run), records(run))
    ]


def test_stage_adaptive_exports_a_generator_bundle_the_generator_runs(setup, straight_run, tmp_path):
    from pipelines.generator import load_generator
    from training.trainer import export_run

    bundle = load_bundle(export_run(straight_run, tmp_path / "bundle"))
    assert bundle.kind == "generator" and bundle.files == ["dit"]
    assert bundle.config["sampler"] == "euler" and bundle.card["recipe"] == "stage-adaptive"
    card = bundle.card["stage_adaptive"]
    assert card["regime"] == "measured" and card["structure_step"] == 4 and card["ssl_embedder"]["sha256"]
    gen = load_generator(bundle.path)
    audio = gen.generate("a low tone", seconds=0.5, steps=2, seed=3)
    assert audio.sample_rate == SR and audio.samples.shape == (2, round(0.5 * SR))
    assert np.isfinite(audio.samples).all()


def test_controls_and_ablations_drive_the_mechanisms_by_their_own_r(setup):
    from training.stage_adaptive import FixedScheduleRecipe, RandomThresholdRecipe, StageAdaptiveRecipe

    fixed = FixedScheduleRecipe(recipe_settings(setup, schedule_steps=100), setup["data"])
    assert [fixed.regime_at(s) for s in (0, 50, 100, 300)] == [0.0, 0.5, 1.0, 1.0]
    rand = RandomThresholdRecipe({**recipe_settings(setup, control_range=[20, 60]), "seed": 7}, setup["data"])
    rs = [rand.regime_at(s) for s in range(0, 80)]
    assert rs[20] == 0.0 and rs[-1] == 1.0 and all(b >= a for a, b in zip(rs, rs[1:]))
    other = RandomThresholdRecipe(
        {**recipe_settings(setup, control_range=[20, 60]), "seed": 8}, setup["data"]
    )
    assert other.knots != rand.knots

    plain = StageAdaptiveRecipe(
        recipe_settings(setup, use_guidance=False, use_timesteps=False, use_structure=False), setup["data"]
    )
    modules = plain.modules()
    torch.manual_seed(0)
    loss, info = plain.loss(0, [0, 1, 2, 3], modules)
    assert (
        info["align_lambda"] == 0.0 and info["t_loc"] == DEFAULTS["t_mean"] and info["struct_weight"] == 0.0
    )
    loss.backward()
    assert all(p.grad is not None for p in modules["align_head"].parameters())  # the head still learns
    assert loss.item() == pytest.approx(info["loss_rf"])


def test_stage_adaptive_says_why_it_cannot_run(setup, tmp_path):
    from training.stage_adaptive import FixedScheduleRecipe, RandomThresholdRecipe, StageAdaptiveRecipe

    def refused(make, match: str, **extra):
        with pytest.raises(BadInput, match=match) as caught:
            make(recipe_settings(setup, **extra), setup["data"])
        assert "\n" not in str(caught.value)

    refused(StageAdaptiveRecipe, "needs the SSL embedder", ssl_embedder=str(tmp_path / "missing"))
    judge = ssl_bundle(tmp_path / "judge", setup["codec"], arch="mel")
    refused(StageAdaptiveRecipe, "judge never teaches", ssl_embedder=str(judge))
    torch.manual_seed(9)
    codec = CodecModel(CodecConfig(**TINY_CODEC))  # same shape, other weights: another latent space
    other_codec = save_bundle(
        tmp_path / "other-codec", asdict(codec.cfg), {"codec": codec.state_dict()}, kind="codec"
    )
    refused(
        StageAdaptiveRecipe, "another codec", ssl_embedder=str(ssl_bundle(tmp_path / "foreign", other_codec))
    )
    refused(StageAdaptiveRecipe, "align_depth", align_depth=9)
    refused(StageAdaptiveRecipe, "probe_times", probe_times=[0.5, 1.5])
    refused(StageAdaptiveRecipe, "use_guidance", use_guidance="yes")
    refused(StageAdaptiveRecipe, "Unknown stage-adaptive recipe setting", lambda_zero=1.0)
    refused(RandomThresholdRecipe, "control_range")
    refused(FixedScheduleRecipe, "schedule_steps")


def test_the_bundled_config_is_statics_run_with_every_setting_known():
    repo = Path(__file__).resolve().parent.parent
    ours = json.loads((repo / "training" / "configs" / "stage_adaptive.json").read_text())
    static = json.loads((repo / "training" / "configs" / "static.json").read_text())
    assert {k: v for k, v in ours.items() if k != "recipe"} == {
        k: v for k, v in static.items() if k != "recipe"
    }
    assert set(ours["recipe"]) <= set(DEFAULTS)
    assert all(ours["recipe"][k] == v for k, v in static["recipe"].items())  # same DiT, data and dropout
    assert ours["recipe"]["schedule_steps"] == ours["steps"]  # fixed-schedule's r reaches 1 at the end


def test_stage_adaptive_trains_the_pitch_prior_of_a_pitched_dit(setup, tmp_path):
    """The flow loss and the pitch prior are the static recipe's own, so a DiT with a prior learns it here too."""
    from training.trainer import train

    recipe = {"dit": {**SA_DIT, "pitch_classes": 48, "pitch_low": 48}}
    config = sa_config(tmp_path, setup, 3, recipe=recipe)
    train("stage-adaptive", setup["data"], tmp_path / "run", config_path=config, progress=False)
    rows = records(tmp_path / "run")
    assert len(rows) == 3
    assert all(r["loss_pitch_prior"] > 0 and 0.0 <= r["pitch_prior_acc"] <= 1.0 for r in rows)
