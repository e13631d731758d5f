"""`emo-r3 sft`: the cold-start SFT stage before RL (METHOD.md §4, "Cold-Start-Emo").

A light supervised stage on a few samples, so RL has something left to learn: a seeded subset of
`sft.samples` training samples with a reference response, their examples (learner.sft: answers, and
the two reflection tasks so the policy can judge itself), `sft.epochs` passes of token-mean NLL
updates on the learner ranks (Ray actors, the learner section's DeepSpeed setup, `sft.lr`), then an
HF checkpoint (safetensors + processor + chat template) to use as `model.path` of `emo-r3 train`.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from cluster.config import ConfigError, RunConfig
from cluster.data.images import load_image
from cluster.data.sample import Sample
from cluster.datasets import image_policy, load_samples
from cluster.models import resolve_model
from cluster.pools import Placement, Role, free_port, wait_all
from cluster.rundir import run_dir
from learner.batch import TrainRollout, micro_batches_per_step, num_completion_tokens
from learner.config import LearnerConfig
from learner.rank import combine_rank_metrics
from learner.sft import (
    SftExample,
    balanced_subset,
    build_examples,
    check_vision_alignment,
    epoch_minibatches,
    rank_shards,
)

GRPO_TARGET = "response_grpo"  # the synthetic manifests' <think>-form reference (cluster.data.synthetic)
METRICS_FILE = "sft_metrics.jsonl"
LOOPBACK = "127.0.0.1"

# One optimizer step: shards[rank] (that rank's part of the mini-batch) and its global target tokens.
Step = tuple[list[list[TrainRollout]], int]


def run_sft(cfg: RunConfig) -> int:
    """The whole job: samples → examples → epochs of updates → checkpoint. Prints its path."""
    from cluster.launch import check_address_is_safe

    check_address_is_safe(cfg)  # before the model build (minutes) and the data
    learner_cfg = sft_learner_config(cfg)
    micro_batches = micro_batches_per_step(
        cfg.sft.batch_size, learner_cfg.num_ranks, learner_cfg.micro_batch_size
    )
    model_path = resolve_model(cfg.model.path)
    loader = partial(load_image, policy=image_policy(cfg.data))
    examples = _examples(cfg, model_path, loader)
    epochs = schedule(examples, cfg, micro_batches)
    out = Path(cfg.sft.output).expanduser() if cfg.sft.output else run_dir(cfg) / "sft"
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    with learner_ranks(cfg, learner_cfg, model_path, micro_batches, loader) as ranks:
        for epoch, steps in enumerate(epochs):
            history += [
                _update(ranks, step, cfg.cluster.train_timeout_s) | {"epoch": epoch} for step in steps
            ]
            _print_epoch(epoch, len(epochs), history)
        wait_all([rank.save.remote(str(out)) for rank in ranks], cfg.cluster.train_timeout_s, "learner save")
    _write_history(out, history)
    train_s = sum(h["train_s"] for h in history)
    print(
        f"SFT: {len(history)} updates, {train_s:.1f} s training, {time.perf_counter() - start:.1f} s with startup and save"
    )
    print(f"SFT checkpoint: {out}")
    return 0


def sft_learner_config(cfg: RunConfig) -> LearnerConfig:
    """The learner section with the cold start's lr, constant (no warmup), and no reference policy (no KL term)."""
    ranks = cfg.learner.num_ranks
    if cfg.sft.batch_size % ranks:
        raise ConfigError(
            f"sft.batch_size={cfg.sft.batch_size} does not split evenly over learner.num_ranks={ranks}; make it a multiple"
        )
    return cfg.learner.model_copy(update={"lr": cfg.sft.lr, "warmup_steps": 0, "kl_coef": 0.0, "reference_placement": "none"})


def target_column(cfg: RunConfig) -> str:
    """The manifest column holding the SFT target response (sft.target, else by prompt style)."""
    if cfg.sft.target:
        return cfg.sft.target
    return cfg.data.columns.response if cfg.data.prompt_style == "set" else GRPO_TARGET


