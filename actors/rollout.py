"""The rollout worker: one vLLM engine sampling groups from the current policy version.

A plain class; the cluster layer makes it a Ray actor at spawn time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from actors.engine import Engine, EngineSettings
from actors.types import Group, ImageRef, PromptRequest, SamplingSettings


class RolloutWorker:
    def __init__(
        self,
        settings: EngineSettings,
        sampling: SamplingSettings,
        image_loader: Callable[[ImageRef], Any],
        version: int = 0,
    ):
        self.engine = Engine(settings, image_loader, version)
        self.sampling = sampling

    def generate(
        self, requests: Sequence[PromptRequest], sampling: SamplingSettings | None = None
    ) -> list[Group]:
        """G completions per request (or as `sampling` says), all from `self.version`."""
        return self.engine.generate(requests, sampling or self.sampling)

    def load_weights(self, version: int, buckets: list[dict[str, torch.Tensor]]) -> float:
        """Load the trained parameters (HF names, in buckets) in place; returns the seconds it took."""
        start = time.perf_counter()
        self.engine.load_weights((item for bucket in buckets for item in bucket.items()), version)
        return time.perf_counter() - start

    @property
    def version(self) -> int:
        return self.engine.version

    def weight_checksums(self) -> dict[str, float]:
        return self.engine.weight_checksums()

    def get_version(self) -> int:
        return self.engine.version

    def ping(self) -> bool:
        return True
