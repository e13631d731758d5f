"""One learner rank: builds train batches from rollouts and runs the iteration's optimizer updates
(and the cold-start SFT updates: `sft_iteration`).

A plain class; the cluster layer makes it a Ray actor (one per DeepSpeed rank) at spawn time.
Every rank gets its own shard of each mini-batch and the mini-batch's GLOBAL completion-token
count, runs the same number of micro-batches per update as every other rank
(`learner.batch.micro_batches_per_step` rows each, or with `learner.micro_batch_tokens` as many as
the rank needing most cuts by its token budget) and takes part in every collective (updates, weight
gathers). `combine_rank_metrics` turns the ranks' metric dicts into the iteration's.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from actors.cpu import pin_from_env
from actors.memory import process_memory_mib
from actors.types import ImageRef
from learner.batch import (
    MicroBatch,
    TrainRollout,
    collate,
    num_completion_tokens,
    split,
    token_budget_split,
    without_tokens,
)
from learner.config import LearnerConfig
from learner.grpo import MAX_REDUCED_METRICS
from learner.transfer import WeightSender, checkpoint_tensors, no_gather, zero3_gather

# How the driver combines the ranks' metrics (every other metric is a token mean over the global
# count of its mini-batch: ranks' values sum to the mini-batch value).
MAX_METRICS = MAX_REDUCED_METRICS | {"logprob_mismatch_max", "train_s"}
TOKEN_WEIGHTED_METRICS = frozenset({"logprob_mismatch_mean", "prob_ratio_error"})  # weights: mismatch_tokens
SAME_ON_EVERY_RANK = frozenset({"grad_norm", "lr"})  # global already


def set_distributed_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """The env vars torch.distributed / DeepSpeed read; a Ray actor sees one device as device 0."""
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
    )
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    if not on_gpu and _is_loopback(master_addr):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


@dataclass(frozen=True)
class RankSpec:
    """What one learner rank is built from (cluster.settings.learner_rank_specs builds one per rank).

    `restore_optimizer`: `model_path` is a checkpoint the run resumes from; its AdamW state and
    lr-schedule step are restored when it has them for this world size (Policy.load_optimizer).
    `reference_path`: the frozen initial policy of the KL term (None: `model_path`).
    """

    model_path: str
    cfg: LearnerConfig
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    micro_batches_per_step: int
    image_loader: Callable[[ImageRef], Any]
    reference_path: str | None = None
    restore_optimizer: bool = False
    bucket_mib: float = 256.0


class LearnerRank:
    """The policy of one DeepSpeed rank and the batch building around it."""

    def __init__(self, spec: RankSpec):
        set_distributed_env(spec.rank, spec.world_size, spec.master_addr, spec.master_port)
        pin_from_env()  # this role's cores on a CPU run (cluster.cpu_affinity)
        from learner.policy import Policy, load_processor

        self.rank = spec.rank
        # the ratio's old logprobs are the sampler's ("auto" is resolved by the caller: behaviour_logprobs)
        self.old_from_engine = spec.cfg.old_logprobs == "engine"
        self.share_prompts = spec.cfg.share_prompts
        self.micro_batch_tokens = spec.cfg.micro_batch_tokens
        self.micro_batches_per_step = spec.micro_batches_per_step
        self.image_loader = spec.image_loader
        self.processor = load_processor(spec.model_path)
        self.policy = Policy(
            spec.model_path,
            spec.cfg,
            rank=spec.rank,
            world_size=spec.world_size,
            total_micro_batches_per_step=spec.micro_batches_per_step,
            reference_path=spec.reference_path,
        )
        self.bucket_bytes = int(spec.bucket_mib * 2**20)
        self.sender = WeightSender(zero3_gather if spec.cfg.zero_stage == 3 else no_gather)
        self.optimizer_restore = (
            self.policy.load_optimizer(spec.model_path) if spec.restore_optimizer else None
        )

    def ping(self) -> int:
        """The rank; answers once the policy is built."""
        return self.rank

    def optimizer_restored(self) -> str | None:
        """What restoring the optimizer state did, in words (None: not asked to)."""
        return self.optimizer_restore

    def train_iteration(
        self, minibatches: Sequence[Sequence[TrainRollout]], global_num_tokens: Sequence[int]
    ) -> dict[str, float]:
        """One optimizer update per mini-batch; minibatches[k] is this rank's shard of mini-batch k.

        global_num_tokens[k]: completion tokens of mini-batch k over ALL ranks. old_logprobs (and
        ref_logprobs) of every rollout are computed before the first update. Returns this rank's
        metrics: update metrics averaged over the updates (ratio_max: max), the learner–engine
        logprob mismatch on the sampled tokens, num_tokens and train_s; see combine_rank_metrics.
        """
        if len(minibatches) != len(global_num_tokens):
            raise ValueError(f"{len(minibatches)} mini-batches but {len(global_num_tokens)} token counts")
        start = time.perf_counter()
        steps = [self._prepare(shard) for shard in minibatches]
        engine = self.old_from_engine
        diffs = [] if engine else [(b.old_logprobs - b.sampler_logprobs)[b.mask] for s in steps for b in s]
        updates = [
            # engine old logprobs: the mismatch comes from the first update's forward (weights that sampled)
            self.policy.train_step(step, int(n), sampler_diffs=diffs if engine and k == 0 else None)
            for k, (step, n) in enumerate(zip(steps, global_num_tokens, strict=True))
        ]
        metrics = logprob_mismatch(diffs)
        metrics.update(_average(updates))
        metrics["num_tokens"] = float(sum(num_completion_tokens(shard) for shard in minibatches))
        metrics["train_s"] = time.perf_counter() - start
        return metrics

    def sft_iteration(
        self, minibatches: Sequence[Sequence[TrainRollout]], global_num_tokens: Sequence[int]
    ) -> dict[str, float]:
        """One supervised update (Policy.sft_step) per mini-batch; minibatches[k] is this rank's shard
        of mini-batch k, whose completions are the targets (learner.sft.SftExample.rollout).

        global_num_tokens[k]: target tokens of mini-batch k over ALL ranks. Returns this rank's loss
        share and grad_norm averaged over the updates, num_tokens and train_s (combine_rank_metrics).
        """
        if len(minibatches) != len(global_num_tokens):
            raise ValueError(f"{len(minibatches)} mini-batches but {len(global_num_tokens)} token counts")
        start = time.perf_counter()
        updates = [
            self.policy.sft_step(self._micro_batches(shard), int(n))
            for shard, n in zip(minibatches, global_num_tokens, strict=True)
        ]
        metrics = _average(updates)
        metrics["num_tokens"] = float(sum(num_completion_tokens(shard) for shard in minibatches))
        metrics["train_s"] = time.perf_counter() - start
        return metrics

    def _prepare(self, shard: Sequence[TrainRollout]) -> list[MicroBatch]:
        """The shard's micro-batches with old (and reference) logprobs of the current weights."""
        if self.micro_batch_tokens is None:
            batches = self._micro_batches(shard, share_prompts=self.share_prompts)
        else:
            batches = self._budget_micro_batches(shard)
        return [self._with_logprobs(batch) for batch in batches]

    def _budget_micro_batches(self, shard: Sequence[TrainRollout]) -> list[MicroBatch]:
        """The shard cut by `learner.micro_batch_tokens` into as many micro-batches as the rank that
        needs the most (a collective), padded with micro-batches without tokens when its rollouts are
        fewer (learner.batch.token_budget_split, without_tokens)."""
        needed = len(token_budget_split(shard, self.micro_batch_tokens))
        count = self.policy.common_micro_batch_count(needed)
        parts = token_budget_split(shard, self.micro_batch_tokens, min_parts=min(count, len(shard)))
        batches = [
            collate(part, self.processor, self.image_loader, share_prompts=self.share_prompts)
            for part in parts
        ]
        return batches + [without_tokens(batches[-1])] * (count - len(batches))

    def _micro_batches(self, shard: Sequence[TrainRollout], share_prompts: bool = False) -> list[MicroBatch]:
        """The shard in `micro_batches_per_step` collated parts (SFT examples do not share prompts)."""
        parts = split(shard, self.micro_batches_per_step)
        return [
            collate(part, self.processor, self.image_loader, share_prompts=share_prompts) for part in parts
        ]

    def _with_logprobs(self, batch: MicroBatch) -> MicroBatch:
        # [N, T]; the sampler's are 0 on padding too
        old = batch.sampler_logprobs if self.old_from_engine else self.policy.logprobs(batch)
        ref = self.policy.logprobs(batch, reference=True) if self.policy.reference is not None else None
        return replace(batch, old_logprobs=old, ref_logprobs=ref)

    def weights(self) -> dict[str, torch.Tensor] | None:
        """Full state dict (save_pretrained names) on rank 0, None elsewhere. A collective."""
        return self.policy.full_state_dict()

    def weight_buckets(self) -> list[dict[str, torch.Tensor]] | None:
        """`weights()` cut into buckets of about `bucket_mib` MiB (rank 0; None elsewhere). A collective.

        The list travels as one object-store object (put once, pulled by every receiver), and receivers
        reload it bucket by bucket.
        """
        state = self.weights()
        return None if state is None else buckets(state, self.bucket_bytes)

    # ---- the collective weight transport (learner.transfer; rank 0 sends, every rank joins the gather)

    def open_weight_group(self, address: str) -> int | None:
        """Rank 0: bind the weight group's socket on `address`; its port (None on other ranks)."""
        return self.sender.open(address) if self.rank == 0 else None

    def join_weight_group(self, world_size: int, dist_backend: str, timeout_s: float) -> None:
        """Rank 0: form the weight group with the engines (blocks until they all joined)."""
        if self.rank == 0:
            self.sender.join(world_size, dist_backend, timeout_s)

    def weight_metadata(self, bucket_mib: float) -> dict | None:
        """What every engine is told about an update (rank 0's; None elsewhere)."""
        named = checkpoint_tensors(self.policy.engine.module)
        metadata = self.sender.describe(named, int(bucket_mib * 2**20))
        return metadata if self.rank == 0 else None

    def send_weights(self) -> None:
        """Rank 0 broadcasts the live parameters to the weight group, bucket by bucket; under ZeRO-3
        every rank joins each bucket's gather (a collective)."""
        self.sender.send(checkpoint_tensors(self.policy.engine.module), sends=self.rank == 0)

    def send_raw(self, bucket_bytes: list[int]) -> None:
        """Rank 0: uninitialised buckets of these sizes to the weight group (the floor of a push)."""
        if self.rank == 0:
            self.sender.broadcast_raw(bucket_bytes)

    def process_memory(self, reset_peak: bool = False) -> dict[str, float]:
        """This rank's resident and peak MiB (actors.memory)."""
        return process_memory_mib(reset_peak)

    def leave_weight_group(self) -> None:
        if self.rank == 0:
            self.sender.close()

    def save(self, out_dir: str | Path, optimizer: bool = False) -> None:
        """A checkpoint transformers and vLLM load (rank 0 writes). A collective. `optimizer`: every
        rank also writes its AdamW state, for an exact --resume (Policy.save_optimizer)."""
        self.policy.save_pretrained(out_dir, self.processor)
        if optimizer:
            self.policy.save_optimizer(out_dir)


