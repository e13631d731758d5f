"""One iteration's generation and scoring, streamed group by group: a rollout worker hands each group
over the moment its G completions are done (a Ray streaming generator over the engine's step loop,
`Engine.generate_stream`), and the driver gives the groups waiting to be scored to a reward worker as
soon as one is idle, all of them in one call. The first group is scored while the rest generate; a
judge that falls behind gets bigger calls (its engine batches them), so reflection overlaps
generation without a per-group call on a busy worker. By default (`rollout.chunk_size` None) every
rollout worker gets one generate call with its share of the prompts: one engine batch, the fastest
way to generate.

Deadlines: a generate call that misses `generate_timeout_s` fails the iteration (the batch cannot be
trained short); a scoring call that raises or misses `reward.timeout_s` makes its rollouts
unscorable (masked and counted), never a silent 0: it is cancelled, the reward worker gives up on it
past the same deadline, and a result that arrives late is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import ray

from actors.types import Group, PromptRequest, derive_seed
from cluster.data.sample import Sample
from cluster.placement import DeadlineExceeded
from cluster.pools import RewardPool, RolloutPool
from cluster.stops import NEVER, StopSignal
from cluster.supervision import WorkerSlots, call_died, is_dead
from learner.batch import split
from rewards.scoring import RolloutScore, ScoreItem, ScoringResult


@dataclass
class ScoredGroup:
    sample: Sample
    group: Group
    scores: list[RolloutScore]
    seed: int | None = None  # the request's sampling seed; the reflections' seeds derive from it


@dataclass
class IterationRollouts:
    groups: list[ScoredGroup]
    generate_s: float = 0.0  # wall time until the last group was generated
    reward_tail_s: float = 0.0  # wall time from the last generated group to the last score
    reward_failures: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # of the phase's extra rounds (resampling)
    reflect_s: float = 0.0  # reward workers' seconds in their judge engines (summed over calls)
    score_s: float = 0.0  # reward workers' seconds parsing and scoring (summed over calls)


@dataclass(frozen=True)
class Workers:
    """What an iteration's generation and scoring run on: the two pools and their limits (built once
    by the training cluster)."""

    rollout: RolloutPool
    reward: RewardPool
    chunk_size: int | None  # prompts per generate call; None: an even share per rollout worker
    generate_timeout_s: float
    reward_timeout_s: float
    # brings replaced policy engines (a pool's slots) to the pool's version now; None: they wait for
    # the next regular push (the asynchronous loop, whose learner may be ahead of the engines)
    catch_up: Callable[[WorkerSlots, list[int]], None] | None = None


@dataclass
class _Pending:
    chunk: list[int]  # indices into the batch
    submitted: float
    worker: int
    received: set[int] = field(default_factory=set)  # indices of the chunk whose group arrived


@dataclass
class _Scoring:
    groups: list[ScoredGroup]
    submitted: float
    worker: int


def generate_and_score(
    workers: Workers,
    batch: Sequence[Sample],
    requests: Sequence[PromptRequest],
    version: int,
    stop: StopSignal = NEVER,
) -> IterationRollouts:
    """Every request's group, scored. Past `reward_timeout_s` a scoring call is cancelled and its
    rollouts are unscorable, and a result that arrives after its deadline is refused; a generate call
    past `generate_timeout_s`, a dead rollout worker or a stop request raises, after cancelling every
    call still out. In a pool whose workers are replaceable (cluster.supervision), a worker that died
    or missed its deadline is replaced instead and its unfinished groups go to the workers taking work,
    each group generated and scored once."""
    return _Streamed(workers, batch, requests, version).run(stop)


class _Streamed:
    """The calls of one `generate_and_score`: groups waiting for a rollout worker, generate streams out,
    groups waiting for a reward worker, scoring calls out."""

    def __init__(
        self, workers: Workers, batch: Sequence[Sample], requests: Sequence[PromptRequest], version: int
    ):
        self.workers, self.batch, self.requests, self.version = workers, batch, requests, version
        self.position = {r.group_id: i for i, r in enumerate(requests)}
        self.unassigned = list(range(len(requests)))  # not yet given to a rollout worker
        self.streams: dict[ray.ObjectRefGenerator, _Pending] = {}
        self.waiting: list[ScoredGroup] = []  # generated, not yet given to a reward worker
        self.scoring: dict[ray.ObjectRef, _Scoring] = {}
        self.done: list[ScoredGroup] = []
        self.result = IterationRollouts([])
        self.turn = 0  # the next rollout worker in line, for calls of `chunk_size`

    def run(self, stop: StopSignal) -> IterationRollouts:
        self.start = time.perf_counter()
        try:
            while self.unassigned or self.streams or self.scoring or self.waiting:
                stop.check()
                self._assign(time.perf_counter())
                refs = [*self.streams, *self.scoring]
                if not refs:  # nothing out: the only workers able to take the work are starting
                    time.sleep(0.2)
                ready = ray.wait(refs, num_returns=1, timeout=1.0)[0] if refs else []
                now = time.perf_counter()
                for ref in ready:
                    if ref in self.streams:
                        self._take_groups(ref, now)
                    elif ref in self.scoring:
                        self._take_scores(ref, now)
                self._check_generation_deadline(now)
                self._expire_scoring(now)
                self._dispatch(now)
        except BaseException:
            _cancel([*self.streams, *self.scoring])
            raise
        self.result.reward_tail_s = time.perf_counter() - self.start - self.result.generate_s
        self.result.groups = sorted(self.done, key=lambda sg: sg.group.group_id)
        return self.result

    def _assign(self, now: float) -> None:
        """The groups no rollout worker has to the workers taking work: an even share each (the first
        workers one more), or calls of `chunk_size` in turn. Replaced engines behind the pool's version catch up first, if they may."""
        if not self.unassigned:
            return
        live = self._taking_work(self.workers.rollout.slots)
        if not live:
            return  # replacements are starting
        if self.workers.chunk_size:
            parts = [
                [self.unassigned[i] for i in c]
                for c in _chunks(len(self.unassigned), self.workers.chunk_size)
            ]
        else:
            parts = split(self.unassigned, min(len(self.unassigned), len(live)))
        for part in parts:
            worker = live[self.turn % len(live)]
            self.turn += 1
            stream = self.workers.rollout.submit_stream([self.requests[i] for i in part], worker)
            self.streams[stream] = _Pending(part, now, worker)
        self.unassigned = []

    def _taking_work(self, slots: WorkerSlots) -> list[int]:
        """The pool's workers that may take work, after replaced engines caught up if the loop lets
        them; `RunFailed` when none does and none will (check_can_work)."""
        if (behind := slots.behind()) and self.workers.catch_up is not None:
            self.workers.catch_up(slots, behind)
        live = slots.taking_work()
        if not live:
            slots.check_can_work()
        return live

    def _take_groups(self, stream: ray.ObjectRefGenerator, now: float) -> None:
        """Every group the stream has ready (a dead worker or an engine error raises here)."""
        pending = self.streams[stream]
        while ray.wait([stream], num_returns=1, timeout=0)[0]:
            try:
                group: Group = ray.get(next(stream))
            except StopIteration:
                del self.streams[stream]
                if not self.streams and not self.unassigned:
                    self.result.generate_s = now - self.start
                return
            except ray.exceptions.RayError as err:
                if not (self.workers.rollout.slots.replaceable and is_dead(err)):
                    raise
                self._replace_rollout_worker(pending.worker, "died")
                return
            i = self.position[group.group_id]
            pending.received.add(i)
            self.waiting.append(ScoredGroup(self.batch[i], group, [], self.requests[i].seed))

    def _replace_rollout_worker(self, worker: int, reason: str) -> None:
        """Replace rollout worker `worker`; its calls' groups that did not arrive wait for another."""
        slots = self.workers.rollout.slots
        for stream, pending in list(self.streams.items()):
            if pending.worker == worker:
                del self.streams[stream]
                _cancel([stream])
                lost = [i for i in pending.chunk if i not in pending.received]
                slots.counters.cancelled += 1
                slots.counters.resubmitted += len(lost)
                self.unassigned += lost
        slots.replace(worker, reason)

    def _check_generation_deadline(self, now: float) -> None:
        timeout_s = self.workers.generate_timeout_s
        late = {p.worker for p in self.streams.values() if now - p.submitted > timeout_s}
        if late and not self.workers.rollout.slots.replaceable:
            raise DeadlineExceeded(
                f"{len(late)} generate call(s) did not finish within rollout deadline {timeout_s:g} s "
                "(cluster.generate_timeout_s); a rollout worker is stuck or far too slow"
            )
        for worker in sorted(late):
            self._replace_rollout_worker(
                worker, f"missed the rollout deadline (cluster.generate_timeout_s={timeout_s:g} s)"
            )

    def _take_scores(self, ref: ray.ObjectRef, now: float) -> None:
        """A finished call's scores; one past its deadline is left to _expire_scoring (refused). The
        groups of a call whose reward worker died go to another (the worker is replaced)."""
        if now - self.scoring[ref].submitted > self.workers.reward_timeout_s:
            return
        call = self.scoring.pop(ref)
        if self.workers.reward.slots.replaceable and call_died(ref):
            self._rescore(call, "died")
            return
        self.done += _attach(call.groups, ref, self.result)

    def _rescore(self, call: _Scoring, reason: str) -> None:
        """Replace the reward worker of `call`; its groups wait for another."""
        slots = self.workers.reward.slots
        slots.replace(call.worker, reason)
        slots.counters.resubmitted += len(call.groups)
        self.waiting += call.groups

    def _expire_scoring(self, now: float) -> None:
        """Scoring calls past their deadline (a ready one included) are cancelled. A replaceable worker
        is replaced and the call's groups go to another; otherwise they are unscorable and the worker
        takes calls again (a call queued behind a stuck one is refused past its own deadline)."""
        timeout_s = self.workers.reward_timeout_s
        slots = self.workers.reward.slots
        for ref, call in list(self.scoring.items()):
            if now - call.submitted <= timeout_s:
                continue
            del self.scoring[ref]
            _cancel([ref])
            slots.counters.cancelled += 1
            if slots.replaceable:
                self._rescore(call, f"missed the scoring deadline (reward.timeout_s={timeout_s:g} s)")
                continue
            self.result.reward_failures.append(f"scoring exceeded reward.timeout_s={timeout_s:g} s")
            for sg in call.groups:
                sg.scores = [
                    RolloutScore(None, error="reward deadline exceeded") for _ in sg.group.completions
                ]
            self.done += call.groups

    def _dispatch(self, now: float) -> None:
        """The waiting groups to the idle reward workers taking work, split evenly, one call each."""
        if not self.waiting:
            return
        reward = self.workers.reward
        busy = {call.worker for call in self.scoring.values()}
        idle = [i for i in self._taking_work(reward.slots) if i not in busy]
        if not idle:
            return
        for worker, part in zip(idle, split(self.waiting, min(len(self.waiting), len(idle))), strict=False):
            items = [_item(sg) for sg in part]
            ref = reward.submit_score(items, self.version, self.workers.reward_timeout_s, worker)
            self.scoring[ref] = _Scoring(part, now, worker)
        self.waiting = []


