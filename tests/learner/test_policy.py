"""The learner's optimizer schedule (fast; the applied lr on a real DeepSpeed rank: test_rank.py)."""

import pytest

from learner.config import LearnerConfig
from learner.policy import warmup_factor


def test_warmup_rises_linearly_to_one_then_stays():
    assert [warmup_factor(4, step) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_warmup_is_the_constant_lr():
    assert {warmup_factor(0, step) for step in range(3)} == {1.0}


def test_negative_warmup_is_rejected():
    with pytest.raises(ValueError, match="warmup_steps"):
        LearnerConfig(warmup_steps=-1)
