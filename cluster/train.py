"""`emo-r3 train`: the EMO-R3 iteration loop (DESIGN.md, synchronous mode).

Read `train_loop` to understand the system: each phase of an iteration is one call on a typed handle.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from cluster.batches import train_shards
from cluster.config import RunConfig
from cluster.data.sample import Sample
from cluster.datasets import load_samples
from cluster.evaluator import Evaluator
from cluster.metrics import (
    METRICS_FILE,
    ROLLOUTS_FILE,
    MetricsLog,
    replaced_path,
    rollout_metrics,
    set_aside_from,
)
from cluster.models import resolve_model
from cluster.replay import ReplayBuffer
from cluster.rollouts import IterationRollouts, accuracies, generate_and_score, resample_all_wrong
from cluster.sample import prompt_request
from cluster.session import TrainingCluster
from cluster.stream import PromptStream, StreamState
from learner.rank import combine_rank_metrics

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def train_loop(cfg: RunConfig, tc: TrainingCluster, stream: PromptStream, run: Path, start: int, log_: MetricsLog,
               progress, version: int = 0, replay: ReplayBuffer | None = None) -> list[dict]:  # fmt: skip
    """Iterations `start` .. cluster.iterations-1, from policy `version`; returns their metrics."""
    history = []
    evaluator = Evaluator(cfg, tc)
    replay = replay or ReplayBuffer(stream.items, cfg.data.replay_share, cfg.cluster.seed)
    for iteration in range(start, cfg.cluster.iterations):
        eval_metrics = evaluator.maybe_run(iteration, version)
        t0 = time.perf_counter()
        batch, replayed = next_batch(stream, replay, iteration)
        requests = [
            prompt_request(s, i, cfg.data.prompt_style, _seed(cfg, iteration, i)) for i, s in enumerate(batch)
        ]
        rollouts = generate_and_score(
            batch, requests, tc.rollout, tc.reward, version, chunk_size=cfg.rollout.chunk_size,
            generate_timeout_s=cfg.cluster.generate_timeout_s, reward_timeout_s=cfg.reward.timeout_s,
        )  # fmt: skip
        resample_metrics = {}
        if cfg.rollout.resample_all_wrong:
            resample_metrics = resample_all_wrong(
                batch, requests, rollouts, tc.rollout, tc.reward, version, rounds=cfg.rollout.resample_all_wrong,
                chunk_size=cfg.rollout.chunk_size, generate_timeout_s=cfg.cluster.generate_timeout_s,
                reward_timeout_s=cfg.reward.timeout_s,
            )  # fmt: skip
        _check_versions(rollouts, version)
        if replay.share:
            replay.update((sg.sample.sample_id, accuracies(sg)) for sg in rollouts.groups)
        t1 = time.perf_counter()
        shards, num_tokens, adv_metrics = train_shards(rollouts, cfg.learner)
        train_metrics = combine_rank_metrics(
            tc.learner.train(shards, num_tokens, cfg.cluster.train_timeout_s)
        )
        t2 = time.perf_counter()
        version += 1
        sync_metrics = tc.transport.push(version)
        t3 = time.perf_counter()
        metrics = _iteration_metrics(rollouts, adv_metrics, train_metrics, version, (t0, t1, t2, t3))
        metrics |= sync_metrics | eval_metrics | resample_metrics
        if replay.share:
            metrics |= {"replay/prompts": float(replayed), "replay/buffer": float(len(replay.accuracy))}
        log_.log(iteration, metrics)
        _dump_rollouts(run, iteration, rollouts, cfg.cluster.dump_rollouts)
        _maybe_checkpoint(cfg, tc, run, iteration, version, stream, replay)
        history.append(metrics)
        progress(iteration, metrics)
    if final := evaluator.final(cfg.cluster.iterations, version):
        log_.log(cfg.cluster.iterations, final)
        history.append(final)
    return history


def next_batch(
    stream: PromptStream[Sample], replay: ReplayBuffer, iteration: int
) -> tuple[list[Sample], int]:
    """An iteration's prompts: the replay buffer's quota, the rest from the stream; and how many replayed.

    A replayed prompt never doubles one the stream gives in the same batch (possible past an epoch
    boundary); the stream tops up what the buffer could not give.
    """
    size = stream.batch_size
    quota = replay.quota(size)
    fresh = stream.next_batch(size - quota)
    replayed = replay.draw(iteration, quota, exclude=(s.sample_id for s in fresh))
    return fresh + replayed + stream.next_batch(quota - len(replayed)), len(replayed)


def _check_versions(rollouts: IterationRollouts, version: int) -> None:
    """Synchronous mode: every rollout of an iteration comes from the version the driver expects."""
    seen = {sg.group.policy_version for sg in rollouts.groups}
    if seen != {version}:
        raise RuntimeError(
            f"rollouts from policy versions {sorted(seen)} in an iteration at version {version}"
        )


def _seed(cfg: RunConfig, iteration: int, index: int) -> int:
    return (cfg.cluster.seed * 1_000_003 + iteration) * 10_007 + index


def _iteration_metrics(rollouts: IterationRollouts, adv: dict, train: dict, version: int, t: tuple) -> dict:
    tokens = sum(sg.group.num_completion_tokens for sg in rollouts.groups)
    metrics = rollout_metrics(rollouts) | adv | {f"train/{k}": v for k, v in train.items()}
    metrics |= {
        "policy_version": float(version),
        "timing_s/generate": rollouts.generate_s, "timing_s/reward_tail": rollouts.reward_tail_s,
        "timing_s/train": t[2] - t[1], "timing_s/sync": t[3] - t[2], "timing_s/iteration": t[3] - t[0],
        "throughput/rollout_tokens_per_s": tokens / max(rollouts.generate_s, 1e-9),
    }  # fmt: skip
    return metrics


def _dump_rollouts(run: Path, iteration: int, rollouts: IterationRollouts, limit: int) -> None:
    if limit <= 0:
        return
    with (run / ROLLOUTS_FILE).open("a") as f:
        for sg in rollouts.groups[: max(1, limit // max(len(rollouts.groups[0].scores), 1))]:
            for completion, score in zip(sg.group.completions, sg.scores, strict=True):
                record = {
                    "iteration": iteration, "sample_id": sg.sample.sample_id, "label": sg.sample.answer,
                    "policy_version": sg.group.policy_version, "response": completion.text,
                    "coherence_reflection": score.coherence_reflection,
                    "consistency_reflection": score.consistency_reflection,
                    "rewards": asdict(score.rewards) if score.rewards else None, "error": score.error,
                }  # fmt: skip
                f.write(json.dumps(record) + "\n")


def _maybe_checkpoint(cfg: RunConfig, tc: TrainingCluster, run: Path, iteration: int, version: int,
                      stream: PromptStream, replay: ReplayBuffer) -> None:  # fmt: skip
    last = iteration + 1 == cfg.cluster.iterations
    every = cfg.cluster.checkpoint_every
    if not (last or (every and (iteration + 1) % every == 0)):
        return
    path = run / CHECKPOINTS / f"iter_{iteration + 1:06d}"
    tc.learner.save(str(path), cfg.cluster.train_timeout_s, optimizer=cfg.cluster.checkpoint_optimizer)
    state = {"next_iteration": iteration + 1, "version": version, "stream": asdict(stream.state)}
    if replay.share:
        state["replay"] = replay.state()
    (path / STATE_FILE).write_text(json.dumps(state))


def _set_aside_redone(run: Path, start: int) -> None:
    """One history per run: what an earlier attempt logged from iteration `start` on is redone now."""
    for name in (METRICS_FILE, ROLLOUTS_FILE):
        if moved := set_aside_from(run / name, start):
            aside = replaced_path(run / name).name
            print(f"{name}: {moved} records of iterations >= {start} of an earlier attempt moved to {aside}")


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted(p for p in (run / CHECKPOINTS).glob("iter_*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def run_train(cfg: RunConfig, *, resume: bool = False) -> int:
    from cluster.launch import check_address_is_safe
    from cluster.progress import Progress, summary_table
    from cluster.rundir import run_dir

    check_address_is_safe(cfg)  # before the run folder, the model build (minutes) or the data
    run = run_dir(cfg)
    initial = resolve_model(cfg.model.path)
    train_set = load_samples(cfg.data.train, cfg.data)
    if not train_set.samples:
        raise ValueError(f"no usable training sample in {cfg.data.train}: {dict(train_set.skipped)}")
    checkpoint = latest_checkpoint(run) if resume else None
    state = json.loads((checkpoint / STATE_FILE).read_text()) if checkpoint else {}
    start, version = state.get("next_iteration", 0), state.get("version", 0)
    if checkpoint:
        print(f"resuming {run.name} at iteration {start} (policy version {version}) from {checkpoint}")
    _set_aside_redone(run, start)
    stream = PromptStream(train_set.samples, cfg.cluster.prompts_per_iteration, seed=cfg.cluster.seed,
                          shuffle=cfg.data.shuffle, state=StreamState(**state.get("stream", {})))  # fmt: skip
    replay = ReplayBuffer(train_set.samples, cfg.data.replay_share, cfg.cluster.seed, state.get("replay"))
    metrics_log = MetricsLog(run, cfg.cluster.tensorboard, start)
    progress = Progress(cfg.cluster.iterations, start)
    with TrainingCluster(cfg, str(checkpoint or initial), initial, version, resume=bool(checkpoint)) as tc:
        if checkpoint:
            for note in dict.fromkeys(tc.learner.optimizer_restored(cfg.cluster.startup_timeout_s)):
                print(f"learner: {note}")  # one line when every rank did the same
        history = train_loop(cfg, tc, stream, run, start, metrics_log, progress.update, version, replay)
    metrics_log.close()
    progress.close()
    print(summary_table(history, start, run))
    return 0
