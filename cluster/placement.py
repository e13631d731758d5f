"""Typed pools of Ray actors built from plain worker classes, and deadline-bounded waits.

Every remote wait in the service goes through `wait_all` / `wait_any`, so nothing blocks forever:
past its deadline a wait raises `DeadlineExceeded` naming what did not answer.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.launch import LOOPBACK


class DeadlineExceeded(TimeoutError):
    pass


def rendezvous_address(node_ips: Sequence[str], first_node_port: int) -> tuple[str, int]:
    """Where a group's ranks meet, from the node of each rank (rank order): loopback when they share
    one node (no interface to choose, nothing exposed), else rank 0's node, on a port free there."""
    return (LOOPBACK if len(set(node_ips)) == 1 else node_ips[0]), first_node_port


@ray.remote(num_cpus=0)
def _node_ip_and_free_port() -> tuple[str, int]:
    address = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


def wait_all(refs: Sequence[ray.ObjectRef], timeout_s: float, what: str) -> list[Any]:
    """Values of every ref, in order, or DeadlineExceeded after `timeout_s`."""
    try:
        return ray.get(list(refs), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise DeadlineExceeded(f"{what}: no answer from every actor within {timeout_s:g} s") from None


@dataclass(frozen=True)
class Role:
    """How many actors of a kind, and what each reserves."""

    name: str
    count: int
    num_cpus: float
    num_gpus: float


class Placement:
    """One placement group with a bundle per actor, reserved before any actor starts."""

    def __init__(
        self,
        roles: Sequence[Role],
        timeout_s: float,
        env: dict[str, str] | None = None,
        role_env: dict[str, dict[str, str]] | None = None,
        strategy: str = "PACK",
    ):
        """`env`: environment variables of every actor (merged into a submitted job's runtime env);
        `role_env`: more for the actors of one role; `strategy`: Ray's placement strategy of the bundles."""
        self.roles = list(roles)
        self.env = env or {}
        self.role_env = role_env or {}
        self.spawned = 0  # actors started in this placement: each gets a name of its own
        self.extra: dict[tuple[str, int], PlacementGroup] = {}  # bundles reserved later (a grown pool)
        bundles = [self._bundle(r) for r in self.roles for _ in range(r.count)]
        self.group: PlacementGroup = placement_group(bundles, strategy=strategy)
        ready, _ = ray.wait([self.group.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(self.group)
            needed = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
            raise DeadlineExceeded(
                f"the cluster could not reserve {needed} for {', '.join(f'{r.count} {r.name}' for r in self.roles)} "
                f"within {timeout_s:g} s (available: {ray.available_resources()})"
            )

    @staticmethod
    def _bundle(role: Role) -> dict[str, float]:
        bundle = {"CPU": role.num_cpus}
        if role.num_gpus:
            bundle["GPU"] = role.num_gpus
        return bundle

    def spawn(self, role_name: str, cls: type, args_per_actor: Sequence[tuple]) -> list[Any]:
        """Start `cls` as Ray actors in the bundles of `role_name`, one per args tuple."""
        _, role = self._offset(role_name)
        assert len(args_per_actor) == role.count, (role_name, len(args_per_actor), role.count)
        return [self.spawn_in(role_name, i, cls, args) for i, args in enumerate(args_per_actor)]

    def spawn_in(self, role_name: str, index: int, cls: type, args: tuple) -> Any:
        """Start `cls` as a Ray actor in bundle `index` of `role_name` (free: its previous actor is gone);
        past the role's count, in that index's extra bundle (`reserve`)."""
        offset, role = self._offset(role_name)
        group, bundle = (
            (self.group, offset + index) if index < role.count else (self.extra[role_name, index], 0)
        )
        self.spawned += 1
        return (
            ray.remote(cls)
            .options(
                num_cpus=role.num_cpus,
                num_gpus=role.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, bundle),
                name=f"emo-r3-{role_name}-{index}-{id(self.group):x}-{self.spawned}",
                runtime_env={"env_vars": self.env | self.role_env.get(role_name, {})},
            )
            .remote(*args)
        )

    def reserve(self, role_name: str, index: int, timeout_s: float) -> None:
        """A bundle of `role_name`'s shape for actor `index`, beyond the role's count (a grown pool): a
        placement group of its own, or DeadlineExceeded when the cluster has no room within `timeout_s`."""
        _, role = self._offset(role_name)
        if index < role.count or (role_name, index) in self.extra:
            return
        bundle = self._bundle(role)
        group = placement_group([bundle], strategy="PACK")
        if not ray.wait([group.ready()], timeout=timeout_s)[0]:
            remove_placement_group(group)
            raise DeadlineExceeded(
                f"the cluster could not reserve {bundle} for {role_name} worker {index} within {timeout_s:g} s "
                f"(available: {ray.available_resources()})"
            )
        self.extra[role_name, index] = group

    def unreserve(self, role_name: str, index: int) -> None:
        """Give back actor `index`'s extra bundle (its actor is gone); the role's own bundles stay."""
        if (group := self.extra.pop((role_name, index), None)) is not None:
            remove_placement_group(group)

    def rendezvous(self, role_name: str, timeout_s: float) -> tuple[str, int]:
        """The torch.distributed master address and port of the actors of `role_name`: a probe task in
        each of their bundles finds its node (rendezvous_address); across nodes, rank 0's node IP."""
        found = self._probe(role_name, timeout_s)
        return rendezvous_address([ip for ip, _ in found], found[0][1])

    def node_ips(self, role_name: str, timeout_s: float) -> list[str]:
        """The node of each bundle of `role_name`, in order."""
        return [ip for ip, _ in self._probe(role_name, timeout_s)]

    def _probe(self, role_name: str, timeout_s: float) -> list[tuple[str, int]]:
        """A probe task in each bundle of `role_name`, its extra bundles last."""
        offset, role = self._offset(role_name)
        bundles = [(self.group, offset + i) for i in range(role.count)]
        bundles += [(self.extra[key], 0) for key in sorted(self.extra) if key[0] == role_name]
        probes = [
            _node_ip_and_free_port.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(g, i)
            ).remote()
            for g, i in bundles
        ]
        return wait_all(probes, timeout_s, f"{role_name} nodes")

    def _offset(self, role_name: str) -> tuple[int, Role]:
        """The first bundle index of `role_name`, and the role."""
        offset = 0
        for role in self.roles:
            if role.name == role_name:
                return offset, role
            offset += role.count
        raise KeyError(f"no role {role_name!r} in this placement")

    def release(self) -> None:
        for group in self.extra.values():
            remove_placement_group(group)
        self.extra.clear()
        remove_placement_group(self.group)
