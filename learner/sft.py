"""Cold-start SFT (METHOD.md §4, "Cold-Start-Emo") on the learner's side: examples in token ids,
their schedule over steps and ranks, and the loss. No heavy imports: the processor is passed in. The
example texts (which prompt teaches which answer) are built on the job's side: cluster.cold_start.

An example is a prompt exactly as the rollout engine sees it (the processor's chat template, image
placeholders expanded by the processor as vLLM expands them) and the tokens the policy should write
after it: the target text + `<|im_end|>`. Tasks:

- answer: image + question + instruction (rewards.prompts.build_user_text) → the reference response;
- coherence (text only): coherence_prompt(coherence_span(response), labels) → the gold label;
- consistency: image + consistency_prompt(consistency_span(response)) → "yes"; the span of a sample
  with a different gold label with this image → "no";
- scene: image + question + instruction → the response of another training sample up to the end of
  its scene description (`scene_prefix`), no end of turn: step 1 alone, without the answer.

The two reflection tasks teach the small policy to act as its own judge (METHOD.md §3). Scene
examples keep the model's reading of images through the cold start: memorising the few samples'
descriptions otherwise costs a pretrained model part of its reading of new ones, and RL improves
the decision on what was read, not the reading. The few samples are dealt over the gold labels
(`balanced_subset`), so every label is seen. Examples become
TrainRollouts (sampler logprobs 0, advantage 0), so `learner.batch.collate` batches them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor

from actors.types import ImageRef
from learner.batch import IMAGE_PAD, MicroBatch, TrainRollout, split
from learner.grpo import token_mean_loss

END_OF_TURN = "<|im_end|>"  # the chat template's end of a message; vLLM stops on it (eos)
ANSWER, COHERENCE, CONSISTENCY, SCENE = "answer", "coherence", "consistency", "scene"

T = TypeVar("T")


@dataclass(frozen=True)
class ExampleText:
    """An example before tokenization: what the user says, with or without the image, and the target."""

    task: str
    user_text: str
    image: ImageRef | None
    target: str
    end_of_turn: bool = True  # False: a response prefix (SCENE), the model is not taught to stop after it


@dataclass(frozen=True)
class SftExample:
    """One supervised example in token ids, ready for the learner."""

    task: str  # ANSWER, COHERENCE, CONSISTENCY or SCENE
    prompt_token_ids: tuple[int, ...]  # chat-templated, image placeholders expanded
    target_token_ids: tuple[int, ...]  # target text (+ <|im_end|> unless a SCENE prefix)
    image: ImageRef | None

    def rollout(self, group_id: int) -> TrainRollout:
        """As a TrainRollout (no sampler, advantage 0), so collate builds its tensors."""
        zeros = (0.0,) * len(self.target_token_ids)
        return TrainRollout(group_id, self.prompt_token_ids, self.target_token_ids, zeros, 0.0, self.image, 0)


# -------------------------------------------------------------------------------------------------
# Tokenization


def encode(text: ExampleText, processor: Any, image_loader: Callable[[ImageRef], Any]) -> SftExample:
    """Prompt ids as the engine builds them and target ids, ending with <|im_end|> if `end_of_turn`."""
    tokenizer = processor.tokenizer
    target = tokenizer.encode(text.target, add_special_tokens=False)
    if text.end_of_turn:
        target.append(tokenizer.convert_tokens_to_ids(END_OF_TURN))
    prompt = prompt_token_ids(processor, text.user_text, text.image, image_loader)
    return SftExample(text.task, prompt, tuple(target), text.image)


def prompt_token_ids(
    processor: Any, user_text: str, image: ImageRef | None, image_loader: Callable[[ImageRef], Any]
) -> tuple[int, ...]:
    """The chat-templated prompt (user content [image, text]) through the processor, placeholders
    expanded; checks the `<|image_pad|>` count equals image_grid_thw.prod() // merge²."""
    content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
    content.append({"type": "text", "text": user_text})
    messages = [{"role": "user", "content": content}]
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [image_loader(image)] if image is not None else None
    out = processor(text=[rendered], images=images, return_tensors="pt")
    ids = out["input_ids"][0].tolist()  # [L]
    merge = int(processor.image_processor.merge_size)
    want = int(out["image_grid_thw"].prod(-1).sum()) // merge**2 if image is not None else 0
    have = ids.count(processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD))
    if have != want:
        raise ValueError(f"prompt has {have} {IMAGE_PAD} tokens, its image needs {want}")
    return tuple(ids)


# -------------------------------------------------------------------------------------------------
# Schedule: epochs → mini-batches → rank shards


def steps_per_epoch(items: int, batch_size: int) -> int:
    """Mini-batches epoch_minibatches makes of `items` items: the last one is filled up."""
    return -(-items // batch_size)


def epoch_minibatches(items: Sequence[T], batch_size: int, rng: random.Random) -> list[list[T]]:
    """`items` shuffled, in mini-batches of exactly `batch_size`: the last one is filled up with the
    epoch's first items, so every step (and every rank) runs the same number of micro-batches."""
    order = rng.sample(list(items), len(items))
    steps = steps_per_epoch(len(order), batch_size)
    padded = list(itertools.islice(itertools.cycle(order), steps * batch_size))
    return [padded[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def rank_shards(
    minibatch: Sequence[TrainRollout], num_ranks: int, micro_batches: int
) -> list[list[TrainRollout]]:
    """One shard per rank; `split(shard, micro_batches)` on the rank gives micro-batches holding
    image examples first: they are dealt round-robin over the (micro-batch, rank) slots, so every
    micro-batch has one whenever there are enough (ZeRO-3: images on one rank need them on all)."""
    slots = num_ranks * micro_batches
    if len(minibatch) < slots:
        raise ValueError(
            f"{len(minibatch)} examples cannot fill {micro_batches} micro-batches on {num_ranks} ranks"
        )
    ordered = sorted(minibatch, key=lambda r: r.image is None)  # stable: images first
    dealt = [ordered[s::slots] for s in range(slots)]  # slot s = micro m * num_ranks + rank r
    return [
        [r for m in range(micro_batches) for r in dealt[m * num_ranks + rank]] for rank in range(num_ranks)
    ]


def check_vision_alignment(shards: Sequence[Sequence[TrainRollout]], micro_batches: int) -> None:
    """ZeRO-3: micro-batch m must hold images on every rank or on none (the vision tower's gathers)."""
    for m in range(micro_batches):
        with_images = {any(r.image is not None for r in split(shard, micro_batches)[m]) for shard in shards}
        if len(with_images) > 1:
            raise ValueError(
                f"micro-batch {m} has images on some ranks only, which ZeRO-3 cannot run: raise "
                "learner.micro_batch_size, lower sft.reflection_share or use learner.zero_stage<=2"
            )


# -------------------------------------------------------------------------------------------------
# Loss


def nll_loss(
    logprobs: Tensor, mask: Tensor, global_num_tokens: int | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar token-mean negative log-likelihood of the target tokens and its detached metric.

    logprobs/mask [N, T]; summed over the micro-batches and ranks of a mini-batch it is the
    mini-batch token mean (learner.grpo.token_mean_loss).
    """
    loss = token_mean_loss(-logprobs, mask, global_num_tokens)
    return loss, {"loss": loss.detach()}


def sft_objective(
    batch: MicroBatch, logprobs: Tensor, entropy: Tensor, global_num_tokens: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy's SFT objective (learner.policy.Objective): NLL of the completion (= target) tokens."""
    return nll_loss(logprobs, batch.mask, global_num_tokens)
