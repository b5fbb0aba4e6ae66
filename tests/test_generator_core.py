"""The generator's core pieces: text encoder, DiT velocity model, rectified-flow samplers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.dit import PITCH_ABSENT, PITCH_FROM_TEXT, PITCH_NONE, DiT, DiTConfig, cat_inputs
from pipelines.errors import BadInput
from pipelines.samplers import cfg_model, known_frames_model, noise_to, rf_times, sample_euler, sample_heun
from pipelines.text_encoder import TextEncoder

# ---------------------------------------------------------------------------------------------------
# text encoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.load()


def test_text_encoder_shapes_mask_and_padding(encoder):
    prompts = ["a warm cello note", "kick", "heavy rain on a tin roof at night"]
    emb = encoder.encode(prompts)
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in prompts]
    assert encoder.dim == 384 and encoder.max_tokens == 64
    assert emb.tokens.shape == (3, max(lengths), 384) and emb.tokens.dtype == torch.float32
    assert emb.mask.dtype == torch.bool and emb.mask.sum(1).tolist() == lengths
    assert emb.mask[:, 0].all() and not emb.mask[1, lengths[1] :].any()
    assert emb.tokens[~emb.mask].abs().max() == 0  # padding is zeros
    assert emb.pooled.shape == (3, 384)


def test_text_encoder_pooled_is_normalised_masked_mean(encoder):
    emb = encoder.encode(["a warm cello note", "kick"])
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    for i in range(2):
        mean = emb.tokens[i, emb.mask[i]].mean(0)
        assert torch.allclose(emb.pooled[i], F.normalize(mean, dim=0), atol=1e-5)


def test_text_encoder_truncates_long_prompts(encoder):
    emb = encoder.encode(["a very long prompt " * 60])
    assert emb.mask.sum() == encoder.max_tokens and emb.tokens.shape[1] == encoder.max_tokens


def test_text_encoder_is_deterministic_across_batches(encoder):
    first = encoder.encode(["a bright plucked synth"])
    encoder._cache.clear()
    again = encoder.encode(["something else entirely, much longer than the other", "a bright plucked synth"])
    n = int(first.mask.sum())
    assert torch.allclose(first.tokens[0, :n], again.tokens[1, :n], atol=1e-4)
    assert torch.allclose(first.pooled[0], again.pooled[1], atol=1e-5)


def test_text_encoder_cache_hit_skips_the_model(encoder, monkeypatch):
    first = encoder.encode(["a soft marimba roll"])
    hits = encoder.hits

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran for a cached prompt")

    monkeypatch.setattr(encoder, "model", no_model)
    second = encoder.encode(["a soft marimba roll", "a soft marimba roll"])
    assert encoder.hits == hits + 2
    assert torch.equal(second.tokens[0], first.tokens[0]) and torch.equal(second.pooled[1], first.pooled[0])


def test_text_encoder_cache_is_bounded(encoder, monkeypatch):
    monkeypatch.setattr(encoder, "cache_size", 3)
    encoder.encode(["one", "two", "three", "four", "five"])
    assert list(encoder._cache) == ["three", "four", "five"]


def test_text_encoder_warm_encodes_once_in_equal_length_batches(encoder, monkeypatch):
    prompts = [
        "a dry snare hit",
        "a dry snare hit",
        "a glassy pad swelling slowly over a low drone",
        "hum",
        "",
    ]
    alone = {p: encoder.encode([p]) for p in prompts if p}
    encoder._cache.clear()
    shapes = []
    run = encoder._run
    monkeypatch.setattr(encoder, "_run", lambda batch: shapes.append(len(batch)) or run(batch))
    assert encoder.warm(prompts, batch=2) == 3 and encoder.warm(prompts) == 0  # distinct, non-empty, once
    assert sorted(shapes) == [1, 1, 1]  # three different token counts: no prompt was padded
    hits = encoder.hits
    for p, emb in alone.items():
        again = encoder.encode([p])
        assert torch.allclose(again.tokens, emb.tokens, atol=1e-4) and torch.allclose(
            again.pooled, emb.pooled, atol=1e-5
        )
    assert encoder.hits == hits + 3


def test_similar_prompts_are_closer_than_unrelated_ones(encoder):
    warm, soft, rain = encoder.encode(
        ["a warm cello note", "a cello playing softly", "heavy rain on a roof"]
    ).pooled
    assert warm @ soft > warm @ rain + 0.2
    assert warm @ soft > soft @ rain + 0.2


def test_text_encoder_that_is_not_on_disk_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        TextEncoder.load(str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="loaded offline"):
        TextEncoder.load(str(tmp_path))  # a folder, but no model in it


# ---------------------------------------------------------------------------------------------------
# DiT

TINY = DiTConfig(latent_channels=4, dim=32, depth=2, heads=2, text_dim=16, controls=8, mlp_ratio=2.0)


def random_dit(seed: int = 0, cfg: DiTConfig = TINY) -> DiT:
    """A tiny DiT with every weight random, so zero-init does not hide what the inputs do."""
    torch.manual_seed(seed)
    dit = DiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.2)
    return dit.eval()


def dit_inputs(b: int = 2, t: int = 9, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(b, 5, dtype=torch.bool)
    text_mask[0, 3:] = False
    return {
        "text": torch.randn(b, 5, TINY.text_dim, generator=g),
        "text_mask": text_mask,
        "seconds": torch.full((b,), 4.0),
        "controls": torch.randn(b, TINY.controls, t, generator=g),
        "control_mask": (torch.rand(b, TINY.controls, t, generator=g) > 0.5).float(),
        "known": torch.randn(b, TINY.latent_channels, t, generator=g),
        "known_mask": (torch.rand(b, 1, t, generator=g) > 0.5).float(),
    }


@pytest.mark.parametrize("frames", [1, 8, 9, 37])
def test_dit_output_shape_for_odd_and_even_lengths(frames):
    dit = random_dit()
    x = torch.randn(2, TINY.latent_channels, frames)
    v = dit(x, torch.rand(2), **dit_inputs(t=frames))
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()


def test_dit_zero_init_gives_zero_velocity():
    dit = DiT(TINY)
    v = dit(torch.randn(2, TINY.latent_channels, 9), torch.rand(2), **dit_inputs())
    assert v.abs().max() == 0


@pytest.mark.parametrize("absent", ["text", "seconds", "controls", "known"])
def test_dit_each_optional_input_can_be_absent(absent):
    dit = random_dit()
    x, t = torch.randn(2, TINY.latent_channels, 9), torch.rand(2)
    inputs = dit_inputs()
    full = dit(x, t, **inputs)
    partner = {"text": "text_mask", "controls": "control_mask", "known": "known_mask"}.get(absent)
    without = dict(inputs, **{absent: None}, **({partner: None} if partner else {}))
    v_none = dit(x, t, **without)
    assert v_none.shape == x.shape and torch.isfinite(v_none).all()
    assert not torch.allclose(v_none, full, atol=1e-4)  # the input was used when present
    # None and "present but masked out" mean the same thing
    if absent == "seconds":
        masked = dict(inputs, seconds=torch.full((2,), math.nan))
    else:
        masked = dict(inputs, **{partner: torch.zeros_like(inputs[partner])})
    assert torch.allclose(dit(x, t, **masked), v_none, atol=1e-5)


def test_dit_text_mask_hides_padded_tokens():
    dit = random_dit()
    x, t, inputs = torch.randn(2, TINY.latent_channels, 9), torch.rand(2), dit_inputs()
    v = dit(x, t, **inputs)
    scrambled = inputs["text"].clone()
    scrambled[0, 3:] = torch.randn(2, TINY.text_dim)  # row 0's masked-out tokens
    v2 = dit(x, t, **dict(inputs, text=scrambled))
    assert torch.allclose(v[0], v2[0], atol=1e-5)


def test_dit_runs_under_bf16_autocast_and_cast_to_bf16():
    dit = random_dit()
    x, t = torch.randn(2, TINY.latent_channels, 9), torch.rand(2)
    ref = dit(x, t, **dit_inputs())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        v_autocast = dit(x, t, **dit_inputs())
    with torch.no_grad():
        v_bf16 = dit.to(torch.bfloat16)(x, t, **dit_inputs())
    for v in (v_autocast, v_bf16):
        assert v.dtype == torch.float32
        assert (v - ref).norm() < 0.05 * ref.norm()


def test_dit_gradients_reach_text_and_controls_after_training_steps():
    torch.manual_seed(0)
    dit = DiT(TINY)
    opt = torch.optim.Adam(dit.parameters(), lr=1e-2)
    x, t, target = (
        torch.randn(2, TINY.latent_channels, 9),
        torch.rand(2),
        torch.randn(2, TINY.latent_channels, 9),
    )
    for _ in range(3):  # zero-init layers open one after another, as in DiT
        inputs = dit_inputs()
        for key in ("text", "controls"):
            inputs[key].requires_grad_(True)
        opt.zero_grad()
        F.mse_loss(dit(x, t, **inputs), target).backward()
        opt.step()
    assert inputs["text"].grad.abs().sum() > 0
    assert inputs["controls"].grad.abs().sum() > 0


def test_cat_inputs_fills_a_missing_side_as_absent():
    cond = dit_inputs(b=1)
    both = cat_inputs(cond, {"text": None})
    assert both["text"].shape == (2, 5, TINY.text_dim)
    assert both["text_mask"][1].sum() == 0 and torch.isnan(both["seconds"][1])
    assert both["control_mask"][1].sum() == 0 and both["known_mask"][1].sum() == 0
    short = {"text": torch.randn(1, 2, TINY.text_dim), "text_mask": torch.ones(1, 2, dtype=torch.bool)}
    assert cat_inputs(cond, short)["text_mask"].tolist()[1] == [True, True, False, False, False]


PITCHED = DiTConfig(**{**TINY.__dict__, "pitch_classes": 6, "pitch_low": 60})


def test_pitch_input_classes_none_absent_and_from_text():
    dit = random_dit(cfg=PITCHED)
    x, t, inputs = torch.randn(2, TINY.latent_channels, 9), torch.rand(2), dit_inputs()
    v = {k: dit(x, t, **inputs, pitch=torch.full((2,), k)) for k in (0, 5, PITCH_NONE, PITCH_ABSENT)}
    for a, b in [(0, 5), (0, PITCH_NONE), (PITCH_NONE, PITCH_ABSENT)]:
        assert not torch.allclose(v[a], v[b], atol=1e-4), (a, b)  # every pitch input means something
    # None is "from the prompt": the prior's expected class embedding, which a class input is not
    from_text = dit(x, t, **inputs)
    assert torch.allclose(from_text, dit(x, t, **inputs, pitch=torch.full((2,), PITCH_FROM_TEXT)))
    assert not torch.allclose(from_text, v[0], atol=1e-4)
    # with no prompt there is nothing to infer from: the pitch is absent (the unconditional half of CFG)
    silent = dict(inputs, text_mask=torch.zeros_like(inputs["text_mask"]))
    assert torch.allclose(dit(x, t, **silent), dit(x, t, **silent, pitch=torch.full((2,), PITCH_ABSENT)))
    # a confident prior is that class's embedding
    logits = dit.pitch_logits(inputs["text"], inputs["text_mask"])
    assert logits.shape == (2, PITCHED.pitch_classes + 1)
    with torch.no_grad():
        dit.pitch_prior.out[-1].bias.copy_(torch.tensor([0.0, 0, 60, 0, 0, 0, 0]))
        dit.pitch_prior.out[-1].weight.zero_()
    assert torch.allclose(dit(x, t, **inputs), dit(x, t, **inputs, pitch=torch.full((2,), 2)), atol=1e-5)


@pytest.mark.parametrize("prior", ["pitch", "tempo"])
def test_a_prompt_prior_learns_a_class_from_the_prompt_tokens(prior):
    torch.manual_seed(0)
    cfg = DiTConfig(**{**PITCHED.__dict__, "tempo_classes": 30, "tempo_low": 100})
    dit = DiT(cfg)
    logits_of = dit.pitch_logits if prior == "pitch" else dit.tempo_logits
    none = cfg.pitch_classes if prior == "pitch" else cfg.tempo_classes  # the last class: none
    text = torch.randn(4, 3, TINY.text_dim)
    mask = torch.ones(4, 3, dtype=torch.bool)
    target = torch.tensor([0, 3, 5, none])
    assert logits_of(text, mask).shape == (4, none + 1)
    opt = torch.optim.Adam(dit.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(logits_of(text, mask), target)
        loss.backward()
        opt.step()
    assert torch.equal(logits_of(text, mask).argmax(dim=1), target)


def test_x0_channels_are_predicted_clean_and_returned_as_velocity():
    cfg = DiTConfig(**{**TINY.__dict__, "x0_channels": 2})
    plain, x0 = random_dit(cfg=TINY), DiT(cfg)
    missing = x0.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["control_skip"] and not x0.control_skip.any()  # zero: its own test is below
    x, t, inputs = torch.randn(2, TINY.latent_channels, 9), torch.tensor([0.3, 0.8]), dit_inputs()
    inputs["control_mask"] = torch.zeros_like(inputs["control_mask"])  # no control: no skip (tested below)
    head = plain(x, t, **inputs)  # what the network computes, read as velocity everywhere
    v = x0(x, t, **inputs)
    assert torch.allclose(v[:, :2], head[:, :2], atol=1e-5)
    # the last two channels: the network's output is x̂0, so x - t v gives it back
    assert torch.allclose(x[:, 2:] - t[:, None, None] * v[:, 2:], head[:, 2:], atol=1e-5)


def test_control_skip_adds_a_line_of_each_present_control_to_its_measured_channel():
    from pipelines.controls import CONTROL_NAMES
    from pipelines.dit import SKIP_CONTROL_INDEX, SKIP_CONTROLS

    assert [CONTROL_NAMES.index(n) for n in SKIP_CONTROLS] == list(SKIP_CONTROL_INDEX)
    cfg = DiTConfig(**{**TINY.__dict__, "x0_channels": 2})  # the last two: log-f0 and voicing
    dit = random_dit(cfg=cfg)
    with torch.no_grad():
        dit.control_skip.copy_(torch.tensor([[2.0, 1.0], [0.0, -3.0]]))
    x, t, inputs = torch.randn(2, TINY.latent_channels, 9), torch.tensor([0.3, 0.8]), dit_inputs()
    inputs["control_mask"] = torch.zeros_like(inputs["control_mask"])
    inputs["control_mask"][0, 2] = 1.0  # sample 0: log-f0 present, voicing absent; sample 1: nothing
    line, gate = dit.skip_term(inputs["controls"], inputs["control_mask"])
    assert torch.allclose(line[0, 0], 2.0 * inputs["controls"][0, 2] + 1.0)
    assert line[0, 1].abs().sum() == 0 and line[1].abs().sum() == 0
    # the log-f0 line alone where log-f0 is given and voicing is not (the pitch hint); nowhere else
    assert gate[0, 0].eq(1).all() and gate[0, 1].eq(0).all() and gate[1].eq(0).all()
    plain = dit(x, t, **{**inputs, "control_mask": torch.zeros_like(inputs["control_mask"])})
    hinted = dit(x, t, **inputs)
    x0_hat = x[:, 2:] - t[:, None, None] * hinted[:, 2:]
    assert torch.allclose(x0_hat[0, 0], line[0, 0], atol=1e-5)  # exact: the network has no say
    assert torch.allclose(hinted[1], plain[1], atol=1e-6)  # nothing given: the network alone
    # with the voicing control given, only its voiced frames take the line alone
    voiced = dict(inputs, control_mask=inputs["control_mask"].clone(), controls=inputs["controls"].clone())
    voiced["control_mask"][0, 3] = 1.0
    voiced["controls"][0, 3] = torch.tensor([1.0, 0.0] * 4 + [1.0])
    _, gate = dit.skip_term(voiced["controls"], voiced["control_mask"])
    assert gate[0, 0].tolist() == [1.0, 0.0] * 4 + [1.0]


def test_training_moves_the_level_and_voicing_lines_but_never_the_log_f0_line():
    """The log-f0 line is a definition: no gradient and no weight decay reach it (it drifted 7% when it did)."""
    from training.trainer import TrainConfig, make_optimizer

    cfg = DiTConfig(**{**TINY.__dict__, "latent_channels": 4, "x0_channels": 3})
    dit = random_dit(cfg=cfg)
    with torch.no_grad():
        dit.control_skip.copy_(torch.tensor([[1.5, -0.5], [2.7, 0.8], [1.2, 0.3]]))
    before = dit.control_skip.detach().clone()
    opt = make_optimizer({"dit": dit}, TrainConfig(lr=0.05, weight_decay=0.5))
    x, t, inputs = torch.randn(2, 4, 9), torch.tensor([0.3, 0.8]), dit_inputs()
    inputs["control_mask"] = torch.ones_like(inputs["control_mask"])
    inputs["controls"][:, 3] = torch.tensor([1.0, 0.0] * 4 + [1.0])  # voiced and unvoiced frames
    for _ in range(3):
        opt.zero_grad()
        dit(x, t, **inputs).square().mean().backward()
        opt.step()
    assert torch.equal(dit.control_skip[1], before[1])
    assert not torch.equal(dit.control_skip[0], before[0]) and not torch.equal(dit.control_skip[2], before[2])


def test_cat_inputs_fills_a_missing_pitch_as_absent():
    both = cat_inputs({"pitch": torch.tensor([3])}, {"text": None})
    assert both["pitch"].tolist() == [3, PITCH_ABSENT]


# ---------------------------------------------------------------------------------------------------
# samplers


def test_offset_noise_has_unit_variance_and_a_constant_part():
    from pipelines.samplers import latent_noise

    plain = latent_noise((256, 4, 256), torch.Generator().manual_seed(0))
    offset = latent_noise((256, 4, 256), torch.Generator().manual_seed(0), offset=1.0)
    for noise in (plain, offset):
        assert abs(float(noise.var()) - 1.0) < 0.06
    # the mean over frames: ~1/sqrt(256) for i.i.d. noise, ~sqrt(1/2) with offset 1
    assert float(plain.mean(dim=-1).std()) < 0.1
    assert abs(float(offset.mean(dim=-1).std()) - 0.5**0.5) < 0.1
    again = latent_noise((256, 4, 256), torch.Generator().manual_seed(0), offset=1.0)
    assert torch.equal(offset, again)


def test_rf_times_run_from_t_start_to_zero():
    times = rf_times(8)
    assert times.shape == (9,) and times[0] == 1 and times[-1] == 0 and (times.diff() < 0).all()
    half = rf_times(4, t_start=0.5)
    assert torch.allclose(half, torch.tensor([0.5, 0.375, 0.25, 0.125, 0.0]))
    shifted = rf_times(8, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > times[1:-1]).all()
    assert rf_times(4, t_start=0.5, shift=3.0)[0] == pytest.approx(0.5)  # starts where the init was noised


def test_noise_to_interpolates_init_and_noise():
    init, noise = torch.ones(3), torch.zeros(3)
    assert torch.allclose(noise_to(init, noise, 0.25), torch.full((3,), 0.75))


def test_euler_lands_on_the_target_of_a_straight_flow():
    target = torch.randn(2, 4, 9)

    def model(x, t):  # the exact velocity when every sample flows to `target`
        return (x - target) / t.view(-1, 1, 1)

    out = sample_euler(model, torch.randn(2, 4, 9), rf_times(4))
    assert torch.allclose(out, target, atol=1e-5)


def gaussian_flow(mu: float, s: float):
    """The exact rectified-flow velocity for data ~ N(mu, s^2): x0 = mu + s * (noise at t = 1)."""

    def model(x, t):
        t = t.view(-1, 1, 1)
        var = (1 - t) ** 2 * s**2 + t**2
        centred = x - (1 - t) * mu
        return t / var * centred - (mu + (1 - t) * s**2 / var * centred)

    return model


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    mu, s = 2.0, 0.3
    z = torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(0))
    exact = mu + s * z
    model = gaussian_flow(mu, s)
    euler = (sample_euler(model, z, rf_times(6)) - exact).abs().max()
    heun = (sample_heun(model, z, rf_times(6)) - exact).abs().max()
    assert heun < 0.5 * euler
    assert (sample_heun(model, z, rf_times(48)) - exact).abs().max() < 0.01  # and it converges


def test_callback_sees_every_step_once():
    seen = []
    target = torch.zeros(1, 4, 5)

    def model(x, t):
        return (x - target) / t.view(-1, 1, 1)

    for sampler in (sample_euler, sample_heun):
        seen.clear()
        sampler(model, torch.randn(1, 4, 5), rf_times(5), callback=seen.append)
        assert [s["i"] for s in seen] == list(range(5))
        assert all(torch.allclose(s["denoised"], target, atol=1e-5) for s in seen)
        assert [float(s["t"]) for s in seen] == pytest.approx(rf_times(5)[:-1].tolist())


def test_cfg_scale_one_is_the_conditional_model():
    dit = random_dit()
    x, t, cond = torch.randn(2, TINY.latent_channels, 9), torch.rand(2), dit_inputs()
    uncond = dict(cond, text_mask=torch.zeros_like(cond["text_mask"]))
    assert torch.allclose(cfg_model(dit, cond, uncond, 1.0)(x, t), dit(x, t, **cond))


def test_cfg_leaves_the_measured_channels_unguided():
    dit = random_dit()
    x, t, cond = torch.randn(2, TINY.latent_channels, 9), torch.rand(2), dit_inputs()
    uncond = dict(cond, text_mask=torch.zeros_like(cond["text_mask"]))
    v_c, v_u = dit(x, t, **cond), dit(x, t, **uncond)
    v = cfg_model(dit, cond, uncond, 4.0, unguided_channels=2)(x, t)
    assert torch.allclose(v[:, -2:], v_c[:, -2:], atol=1e-5)  # the last two: conditional only
    assert torch.allclose(v[:, :-2], (v_u + 4.0 * (v_c - v_u))[:, :-2], atol=1e-4)


def test_cfg_batches_cond_and_uncond_in_one_forward():
    dit = random_dit()
    x, t, cond = torch.randn(2, TINY.latent_channels, 9), torch.rand(2), dit_inputs()
    calls = []
    dit.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    v = cfg_model(dit, cond, {}, 3.0)(x, t)
    assert calls == [4]
    v_cond, v_uncond = dit(x, t, **cond), dit(x, t)
    assert torch.allclose(v, v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-4)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
@pytest.mark.parametrize("t_start", [1.0, 0.6])
def test_known_frames_come_out_equal_to_the_known_latent(sampler, t_start):
    dit = random_dit()
    g = torch.Generator().manual_seed(3)
    known = torch.randn(2, TINY.latent_channels, 9, generator=g)
    noise = torch.randn(2, TINY.latent_channels, 9, generator=g)
    known_mask = torch.zeros(2, 1, 9)
    known_mask[..., :4] = 1  # extend: the first 4 frames are given
    seen = []

    def spy(x, t, **extra):
        seen.append(extra)
        return dit(x, t, **extra)

    guided = cfg_model(spy, dit_inputs(), {}, 2.0)
    model = known_frames_model(guided, known, known_mask, noise)
    out = sampler(model, noise_to(known, noise, t_start), rf_times(4, t_start))
    assert torch.allclose(out[..., :4], known[..., :4], atol=1e-5)
    assert not torch.allclose(out[..., 4:], known[..., 4:], atol=1e-1)
    assert seen and all(extra["known_mask"].shape == (4, 1, 9) for extra in seen)  # both CFG halves


def test_rhythm_features_are_harmonics_of_the_beat_and_bar_phases_where_present():
    from pipelines.controls import CONTROL_NAMES
    from pipelines.dit import RHYTHM_CONTROL_INDEX, rhythm_features

    assert [CONTROL_NAMES[i] for i in RHYTHM_CONTROL_INDEX] == ["beat_sin", "beat_cos", "bar_sin", "bar_cos"]
    cfg = DiTConfig(**{**TINY.__dict__, "rhythm_harmonics": 3})
    phase = torch.linspace(0, 4 * math.pi, 9)  # two beats
    controls = torch.zeros(2, 8, 9)
    controls[:, 4], controls[:, 5] = torch.sin(phase), torch.cos(phase)
    controls[:, 6], controls[:, 7] = torch.sin(phase / 4), torch.cos(phase / 4)
    mask = torch.ones(2, 8, 9)
    mask[1, 6:8] = 0.0  # sample 1 has a beat grid but no bars
    f = rhythm_features(controls, mask, cfg)
    assert f.shape == (2, 12, 9)
    for k in (1, 2, 3):
        assert torch.allclose(f[0, 2 * (k - 1)], torch.cos(k * phase), atol=1e-5)
        assert torch.allclose(f[0, 2 * (k - 1) + 1], torch.sin(k * phase), atol=1e-5)
        assert torch.allclose(f[0, 6 + 2 * (k - 1)], torch.cos(k * phase / 4), atol=1e-5)
    assert f[1, 6:].abs().sum() == 0 and torch.allclose(f[1, :6], f[0, :6])


def test_a_dit_grown_with_rhythm_features_keeps_its_function_until_trained_and_then_hears_them():
    """Zero-initialised rhythm embedding and skip: the grown DiT is the old one, weight for weight; once
    either is non-zero, moving the beat phase changes its output."""
    cfg = DiTConfig(**{**TINY.__dict__, "latent_channels": 4, "x0_channels": 3})
    old = random_dit(cfg=cfg)
    grown = DiT(DiTConfig(**{**cfg.__dict__, "rhythm_harmonics": 4})).eval()
    rhythm = {k: v for k, v in grown.state_dict().items() if k.startswith("rhythm_")}
    assert set(rhythm) == {"rhythm_embedder.weight", "rhythm_embedder.bias", "rhythm_skip"}
    assert all(v.abs().sum() == 0 for v in rhythm.values())
    grown.load_state_dict({**old.state_dict(), **rhythm}, strict=True)
    x, t, inputs = torch.randn(2, 4, 9), torch.tensor([0.3, 0.8]), dit_inputs()
    inputs["control_mask"] = torch.ones_like(inputs["control_mask"])
    with torch.no_grad():
        assert torch.allclose(grown(x, t, **inputs), old(x, t, **inputs), atol=1e-6)
        shifted = dict(inputs, controls=inputs["controls"].clone())
        shifted["controls"][:, 4:6] = shifted["controls"][:, [5, 4]]  # another beat phase
        assert torch.allclose(grown(x, t, **shifted), old(x, t, **shifted), atol=1e-6)
        grown.rhythm_skip.fill_(0.5)  # the skip alone: the level channel (the first x0-predicted) moves
        a, b = grown(x, t, **inputs), old(x, t, **inputs)
        assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3
        assert torch.allclose(a[:, [0, 2, 3]], b[:, [0, 2, 3]], atol=1e-6)
        grown.rhythm_skip.zero_()
        grown.rhythm_embedder.weight.normal_(0, 0.2)  # the embedding: every channel hears the features
        a = grown(x, t, **inputs)
        assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3
        no_grid = dict(inputs, control_mask=inputs["control_mask"].clone())
        no_grid["control_mask"][:, 4:8] = 0.0  # without the beat and bar controls the features are absent
        plain = dict(shifted, control_mask=no_grid["control_mask"])
        assert torch.allclose(grown(x, t, **no_grid), grown(x, t, **plain), atol=1e-6)
