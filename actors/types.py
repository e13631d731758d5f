"""Plain data passed between the driver, rollout workers, reward workers and the learner. Pure.

A *rollout* is one completion of a prompt with the sampler's logprobs and the policy version that
produced it; a *group* is the G rollouts of one prompt. Images travel by reference (a path or the
encoded bytes) and are decoded where they are used, never replicated per rollout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

ImageRef = str | bytes

IMAGE_PAD = (
    "<|image_pad|>"  # the placeholder an image expands into in a Qwen-VL prompt (one per merged patch)
)

SEED_MULTIPLIER = 1_000_003
SEED_MODULUS = 2**63  # every derived seed fits a signed 64-bit integer (vLLM, torch.Generator)


def derive_seed(*parts: int | str) -> int:
    """The one way the service makes a seed from the things it depends on, e.g. (run seed, iteration,
    sample id, round): fold each part in as `h * 1_000_003 + part` (mod 2**63), a string part by a
    stable 63-bit hash of it. Deterministic across processes, hosts and restarts, never a counter, so a
    resumed run draws exactly what an uninterrupted one does. `derive_seed(a, b)` is `a * 1_000_003 + b`
    for small integers."""
    seed = 0
    for part in parts:
        if isinstance(part, str):
            part = int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
        seed = (seed * SEED_MULTIPLIER + part) % SEED_MODULUS
    return seed


@dataclass(frozen=True)
class PromptRequest:
    """One prompt to expand into a group of G rollouts."""

    group_id: int
    user_text: str  # question + instruction; the engine applies the chat template
    image: ImageRef | None
    seed: int | None = None  # per-request sampling seed (reproducible groups)


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    sampler_logprobs: list[float]  # logprob of each sampled token under the sampling policy, [T]
    text: str
    finish_reason: str  # "stop" | "length" | "abort"


@dataclass(frozen=True)
class Group:
    """The G completions of one prompt, all from one policy version.

    `prompt_token_ids` are the ids the engine saw (image placeholders already expanded); the learner
    trains on exactly `prompt_token_ids + completion.token_ids`.
    """

    group_id: int
    policy_version: int
    prompt_token_ids: list[int]
    completions: list[Completion]
    generate_s: float = 0.0

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass(frozen=True)
class SamplingSettings:
    """What the engine needs to sample; built from RolloutConfig / JudgeConfig."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    logprobs: bool = True
    stop: list[str] = field(default_factory=list)
