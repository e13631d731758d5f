"""The policy's logprobs from hidden states through the chunked head (learner.forward.completion_logprobs)
give the loss, the gradients and the entropy of the learner's former full-logits forward, kept here as
the oracle, with both forwards (share_prompts) and with gradient checkpointing."""

import pytest
import torch
from test_batch import shared_batch

from cluster.data.images import load_image
from learner.batch import MicroBatch, collate, completion_logits, without_tokens
from learner.grpo import GrpoLossConfig, entropy_from_logits, grpo_loss, token_logprobs
from learner.sft import nll_loss

CHUNK_TOKENS = 7  # far below the micro-batch's 46 completion tokens: 7 chunks


@pytest.fixture(scope="module")
def processor(model_path):
    from learner.policy import load_processor

    return load_processor(model_path)


@pytest.fixture(scope="module")
def batches(processor):
    """share_prompts → the same rollouts collated for that forward (images, a text-only group, ragged)."""
    rollouts, shared = shared_batch(processor)
    return {False: collate(rollouts, processor, load_image), True: shared}


def load(model_path, checkpointing=False):
    """The policy's model: lm_head a CompletionHead, eval mode (learner.policy)."""
    from transformers import AutoModelForImageTextToText

    from learner.forward import enable_gradient_checkpointing
    from learner.head import install_completion_head

    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
    install_completion_head(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


# ---------------------------------------------------------------------------------------------------
# The oracle: the learner's forward before the chunked head, full-vocabulary logits [N, T, V]


def full_logits(model, batch: MicroBatch) -> torch.Tensor:
    """[N, T, V] as learner.policy computed them: the kept logits of one sequence per rollout, or
    learner.shared's two forwards on transformers' own DynamicCache."""
    if batch.prompts is None:
        return completion_logits(model(**batch.model_inputs()).logits, batch)
    prompts = batch.prompts
    positions, _ = model.model.get_rope_index(
        prompts.input_ids,
        prompts.mm_token_type_ids,
        image_grid_thw=prompts.image_grid_thw,
        attention_mask=prompts.attention_mask,
    )
    first = model(
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
    cache.reorder_cache(prompts.index)
    width = batch.completion_ids.shape[1]
    start = positions.amax(dim=(0, 2))[prompts.index] + 1
    rest = model(
        input_ids=batch.completion_ids,
        attention_mask=torch.cat([prompts.attention_mask[prompts.index], batch.mask.long()], dim=1),
        position_ids=(start[:, None] + torch.arange(width))[None].expand(3, -1, -1),
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([first.logits[prompts.index], rest.logits[:, : width - 1]], dim=1)


def full_logprobs(model, batch):
    logits = full_logits(model, batch)  # [N, T, V]
    return token_logprobs(logits, batch.completion_ids), entropy_from_logits(logits).detach()


def chunked_logprobs(model, batch):
    from learner.forward import completion_logprobs

    return completion_logprobs(model, batch, CHUNK_TOKENS)


# ---------------------------------------------------------------------------------------------------


def grpo(batch, logprobs, entropy):
    """The GRPO loss with ratios off 1 (old logprobs perturbed), clipped tokens and the KL term on."""
    gen = torch.Generator().manual_seed(1)
    old = torch.where(batch.mask, logprobs.detach() + 0.3 * torch.randn(logprobs.shape, generator=gen), 0.0)
    ref = torch.where(batch.mask, logprobs.detach() + 0.3 * torch.randn(logprobs.shape, generator=gen), 0.0)
    advantages = torch.linspace(-1.0, 1.0, len(batch.mask))
    cfg = GrpoLossConfig(kl_coef=0.1)
    return grpo_loss(logprobs, old, ref, advantages, batch.mask, batch.num_tokens, cfg, entropy=entropy)


def sft(batch, logprobs, entropy):
    return nll_loss(logprobs, batch.mask, batch.num_tokens)


def step(model, batch, forward, objective=grpo):
    """(loss, metrics, logprobs [N, T] on the mask, every parameter's gradient) of one micro-batch."""
    model.zero_grad()
    logprobs, entropy = forward(model, batch)
    loss, metrics = objective(batch, logprobs, entropy)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), metrics, logprobs.detach()[batch.mask], grads


def assert_same_step(got, want):
    loss, metrics, logprobs, grads = got
    torch.testing.assert_close(loss, want[0], rtol=1e-5, atol=1e-7)
    assert metrics.keys() == want[1].keys()
    for name, value in metrics.items():
        torch.testing.assert_close(value, want[1][name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(logprobs, want[2], rtol=1e-5, atol=1e-5)
    assert grads.keys() == want[3].keys()
    for name, grad in want[3].items():  # every parameter, the vision tower's included
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("share_prompts", [False, True])
def test_chunked_head_gives_the_full_logits_loss_gradients_and_entropy(model_path, batches, share_prompts):
    model = load(model_path)
    batch = batches[share_prompts]
    assert batch.num_tokens > 5 * CHUNK_TOKENS  # chunking really happens
    want = step(model, batch, full_logprobs)
    got = step(model, batch, chunked_logprobs)
    assert want[3].keys() == {name for name, _ in model.named_parameters()}
    assert want[1]["entropy"] > 0 and want[1]["clip_fraction"] > 0 and want[1]["kl"] > 0
    assert_same_step(got, want)


def test_sft_objective_gives_the_full_logits_nll_and_gradients(model_path, batches):
    model = load(model_path)
    batch = batches[False]
    assert_same_step(step(model, batch, chunked_logprobs, sft), step(model, batch, full_logprobs, sft))


@pytest.mark.parametrize("share_prompts", [False, True])
def test_gradient_checkpointing_recomputes_every_layer_with_the_same_loss_and_gradients(
    model_path, batches, share_prompts
):
    batch = batches[share_prompts]
    plain = step(load(model_path), batch, chunked_logprobs)
    model = load(model_path, checkpointing=True)
    calls = {"decoder": 0, "vision": 0}
    layers = {"decoder": model.model.language_model.layers[0], "vision": model.model.visual.blocks[0]}
    for name, layer in layers.items():  # a pre-hook: the replay stops once it has what the backward needs
        layer.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    checkpointed = step(model, batch, chunked_logprobs)
    forwards = 2 if share_prompts else 1
    assert calls == {"decoder": 2 * forwards, "vision": 2}  # once more each, in the backward
    assert_same_step(checkpointed, plain)
    # the modules around the checkpointed layers stay in eval mode
    assert not model.training and not model.model.language_model.norm.training


def test_a_micro_batch_without_tokens_adds_no_loss_and_no_gradient(model_path, batches):
    model = load(model_path)
    loss, metrics, logprobs, grads = step(model, without_tokens(batches[True]), chunked_logprobs)
    assert loss == 0 and logprobs.numel() == 0 and metrics["entropy"] == 0
    assert grads and all(not grad.any() for grad in grads.values())  # the backward ran, through every layer
