"""GRPO math: group advantages, clipped policy-gradient loss, k3 KL term, token-mean aggregation.

Pure torch, no heavy imports: `import learner.grpo` is instant and every function is testable on CPU
with small hand-computed tensors. The constants are the release's settings (METHOD.md §4).

Shapes: N rollouts in a (micro-)batch, T completion tokens (right-padded), V vocabulary size.
`mask` [N, T] is True on the completion tokens that count for the loss.

Aggregation: the loss is a token mean over the whole mini-batch (one optimizer step). Each
micro-batch on each rank divides its masked *sum* by the GLOBAL token count of the mini-batch, so
summing the micro-batch losses (gradient accumulation) and summing across ranks (all-reduce of the
gradients) reproduces the global token mean and its gradient exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ADVANTAGE_EPS = 1e-6  # METHOD.md §4: advantage = (r − mean_group) / (std_group + 1e-6)
CLIP_LOW = 0.2  # METHOD.md §4: ratio clip low 0.2 (release)
CLIP_HIGH = 0.3  # METHOD.md §4: ratio clip high 0.3 (release; the paper text says symmetric 0.2)
DUAL_CLIP = 3.0  # METHOD.md §4: dual-clip constant for negative advantages
KL_COEF = 0.01  # METHOD.md §4: coefficient of the low_var_kl loss term
KL_CLAMP = 10.0  # METHOD.md §4: low_var_kl clamped to ±10
# Log-ratios are clamped before exp() so that neither value nor gradient can overflow (as veRL does).
# Every value beyond it is already clipped by the PPO clip, the dual clip or the KL clamp.
LOG_RATIO_CLAMP = 20.0

StdKind = Literal["unbiased", "population", "none"]
# Metrics of `grpo_loss` that combine across micro-batches/ranks by max; all others by sum.
MAX_REDUCED_METRICS = frozenset({"ratio_max", "tis_weight_max"})
TIS_CAP = 2.0  # truncation of the sampler-correction weights (veRL's default tis_imp_ratio_cap)


# ---------------------------------------------------------------------------------------------------
# Group advantages


def _unbiased_std(sq_dev_sum: Tensor, count: Tensor, eps: float) -> Tensor:
    """[G] sample std (divides by n − 1) + eps. Groups with n < 2 are zeroed by the caller."""
    return (sq_dev_sum / (count - 1).clamp_min(1)).sqrt() + eps


def _population_std(sq_dev_sum: Tensor, count: Tensor, eps: float) -> Tensor:
    """[G] population std (divides by n) + eps."""
    return (sq_dev_sum / count.clamp_min(1)).sqrt() + eps


def _no_std(sq_dev_sum: Tensor, count: Tensor, eps: float) -> Tensor:
    """[G] ones: advantages stay r − mean_group (Dr. GRPO); eps is not added."""
    return torch.ones_like(sq_dev_sum)


# The divisor of a group's deviations from its mean, per `std` kind.
STD_ESTIMATORS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "unbiased": _unbiased_std,  # METHOD.md §4: std unbiased (the release)
    "population": _population_std,
    "none": _no_std,
}


def _segment_sum(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """[G] sum of `values` [N] per segment id in [0, G)."""
    return values.new_zeros(num_segments).index_add_(0, segment, values)


def _segment_is_constant(values: Tensor, segment: Tensor, num_segments: int, valid: Tensor) -> Tensor:
    """[G] bool: True where the valid values of a segment are all equal (or there are none)."""
    inf = torch.inf
    hi = values.new_full((num_segments,), -inf)
    lo = values.new_full((num_segments,), inf)
    hi = hi.scatter_reduce(0, segment, torch.where(valid, values, -inf), "amax")
    lo = lo.scatter_reduce(0, segment, torch.where(valid, values, inf), "amin")
    return hi <= lo


def group_advantages(
    scores: Tensor,
    group_index: Tensor,
    scorable: Tensor,
    *,
    std: StdKind = "unbiased",
    eps: float = ADVANTAGE_EPS,
) -> Tensor:
    """[N] GRPO advantages: (score − mean_group) / (std_group + eps), METHOD.md §4; with
    std="none", score − mean_group (Dr. GRPO: no std, no eps).

    scores [N] float (a value at an unscorable rollout is ignored, NaN included); group_index [N]
    int ids (any values, any order); scorable [N] bool. A group's mean and std use only its scorable
    rollouts. Advantage is exactly 0 for: unscorable rollouts; groups whose scorable scores are all
    equal (no signal; avoids eps-noise from rounding); groups with fewer than 2 scorable rollouts
    (the unbiased std is undefined for n = 1, and population std gives 0/eps = 0 anyway).
    """
    if std not in STD_ESTIMATORS:
        raise ValueError(f"std={std!r}: use one of {sorted(STD_ESTIMATORS)}")
    std_fn = STD_ESTIMATORS[std]
    if not (scores.shape == group_index.shape == scorable.shape and scores.dim() == 1):
        raise ValueError(
            f"scores {tuple(scores.shape)}, group_index {tuple(group_index.shape)} and scorable "
            f"{tuple(scorable.shape)} must be 1-D of the same length N"
        )
    scorable = scorable.bool()
    dtype = scores.dtype if scores.is_floating_point() else torch.get_default_dtype()
    groups, segment = torch.unique(group_index, return_inverse=True)  # [G], [N] ids 0..G-1
    num_groups = groups.numel()
    score = torch.where(scorable, scores.to(dtype), 0.0)  # [N]
    count = _segment_sum(scorable.to(dtype), segment, num_groups)  # [G]
    mean = _segment_sum(score, segment, num_groups) / count.clamp_min(1)  # [G]
    dev = torch.where(scorable, score - mean[segment], 0.0)  # [N]
    divisor = std_fn(_segment_sum(dev * dev, segment, num_groups), count, eps)  # [G]
    degenerate = (count < 2) | _segment_is_constant(score, segment, num_groups, scorable)  # [G]
    advantages = dev / divisor[segment]  # [N]
    return torch.where(scorable & ~degenerate[segment], advantages, 0.0)


# ---------------------------------------------------------------------------------------------------
# Per-token terms


def _ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """[N, T] importance ratio π/π_old, log-ratio clamped to ±LOG_RATIO_CLAMP."""
    return (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()


def policy_loss_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    dual_clip: float = DUAL_CLIP,
) -> tuple[Tensor, Tensor]:
    """Per-token clipped policy-gradient loss [N, T] and clipped indicator [N, T] bool.

    PPO clip with ratio in [1 − clip_low, 1 + clip_high]; for A < 0 the loss is also capped at
    −A·dual_clip (veRL's `compute_policy_loss`). `clipped` is True where either clip is active, i.e.
    where the token's gradient is cut. Both outputs are 0/False outside `mask`.
    advantages: [N] (broadcast to every token of a rollout) or [N, T].
    """
    mask = mask.bool()
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [N, 1] or [N, T]
    adv = adv.expand_as(logprobs)  # [N, T]
    ratio = _ratio(logprobs, old_logprobs)  # [N, T]
    unclipped = -adv * ratio  # [N, T]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, T]
    ppo = torch.maximum(unclipped, clipped)  # [N, T]
    cap = -adv * dual_clip  # [N, T]
    negative = adv < 0
    loss = torch.where(negative, torch.minimum(ppo, cap), ppo)  # [N, T]
    active = (clipped > unclipped) | (negative & (ppo > cap))  # [N, T]
    return torch.where(mask, loss, 0.0), active & mask


def kl_low_var(logprobs: Tensor, ref_logprobs: Tensor, clamp: float = KL_CLAMP) -> Tensor:
    """[N, T] k3 estimator of KL(π ‖ π_ref) on tokens sampled from π (veRL's "low_var_kl").

    kl = ref − logp; kld = exp(kl) − kl − 1 (≥ 0), clamped to [−clamp, clamp].
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    return (log_ratio.exp() - log_ratio - 1.0).clamp(-clamp, clamp)


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 log-softmax over a large vocabulary loses too much precision."""
    return torch.promote_types(logits.dtype, torch.float32)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """[N, T] log π(token) from logits [N, T, V] (already aligned: logits[:, t] predicts tokens[:, t])."""
    logp = torch.log_softmax(logits, dim=-1, dtype=_compute_dtype(logits))  # [N, T, V]
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # [N, T]


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[N, T] entropy of softmax(logits [N, T, V]): logsumexp(l) − Σ softmax(l)·l. Finite logits."""
    logits = logits.to(_compute_dtype(logits))
    probs = torch.softmax(logits, dim=-1)  # [N, T, V]
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # [N, T]


# ---------------------------------------------------------------------------------------------------
# Aggregation and the total loss


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Scalar sum of `values` [N, T] where `mask` [N, T] is true (NaN outside the mask is ignored)."""
    return torch.where(mask.bool(), values, 0.0).sum()


def token_mean_loss(per_token: Tensor, mask: Tensor, global_num_tokens: int | Tensor) -> Tensor:
    """Scalar masked sum / GLOBAL token count of the mini-batch.

    Summed across the micro-batches and ranks of a mini-batch it equals the mini-batch token mean
    (and so does its gradient). global_num_tokens = mask.sum() over the whole mini-batch, all ranks.
    """
    if isinstance(global_num_tokens, Tensor):
        denominator = global_num_tokens.clamp_min(1)
    else:
        denominator = max(int(global_num_tokens), 1)
    return masked_sum(per_token, mask) / denominator


def sampler_correction(
    old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, global_num_tokens: int | Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance sampling toward the sampler: [N, T] weights min(π_old / π_sampler, cap)
    of the tokens the engine sampled, and their metrics (token means over the global count, like the
    loss; tis_weight_max: a max).

    The ratio's old logprobs are the learner's when it computes otherwise than the engine (bf16,
    other kernels); the policy gradient of a token is then weighted by how much likelier the learner
    finds it than the sampler did, at most `cap`. Where the old logprobs are the sampler's own the
    weights are exactly 1. Detached: they reweight the gradient and are not trained. Weighting a
    token's advantage by w > 0 weights its clipped loss by w (every term of the loss is linear in
    the advantage and the clip decisions compare quantities scaled alike).
    """
    if cap < 1.0:
        raise ValueError(f"the importance-weight cap is {cap}: set it ≥ 1 (veRL's default: {TIS_CAP})")
    log_ratio = (old_logprobs - sampler_logprobs).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()  # [N, T]
    weights = ratio.clamp(max=cap)
    metrics = {
        "tis_weight_mean": token_mean_loss(weights, mask, global_num_tokens),
        "tis_weight_max": torch.where(mask.bool(), weights, 0.0).max(),
        "tis_clipped_share": token_mean_loss((ratio > cap).to(weights.dtype), mask, global_num_tokens),
    }
    return weights, metrics


@dataclass(frozen=True)
class GrpoLossConfig:
    """Knobs of the GRPO loss; defaults are the release's (METHOD.md §4)."""

    clip_low: float = CLIP_LOW  # ratio lower clip: 1 − clip_low
    clip_high: float = CLIP_HIGH  # ratio upper clip: 1 + clip_high
    dual_clip: float = DUAL_CLIP  # for A < 0 the loss is capped at −A·dual_clip; must exceed 1
    kl_coef: float = KL_COEF  # weight of the k3 KL to the reference (used when ref_logprobs given)
    kl_clamp: float = KL_CLAMP  # per-token k3 KL clamped to ±kl_clamp

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low={self.clip_low}: set it in [0, 1) (release: {CLIP_LOW})")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high={self.clip_high}: set it ≥ 0 (release: {CLIP_HIGH})")
        if self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip={self.dual_clip}: set it > 1 (release: {DUAL_CLIP})")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef={self.kl_coef}: set it ≥ 0 (release: {KL_COEF})")
        if self.kl_clamp <= 0.0:
            raise ValueError(f"kl_clamp={self.kl_clamp}: set it > 0 (release: {KL_CLAMP})")


