"""Control flow of the streaming generate→score phase with in-process fakes as Ray actors.

The real workers are covered by the end-to-end test; these check deadlines and failures quickly.
"""

from __future__ import annotations

import signal
import time

import pytest
import ray

from actors.types import Completion, Group, PromptRequest, derive_seed
from cluster.data.sample import Sample
from cluster.generation import Workers, generate_and_score, resample_all_wrong
from cluster.placement import DeadlineExceeded
from cluster.pools import RewardPool, RolloutPool
from cluster.stops import Stopped, StopSignal
from rewards.rules import RewardRules
from rewards.scoring import ScoreItem, ScoringResult, score_items
from rewards.worker import refuse_if_expired

LABELS = ("fear", "joy")


class FakeRollout:
    """`delay_s` before the first group; `gap_s` between groups (the real engine's finishing times)."""

    def __init__(self, delay_s: float = 0.0, gap_s: float = 0.0):
        self.delay_s = delay_s
        self.gap_s = gap_s
        self.calls: list[list[int]] = []

    def generate(self, requests, sampling=None):
        return list(self.generate_stream(requests, sampling))

    def generate_stream(self, requests, sampling=None):
        self.calls.append([r.group_id for r in requests])
        time.sleep(self.delay_s)
        text = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"
        for i, r in enumerate(requests):
            if i:
                time.sleep(self.gap_s)
            yield Group(r.group_id, 0, [1, 2], [Completion([5, 6], [-0.1, -0.2], text, "stop")] * 2)

    def generate_calls(self):
        return self.calls


class FakeReward:
    """`mode` ok / raise / hang; `per_group_s`: the judge's seconds per group of a call."""

    def __init__(self, mode: str, hang_s: float = 60.0, per_group_s: float = 0.0):
        self.mode = mode
        self.hang_s = hang_s
        self.per_group_s = per_group_s
        self.items: list[int] = []
        self.started: list[float] = []

    def score(self, items, expected_version, deadline=None):
        refuse_if_expired(deadline)  # as the real worker does
        self.items.append(len(items))
        self.started.append(time.time())
        time.sleep(self.per_group_s * len(items))
        if self.mode == "raise":
            raise RuntimeError("judge engine died")
        if self.mode == "hang":
            time.sleep(self.hang_s)
        return ScoringResult(score_items(items, None, RewardRules()))

    def scored(self):
        return self.items

    def starts(self):
        return self.started


@pytest.fixture
def local_ray(ray_local):
    return ray_local


def _run(
    rollout_actor, reward_actor, *, generate_timeout_s=30.0, reward_timeout_s=30.0, chunk_size=2, prompts=4
):
    batch = [Sample(f"s{i}", "img.png", "q", LABELS, "fear") for i in range(prompts)]
    requests = [PromptRequest(i, "q", "img.png") for i in range(prompts)]
    rollout_actors = rollout_actor if isinstance(rollout_actor, list) else [rollout_actor]
    reward_actors = reward_actor if isinstance(reward_actor, list) else [reward_actor]
    workers = Workers(
        RolloutPool(rollout_actors),
        RewardPool(reward_actors, follows_policy=True),
        chunk_size,
        generate_timeout_s,
        reward_timeout_s,
    )
    return generate_and_score(workers, batch, requests, 0)


def test_every_group_is_scored_in_order(local_ray):
    result = _run(ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("ok"))
    assert [sg.group.group_id for sg in result.groups] == [0, 1, 2, 3]
    assert all(s.rewards.accuracy == 1.0 for sg in result.groups for s in sg.scores)
    assert result.reward_failures == []


def test_a_reward_worker_that_raises_makes_rollouts_unscorable_not_zero(local_ray):
    result = _run(ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("raise"))
    scores = [s for sg in result.groups for s in sg.scores]
    assert len(scores) == 8 and all(s.rewards is None for s in scores)
    # one failure per scoring call (how many depends on how the groups came in)
    assert result.reward_failures and all("judge engine died" in f for f in result.reward_failures)


def test_a_reward_worker_past_its_deadline_yields_unscorable_rollouts_without_hanging(local_ray):
    start = time.perf_counter()
    result = _run(
        ray.remote(FakeRollout).remote(), ray.remote(FakeReward).remote("hang"), reward_timeout_s=2.0
    )
    assert time.perf_counter() - start < 30  # the hanging worker sleeps 60 s: the deadline cut it short
    assert all(s.rewards is None and "deadline" in s.error for sg in result.groups for s in sg.scores)
    assert result.reward_failures and "reward.timeout_s=2" in result.reward_failures[0]


