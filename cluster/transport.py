"""Weight transports: how the learner's new parameters reach every engine that follows the policy.

The driver only calls `transport.push(version)`; `make_transport` picks the one `cluster.weight_transport`
names.

- `collective` (default): learner rank 0 and every receiving engine's worker form one
  `torch.distributed` group of their own (gloo on CPU, NCCL on GPU, the same code; actors.collective,
  learner.transfer). Rank 0 broadcasts the parameters in buckets of `cluster.weight_bucket_mib`; each
  engine loads a bucket as it arrives, so neither side holds more than about a bucket beyond its
  model. The group is formed at the first push and formed anew whenever the receivers changed (an
  engine replaced).
- `object_store`: rank 0 puts the parameters into Ray's object store once, in buckets, and every
  receiver pulls its own copy and reloads in place. Works anywhere Ray does; every receiver
  deserialises a full copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from cluster.placement import wait_all
from cluster.pools import LearnerGroup


class WeightTransport(Protocol):
    def push(self, version: int, receivers: list[Any] | None = None) -> dict[str, float]:
        """Move `receivers` (default: every receiver) to `version` with the learner's current weights;
        returns timings."""
        ...


class ObjectStoreTransport:
    def __init__(self, learner: LearnerGroup, receivers: Callable[[], list[Any]], timeout_s: float):
        self.learner = learner
        self.receivers = receivers
        self.timeout_s = timeout_s

    def push(self, version: int, receivers: list[Any] | None = None) -> dict[str, float]:
        start = time.perf_counter()
        published = self.learner.publish_weights()
        receivers = self.receivers() if receivers is None else receivers
        loads = [a.load_weights.remote(version, published[0]) for a in receivers]
        wait_all(loads + published[1:], self.timeout_s, "weight push")
        return {"timing_s/sync": time.perf_counter() - start, "sync/receivers": float(len(loads))}


class CollectiveTransport:
    """One group of learner rank 0 and the receivers, formed when the receivers are new to it."""

    def __init__(
        self,
        learner: LearnerGroup,
        receivers: Callable[[], list[Any]],
        timeout_s: float,
        bucket_mib: float,
        dist_backend: str,
        address: Callable[[], str],
        workers_per_engine: int = 1,
    ):
        """`address`: where the group meets (loopback when every member shares a node);
        `workers_per_engine`: an engine's tensor-parallel size, a rank for each of its workers."""
        self.learner = learner
        self.receivers = receivers
        self.timeout_s = timeout_s
        self.bucket_mib = bucket_mib
        self.dist_backend = dist_backend
        self.address = address
        self.workers_per_engine = workers_per_engine
        self.members: list[str] = []
        self.metadata: dict | None = None

    def push(self, version: int, receivers: list[Any] | None = None) -> dict[str, float]:
        start = time.perf_counter()
        receivers = self.receivers() if receivers is None else receivers
        formed = 0.0
        if [a._actor_id.hex() for a in receivers] != self.members:
            formed = self._form(receivers)
        sends = self.learner.send_weights()
        loads = [
            a.receive_weights.remote(version, self.metadata) for a in receivers
        ]  # all submitted, then waited
        wait_all(loads + sends, self.timeout_s, "weight push")
        return {
            "timing_s/sync": time.perf_counter() - start,
            "timing_s/sync_group": formed,
            "sync/receivers": float(len(receivers)),
        }

    def _form(self, receivers: list[Any]) -> float:
        """A new group of learner rank 0 and `receivers` (each engine's workers ranks 1..N); returns seconds."""
        start = time.perf_counter()
        rank0, address, per_engine = self.learner.ranks[0], self.address(), self.workers_per_engine
        port = wait_all([rank0.open_weight_group.remote(address)], self.timeout_s, "weight group")[0]
        world = 1 + per_engine * len(receivers)
        info = {
            "master_address": address,
            "master_port": port,
            "world_size": world,
            "dist_backend": self.dist_backend,
            "timeout_s": self.timeout_s,
        }
        joins = [
            a.join_weight_group.remote(info | {"rank_offset": 1 + per_engine * i})
            for i, a in enumerate(receivers)
        ]
        joins.append(rank0.join_weight_group.remote(world, self.dist_backend, self.timeout_s))
        wait_all(joins, self.timeout_s, "weight group")
        self.metadata = self.learner.weight_metadata(self.bucket_mib, self.timeout_s)
        self.members = [a._actor_id.hex() for a in receivers]
        return time.perf_counter() - start


def make_transport(
    kind: str,
    learner: LearnerGroup,
    receivers: Callable[[], list[Any]],
    timeout_s: float,
    bucket_mib: float,
    dist_backend: str,
    address: Callable[[], str],
    workers_per_engine: int = 1,
) -> WeightTransport:
    """The transport named by cluster.weight_transport (validated by the config)."""
    if kind == "object_store":
        return ObjectStoreTransport(learner, receivers, timeout_s)
    return CollectiveTransport(
        learner, receivers, timeout_s, bucket_mib, dist_backend, address, workers_per_engine
    )
