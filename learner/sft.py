"""Cold-start SFT (METHOD.md §4, "Cold-Start-Emo"): examples from reference responses, their
schedule over steps and ranks, and the loss. No heavy imports: the processor is passed in.

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
from typing import Any, Protocol, TypeVar

from torch import Tensor

from actors.types import ImageRef
from learner.batch import IMAGE_PAD, MicroBatch, TrainRollout, split
from learner.config import SftConfig
from learner.grpo import token_mean_loss
from rewards.parsing import coherence_span, consistency_span
from rewards.prompts import build_user_text, coherence_prompt, consistency_prompt

END_OF_TURN = "<|im_end|>"  # the chat template's end of a message; vLLM stops on it (eos)
ANSWER, COHERENCE, CONSISTENCY, SCENE = "answer", "coherence", "consistency", "scene"
STEP1_CLOSE = "</step1>"
YES, NO = "yes", "no"  # METHOD.md §3: the consistency judge answers yes or no
# Reflection slots cycle: coherence (→ label), consistency (own span → yes), coherence, consistency
# (another label's span → no): half coherence, a quarter each of positive and negative pairs.
REFLECTION_CYCLE = (COHERENCE, YES, COHERENCE, NO)

T = TypeVar("T")


class SftSample(Protocol):
    """What a training sample must offer (cluster.data.sample.Sample does)."""

    image: ImageRef
    question: str
    labels: tuple[str, ...]
    answer: str
    response: str | None


S = TypeVar("S", bound=SftSample)


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
# Samples and example texts (pure)


def balanced_subset(samples: Sequence[S], n: int, rng: random.Random) -> list[S]:
    """`n` samples dealt round-robin over the gold labels (each label's samples in seeded order), so
    that even a few samples cover the label set (METHOD.md §4: align the model with the label set)."""
    by_label: dict[str, list[S]] = {}
    for sample in rng.sample(list(samples), len(samples)):
        by_label.setdefault(sample.answer, []).append(sample)
    rounds = itertools.zip_longest(*by_label.values())
    return [sample for round_ in rounds for sample in round_ if sample is not None][:n]


def example_texts(samples: Sequence[SftSample], cfg: SftConfig, prompt_style: str) -> list[ExampleText]:
    """One answer example per sample, then round(reflection_share × samples) reflection examples."""
    answers = [
        ExampleText(ANSWER, build_user_text(s.question, prompt_style), s.image, _response(s)) for s in samples
    ]
    count = reflection_count(cfg, len(samples))
    if not count:
        return answers
    return answers + reflection_texts(samples, count, random.Random(cfg.seed))


def reflection_count(cfg: SftConfig, samples: int) -> int:
    """Reflection slots of a cold start on `samples` samples (a slot whose response has no span is
    skipped: reflection_texts)."""
    return round(cfg.reflection_share * samples) if cfg.reflection_tasks else 0


def reflection_texts(samples: Sequence[SftSample], count: int, rng: random.Random) -> list[ExampleText]:
    """`count` reflection slots (REFLECTION_CYCLE) over the samples in a seeded order.

    A slot is skipped when its sample's response has no span, or (negative pair) when no sample of
    another label has one.
    """
    order = rng.sample(list(samples), len(samples))
    out = []
    for i, sample in zip(range(count), itertools.cycle(order)):
        kind = REFLECTION_CYCLE[i % len(REFLECTION_CYCLE)]
        if kind == COHERENCE:
            example = _coherence_text(sample)
        else:
            example = _consistency_text(sample, sample if kind == YES else _other_label(sample, samples, rng))
        if example is not None:
            out.append(example)
    return out


def _coherence_text(sample: SftSample) -> ExampleText | None:
    span = coherence_span(_response(sample))
    return (
        ExampleText(COHERENCE, coherence_prompt(span, sample.labels), None, sample.answer) if span else None
    )


def _consistency_text(sample: SftSample, source: SftSample | None) -> ExampleText | None:
    """`sample`'s image with the step-1 span of `source`: "yes" when it is the sample itself."""
    span = consistency_span(_response(source)) if source is not None else None
    if not span:
        return None
    return ExampleText(CONSISTENCY, consistency_prompt(span), sample.image, YES if source is sample else NO)


def _other_label(sample: SftSample, samples: Sequence[SftSample], rng: random.Random) -> SftSample | None:
    others = [s for s in samples if s.answer != sample.answer and consistency_span(_response(s))]
    return rng.choice(others) if others else None


def scene_prefix(target: str, description: str) -> str | None:
    """`target` up to the end of `description` in it (and a `</step1>` right after), or None when the
    description is not in it: `<step1>The scene shows ...</step1>` of a SET response,
    `<think>The scene shows ...` of a `<think>` one."""
    at = target.find(description) if description else -1
    if at < 0:
        return None
    end = at + len(description)
    if target.startswith(STEP1_CLOSE, end):
        end += len(STEP1_CLOSE)
    return target[:end]


def scene_texts(pairs: Sequence[tuple[SftSample, str]], prompt_style: str) -> list[ExampleText]:
    """One SCENE example per (sample, response prefix): the sample's task prompt → the prefix."""
    return [
        ExampleText(SCENE, build_user_text(s.question, prompt_style), s.image, prefix, end_of_turn=False)
        for s, prefix in pairs
    ]


def _response(sample: SftSample) -> str:
    if not sample.response:
        raise ValueError(f"sample {getattr(sample, 'sample_id', '?')!r} has no reference response")
    return sample.response


# -------------------------------------------------------------------------------------------------
# Tokenization


def build_examples(
    samples: Sequence[SftSample],
    processor: Any,
    cfg: SftConfig,
    prompt_style: str,
    image_loader: Callable[[ImageRef], Any],
) -> list[SftExample]:
    """Every example of `samples` (module docstring) in token ids; deterministic by cfg.seed."""
    return [encode(text, processor, image_loader) for text in example_texts(samples, cfg, prompt_style)]


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
    batch: MicroBatch, logprobs: Tensor, logits: Tensor, global_num_tokens: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy's SFT objective (learner.policy.Objective): NLL of the completion (= target) tokens."""
    return nll_loss(logprobs, batch.mask, global_num_tokens)
