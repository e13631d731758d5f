"""Caption pretraining of the embedded tiny model: what a hub VLM brings to EMO-R3 before any emotion data.

A real policy (Qwen2.5-VL) can already see and describe an image; the cold-start SFT and RL teach it
the affective reasoning on top. A randomly initialised tiny model can do neither, and if its whole
perception had to come from the cold start's few samples, RL, whose only signal is one scalar per
rollout, would have to learn to see. Measured on the embedded task (README, "Calibrating the embedded
default"): from a random initialisation 12 RL iterations moved held-out accuracy by +3 to +4 points;
after a caption pretraining, by +14.1 points.

So the tiny build ends with a short captioning stage: synthetic images of both styles drawn with
their own seed (`cluster.embedded.corpus.PRETRAIN_SEED`: none is an image of the runs' train or test splits),
the user text "Describe the image." and as target the scene description alone (step 1 of the
reference reasoning: which sky, ground, face, object and accent are visible, never an emotion label).
Plain torch AdamW in the building process, seeded, token-mean NLL of the description tokens, linear
warmup then cosine decay (PretrainSpec). The decay matters: at the same 512 updates a constant lr left
the model reading 82% of the held-out scene cues, the decayed one 91% (README, "The embedded tiny model").
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.batch import TrainRollout, collate, completion_logits, length_groups, num_completion_tokens
from learner.grpo import token_logprobs
from learner.policy import warmup_factor
from learner.sft import ANSWER, ExampleText, encode, epoch_minibatches, nll_loss

LENGTH_SLACK = 16  # tokens of padding a row may carry in its length group (the descriptions vary by ~10)


Caption = tuple[str, str, str]  # (image path, user text, the description the model should answer)


@dataclass(frozen=True)
class PretrainSpec:
    """Caption pretraining of the tiny model (cluster.embedded.pretrain): plain AdamW, token-mean NLL, linear
    warmup then cosine decay to 0 over all updates (cluster.embedded.pretrain.pretrain_lr_factor)."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


def caption_pretrain(
    model: Any, processor: Any, captions: Sequence[Caption], spec: PretrainSpec
) -> list[dict]:
    """Train `model` in place on `captions`; returns the loss of every update."""
    from cluster.data.images import load_image

    examples = [
        encode(ExampleText(ANSWER, prompt, image, text), processor, load_image)
        for image, prompt, text in captions
    ]
    rollouts = [example.rollout(i) for i, example in enumerate(examples)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    total = spec.epochs * -(-len(rollouts) // spec.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: pretrain_lr_factor(step, total, spec.warmup_steps)
    )
    rng = random.Random(spec.seed)
    model.train()
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        for minibatch in epoch_minibatches(rollouts, spec.batch_size, rng):
            optimizer.zero_grad(set_to_none=True)
            loss = _accumulate(model, processor, minibatch, load_image)
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            lr = schedule.get_last_lr()[0]
            optimizer.step()
            schedule.step()
            history.append({"update": len(history), "epoch": epoch, "loss": loss, "lr": lr})
        losses = [h["loss"] for h in history if h["epoch"] == epoch]
        print(
            f"tiny model caption pretraining: epoch {epoch + 1}/{spec.epochs}, loss {sum(losses) / len(losses):.4f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    model.eval()
    return history


def _accumulate(model: Any, processor: Any, minibatch: Sequence[TrainRollout], load_image: Any) -> float:
    """Backward of the mini-batch's token-mean NLL, one forward per length group (the three user
    texts differ by up to 121 tokens: collated together, a third of the tokens were padding); the
    same gradient as one forward over the whole mini-batch, up to float rounding. Returns the loss."""
    num_tokens = num_completion_tokens(minibatch)
    total = 0.0
    for part in length_groups(minibatch, LENGTH_SLACK):
        batch = collate(part, processor, load_image)
        logits = completion_logits(model(**batch.model_inputs()).logits, batch)
        loss, _ = nll_loss(token_logprobs(logits, batch.completion_ids), batch.mask, num_tokens)
        loss.backward()
        total += float(loss.detach())
    return total


def pretrain_lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr multiplier of update `step` (0-based) of `total_steps`: the learner's linear warmup, then
    cosine to 0."""
    return warmup_factor(warmup_steps, step) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