def accuracies(sg: ScoredGroup) -> list[float]:
    """The accuracy rewards of the group's scorable rollouts (unscorable ones have none)."""
    return [s.rewards.accuracy for s in sg.scores if s.rewards is not None]


def all_wrong(sg: ScoredGroup) -> bool:
    """Every scorable rollout of the group has accuracy 0 (and at least one is scorable)."""
    found = accuracies(sg)
    return bool(found) and not any(found)


def resample_all_wrong(
    workers: Workers,
    batch: Sequence[Sample],
    requests: Sequence[PromptRequest],
    rollouts: IterationRollouts,
    version: int,
    rounds: int,
    stop: StopSignal = NEVER,
) -> dict[str, float]:
    """Give each all-wrong group up to `rounds` more groups of G from the same policy (new seeds).

    A group whose rollouts are all wrong has zero accuracy advantage: GRPO learns nothing from the
    prompts the policy misses most. A round that finds at least one right answer joins the group
    (its advantages then use one baseline over all its rollouts); a round without one is dropped and
    the next round tries again. `rollouts.groups` is updated in place; returns the metrics.
    """
    start = time.perf_counter()
    position = {r.group_id: j for j, r in enumerate(requests)}
    groups = {sg.group.group_id: sg for sg in rollouts.groups}
    retried = {gid for gid, sg in groups.items() if all_wrong(sg)}
    rescued = 0
    for round_ in range(1, rounds + 1):
        todo = sorted(gid for gid in retried if all_wrong(groups[gid]))
        if not todo:
            break
        again = generate_and_score(
            workers,
            [batch[position[gid]] for gid in todo],
            [_reseeded(requests[position[gid]], round_) for gid in todo],
            version,
            stop,
        )
        rollouts.reward_failures += again.reward_failures
        rollouts.reflect_s += again.reflect_s
        rollouts.score_s += again.score_s
        for sg in again.groups:
            if any(accuracies(sg)):
                groups[sg.group.group_id] = _joined(groups[sg.group.group_id], sg)
                rescued += 1
    rollouts.groups = [groups[gid] for gid in sorted(groups)]
    return {
        "rollout/resampled_groups": float(len(retried)),
        "rollout/rescued_groups": float(rescued),
        "timing_s/resample": time.perf_counter() - start,
    }


