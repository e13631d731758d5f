"""Advantages from scored groups: GRPO's group normalisation and the all-wrong push."""

from __future__ import annotations

import pytest
import torch

from actors.types import Completion, Group
from cluster.batches import advantages
from cluster.data.sample import Sample
from cluster.rollouts import IterationRollouts, ScoredGroup
from learner.config import LearnerConfig
from rewards.rules import RewardBreakdown
from rewards.scoring import RolloutScore

LABELS = ("fear", "joy")


def _group(group_id: int, outcomes: list[tuple[float, float] | None]) -> ScoredGroup:
    """outcomes: (accuracy, consistency) per rollout, None for an unscorable one."""
    completion = Completion([5, 6], [-0.1, -0.2], "x", "stop")
    scores = [
        RolloutScore(
            None if o is None else RewardBreakdown(o[0], 1.0, 0.0, o[1], 0.8 * o[0] + 0.1 * o[1] + 0.1),
            error="judge timed out" if o is None else None,
        )
        for o in outcomes
    ]
    sample = Sample(f"s{group_id}", "img.png", "q", LABELS, "fear")
    return ScoredGroup(sample, Group(group_id, 0, [1, 2], [completion] * len(outcomes)), scores)


def test_all_wrong_groups_get_the_push_on_top_of_their_normalised_advantage():
    rollouts = IterationRollouts(
        [
            _group(0, [(1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (1.0, 1.0)]),  # mixed
            _group(1, [(0.0, 1.0), (0.0, 0.0), None, (0.0, 1.0)]),  # all wrong, consistency varies
            _group(2, [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0)]),  # all wrong, constant
            _group(3, [(1.0, 1.0)] * 4),  # all right
            _group(4, [None, None, None, None]),  # nothing scorable: not "all wrong"
        ]
    )
    off = advantages(rollouts, LearnerConfig())
    on = advantages(rollouts, LearnerConfig(all_wrong_advantage=-0.5))
    shift = torch.tensor([0.0] * 4 + [-0.5, -0.5, 0.0, -0.5] + [-0.5] * 4 + [0.0] * 8, dtype=off.dtype)
    assert torch.equal(on - off, shift)
    assert torch.equal(off[8:], torch.zeros(12, dtype=off.dtype))  # GRPO: no signal in constant groups
    assert off[4] > 0 > off[5] and off[6] == 0  # the consistency spread still ranks the all-wrong group


def test_the_push_is_a_penalty():
    with pytest.raises(ValueError):
        LearnerConfig(all_wrong_advantage=0.5)
