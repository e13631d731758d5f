"""The policy's forward: logprobs and entropy of the completion tokens from the final hidden states,
through one sequence per rollout or each distinct prompt once (learner.shared), and gradient
checkpointing of that forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from learner.batch import MicroBatch, completion_hidden
from learner.head import forward_hidden
from learner.shared import shared_prompt_hidden


def completion_logprobs(module: Any, batch: MicroBatch, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """logprobs [N, T] (fp32, with gradient) of the completion tokens under `module` (the HF model with a
    CompletionHead, or its DeepSpeed engine) and their entropy [N, T] (fp32, detached); 0 on padding.

    The final hidden states at the positions that predict completion tokens [M, H] go through lm_head
    `chunk_tokens` tokens at a time (learner.head), in one call of the lm_head module on every rank.
    """
    if batch.prompts is not None:
        hidden = shared_prompt_hidden(module, batch)  # [N, T, H]
    else:
        hidden = completion_hidden(forward_hidden(module, **batch.model_inputs()).hidden_states[-1], batch)
    head = getattr(module, "module", module).lm_head
    logprobs, entropy = head(hidden[batch.mask], batch.completion_ids[batch.mask], chunk_tokens)  # [M]

    def completion_aligned(values: Tensor) -> Tensor:  # [M] → [N, T], 0 on padding
        return torch.zeros_like(batch.mask, dtype=values.dtype).masked_scatter(batch.mask, values)

    return completion_aligned(logprobs), completion_aligned(entropy)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each decoder layer and vision block of `model` in the backward instead of keeping its
    activations: HF's gradient checkpointing, non-reentrant.

    HF checkpoints a layer only in train mode, and there drops its key/value cache. The policy stays in
    eval mode (learner.policy), so the checkpointed layers alone go to train mode, where Qwen2.5-VL
    computes exactly as in eval (no dropout; checked here), and keep their cache, which learner.shared
    makes safe to replay.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if model.config.get_text_config().attention_dropout or dropouts:
        raise ValueError(
            "gradient checkpointing trains in train mode, which would turn this model's dropout on"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.train()
            layer._can_checkpoint_with_cache = True
