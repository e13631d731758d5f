"""The rollout worker: one vLLM engine sampling groups from the current policy version.

A plain class; the cluster layer makes it a Ray actor at spawn time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from actors.engine import Engine, EngineSettings
from actors.memory import process_memory_mib
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

    def generate_stream(
        self, requests: Sequence[PromptRequest], sampling: SamplingSettings | None = None
    ) -> Iterator[Group]:
        """As `generate`, each group yielded as soon as it is complete (a Ray streaming generator:
        the caller gets a group's object ref while the rest of the batch is still being sampled)."""
        yield from self.engine.generate_stream(requests, sampling or self.sampling)

    def load_weights(self, version: int, buckets: list[dict[str, torch.Tensor]]) -> float:
        """Load the trained parameters (HF names, in buckets) in place; returns the seconds it took."""
        start = time.perf_counter()
        self.engine.load_weights((item for bucket in buckets for item in bucket.items()), version)
        return time.perf_counter() - start

    @property
    def version(self) -> int:
        return self.engine.version

    def join_weight_group(self, init_info: dict) -> None:
        self.engine.join_weight_group(init_info)

    def receive_weights(self, version: int, update_info: dict) -> float:
        """The learner's weights through the collective transport; returns the seconds it took."""
        start = time.perf_counter()
        self.engine.receive_weights(version, update_info)
        return time.perf_counter() - start

    def leave_weight_group(self) -> None:
        self.engine.leave_weight_group()

    def weight_checksums(self) -> dict[str, float]:
        return self.engine.weight_checksums()

    def receive_raw(self, bucket_bytes: list[int]) -> None:
        self.engine.receive_raw(bucket_bytes)

    def process_memory(self, reset_peak: bool = False) -> dict[str, dict[str, float]]:
        """Resident and peak MiB of this actor's process and of its engine's process."""
        return {"actor": process_memory_mib(reset_peak), "engine": self.engine.process_memory(reset_peak)}

    def get_version(self) -> int:
        return self.engine.version

    def ping(self) -> bool:
        return True
