"""Typed handles on the three pools of Ray actors: rollout, reward, learner.

Each handle exposes typed `submit_*` / blocking methods; no dispatch by method-name strings. Every
blocking method waits with a deadline (cluster.placement.wait_all). The rollout and reward pools keep
their actors in replaceable slots (cluster.supervision).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ray

from actors.types import Group, PromptRequest, SamplingSettings
from cluster.placement import wait_all
from cluster.supervision import WorkerSlots, call_died, is_dead
from learner.batch import split
from rewards.scoring import ScoreItem


class RolloutPool:
    def __init__(self, actors: list[Any], slots: WorkerSlots | None = None):
        """`slots`: how the actors are replaced (default: a pool whose workers cannot be)."""
        self.slots = slots or WorkerSlots("rollout", actors, 0, follows_policy=True)

    @property
    def actors(self) -> list[Any]:
        return self.slots.actors

    def submit_stream(self, requests: Sequence[PromptRequest], worker: int) -> ray.ObjectRefGenerator:
        """The groups of `requests` on rollout worker `worker`, each ref delivered as soon as its group
        is done."""
        actor = self.actors[worker]
        return actor.generate_stream.options(num_returns="streaming").remote(list(requests))

    def generate_all(
        self, requests: Sequence[PromptRequest], sampling: SamplingSettings, timeout_s: float, what: str
    ) -> list[Group]:
        """Groups of every request, in order: the requests split evenly over the workers taking work, one
        call each. A worker that died is replaced and its share generated again on the others."""
        while True:
            workers = self.slots.taking_work()
            if not workers:
                self.slots.wait_started(timeout_s)
                if not (workers := self.slots.taking_work()):
                    raise RuntimeError(f"{what}: no rollout worker holds version {self.slots.version}")
            parts = split(requests, min(len(requests), len(workers)))
            refs = [
                self.actors[i].generate.remote(part, sampling)
                for i, part in zip(workers, parts, strict=False)
            ]
            try:
                return [group for groups in wait_all(refs, timeout_s, what) for group in groups]
            except ray.exceptions.RayError as err:
                if not (self.slots.replaceable and is_dead(err)):
                    raise
                for i, ref in zip(workers, refs, strict=False):
                    if call_died(ref):
                        self.slots.replace(i, f"died during {what}")

    def versions(self, timeout_s: float) -> list[int]:
        return wait_all([a.get_version.remote() for a in self.actors], timeout_s, "rollout versions")


class RewardPool:
    def __init__(self, actors: list[Any], follows_policy: bool, slots: WorkerSlots | None = None):
        """`slots`: how the actors are replaced (default: a pool of `actors` that cannot be); whether the
        judges follow the policy is the slots'."""
        self.slots = slots or WorkerSlots("reward", actors, 0, follows_policy)

    @property
    def follows_policy(self) -> bool:
        return self.slots.follows_policy

    @property
    def actors(self) -> list[Any]:
        return self.slots.actors

    def submit_score(
        self, items: Sequence[ScoreItem], version: int, timeout_s: float, worker: int
    ) -> ray.ObjectRef:
        """Score `items` on reward worker `worker`, which gives up on them `timeout_s` from now."""
        expected = version if self.follows_policy else None
        deadline = time.time() + timeout_s  # wall clock: the worker may be on another node
        return self.actors[worker].score.remote(list(items), expected, deadline)

    def versions(self, timeout_s: float) -> list[int | None]:
        return wait_all([a.get_version.remote() for a in self.actors], timeout_s, "judge versions")


class LearnerGroup:
    def __init__(self, ranks: list[Any]):
        self.ranks = ranks

    def train(
        self, shards: list[list[list[Any]]], global_num_tokens: list[int], timeout_s: float
    ) -> list[dict]:
        """One iteration of updates; `shards[r][m]` is rank r's share of mini-batch m."""
        refs = [
            rank.train_iteration.remote(shard, global_num_tokens)
            for rank, shard in zip(self.ranks, shards, strict=True)
        ]
        return wait_all(refs, timeout_s, "learner train_iteration")

    def publish_weights(self) -> list[ray.ObjectRef]:
        """Every rank joins the gather (a collective under ZeRO-3); rank 0's buckets, the first ref,
        go to the object store once. The other refs only tell when the other ranks are done."""
        return [rank.weight_buckets.remote() for rank in self.ranks]

    def send_weights(self) -> list[ray.ObjectRef]:
        """Every rank joins the gather; rank 0 broadcasts to the weight group (cluster.transport)."""
        return [rank.send_weights.remote() for rank in self.ranks]

    def weight_metadata(self, bucket_mib: float, timeout_s: float) -> dict:
        """The weight group's update metadata, from rank 0 (every rank joins the gather)."""
        refs = [rank.weight_metadata.remote(bucket_mib) for rank in self.ranks]
        return wait_all(refs, timeout_s, "weight metadata")[0]

    def save(self, out_dir: str, timeout_s: float, optimizer: bool = False) -> None:
        refs = [rank.save.remote(out_dir, optimizer) for rank in self.ranks]
        wait_all(refs, timeout_s, "learner save")

    def optimizer_restored(self, timeout_s: float) -> list[str | None]:
        """Per rank, what restoring its optimizer state did (None: not asked to)."""
        return wait_all([rank.optimizer_restored.remote() for rank in self.ranks], timeout_s, "learner state")
