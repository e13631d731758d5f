"""Advantages from scored groups: the driver's wiring of GRPO's group normalisation."""

from __future__ import annotations

import pytest
import torch

from actors.types import Completion, Group
from cluster.batching import advantages
from cluster.data.sample import Sample
from cluster.generation import IterationRollouts, ScoredGroup
from learner.config import LearnerConfig
from rewards.rules import RewardBreakdown
from rewards.scoring import RolloutScore


def _group(group_id: int, scores: list[float | None]) -> ScoredGroup:
    """One group with the given total scores; None is an unscorable rollout."""
    completion = Completion([5, 6], [-0.1, -0.2], "x", "stop")
    rollout_scores = [
        RolloutScore(None, error="judge timed out")
        if s is None
        else RolloutScore(RewardBreakdown(0, 1, 0, 0, s))
        for s in scores
    ]
    sample = Sample(f"s{group_id}", "img.png", "q", ("fear", "joy"), "fear")
    return ScoredGroup(sample, Group(group_id, 0, [1, 2], [completion] * len(scores)), rollout_scores)


def _expected(std: str) -> list[float]:
    if std == "none":  # Dr. GRPO: the deviations themselves
        return [0.5, 0, -0.5, 0.5, -0.5] + [0.05, -0.05, 0.05, -0.05] + [0.0] * 3
    a0 = 0.5 / ((1 / 3) ** 0.5 + 1e-6)  # ±0.5 over the unbiased std of [1, 0, 1, 0]
    a1 = 0.05 / ((0.01 / 3) ** 0.5 + 1e-6)  # ±0.05 over the unbiased std of [0.2, 0.1, 0.2, 0.1]
    return [a0, 0, -a0, a0, -a0] + [a1, -a1, a1, -a1] + [0.0] * 3


@pytest.mark.parametrize("std", ["unbiased", "none"])
def test_each_group_is_normalised_on_its_own_scorable_rollouts(std):
    rollouts = IterationRollouts(
        [
            _group(0, [1.0, None, 0.0, 1.0, 0.0]),  # the unscorable rollout: 0, and not in the stats
            _group(1, [0.2, 0.1, 0.2, 0.1]),  # a small spread: ±0.87 normalised, ±0.05 without the std
            _group(2, [0.3, 0.3, None]),  # constant: no signal
        ]
    )
    adv = advantages(rollouts, LearnerConfig(advantage_std=std))
    torch.testing.assert_close(adv, torch.tensor(_expected(std), dtype=adv.dtype), rtol=1e-9, atol=1e-12)
