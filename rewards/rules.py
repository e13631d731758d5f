"""EMO-R3's reward rules (METHOD.md §3), as released, with opt-in stricter variants. Pure: stdlib only.

Components (`reward`s) are floats in [0, 1]; the weighted total is the `score`. Which total, which
format pattern and which reflection parsers apply is chosen once from a `RewardRules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, get_args

from rewards import parsing, prompts

# METHOD.md §3 (format): the whole normalized response must match
# `<step1>.*</step1>.*<step2>.*</step2>.*<step3>.*</step3>.*\boxed\{.*\}.*` (dot-all): these literals
# in this order, the first at the start, anything around them.
SET_FORMAT_LITERALS = ("<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "\\boxed{", "}")
# METHOD.md §2 (GRPO baseline): `<think>.*</think>.*\boxed{.*}.*`, the same way.
THINK_FORMAT_LITERALS = ("<think>", "</think>", "\\boxed{", "}")

# METHOD.md §3 (Total, released code): R = 0.8·acc + 0.1·R_coh + 0.1·R_cons + 0.1·format, max 1.1.
RELEASE_ACCURACY_WEIGHT = 0.8
RELEASE_COHERENCE_WEIGHT = 0.1
RELEASE_CONSISTENCY_WEIGHT = 0.1
RELEASE_FORMAT_WEIGHT = 0.1
# METHOD.md §3 (Total, paper): R = 0.8·acc + 0.1·(R_cons + R_coh)/2 + 0.1·format, max 1.0.
PAPER_ACCURACY_WEIGHT = 0.8
PAPER_REFLECTION_WEIGHT = 0.1
PAPER_FORMAT_WEIGHT = 0.1
# METHOD.md §2 (GRPO baseline): R = 0.9·accuracy + 0.1·format, max 1.0.
GRPO_ACCURACY_WEIGHT = 0.9
GRPO_FORMAT_WEIGHT = 0.1

# METHOD.md §3: reflection outcome that is neither a clear hit nor a clear miss.
UNDECIDED_REWARD = 0.5
# METHOD.md §3: reflection not run (validation, or a rollout never reflected on) counts as a hit.
NOT_RUN_REWARD = 1.0

# Strict R_cons (not in the release): "yes" / "no" as words of their own; a hyphen joins a compound
# ("yes-man", "no-one"), which is not an answer.
_STRICT_YES = re.compile(r"(?<![\w-])yes(?![\w-])")
_STRICT_NO = re.compile(r"(?<![\w-])no(?![\w-])")

TotalForm = Literal["release", "paper", "grpo"]


# ---- accuracy and format (METHOD.md §3) -------------------------------------------------------


def accuracy_reward(response: str, gold: str) -> float:
    """1.0 if the last boxed answer of the normalized response equals `gold`, else 0.0 (METHOD.md §3).

    Whitespace around `<`, `>`, `/` is removed first; the box content and `gold` are stripped of
    surrounding whitespace and compared case-insensitively. No complete box → 0.0.
    """
    answer = parsing.last_boxed(parsing.normalize_whitespace(response))
    if answer is None:
        return 0.0
    return float(answer.strip().lower() == gold.strip().lower())


def set_format_reward(response: str) -> float:
    """1.0 if the whole normalized response has the SET structure, then a box, else 0.0 (METHOD.md §3).

    Same verdict as the release's fullmatch of `SET_FORMAT_LITERALS` joined by `.*` (dot-all).
    """
    return float(_literals_in_order(parsing.normalize_whitespace(response), SET_FORMAT_LITERALS))


def think_format_reward(response: str) -> float:
    """1.0 if the whole normalized response is a <think> block, then a box, else 0.0 (METHOD.md §2).

    Same verdict as the release's fullmatch of `THINK_FORMAT_LITERALS` joined by `.*` (dot-all).
    """
    return float(_literals_in_order(parsing.normalize_whitespace(response), THINK_FORMAT_LITERALS))


def _literals_in_order(text: str, literals: Sequence[str]) -> bool:
    """Whether `text` starts with `literals[0]` and holds the others after it, in order, not overlapping.

    This decides a fullmatch of the literals joined by `.*` (dot-all) in one pass: `.*` accepts
    anything, and placing each literal at its earliest occurrence leaves the most room for the rest.
    """
    if not text.startswith(literals[0]):
        return False
    position = len(literals[0])
    for literal in literals[1:]:
        found = text.find(literal, position)
        if found < 0:
            return False
        position = found + len(literal)
    return True


# ---- reflective emotional reward (METHOD.md §3, RER) --------------------------------------------


def coherence_reward(reflection: str | None, gold: str, labels: Sequence[str] = ()) -> float:
    """R_coh as released (METHOD.md §3); `labels` is unused, accepted to share the strict signature.

    `None` (not run) → 1.0; stripped reflection empty or "none" (case-insensitive) → 0.5; equal to
    `gold` (case-insensitive, whole stripped string) → 1.0; anything else → 0.0 ("Fear." → 0.0).
    """
    if reflection is None:
        return NOT_RUN_REWARD
    answer = reflection.strip().lower()
    if answer in ("", "none"):
        return UNDECIDED_REWARD
    return float(answer == gold.strip().lower())


def strict_coherence_reward(reflection: str | None, gold: str, labels: Sequence[str] = ()) -> float:
    """R_coh with whole-word label matching (not in the release; METHOD.md §3 "known weaknesses").

    Candidates: `labels` plus `gold`, lowercased. A candidate is named when it occurs in the
    lowercased reflection as a whole word (regex `\\b<label>\\b`: "Fear." and "fear, definitely" name
    fear; "fearful" does not). `None` (not run) → 1.0. Exactly one distinct candidate named → 1.0
    if it is `gold`, else 0.0. Two or more distinct candidates named → 0.0. None named → 0.5 if the
    reflection stripped of whitespace and punctuation is empty or "none" ("None." → 0.5), else 0.0.
    """
    if reflection is None:
        return NOT_RUN_REWARD
    text = reflection.lower()
    gold_key = gold.strip().lower()
    candidates = {label.strip().lower() for label in labels} | {gold_key}
    named = {label for label in candidates if label and re.search(rf"\b{re.escape(label)}\b", text)}
    if len(named) == 1:
        return float(named == {gold_key})
    if named:
        return 0.0
    bare = re.sub(r"[\W_]+", "", text)
    return UNDECIDED_REWARD if bare in ("", "none") else 0.0


def consistency_reward(reflection: str | None) -> float:
    """R_cons as released (METHOD.md §3): substring tests on the lowercased reflection.

    `None` (not run) → 1.0; "yes" is a substring → 1.0; else "no" is a substring → 0.0 (so "none",
    "not", "cannot" count as no); else 0.5.
    """
    if reflection is None:
        return NOT_RUN_REWARD
    text = reflection.lower()
    if "yes" in text:
        return 1.0
    if "no" in text:
        return 0.0
    return UNDECIDED_REWARD


def strict_consistency_reward(reflection: str | None) -> float:
    """R_cons with whole-word yes/no (not in the release; METHOD.md §3 "known weaknesses").

    `None` (not run) → 1.0. On the lowercased reflection, "yes" and "no" count only as words of their
    own, not touching a letter, digit, underscore or hyphen ("none", "not", "cannot", "know", "the
    eyes", "yesterday", "yes-man", "no-one" say neither): only yes → 1.0, only no → 0.0, both or
    neither → 0.5.
    """
    if reflection is None:
        return NOT_RUN_REWARD
    text = reflection.lower()
    said_yes = _STRICT_YES.search(text) is not None
    said_no = _STRICT_NO.search(text) is not None
    if said_yes == said_no:
        return UNDECIDED_REWARD
    return 1.0 if said_yes else 0.0


# ---- totals (METHOD.md §3 Total, §2 GRPO baseline) ----------------------------------------------


def release_total(accuracy: float, format: float, coherence: float, consistency: float) -> float:
    """Released code: 0.8·acc + 0.1·R_coh + 0.1·R_cons + 0.1·format (max 1.1)."""
    return (
        RELEASE_ACCURACY_WEIGHT * accuracy
        + RELEASE_COHERENCE_WEIGHT * coherence
        + RELEASE_CONSISTENCY_WEIGHT * consistency
        + RELEASE_FORMAT_WEIGHT * format
    )


def paper_total(accuracy: float, format: float, coherence: float, consistency: float) -> float:
    """Paper: 0.8·acc + 0.1·(R_cons + R_coh)/2 + 0.1·format (max 1.0)."""
    return (
        PAPER_ACCURACY_WEIGHT * accuracy
        + PAPER_REFLECTION_WEIGHT * (coherence + consistency) / 2
        + PAPER_FORMAT_WEIGHT * format
    )


def grpo_total(accuracy: float, format: float, coherence: float, consistency: float) -> float:
    """GRPO baseline: 0.9·acc + 0.1·format (max 1.0); the reflection rewards are not weighted."""
    return GRPO_ACCURACY_WEIGHT * accuracy + GRPO_FORMAT_WEIGHT * format


# ---- choosing and applying the rules --------------------------------------------------------------

TotalFunction = Callable[[float, float, float, float], float]

_TOTALS: dict[str, TotalFunction] = {"release": release_total, "paper": paper_total, "grpo": grpo_total}
_FORMATS: dict[str, Callable[[str], float]] = {
    "release": set_format_reward,
    "paper": set_format_reward,
    "grpo": think_format_reward,
}
_COHERENCE_REWARDS = {False: coherence_reward, True: strict_coherence_reward}
_CONSISTENCY_REWARDS = {False: consistency_reward, True: strict_consistency_reward}
_REFLECTION_PROMPTS = {
    "release": (prompts.coherence_prompt, prompts.consistency_prompt),
    "delimited": (prompts.delimited_coherence_prompt, prompts.delimited_consistency_prompt),
}


@dataclass(frozen=True)
class RewardRules:
    """Which reward rules apply (METHOD.md §3). The defaults reproduce the released code."""

    # "release": 0.8·acc + 0.1·R_coh + 0.1·R_cons + 0.1·format (max 1.1, the released code);
    # "paper": 0.8·acc + 0.1·(R_coh + R_cons)/2 + 0.1·format (max 1.0);
    # "grpo": the baseline, 0.9·acc + 0.1·format with the <think> format, no reflection.
    total: TotalForm = "release"
    # Span the coherence reflection reads: "release" regex, or "echo" which keeps step-2 content
    # written after the closing tags (see `parsing.coherence_span`).
    coherence_span: parsing.CoherenceSpanStyle = "release"
    # Whole-word yes/no in R_cons instead of the release's substrings (see `strict_consistency_reward`).
    strict_yes_no: bool = False
    # Whole-word label match in R_coh instead of whole-string equality (see `strict_coherence_reward`).
    strict_label_match: bool = False
    # Reflection prompts: "release" pastes the span as is; "delimited" puts it between markers the
    # judge is told hold material, not instructions (see `prompts.delimit`).
    judge_prompt: prompts.ReflectionPromptForm = "release"

    def __post_init__(self) -> None:
        if self.total not in _TOTALS:
            raise ValueError(f"RewardRules.total is {self.total!r}; set it to one of {get_args(TotalForm)}")
        styles = get_args(parsing.CoherenceSpanStyle)
        if self.coherence_span not in styles:
            raise ValueError(
                f"RewardRules.coherence_span is {self.coherence_span!r}; set it to one of {styles}"
            )
        forms = get_args(prompts.ReflectionPromptForm)
        if self.judge_prompt not in forms:
            raise ValueError(f"RewardRules.judge_prompt is {self.judge_prompt!r}; set it to one of {forms}")

    @property
    def reflective(self) -> bool:
        """Whether the reflections are run and weighted (every form but the GRPO baseline)."""
        return self.total != "grpo"


@dataclass(frozen=True)
class RewardBreakdown:
    """The rewards of one rollout and their weighted total, `score`."""

    accuracy: float
    format: float
    coherence: float
    consistency: float
    score: float


# The names of a rollout's rewards and of their total, in every metric, dump and table.
REWARD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RewardBreakdown) if f.name != "score")
COMPONENTS: tuple[str, ...] = (*REWARD_NAMES, "score")


def score_response(
    response: str,
    gold: str,
    labels: Sequence[str],
    coherence_reflection: str | None,
    consistency_reflection: str | None,
    rules: RewardRules = RewardRules(),
) -> RewardBreakdown:
    """Score one rollout under `rules` (METHOD.md §3). A reflection of `None` was not run → 1.0.

    In "grpo" form the format uses the <think> pattern and coherence/consistency are reported as
    1.0 without being weighted; the reflections passed in are ignored.
    """
    accuracy = accuracy_reward(response, gold)
    format = _FORMATS[rules.total](response)
    coherence = consistency = NOT_RUN_REWARD
    if rules.reflective:
        coherence = _COHERENCE_REWARDS[rules.strict_label_match](coherence_reflection, gold, labels)
        consistency = _CONSISTENCY_REWARDS[rules.strict_yes_no](consistency_reflection)
    score = _TOTALS[rules.total](accuracy, format, coherence, consistency)
    return RewardBreakdown(accuracy, format, coherence, consistency, score)


def reflection_prompts(
    response: str, labels: Sequence[str], rules: RewardRules = RewardRules()
) -> tuple[str, str]:
    """(coherence prompt text, consistency prompt text) for one rollout (METHOD.md §3, RER).

    The coherence span follows `rules.coherence_span`, the prompt texts `rules.judge_prompt`; a missing
    span gives "Answer 'None'". The consistency prompt is sent with the rollout's image; the coherence
    prompt is text only.
    """
    coherence_prompt, consistency_prompt = _REFLECTION_PROMPTS[rules.judge_prompt]
    coherence_span = parsing.coherence_span(response, rules.coherence_span)
    consistency_span = parsing.consistency_span(response)
    return coherence_prompt(coherence_span, labels), consistency_prompt(consistency_span)