def test_expired_scoring_calls_are_cancelled_so_a_stuck_worker_runs_no_backlog(local_ray):
    # two scoring calls queue on one worker whose first call hangs past the deadline: the second
    # expires while queued, and when it reaches the worker it is refused before any work
    reward = ray.remote(FakeReward).remote("hang", hang_s=10.0)
    result = _run(ray.remote(FakeRollout).remote(), reward, reward_timeout_s=2.0, chunk_size=2, prompts=4)
    assert all(s.rewards is None for sg in result.groups for s in sg.scores)
    assert len(ray.get(reward.scored.remote(), timeout=60)) == 1  # the first call only


def test_a_stop_request_cancels_every_outstanding_call_and_raises(local_ray):
    stop = StopSignal()
    stop.signum = signal.SIGTERM  # as the handler sets it on the first signal
    rollout = ray.remote(FakeRollout).remote(30.0)
    batch = [Sample("s0", "img.png", "q", LABELS, "fear")]
    start = time.perf_counter()
    reward = RewardPool([ray.remote(FakeReward).remote("ok")], follows_policy=True)
    with pytest.raises(Stopped):
        generate_and_score(
            Workers(RolloutPool([rollout]), reward, 1, 60.0, 60.0),
            batch,
            [PromptRequest(0, "q", "img.png")],
            0,
            stop,
        )
    assert time.perf_counter() - start < 20  # did not wait for the 30 s generate call


def test_a_reward_worker_refuses_a_call_that_starts_after_its_deadline():
    from rewards.config import RewardConfig
    from rewards.worker import RewardWorker, ScoringExpired

    worker = RewardWorker(RewardConfig(reflection=False), RewardRules(), None, lambda ref: ref)
    item = ScoreItem(FakeRollout().generate([PromptRequest(0, "q", None)])[0], "fear", LABELS, None)
    assert worker.score([item], None, deadline=time.time() + 60).scores[0][0].rewards.accuracy == 1.0
    with pytest.raises(ScoringExpired):
        worker.score([item], None, deadline=time.time() - 1)


def test_a_stuck_rollout_worker_is_a_clear_error(local_ray):
    with pytest.raises(DeadlineExceeded, match="cluster.generate_timeout_s"):
        _run(
            ray.remote(FakeRollout).remote(60.0), ray.remote(FakeReward).remote("ok"), generate_timeout_s=2.0
        )


def test_by_default_each_rollout_worker_gets_one_call_and_every_reward_worker_a_share(local_ray):
    rollouts = [ray.remote(FakeRollout).remote() for _ in range(2)]
    rewards = [ray.remote(FakeReward).remote("ok") for _ in range(3)]
    result = _run(rollouts, rewards, chunk_size=None, prompts=6)
    assert [sg.group.group_id for sg in result.groups] == list(range(6))
    assert ray.get([r.generate_calls.remote() for r in rollouts]) == [[[0, 1, 2]], [[3, 4, 5]]]
    # every group scored once, whichever reward worker was idle when it came
    scored = ray.get([r.scored.remote() for r in rewards])
    assert sum(n for calls in scored for n in calls) == 6


def test_each_group_is_scored_while_later_ones_generate_and_a_busy_judge_gets_them_together(local_ray):
    # one generate call, a group every 0.5 s; the judge takes 0.8 s per group
    rollout = ray.remote(FakeRollout).remote(gap_s=0.5)
    reward = ray.remote(FakeReward).remote("ok", per_group_s=0.8)
    ray.get([rollout.generate_calls.remote(), reward.scored.remote()])  # both actors up
    start = time.time()
    result = _run(rollout, reward, chunk_size=None, prompts=6)
    assert [sg.group.group_id for sg in result.groups] == list(range(6))
    calls, starts = ray.get([reward.scored.remote(), reward.starts.remote()])
    assert sum(calls) == 6 and calls[0] == 1  # the first group alone, at once
    assert starts[0] - start < 1.5 < result.generate_s  # scored while the other five generated
    assert max(calls) > 1  # the groups that came while the judge was busy went in one call
    # the tail after the last group is the judge's last call, not the whole batch's scoring
    assert result.reward_tail_s < 0.8 * 6


def test_an_explicit_chunk_size_cuts_the_prompts_into_calls_of_that_size(local_ray):
    rollout = ray.remote(FakeRollout).remote()
    _run(rollout, ray.remote(FakeReward).remote("ok"), chunk_size=2, prompts=5)
    assert ray.get(rollout.generate_calls.remote()) == [[0, 1], [2, 3], [4]]


