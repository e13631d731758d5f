"""`emo-r3 train`: the EMO-R3 iteration loop (DESIGN.md, synchronous mode).

Read `train_loop` to understand the system: each phase of an iteration is one call on a typed handle.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.checkpoints import (
    STATE_FILE,
    check_resumable_config,
    check_same_data,
    checkpoint_path,
    data_digest,
    latest_checkpoint,
    read_state,
    save_checkpoint,
)
from cluster.config import ConfigError, RunConfig
from cluster.data.sample import LoadResult, Sample
from cluster.generation import IterationRollouts, accuracies
from cluster.held_out import Evaluator
from cluster.metrics import METRICS_FILE, ROLLOUTS_FILE, MetricsLog, replaced_path, set_aside_from
from cluster.models import resolve_model
from cluster.replay import ReplayBuffer
from cluster.session import TrainingCluster
from cluster.sources import load_samples
from cluster.stops import NEVER, RunFailed, StopSignal
from cluster.stream import PromptStream, StreamState

log = logging.getLogger(__name__)
DATA_REPORT = "data_report.json"

__all__ = ["STATE_FILE", "RunState", "latest_checkpoint", "next_batch", "run_train", "train_loop"]


@dataclass
class RunState:
    """Where a run stands: the data stream, the replay buffer and the policy version, and the last
    point a checkpoint can be taken from (`resumable`: the learner holds exactly `version`)."""

    stream: PromptStream[Sample]
    replay: ReplayBuffer
    iteration: int = 0
    version: int = 0
    resumable: dict | None = None

    @classmethod
    def fresh(cls, cfg: RunConfig, samples: list[Sample]) -> RunState:
        """A run at iteration 0 on `samples`."""
        stream = PromptStream(
            samples, cfg.cluster.prompts_per_iteration, seed=cfg.cluster.seed, shuffle=cfg.data.shuffle
        )
        return cls(stream, ReplayBuffer(samples, cfg.data.replay_share, cfg.cluster.seed))

    def mark_resumable(self) -> None:
        """The learner's weights are `version`, the next iteration is `iteration`: a checkpoint now
        resumes exactly here."""
        self.resumable = {
            "next_iteration": self.iteration,
            "version": self.version,
            "stream": asdict(self.stream.state),
            "replay": self.replay.state(),
            "data": data_digest(self.stream.items),
        }


def train_loop(
    cfg: RunConfig,
    tc: TrainingCluster,
    state: RunState,
    run: Path,
    log_: MetricsLog,
    progress,
    stop: StopSignal = NEVER,
) -> list[dict]:
    """Iterations `state.iteration` .. cluster.iterations-1; returns their metrics."""
    history = []
    evaluator = Evaluator(cfg, tc)
    for iteration in range(state.iteration, cfg.cluster.iterations):
        state.iteration = iteration
        state.mark_resumable()
        eval_metrics = evaluator.maybe_run(iteration, state.version)
        t0 = time.perf_counter()
        batch, replayed = next_batch(state.stream, state.replay, iteration)
        rollouts = tc.generate_and_score(batch, iteration, state.version, stop)
        check_scorable(rollouts, cfg.cluster.max_unscorable_rate, iteration)
        if state.replay.share:
            state.replay.update((sg.sample.sample_id, accuracies(sg)) for sg in rollouts.groups)
        t1 = time.perf_counter()
        state.resumable = None  # the learner's weights move from here until the iteration is logged
        train_metrics = tc.train(rollouts)
        t2 = time.perf_counter()
        state.version += 1
        sync_metrics = tc.push(state.version)
        t3 = time.perf_counter()
        metrics = _iteration_metrics(rollouts, train_metrics, state.version, (t0, t1, t2, t3))
        metrics |= (
            sync_metrics | eval_metrics | {"rollout/max_unscorable_rate": cfg.cluster.max_unscorable_rate}
        )
        if state.replay.share:
            metrics |= {"replay/prompts": float(replayed), "replay/buffer": float(len(state.replay.accuracy))}
        log_.log(iteration, metrics)
        _dump_rollouts(run, iteration, rollouts, cfg.cluster.dump_rollouts)
        state.iteration = iteration + 1
        state.mark_resumable()
        if _checkpoint_due(cfg, iteration):
            save_resumable(tc, state, run, cfg.cluster.checkpoint_optimizer)
        history.append(metrics)
        progress(iteration, metrics)
        stop.check()
    if final := evaluator.final(cfg.cluster.iterations, state.version):
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


def check_scorable(rollouts: IterationRollouts, max_rate: float, iteration: int) -> None:
    """Stop rather than train on an iteration whose rewards mostly failed (the KL term alone is left)."""
    scores = [s for sg in rollouts.groups for s in sg.scores]
    rate = sum(not s.scorable for s in scores) / max(len(scores), 1)
    if rate > max_rate:
        cause = rollouts.reward_failures[0] if rollouts.reward_failures else "the judge's answers"
        raise RunFailed(
            f"iteration {iteration}: {rate:.0%} of {len(scores)} rollouts unscorable, above "
            f"cluster.max_unscorable_rate={max_rate:g} (first cause: {cause[:200]}); fix the reward side, then --resume"
        )


def _iteration_metrics(rollouts: IterationRollouts, train: dict, version: int, t: tuple) -> dict:
    from cluster.metrics import rollout_metrics

    tokens = sum(sg.group.num_completion_tokens for sg in rollouts.groups)
    metrics = rollout_metrics(rollouts) | rollouts.metrics | train
    metrics |= {
        "policy_version": float(version),
        "timing_s/generate": rollouts.generate_s,
        "timing_s/reward_tail": rollouts.reward_tail_s,
        "timing_s/train": t[2] - t[1],
        "timing_s/sync": t[3] - t[2],
        "timing_s/iteration": t[3] - t[0],
        "throughput/rollout_tokens_per_s": tokens / max(rollouts.generate_s, 1e-9),
    }
    return metrics


def _dump_rollouts(run: Path, iteration: int, rollouts: IterationRollouts, limit: int) -> None:
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


def _checkpoint_due(cfg: RunConfig, iteration: int) -> bool:
    every = cfg.cluster.checkpoint_every
    return iteration + 1 == cfg.cluster.iterations or bool(every and (iteration + 1) % every == 0)


def save_resumable(tc: TrainingCluster, state: RunState, run: Path, optimizer: bool) -> Path | None:
    """A checkpoint of `state.resumable` (None when the learner is mid-update: nothing exact to save)."""
    point = state.resumable
    if point is None:
        return None
    path = checkpoint_path(run, point["next_iteration"])
    save_checkpoint(path, point, lambda out: tc.save(out, optimizer))
    return path


def _set_aside_redone(run: Path, start: int) -> None:
    """One history per run: what an earlier attempt logged from iteration `start` on is redone now."""
    for name in (METRICS_FILE, ROLLOUTS_FILE):
        if moved := set_aside_from(run / name, start):
            aside = replaced_path(run / name).name
            print(f"{name}: {moved} records of iterations >= {start} of an earlier attempt moved to {aside}")


def find_resume_point(run: Path, cfg: RunConfig, resume: bool) -> tuple[Path | None, dict]:
    """The checkpoint to continue from and its trainer state; refuses what would silently go wrong:
    --resume without a checkpoint, a new run over one that has checkpoints, a changed fixed field."""
    checkpoint = latest_checkpoint(run)
    if resume and checkpoint is None:
        raise ConfigError(
            f"--resume: run {run.name!r} has no complete checkpoint in {run / 'checkpoints'}; "
            "drop --resume to start it anew"
        )
    if not resume and checkpoint is not None:
        raise ConfigError(
            f"run {run.name!r} already has checkpoints (latest {checkpoint.name}); pass --resume to continue it, "
            "or choose another cluster.run_name"
        )
    if checkpoint is None:
        return None, {}
    for change in check_resumable_config(run, cfg):
        print(f"resuming with a changed setting: {change}")
    return checkpoint, read_state(checkpoint)


def load_training_set(cfg: RunConfig) -> LoadResult:
    """The training samples, or a ConfigError saying why there are none to train on."""
    try:
        loaded = load_samples(cfg.data.train, cfg.data)
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.train={cfg.data.train!r} cannot be loaded: {err}") from None
    if not loaded.samples:
        skipped = (
            ", ".join(f"{n} {reason}" for reason, n in loaded.skipped.most_common()) or "it holds no rows"
        )
        hint = "".join(f"; {h}" for h in loaded.hints)
        raise ConfigError(f"data.train={cfg.data.train!r} has no usable sample ({skipped}){hint}")
    return loaded


def write_data_report(run: Path, source: str, loaded: LoadResult) -> None:
    """Print one line on what training uses and skips; keep the counts and the first locations."""
    skipped = sum(loaded.skipped.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in loaded.skipped.most_common())
    print(
        f"data: {len(loaded.samples)} training samples from {source}"
        + (f"; skipped {skipped}: {reasons}" if skipped else "")
    )
    report = {
        "source": source,
        "usable": len(loaded.samples),
        "skipped": dict(loaded.skipped),
        "first_skipped": [list(e) for e in loaded.errors[:50]],
    }
    (run / DATA_REPORT).write_text(json.dumps(report, indent=1) + "\n")


def run_train(cfg: RunConfig, *, resume: bool = False) -> int:
    from cluster.launch import check_address_is_safe
    from cluster.progress import Progress, summary_table
    from cluster.rundir import run_path, write_config

    check_address_is_safe(cfg)  # before the run folder, the model build (minutes) or the data
    run = run_path(cfg)
    checkpoint, saved = find_resume_point(run, cfg, resume)
    train_set = load_training_set(cfg)  # before the model: a bad data set is found in seconds
    check_same_data(saved, train_set.samples, cfg.data.train)
    initial = resolve_model(cfg.model.path)
    run.mkdir(parents=True, exist_ok=True)  # every refusal is above: no orphan run folder
    write_config(run, cfg)
    write_data_report(run, cfg.data.train, train_set)
    stream = PromptStream(
        train_set.samples,
        cfg.cluster.prompts_per_iteration,
        seed=cfg.cluster.seed,
        shuffle=cfg.data.shuffle,
        state=StreamState(**saved.get("stream", {})),
    )
    replay = ReplayBuffer(train_set.samples, cfg.data.replay_share, cfg.cluster.seed, saved.get("replay"))
    state = RunState(stream, replay, saved.get("next_iteration", 0), saved.get("version", 0))
    if checkpoint:
        print(
            f"resuming {run.name} at iteration {state.iteration} (policy version {state.version}) from {checkpoint}"
        )
    _set_aside_redone(run, state.iteration)
    metrics_log = MetricsLog(run, cfg.cluster.tensorboard, state.iteration)
    progress = Progress(cfg.cluster.iterations, state.iteration)
    stop = StopSignal()
    try:
        with TrainingCluster(
            cfg, str(checkpoint or initial), initial, state.version, resume=bool(checkpoint)
        ) as tc:
            if checkpoint:
                for note in dict.fromkeys(tc.learner.optimizer_restored(cfg.cluster.startup_timeout_s)):
                    print(f"learner: {note}")  # one line when every rank did the same
            with stop.installed(), tc.failures_named():
                history = _train_or_save(cfg, tc, state, run, metrics_log, progress.update, stop)
    finally:
        metrics_log.close()
        progress.close()
    print(summary_table(history, saved.get("next_iteration", 0), run))
    return 0


def _train_or_save(
    cfg: RunConfig,
    tc: TrainingCluster,
    state: RunState,
    run: Path,
    log_: MetricsLog,
    progress,
    stop: StopSignal,
) -> list[dict]:
    """`train_loop`; if it stops early (a signal, a failure), first a checkpoint of the last exact point
    it reached when that is newer than the run's latest, so no finished work is lost."""
    try:
        return train_loop(cfg, tc, state, run, log_, progress, stop)
    except BaseException:
        latest = latest_checkpoint(run, report=lambda _: None)
        done = read_state(latest)["next_iteration"] if latest else 0
        if state.resumable is not None and state.resumable["next_iteration"] > done:
            try:
                path = save_resumable(tc, state, run, cfg.cluster.checkpoint_optimizer)
                print(f"saved a resumable checkpoint at {path}")
            except Exception as err:  # the learner itself may be what failed
                print(f"could not save a checkpoint ({type(err).__name__}); the latest is {latest}")
        raise
