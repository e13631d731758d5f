"""The training cluster of one run: Ray, one placement group, the three typed pools, and the phases
of an iteration as calls on them, each with its deadline from the config.

    with TrainingCluster(cfg, model_path) as tc:
        rollouts = tc.generate_and_score(batch, iteration, version)
        metrics = tc.train(rollouts)
        tc.push(version + 1)

Leaving the block kills every actor and releases the placement group, also on errors; a Ray this
cluster started is shut down with it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import ray

from actors.cpu import CORES_ENV
from actors.rollout import RolloutWorker
from cluster.batching import train_shards
from cluster.config import RunConfig, weight_group_backend
from cluster.data.sample import Sample
from cluster.generation import IterationRollouts, Workers, generate_and_score, resample_all_wrong
from cluster.launch import start_ray, worker_env
from cluster.models import resolve_model
from cluster.placement import DeadlineExceeded, Placement, Role, rendezvous_address, wait_all
from cluster.pools import LearnerGroup, RewardPool, RolloutPool
from cluster.settings import (
    group_seed,
    image_loader,
    judge_settings,
    learner_rank_specs,
    prompt_request,
    reward_rules,
    rollout_engine_settings,
    rollout_sampling,
)
from cluster.stops import NEVER, LearnerLost, RunFailed, StopSignal
from cluster.supervision import WorkerSlots, call_died
from cluster.transport import make_transport
from learner.batch import micro_batches_per_step
from learner.rank import LearnerRank, combine_rank_metrics
from rewards.worker import RewardWorker

RESERVE_S = 60.0  # how long growing the rollout pool waits for room in the cluster, per worker


def roles(cfg: RunConfig) -> list[Role]:
    r, w, lr = cfg.rollout, cfg.reward, cfg.learner
    return [
        Role("rollout", r.num_workers, r.num_cpus_per_worker, r.num_gpus_per_worker),
        Role("reward", w.num_workers, w.num_cpus_per_worker, w.num_gpus_per_worker),
        Role("learner", lr.num_ranks, lr.num_cpus_per_rank, lr.num_gpus_per_rank),
    ]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return re.sub(r"\s+", " ", lines[0])[:300] if lines else type(err).__name__


class TrainingCluster:
    def __init__(
        self,
        cfg: RunConfig,
        model_path: str,
        reference_path: str | None = None,
        version: int = 0,
        resume: bool = False,
    ):
        """`model_path` holds policy `version` (a checkpoint when `resume`: the learner restores its
        optimizer state too); `reference_path` the initial policy the KL term is measured against
        (default: `model_path`)."""
        self.cfg = cfg
        self.on_gpu = any(role.num_gpus > 0 for role in roles(cfg))
        self.owns_ray = start_ray(cfg, self.on_gpu)
        self.placement = Placement(
            roles(cfg),
            cfg.cluster.startup_timeout_s,
            worker_env(cfg, self.on_gpu),
            {role: {CORES_ENV: cores} for role, cores in cfg.cluster.cpu_affinity.items()},
            cfg.cluster.placement_strategy,
        )
        loader = image_loader(cfg.data)
        self.scale_s = 0.0  # seconds spent resizing the rollout pool since the last iteration's metrics
        self.rollout_args = lambda i: (
            rollout_engine_settings(cfg, model_path, i),
            rollout_sampling(cfg),
            loader,
            version,
        )
        self.rollout = RolloutPool(
            [],
            self._slots("rollout", RolloutWorker, self.rollout_args, version, follows_policy=True),
        )
        judge = None
        if cfg.reward.reflection:
            follows = cfg.reward.judge_follows_policy
            judge = judge_settings(
                cfg, model_path if follows else resolve_model(cfg.reward.judge.model or "")
            )
        reward_args = (cfg.reward, reward_rules(cfg), judge, loader, version)
        follows = cfg.reward.judge_follows_policy  # reflection on, with the policy's weights
        self.reward = RewardPool(
            [],
            follows_policy=follows,
            slots=self._slots("reward", RewardWorker, lambda i: reward_args, version, follows_policy=follows),
        )
        self.learner = LearnerGroup(self._spawn_learner(model_path, reference_path, loader, resume))
        self.workers = Workers(
            self.rollout,
            self.reward,
            cfg.rollout.chunk_size,
            cfg.cluster.generate_timeout_s,
            cfg.reward.timeout_s,
            # synchronous loop: the learner holds the engines' version while rollouts are generated
            catch_up=None if cfg.cluster.max_staleness else self._catch_up,
        )
        self._wait_ready()
        self.transport = make_transport(
            cfg.cluster.weight_transport,
            self.learner,
            self.receivers,
            cfg.cluster.sync_timeout_s,
            cfg.cluster.weight_bucket_mib,
            weight_group_backend(cfg),
            self.weight_group_address,
            workers_per_engine=cfg.rollout.tensor_parallel_size,
        )

    def _slots(
        self, role: str, cls: type, args: Callable[[int], tuple], version: int, follows_policy: bool
    ) -> WorkerSlots:
        """The actors of `role` in replaceable slots: slot i's actor (and its replacements) from `args(i)`."""
        count = next(r.count for r in self.placement.roles if r.name == role)
        return WorkerSlots(
            role,
            self.placement.spawn(role, cls, [args(i) for i in range(count)]),
            version,
            follows_policy,
            spawn=lambda i: self.placement.spawn_in(role, i, cls, args(i)),
            max_restarts=self.cfg.cluster.max_worker_restarts,
            startup_timeout_s=self.cfg.cluster.startup_timeout_s,
        )

    def _spawn_learner(self, model_path: str, reference_path: str | None, loader, resume: bool) -> list:
        cfg = self.cfg
        mini_batch = (
            cfg.cluster.prompts_per_iteration // cfg.learner.updates_per_iteration * cfg.rollout.group_size
        )
        steps = micro_batches_per_step(mini_batch, cfg.learner.num_ranks, cfg.learner.micro_batch_size)
        learner = cfg.learner.model_copy(update={"old_logprobs": cfg.behaviour_logprobs()})
        meet = self.placement.rendezvous("learner", cfg.cluster.startup_timeout_s)
        specs = learner_rank_specs(
            model_path,
            learner,
            steps,
            loader,
            meet,
            reference_path=reference_path,
            restore_optimizer=resume,
            bucket_mib=cfg.cluster.weight_bucket_mib,
        )
        return self.placement.spawn("learner", LearnerRank, [(spec,) for spec in specs])

    def _wait_ready(self) -> None:
        actors = self.rollout.actors + self.reward.actors + self.learner.ranks
        wait_all([a.ping.remote() for a in actors], self.cfg.cluster.startup_timeout_s, "actor startup")

    def receivers(self) -> list:
        """Every engine that loads new policy weights: rollout engines and policy-following judges
        (replacements that are still starting join at a later push)."""
        return [slots.actors[i] for slots, idx in self._policy_slots() for i in idx]

    def _policy_slots(self) -> list[tuple[WorkerSlots, list[int]]]:
        pools = [self.rollout.slots, self.reward.slots]
        return [(slots, slots.answered()) for slots in pools if slots.follows_policy]

    def _catch_up(self, slots: WorkerSlots, behind: list[int]) -> None:
        """Push the learner's weights, which are the pool's version, to replaced engines `behind`."""
        start = time.perf_counter()
        self.transport.push(slots.version, [slots.actors[i] for i in behind])
        slots.pushed(behind, slots.version)
        slots.counters.catch_up_s += time.perf_counter() - start

    def _check_alive(self) -> None:
        """Ping every answered policy engine (idle at a push); one that died or does not answer is replaced."""
        for slots, idx in self._policy_slots():
            pings = {i: slots.actors[i].ping.remote() for i in idx}
            ray.wait(list(pings.values()), num_returns=len(pings), timeout=self.cfg.cluster.sync_timeout_s)
            for i, ref in pings.items():
                if not ray.wait([ref], timeout=0)[0]:
                    slots.replace(i, "did not answer before a weight push")
                elif call_died(ref):
                    slots.replace(i, "died")

    def weight_group_address(self) -> str:
        """Where learner rank 0 and the receivers meet: loopback when they share a node, else rank 0's node."""
        timeout = self.cfg.cluster.startup_timeout_s
        nodes = self.placement.node_ips("learner", timeout)[:1] + self.placement.node_ips("rollout", timeout)
        if self.reward.follows_policy:
            nodes += self.placement.node_ips("reward", timeout)
        return rendezvous_address(nodes, 0)[0]

    # ---- the phases of an iteration -------------------------------------------------------------

    def generate_and_score(
        self, batch: Sequence[Sample], iteration: int, version: int, stop: StopSignal = NEVER
    ) -> IterationRollouts:
        """G rollouts of every prompt from policy `version`, scored (cluster.generation), all-wrong groups
        resampled (`rollout.resample_all_wrong` rounds); every rollout checked to be of `version`."""
        cfg = self.cfg
        requests = [
            prompt_request(s, i, cfg.data.prompt_style, group_seed(cfg.cluster.seed, iteration, s.sample_id))
            for i, s in enumerate(batch)
        ]
        rollouts = generate_and_score(self.workers, batch, requests, version, stop)
        if rounds := cfg.rollout.resample_all_wrong:
            rollouts.metrics |= resample_all_wrong(
                self.workers, batch, requests, rollouts, version, rounds, stop
            )
        seen = {sg.group.policy_version for sg in rollouts.groups}
        if seen != {version}:  # synchronous mode: one version per iteration
            raise RuntimeError(
                f"rollouts from policy versions {sorted(seen)} in an iteration at version {version}"
            )
        return rollouts

    def train(self, rollouts: IterationRollouts) -> dict[str, float]:
        """The iteration's optimizer updates on every learner rank; advantage and `train/` metrics."""
        shards, num_tokens, adv_metrics = train_shards(rollouts, self.cfg.learner)
        per_rank = self.learner.train(shards, num_tokens, self.cfg.cluster.train_timeout_s)
        return adv_metrics | {f"train/{k}": v for k, v in combine_rank_metrics(per_rank).items()}

    def push(self, version: int) -> dict[str, float]:
        """Every engine that follows the policy moves to the learner's weights as `version`; one found
        dead first is replaced (it catches up when it has started)."""
        self._check_alive()
        targets = self._policy_slots()
        metrics = self.transport.push(version, [slots.actors[i] for slots, idx in targets for i in idx])
        for slots, idx in targets:
            slots.pushed(idx, version)
        if not self.reward.slots.follows_policy:
            self.reward.slots.pushed([], version)  # a frozen judge or the rules: any version's work
        return metrics

    def scale_rollout(self, count: int) -> int:
        """Resize the rollout pool to `count` workers between iterations (cluster.scaling): the last
        ones are stopped, or new ones start in bundles reserved for them, as far as the cluster has
        room, and are waited for; returns the pool's size."""
        start = time.perf_counter()
        slots = self.rollout.slots
        while len(slots.slots) > count:
            slots.remove_last()
            self.placement.unreserve("rollout", len(slots.slots))
        while len(slots.slots) < count:
            i = len(slots.slots)
            try:
                self.placement.reserve("rollout", i, min(self.cfg.cluster.startup_timeout_s, RESERVE_S))
            except DeadlineExceeded as err:
                print(f"the rollout pool stays at {i} workers: {err}", flush=True)
                break
            slots.add(self.placement.spawn_in("rollout", i, RolloutWorker, self.rollout_args(i)))
        slots.wait_started(self.cfg.cluster.startup_timeout_s)  # the next iteration has them
        self.scale_s += time.perf_counter() - start
        return len(slots.slots)

    def recovery_metrics(self) -> dict[str, float]:
        """What replacing workers did since the last call: restarts, resubmitted groups, cancelled calls."""
        pools = self.rollout.slots.counters.take("rollout") | self.reward.slots.counters.take("reward")
        scaled, self.scale_s = self.scale_s, 0.0
        return pools | {"rollout/workers": float(len(self.rollout.actors)), "timing_s/scale": scaled}

    def save(self, out_dir: str | Path, optimizer: bool) -> None:
        """A checkpoint of the learner's policy (and every rank's optimizer state) in `out_dir`."""
        self.learner.save(str(out_dir), self.cfg.cluster.train_timeout_s, optimizer=optimizer)

    # ---- failures ------------------------------------------------------------------------------

    def actor_names(self) -> dict[str, str]:
        """Ray actor id (hex) → what it is in this run ("rollout worker 1")."""
        pools = [
            ("rollout worker", self.rollout.actors),
            ("reward worker", self.reward.actors),
            ("learner rank", self.learner.ranks),
        ]
        return {
            actor._actor_id.hex(): f"{kind} {i}" for kind, actors in pools for i, actor in enumerate(actors)
        }

    @contextmanager
    def failures_named(self) -> Iterator[None]:
        """Turn a dead actor, an error raised inside one, or a missed deadline into `RunFailed`, one line
        naming the worker."""
        try:
            yield
        except (ray.exceptions.RayError, DeadlineExceeded) as err:
            if lost := self.lost_learner_ranks():  # the others may have failed in a collective with it
                raise LearnerLost(f"learner rank {lost[0]} died ({_first_line(err)})") from None
            if isinstance(err, ray.exceptions.RayActorError):
                who = self.actor_names().get(getattr(err, "actor_id", None) or "", "a worker")
                raise RunFailed(f"{who} died ({_first_line(err)}); resume with --resume") from None
            if isinstance(err, ray.exceptions.RayTaskError):
                cause = err.cause
                raise RunFailed(f"a worker raised {type(cause).__name__}: {_first_line(cause)}") from None
            raise RunFailed(str(err)) from None

    def lost_learner_ranks(self, wait_s: float = 10.0) -> list[int]:
        """The learner ranks whose actor is dead (a rank still busy or stuck is not: its ping waits)."""
        pings = [rank.ping.remote() for rank in self.learner.ranks]
        ray.wait(pings, num_returns=len(pings), timeout=wait_s)
        return [i for i, ref in enumerate(pings) if call_died(ref)]

    def close(self) -> None:
        for actor in self.rollout.actors + self.reward.actors + self.learner.ranks:
            ray.kill(actor)
        self.placement.release()
        if self.owns_ray:
            ray.shutdown()

    def __enter__(self) -> TrainingCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
