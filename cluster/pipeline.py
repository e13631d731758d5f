"""The asynchronous loop (`cluster.max_staleness = k >= 1`): the next iterations' rollouts are generated
and scored while the learner trains, never more than k policy versions behind the policy they train.

Two things run at once: a production (one iteration's generate→score, `TrainingCluster.generate_and_score`,
on a thread of the driver) and a training (one iteration's updates, on another); the driver thread
decides what starts when:

- Production of iteration j starts when the previous production is done and j - (the engines'
  version) <= k, so its rollouts, all of the engines' version v, are at most k behind the policy that
  trains them (version j). Productions run one at a time, in order; iteration j's prompts are drawn
  after iteration j-1's groups fed the replay buffer, as in the synchronous loop.
- Training of iteration i starts when its rollouts are there. A group more than k versions behind
  would be dropped and counted (`async/dropped_stale`); the rule above keeps that at 0.
- The weight push needs the learner and every engine idle (the learner broadcasts the weights it has;
  an engine loads between generate calls; a policy-following judge must have finished scoring the
  rollouts of its version, so it always judges with the version that produced them). After training
  iteration i the driver pushes at once when no production is running; when the one running is
  iteration i+1's (the learner needs it next anyway) it waits for it, then pushes; when iteration
  i+1's rollouts are already there and a later production is running, it trains on and pushes at
  the next gap (k >= 2).
- A held-out evaluation due before iteration i waits for the running production and pushes version i
  first, so it measures the policy it names.

The loss corrects for the version gap with the sampler correction (learner.tis_cap): the old
logprobs are the learner's current weights (`old_logprobs` learner), each token's advantage is
weighted by min(pi_old / pi_sampler, cap). k = 0 never comes here: `train_loop` runs the synchronous
loop, unchanged.

Resume: the point after iteration i is the learner at version i+1 with the data state from before
iteration i+1's prompts (cluster.run_state); a resumed run starts its productions at the checkpoint's
version, so its first iteration trains on rollouts of staleness 0.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

from cluster.config import RunConfig
from cluster.generation import IterationRollouts
from cluster.held_out import Evaluator
from cluster.iteration import Clock, RunOutput, check_scorable, finish_iteration, iteration_metrics
from cluster.run_state import RunState
from cluster.scaling import apply_scale
from cluster.session import TrainingCluster
from cluster.stops import StopSignal


class Abandoned(Exception):
    """A production stopped because the loop around it is leaving (another part failed or stopped)."""


class _ProductionStop(StopSignal):
    """The run's stop signal, and the loop's own: a production stops at its next check when either is set."""

    def __init__(self, run: StopSignal):
        super().__init__()
        self.run = run
        self.abandoned = False

    def check(self) -> None:
        self.run.check()
        if self.abandoned:
            raise Abandoned("the asynchronous loop is leaving")


@dataclass
class Produced:
    """One iteration's rollouts and where they came from."""

    rollouts: IterationRollouts
    replayed: int
    version: int  # the engines' policy version that generated and judged them


def staleness_split(
    rollouts: IterationRollouts, version: int, k: int
) -> tuple[IterationRollouts, dict[str, float]]:
    """The groups at most `k` versions behind `version`, and the staleness metrics: groups per
    staleness 0..k, their mean, and how many were dropped for being older."""
    ages = [version - sg.group.policy_version for sg in rollouts.groups]
    if min(ages, default=0) < 0:
        raise RuntimeError(f"rollouts from a policy version newer than the learner's ({version})")
    kept = [sg for sg, age in zip(rollouts.groups, ages, strict=True) if age <= k]
    counts = Counter(age for age in ages if age <= k)
    metrics = {f"async/staleness_{s}": float(counts.get(s, 0)) for s in range(k + 1)}
    metrics |= {
        "async/max_staleness": float(k),
        "async/staleness_mean": sum(a for a in ages if a <= k) / max(len(kept), 1),
        "async/dropped_stale": float(len(ages) - len(kept)),
    }
    return replace(rollouts, groups=kept), metrics


