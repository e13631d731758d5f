"""The reward worker: scores groups with the release's rules and the Reflective Emotional Reward.

It owns a judge engine for the two reflections. In `policy` mode the judge follows the policy
weights (the driver pushes every new version to it, so reflections come from the same version as the
rollouts they judge); in `frozen` mode it is a fixed model and never updated. A plain class; the
cluster layer makes it a Ray actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from actors.engine import Engine, EngineSettings
from actors.types import ImageRef
from rewards.config import RewardConfig
from rewards.judge import EngineJudge
from rewards.rules import RewardRules
from rewards.scoring import ScoreItem, ScoringResult, TimedJudge, score_items


class ScoringExpired(TimeoutError):
    """A scoring call that reached the worker after its deadline."""


def refuse_if_expired(deadline: float | None) -> None:
    """Raise ScoringExpired when a call starts after its wall-clock `deadline` (None: no deadline)."""
    if deadline is not None and (late := time.time() - deadline) > 0:
        raise ScoringExpired(f"scoring call started {late:.1f} s past its deadline")


class RewardWorker:
    def __init__(
        self,
        cfg: RewardConfig,
        rules: RewardRules,
        judge_settings: EngineSettings | None,
        image_loader: Callable[[ImageRef], Any],
        version: int = 0,
    ):
        self.rules = rules
        self.judge: EngineJudge | None = None
        if cfg.reflection and rules.reflective:
            if judge_settings is None:
                raise ValueError("reflection is on but no judge engine settings were given")
            self.judge = EngineJudge(Engine(judge_settings, image_loader, version), cfg.judge)
        self.follows_policy = cfg.judge_follows_policy

    def score(
        self, items: Sequence[ScoreItem], expected_version: int | None = None, deadline: float | None = None
    ) -> ScoringResult:
        """Score groups; in policy mode the judge must hold the version that produced them.

        `deadline` (wall-clock `time.time()`): the caller stops waiting then and cancels the call; a
        call that only starts after it (it queued behind a slow one) is refused at once instead of
        holding the worker for a result nobody will read.
        """
        refuse_if_expired(deadline)
        judge_version = self.judge.engine.version if self.judge and self.follows_policy else expected_version
        if expected_version is not None and judge_version != expected_version:
            raise RuntimeError(
                f"judge holds policy version {judge_version} but the rollouts are version {expected_version}"
            )
        start = time.perf_counter()
        judge = TimedJudge(self.judge) if self.judge is not None else None
        scores = score_items(items, judge, self.rules)
        reflect_s = judge.seconds if judge is not None else 0.0
        return ScoringResult(scores, reflect_s, time.perf_counter() - start - reflect_s)

    def load_weights(self, version: int, buckets: list[dict[str, torch.Tensor]]) -> None:
        if self.judge is not None and self.follows_policy:
            self.judge.engine.load_weights((item for b in buckets for item in b.items()), version)

    def join_weight_group(self, init_info: dict) -> None:
        self._policy_judge().join_weight_group(init_info)

    def receive_weights(self, version: int, update_info: dict) -> None:
        self._policy_judge().receive_weights(version, update_info)

    def leave_weight_group(self) -> None:
        self._policy_judge().leave_weight_group()

    def _policy_judge(self) -> Engine:
        if self.judge is None or not self.follows_policy:
            raise RuntimeError(
                "this reward worker's judge does not follow the policy: it receives no weights"
            )
        return self.judge.engine

    def weight_checksums(self) -> dict[str, float]:
        """The judge engine's parameter checksums (a worker without reflection has none)."""
        return self.judge.engine.weight_checksums() if self.judge else {}

    def get_version(self) -> int | None:
        return self.judge.engine.version if self.judge else None

    def ping(self) -> bool:
        return True