def _diagnostics(
    logprobs: Tensor,
    old_logprobs: Tensor,
    clipped: Tensor,
    mask: Tensor,
    global_num_tokens: int | Tensor,
    entropy: Tensor | None,
) -> dict[str, Tensor]:
    """Detached metrics, token means over the global count (sum them across micro-batches/ranks).

    approx_kl is the k3 estimate of KL(π_old ‖ π) on the sampled tokens (≥ 0, unclamped).
    ratio_max is a max over this call's tokens (combine with max; see MAX_REDUCED_METRICS).
    """
    with torch.no_grad():
        ratio = _ratio(logprobs, old_logprobs)  # [N, T]
        metrics = {
            "clip_fraction": token_mean_loss(clipped.to(ratio.dtype), mask, global_num_tokens),
            "approx_kl": token_mean_loss(
                kl_low_var(old_logprobs, logprobs, torch.inf), mask, global_num_tokens
            ),
            "ratio_mean": token_mean_loss(ratio, mask, global_num_tokens),
            "ratio_max": torch.where(mask, ratio, 0.0).max(),
        }
        if entropy is not None:
            metrics["entropy"] = token_mean_loss(entropy, mask, global_num_tokens)
    return metrics


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    global_num_tokens: int | Tensor,
    cfg: GrpoLossConfig,
    *,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss of one micro-batch, pg + kl_coef·kl, and detached 0-d metric tensors.

    logprobs/old_logprobs/ref_logprobs/mask: [N, T]; advantages: [N] or [N, T]; entropy [N, T]
    optional (of each token's distribution: entropy_from_logits, learner.head), only for the entropy
    metric. The KL term (and the "kl" metric) is present iff ref_logprobs is given. Every metric except ratio_max sums across micro-batches/ranks to the
    mini-batch token mean, like the loss.
    """
    mask = mask.bool()
    per_token, clipped = policy_loss_terms(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip,
    )
    pg_loss = token_mean_loss(per_token, mask, global_num_tokens)
    loss = pg_loss
    metrics = {"pg_loss": pg_loss.detach()}
    if ref_logprobs is not None:
        kl = token_mean_loss(kl_low_var(logprobs, ref_logprobs, cfg.kl_clamp), mask, global_num_tokens)
        loss = pg_loss + cfg.kl_coef * kl
        metrics["kl"] = kl.detach()
    metrics.update(_diagnostics(logprobs, old_logprobs, clipped, mask, global_num_tokens, entropy))
    metrics["loss"] = loss.detach()
    return loss, metrics
