"""GRPO math: hand-computed values and invariances (METHOD.md §4)."""

import math
import subprocess
import sys

import pytest
import torch

from learner.grpo import (
    CLIP_HIGH,
    CLIP_LOW,
    DUAL_CLIP,
    KL_COEF,
    GrpoLossConfig,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_low_var,
    masked_sum,
    policy_loss_terms,
    sampler_correction,
    token_logprobs,
    token_mean_loss,
)

F64 = torch.float64


def _t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def _all_scorable(n):
    return torch.ones(n, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------
# Group advantages


def test_advantages_use_unbiased_std_by_default():
    # rewards [1, 0, 0, 1]: mean 0.5, deviations ±0.5, Σdev² = 1, unbiased var = 1/3, std = 0.57735
    # advantage = ±0.5 / (0.57735 + 1e-6) = ±0.866024
    adv = group_advantages(_t([1, 0, 0, 1]), torch.zeros(4, dtype=torch.long), _all_scorable(4))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, _t([a, -a, -a, a]), rtol=1e-12, atol=0)
    assert abs(a - 0.866024) < 1e-6


def test_advantages_with_population_std():
    # rewards [1, 0, 0, 1]: population var = 1/4, std = 0.5 → advantage = ±0.5 / 0.500001 = ±0.999998
    adv = group_advantages(
        _t([1, 0, 0, 1]), torch.zeros(4, dtype=torch.long), _all_scorable(4), std="population"
    )
    a = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(adv, _t([a, -a, -a, a]), rtol=1e-12, atol=0)


def test_advantages_without_std_are_the_deviations_from_the_group_mean():
    # Dr. GRPO: a group of near-equal rewards keeps its small spread instead of ±1
    scores = _t([1, 0, 0, 1, 0.1, 0.0, 0.0, 0.1])
    adv = group_advantages(scores, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), _all_scorable(8), std="none")
    torch.testing.assert_close(adv, _t([0.5, -0.5, -0.5, 0.5, 0.05, -0.05, -0.05, 0.05]), rtol=1e-12, atol=0)


def test_advantages_are_computed_per_group_with_arbitrary_interleaved_ids():
    # group 7: [2, 4] → mean 3, unbiased std √2 → ∓1/√2 (÷ (√2 + eps));
    # group 3: [1, 0, 0, 1] → ±0.866 as above
    scores = _t([2, 1, 0, 4, 0, 1])
    group = torch.tensor([7, 3, 3, 7, 3, 3])
    adv = group_advantages(scores, group, _all_scorable(6))
    g7 = 1 / (math.sqrt(2) + 1e-6)
    g3 = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, _t([-g7, g3, -g3, g7, -g3, g3]), rtol=1e-12, atol=0)


def test_advantage_is_exactly_zero_when_group_rewards_are_equal():
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004 in float64; /3 ≠ 0.1, so a naive formula gives
    # tiny eps-noise (≈1e-11) instead of 0
    scores = _t([0.1, 0.1, 0.1, 1.0, 1.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    for std in ("unbiased", "population", "none"):
        adv = group_advantages(scores, group, _all_scorable(5), std=std)
        assert torch.equal(adv, torch.zeros(5, dtype=F64))


def test_unscorable_rollouts_are_excluded_from_stats_and_get_zero_advantage():
    # scorable [1, 0, 0] → mean 1/3, dev [2/3, -1/3, -1/3], Σdev² = 6/9, unbiased var 1/3, std 0.57735
    # → [1.1547, -0.57735, -0.57735]; the unscorable 4th (score 5 or NaN) gets 0 and changes nothing
    scorable = torch.tensor([True, True, True, False])
    group = torch.zeros(4, dtype=torch.long)
    s = math.sqrt(1 / 3) + 1e-6
    expected = _t([(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0.0])
    for bad in (5.0, float("nan")):
        adv = group_advantages(_t([1, 0, 0, bad]), group, scorable)
        torch.testing.assert_close(adv, expected, rtol=1e-12, atol=0)


def test_advantage_is_zero_for_a_group_with_one_or_no_scorable_rollout():
    # group 0: one scorable (unbiased std undefined) → 0; group 1: none scorable → 0;
    # group 2: [3, 1] → mean 2, std √2 → ±1/√2
    scores = _t([1.0, 0.0, 0.5, 0.7, 3.0, 1.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    scorable = torch.tensor([True, False, False, False, True, True])
    g2 = 1 / (math.sqrt(2) + 1e-6)
    adv = group_advantages(scores, group, scorable)
    torch.testing.assert_close(adv, _t([0, 0, 0, 0, g2, -g2]), rtol=1e-12, atol=0)
    adv_pop = group_advantages(scores, group, scorable, std="population")
    assert torch.equal(adv_pop[:4], torch.zeros(4, dtype=F64))


def test_advantages_accept_integer_scores_and_reject_bad_inputs():
    # [1, 0]: mean 0.5, Σdev² = 0.5, unbiased var 0.5 / 1, std 0.70711 → ±0.5 / 0.70711 = ±0.70711
    adv = group_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), _all_scorable(2))
    assert adv.dtype == torch.get_default_dtype()
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -a]))
    with pytest.raises(ValueError, match="std="):
        group_advantages(_t([1, 0]), torch.tensor([0, 0]), _all_scorable(2), std="biased")
    with pytest.raises(ValueError, match="same length"):
        group_advantages(_t([1, 0]), torch.tensor([0]), _all_scorable(2))


