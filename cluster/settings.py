"""The run config translated for the workers: engine, sampling, reward-rule, image and learner-rank
settings. actors/, rewards/ and learner/ take these plain objects, never the RunConfig; this module is
the one place that builds them, so every command and the training cluster build them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from actors.collective import BACKEND as COLLECTIVE_BACKEND
from actors.engine import EngineSettings
from actors.types import PromptRequest, SamplingSettings, derive_seed
from cluster.config import DataConfig, RunConfig
from cluster.data.images import ImagePolicy, load_image
from cluster.data.rows import Columns
from cluster.data.sample import Sample
from learner.config import LearnerConfig
from learner.rank import RankSpec
from rewards.prompts import build_user_text
from rewards.rules import RewardRules

ROLLOUT_SEED_STRIDE = 100  # engine seed of rollout worker i: cluster.seed + 100 i
JUDGE_SEED_OFFSET = 1  # the judge engines' seed: cluster.seed + 1 (+ the reward worker's index)


def engine_settings(cfg: RunConfig, model_path: str, seed: int | None = None) -> EngineSettings:
    """An engine with the rollout section's settings holding `model_path` (seed: cluster.seed)."""
    return EngineSettings.from_rollout(cfg.rollout, model_path, cfg.cluster.seed if seed is None else seed)


def rollout_engine_settings(cfg: RunConfig, model_path: str, worker: int) -> EngineSettings:
    settings = engine_settings(cfg, model_path, seed=cfg.cluster.seed + ROLLOUT_SEED_STRIDE * worker)
    return replace(settings, weight_transfer=weight_transfer_backend(cfg))


def weight_transfer_backend(cfg: RunConfig) -> str | None:
    """The weight-transfer backend an engine that follows the policy receives through (None: the
    object store: weights come in packed through the worker extension)."""
    return COLLECTIVE_BACKEND if cfg.cluster.weight_transport == "collective" else None


def judge_settings(cfg: RunConfig, judge_path: str) -> EngineSettings:
    """The judge engine: the rollout settings with the judge's own KV cache, holding `judge_path`
    (the policy's model in policy mode, reward.judge.model when frozen)."""
    base = engine_settings(cfg, judge_path, seed=cfg.cluster.seed + JUDGE_SEED_OFFSET)
    transfer = weight_transfer_backend(cfg) if cfg.reward.judge_follows_policy else None
    return replace(base, kv_cache_mib=cfg.reward.judge.kv_cache_mib, weight_transfer=transfer)


def rollout_sampling(cfg: RunConfig) -> SamplingSettings:
    r = cfg.rollout
    return SamplingSettings(
        n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens
    )


def reward_rules(cfg: RunConfig) -> RewardRules:
    w = cfg.reward
    return RewardRules(
        total=w.total,
        coherence_span=w.coherence_span,
        strict_yes_no=w.strict_yes_no,
        strict_label_match=w.strict_label_match,
        judge_prompt=w.judge.prompt,
    )


def image_policy(cfg: DataConfig) -> ImagePolicy:
    return ImagePolicy(
        min_side=cfg.min_side,
        max_aspect=cfg.max_aspect,
        max_source_pixels=cfg.max_source_pixels,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )


def image_loader(cfg: DataConfig) -> Callable[[Any], Any]:
    """What every worker decodes images with: `load_image` under the data section's policy (picklable)."""
    return partial(load_image, policy=image_policy(cfg))


def columns(cfg: DataConfig) -> Columns:
    c = cfg.columns
    return Columns(
        image_key=c.image,
        problem_key=c.problem,
        answer_key=c.answer,
        labels_key=c.labels,
        response_key=c.response,
    )


def group_seed(run_seed: int, iteration: int, sample_id: str) -> int:
    """The sampling seed of a prompt's group in an iteration; its resampling rounds and its rollouts'
    reflections derive theirs from it (cluster.generation, rewards.scoring)."""
    return derive_seed(run_seed, iteration, sample_id)


def prompt_request(sample: Sample, group_id: int, style: str, seed: int) -> PromptRequest:
    return PromptRequest(group_id, build_user_text(sample.question, style), sample.image, seed=seed)


def learner_rank_specs(
    model_path: str,
    learner: LearnerConfig,
    micro_batches: int,
    loader: Callable[[Any], Any],
    rendezvous: tuple[str, int],
    *,
    reference_path: str | None = None,
    restore_optimizer: bool = False,
    bucket_mib: float = 256.0,
) -> list[RankSpec]:
    """One RankSpec per rank of `learner.num_ranks`, meeting at `rendezvous` (Placement.rendezvous);
    `reference_path` None: the policy's own `model_path`."""
    address, port = rendezvous
    return [
        RankSpec(
            model_path=model_path,
            cfg=learner,
            rank=rank,
            world_size=learner.num_ranks,
            master_addr=address,
            master_port=port,
            micro_batches_per_step=micro_batches,
            image_loader=loader,
            reference_path=reference_path,
            restore_optimizer=restore_optimizer,
            bucket_mib=bucket_mib,
        )
        for rank in range(learner.num_ranks)
    ]
