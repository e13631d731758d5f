"""What both loops do with an iteration: time its phases, refuse one that is mostly unscorable, gather
its metrics, and finish it (log, dump a few rollouts, checkpoint when due). The synchronous loop
(cluster.train) and the asynchronous one (cluster.pipeline) share them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.checkpoints import save_point
from cluster.config import RunConfig
from cluster.generation import IterationRollouts
from cluster.metrics import ROLLOUTS_FILE, MetricsLog, rollout_metrics
from cluster.run_state import RunState
from cluster.stops import RunFailed

if TYPE_CHECKING:
    from cluster.session import TrainingCluster


@dataclass
class RunOutput:
    """Where an iteration's results go: the run folder (rollout dumps, checkpoints), the metrics log
    (metrics.jsonl, TensorBoard, wandb) and a progress callback."""

    path: Path
    log: MetricsLog
    progress: Callable[[int, dict], None] = field(default=lambda *_: None)


class Clock:
    """Wall time of an iteration's phases: `lap(name, value)` records the time since the previous lap
    and passes `value` through, so a phase is timed where its call is written."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str, value):
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now
        return value

    @property
    def total(self) -> float:
        return self.last - self.start


def check_scorable(rollouts: IterationRollouts, max_rate: float, iteration: int) -> None:
    """Stop rather than train on an iteration whose rewards mostly failed (the KL term alone is left)."""
    scores = [s for sg in rollouts.groups for s in sg.scores]
    rate = sum(not s.scorable for s in scores) / max(len(scores), 1)
    if rate > max_rate:
        cause = rollouts.reward_failures[0] if rollouts.reward_failures else "the judge's answers"
        raise RunFailed(
            f"iteration {iteration}: {rate:.0%} of {len(scores)} rollouts unscorable, above "
            f"cluster.max_unscorable_rate={max_rate:g} (first cause: {cause[:200]}); fix the reward side, "
            "then --resume"
        )


def iteration_metrics(
    cfg: RunConfig, state: RunState, rollouts: IterationRollouts, replayed: int, clock: Clock
) -> dict[str, float]:
    """The iteration's rollout, timing and replay metrics (the learner's and the push's come with them)."""
    tokens = sum(sg.group.num_completion_tokens for sg in rollouts.groups)
    metrics = rollout_metrics(rollouts) | rollouts.metrics
    metrics |= {
        "policy_version": float(state.version),
        "rollout/max_unscorable_rate": cfg.cluster.max_unscorable_rate,
        "timing_s/generate": rollouts.generate_s,
        "timing_s/reward_tail": rollouts.reward_tail_s,
        "timing_s/reflect": rollouts.reflect_s,
        "timing_s/score": rollouts.score_s,
        "timing_s/train": clock.laps["train"],
        "timing_s/sync": clock.laps["sync"],
        "timing_s/iteration": clock.total,
        "throughput/rollout_tokens_per_s": tokens / max(rollouts.generate_s, 1e-9),
        "throughput/trained_tokens_per_s": tokens / max(clock.total, 1e-9),
    }
    if state.replay.share:
        metrics |= {"replay/prompts": float(replayed), "replay/buffer": float(len(state.replay.accuracy))}
    return metrics


def finish_iteration(
    cfg: RunConfig,
    tc: TrainingCluster,
    state: RunState,
    out: RunOutput,
    rollouts: IterationRollouts,
    metrics: dict,
) -> dict:
    """Log the iteration and dump a few of its rollouts; its end is then an exact point, checkpointed
    when one is due."""
    iteration = state.iteration
    metrics = metrics | tc.recovery_metrics() | state.take_restart_metrics()
    out.log.log(iteration, metrics)
    dump_rollouts(out.path, iteration, rollouts, cfg.cluster.dump_rollouts)
    state.end()
    every = cfg.cluster.checkpoint_every
    if iteration + 1 == cfg.cluster.iterations or (every and (iteration + 1) % every == 0):
        save_point(out.path, state.resumable, lambda path: tc.save(path, cfg.cluster.checkpoint_optimizer))
    out.progress(iteration, metrics)
    return metrics


def dump_rollouts(run: Path, iteration: int, rollouts: IterationRollouts, limit: int) -> None:
    """About `limit` rollouts of the iteration (whole groups) into rollouts.jsonl, to read what the policy does."""
    if limit <= 0:
        return
    with (run / ROLLOUTS_FILE).open("a") as f:
        for sg in rollouts.groups[: max(1, limit // max(len(rollouts.groups[0].scores), 1))]:
            for completion, score in zip(sg.group.completions, sg.scores, strict=True):
                record = {
                    "iteration": iteration,
                    "sample_id": sg.sample.sample_id,
                    "label": sg.sample.answer,
                    "policy_version": sg.group.policy_version,
                    "response": completion.text,
                    "coherence_reflection": score.coherence_reflection,
                    "consistency_reflection": score.consistency_reflection,
                    "rewards": asdict(score.rewards) if score.rewards else None,
                    "error": score.error,
                }
                f.write(json.dumps(record) + "\n")
