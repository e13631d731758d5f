"""The policy's forward with each distinct prompt run once (`learner.share_prompts`).

A GRPO group's G rollouts share one prompt and image; on the embedded default the prompt is ~70%
of every training sequence. This forward runs the micro-batch's distinct prompts (vision tower
included) once, repeats their key/value cache over the rows that continue them, and runs the
completions on top of it: two forwards per micro-batch instead of one, and the same hidden states
up to float rounding. Gradients flow through the repeated cache back into the prompts' computation
(index_select sums them), so the update is the full forward's.

Layout (learner.batch.SharedPrompts): prompts are LEFT-padded to one length P, so the cache has P
positions for every row and every completion starts at cache position P; mRoPE positions come from
the model's own `get_rope_index` on the prompts, and a completion token t sits at position
(its prompt's largest position + 1 + t), as in the one-sequence layout. The completion forward
feeds all T completion columns (the last one's states are not used) so that it never has zero
tokens: every micro-batch runs exactly two forwards, which ZeRO-3's collectives need on every rank.

The cache can be replayed: with gradient checkpointing (learner.gradient_checkpointing) backward
runs each decoder layer's forward again, cache update included. The prompt forward's cache replaces a
layer's keys and values instead of appending them, and the completion forward's cache returns the
prompt's followed by the completion's without storing anything, so a replay computes what the first
pass did.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from learner.batch import MicroBatch
from learner.head import forward_hidden


class PromptLayer(DynamicLayer):
    """One decoder layer's prompt keys and values [U, heads, P, head_dim]; an update replaces them."""

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class ContinuationLayer(DynamicLayer):
    """Fixed prompt keys and values [N, heads, P, head_dim] that a completion attends to; an update
    returns them followed by the completion's own and stores nothing."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def continuation_cache(prompt_cache: Cache, index: Tensor) -> Cache:
    """The prompts' cache [U, …] repeated over the rows [N, …] (row i continues prompt index[i]), read-only."""
    return Cache(
        layers=[ContinuationLayer(layer.keys[index], layer.values[index]) for layer in prompt_cache.layers]
    )


def shared_prompt_hidden(module: Any, batch: MicroBatch) -> Tensor:
    """[N, T, H] the final hidden states predicting each completion token (completion-aligned, as
    learner.batch.completion_hidden), from a batch collated with share_prompts=True.

    `module`: the HF model, or a DeepSpeed engine around it.
    """
    prompts = batch.prompts
    if prompts is None:
        raise ValueError("the batch has no shared prompts: collate it with share_prompts=True")
    model = getattr(module, "module", module)  # the HF model under a DeepSpeed engine
    positions, _ = model.model.get_rope_index(
        prompts.input_ids,
        prompts.mm_token_type_ids,
        image_grid_thw=prompts.image_grid_thw,
        attention_mask=prompts.attention_mask,
    )  # [3, U, P]; 0 on padding
    prompt_cache = Cache(layer_class_to_replicate=PromptLayer)
    first = forward_hidden(
        module,
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=positions,
        mm_token_type_ids=prompts.mm_token_type_ids,
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
        past_key_values=prompt_cache,
        use_cache=False,  # the caches are this module's: the model need not return one
    )
    width = batch.completion_ids.shape[1]
    start = positions.amax(dim=(0, 2))[prompts.index] + 1  # [N] each row's first completion position
    completion_positions = (start[:, None] + torch.arange(width, device=start.device))[None].expand(3, -1, -1)
    rest = forward_hidden(
        module,
        input_ids=batch.completion_ids,
        attention_mask=torch.cat([prompts.attention_mask[prompts.index], batch.mask.long()], dim=1),
        position_ids=completion_positions,  # [3, N, T]
        past_key_values=continuation_cache(prompt_cache, prompts.index),
        use_cache=False,
    )
    last_prompt = first.hidden_states[-1][prompts.index, -1:]  # [N, 1, H] each row's prompt's last token
    # completion token 0 is predicted by its prompt's last state, token t > 0 by completion column t − 1
    return torch.cat([last_prompt, rest.hidden_states[-1][:, : width - 1]], dim=1)  # [N, T, H]
