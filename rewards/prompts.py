"""Prompt texts of EMO-R3, exactly as released (METHOD.md §1-§3). Pure: stdlib only.

Every text here is a constant with a pointer to METHOD.md; builders only fill in label lists and
spans. The chat template of the model's processor wraps them later (system prompt: the model's
default).
"""

from __future__ import annotations

# METHOD.md §1: label sets, in the order the release lists them.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "emoset": ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"),
    "emotion6": ("anger", "disgust", "fear", "joy", "sadness", "surprise"),
    "webemo": ("love", "joy", "confusion", "anger", "fear", "sadness", "surprise"),
}

# METHOD.md §2: the SET instruction (odd capitalisation kept).
SET_INSTRUCTION = (
    "You First think the emotional meaning step by step, and then provide the final answer.\n"
    "\n"
    "The reasoning process MUST follow the structure below:\n"
    "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
    "<step2>Describe how a human would feel about it.</step2>\n"
    "<step3>Conclude if the emotion is positive or negative, and if it's high or low arousal.</step3>\n"
    "\n"
    "The final answer MUST BE put in \\boxed{}."
)

# METHOD.md §2: the GRPO-baseline instruction.
GRPO_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final "
    "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
    "BE put in \\boxed{}."
)

INSTRUCTIONS: dict[str, str] = {"set": SET_INSTRUCTION, "grpo": GRPO_INSTRUCTION}

# METHOD.md §3: what the judge is asked when the response has no span to reflect on.
NO_SPAN_PROMPT = "Answer 'None'"


def label_list(labels: tuple[str, ...] | list[str]) -> str:
    """'a, b, or c' as in the release's question text."""
    labels = list(labels)
    if len(labels) == 1:
        return labels[0]
    return ", ".join(labels[:-1]) + ", or " + labels[-1]


def build_question(labels: tuple[str, ...] | list[str]) -> str:
    """The dataset question (METHOD.md §1); the label list is swapped per dataset."""
    return (
        "Which emotion best describes the image? Answer the question using one emotional category: "
        f"{label_list(labels)}."
    )


def build_user_text(question: str, style: str = "set") -> str:
    """The question, a blank line, then the instruction of `style` ('set' or 'grpo')."""
    try:
        instruction = INSTRUCTIONS[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {sorted(INSTRUCTIONS)}") from None
    return f"{question}\n\n{instruction}"


def coherence_prompt(span: str | None, labels: tuple[str, ...] | list[str]) -> str:
    """Text-only coherence reflection prompt (METHOD.md §3, R_coh). The list ends without 'or'."""
    if not span:
        return NO_SPAN_PROMPT
    return (
        f"{span}\nWhich emotion best describes the text above?\n"
        f"Answer the question using one emotional category (one word only): {', '.join(labels)}."
    )


def consistency_prompt(span: str | None) -> str:
    """Image + text consistency reflection prompt (METHOD.md §3, R_cons); no space after '?', as released."""
    if not span:
        return NO_SPAN_PROMPT
    return f"Can the following text describe the image?Please answer with yes or no.{span}"
