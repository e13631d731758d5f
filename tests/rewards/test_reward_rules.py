"""Reward rules of METHOD.md §2-§3, table-driven; expectations computed by hand."""

from __future__ import annotations

import pytest

from rewards import prompts
from rewards.rules import (
    RewardBreakdown,
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
SET_RESPONSE = (
    "<step1>A dark alley at night.</step1>\n"
    "<step2>One would feel uneasy.</step2>\n"
    "<step3>Negative, high arousal.</step3>\n"
    "\\boxed{fear}"
)
ECHO_RESPONSE = (
    "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
    "A dark alley at night.\n"
    "<step2>Describe how a human would feel about it.</step2>\n"
    "One would feel uneasy.\n"
    "<step3>Conclude if the emotion is positive or negative, and if it's high or low arousal.</step3>\n"
    "Negative, high arousal.\n"
    "\\boxed{fear}"
)
THINK_RESPONSE = "<think>dark alley, uneasy</think> \\boxed{fear}"


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("\\boxed{fear}", "fear", 1.0),
        ("\\boxed{Fear}", "fear", 1.0),  # case-insensitive
        ("\\boxed{  fear\n}", "fear", 1.0),  # stripped
        ("\\boxed{fear}", " Fear ", 1.0),
        ("\\boxed{anger} \\boxed{fear}", "fear", 1.0),  # last box wins
        ("\\boxed{fear} \\boxed{anger}", "fear", 0.0),
        ("\\boxed{\\text{fear}}", "fear", 0.0),  # nested braces kept: not the label
        ("\\boxed{fear.}", "fear", 0.0),
        ("fear", "fear", 0.0),  # no box
        ("\\boxed{fear", "fear", 0.0),  # unclosed box is no box
        ("\\boxed{awe} then \\boxed{fear", "awe", 1.0),  # last complete box
        ("\\boxed{fear < / b}", "fear</b", 1.0),  # normalized before the box is read
        (SET_RESPONSE, "fear", 1.0),
    ],
)
def test_accuracy_compares_last_boxed_answer_with_gold(response, gold, expected):
    assert accuracy_reward(response, gold) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (SET_RESPONSE, 1.0),
        (ECHO_RESPONSE, 1.0),
        ("< step1 >a< / step1 >< step2 >b</step2 ><step3>c</ step3>\\boxed{x}", 1.0),  # normalized
        ("<step1>a</step1>x<step2>b</step2>y<step3>c</step3>z\\boxed{x} outro", 1.0),
        ("\n  <step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{x}", 1.0),  # leading space normalized
        ("intro <step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{x}", 0.0),  # whole response
        ("<step1></step1><step2></step2><step3></step3>\\boxed{}", 1.0),
        ("<step1>a</step1><step2>b</step2>\\boxed{x}", 0.0),  # step3 missing
        ("<step1>a</step1><step2>b</step2><step3>c</step3>", 0.0),  # box missing
        ("\\boxed{x}<step1>a</step1><step2>b</step2><step3>c</step3>", 0.0),  # box before steps
        ("<step2>b</step2><step1>a</step1><step3>c</step3>\\boxed{x}", 0.0),  # out of order
        (THINK_RESPONSE, 0.0),
    ],
)
def test_set_format_requires_three_steps_then_box(response, expected):
    assert set_format_reward(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (THINK_RESPONSE, 1.0),
        ("< think >a\nb< / think >\n\\boxed{x}\n", 1.0),
        ("<think>a</think>", 0.0),
        ("\\boxed{x}<think>a</think>", 0.0),
        (SET_RESPONSE, 0.0),
    ],
)
def test_think_format_requires_think_block_then_box(response, expected):
    assert think_format_reward(response) == expected