def buckets(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive parameters grouped until a bucket would exceed `max_bytes` (one tensor at least)."""
    out: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if out[-1] and size + nbytes > max_bytes:
            out.append({})
            size = 0
        out[-1][name] = tensor
        size += nbytes
    return out


def logprob_mismatch(diffs: Sequence[torch.Tensor]) -> dict[str, float]:
    """Learner vs engine on sampled completion tokens, from (learner − sampler) logprob differences
    of the weights that sampled.

    logprob_mismatch_mean/max: |learner − sampler|; prob_ratio_error: mean |exp(learner − sampler) − 1|
    (NeMo-RL fails a VLM run above 5%, LESSONS.md); mismatch_tokens: tokens compared.
    """
    diff = torch.cat(list(diffs)).double() if diffs else torch.zeros(0, dtype=torch.float64)  # [tokens]
    if diff.numel() == 0:
        return {
            "logprob_mismatch_mean": 0.0,
            "logprob_mismatch_max": 0.0,
            "prob_ratio_error": 0.0,
            "mismatch_tokens": 0.0,
        }
    return {
        "logprob_mismatch_mean": float(diff.abs().mean()),
        "logprob_mismatch_max": float(diff.abs().max()),
        "prob_ratio_error": float((diff.exp() - 1.0).abs().mean()),
        "mismatch_tokens": float(diff.numel()),
    }


def _average(updates: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-update metrics over the iteration's updates: mean, or max for the max-reduced ones."""
    names = dict.fromkeys(name for update in updates for name in update)
    out = {}
    for name in names:
        values = [update[name] for update in updates if name in update]
        out[name] = max(values) if name in MAX_REDUCED_METRICS else sum(values) / len(values)
    return out


def combine_rank_metrics(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """The iteration's metrics from every rank's train_iteration result.

    Token means over the global count sum over ranks; maxima take the max; the mismatch means are
    weighted by each rank's mismatch_tokens; grad_norm and lr (the same on every rank) are averaged.
    """
    tokens = [r.get("mismatch_tokens", 0.0) for r in per_rank]
    total = sum(tokens) or 1.0
    out: dict[str, float] = {}
    for name in dict.fromkeys(name for r in per_rank for name in r):
        values = [r[name] for r in per_rank if name in r]
        if name in MAX_METRICS:
            out[name] = max(values)
        elif name in TOKEN_WEIGHTED_METRICS:
            out[name] = sum(r[name] * n for r, n in zip(per_rank, tokens, strict=True) if name in r) / total
        elif name in SAME_ON_EVERY_RANK:
            out[name] = sum(values) / len(values)
        else:
            out[name] = sum(values)
    return out
