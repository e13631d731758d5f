"""Configuration of the reward workers: rule rewards, the Reflective Emotional Reward and its judge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JudgeConfig(BaseModel):
    """The engine that writes the two reflections (METHOD.md §3)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["policy", "frozen"] = Field(
        "policy",
        description="policy: the judge follows the policy weights, same version as the rollouts (paper); "
        "frozen: a fixed model from `model`, never updated",
    )
    model: str | None = Field(None, description="judge model path; required when mode is frozen")
    temperature: float = Field(0.6, ge=0, description="METHOD.md §3: 0.6")
    top_p: float = Field(0.95, gt=0, le=1, description="METHOD.md §3: 0.95")
    max_new_tokens: int = Field(16, ge=1, description="reflection answers are one word")
    kv_cache_mib: int = Field(64, ge=16, description="judge KV cache on CPU (MiB)")
    prompt: Literal["release", "delimited"] = Field(
        "release",
        description="release: the response's span pasted into the reflection prompts as is (METHOD.md §3); "
        "delimited: the span between markers, marked as material to judge, not instructions "
        "(docs/rewards.md)",
    )

    @model_validator(mode="after")
    def _frozen_needs_model(self) -> JudgeConfig:
        if self.mode == "frozen" and not self.model:
            raise ValueError("judge mode 'frozen' needs a model: set reward.judge.model=PATH")
        return self


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(
        1, ge=1, description="reward workers, each a Ray actor with its own judge engine"
    )
    num_cpus_per_worker: float = Field(0.25, gt=0, description="Ray CPUs reserved per reward worker")
    num_gpus_per_worker: float = Field(0, ge=0, description="Ray GPUs per reward worker (its judge engine)")
    reflection: bool = Field(
        True, description="run the Reflective Emotional Reward (off: R_coh = R_cons = 1)"
    )
    total: Literal["release", "paper", "grpo"] = Field(
        "release",
        description="release: 0.8acc+0.1coh+0.1cons+0.1fmt (max 1.1); paper: 0.8acc+0.1(coh+cons)/2+0.1fmt; "
        "grpo: baseline 0.9acc+0.1fmt with the <think> format (METHOD.md §3)",
    )
    coherence_span: Literal["release", "echo"] = Field(
        "release", description="echo: keep step-2 content when the model writes after the closing tags"
    )
    strict_yes_no: bool = Field(
        False,
        description="whole-word yes/no in R_cons ('none', 'not' are not 'no'; 'the eyes', 'yes-man' are not "
        "'yes')",
    )
    strict_label_match: bool = Field(False, description="label matched as a word ('Fear.' counts)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    timeout_s: float = Field(120.0, gt=0, description="deadline for scoring one group; past it: unscorable")

    @property
    def judge_follows_policy(self) -> bool:
        """The judge reflects with the policy's own weights, pushed to it every version (METHOD.md §3)."""
        return self.reflection and self.judge.mode == "policy"
