"""The policy's forward with each distinct prompt run once (`learner.share_prompts`).

A GRPO group's G rollouts share one prompt and image; on the embedded default the prompt is ~70%
of every training sequence. This forward runs the micro-batch's distinct prompts (vision tower
included) once, repeats their key/value cache over the rows that continue them, and runs the
completions on top of it: two forwards per micro-batch instead of one, and the same logits up to
float rounding. Gradients flow through the repeated cache back into the prompts' computation
(index_select sums them), so the update is the full forward's.

Layout (learner.batch.SharedPrompts): prompts are LEFT-padded to one length P, so the cache has P
positions for every row and every completion starts at cache position P; mRoPE positions come from
the model's own `get_rope_index` on the prompts, and a completion token t sits at position
(its prompt's largest position + 1 + t), as in the one-sequence layout. The completion forward
feeds all T completion columns (the last one's logits are not used) so that it never has zero
tokens: every micro-batch runs exactly two forwards, which ZeRO-3's collectives need on every rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from learner.batch import MicroBatch


def shared_prompt_logits(module: Any, batch: MicroBatch) -> Tensor:
    """[N, T, V] the logits predicting each completion token (completion-aligned, as
    learner.batch.completion_logits), from a batch collated with share_prompts=True.

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
    first = module(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=positions,
        mm_token_type_ids=prompts.mm_token_type_ids,
        pixel_values=prompts.pixel_values,
        image_grid_thw=prompts.image_grid_thw,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = first.past_key_values
    cache.reorder_cache(prompts.index)  # [U, …] → [N, …]: row i gets its prompt's keys and values
    width = batch.completion_ids.shape[1]
    start = positions.amax(dim=(0, 2))[prompts.index] + 1  # [N] each row's first completion position
    completion_positions = (start[:, None] + torch.arange(width, device=start.device))[None].expand(3, -1, -1)
    rest = module(
        input_ids=batch.completion_ids,
        attention_mask=torch.cat([prompts.attention_mask[prompts.index], batch.mask.long()], dim=1),
        position_ids=completion_positions,  # [3, N, T]
        past_key_values=cache,
        use_cache=True,
    )
    # completion token 0 is predicted by its prompt's last logit, token t > 0 by completion column t − 1
    return torch.cat([first.logits[prompts.index], rest.logits[:, : width - 1]], dim=1)  # [N, T, V]
