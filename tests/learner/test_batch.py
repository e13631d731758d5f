"""Train batches: image-token checks, completion masks, padding, and learner/engine logprob agreement."""

import os

import pytest
import torch
from tiny_inputs import CORPUS, free_port, png

from cluster.data.images import load_image
from cluster.paths import torch_extensions_dir
from learner.batch import (
    IMAGE_PAD,
    TrainRollout,
    collate,
    completion_hidden,
    completion_logits,
    length_groups,
    micro_batches_per_step,
    num_completion_tokens,
    padded_tokens,
    rollouts_from_group,
    split,
    token_budget_split,
)


@pytest.fixture(scope="module")
def processor(model_path):
    from learner.policy import load_processor

    return load_processor(model_path)


def engine_prompt_ids(processor, image, text="what emotion does this image evoke?"):
    """Prompt ids as the engine builds them: the chat template, image placeholders expanded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = processor(text=[rendered], images=[load_image(image)], return_tensors="pt")["input_ids"]
    return ids[0].tolist()


def rollout(group_id, prompt_ids, completion, image, advantage=1.0):
    logprobs = [-0.5 - 0.1 * i for i in range(len(completion))]
    return TrainRollout(group_id, prompt_ids, completion, logprobs, advantage, image, 0)


def test_collate_pads_right_and_masks_exactly_the_completion(processor):
    big, small = png((200, 30, 30), 112), png((30, 30, 200), 56)  # 16 and 4 image tokens
    prompts = [engine_prompt_ids(processor, big), engine_prompt_ids(processor, small)]
    completions = [[40, 41, 42], [50, 51, 52, 53, 54]]
    rollouts = [
        rollout(i, p, c, im)
        for i, (p, c, im) in enumerate(zip(prompts, completions, [big, small], strict=True))
    ]
    batch = collate(rollouts, processor, load_image)
    pad = processor.tokenizer.pad_token_id
    image_pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert [p.count(image_pad) for p in prompts] == [16, 4]
    assert batch.image_grid_thw.tolist() == [[1, 8, 8], [1, 4, 4]]
    assert batch.pixel_values.shape[0] == 64 + 16
    seq_len = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    assert batch.input_ids.shape == (2, seq_len)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n = len(p) + len(c)
        assert batch.input_ids[i, :n].tolist() == p + c
        assert (batch.input_ids[i, n:] == pad).all() and batch.attention_mask[i].sum() == n
        assert batch.mask[i].tolist() == [True] * len(c) + [False] * (5 - len(c))
        assert batch.completion_ids[i, : len(c)].tolist() == c
        assert batch.sampler_logprobs[i, : len(c)].tolist() == pytest.approx(rollouts[i].sampler_logprobs)
    assert (batch.mm_token_type_ids == (batch.input_ids == image_pad)).all()
    # the kept logit at sequence position q predicts token q + 1: completion token t of row i
    first_kept = seq_len - batch.num_logits
    for i, c in enumerate(completions):
        positions = first_kept + batch.logit_index[i, : len(c)] + 1
        assert batch.input_ids[i, positions].tolist() == c
    assert batch.num_tokens == num_completion_tokens(rollouts) == 8


def test_collate_rejects_a_prompt_missing_one_image_pad(processor):
    image = png((10, 200, 10), 112)
    prompt = engine_prompt_ids(processor, image)
    image_pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    prompt.remove(image_pad)
    with pytest.raises(ValueError, match=r"group 7: image features and image tokens do not match.* 15 .* 16"):
        collate([rollout(7, prompt, [40, 41], image)], processor, load_image)


def test_collate_rejects_image_pads_in_a_text_only_prompt(processor):
    prompt = engine_prompt_ids(processor, png((10, 200, 10), 112))
    with pytest.raises(ValueError, match="group 3: image features and image tokens do not match"):
        collate([rollout(3, prompt, [40, 41], None)], processor, load_image)


def test_collate_processes_a_shared_image_once_per_rollout_in_order(processor):
    a, b = png((200, 30, 30), 112), png((30, 30, 200), 56)
    rollouts = [rollout(i, engine_prompt_ids(processor, im), [40], im) for i, im in enumerate([a, b, a])]
    batch = collate(rollouts, processor, load_image)
    assert batch.image_grid_thw.tolist() == [[1, 8, 8], [1, 4, 4], [1, 8, 8]]
    torch.testing.assert_close(batch.pixel_values[:64], batch.pixel_values[80:])


def text_prompt_ids(processor, text):
    """A text-only prompt as the engine builds it."""
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    rendered = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor.tokenizer(rendered)["input_ids"]


def shared_batch(processor):
    """Two image groups with prompts of different lengths, a text-only group, one row of a repeated
    prompt with another image (not the same prompt), completions of different lengths."""
    big, small = png((200, 30, 30), 112), png((30, 30, 200), 56)
    long_prompt = engine_prompt_ids(processor, big, CORPUS[1] + " " + CORPUS[2])
    short_prompt = engine_prompt_ids(processor, small, CORPUS[0])
    text = text_prompt_ids(processor, CORPUS[3])
    gen = torch.Generator().manual_seed(0)

    def completion(n):
        return torch.randint(20, 100, (n,), generator=gen).tolist()

    rows = [(long_prompt, big, 5), (long_prompt, big, 9), (short_prompt, small, 3), (text, None, 7)]
    rows += [(short_prompt, small, 11), (long_prompt, big, 1), (text, None, 4)]
    other = png((240, 200, 20), 56)
    rows += [(engine_prompt_ids(processor, other, CORPUS[0]), other, 6)]  # short_prompt's ids, another image
    rollouts = [rollout(i, p, completion(n), im) for i, (p, im, n) in enumerate(rows)]
    return rollouts, collate(rollouts, processor, load_image, share_prompts=True)


def test_collate_shares_each_distinct_prompt_and_image_once_left_padded(processor):
    rollouts, batch = shared_batch(processor)
    prompts = batch.prompts
    assert prompts.index.tolist() == [0, 0, 1, 2, 1, 0, 2, 3]
    firsts = [rollouts[i] for i in (0, 2, 3, 7)]
    width = max(len(r.prompt_token_ids) for r in firsts)
    assert prompts.input_ids.shape == prompts.attention_mask.shape == (4, width)
    for u, r in enumerate(firsts):  # left-padded: every prompt ends in the last column
        n = len(r.prompt_token_ids)
        assert prompts.input_ids[u, width - n :].tolist() == list(r.prompt_token_ids)
        assert prompts.attention_mask[u].tolist() == [0] * (width - n) + [1] * n
    assert prompts.image_grid_thw.tolist() == [[1, 8, 8], [1, 4, 4], [1, 4, 4]]  # the text prompt has none
    assert prompts.pixel_values.shape[0] == 64 + 16 + 16
    assert batch.to("cpu").prompts.index.tolist() == prompts.index.tolist()
    assert collate(rollouts, processor, load_image).prompts is None  # off unless asked


def test_shared_prompt_forward_gives_the_full_forward_hidden_states_and_gradients(model_path, processor):
    from transformers import AutoModelForImageTextToText

    from learner.head import forward_hidden
    from learner.shared import shared_prompt_hidden

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    _, batch = shared_batch(processor)

    def hidden_and_gradients(forward):
        model.zero_grad()
        hidden = forward()  # [N, T, H]
        logprobs = torch.log_softmax(model.lm_head(hidden), -1).gather(-1, batch.completion_ids[..., None])[
            ..., 0
        ]
        (logprobs * batch.mask * torch.linspace(-1, 1, len(batch.mask))[:, None]).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = hidden_and_gradients(
        lambda: completion_hidden(forward_hidden(model, **batch.model_inputs()).hidden_states[-1], batch)
    )
    shared, shared_grads = hidden_and_gradients(lambda: shared_prompt_hidden(model, batch))
    assert shared.shape == full.shape == (*batch.mask.shape, model.config.text_config.hidden_size)
    assert (shared - full).abs()[batch.mask].max() < 1e-5
    assert shared_grads.keys() == full_grads.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in full_grads.items():  # every parameter, the vision tower's included
        assert (shared_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max() + 1e-9, name


def test_completion_hidden_are_lm_head_inputs_of_the_completion_logits(model_path, processor):
    from transformers import AutoModelForImageTextToText

    from learner.head import forward_hidden

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    rollouts, _ = shared_batch(processor)
    batch = collate(rollouts, processor, load_image)
    with torch.no_grad():
        logits = completion_logits(model(**batch.model_inputs()).logits, batch)  # [N, T, V]
        hidden = completion_hidden(forward_hidden(model, **batch.model_inputs()).hidden_states[-1], batch)
    torch.testing.assert_close(model.lm_head(hidden), logits, rtol=1e-5, atol=1e-5)


def test_split_gives_contiguous_near_equal_non_empty_parts():
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([1, 2], 2) == [[1], [2]]
    with pytest.raises(ValueError, match="cannot split 2 items into 3"):
        split([1, 2], 3)


def test_length_groups_sort_by_length_and_cut_where_padding_would_exceed_the_slack():
    def of(prompt, completion):
        return rollout(0, list(range(prompt)), list(range(completion)), None)

    rows = [of(196, 35), of(75, 30), of(146, 40), of(196, 30), of(75, 40), of(146, 33)]
    parts = length_groups(rows, slack=16)
    assert [[len(r.prompt_token_ids) for r in part] for part in parts] == [[75, 75], [146, 146], [196, 196]]
    assert [len(r.completion_token_ids) for r in parts[0]] == [30, 40]  # shortest first
    assert sorted(map(id, rows)) == sorted(id(r) for part in parts for r in part)  # each row once
    assert length_groups(rows, slack=200) == [
        sorted(rows, key=lambda r: len(r.prompt_token_ids) + len(r.completion_token_ids))
    ]
    assert len(length_groups(rows, slack=0)) == 6  # every length differs
    assert length_groups([], slack=4) == []
    with pytest.raises(ValueError, match="slack=-1"):
        length_groups(rows, slack=-1)


def test_micro_batches_per_step_covers_the_largest_rank_shard():
    assert micro_batches_per_step(16, 2, 4) == 2  # shards of 8 → 2 micro-batches of 4
    assert micro_batches_per_step(17, 2, 4) == 3  # shard of 9 → 3


def test_token_budget_split_keeps_order_and_fills_each_micro_batch_up_to_the_budget():
    def of(prompt, completion):
        return rollout(0, list(range(prompt)), list(range(completion)), None)

    # sequence lengths 100, 120, 90, 300, 80, 80, 80, 80
    rows = [of(60, 40), of(60, 60), of(60, 30), of(100, 200), of(40, 40), of(40, 40), of(40, 40), of(40, 40)]
    parts = token_budget_split(rows, max_tokens=320)
    # 100 + 120 → 2 × 120 = 240; + 90 → 3 × 120 = 360 > 320: cut. 300 alone (2 × 300 > 320).
    # 80 × 4 = 320 fits exactly.
    assert [[len(r.prompt_token_ids) + len(r.completion_token_ids) for r in p] for p in parts] == [
        [100, 120],
        [90],
        [300],
        [80, 80, 80, 80],
    ]
    assert [r for p in parts for r in p] == rows  # contiguous, in order, each row once
    assert [padded_tokens(p) for p in parts] == [240, 90, 300, 320]
    assert all(padded_tokens(p) <= 320 or len(p) == 1 for p in parts)
    longest = of(500, 500)  # over the budget: alone
    assert token_budget_split([of(10, 10), longest, of(10, 10)], max_tokens=100) == [
        [of(10, 10)],
        [longest],
        [of(10, 10)],
    ]


def test_token_budget_split_halves_the_largest_micro_batch_to_reach_the_agreed_count():
    def of(length):
        return rollout(0, list(range(length // 2)), list(range(length - length // 2)), None)

    rows = [of(100), of(100), of(100), of(100), of(50), of(50)]
    assert [len(p) for p in token_budget_split(rows, max_tokens=400)] == [4, 2]  # 400 and 100 tokens
    # a second rank needed 4: the largest part is halved, then the largest of the rest (the first of equals)
    assert [len(p) for p in token_budget_split(rows, max_tokens=400, min_parts=3)] == [2, 2, 2]
    assert [len(p) for p in token_budget_split(rows, max_tokens=400, min_parts=4)] == [1, 1, 2, 2]
    assert [r for p in token_budget_split(rows, 400, min_parts=6) for r in p] == rows
    with pytest.raises(ValueError, match="cannot cut 6 rollouts into 7"):
        token_budget_split(rows, max_tokens=400, min_parts=7)
    with pytest.raises(ValueError, match="max_tokens=0"):
        token_budget_split(rows, max_tokens=0)


def test_rollout_needs_one_sampler_logprob_per_token():
    with pytest.raises(ValueError, match="2 sampler logprobs for 3 completion tokens"):
        TrainRollout(1, [1, 2], [3, 4, 5], [-1.0, -1.0], 0.0, None, 0)


# ---------------------------------------------------------------------------------------------------
# The key correctness check: the learner scores the engine's samples exactly (fp32).


@pytest.mark.slow
def test_policy_logprobs_match_the_engine_sampler_logprobs(model_path, processor, monkeypatch):
    from actors.config import RolloutConfig
    from actors.engine import Engine, EngineSettings
    from actors.types import PromptRequest, SamplingSettings
    from learner.config import LearnerConfig
    from learner.rank import set_distributed_env

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv(
        "TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
    )
    engine = Engine(EngineSettings.from_rollout(RolloutConfig(kv_cache_mib=64), str(model_path)), load_image)
    images = [png((200, 30, 30), 112), png((30, 30, 200), 56), png((240, 200, 20), 84)]
    requests = [PromptRequest(i, CORPUS[i], image, seed=i) for i, image in enumerate(images)]
    groups = engine.generate(requests, SamplingSettings(n=3, max_new_tokens=24))
    rollouts = [
        r for g, im in zip(groups, images, strict=True) for r in rollouts_from_group(g, [1.0, -1.0, 0.0], im)
    ]
    assert len({len(r.prompt_token_ids) for r in rollouts}) == 3  # rows differ in prompt length

    from learner.policy import Policy

    set_distributed_env(0, 1, "127.0.0.1", free_port())
    cfg = LearnerConfig(zero_stage=2, kl_coef=0.0, micro_batch_size=9)
    policy = Policy(model_path, cfg, rank=0, world_size=1, total_micro_batches_per_step=1)
    batch = collate(rollouts, processor, load_image)
    logprobs = policy.logprobs(batch)  # [N, T]
    assert logprobs.shape == batch.mask.shape
    error = (logprobs - batch.sampler_logprobs).abs()[batch.mask]
    assert error.max() < 1e-4, f"learner vs engine logprob mismatch {error.max():.2e}"
    # the same logprobs from the model outside DeepSpeed (completion_logits is the shared gather)
    with torch.no_grad():
        logits = completion_logits(policy.engine.module(**batch.model_inputs()).logits, batch)
    plain = torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(torch.where(batch.mask, plain, 0.0), logprobs)


def test_weight_buckets_respect_the_size_limit_and_keep_every_parameter_in_order():
    import torch

    from learner.rank import buckets

    state = {f"p{i}": torch.zeros(n) for i, n in enumerate([10, 10, 30, 5, 5, 1])}  # 4 bytes each element
    parts = buckets(state, max_bytes=80)  # 20 elements per bucket
    assert [list(p) for p in parts] == [
        ["p0", "p1"],
        ["p2"],
        ["p3", "p4", "p5"],
    ]  # p2 alone: larger than the limit
    assert [name for p in parts for name in p] == list(state)