class AsyncLoop:
    """`run()`: iterations state.iteration .. cluster.iterations-1 and the final evaluation, with
    productions running ahead of training by at most k versions; their metrics."""

    def __init__(
        self, cfg: RunConfig, tc: TrainingCluster, state: RunState, out: RunOutput, stop: StopSignal
    ):
        self.cfg, self.tc, self.state, self.out, self.stop = cfg, tc, state, out, stop
        self.k = cfg.cluster.max_staleness
        self.engines = state.version  # the policy version every engine holds
        self.productions: dict[int, Future[Produced]] = {}
        self.next_production = state.iteration
        self.observed = state.iteration  # productions whose groups the replay buffer has seen: < observed
        self.production_stop = _ProductionStop(stop)
        self.producer = ThreadPoolExecutor(1, thread_name_prefix="emo-r3-production")
        self.trainer = ThreadPoolExecutor(1, thread_name_prefix="emo-r3-training")
        self.evaluator = Evaluator(cfg, tc)

    def run(self) -> list[dict]:
        history = []
        try:
            for iteration in range(self.state.iteration, self.cfg.cluster.iterations):
                history.append(self._iteration(iteration))
                self.stop.check()
            self._drain()
            if self.evaluator.final_due(self.state.version):
                self._push_if_behind()
                final = self.evaluator.final(self.cfg.cluster.iterations, self.state.version)
                self.out.log.log(self.cfg.cluster.iterations, final)
                history.append(final)
        finally:
            self.production_stop.abandoned = True
            self.producer.shutdown(wait=False, cancel_futures=True)
            self.trainer.shutdown(wait=False, cancel_futures=True)
        return history

    def _iteration(self, iteration: int) -> dict:
        eval_metrics: dict[str, float] = {}
        if self.evaluator.due(iteration):  # the engines at this iteration's version, idle
            self._drain()
            self._push_if_behind()
            eval_metrics = self.evaluator.run(self.state.version)
        clock = Clock()
        produced = clock.lap("rollouts", self._rollouts(iteration))
        rollouts, async_metrics = staleness_split(produced.rollouts, self.state.version, self.k)
        if not rollouts.groups:
            raise RuntimeError(f"iteration {iteration}: every group was more than {self.k} versions stale")
        check_scorable(rollouts, self.cfg.cluster.max_unscorable_rate, iteration)
        self.state.training()
        train_metrics = clock.lap("train", self._train(rollouts))
        self.state.trained()
        sync_metrics = clock.lap("sync", self._push_after_training(iteration))
        metrics = (
            eval_metrics
            | iteration_metrics(self.cfg, self.state, rollouts, produced.replayed, clock)
            | async_metrics
            | {
                "async/rollout_version": float(produced.version),
                "timing_s/wait_rollouts": clock.laps["rollouts"],
            }
            | train_metrics
            | sync_metrics
        )
        return finish_iteration(self.cfg, self.tc, self.state, self.out, rollouts, metrics)

    # ---- productions ---------------------------------------------------------------------------

    def _running(self) -> Future[Produced] | None:
        return next((f for f in self.productions.values() if not f.done()), None)

    def _observe_done(self) -> None:
        """Feed the replay buffer every finished production's groups, in order (a failed one raises)."""
        while (f := self.productions.get(self.observed)) is not None and f.done():
            self.state.observe(f.result().rollouts)
            self.observed += 1

    def _fill(self) -> None:
        """Start the next production if none is running and its rollouts would be at most k behind."""
        self._observe_done()
        j = self.next_production
        if self._running() or j >= self.cfg.cluster.iterations or j - self.engines > self.k:
            return
        apply_scale(self.tc, self.out.path, j)  # no production out: no rollout worker has work
        batch, replayed = self.state.draw(j)
        self.productions[j] = self.producer.submit(self._produce, j, batch, replayed, self.engines)
        self.next_production += 1

    def _produce(self, iteration: int, batch: list, replayed: int, version: int) -> Produced:
        rollouts = self.tc.generate_and_score(batch, iteration, version, self.production_stop)
        return Produced(rollouts, replayed, version)

    def _rollouts(self, iteration: int) -> Produced:
        """Iteration `iteration`'s rollouts, starting their production if it is not out yet."""
        self._fill()
        produced = self.productions[iteration].result()  # its own deadlines bound the wait
        self._observe_done()  # before it leaves `productions`: the replay buffer sees every iteration
        del self.productions[iteration]
        return produced

    def _drain(self) -> None:
        """Wait for the running production (every engine idle afterwards)."""
        if (running := self._running()) is not None:
            running.result()
        self._observe_done()

    # ---- training and pushes -------------------------------------------------------------------

    def _train(self, rollouts: IterationRollouts) -> dict[str, float]:
        """The iteration's updates; productions go on meanwhile, each started as soon as it may."""
        training = self.trainer.submit(self.tc.train, rollouts)
        self._fill()
        while not training.done():
            running = self._running()
            wait([training, *([running] if running else [])], return_when=FIRST_COMPLETED)
            if running is not None and running.done():
                running.result()  # a failed production stops the run now, not at its turn
                self._fill()
        return training.result()

    def _push_after_training(self, iteration: int) -> dict[str, float]:
        """Push the new version now, after the running production, or at a later gap (module docstring)."""
        following = self.productions.get(iteration + 1)
        if following is not None and following.done() and self._running() is not None:
            return {"sync/pushed": 0.0, "timing_s/sync": 0.0}
        self._drain()
        metrics = self._push_if_behind()
        self._fill()
        return metrics

    def _push_if_behind(self) -> dict[str, float]:
        if self.engines == self.state.version:
            return {"sync/pushed": 0.0, "timing_s/sync": 0.0}
        metrics = self.tc.push(self.state.version)  # the transport times it (timing_s/sync)
        self.engines = self.state.version
        return {"sync/pushed": 1.0} | metrics
