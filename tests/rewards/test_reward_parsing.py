"""Parsers of METHOD.md §2-§3: whitespace normalization, last box, reflection spans."""

from __future__ import annotations

import pytest

from rewards.parsing import coherence_span, consistency_span, last_boxed, normalize_whitespace

# Content written inside the tags (the instruction's own layout).
INSIDE = (
    "<step1>A child laughs at a clown.</step1>\n"
    "<step2>People would feel cheerful.</step2>\n"
    "<step3>Positive, high arousal.</step3>\n"
    "\\boxed{amusement}"
)
# Echo style: the tag lines copied verbatim, content after each closing tag (METHOD.md §2).
ECHO = (
    "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
    "A child laughs at a clown.\n"
    "<step2>Describe how a human would feel about it.</step2>\n"
    "People would feel cheerful.\n"
    "<step3>Conclude if the emotion is positive or negative, and if it's high or low arousal.</step3>\n"
    "Positive, high arousal.\n"
    "\\boxed{amusement}"
)
ECHO_NO_STEP3 = "<step1>Scene.</step1> A storm.\n<step2>Feeling.</step2> Scared people.\n\nSo: \\boxed{fear}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("< step1 >x< / step1 >", "<step1>x</step1>"),
        ("a \n/\t b", "a/b"),
        ("<step2>\n  feel  \n</step2>", "<step2>feel</step2>"),
        ("no tags here", "no tags here"),
        ("", ""),
    ],
)
def test_normalize_whitespace_removes_whitespace_around_angle_brackets_and_slash(text, expected):
    assert normalize_whitespace(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{fear}", "fear"),
        ("\\boxed{anger} then \\boxed{fear}", "fear"),  # last box wins
        ("\\boxed{\\text{awe}}", "\\text{awe}"),  # nested braces kept in the content
        ("\\boxed{a {b} c}", "a {b} c"),
        ("\\boxed{outer \\boxed{inner}}", "inner"),  # the box that starts last wins, as with rfind
        ("\\boxed{ fear }", " fear "),  # verbatim, not stripped
        ("\\boxed{}", ""),
        ("\\boxed{fear} and \\boxed{anger", "fear"),  # unclosed last box: the last complete one
        ("} stray \\boxed{joy} }", "joy"),
        ("{ \\boxed{joy}", "joy"),
    ],
)
def test_last_boxed_returns_content_of_last_complete_box(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", ["", "fear", "\\boxed{fear", "\\boxed fear}", "boxed{fear}", "\\boxed{{x}"])
def test_last_boxed_is_none_without_a_complete_box(text):
    assert last_boxed(text) is None


def test_release_coherence_span_is_step1_through_first_closing_step2_tags_included():
    assert coherence_span(INSIDE) == (
        "<step1>A child laughs at a clown.</step1>\n<step2>People would feel cheerful.</step2>"
    )


def test_release_coherence_span_drops_step2_content_of_echo_style():
    assert coherence_span(ECHO) == (
        "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
        "A child laughs at a clown.\n"
        "<step2>Describe how a human would feel about it.</step2>"
    )


def test_echo_coherence_span_keeps_step2_content_up_to_step3():
    span = coherence_span(ECHO, style="echo")
    assert span == (
        "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
        "A child laughs at a clown.\n"
        "<step2>Describe how a human would feel about it.</step2>\n"
        "People would feel cheerful."
    )


def test_echo_coherence_span_stops_before_box_when_there_is_no_step3():
    assert coherence_span(ECHO_NO_STEP3, style="echo") == (
        "<step1>Scene.</step1> A storm.\n<step2>Feeling.</step2> Scared people.\n\nSo:"
    )


def test_echo_coherence_span_runs_to_end_without_step3_or_box():
    assert coherence_span("<step1>a</step1><step2>b</step2> c \n", style="echo") == (
        "<step1>a</step1><step2>b</step2> c"
    )


def test_echo_coherence_span_equals_release_span_when_content_is_inside_tags():
    assert coherence_span(INSIDE, style="echo") == coherence_span(INSIDE, style="release")


def test_echo_coherence_span_accepts_whitespace_inside_tags_but_release_does_not():
    text = "< step1 >x</step1>< step2 >y< / step2 > z\n<step3>w</step3>"
    assert coherence_span(text) is None
    assert coherence_span(text, style="echo") == "< step1 >x</step1>< step2 >y< / step2 > z"


@pytest.mark.parametrize("style", ["release", "echo"])
@pytest.mark.parametrize(
    "text", ["", "no structure", "<step1>only step one</step1>", "<step2>x</step2><step1>y</step1>"]
)
def test_coherence_span_is_none_without_step1_followed_by_closing_step2(text, style):
    assert coherence_span(text, style=style) is None


def test_coherence_span_rejects_unknown_style():
    with pytest.raises(ValueError, match="echo"):
        coherence_span(INSIDE, style="loose")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (INSIDE, "<step1>A child laughs at a clown.</step1>\n"),
        (
            ECHO,
            "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
            "A child laughs at a clown.\n",
        ),
        ("pre <step1>a<step2>b<step2>", "<step1>a"),  # up to the first <step2>
        ("<step1>a</step1>", None),
        ("<step2>b</step2>", None),
        ("", None),
    ],
)
def test_consistency_span_is_step1_up_to_just_before_first_step2(text, expected):
    assert consistency_span(text) == expected
