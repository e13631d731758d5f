"""The training cluster of one run: Ray, one placement group, and the three typed pools.

    with TrainingCluster(cfg, model_path) as tc:
        rollouts = tc.generate_and_score(batch, version)
        ...

Leaving the block kills every actor and releases the placement group, also on errors.
"""

from __future__ import annotations

from functools import partial

import ray

from actors.engine import EngineSettings
from actors.rollout import RolloutWorker
from cluster.config import RunConfig
from cluster.data.images import load_image
from cluster.datasets import image_policy
from cluster.launch import start_ray, worker_env
from cluster.models import resolve_model
from cluster.pools import Placement, Role, wait_all
from cluster.sample import engine_settings, reward_rules, rollout_sampling
from cluster.transport import make_transport
from cluster.workers import LearnerGroup, Receivers, RewardPool, RolloutPool, learner_rank_args
from learner.batch import micro_batches_per_step
from learner.rank import LearnerRank
from rewards.worker import RewardWorker


def roles(cfg: RunConfig) -> list[Role]:
    r, w, lr = cfg.rollout, cfg.reward, cfg.learner
    return [
        Role("rollout", r.num_workers, r.num_cpus_per_worker, r.num_gpus_per_worker),
        Role("reward", w.num_workers, w.num_cpus_per_worker, w.num_gpus_per_worker),
        Role("learner", lr.num_ranks, lr.num_cpus_per_rank, lr.num_gpus_per_rank),
    ]


def judge_settings(cfg: RunConfig, model_path: str) -> EngineSettings:
    j = cfg.reward.judge
    path = model_path if j.mode == "policy" else resolve_model(j.model or "")
    base = engine_settings(cfg, path)
    return EngineSettings(**{**base.__dict__, "kv_cache_mib": j.kv_cache_mib, "seed": cfg.cluster.seed + 1})


class TrainingCluster:
    def __init__(self, cfg: RunConfig, model_path: str, reference_path: str | None = None, version: int = 0,
                 resume: bool = False):  # fmt: skip
        """`model_path` holds policy `version` (a checkpoint when `resume`: the learner restores its
        optimizer state too); `reference_path` the initial policy the KL term is measured against
        (default: `model_path`)."""
        self.cfg = cfg
        self.on_gpu = any(role.num_gpus > 0 for role in roles(cfg))
        start_ray(cfg, self.on_gpu)
        self.placement = Placement(roles(cfg), cfg.cluster.startup_timeout_s, worker_env(cfg, self.on_gpu))
        loader = partial(load_image, policy=image_policy(cfg.data))
        settings = engine_settings(cfg, model_path)
        self.rollout = RolloutPool(self.placement.spawn(
            "rollout", RolloutWorker,
            [(EngineSettings(**{**settings.__dict__, "seed": cfg.cluster.seed + 100 * i}), rollout_sampling(cfg), loader, version)
             for i in range(cfg.rollout.num_workers)],
        ))  # fmt: skip
        judge = judge_settings(cfg, model_path) if cfg.reward.reflection else None
        self.reward = RewardPool(self.placement.spawn(
            "reward", RewardWorker,
            [(cfg.reward, reward_rules(cfg), judge, loader, cfg.cluster.seed + i, version)
             for i in range(cfg.reward.num_workers)],
        ), follows_policy=cfg.reward.judge.mode == "policy")  # fmt: skip
        self.learner = LearnerGroup(self._spawn_learner(model_path, reference_path, loader, resume))
        self._wait_ready()
        self.transport = make_transport(cfg.cluster.weight_transport, self.learner, self.receivers,
                                        cfg.cluster.sync_timeout_s)  # fmt: skip

    def _spawn_learner(self, model_path: str, reference_path: str | None, loader, resume: bool) -> list:
        cfg = self.cfg
        mini_batch = (
            cfg.cluster.prompts_per_iteration // cfg.learner.updates_per_iteration * cfg.rollout.group_size
        )
        steps = micro_batches_per_step(mini_batch, cfg.learner.num_ranks, cfg.learner.micro_batch_size)
        learner = cfg.learner.model_copy(update={"old_logprobs": cfg.behaviour_logprobs()})
        meet = self.placement.rendezvous("learner", cfg.cluster.startup_timeout_s)
        args = learner_rank_args(model_path, learner, steps, loader, meet, reference_path, resume)
        return self.placement.spawn("learner", LearnerRank, args)

    def _wait_ready(self) -> None:
        actors = self.rollout.actors + self.reward.actors + self.learner.ranks
        wait_all([a.ping.remote() for a in actors], self.cfg.cluster.startup_timeout_s, "actor startup")

    @property
    def receivers(self) -> Receivers:
        judges = self.reward.actors if self.reward.follows_policy and self.cfg.reward.reflection else []
        return Receivers(self.rollout.actors + judges)

    def close(self) -> None:
        for actor in self.rollout.actors + self.reward.actors + self.learner.ranks:
            ray.kill(actor)
        self.placement.release()

    def __enter__(self) -> TrainingCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
