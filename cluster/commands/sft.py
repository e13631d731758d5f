"""`emo-r3 sft`: the cold-start SFT stage before RL (METHOD.md §4, "Cold-Start-Emo").

A light supervised stage on a few samples, so RL has something left to learn: a seeded subset of
`sft.samples` training samples with a reference response, their examples (learner.sft: answers, and
the two reflection tasks so the policy can judge itself), plus per epoch `sft.scene_examples` other
training samples' step 1 alone (their reading of the image, not their answer), `sft.epochs` passes
of token-mean NLL updates on the learner ranks (Ray actors, the learner section's DeepSpeed setup,
`sft.lr`), then an HF checkpoint (safetensors + processor + chat template) to use as `model.path`
of `emo-r3 train`.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from cluster.cold_start import balanced_subset, build_examples, scene_prefix, scene_texts
from cluster.config import ConfigError, RunConfig
from cluster.data.images import load_image
from cluster.data.sample import Sample
from cluster.embedded.responses import scene_description
from cluster.models import resolve_model
from cluster.placement import Placement, Role, wait_all
from cluster.rundir import run_dir
from cluster.settings import image_policy, reward_rules
from cluster.sources import load_samples, read_samples
from learner.batch import TrainRollout, micro_batches_per_step, num_completion_tokens
from learner.config import LearnerConfig
from learner.rank import combine_rank_metrics
from learner.sft import SftExample, check_vision_alignment, encode, epoch_minibatches, rank_shards

GRPO_TARGET = "response_grpo"  # the synthetic manifests' <think>-form reference (cluster.embedded.synthetic)
METRICS_FILE = "sft_metrics.jsonl"

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
    examples, scenes = _examples(cfg, model_path, loader)
    epochs = schedule(examples, scenes, cfg, micro_batches)
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
    return cfg.learner.model_copy(
        update={"lr": cfg.sft.lr, "warmup_steps": 0, "kl_coef": 0.0, "reference_placement": "none"}
    )


def target_column(cfg: RunConfig) -> str:
    """The manifest column holding the SFT target response (sft.target, else by prompt style)."""
    if cfg.sft.target:
        return cfg.sft.target
    return cfg.data.columns.response if cfg.data.prompt_style == "set" else GRPO_TARGET


def sft_samples(cfg: RunConfig) -> list[Sample]:
    """A seeded subset of `sft.samples` training samples that carry a reference response, balanced
    over the gold labels (cluster.cold_start.balanced_subset)."""
    return _subset(cfg, _with_target(cfg))


def _with_target(cfg: RunConfig) -> list[Sample]:
    """The training samples with a target response (in `response`); a clear error when none has one."""
    column = target_column(cfg)
    loaded = load_samples(cfg.data.train, _data_with_response_column(cfg, column))
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
    return usable


def _subset(cfg: RunConfig, usable: list[Sample]) -> list[Sample]:
    return balanced_subset(usable, cfg.sft.samples, random.Random(cfg.sft.seed))


def _data_with_response_column(cfg: RunConfig, column: str) -> Any:
    return cfg.data.model_copy(update={"columns": cfg.data.columns.model_copy(update={"response": column})})


def scene_pairs(cfg: RunConfig, usable: list[Sample], subset: list[Sample]) -> list[tuple[Sample, str]]:
    """`sft.scene_examples × sft.epochs` (sample, target prefix) pairs of training samples outside the
    subset, in a seeded order (cycled when there are fewer): the target response up to the end of
    the scene description, step 1 of the SET reference (`data.columns.response`). Samples whose
    reference has no step 1, or whose target does not contain it, are skipped and counted; with
    none left the cold start runs without scene examples (printed)."""
    wanted = cfg.sft.scene_examples * cfg.sft.epochs
    if not wanted:
        return []
    taken = {s.sample_id for s in subset}
    others = [s for s in usable if s.sample_id not in taken]
    descriptions = _descriptions(cfg, others)
    pairs: list[tuple[Sample, str]] = []
    skipped: Counter[str] = Counter()
    for sample in random.Random(cfg.sft.seed + 1).sample(others, len(others)):
        description = descriptions.get(sample.sample_id)
        prefix = scene_prefix(sample.response or "", description) if description else None
        if prefix is None:
            skipped["no step 1 in the reference" if description is None else "step 1 not in the target"] += 1
        else:
            pairs.append((sample, prefix))
    note = f" (skipped {dict(skipped)})" if skipped else ""
    if not pairs:
        print(f"SFT scene examples: none of {len(others)} other samples has a usable step 1{note}")
        return []
    print(
        f"SFT scene examples: {cfg.sft.scene_examples} per epoch from {min(wanted, len(pairs))} other samples{note}"
    )
    return list(itertools.islice(itertools.cycle(pairs), wanted))


def _descriptions(cfg: RunConfig, samples: list[Sample]) -> dict[str, str]:
    """Sample id → step 1 of its SET reference, for those of `samples` that have one."""
    column = cfg.data.columns.response
    if target_column(cfg) != column:
        ids = {s.sample_id for s in samples}
        # the text column only: the images were checked when the target column was loaded
        rows = read_samples(cfg.data.train, _data_with_response_column(cfg, column)).samples
        samples = [s for s in rows if s.sample_id in ids]
    out = {}
    for sample in samples:
        try:
            out[sample.sample_id] = scene_description(sample.response or "")
        except ValueError:
            continue  # counted by scene_pairs
    return out


def _examples(
    cfg: RunConfig, model_path: str, loader: Callable[[Any], Any]
) -> tuple[list[SftExample], list[SftExample]]:
    """The examples of every epoch (answers, reflections) and the scene examples, dealt per epoch."""
    from learner.policy import load_processor

    usable = _with_target(cfg)
    samples = _subset(cfg, usable)
    processor = load_processor(model_path)
    examples = build_examples(samples, processor, cfg.sft, cfg.data.prompt_style, loader, reward_rules(cfg))
    tasks = {task: sum(e.task == task for e in examples) for task in dict.fromkeys(e.task for e in examples)}
    print(f"SFT examples from {len(samples)} samples: {tasks}")
    texts = scene_texts(scene_pairs(cfg, usable, samples), cfg.data.prompt_style)
    return examples, [encode(text, processor, loader) for text in texts]


def schedule(
    examples: list[SftExample], scenes: list[SftExample], cfg: RunConfig, micro_batches: int
) -> list[list[Step]]:
    """Per epoch, its steps: the examples and the epoch's own `sft.scene_examples` scenes, reshuffled
    (seeded) in mini-batches of sft.batch_size, each dealt over the ranks (learner.sft.rank_shards);
    ZeRO-3 checks the image alignment."""
    rollouts = [example.rollout(i) for i, example in enumerate(examples)]
    per_epoch = cfg.sft.scene_examples if scenes else 0
    rng = random.Random(cfg.sft.seed)
    epochs = []
    for epoch in range(cfg.sft.epochs):
        first = epoch * per_epoch
        own = scenes[first : first + per_epoch]
        fresh = [scene.rollout(len(rollouts) + first + j) for j, scene in enumerate(own)]
        steps = []
        for minibatch in epoch_minibatches(rollouts + fresh, cfg.sft.batch_size, rng):
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
    from cluster.settings import learner_rank_specs
    from learner.rank import LearnerRank

    on_gpu = learner_cfg.num_gpus_per_rank > 0
    start_ray(cfg, on_gpu)
    role = Role(
        "learner", learner_cfg.num_ranks, learner_cfg.num_cpus_per_rank, learner_cfg.num_gpus_per_rank
    )
    placement = Placement(
        [role],
        cfg.cluster.startup_timeout_s,
        worker_env(cfg, on_gpu),
        strategy=cfg.cluster.placement_strategy,
    )
    ranks: list[Any] = []
    try:
        meet = placement.rendezvous("learner", cfg.cluster.startup_timeout_s)
        specs = learner_rank_specs(model_path, learner_cfg, micro_batches, loader, meet)
        ranks = placement.spawn("learner", LearnerRank, [(spec,) for spec in specs])
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
    print(
        f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} (last step {steps[-1]['loss']:.4f}), "
        f"{len(steps)} steps, {seconds:.1f} s"
    )


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(
        "".join(json.dumps({"step": i} | h) + "\n" for i, h in enumerate(history))
    )
