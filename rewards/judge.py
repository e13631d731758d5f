"""The judge that writes reflections: a vLLM engine (the policy's own, or a frozen model)."""

from __future__ import annotations

from collections.abc import Sequence

from actors.engine import Engine
from actors.types import PromptRequest, SamplingSettings
from rewards.config import JudgeConfig
from rewards.scoring import ReflectionRequest


def judge_sampling(cfg: JudgeConfig) -> SamplingSettings:
    """One sample per reflection, temperature 0.6, top_p 0.95 (METHOD.md §3)."""
    return SamplingSettings(
        n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, logprobs=False
    )


class EngineJudge:
    """Generates reflections on an engine; reflections are never trained on."""

    def __init__(self, engine: Engine, cfg: JudgeConfig):
        self.engine = engine
        self.sampling = judge_sampling(cfg)

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
        """One answer per request, each sampled with the request's own seed (rewards.scoring derives
        it from the rollout it judges), so a reflection does not depend on which worker or call ran it."""
        prompts = [PromptRequest(i, r.user_text, r.image, seed=r.seed) for i, r in enumerate(requests)]
        groups = self.engine.generate(prompts, self.sampling)
        return [g.completions[0].text for g in groups]