@pytest.mark.parametrize(
    ("reflection", "expected"),
    [
        (None, 1.0),  # not run
        ("", 0.5),
        ("  \n", 0.5),
        ("None", 0.5),
        (" NONE ", 0.5),
        ("None.", 0.0),  # release: whole-string match only
        ("fear", 1.0),
        ("  Fear\n", 1.0),
        ("Fear.", 0.0),  # the trailing-period weakness, kept
        ("fear, definitely", 0.0),
        ("anger", 0.0),
        ("fearful", 0.0),
    ],
)
def test_release_coherence_is_whole_string_label_match(reflection, expected):
    assert coherence_reward(reflection, "fear", EMOSET) == expected


@pytest.mark.parametrize(
    ("reflection", "expected"),
    [
        (None, 1.0),
        ("", 0.5),
        ("None", 0.5),
        ("None.", 0.5),
        ("'none'", 0.5),
        ("fear", 1.0),
        ("Fear.", 1.0),
        ("fear, definitely", 1.0),
        ("The emotion is FEAR", 1.0),
        ("fear or sadness", 0.0),  # two labels named
        ("Fear. Not anger.", 0.0),
        ("anger", 0.0),
        ("fearful", 0.0),  # whole word only
        ("awesome", 0.0),  # not "awe"
        ("happy", 0.0),
        ("fear fear", 1.0),  # one distinct label
    ],
)
def test_strict_coherence_matches_one_label_as_whole_word(reflection, expected):
    assert strict_coherence_reward(reflection, "fear", EMOSET) == expected


def test_strict_coherence_counts_gold_even_outside_label_set():
    assert strict_coherence_reward("Joy!", "joy", EMOSET) == 1.0
    assert strict_coherence_reward("joy and awe", "joy", EMOSET) == 0.0


@pytest.mark.parametrize(
    ("reflection", "expected"),
    [
        (None, 1.0),
        ("yes", 1.0),
        ("Yes.", 1.0),
        ("YES, and no", 1.0),  # yes is tested first
        ("eyes", 1.0),  # substring
        ("no", 0.0),
        ("No.", 0.0),
        ("none", 0.0),  # substring weakness, kept
        ("not really", 0.0),
        ("I cannot tell", 0.0),
        ("", 0.5),
        ("maybe", 0.5),
    ],
)
def test_release_consistency_uses_yes_then_no_substrings(reflection, expected):
    assert consistency_reward(reflection) == expected


@pytest.mark.parametrize(
    ("reflection", "expected"),
    [
        (None, 1.0),
        ("yes", 1.0),
        ("Yes, it can.", 1.0),
        ("No.", 0.0),
        ("no, it cannot", 0.0),
        ("none", 0.5),
        ("not really", 0.5),
        ("I cannot tell", 0.5),
        ("I don't know", 0.5),
        ("eyes", 0.5),
        ("the eyes", 0.5),
        ("yesterday", 0.5),
        ("yes-man", 0.5),  # a hyphen joins a compound word: not an answer
        ("no-one can tell", 0.5),
        ("Yes - it can", 1.0),
        ("yes/no", 0.5),  # both
        ("yes and no", 0.5),  # both
        ("", 0.5),
        ("Yes, nothing is off", 1.0),
    ],
)
def test_strict_consistency_uses_whole_word_yes_and_no(reflection, expected):
    assert strict_consistency_reward(reflection) == expected


@pytest.mark.parametrize(
    ("components", "release", "paper", "grpo"),
    [
        # (acc, fmt, coh, cons): release 0.8a+0.1c+0.1s+0.1f; paper 0.8a+0.05(c+s)+0.1f; grpo 0.9a+0.1f
        ((1, 1, 1, 1), 1.1, 1.0, 1.0),
        ((1, 1, 1, 0), 1.0, 0.95, 1.0),
        ((1, 0, 0.5, 0.5), 0.9, 0.85, 0.9),
        ((0, 1, 1, 1), 0.3, 0.2, 0.1),
        ((0, 1, 0.5, 0), 0.15, 0.125, 0.1),
        ((0, 0, 0, 0), 0.0, 0.0, 0.0),
    ],
)
def test_totals_weight_components_as_in_method(components, release, paper, grpo):
    assert release_total(*components) == pytest.approx(release)
    assert paper_total(*components) == pytest.approx(paper)
    assert grpo_total(*components) == pytest.approx(grpo)


