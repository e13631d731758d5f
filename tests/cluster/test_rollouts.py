"""Control flow of the streaming generate→score phase with in-process fakes as Ray actors.

The real workers are covered by the end-to-end test; these check deadlines and failures quickly.
"""

from __future__ import annotations

import time

import pytest
import ray

from actors.types import Completion, Group, PromptRequest
from cluster.data.sample import Sample
from cluster.pools import DeadlineExceeded
from cluster.rollouts import generate_and_score
from cluster.workers import RewardPool, RolloutPool
from rewards.rules import RewardRules
from rewards.scoring import score_items

LABELS = ("fear", "joy")


class FakeRollout:
    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def generate(self, requests):
        time.sleep(self.delay_s)
        text = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"
        return [
            Group(r.group_id, 0, [1, 2], [Completion([5, 6], [-0.1, -0.2], text, "stop")] * 2)
            for r in requests
        ]


class FakeReward:
    def __init__(self, mode: str):
        self.mode = mode

    def score(self, items, expected_version):
        if self.mode == "raise":
            raise RuntimeError("judge engine died")
        if self.mode == "hang":
            time.sleep(60)
        return score_items(items, None, RewardRules())


@pytest.fixture
def local_ray(ray_local):
    return ray_local


def _run(rollout_actor, reward_actor, *, generate_timeout_s=30.0, reward_timeout_s=30.0):
    batch = [Sample(f"s{i}", "img.png", "q", LABELS, "fear") for i in range(4)]
    requests = [PromptRequest(i, "q", "img.png") for i in range(4)]
    return generate_and_score(
        batch, requests, RolloutPool([rollout_actor]), RewardPool([reward_actor], follows_policy=True), 0,
        chunk_size=2, generate_timeout_s=generate_timeout_s, reward_timeout_s=reward_timeout_s,
    )  # fmt: skip


def test_every_group_is_scored_in_order(local_ray):
    result = _run(ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("ok"))
    assert [sg.group.group_id for sg in result.groups] == [0, 1, 2, 3]
    assert all(s.rewards.accuracy == 1.0 for sg in result.groups for s in sg.scores)
    assert result.reward_failures == []


def test_a_reward_worker_that_raises_makes_rollouts_unscorable_not_zero(local_ray):
    result = _run(ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("raise"))
    scores = [s for sg in result.groups for s in sg.scores]
    assert len(scores) == 8 and all(s.rewards is None for s in scores)
    assert len(result.reward_failures) == 2 and "judge engine died" in result.reward_failures[0]


def test_a_reward_worker_past_its_deadline_yields_unscorable_rollouts_without_hanging(local_ray):
    start = time.perf_counter()
    result = _run(
        ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("hang"), reward_timeout_s=2.0
    )
    assert time.perf_counter() - start < 30  # the hanging worker sleeps 60 s: the deadline cut it short
    assert all(s.rewards is None and "deadline" in s.error for sg in result.groups for s in sg.scores)
    assert result.reward_failures and "reward.timeout_s=2" in result.reward_failures[0]


def test_a_stuck_rollout_worker_is_a_clear_error(local_ray):
    with pytest.raises(DeadlineExceeded, match="cluster.generate_timeout_s"):
        _run(
            ray.remote(FakeRollout).remote(60.0), ray.remote(FakeReward).remote("ok"), generate_timeout_s=2.0
        )
