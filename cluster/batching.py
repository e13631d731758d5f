"""From scored groups to the learner's shards: advantages, mini-batches, rank shards (no remote call)."""

from __future__ import annotations

import math

import torch

from cluster.generation import IterationRollouts
from learner.batch import TrainRollout, num_completion_tokens, rollouts_from_group, split
from learner.config import LearnerConfig
from learner.grpo import group_advantages


def advantages(rollouts: IterationRollouts, cfg: LearnerConfig) -> torch.Tensor:
    """Group-normalised advantages [N] over every rollout in group order; unscorable → 0."""
    scores, index, scorable = [], [], []
    for sg in rollouts.groups:
        for s in sg.scores:
            scores.append(s.rewards.score if s.rewards is not None else math.nan)
            scorable.append(s.rewards is not None)
            index.append(sg.group.group_id)
    return group_advantages(
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(index),
        torch.tensor(scorable),
        std=cfg.advantage_std,
        eps=cfg.advantage_eps,
    )


def train_shards(
    rollouts: IterationRollouts, cfg: LearnerConfig
) -> tuple[list[list[list[TrainRollout]]], list[int], dict[str, float]]:
    """shards[rank][minibatch] and the global completion-token count of each mini-batch.

    Mini-batches are contiguous, equal-sized runs of rollouts in group order (whole groups when the
    groups divide evenly; a group joined by a resampling round may straddle two, which changes nothing:
    advantages are computed per group first); each is split evenly over the ranks. Returns advantage
    metrics too.
    """
    adv = advantages(rollouts, cfg)
    flat: list[TrainRollout] = []
    offset = 0
    for sg in rollouts.groups:
        n = len(sg.group.completions)
        flat += rollouts_from_group(sg.group, adv[offset : offset + n].tolist(), sg.sample.image)
        offset += n
    minibatches = split(flat, cfg.updates_per_iteration)
    shards = [[] for _ in range(cfg.num_ranks)]
    for minibatch in minibatches:
        for rank, part in enumerate(split(minibatch, cfg.num_ranks)):
            shards[rank].append(part)
    metrics = {
        "advantage/mean": float(adv.mean()),
        "advantage/std": float(adv.std()) if len(adv) > 1 else 0.0,
        "advantage/zero_rate": float((adv == 0).double().mean()),
    }
    return shards, [num_completion_tokens(mb) for mb in minibatches], metrics
