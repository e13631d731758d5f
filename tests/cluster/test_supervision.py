"""Replacing rollout and reward workers mid-iteration, with in-process fakes as Ray actors whose
processes really die (`os._exit`) or hang. The real stack's version is tests/cluster/test_chaos.py."""

from __future__ import annotations

import os
import time

import pytest
import ray

from actors.types import Completion, Group, PromptRequest
from cluster.data.sample import Sample
from cluster.generation import Workers, generate_and_score
from cluster.pools import RewardPool, RolloutPool
from cluster.stops import RunFailed
from cluster.supervision import WorkerSlots
from rewards.rules import RewardRules
from rewards.scoring import ScoringResult, score_items

TEXT = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"


class EngineDeadError(RuntimeError):
    """Named as vLLM's: what a call raises once the engine process inside the actor is gone."""


class Rollout:
    """`die_after`: the process exits after yielding that many groups (`engine_dies`: the actor lives,
    its engine does not); `hang_s`: sleeps before the first."""

    def __init__(
        self, die_after: int | None = None, hang_s: float = 0.0, version: int = 0, engine_dies: bool = False
    ):
        self.die_after, self.hang_s, self.version, self.engine_dies = die_after, hang_s, version, engine_dies
        self.calls: list[list[int]] = []

    def generate_stream(self, requests, sampling=None):
        self.calls.append([r.group_id for r in requests])
        time.sleep(self.hang_s)
        for n, r in enumerate(requests):
            if n == self.die_after:
                time.sleep(0.5)  # the groups yielded so far reach the caller
                if self.engine_dies:
                    raise EngineDeadError("EngineCore encountered an issue")
                os._exit(1)  # a killed process: no exception, no cleanup
            time.sleep(0.05)
            yield Group(
                r.group_id, self.version, [1, 2], [Completion([5, 6], [-0.1, -0.2], TEXT, "stop")] * 2
            )

    def generate_calls(self):
        return self.calls

    def ping(self):
        return True


class Reward:
    def __init__(self, die: bool = False, hang_s: float = 0.0):
        self.die, self.hang_s = die, hang_s
        self.groups = 0

    def score(self, items, expected_version, deadline=None):
        if self.die:
            os._exit(1)
        time.sleep(self.hang_s)
        self.groups += len(items)
        return ScoringResult(score_items(items, None, RewardRules()))

    def scored(self):
        return self.groups

    def ping(self):
        return True


def _slots(kind, first, replacement, *, max_restarts=2, follows_policy=False, start_version=0):
    """Slots holding the `first` actors; a replacement is `replacement()` (a fresh healthy actor)."""
    made = []

    def spawn(i):
        made.append(replacement())
        return made[-1]

    slots = WorkerSlots(kind, first, start_version, follows_policy, spawn, max_restarts, startup_timeout_s=60)
    slots.made = made
    return slots


def _run(rollout_slots, reward_slots, *, prompts=6, chunk_size=None, generate_timeout_s=30.0, catch_up=None):
    batch = [Sample(f"s{i}", "img.png", "q", ("fear", "joy"), "fear") for i in range(prompts)]
    requests = [PromptRequest(i, "q", "img.png") for i in range(prompts)]
    workers = Workers(
        RolloutPool([], rollout_slots),
        RewardPool([], False, reward_slots),
        chunk_size,
        generate_timeout_s,
        30.0,
        catch_up,
    )
    return generate_and_score(workers, batch, requests, rollout_slots.version)


def _healthy_reward():
    return _slots("reward", [ray.remote(Reward).remote()], lambda: ray.remote(Reward).remote())


def _every_group_once_and_scored(result, prompts=6):
    assert [sg.group.group_id for sg in result.groups] == list(range(prompts))
    assert all(s.rewards is not None and s.rewards.accuracy == 1.0 for sg in result.groups for s in sg.scores)
    assert result.reward_failures == []


def test_a_rollout_worker_that_dies_mid_call_is_replaced_and_its_unfinished_groups_go_to_the_other(ray_local):
    dying, healthy = ray.remote(Rollout).remote(die_after=1), ray.remote(Rollout).remote()
    rollout = _slots("rollout", [dying, healthy], lambda: ray.remote(Rollout).remote())
    result = _run(rollout, _healthy_reward())
    _every_group_once_and_scored(result)
    metrics = rollout.counters.take("rollout")
    # worker 0 had groups 0-2 and delivered group 0: groups 1 and 2 were generated elsewhere
    assert metrics["recovery/rollout_restarts"] == 1
    assert metrics["recovery/rollout_resubmitted_groups"] == 2
    assert metrics["recovery/rollout_cancelled_calls"] == 1
    assert rollout.actors[0] is rollout.made[0] and rollout.actors[1] is healthy
    assert ray.get(healthy.generate_calls.remote(), timeout=30) == [[3, 4, 5], [1, 2]]


