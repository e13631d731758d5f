"""The chunked output layer (learner.head) against full-vocabulary logits: values, gradients, memory."""

import pytest
import torch

from learner.grpo import entropy_from_logits, token_logprobs
from learner.head import CompletionHead, chunked_logprobs, install_completion_head

M, H, V = 23, 16, 50  # tokens, hidden size, vocabulary


def inputs(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, H, generator=gen).to(dtype).requires_grad_()  # logits of std 4, up to ~15
    weight = torch.randn(V, H, generator=gen).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (M,), generator=gen)
    return hidden, weight, targets


def full_vocabulary(hidden, weight, targets):
    """The oracle: logits [M, V] of the whole batch, float32 log-softmax and softmax (learner.grpo)."""
    logits = hidden @ weight.T  # [M, V]
    return token_logprobs(logits[None], targets[None])[0], entropy_from_logits(logits[None])[0].detach()


def gradients(logprobs, hidden, weight):
    """d Σ c_i·logprob_i / d (hidden, weight) with token weights c of both signs."""
    coefficients = torch.linspace(-1.0, 2.0, logprobs.shape[0])
    return torch.autograd.grad((logprobs * coefficients).sum(), (hidden, weight))


@pytest.mark.parametrize("chunk_tokens", [1, 7, M, 1000])
def test_chunked_logprobs_entropy_and_gradients_equal_the_full_vocabulary_ones(chunk_tokens):
    hidden, weight, targets = inputs()
    want_logprobs, want_entropy = full_vocabulary(hidden, weight, targets)
    logprobs, entropy = chunked_logprobs(hidden, weight, targets, chunk_tokens)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-6, atol=1e-6)
    # logsumexp(l) − Σ p·l cancels: float32 rounds the normaliser (~15 here) to ~1e-6 either way
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)
    assert not entropy.requires_grad
    for got, want in zip(
        gradients(logprobs, hidden, weight), gradients(want_logprobs, hidden, weight), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_weights_give_float32_logprobs_and_gradients_in_the_weights_dtype():
    hidden, weight, targets = inputs(torch.bfloat16)
    logprobs, entropy = chunked_logprobs(hidden, weight, targets, 5)
    assert logprobs.dtype == entropy.dtype == torch.float32
    grad_hidden, grad_weight = gradients(logprobs, hidden, weight)
    assert grad_hidden.dtype == grad_weight.dtype == torch.bfloat16
    # the same bf16 matmul as HF's lm_head, then float32: the full path's values
    want_logprobs, want_entropy = full_vocabulary(hidden, weight, targets)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)
    exact_hidden, exact_weight = (t.detach().double().requires_grad_() for t in (hidden, weight))
    exact = gradients(full_vocabulary(exact_hidden, exact_weight, targets)[0], exact_hidden, exact_weight)
    for got, want in zip((grad_hidden, grad_weight), exact, strict=True):
        assert (got.double() - want).abs().max() <= 0.01 * want.abs().max()  # bf16: 8 bits of mantissa


def test_no_tokens_give_empty_outputs_and_zero_gradients():
    hidden, weight, targets = inputs()
    logprobs, entropy = chunked_logprobs(hidden[:0], weight, targets[:0], 4)
    assert logprobs.shape == entropy.shape == (0,)
    grad_hidden, grad_weight = torch.autograd.grad(logprobs.sum(), (hidden, weight))
    assert not grad_hidden.any() and not grad_weight.any()


def test_the_backward_keeps_no_vocabulary_sized_tensor_per_token():
    hidden, weight, targets = inputs()
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        chunked_logprobs(hidden, weight, targets, 7)
    # the hidden states, the weight, the targets and one log-normaliser per token: nothing [M, V]
    assert sorted(saved) == sorted([(M, H), (V, H), (M,), (M,)])
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        full_vocabulary(hidden, weight, targets)
    assert (1, M, V) in saved  # the full path keeps its log-softmax


def test_completion_head_is_the_lm_head_with_the_same_parameters_and_logits():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(H, V, bias=False)
    weight = model.lm_head.weight
    hidden, _, targets = inputs()
    logits = model.lm_head(hidden)
    install_completion_head(model)
    install_completion_head(model)  # idempotent
    assert isinstance(model.lm_head, CompletionHead) and model.lm_head.weight is weight
    assert list(model.state_dict()) == ["lm_head.weight"]
    torch.testing.assert_close(model.lm_head(hidden), logits, rtol=0, atol=0)
    logprobs, _ = model.lm_head(hidden, targets, 7)
    torch.testing.assert_close(logprobs, full_vocabulary(hidden, weight, targets)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_tokens"):
        model.lm_head(hidden, targets)
    biased = torch.nn.Module()
    biased.lm_head = torch.nn.Linear(H, V)
    with pytest.raises(TypeError, match="bias-free"):
        install_completion_head(biased)


def test_chunk_size_and_shapes_are_checked():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="chunk_tokens=0"):
        chunked_logprobs(hidden, weight, targets, 0)
    with pytest.raises(ValueError, match="one target each"):
        chunked_logprobs(hidden, weight, targets[:-1], 4)