# ---------------------------------------------------------------------------------------------------
# Policy-gradient loss


def test_zero_advantage_gives_zero_gradient_on_logprobs():
    torch.manual_seed(0)
    logprobs = (-torch.rand(3, 5, dtype=F64)).requires_grad_()
    old = -torch.rand(3, 5, dtype=F64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss, _ = grpo_loss(logprobs, old, None, torch.zeros(3, dtype=F64), mask, 15, GrpoLossConfig())
    loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(3, 5, dtype=F64))


def test_ratio_is_one_and_nothing_is_clipped_when_current_equals_old():
    logprobs = _t([[-0.5, -1.0, -2.0], [-0.1, -0.3, -9.0]])
    adv = _t([1.0, -2.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, metrics = grpo_loss(logprobs, logprobs.clone(), None, adv, mask, 5, GrpoLossConfig())
    # per-token loss = −A·1: three tokens of −1, two of +2 → (−3 + 4) / 5 = 0.2
    torch.testing.assert_close(loss, _t(0.2))
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["ratio_mean"].item() == 1.0
    assert metrics["ratio_max"].item() == 1.0
    assert metrics["approx_kl"].item() == 0.0
    assert "kl" not in metrics


def _one_token_case(ratio, advantage):
    """Loss, clipped flag and d loss / d logprob for a single token with the given ratio."""
    logprobs = _t([[math.log(ratio)]]).requires_grad_()
    old = _t([[0.0]])
    loss, clipped = policy_loss_terms(logprobs, old, _t([advantage]), torch.ones(1, 1, dtype=torch.bool))
    loss.sum().backward()
    return loss.item(), bool(clipped.item()), logprobs.grad.item()


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "clipped", "grad"),
    [
        # A = +1, ratio 1.5: max(−1.5, −1.3) = −1.3 → clipped at 1 + 0.3, no gradient
        (1.5, 1.0, -1.3, True, 0.0),
        # A = +1, ratio 0.5: max(−0.5, −0.8) = −0.5 → not clipped, d(−A·r)/dlogp = −A·r = −0.5
        (0.5, 1.0, -0.5, False, -0.5),
        # A = +1, ratio 1.1: inside [0.8, 1.3] → −1.1, gradient −1.1
        (1.1, 1.0, -1.1, False, -1.1),
        # A = −1, ratio 0.5: max(0.5, 0.8) = 0.8 → clipped at 1 − 0.2, no gradient
        (0.5, -1.0, 0.8, True, 0.0),
        # A = −1, ratio 2.0: max(2.0, 1.3) = 2.0 < dual cap 3.0 → not clipped, gradient −A·r = 2.0
        (2.0, -1.0, 2.0, False, 2.0),
        # A = −2, ratio 4.0: max(8.0, 2.6) = 8.0 > cap −A·3 = 6.0 → dual-clipped to 6.0, no gradient
        (4.0, -2.0, 6.0, True, 0.0),
        # A = −1, ratio 1.2: inside the clip range → 1.2, gradient 1.2
        (1.2, -1.0, 1.2, False, 1.2),
    ],
)
def test_clipping_for_positive_and_negative_advantages(ratio, advantage, loss, clipped, grad):
    got_loss, got_clipped, got_grad = _one_token_case(ratio, advantage)
    assert got_loss == pytest.approx(loss, abs=1e-12)
    assert got_clipped is clipped
    assert got_grad == pytest.approx(grad, abs=1e-12)


