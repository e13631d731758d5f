"""The engine never samples a vision placeholder (nor an id past the tokenizer), without a per-request
allow list: a logits processor in the engine bans them for every request."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.vision_ban import VISION_TOKENS, BanVisionTokens, banned_ids


class _Tokenizer:
    def __init__(self, ids: dict[str, int], size: int):
        self.ids, self.size = ids, size

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.ids.get(token)

    def __len__(self) -> int:
        return self.size


def test_the_banned_ids_are_the_known_placeholders_and_the_padding_rows():
    tokenizer = _Tokenizer({"<|image_pad|>": 7, "<|video_pad|>": 9, "<|vision_start|>": 3}, size=12)
    assert banned_ids(tokenizer, vocab_size=16) == [3, 7, 9, 12, 13, 14, 15]


def test_apply_sets_the_banned_columns_to_minus_infinity_for_every_row():
    processor = BanVisionTokens.__new__(BanVisionTokens)  # no engine config needed for apply
    processor.banned = torch.tensor([1, 3])
    logits = processor.apply(torch.zeros(2, 5))  # [batch, vocab]
    assert torch.isinf(logits[:, [1, 3]]).all() and (logits[:, [0, 2, 4]] == 0).all()


@pytest.mark.slow
def test_a_model_that_favours_nothing_never_samples_a_banned_id(random_init_tiny_model, tmp_path):
    from actors.config import RolloutConfig
    from actors.engine import Engine, EngineSettings
    from actors.types import PromptRequest, SamplingSettings
    from learner.policy import load_processor

    # every logit 0: sampling is uniform over the whole vocabulary, placeholders and padding rows included
    model = tmp_path / "uniform"
    shutil.copytree(random_init_tiny_model, model)
    weights = load_file(str(model / "model.safetensors"))
    head = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[head] = torch.zeros_like(weights[head])
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = load_processor(model).tokenizer
    vocab = weights[head].shape[0]
    banned = set(banned_ids(tokenizer, vocab))
    assert {tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS} <= banned
    # without the ban, 32 completions of 32 tokens would draw about 1,024 x len(banned) / vocab of them
    assert 1024 * len(banned) / vocab > 10

    engine = Engine(EngineSettings.from_rollout(RolloutConfig(kv_cache_mib=64), str(model)), lambda ref: ref)
    requests = [PromptRequest(i, "Describe the scene.", None, seed=i) for i in range(4)]
    groups = engine.generate(requests, SamplingSettings(n=8, temperature=1.0, max_new_tokens=32))
    sampled = [t for g in groups for c in g.completions for t in c.token_ids]
    assert len(sampled) > 500 and not set(sampled) & banned
