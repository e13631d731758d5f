"""Rollout and reward workers that are replaced when they die or stop answering.

A pool's workers sit in slots, one per placement bundle. When a call finds its worker dead (Ray raises
`RayActorError`) or the worker misses a call's deadline, the pool kills what is left of it and starts a
fresh actor in the same bundle (`replace`), from the weights the run started with. The new actor takes
work once it answers its ping and, if its engine follows the policy, holds the current policy version:
a push brings it there (`catch_up`: at once when the loop may push, else the next regular push). The
caller resubmits the dead worker's unfinished work to the slots that take work (cluster.generation).

Replacements per slot are bounded (`cluster.max_worker_restarts`): past the bound the run stops with
`RunFailed`, naming the worker, and leaves its resumable checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import ray

from cluster.stops import RunFailed


@dataclass
class Slot:
    actor: Any
    version: int  # the policy version its engine holds (ignored in a pool that does not follow the policy)
    ping: ray.ObjectRef | None = None  # a starting actor's ping; None once it answered
    started: float = 0.0
    restarts: int = 0


@dataclass
class Counters:
    """What recovery did since the last `take` (an iteration's metrics)."""

    restarts: int = 0
    resubmitted: int = 0  # groups given to another worker after theirs died or stuck
    cancelled: int = 0  # calls cancelled: past their deadline, or on a worker that was replaced
    catch_up_s: float = 0.0  # pushes that brought replaced engines to the current version

    def take(self, kind: str) -> dict[str, float]:
        out = {
            f"recovery/{kind}_restarts": float(self.restarts),
            f"recovery/{kind}_resubmitted_groups": float(self.resubmitted),
            f"recovery/{kind}_cancelled_calls": float(self.cancelled),
            f"timing_s/{kind}_catch_up": self.catch_up_s,
        }
        self.restarts = self.resubmitted = self.cancelled = 0
        self.catch_up_s = 0.0
        return out


class WorkerSlots:
    """The actors of one role, each in its slot; `replace(i)` gives slot i a fresh actor."""

    def __init__(
        self,
        kind: str,
        actors: list[Any],
        version: int,
        follows_policy: bool,
        spawn: Callable[[int], Any] | None = None,
        max_restarts: int = 0,
        startup_timeout_s: float = 600.0,
    ):
        """`actors`: answered already (the cluster pinged them at startup), holding `version`;
        `spawn(i)`: a fresh actor for slot i, holding the weights the run started with (`version`)."""
        self.kind = kind
        self.slots = [Slot(actor, version) for actor in actors]
        self.start_version = version
        self.version = version  # the version work is generated and judged at: the last push's
        self.follows_policy = follows_policy
        self.spawn = spawn
        self.max_restarts = max_restarts
        self.startup_timeout_s = startup_timeout_s
        self.counters = Counters()

    @property
    def actors(self) -> list[Any]:
        return [s.actor for s in self.slots]

    @property
    def replaceable(self) -> bool:
        """Whether a lost worker gets a fresh actor (False: a pool of given actors, e.g. in a test)."""
        return self.spawn is not None

    def check_can_work(self) -> None:
        """`RunFailed` when no worker takes work and none will without a push the caller cannot make:
        every slot answered but holds an older version (replaced while the learner was ahead)."""
        if not self.taking_work() and not self.starting():
            raise RunFailed(
                f"no {self.kind} worker holds policy version {self.version}: every one was replaced and "
                "the replacements wait for the next weight push; resume with --resume"
            )

    def name(self, i: int) -> str:
        return f"{self.kind} worker {i}"

    def taking_work(self) -> list[int]:
        """Slots whose actor answered and (policy engines) holds the pool's version: they may take work."""
        self.poll()
        return [
            i
            for i, s in enumerate(self.slots)
            if s.ping is None and (not self.follows_policy or s.version == self.version)
        ]

    def answered(self) -> list[int]:
        """Slots whose actor answered (a push may reach them)."""
        self.poll()
        return [i for i, s in enumerate(self.slots) if s.ping is None]

    def behind(self) -> list[int]:
        """Answered slots whose engine follows the policy and does not hold the pool's version."""
        if not self.follows_policy:
            return []
        return [i for i in self.answered() if self.slots[i].version != self.version]

    def starting(self) -> bool:
        return any(s.ping is not None for s in self.slots)

    def add(self, actor: Any) -> None:
        """A new slot (a grown pool) for `actor`, just spawned: it takes work once it answers and
        holds the pool's version."""
        self.slots.append(self._starting(actor))

    def remove_last(self) -> None:
        """Stop the last slot's actor and drop the slot (a shrunk pool; nothing is out on it)."""
        with suppress(Exception):
            ray.kill(self.slots.pop().actor, no_restart=True)

    def pushed(self, slots: list[int], version: int) -> None:
        """Slots `slots` received `version` (the pool's version from now on)."""
        self.version = version
        for i in slots:
            self.slots[i].version = version

    def replace(self, i: int, reason: str, counts: bool = True) -> None:
        """Kill slot i's actor (whatever is left of it) and start a fresh one in its bundle; `RunFailed`
        past `max_restarts` replacements of this slot. `counts=False`: a replacement lost with its node
        while starting, placed again without counting against the bound (the node's loss was counted)."""
        slot = self.slots[i]
        if self.spawn is None or (counts and slot.restarts >= self.max_restarts):
            raise RunFailed(
                f"{self.name(i)} {reason}; it was replaced {slot.restarts} time(s), the limit "
                f"(cluster.max_worker_restarts={self.max_restarts}); resume with --resume"
            )
        with suppress(Exception):  # it may be gone already
            ray.kill(slot.actor, no_restart=True)
        restarts = slot.restarts + counts
        self.slots[i] = self._starting(self.spawn(i), restarts)
        self.counters.restarts += 1
        print(f"{self.name(i)} {reason}: replaced ({restarts} of {self.max_restarts})", flush=True)

    def _starting(self, actor: Any, restarts: int = 0) -> Slot:
        """A slot for a just-spawned actor: at the run's start version, its ping out."""
        return Slot(actor, self.start_version, actor.ping.remote(), time.monotonic(), restarts)

    def poll(self) -> None:
        """Starting actors that answered their ping take work from now on; one that died while starting,
        or did not answer within the startup deadline, is replaced again."""
        for i, slot in enumerate(self.slots):
            if slot.ping is None:
                continue
            if ray.wait([slot.ping], timeout=0)[0]:
                try:
                    ray.get(slot.ping)
                except ray.exceptions.RayError as err:
                    if lost_with_its_node(err):  # placed before Ray knew the node was gone
                        self.replace(i, "was lost with its node while starting", counts=False)
                    else:
                        self.replace(i, f"died while starting ({type(err).__name__})")
                    continue
                slot.ping = None
            elif time.monotonic() - slot.started > self.startup_timeout_s:
                self.replace(
                    i, f"did not start within cluster.startup_timeout_s={self.startup_timeout_s:g} s"
                )

    def wait_started(self, timeout_s: float) -> None:
        """Block until no slot is starting (replacements keep being polled), at most `timeout_s`."""
        end = time.monotonic() + timeout_s
        while self.starting() and time.monotonic() < end:
            pings = [s.ping for s in self.slots if s.ping is not None]
            ray.wait(pings, num_returns=len(pings), timeout=min(1.0, max(0.0, end - time.monotonic())))
            self.poll()


ENGINE_DEAD = "EngineDeadError"  # vLLM's error once its engine process is gone (e.g. OOM-killed)


def is_dead(err: BaseException) -> bool:
    """The call failed because its actor died, or the vLLM engine process inside it did (a worker to
    replace), not because its code raised."""
    if isinstance(err, ray.exceptions.RayActorError):
        return True
    cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayTaskError) else None
    return cause is not None and type(cause).__name__ == ENGINE_DEAD


NODE_DIED = "its node has died"  # Ray's reason for an actor on a node that was lost


def lost_with_its_node(err: BaseException) -> bool:
    """The actor died because the node it was placed on was lost (not because of its own code)."""
    return isinstance(err, ray.exceptions.RayActorError) and NODE_DIED in str(err)


def call_died(ref: ray.ObjectRef) -> bool:
    """The finished call of `ref` failed because its actor died (an unfinished one: False)."""
    try:
        ray.get(ref, timeout=0)
    except Exception as err:
        return is_dead(err)
    return False
