"""Configuration of the learner: DeepSpeed ranks and the GRPO objective (METHOD.md §4)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_ranks: int = Field(1, ge=1, description="DeepSpeed ranks, each a Ray actor")
    num_cpus_per_rank: float = Field(0.5, gt=0, description="Ray CPUs per rank")
    num_gpus_per_rank: float = Field(0, ge=0, description="Ray GPUs per rank (1 on a GPU cluster)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="training precision")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (METHOD.md §4: 2e-6 for the 3B model)")
    weight_decay: float = Field(0.01, ge=0, description="METHOD.md §4: 0.01")
    grad_clip: float = Field(1.0, gt=0, description="METHOD.md §4: 1.0")
    warmup_steps: int = Field(
        10,
        ge=0,
        description="optimizer steps of linear lr warmup, resumed with the optimizer state (DEPARTURE, release: none; at the "
        "tiny model's lr, Adam's first steps move every weight by ±lr: KL 0.024 after one iteration, 0.001 with it)",
    )
    updates_per_iteration: int = Field(2, ge=1, description="optimizer steps per iteration (METHOD.md §4: 2)")
    micro_batch_size: int = Field(8, ge=1, description="rollouts per forward/backward on one rank")
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="micro-batches by a token budget instead of micro_batch_size rows: a rank cuts its rollouts, in "
        "order, into micro-batches of at most this many padded tokens (rows × longest prompt + completion; a longer "
        "rollout alone), and every rank runs as many as the rank that needs the most (learner.batch.token_budget_split). "
        "None: micro_batch_size rows",
    )
    logprob_chunk_tokens: int = Field(
        1024,
        ge=1,
        description="completion tokens per chunk of the output layer (learner.head): logprobs and entropy come from "
        "the final hidden states, and only one chunk's [chunk, vocab] float32 logits exist at once, in the forward "
        "and in the backward that recomputes them (1024 × 151,936: 0.6 GB per copy, instead of 10 GB per copy of a "
        "micro-batch's full logits at 8 × 2,048 tokens)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each decoder layer and vision block in the backward instead of keeping its "
        "activations (HF gradient checkpointing, non-reentrant): less memory, about one more forward of time",
    )
    deterministic: bool = Field(
        True,
        description="the ranks run torch's deterministic algorithms (torch.use_deterministic_algorithms, warn only): "
        "on CPU a run repeats bit for bit, and a resumed run is the uninterrupted one (with 2 threads the default "
        "kernels of one of the backward's ops sum in a varying order). On GPUs it slows some kernels (scatter and "
        "index ops) and sets CUBLAS_WORKSPACE_CONFIG=:4096:8",
    )
    share_prompts: bool = Field(
        True,
        description="GRPO forwards run each distinct prompt (and image) of a micro-batch once and its rows' "
        "completions on its key/value cache (learner.shared): the same logits and gradients up to float rounding, "
        "two forwards per micro-batch instead of one; the train stage 2.16x faster on the embedded default, where "
        "a group's G rollouts share a prompt longer than their completions (bench loop). false: every rollout's "
        "prompt in its own sequence",
    )
    clip_low: float = Field(0.2, ge=0, lt=1, description="ratio clip below 1 (METHOD.md §4: 0.2)")
    clip_high: float = Field(0.3, ge=0, description="ratio clip above 1 (release 0.3; paper text 0.2)")
    dual_clip: float = Field(3.0, gt=1, description="dual-clip constant for negative advantages (3.0)")
    kl_coef: float = Field(
        0.01, ge=0, description="low_var_kl loss coefficient (METHOD.md §4: 0.01; 0 = off)"
    )
    kl_clamp: float = Field(10.0, gt=0, description="clamp of the k3 estimator (METHOD.md §4: 10)")
    advantage_std: Literal["unbiased", "population", "none"] = Field(
        "unbiased",
        description="group std (release: unbiased); none: advantages stay r − mean_group, as in Dr. GRPO (a group "
        "whose accuracy is uniform then weighs by its other rewards' small spread instead of ±1)",
    )
    advantage_eps: float = Field(1e-6, gt=0, description="added to the group std (METHOD.md §4: 1e-6)")
    old_logprobs: Literal["auto", "learner", "engine"] = Field(
        "auto",
        description="old (behaviour) logprobs of the ratio: learner: a forward of the weights that sampled, before "
        "the first update; engine: the sampler's own (one forward fewer per iteration, ~20% of the train time; "
        "exact only where engine and learner compute alike); auto: engine when rollout.dtype and learner.dtype "
        "are both float32, else learner. The learner–engine mismatch is logged either way (engine: from the "
        "first update's training forward)",
    )
    tis_cap: float | None = Field(
        2.0,
        ge=1,
        description="truncated importance sampling toward the sampler: each token's advantage is weighted by "
        "min(π_old / π_sampler, tis_cap), correcting for an engine that computes otherwise than the learner (bf16, "
        "other kernels); exactly 1 where the old logprobs are the sampler's own (old_logprobs=engine). Logged as "
        "train/tis_weight_mean, _max, train/tis_clipped_share. null: off (veRL's default cap: 2)",
    )
    reference_placement: Literal["learner", "none"] = Field(
        "learner", description="learner: each rank holds a frozen copy of the initial policy; none: no KL"
    )


class SftConfig(BaseModel):
    """Cold-start SFT (METHOD.md §4, "Cold-Start-Emo": a light SFT stage on a few samples, details
    unpublished). The DeepSpeed setup (num_ranks, zero_stage, dtype, micro_batch_size, weight_decay,
    grad_clip) is the learner section's; no reference policy and no KL term."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(
        16,
        ge=1,
        description="training samples with a reference response, balanced over the labels (few: RL must have "
        "something left to learn)",
    )
    epochs: int = Field(
        30, ge=1, description="passes over the examples, reshuffled each (the tiny model needs ~60 updates)"
    )
    lr: float = Field(
        1e-3, gt=0, description="AdamW learning rate of the cold start (1e-3 suits the tiny model)"
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="examples per optimizer step, split evenly over learner.num_ranks (a multiple of it)",
    )
    target: str | None = Field(
        None,
        description="manifest column of the target response: 'response' (SET reasoning) or 'response_grpo' "
        "(<think> form); None: data.columns.response for data.prompt_style=set, 'response_grpo' for grpo",
    )
    reflection_tasks: bool = Field(
        True,
        description="mix in the two reflection tasks (METHOD.md §3) so the policy can act as its own judge",
    )
    reflection_share: float = Field(
        0.5,
        ge=0,
        le=4,
        description="reflection examples per answer example: half coherence (→ label), a quarter consistency "
        "(→ yes), a quarter consistency with another label's span (→ no)",
    )
    scene_examples: int = Field(
        8,
        ge=0,
        description="per epoch, this many further training samples (new ones each epoch, cycled when too few) "
        "teach step 1 alone: task prompt → target response up to the end of the reference's scene description "
        "(<step1> of data.columns.response), no end of turn, no answer. Keeps the model's reading of images "
        "through the cold start; 0: off",
    )
    seed: int = Field(0, description="seeds the sample subset, the reflection pairs and the example order")
    output: str | None = Field(None, description="checkpoint folder; None: <run dir>/sft")
