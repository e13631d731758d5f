"""The policy's output layer on the completion tokens only, a chunk of tokens at a time.

The loss needs, per completion token, its logprob (with gradient) and the entropy of its
distribution (a metric). Computed from full-vocabulary logits, a micro-batch of 8 × 2,048 tokens
at V = 151,936 holds [N, T, V] float32 copies of 10 GB each (logits, log-softmax, softmax and their
gradients). Here the final hidden states of the M completion tokens [M, H] go through lm_head
`chunk_tokens` rows at a time: only one chunk's [chunk, V] float32 logits exist at once, in the
forward and in the backward, which recomputes them (`ChunkedLogprobs`).

Under ZeRO-3 lm_head's weight is partitioned and gathered by DeepSpeed's hooks around each call of
the lm_head module, forward and backward; those gathers are collectives, so every rank must call it
equally often. `CompletionHead` makes the chunk loop one call of the lm_head module (the same on every
rank, whatever its token count), and `install_completion_head` gives the model's own lm_head that
behaviour without changing its parameters or their names.

Pure torch: `forward_hidden` only calls the module it is given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _chunk_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    """[c, V] float32 logits of hidden [c, H]: the matmul in the model's dtype (as HF's lm_head), upcast
    for the softmax (a bf16 log-softmax over a large vocabulary loses too much precision)."""
    return torch.nn.functional.linear(hidden, weight).float()


class ChunkedLogprobs(torch.autograd.Function):
    """logprobs [M] and entropy [M] (float32) of `targets` [M] under softmax(hidden [M, H] @ weight [V, H]ᵀ).

    Forward keeps, per token, only the log-normaliser [M]; backward recomputes each chunk's logits.
    d logprob / d logits = onehot(target) − softmax(logits). The entropy has no gradient (a metric).
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int):
        size = hidden.shape[0]
        logprobs, entropy, log_norm = (hidden.new_empty(size, dtype=torch.float32) for _ in range(3))
        for start in range(0, size, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = _chunk_logits(hidden[rows], weight)  # [c, V]
            top = logits.amax(dim=-1, keepdim=True)  # [c, 1]
            probs = (logits - top).exp_()  # [c, V]: the one copy beside the logits, softmax × its sum
            total = probs.sum(dim=-1, keepdim=True)  # [c, 1]
            log_norm[rows] = (top + total.log())[:, 0]  # logsumexp
            logprobs[rows] = logits.gather(-1, targets[rows, None])[:, 0] - log_norm[rows]
            # entropy_from_logits: logsumexp(l) − Σ softmax(l)·l
            entropy[rows] = log_norm[rows] - probs.div_(total).mul_(logits).sum(dim=-1)
        ctx.save_for_backward(hidden, weight, targets, log_norm)
        ctx.chunk_tokens = chunk_tokens
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor, grad_entropy: Tensor):
        hidden, weight, targets, log_norm = ctx.saved_tensors
        chunk = ctx.chunk_tokens
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # float32 sum over the chunks (the model's dtype would round it once per chunk)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            grad = grad_logprobs[rows, None]  # [c, 1]
            grad_logits = _chunk_logits(hidden[rows], weight)  # [c, V], overwritten in place:
            grad_logits.sub_(log_norm[rows, None]).exp_().mul_(-grad)  # −g·softmax
            grad_logits.scatter_add_(1, targets[rows, None], grad)  # + g at the target
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])  # [c, H]
            if grad_weight is not None:
                _add_product(grad_weight, grad_logits.T, hidden[rows])  # [V, H]
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None


def _add_product(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b, out float32: in place when a and b are float32, else their product upcast."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out.add_(a @ b)


def chunked_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int
) -> tuple[Tensor, Tensor]:
    """logprobs [M] (with gradient to hidden and weight) and entropy [M] (detached), float32, of
    `targets` [M] after the final hidden states [M, H], through lm_head's weight [V, H] in chunks of
    `chunk_tokens` tokens."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: must be >= 1")
    if hidden.shape[:1] != targets.shape or hidden.dim() != 2:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be [M, H] with one target each, not {tuple(targets.shape)}"
        )
    return ChunkedLogprobs.apply(hidden, weight, targets.long(), chunk_tokens)


class CompletionHead(torch.nn.Linear):
    """lm_head as HF builds it (a bias-free Linear); called with `targets`, `chunked_logprobs` of them
    instead of logits, inside one call of the module (module docstring: ZeRO-3's gathers)."""

    def forward(
        self, hidden: Tensor, targets: Tensor | None = None, chunk_tokens: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        if targets is None:
            return super().forward(hidden)
        if chunk_tokens is None:
            raise ValueError("CompletionHead with targets needs chunk_tokens")
        return chunked_logprobs(hidden, self.weight, targets, chunk_tokens)


def install_completion_head(model: Any) -> None:
    """Make `model.lm_head` a CompletionHead in place: same parameters, names and logits; idempotent."""
    head = model.lm_head
    if isinstance(head, CompletionHead):
        return
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise TypeError(f"lm_head is {head!r}; the completion head replaces a bias-free torch.nn.Linear")
    head.__class__ = CompletionHead


def forward_hidden(module: Any, **inputs: Any) -> Any:
    """The model's output for `inputs` (through `module`: the HF model or its DeepSpeed engine) with
    `hidden_states[-1]`: the final, normed hidden states [B, S, H] that lm_head reads.

    transformers keeps only the requested layer's states (a list of layer indices), and lm_head itself
    runs on the last position only, whatever `inputs` say. The states are a model output, so
    DeepSpeed's backward hooks on the engine's outputs see the gradient that flows through them.
    """
    model = getattr(module, "module", module)
    last_layer = model.config.get_text_config().num_hidden_layers - 1
    return module(**{**inputs, "output_hidden_states": [last_layer], "logits_to_keep": 1})