def test_release_clip_constants():
    # METHOD.md §4: clip low 0.2, high 0.3, dual clip 3.0, KL coefficient 0.01
    assert (CLIP_LOW, CLIP_HIGH, DUAL_CLIP, KL_COEF) == (0.2, 0.3, 3.0, 0.01)
    assert GrpoLossConfig() == GrpoLossConfig(clip_low=0.2, clip_high=0.3, dual_clip=3.0, kl_coef=0.01)


def test_masked_tokens_have_zero_loss_and_are_not_clipped_even_if_nan():
    logprobs = _t([[math.log(1.5), float("nan")]])
    old = _t([[0.0, 0.0]])
    mask = torch.tensor([[True, False]])
    loss, clipped = policy_loss_terms(logprobs, old, _t([1.0]), mask)
    assert torch.equal(loss, _t([[-1.3, 0.0]]))
    assert clipped.tolist() == [[True, False]]


def test_per_rollout_advantages_broadcast_like_per_token_advantages():
    torch.manual_seed(1)
    logprobs, old = -torch.rand(2, 4, dtype=F64), -torch.rand(2, 4, dtype=F64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    adv = _t([0.7, -1.3])
    a, ca = policy_loss_terms(logprobs, old, adv, mask)
    b, cb = policy_loss_terms(logprobs, old, adv[:, None].expand(2, 4), mask)
    assert torch.equal(a, b) and torch.equal(ca, cb)


def test_clip_fraction_counts_clipped_tokens_over_the_token_count():
    # ratios [1.5, 1.0, 1.1, 0.5] with A = +1: only 1.5 is clipped → 1/4
    logprobs = torch.log(_t([[1.5, 1.0, 1.1, 0.5]]))
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, metrics = grpo_loss(logprobs, torch.zeros(1, 4, dtype=F64), None, _t([1.0]), mask, 4, GrpoLossConfig())
    assert metrics["clip_fraction"].item() == 0.25
    assert metrics["ratio_max"].item() == pytest.approx(1.5)
    assert metrics["ratio_mean"].item() == pytest.approx((1.5 + 1.0 + 1.1 + 0.5) / 4)


# ---------------------------------------------------------------------------------------------------
# KL


def test_k3_kl_is_zero_when_equal_and_matches_hand_values():
    logp = _t([[-0.3, -1.2, -4.0]])
    assert torch.equal(kl_low_var(logp, logp.clone()), torch.zeros(1, 3, dtype=F64))
    # ref − logp = 1: e − 1 − 1 = 0.718282; ref − logp = −1: e⁻¹ + 1 − 1 = 0.367879
    kl = kl_low_var(_t([[0.0, 0.0]]), _t([[1.0, -1.0]]))
    torch.testing.assert_close(kl, _t([[math.e - 2, math.exp(-1)]]), rtol=1e-12, atol=0)


def test_k3_kl_is_nonnegative_and_clamped():
    torch.manual_seed(2)
    logp, ref = torch.randn(50, 20, dtype=F64) * 3, torch.randn(50, 20, dtype=F64) * 3
    kl = kl_low_var(logp, ref)
    assert (kl >= 0).all() and (kl <= 10.0).all()
    # ref − logp = 5: e⁵ − 5 − 1 = 142.4 → clamped to 10 (default) or to 0.5
    big = kl_low_var(_t([[0.0]]), _t([[5.0]]))
    assert big.item() == 10.0
    assert kl_low_var(_t([[0.0]]), _t([[5.0]]), clamp=0.5).item() == 0.5
    # an extreme log-ratio stays finite in value and gradient
    logp_far = _t([[0.0]]).requires_grad_()
    kl_low_var(logp_far, _t([[1000.0]])).sum().backward()
    assert torch.isfinite(logp_far.grad).all()


def test_total_loss_is_pg_plus_kl_coef_times_kl():
    # one token, A = 1, logp = old = 0 → pg = −1; ref − logp = 1 → kl = e − 2 = 0.718282
    # loss = −1 + 0.01 · 0.718282 = −0.992817
    z = _t([[0.0]])
    loss, metrics = grpo_loss(
        z, z, _t([[1.0]]), _t([1.0]), torch.ones(1, 1, dtype=torch.bool), 1, GrpoLossConfig()
    )
    torch.testing.assert_close(loss, _t(-1 + 0.01 * (math.e - 2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(metrics["kl"], _t(math.e - 2), rtol=1e-12, atol=0)
    assert metrics["pg_loss"].item() == -1.0
    assert not metrics["loss"].requires_grad


# ---------------------------------------------------------------------------------------------------
# Aggregation


def _split_batch():
    """4 rollouts with 5, 1, 3 and 4 valid tokens (13 in all), float64, with a reference."""
    torch.manual_seed(3)
    lengths = torch.tensor([5, 1, 3, 4])
    mask = torch.arange(5)[None, :] < lengths[:, None]  # [4, 5]
    logprobs = -torch.rand(4, 5, dtype=F64)
    old = logprobs + 0.3 * torch.randn(4, 5, dtype=F64)
    ref = logprobs + 0.3 * torch.randn(4, 5, dtype=F64)
    adv = _t([1.2, -0.4, -1.5, 0.7])
    return logprobs, old, ref, adv, mask


def test_token_mean_loss_of_micro_batches_sums_to_the_global_token_mean():
    values = _t([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # global token mean = (1 + 2 + 3 + 10) / 4 = 4; per-micro-batch means would give (2 + 10) / 2 = 6
    parts = [token_mean_loss(values[i : i + 1], mask[i : i + 1], 4) for i in range(2)]
    assert sum(parts).item() == 4.0
    assert masked_sum(values, mask).item() == 16.0
    assert token_mean_loss(values, mask, torch.tensor(4)).item() == 4.0


@pytest.mark.parametrize("splits", [[1, 3], [2, 2], [3, 1]])
def test_splitting_a_batch_across_micro_batches_and_ranks_reproduces_loss_and_gradient(splits):
    logprobs, old, ref, adv, mask = _split_batch()
    cfg = GrpoLossConfig()
    total_tokens = int(mask.sum())  # 13
    full = logprobs.clone().requires_grad_()
    full_loss, full_metrics = grpo_loss(full, old, ref, adv, mask, total_tokens, cfg)
    full_loss.backward()
    # the same rollouts as 2 micro-batches (or 2 ranks), each divided by the GLOBAL token count
    split = logprobs.clone().requires_grad_()
    losses, metrics = [], []
    for rows in torch.split(torch.arange(4), splits):
        loss, m = grpo_loss(split[rows], old[rows], ref[rows], adv[rows], mask[rows], total_tokens, cfg)
        losses.append(loss)
        metrics.append(m)
    sum(losses).backward()
    torch.testing.assert_close(sum(losses), full_loss, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(split.grad, full.grad, rtol=1e-12, atol=1e-15)
    for key in ("pg_loss", "kl", "clip_fraction", "approx_kl", "ratio_mean"):
        torch.testing.assert_close(sum(m[key] for m in metrics), full_metrics[key], rtol=1e-12, atol=1e-15)
    assert max(m["ratio_max"] for m in metrics) == full_metrics["ratio_max"]


# ---------------------------------------------------------------------------------------------------
# Logits → logprobs, entropy


def test_entropy_of_uniform_logits_is_log_vocab_size():
    ent = entropy_from_logits(torch.full((2, 3, 7), 0.37, dtype=F64))
    torch.testing.assert_close(ent, torch.full((2, 3), math.log(7), dtype=F64), rtol=1e-12, atol=1e-15)


def test_entropy_matches_manual_formula_and_survives_large_logits():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 11, dtype=F64) * 5
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1), rtol=1e-10, atol=1e-12)
    # a shift by 1e4 changes nothing (logsumexp is stable); one dominant token → entropy ≈ 0
    torch.testing.assert_close(entropy_from_logits(logits + 1e4), entropy_from_logits(logits))
    peaked = torch.tensor([[[1000.0, 0.0, 0.0]]])
    assert entropy_from_logits(peaked).abs().item() < 1e-6


def test_token_logprobs_match_manual_log_softmax():
    torch.manual_seed(5)
    logits = torch.randn(2, 4, 9, dtype=F64)
    tokens = torch.randint(0, 9, (2, 4))
    manual = torch.log_softmax(logits, dim=-1)
    expected = torch.stack([torch.stack([manual[n, t, tokens[n, t]] for t in range(4)]) for n in range(2)])
    assert torch.equal(token_logprobs(logits, tokens), expected)


def test_token_logprobs_and_entropy_upcast_half_precision_logits():
    logits = torch.randn(1, 2, 5).to(torch.bfloat16)
    tokens = torch.tensor([[0, 4]])
    assert token_logprobs(logits, tokens).dtype == torch.float32
    assert entropy_from_logits(logits).dtype == torch.float32


def test_entropy_metric_is_reported_when_entropy_is_given():
    logits = torch.zeros(1, 2, 4, dtype=F64)  # uniform over 4 → entropy log 4 on each token
    logprobs = token_logprobs(logits, torch.tensor([[1, 2]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    entropy = entropy_from_logits(logits)
    _, metrics = grpo_loss(logprobs, logprobs, None, _t([1.0]), mask, 2, GrpoLossConfig(), entropy=entropy)
    torch.testing.assert_close(metrics["entropy"], _t(math.log(4)))


# ---------------------------------------------------------------------------------------------------
# Config and import


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clip_low", 1.0),
        ("clip_low", -0.1),
        ("clip_high", -0.1),
        ("dual_clip", 1.0),
        ("kl_coef", -1.0),
        ("kl_clamp", 0.0),
    ],
)
def test_config_rejects_invalid_knobs_with_a_hint(field, value):
    with pytest.raises(ValueError, match=f"{field}=.*set it"):
        GrpoLossConfig(**{field: value})


def test_import_is_light():
    code = "import sys, learner.grpo; bad = {'transformers', 'vllm', 'ray', 'deepspeed'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------
# Truncated importance sampling toward the sampler


def test_sampler_correction_is_exactly_one_where_old_logprobs_are_the_samplers():
    torch.manual_seed(0)
    sampler = torch.randn(4, 6, dtype=torch.float32).clamp(max=0) - 0.1
    mask = torch.rand(4, 6) > 0.3
    weights, metrics = sampler_correction(sampler.clone(), sampler, mask, int(mask.sum()), 2.0)
    assert torch.equal(weights, torch.ones_like(weights))
    assert metrics["tis_weight_mean"] == 1.0 and metrics["tis_weight_max"] == 1.0
    assert metrics["tis_clipped_share"] == 0.0
    # so the loss with the correction is the loss without it, bit for bit (float32)
    logprobs, adv = sampler + 0.05 * torch.randn(4, 6), torch.randn(4)
    plain, _ = grpo_loss(logprobs, sampler, None, adv, mask, int(mask.sum()), GrpoLossConfig())
    weighted, _ = grpo_loss(
        logprobs, sampler, None, adv[:, None] * weights, mask, int(mask.sum()), GrpoLossConfig()
    )
    assert torch.equal(plain, weighted)


def test_sampler_correction_weights_are_the_ratio_truncated_at_the_cap():
    old = _t([[-1.0, -1.0, -1.0, -5.0]])
    sampler = _t([[-1.5, -0.5, -3.0, -5.0]])
    mask = torch.tensor([[True, True, True, False]])
    weights, metrics = sampler_correction(old, sampler, mask, 3, 2.0)
    expected = _t([[math.exp(0.5), math.exp(-0.5), 2.0, 1.0]])  # e^2 > 2: truncated
    assert torch.allclose(weights, expected)
    assert metrics["tis_weight_max"] == pytest.approx(2.0)  # over the masked tokens only
    assert metrics["tis_clipped_share"] == pytest.approx(1 / 3)
    assert metrics["tis_weight_mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.5) + 2.0) / 3)
    with pytest.raises(ValueError, match="cap"):
        sampler_correction(old, sampler, mask, 3, 0.5)


def test_weighting_a_tokens_advantage_weights_its_clipped_loss_alike():
    """Every clip branch (PPO low/high, dual clip) scales with a positive weight: the correction may
    enter as a per-token advantage."""
    torch.manual_seed(1)
    logprobs, old = torch.randn(6, 8, dtype=F64), torch.randn(6, 8, dtype=F64)
    adv, mask = torch.randn(6, dtype=F64) * 2, torch.ones(6, 8, dtype=torch.bool)
    weights = torch.rand(6, 8, dtype=F64) * 2 + 0.01
    plain, clipped = policy_loss_terms(logprobs, old, adv, mask)
    weighted, clipped_w = policy_loss_terms(logprobs, old, adv[:, None] * weights, mask)
    assert torch.allclose(weighted, plain * weights) and torch.equal(clipped, clipped_w)
    assert clipped.any() and not clipped.all()  # both branches exercised