def sft_samples(cfg: RunConfig) -> list[Sample]:
    """A seeded subset of `sft.samples` training samples that carry a reference response, balanced
    over the gold labels (learner.sft.balanced_subset)."""
    column = target_column(cfg)
    data = cfg.data.model_copy(update={"columns": cfg.data.columns.model_copy(update={"response": column})})
    loaded = load_samples(cfg.data.train, data)
    usable = [s for s in loaded.samples if s.response]
    if not usable:
        raise ValueError(
            f"no training sample in {cfg.data.train} has a reference response in column {column!r} "
            f"({len(loaded.samples)} usable samples, skipped {dict(loaded.skipped)}); set sft.target to the column"
        )
    missing = len(loaded.samples) - len(usable)
    print(
        f"SFT data: {len(usable)} samples with a {column!r} response in {cfg.data.train} ({missing} without, skipped)"
    )
    return balanced_subset(usable, cfg.sft.samples, random.Random(cfg.sft.seed))


def _examples(cfg: RunConfig, model_path: str, loader: Callable[[Any], Any]) -> list[SftExample]:
    from learner.policy import load_processor

    samples = sft_samples(cfg)
    examples = build_examples(samples, load_processor(model_path), cfg.sft, cfg.data.prompt_style, loader)
    tasks = {task: sum(e.task == task for e in examples) for task in dict.fromkeys(e.task for e in examples)}
    print(f"SFT examples from {len(samples)} samples: {tasks}")
    return examples


def schedule(examples: list[SftExample], cfg: RunConfig, micro_batches: int) -> list[list[Step]]:
    """Per epoch, its steps: the examples reshuffled (seeded) in mini-batches of sft.batch_size,
    each dealt over the ranks (learner.sft.rank_shards); ZeRO-3 checks the image alignment."""
    rollouts = [example.rollout(i) for i, example in enumerate(examples)]
    rng = random.Random(cfg.sft.seed)
    epochs = []
    for _ in range(cfg.sft.epochs):
        steps = []
        for minibatch in epoch_minibatches(rollouts, cfg.sft.batch_size, rng):
            shards = rank_shards(minibatch, cfg.learner.num_ranks, micro_batches)
            if cfg.learner.zero_stage == 3:
                check_vision_alignment(shards, micro_batches)
            steps.append((shards, num_completion_tokens(minibatch)))
        epochs.append(steps)
    return epochs


@contextmanager
def learner_ranks(
    cfg: RunConfig,
    learner_cfg: LearnerConfig,
    model_path: str,
    micro_batches: int,
    loader: Callable[[Any], Any],
) -> Iterator[list[Any]]:
    """`learner_cfg.num_ranks` LearnerRank actors in one placement group, ready; killed on exit."""
    import ray

    from cluster.launch import start_ray, worker_env
    from learner.rank import LearnerRank

    on_gpu = learner_cfg.num_gpus_per_rank > 0
    start_ray(cfg, on_gpu)
    role = Role(
        "learner", learner_cfg.num_ranks, learner_cfg.num_cpus_per_rank, learner_cfg.num_gpus_per_rank
    )
    placement = Placement([role], cfg.cluster.startup_timeout_s, worker_env(cfg, on_gpu))
    port, world = free_port(), learner_cfg.num_ranks
    args = [
        (model_path, learner_cfg, rank, world, LOOPBACK, port, micro_batches, loader) for rank in range(world)
    ]
    ranks: list[Any] = []
    try:
        ranks = placement.spawn("learner", LearnerRank, args)
        wait_all([rank.ping.remote() for rank in ranks], cfg.cluster.startup_timeout_s, "learner startup")
        yield ranks
    finally:
        for rank in ranks:
            ray.kill(rank)
        placement.release()


def _update(ranks: list[Any], step: Step, timeout_s: float) -> dict[str, float]:
    """One optimizer step on every rank; the step's combined metrics."""
    shards, num_tokens = step
    refs = [
        rank.sft_iteration.remote([shard], [num_tokens]) for rank, shard in zip(ranks, shards, strict=True)
    ]
    return combine_rank_metrics(wait_all(refs, timeout_s, "learner sft_iteration"))


def _print_epoch(epoch: int, epochs: int, history: list[dict[str, float]]) -> None:
    steps = [h for h in history if h["epoch"] == epoch]
    loss = statistics.fmean(h["loss"] for h in steps)
    seconds = sum(h["train_s"] for h in steps)
    print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} (last step {steps[-1]['loss']:.4f}), "
          f"{len(steps)} steps, {seconds:.1f} s")  # fmt: skip


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(
        "".join(json.dumps({"step": i} | h) + "\n" for i, h in enumerate(history))
    )

