"""`emo-r3 train`: the EMO-R3 iteration loop (DESIGN.md), synchronous; cluster.pipeline runs the
asynchronous mode (cluster.max_staleness >= 1) with the same phases and helpers.

Read `train_loop` to understand the system: each phase of an iteration is one call on a typed handle
(cluster.session.TrainingCluster); where the run stands between iterations is a RunState.
"""

from __future__ import annotations

import time
from pathlib import Path

from cluster.checkpoints import check_same_data, find_resume_point, latest_checkpoint, read_state, save_point
from cluster.config import RunConfig
from cluster.held_out import Evaluator
from cluster.iteration import (
    Clock,
    RunOutput,
    check_scorable,
    finish_iteration,
    iteration_metrics,
)
from cluster.metrics import METRICS_FILE, ROLLOUTS_FILE, MetricsLog, replaced_path, set_aside_from
from cluster.models import resolve_model
from cluster.pipeline import AsyncLoop
from cluster.run_state import RunState, next_batch
from cluster.scaling import APPLIED_FILE, applied_workers, apply_scale
from cluster.session import TrainingCluster
from cluster.sources import load_training_set, write_data_report
from cluster.stops import NEVER, LearnerLost, RunFailed, StopSignal

__all__ = ["RunOutput", "RunState", "latest_checkpoint", "next_batch", "run_train", "train_loop"]


def train_loop(
    cfg: RunConfig, tc: TrainingCluster, state: RunState, out: RunOutput, stop: StopSignal = NEVER
) -> list[dict]:
    """Iterations `state.iteration` .. cluster.iterations-1, then the final evaluation; their metrics.
    With cluster.max_staleness >= 1 the asynchronous loop (cluster.pipeline) runs them instead."""
    if cfg.cluster.max_staleness:
        return AsyncLoop(cfg, tc, state, out, stop).run()
    evaluator = Evaluator(cfg, tc)
    history = []
    for iteration in range(state.iteration, cfg.cluster.iterations):
        apply_scale(tc, out.path, iteration)
        eval_metrics = evaluator.maybe_run(iteration, state.version)
        clock = Clock()
        batch, replayed = state.begin(iteration)
        rollouts = clock.lap("rollouts", tc.generate_and_score(batch, iteration, state.version, stop))
        check_scorable(rollouts, cfg.cluster.max_unscorable_rate, iteration)
        state.observe(rollouts)
        state.training()
        train_metrics = clock.lap("train", tc.train(rollouts))
        sync_metrics = clock.lap("sync", tc.push(state.trained()))
        metrics = (
            eval_metrics
            | iteration_metrics(cfg, state, rollouts, replayed, clock)
            | train_metrics
            | sync_metrics
        )
        history.append(finish_iteration(cfg, tc, state, out, rollouts, metrics))
        stop.check()
    if final := evaluator.final(cfg.cluster.iterations, state.version):
        out.log.log(cfg.cluster.iterations, final)
        history.append(final)
    return history


def train_or_save(
    cfg: RunConfig, tc: TrainingCluster, state: RunState, out: RunOutput, stop: StopSignal
) -> list[dict]:
    """`train_loop`; if it stops early (a signal, a failure), first a checkpoint of the last exact point
    it reached when that is newer than the run's latest, so no finished work is lost."""
    try:
        return train_loop(cfg, tc, state, out, stop)
    except BaseException:
        latest = latest_checkpoint(out.path, report=lambda _: None)
        done = read_state(latest)["next_iteration"] if latest else 0
        if state.resumable is not None and state.resumable["next_iteration"] > done:
            try:
                path = save_point(
                    out.path, state.resumable, lambda p: tc.save(p, cfg.cluster.checkpoint_optimizer)
                )
                print(f"saved a resumable checkpoint at {path}")
            except Exception as err:  # the learner itself may be what failed
                print(f"could not save a checkpoint ({type(err).__name__}); the latest is {latest}")
        raise


def run_train(cfg: RunConfig, *, resume: bool = False) -> int:
    """`emo-r3 train`: every refusal first (address, resume point, data, model), then the run folder,
    the cluster and the loop; a learning curve and a summary table at the end."""
    from cluster.launch import check_address_is_safe
    from cluster.progress import plot_learning_curve, summary_table
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
    (run / APPLIED_FILE).unlink(missing_ok=True)  # a scaling of an earlier process: the config's count now
    first = saved.get("next_iteration", 0)
    restarts, failed_at = 0, None
    while True:
        state = RunState.start(cfg, train_set.samples, saved)
        state.restarts = restarts
        try:
            history = _attempt(cfg, run, state, checkpoint, initial, failed_at)
            break
        except LearnerLost as err:
            failed_at = err.seen_at
            if restarts >= cfg.cluster.max_run_restarts:
                raise RunFailed(
                    f"{err}; the run restarted {restarts} time(s), the limit (cluster.max_run_restarts="
                    f"{cfg.cluster.max_run_restarts}); resume with --resume"
                ) from None
            restarts += 1
            checkpoint = latest_checkpoint(run, report=lambda _: None)
            saved = read_state(checkpoint) if checkpoint else {}
            print(
                f"{err}: the run restarts from {checkpoint or 'its start'} "
                f"(restart {restarts} of {cfg.cluster.max_run_restarts})",
                flush=True,
            )
    plot_learning_curve(run)
    print(summary_table(history, first, run))
    return 0


def _attempt(
    cfg: RunConfig,
    run: Path,
    state: RunState,
    checkpoint: Path | None,
    initial: str,
    failed_at: float | None,
) -> list[dict]:
    """One training cluster from `checkpoint` (None: the initial model) through the loop; `failed_at`:
    when the failure this attempt restarts from was seen (the restart's time is logged)."""
    from cluster.progress import Progress

    if checkpoint:
        print(
            f"resuming {run.name} at iteration {state.iteration} (version {state.version}) from {checkpoint}"
        )
    _set_aside_redone(run, state.iteration)
    progress = Progress(cfg.cluster.iterations, state.iteration)
    out = RunOutput(
        run, MetricsLog(run, cfg.cluster.tensorboard, state.iteration, cfg.cluster.wandb), progress.update
    )
    stop = StopSignal()
    try:
        with TrainingCluster(
            cfg, str(checkpoint or initial), initial, state.version, resume=bool(checkpoint)
        ) as tc:
            if failed_at is not None:
                state.restart_s = time.perf_counter() - failed_at
                if (workers := applied_workers(run)) is not None:  # the pool as it was scaled
                    tc.scale_rollout(workers)
            if checkpoint:
                for note in dict.fromkeys(tc.learner.optimizer_restored(cfg.cluster.startup_timeout_s)):
                    print(f"learner: {note}")  # one line when every rank did the same
            with stop.installed(), tc.failures_named():
                return train_or_save(cfg, tc, state, out, stop)
    finally:
        out.log.close()
        progress.close()


def _set_aside_redone(run: Path, start: int) -> None:
    """One history per run: what an earlier attempt logged from iteration `start` on is redone now."""
    for name in (METRICS_FILE, ROLLOUTS_FILE):
        if moved := set_aside_from(run / name, start):
            aside = replaced_path(run / name).name
            print(f"{name}: {moved} records of iterations >= {start} of an earlier attempt moved to {aside}")
