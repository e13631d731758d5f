"""Weight transports: how the learner's new parameters reach every engine that follows the policy.

The driver only calls `transport.push(version)`. `ObjectStoreTransport` works everywhere (CPU
included): the learner ranks join one gather, rank 0 puts the parameters into Ray's object store once,
in buckets, and every receiver pulls the same object and reloads in place. A GPU transport (NCCL
broadcast through vLLM's weight-transfer API) implements the same protocol; `make_transport` picks
one from `cluster.weight_transport`.
"""

from __future__ import annotations

import time
from typing import Protocol

from cluster.placement import wait_all
from cluster.pools import LearnerGroup, Receivers


class WeightTransport(Protocol):
    def push(self, version: int) -> dict[str, float]:
        """Move every receiver to `version` with the learner's current weights; returns timings."""
        ...


class ObjectStoreTransport:
    def __init__(self, learner: LearnerGroup, receivers: Receivers, timeout_s: float):
        self.learner = learner
        self.receivers = receivers
        self.timeout_s = timeout_s

    def push(self, version: int) -> dict[str, float]:
        start = time.perf_counter()
        published = self.learner.publish_weights()
        loads = [a.load_weights.remote(version, published[0]) for a in self.receivers.actors]
        wait_all(loads + published[1:], self.timeout_s, "weight push")
        return {"timing_s/sync": time.perf_counter() - start, "sync/receivers": float(len(loads))}


TRANSPORTS = {"object_store": ObjectStoreTransport}


def make_transport(
    kind: str, learner: LearnerGroup, receivers: Receivers, timeout_s: float
) -> WeightTransport:
    """The transport named by cluster.weight_transport (validated by the config)."""
    return TRANSPORTS[kind](learner, receivers, timeout_s)
