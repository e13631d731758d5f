"""The cold-start SFT's example texts (METHOD.md §4, "Cold-Start-Emo"): which prompt teaches which
answer. The learner turns them into token ids and trains on them (learner.sft).

Tasks:

- answer: image + question + instruction (rewards.prompts.build_user_text) → the reference response;
- coherence (text only): the coherence prompt of the response's span → the gold label;
- consistency: image + the consistency prompt of the response's step-1 span → "yes"; the span of a
  sample with a different gold label with this image → "no";
- scene: image + question + instruction → the response of another training sample up to the end of
  its scene description (`scene_prefix`), no end of turn: step 1 alone, without the answer.

The reflection prompts are the judge's (rewards.rules.reflection_prompts under the run's reward
rules), so a cold start teaches the prompt form the judge will be asked in (release or delimited).
The two reflection tasks teach the small policy to act as its own judge (METHOD.md §3). Scene
examples keep the model's reading of images through the cold start: memorising the few samples'
descriptions otherwise costs a pretrained model part of its reading of new ones, and RL improves
the decision on what was read, not the reading. The few samples are dealt over the gold labels
(`balanced_subset`), so every label is seen.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from actors.types import ImageRef
from learner.config import SftConfig
from learner.sft import ANSWER, COHERENCE, CONSISTENCY, SCENE, ExampleText, SftExample, encode
from rewards.parsing import coherence_span, consistency_span
from rewards.prompts import build_user_text
from rewards.rules import RewardRules, reflection_prompts

STEP1_CLOSE = "</step1>"
YES, NO = "yes", "no"  # METHOD.md §3: the consistency judge answers yes or no
# Reflection slots cycle: coherence (→ label), consistency (own span → yes), coherence, consistency
# (another label's span → no): half coherence, a quarter each of positive and negative pairs.
REFLECTION_CYCLE = (COHERENCE, YES, COHERENCE, NO)
RELEASE_RULES = RewardRules()  # the released reward rules: the reflection prompts as released


class SftSample(Protocol):
    """What a training sample must offer (cluster.data.sample.Sample does)."""

    image: ImageRef
    question: str
    labels: tuple[str, ...]
    answer: str
    response: str | None


S = TypeVar("S", bound=SftSample)


def balanced_subset(samples: Sequence[S], n: int, rng: random.Random) -> list[S]:
    """`n` samples dealt round-robin over the gold labels (each label's samples in seeded order), so
    that even a few samples cover the label set (METHOD.md §4: align the model with the label set)."""
    by_label: dict[str, list[S]] = {}
    for sample in rng.sample(list(samples), len(samples)):
        by_label.setdefault(sample.answer, []).append(sample)
    rounds = itertools.zip_longest(*by_label.values())
    return [sample for round_ in rounds for sample in round_ if sample is not None][:n]


def example_texts(
    samples: Sequence[SftSample], cfg: SftConfig, prompt_style: str, rules: RewardRules = RELEASE_RULES
) -> list[ExampleText]:
    """One answer example per sample, then round(reflection_share × samples) reflection examples in
    the judge's prompt form (`rules`)."""
    answers = [
        ExampleText(ANSWER, build_user_text(s.question, prompt_style), s.image, _response(s)) for s in samples
    ]
    count = reflection_count(cfg, len(samples))
    if not count:
        return answers
    return answers + reflection_texts(samples, count, random.Random(cfg.seed), rules)


def reflection_count(cfg: SftConfig, samples: int) -> int:
    """Reflection slots of a cold start on `samples` samples (a slot whose response has no span is
    skipped: reflection_texts)."""
    return round(cfg.reflection_share * samples) if cfg.reflection_tasks else 0


def reflection_texts(
    samples: Sequence[SftSample], count: int, rng: random.Random, rules: RewardRules = RELEASE_RULES
) -> list[ExampleText]:
    """`count` reflection slots (REFLECTION_CYCLE) over the samples in a seeded order.

    A slot is skipped when its sample's response has no span, or (negative pair) when no sample of
    another label has one.
    """
    order = rng.sample(list(samples), len(samples))
    out = []
    for i, sample in zip(range(count), itertools.cycle(order)):
        kind = REFLECTION_CYCLE[i % len(REFLECTION_CYCLE)]
        if kind == COHERENCE:
            example = _coherence_text(sample, rules)
        else:
            source = sample if kind == YES else _other_label(sample, samples, rng)
            example = _consistency_text(sample, source, rules)
        if example is not None:
            out.append(example)
    return out


def _coherence_text(sample: SftSample, rules: RewardRules) -> ExampleText | None:
    response = _response(sample)
    if not coherence_span(response, rules.coherence_span):
        return None
    prompt, _ = reflection_prompts(response, sample.labels, rules)
    return ExampleText(COHERENCE, prompt, None, sample.answer)


def _consistency_text(sample: SftSample, source: SftSample | None, rules: RewardRules) -> ExampleText | None:
    """`sample`'s image with the step-1 span of `source`: "yes" when it is the sample itself."""
    if source is None or not consistency_span(_response(source)):
        return None
    _, prompt = reflection_prompts(_response(source), source.labels, rules)
    return ExampleText(CONSISTENCY, prompt, sample.image, YES if source is sample else NO)


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
# In token ids


def build_examples(
    samples: Sequence[SftSample],
    processor: Any,
    cfg: SftConfig,
    prompt_style: str,
    image_loader: Callable[[ImageRef], Any],
    rules: RewardRules = RELEASE_RULES,
) -> list[SftExample]:
    """Every example of `samples` (module docstring) in token ids; deterministic by cfg.seed."""
    texts = example_texts(samples, cfg, prompt_style, rules)
    return [encode(text, processor, image_loader) for text in texts]
