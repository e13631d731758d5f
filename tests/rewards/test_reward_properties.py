"""Properties of the reward parsers and rules over arbitrary text (METHOD.md §3)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import parsing, prompts
from rewards.offline import rescore_jsonl
from rewards.rules import (
    RewardRules,
    accuracy_reward,
    coherence_reward,
    consistency_reward,
    grpo_total,
    paper_total,
    reflection_prompts,
    release_total,
    score_response,
    set_format_reward,
    strict_coherence_reward,
    strict_consistency_reward,
    think_format_reward,
)

EMOSET = prompts.LABEL_SETS["emoset"]
# Text biased towards the tokens the parsers look for, plus arbitrary unicode.
FRAGMENTS = st.sampled_from(
    [
        "<step1>",
        "</step1>",
        "<step2>",
        "</step2>",
        "<step3>",
        "</step3>",
        "<think>",
        "</think>",
        "< / ",
        "\\boxed{",
        "{",
        "}",
        "\\",
        "fear",
        "Fear.",
        "none",
        "yes",
        "no",
        " ",
        "\n",
        "<",
        ">",
        "/",
    ]
)
TEXT = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=30).map("".join))
REFLECTION = st.one_of(st.none(), TEXT)
RULES = st.builds(
    RewardRules,
    total=st.sampled_from(["release", "paper", "grpo"]),
    coherence_span=st.sampled_from(["release", "echo"]),
    strict_yes_no=st.booleans(),
    strict_label_match=st.booleans(),
)
LINE_OBJECTS = st.fixed_dictionaries(
    {"response": TEXT, "label": st.sampled_from(EMOSET)},
    optional={"coherence_reflection": REFLECTION, "consistency_reflection": REFLECTION},
).map(lambda record: json.dumps(record).encode())
MAX_SCORE = {"release": 1.1, "paper": 1.0, "grpo": 1.0}
REWARD_VALUES = (0.0, 0.5, 1.0)


@given(TEXT)
def test_parsers_never_raise_and_return_substrings(text):
    assert isinstance(parsing.normalize_whitespace(text), str)
    boxed = parsing.last_boxed(text)
    assert boxed is None or "\\boxed{" + boxed + "}" in text
    for span in (
        parsing.coherence_span(text),
        parsing.coherence_span(text, style="echo"),
        parsing.consistency_span(text),
    ):
        assert span is None or span in text


@given(TEXT)
def test_spans_start_at_step1(text):
    for span in (parsing.coherence_span(text), parsing.consistency_span(text)):
        assert span is None or span.startswith("<step1>")


@given(TEXT, TEXT)
def test_rule_rewards_are_zero_or_one(response, gold):
    for reward in (
        accuracy_reward(response, gold),
        set_format_reward(response),
        think_format_reward(response),
    ):
        assert reward in (0.0, 1.0)


@given(REFLECTION, TEXT)
def test_reflection_rewards_take_documented_values(reflection, gold):
    rewards = (
        coherence_reward(reflection, gold, EMOSET),
        strict_coherence_reward(reflection, gold, EMOSET),
        consistency_reward(reflection),
        strict_consistency_reward(reflection),
    )
    assert all(reward in REWARD_VALUES for reward in rewards)


@given(TEXT, TEXT, REFLECTION, REFLECTION, RULES)
def test_score_is_within_the_range_of_its_total(response, gold, coherence, consistency, rules):
    result = score_response(response, gold, EMOSET, coherence, consistency, rules)
    components = (result.accuracy, result.format, result.coherence, result.consistency)
    assert all(0.0 <= value <= 1.0 for value in components)
    assert 0.0 <= result.score <= MAX_SCORE[rules.total]


@given(TEXT, RULES)
def test_reflection_prompts_never_raise(response, rules):
    coherence, consistency = reflection_prompts(response, EMOSET, rules)
    assert coherence and consistency


def test_totals_reach_exactly_their_maximum_and_never_exceed_it():
    for total, maximum in ((release_total, 1.1), (paper_total, 1.0), (grpo_total, 1.0)):
        values = [
            total(a, f, c, s)
            for a, f in itertools.product((0.0, 1.0), repeat=2)
            for c, s in itertools.product(REWARD_VALUES, repeat=2)
        ]
        assert max(values) == maximum
        assert min(values) == 0.0


@settings(max_examples=50)
@given(st.lists(st.one_of(st.binary(max_size=40), TEXT.map(str.encode), LINE_OBJECTS), max_size=8))
def test_rescore_never_raises_and_accounts_for_every_nonblank_line(lines):
    with tempfile.TemporaryDirectory() as folder:
        source, sink = Path(folder, "in.jsonl"), Path(folder, "out.jsonl")
        source.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
        summary = rescore_jsonl(source, sink, RewardRules())
        written = sink.read_text(encoding="utf-8").splitlines()
    nonblank = [line for line in lines if line.replace(b"\n", b" ").decode("utf-8", "replace").strip()]
    assert summary.n_scored + summary.n_skipped == len(nonblank)
    assert len(written) == summary.n_scored