def test_generate_all_splits_the_requests_over_the_workers_and_keeps_their_order(local_ray):
    workers = [ray.remote(FakeRollout).remote() for _ in range(3)]
    pool = RolloutPool(workers)
    groups = pool.generate_all([PromptRequest(i, "q", "img.png") for i in range(7)], None, 30.0, "evaluation")
    assert [g.group_id for g in groups] == list(range(7))
    assert ray.get([w.generate_calls.remote() for w in workers]) == [[[0, 1, 2]], [[3, 4]], [[5, 6]]]
    one = pool.generate_all(
        [PromptRequest(9, "q", "img.png")], None, 30.0, "evaluation"
    )  # fewer than workers
    assert [g.group_id for g in one] == [9]


def test_generate_all_past_its_deadline_is_a_clear_error(local_ray):
    pool = RolloutPool([ray.remote(FakeRollout).remote(60.0)])
    with pytest.raises(DeadlineExceeded, match="held-out evaluation"):
        pool.generate_all([PromptRequest(0, "q", "img.png")], None, 2.0, "held-out evaluation")


def _round_of(request) -> int:
    """The resampling round of a request whose group seed is 100 + its group id (round 0 carries the
    group seed itself; round r the seed derived from it and r)."""
    group_seed = 100 + request.group_id
    rounds = {group_seed: 0} | {derive_seed(group_seed, r): r for r in range(1, 4)}
    return rounds[request.seed]


class ScriptedRollout:
    """Answers per (group, resampling round): the round is read back from the request's seed."""

    def __init__(self, script: dict[tuple[int, int], tuple[str, ...]]):
        self.script = script
        self.calls: list[list[tuple[int, int]]] = []

    def generate_stream(self, requests, sampling=None):
        # a generator, not a list iterator: Ray drives actor generators with send()
        yield from (group for group in self.generate(requests, sampling))

    def generate(self, requests, sampling=None):
        keys = [(r.group_id, _round_of(r)) for r in requests]
        self.calls.append(keys)
        text = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{{{}}}"
        return [
            Group(
                gid,
                0,
                [1, 2],
                [Completion([5, 6], [-0.1, -0.2], text.format(a), "stop") for a in self.script[gid, r]],
            )
            for gid, r in keys
        ]

    def generate_calls(self):
        return self.calls


@pytest.mark.parametrize("rounds", [1, 2])
def test_all_wrong_groups_are_resampled_and_a_round_with_a_right_answer_joins_the_group(local_ray, rounds):
    script = {
        (0, 0): ("joy", "joy"),
        (0, 1): ("fear", "joy"),  # all wrong, then rescued in round 1
        (1, 0): ("joy", "joy"),
        (1, 1): ("joy", "joy"),
        (1, 2): ("joy", "fear"),  # rescued in round 2
        (2, 0): ("fear", "joy"),  # mixed: never resampled
        (3, 0): ("fear", "fear"),  # all right: never resampled
    }
    actor = ray.remote(ScriptedRollout).remote(script)
    reward = RewardPool([ray.remote(FakeReward).remote("ok")], follows_policy=True)
    workers = Workers(RolloutPool([actor]), reward, None, 30.0, 30.0)
    batch = [Sample(f"s{i}", "img.png", "q", LABELS, "fear") for i in range(4)]
    requests = [PromptRequest(i, "q", "img.png", seed=100 + i) for i in range(4)]
    rollouts = generate_and_score(workers, batch, requests, 0)
    metrics = resample_all_wrong(workers, batch, requests, rollouts, 0, rounds)

    answers = {sg.group.group_id: [s.rewards.accuracy for s in sg.scores] for sg in rollouts.groups}
    expected = {0: [0, 0, 1, 0], 1: [0, 0] if rounds == 1 else [0, 0, 0, 1], 2: [1, 0], 3: [1, 1]}
    assert answers == expected
    assert [len(sg.group.completions) for sg in rollouts.groups] == [len(expected[g]) for g in range(4)]
    assert (
        ray.get(actor.generate_calls.remote())
        == [[(0, 0), (1, 0), (2, 0), (3, 0)], [(0, 1), (1, 1)], [(1, 2)]][: rounds + 1]
    )
    # round 2 joins group 1 only with its own rollouts: round 1's all-wrong pair was dropped
    assert metrics["rollout/resampled_groups"] == 2 and metrics["rollout/rescued_groups"] == rounds
