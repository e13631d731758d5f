"""A vLLM logits processor that bans the vision placeholders for every request of an engine.

The policy must never generate an image or video placeholder: one in a completion would make the
learner's forward fail ("image features and image tokens do not match", LESSONS.md). Passing each
request an allow list of every other id costs a list the size of the vocabulary per request (151,931
ids for Qwen2.5-VL); this processor instead sets the banned ids' logits to -inf once per step, for the
whole batch. It also bans the rows of the embedding matrix past the tokenizer (they decode to nothing).
vLLM loads it by name in its engine process (`LLM(logits_processors=[BAN_VISION_TOKENS])`), so it
works across the multiprocess engine boundary. vLLM's logprobs are of the raw logits, so the
sampler's logprobs are unchanged by it (and match the learner's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

if TYPE_CHECKING:
    from vllm.config import VllmConfig

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
BAN_VISION_TOKENS = f"{__name__}:BanVisionTokens"


def banned_ids(tokenizer, vocab_size: int) -> list[int]:
    """The vision placeholders the tokenizer knows, and every id past the tokenizer's last."""
    known = {tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    placeholders = {i for i in known if isinstance(i, int) and 0 <= i < vocab_size}
    return sorted(placeholders | set(range(len(tokenizer), vocab_size)))


class BanVisionTokens(LogitsProcessor):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, trust_remote_code=model.trust_remote_code)
        self.banned = torch.tensor(
            banned_ids(tokenizer, model.get_vocab_size()), dtype=torch.long, device=device
        )

    def is_argmax_invariant(self) -> bool:
        return False  # a banned id can be the argmax of an untrained model

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass  # the same ids for every request

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits.index_fill_(1, self.banned, float("-inf"))  # [batch, vocab]
        return logits
