"""Scoring groups of rollouts: rule rewards plus the Reflective Emotional Reward (METHOD.md §3).

Pure of any engine: the reflections come from a `Judge`, anything that turns (prompt text, image)
pairs into answers. The reward worker plugs in a vLLM judge; tests plug in a function.
A rollout whose reflection could not be produced is *unscorable* (never a silent 0): it carries no
score, and the learner excludes it from its group's baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from actors.types import Group, ImageRef, derive_seed
from rewards.rules import RewardBreakdown, RewardRules, reflection_prompts, score_response

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReflectionRequest:
    user_text: str
    image: ImageRef | None  # the consistency reflection sees the rollout's image; coherence does not
    seed: int | None = None  # derived from the group's seed, the rollout and the reflection (None: engine's)


class Judge(Protocol):
    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
        """One answer per request, in order."""
        ...


@dataclass(frozen=True)
class ScoreItem:
    """A group to score and what its prompt asked."""

    group: Group
    gold: str
    labels: tuple[str, ...]
    image: ImageRef | None
    seed: int | None = None  # the group's sampling seed; its reflections' seeds derive from it


@dataclass(frozen=True)
class RolloutScore:
    rewards: RewardBreakdown | None  # None: unscorable
    coherence_reflection: str | None = None
    consistency_reflection: str | None = None
    error: str | None = None

    @property
    def scorable(self) -> bool:
        return self.rewards is not None


@dataclass(frozen=True)
class ScoringResult:
    """A reward worker's answer to one scoring call: the scores per item, and where its time went."""

    scores: list[list[RolloutScore]]
    reflect_s: float = 0.0  # the judge generating reflections
    score_s: float = 0.0  # everything else: parsing, prompts, rules


class TimedJudge:
    """A judge that adds up the seconds its `reflect` calls take."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.seconds = 0.0

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
        start = time.perf_counter()
        try:
            return self.judge.reflect(requests)
        finally:
            self.seconds += time.perf_counter() - start


def score_items(
    items: Sequence[ScoreItem], judge: Judge | None, rules: RewardRules
) -> list[list[RolloutScore]]:
    """Score every rollout of every item; one list of RolloutScore per item, in order.

    With `judge=None` (or the GRPO baseline rules) no reflection runs and R_coh = R_cons = 1, as
    in the release's validation. If the judge fails, every rollout of the batch is unscorable.
    """
    if judge is None or not rules.reflective:
        return [[_score(item, c.text, None, None, rules) for c in item.group.completions] for item in items]
    requests = [
        request
        for item in items
        for index, c in enumerate(item.group.completions)
        for request in _requests(item, index, c.text, rules)
    ]
    try:
        answers = judge.reflect(requests)
        if len(answers) != len(requests):
            raise RuntimeError(f"judge returned {len(answers)} answers for {len(requests)} prompts")
    except Exception as err:  # a failing judge must not crash the run nor become a reward of 0
        log.warning("reflection failed for %d groups: %r", len(items), err)
        return [[RolloutScore(None, error=repr(err)) for _ in item.group.completions] for item in items]
    pairs = iter(zip(answers[0::2], answers[1::2], strict=True))
    return [[_score(item, c.text, *next(pairs), rules) for c in item.group.completions] for item in items]


COHERENCE, CONSISTENCY = 0, 1  # the reflection's part of its seed


def _requests(
    item: ScoreItem, index: int, response: str, rules: RewardRules
) -> tuple[ReflectionRequest, ReflectionRequest]:
    """Rollout `index`'s two reflections; their seeds derive from (group seed, rollout, reflection)."""
    coherence, consistency = reflection_prompts(response, item.labels, rules)
    seeds = [
        None if item.seed is None else derive_seed(item.seed, index, kind)
        for kind in (COHERENCE, CONSISTENCY)
    ]
    return ReflectionRequest(coherence, None, seeds[0]), ReflectionRequest(consistency, item.image, seeds[1])


def _score(
    item: ScoreItem, response: str, coherence: str | None, consistency: str | None, rules: RewardRules
):
    rewards = score_response(response, item.gold, item.labels, coherence, consistency, rules)
    return RolloutScore(rewards, coherence, consistency)