def test_score_response_release_default_weights_reflections_separately():
    result = score_response(SET_RESPONSE, "fear", EMOSET, "fear", "no")
    assert result == RewardBreakdown(accuracy=1.0, format=1.0, coherence=1.0, consistency=0.0, score=1.0)


def test_score_response_paper_averages_reflections():
    result = score_response(SET_RESPONSE, "fear", EMOSET, "fear", "no", RewardRules(total="paper"))
    assert result.score == pytest.approx(0.95)


def test_score_response_without_reflections_counts_them_as_one():
    result = score_response(SET_RESPONSE, "anger", EMOSET, None, None)
    assert (result.accuracy, result.coherence, result.consistency) == (0.0, 1.0, 1.0)
    assert result.score == pytest.approx(0.3)  # 0.1 coh + 0.1 cons + 0.1 fmt


def test_score_response_grpo_uses_think_format_and_ignores_reflections():
    rules = RewardRules(total="grpo")
    think = score_response(THINK_RESPONSE, "fear", EMOSET, "anger", "no", rules)
    assert think == RewardBreakdown(accuracy=1.0, format=1.0, coherence=1.0, consistency=1.0, score=1.0)
    structured = score_response(SET_RESPONSE, "fear", EMOSET, None, None, rules)
    assert (structured.format, structured.score) == (0.0, pytest.approx(0.9))


def test_score_response_strict_options_change_reflection_parsing():
    release = score_response(SET_RESPONSE, "fear", EMOSET, "Fear.", "none")
    strict_rules = RewardRules(strict_label_match=True, strict_yes_no=True)
    strict = score_response(SET_RESPONSE, "fear", EMOSET, "Fear.", "none", strict_rules)
    assert (release.coherence, release.consistency, release.score) == (0.0, 0.0, pytest.approx(0.9))
    assert (strict.coherence, strict.consistency, strict.score) == (1.0, 0.5, pytest.approx(1.05))


@pytest.mark.parametrize(
    ("field", "value"), [("total", "sum"), ("coherence_span", "loose"), ("judge_prompt", "fenced")]
)
def test_reward_rules_rejects_unknown_choices_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RewardRules(**{field: value})


def test_reward_rules_reflective_only_outside_grpo():
    assert RewardRules().reflective and RewardRules(total="paper").reflective
    assert not RewardRules(total="grpo").reflective


def test_reflection_prompts_follow_release_texts():
    coherence, consistency = reflection_prompts(SET_RESPONSE, EMOSET)
    assert coherence == (
        "<step1>A dark alley at night.</step1>\n<step2>One would feel uneasy.</step2>\n"
        "Which emotion best describes the text above?\n"
        "Answer the question using one emotional category (one word only): "
        "amusement, anger, awe, contentment, disgust, excitement, fear, sadness."
    )
    assert consistency == (
        "Can the following text describe the image?Please answer with yes or no."
        "<step1>A dark alley at night.</step1>\n"
    )


def test_reflection_prompts_echo_span_keeps_step2_content():
    release, _ = reflection_prompts(ECHO_RESPONSE, EMOSET)
    echo, _ = reflection_prompts(ECHO_RESPONSE, EMOSET, RewardRules(coherence_span="echo"))
    assert "One would feel uneasy." not in release
    assert echo.startswith("<step1>Identify")
    assert "</step2>\nOne would feel uneasy.\nWhich emotion" in echo


def test_reflection_prompts_without_spans_ask_for_none():
    assert reflection_prompts("just \\boxed{fear}", EMOSET) == ("Answer 'None'", "Answer 'None'")