def test_a_rollout_worker_whose_engine_process_died_is_replaced_too(ray_local):
    rollout = _slots(
        "rollout",
        [ray.remote(Rollout).remote(die_after=2, engine_dies=True)],
        lambda: ray.remote(Rollout).remote(),
    )
    _every_group_once_and_scored(_run(rollout, _healthy_reward()))
    assert rollout.counters.take("rollout")["recovery/rollout_resubmitted_groups"] == 4


def test_a_stuck_rollout_worker_is_killed_replaced_and_its_groups_generated_elsewhere(ray_local):
    stuck = ray.remote(Rollout).remote(hang_s=120)
    rollout = _slots("rollout", [stuck], lambda: ray.remote(Rollout).remote())
    start = time.perf_counter()
    result = _run(rollout, _healthy_reward(), generate_timeout_s=3.0)
    assert time.perf_counter() - start < 60
    _every_group_once_and_scored(result)
    assert rollout.counters.take("rollout")["recovery/rollout_resubmitted_groups"] == 6
    with pytest.raises(ray.exceptions.RayActorError):  # killed, not left running its call
        ray.get(stuck.ping.remote(), timeout=30)


def test_a_reward_worker_that_dies_is_replaced_and_its_groups_scored_by_the_replacement(ray_local):
    rollout = _slots("rollout", [ray.remote(Rollout).remote()], lambda: ray.remote(Rollout).remote())
    reward = _slots("reward", [ray.remote(Reward).remote(die=True)], lambda: ray.remote(Reward).remote())
    result = _run(rollout, reward)
    _every_group_once_and_scored(result)  # none unscorable: the replacement scored them
    metrics = reward.counters.take("reward")
    assert metrics["recovery/reward_restarts"] == 1 and metrics["recovery/reward_resubmitted_groups"] >= 1
    assert ray.get(reward.made[0].scored.remote(), timeout=30) == 6


def test_past_the_restart_bound_the_run_stops_naming_the_worker(ray_local):
    always_dying = lambda: ray.remote(Rollout).remote(die_after=0)  # noqa: E731
    rollout = _slots("rollout", [always_dying()], always_dying, max_restarts=2)
    with pytest.raises(RunFailed, match=r"rollout worker 0 died; it was replaced 2 time\(s\), the limit"):
        _run(rollout, _healthy_reward())


def test_a_replaced_policy_engine_catches_up_before_it_takes_work(ray_local):
    # the pool is at version 3; the replacement starts from the run's initial weights (version 0)
    dying = ray.remote(Rollout).remote(die_after=0, version=3)
    rollout = _slots(
        "rollout", [dying], lambda: ray.remote(Rollout).remote(), follows_policy=True, start_version=3
    )
    rollout.start_version = 0
    caught_up = []

    def catch_up(slots, behind):
        caught_up.append(list(behind))
        slots.pushed(behind, slots.version)

    result = _run(rollout, _healthy_reward(), catch_up=catch_up)
    assert caught_up == [[0]] and rollout.slots[0].version == 3
    _every_group_once_and_scored(result)


def test_without_a_catch_up_a_pool_of_only_replacements_stops_the_run_clearly(ray_local):
    dying = ray.remote(Rollout).remote(die_after=0)
    rollout = _slots(
        "rollout", [dying], lambda: ray.remote(Rollout).remote(), follows_policy=True, start_version=3
    )
    rollout.start_version = 0
    with pytest.raises(RunFailed, match="no rollout worker holds policy version 3"):
        _run(rollout, _healthy_reward())


@ray.remote
def _lost_with_its_node():
    raise ray.exceptions.RayActorError(error_msg="The actor died because its node has died. Node Id: 01ab")


def test_a_replacement_lost_with_its_node_while_starting_is_placed_again_without_counting(ray_local):
    """A node's loss kills its worker; Ray may place the replacement on that node before it knows the node
    is gone. That one is placed again, and the node's loss counts once against the bound."""
    slots = _slots(
        "rollout", [ray.remote(Rollout).remote()], lambda: ray.remote(Rollout).remote(), max_restarts=1
    )
    slots.replace(0, "died")  # the node's loss: 1 of 1
    # what Ray answers for the replacement it placed on the lost node
    slots.slots[0].ping = _lost_with_its_node.remote()
    slots.wait_started(60)
    assert len(slots.made) == 2 and slots.slots[0].restarts == 1 and slots.taking_work() == [0]
    with pytest.raises(RunFailed, match="rollout worker 0 died; it was replaced 1 time"):
        slots.replace(0, "died")  # a death of its own is past the bound