def _reseeded(request: PromptRequest, round_: int) -> PromptRequest:
    """The request of resampling round `round_`: its seed derives from the group's and the round."""
    return replace(request, seed=None if request.seed is None else derive_seed(request.seed, round_))


def _joined(first: ScoredGroup, more: ScoredGroup) -> ScoredGroup:
    a, b = first.group, more.group
    if a.prompt_token_ids != b.prompt_token_ids or a.policy_version != b.policy_version:
        raise RuntimeError(f"group {a.group_id}: a resampled group differs in prompt or policy version")
    group = replace(a, completions=[*a.completions, *b.completions], generate_s=a.generate_s + b.generate_s)
    return ScoredGroup(first.sample, group, [*first.scores, *more.scores], first.seed)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _item(sg: ScoredGroup) -> ScoreItem:
    return ScoreItem(sg.group, sg.sample.answer, sg.sample.labels, sg.sample.image, sg.seed)


def _attach(groups: list[ScoredGroup], ref: ray.ObjectRef, result: IterationRollouts) -> list[ScoredGroup]:
    try:
        scored: ScoringResult = ray.get(ref)
    except Exception as err:  # the reward worker raised or died: unscorable, not zero
        result.reward_failures.append(repr(err)[:500])
        failed = [
            [RolloutScore(None, error="reward worker failed") for _ in sg.group.completions] for sg in groups
        ]
        scored = ScoringResult(failed)
    result.reflect_s += scored.reflect_s
    result.score_s += scored.score_s
    for sg, group_scores in zip(groups, scored.scores, strict=True):
        sg.scores = group_scores
    return groups


def _cancel(refs: Sequence[ray.ObjectRef | ray.ObjectRefGenerator]) -> None:
    """Cancel calls whose results will not be used. Ray drops a call that has not reached its actor;
    one already queued or running in a (synchronous) actor is not interrupted by Ray: the reward
    worker refuses a call that starts past its deadline (rewards.worker.refuse_if_expired), so a stuck
    worker does not work through a backlog nobody will read."""
    for ref in refs:
        ray.cancel(ref)
