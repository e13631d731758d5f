"""One iteration's generation and scoring, streamed: each chunk of groups goes to the reward pool
as soon as it is generated (split over its workers), so reflection overlaps the rest of the
generation. The chunk size trades that overlap for generation speed: by default (`rollout.chunk_size`
None) every rollout worker gets one call with its share of the prompts, the fastest way to generate
(one 16-prompt call is 1.5x faster than four 4-prompt calls on the CPU default: README, Benchmarks).

Deadlines: a generation chunk that misses `generate_timeout_s` fails the iteration (the batch cannot
be trained short); a scoring call that raises or misses `reward.timeout_s` makes its rollouts
unscorable (masked and counted), never a silent 0: it is cancelled, the reward worker gives up on it
past the same deadline, and a result that arrives late is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import ray

from actors.types import Group, PromptRequest, derive_seed
from cluster.data.sample import Sample
from cluster.placement import DeadlineExceeded
from cluster.pools import RewardPool, RolloutPool
from cluster.stops import NEVER, StopSignal
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


@dataclass
class _Pending:
    chunk: list[int]  # indices into the batch
    submitted: float


def generate_and_score(
    workers: Workers,
    batch: Sequence[Sample],
    requests: Sequence[PromptRequest],
    version: int,
    stop: StopSignal = NEVER,
) -> IterationRollouts:
    """Every request's group, scored. Past `reward_timeout_s` a scoring call is cancelled and its
    rollouts are unscorable, and a result that arrives after its deadline is refused; a generation
    chunk past `generate_timeout_s`, a dead rollout worker or a stop request raises, after cancelling
    every call still out."""
    rollout, reward, reward_timeout_s = workers.rollout, workers.reward, workers.reward_timeout_s
    start = time.perf_counter()
    size = workers.chunk_size or max(1, -(-len(requests) // len(rollout.actors)))
    generating = {
        rollout.submit_generate([requests[i] for i in chunk]): _Pending(chunk, start)
        for chunk in _chunks(len(requests), size)
    }
    scoring: dict[ray.ObjectRef, tuple[list[ScoredGroup], float]] = {}
    done: list[ScoredGroup] = []
    result = IterationRollouts([])
    try:
        while generating or scoring:
            stop.check()
            ready, _ = ray.wait([*generating, *scoring], num_returns=1, timeout=1.0)
            now = time.perf_counter()
            for ref in ready:
                if ref in generating:
                    pending = generating.pop(ref)
                    groups = [
                        ScoredGroup(batch[i], g, [], requests[i].seed)
                        for i, g in zip(pending.chunk, ray.get(ref), strict=True)
                    ]
                    for part in split(
                        groups, min(len(groups), len(reward.actors))
                    ):  # every reward worker busy
                        scoring[
                            reward.submit_score([_item(sg) for sg in part], version, reward_timeout_s)
                        ] = (part, now)
                    if not generating:
                        result.generate_s = now - start
                elif now - scoring[ref][1] <= reward_timeout_s:
                    done += _attach(scoring.pop(ref)[0], ref, result)
            _check_generation_deadline(generating, now, workers.generate_timeout_s)
            done += _expire_scoring(scoring, now, reward_timeout_s, result)
    except BaseException:
        _cancel([*generating, *scoring])
        raise
    result.reward_tail_s = time.perf_counter() - start - result.generate_s
    result.groups = sorted(done, key=lambda sg: sg.group.group_id)
    return result


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


def _check_generation_deadline(generating: dict, now: float, timeout_s: float) -> None:
    late = [p for p in generating.values() if now - p.submitted > timeout_s]
    if late:
        raise DeadlineExceeded(
            f"{len(late)} generation chunk(s) did not finish within rollout deadline {timeout_s:g} s "
            "(cluster.generate_timeout_s); a rollout worker is stuck or far too slow"
        )


def _cancel(refs: Sequence[ray.ObjectRef]) -> None:
    """Cancel calls whose results will not be used. Ray drops a call that has not reached its actor;
    one already queued or running in a (synchronous) actor is not interrupted by Ray: the reward
    worker refuses a call that starts past its deadline (rewards.worker.refuse_if_expired), so a stuck
    worker does not work through a backlog nobody will read."""
    for ref in refs:
        ray.cancel(ref)


def _expire_scoring(
    scoring: dict, now: float, timeout_s: float, result: IterationRollouts
) -> list[ScoredGroup]:
    """Scoring calls past their deadline (a ready one included): cancelled, their rollouts unscorable."""
    expired = []
    for ref, (groups, submitted) in list(scoring.items()):
        if now - submitted > timeout_s:
            del scoring[ref]
            _cancel([ref])
            result.reward_failures.append(f"scoring exceeded reward.timeout_s={timeout_s:g} s")
            for sg in groups:
                sg.scores = [
                    RolloutScore(None, error="reward deadline exceeded") for _ in sg.group.completions
                ]
            expired += groups
    return expired
