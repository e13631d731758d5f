"""Configuration of the rollout workers (vLLM engines that sample from the policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    """How rollouts are sampled. Defaults are the embedded CPU default (configs/cpu_default.yaml)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(1, ge=1, description="rollout workers, each a Ray actor owning one vLLM engine")
    num_cpus_per_worker: float = Field(0.5, gt=0, description="Ray CPUs reserved per rollout worker")
    num_gpus_per_worker: float = Field(
        0, ge=0, description="Ray GPUs per worker (= tensor_parallel_size on GPU)"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism (GPU only)")
    group_size: int = Field(8, ge=2, description="G: completions per prompt (METHOD.md §4: 8, also 4)")
    temperature: float = Field(
        0.7,
        ge=0,
        description="sampling temperature (METHOD.md §4: 1.0 for the 3B model; the tiny model breaks the format in about half its responses at 1.0, in 5% at 0.7)",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (METHOD.md §4: 1.0)")
    max_new_tokens: int = Field(128, ge=1, description="completion length cap (METHOD.md §4: 2048)")
    max_model_len: int = Field(1024, ge=64, description="prompt + completion tokens an engine accepts")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="engine dtype; float32 on CPU makes engine and learner logprobs agree to 1e-6"
    )
    kv_cache_mib: int = Field(
        512,
        ge=16,
        description="KV cache per engine on CPU (MiB): 512 holds 256 sequences of the default's length",
    )
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1, description="vLLM share of GPU memory (GPU only)")
    max_num_seqs: int = Field(
        256,
        ge=1,
        description="sequences an engine schedules at once (the default's 16 x 8 rollouts in one batch)",
    )
    enforce_eager: bool = Field(True, description="no CUDA graphs / compilation (always eager on CPU)")
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="prompts per generate call; None: an even share of the iteration's prompts per rollout worker, one "
        "call each (fastest). Each group goes to the reward pool as soon as it is done either way (streamed)",
    )
    resample_all_wrong: int = Field(
        1,
        ge=0,
        description="rounds of G more rollouts for each prompt whose group is all wrong so far (no accuracy "
        "gradient); a round that finds a right answer joins the group (2G rollouts, one baseline), one that "
        "does not is dropped (DEPARTURE: the tiny policy's shortcut leaves its counterexamples all wrong). "
        "0: off (GRPO as published)",
    )
