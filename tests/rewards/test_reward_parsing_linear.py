"""Parsers that read model output (METHOD.md §2-§3): same verdicts as the release, in linear time.

The release decides the format with a fullmatch of `.*`-joined literals and finds the reflection spans
with lazy `.*?` searches; on adversarial responses these backtrack for seconds to years (numbers in
docs/rewards.md). The rewrites must give exactly the release's verdicts and spans on every input: its
regexes are kept here as the oracle. Then adversarial responses of the maximum length must be parsed
within a deadline the release's code overruns by orders of magnitude (no timing is asserted).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rewards import parsing, prompts
from rewards.rules import (
    RewardRules,
    accuracy_reward,
    reflection_prompts,
    score_response,
    set_format_reward,
    strict_coherence_reward,
    strict_consistency_reward,
    think_format_reward,
)

# ---- the release's regexes: the oracle (METHOD.md §2-§3) ----------------------------------------

RELEASE_TAG_WHITESPACE = re.compile(r"\s*(<|>|/)\s*")
RELEASE_SET_FORMAT = re.compile(
    r"<step1>.*</step1>.*<step2>.*</step2>.*<step3>.*</step3>.*\\boxed\{.*\}.*", re.DOTALL
)
RELEASE_THINK_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
RELEASE_COHERENCE_SPAN = re.compile(r"(<step1>.*?</step2>)", re.DOTALL)
RELEASE_CONSISTENCY_SPAN = re.compile(r"(<step1>.*?)(?=<step2>)", re.DOTALL)
# The "echo" span as first written (not in the release), with the same lazy `.*?`.
ECHO_HEAD = re.compile(r"<\s*step1\s*>.*?<\s*/\s*step2\s*>", re.DOTALL)
ECHO_STOP = re.compile(r"<\s*step3\s*>|\\boxed\{")


def release_normalize_whitespace(text: str) -> str:
    return RELEASE_TAG_WHITESPACE.sub(r"\1", text)


def release_set_format(response: str) -> float:
    return float(RELEASE_SET_FORMAT.fullmatch(release_normalize_whitespace(response)) is not None)


def release_think_format(response: str) -> float:
    return float(RELEASE_THINK_FORMAT.fullmatch(release_normalize_whitespace(response)) is not None)


def release_coherence_span(response: str) -> str | None:
    match = RELEASE_COHERENCE_SPAN.search(response)
    return match.group(1) if match else None


def release_consistency_span(response: str) -> str | None:
    match = RELEASE_CONSISTENCY_SPAN.search(response)
    return match.group(1) if match else None


def regex_echo_coherence_span(response: str) -> str | None:
    head = ECHO_HEAD.search(response)
    if head is None:
        return None
    stop = ECHO_STOP.search(response, head.end())
    end = stop.start() if stop else len(response)
    return head.group() + response[head.end() : end].rstrip()


# ---- same verdicts and spans on short inputs ---------------------------------------------------------

SET_LITERALS = ("<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "\\boxed{", "}")
THINK_LITERALS = ("<think>", "</think>", "\\boxed{", "}")
# Tag fragments, tags with whitespace inside, the characters normalization looks at, several kinds of
# whitespace (\x1c and \u2003 are whitespace to `\s` too), box openings, braces, letters.
FRAGMENTS = st.sampled_from(
    [
        *SET_LITERALS,
        *THINK_LITERALS,
        "< step1 >",
        "< / step2 >",
        "<\tstep3\n>",
        "</ step1",
        "step1",
        "step2",
        "step",
        "think",
        "boxed",
        "<",
        ">",
        "/",
        "</",
        "\\",
        "{",
        "}",
        " ",
        "  ",
        "\n",
        "\t",
        "\u00a0",
        "\u2003",
        "\x1c",
        "a",
        "b",
        "fear",
    ]
)
FILLER = st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=4).map("".join)
TEXT = st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=40).map("".join)


def skeleton(literals: tuple[str, ...]) -> st.SearchStrategy[str]:
    """The literals in order, each kept or dropped, with filler around them: near-misses and hits."""
    n = len(literals)

    def join(keep: list[bool], fill: list[str]) -> str:
        return fill[0] + "".join(lit * k + f for lit, k, f in zip(literals, keep, fill[1:], strict=True))

    keeps = st.lists(st.sampled_from([True] * 7 + [False]), min_size=n, max_size=n)
    fillers = st.lists(st.one_of(st.sampled_from(["", " \n"]), FILLER), min_size=n + 1, max_size=n + 1)
    return st.builds(join, keeps, fillers)


RESPONSES = st.one_of(TEXT, skeleton(SET_LITERALS), skeleton(THINK_LITERALS))


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("  \n x \t / y  ")
@example("a \u2003 b\x1c<")
def test_normalize_whitespace_matches_the_release_regex(text):
    assert parsing.normalize_whitespace(text) == release_normalize_whitespace(text)


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("<step1></step1><step2></step2><step3></step3>\\boxed{}")
@example("<step1></step1><step2></step2><step3></step3>\\boxed}")
@example(" <step1>< /step1><step2></step2><step3></step3>\\boxed{ }x")
def test_set_format_matches_the_release_fullmatch(response):
    assert set_format_reward(response) == release_set_format(response)


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("<think></think>\\boxed{}")
@example("<think></think>}\\boxed{")
def test_think_format_matches_the_release_fullmatch(response):
    assert think_format_reward(response) == release_think_format(response)


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("<step1></step2>")
@example("<step1></step2></step2>")
@example("<step1><step1>x</step2>")
def test_release_coherence_span_matches_the_release_regex(response):
    assert parsing.coherence_span(response) == release_coherence_span(response)


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("< step1 >< /step2 > x \n<step3>")
@example("<step1 >a< / step2>\\boxed{b}")
def test_echo_coherence_span_matches_its_regex(response):
    assert parsing.coherence_span(response, style="echo") == regex_echo_coherence_span(response)


@settings(max_examples=500, deadline=None)  # the release's regexes are the slow part
@given(RESPONSES)
@example("<step1><step2>")
@example("<step2><step1>a<step2>")
def test_consistency_span_matches_the_release_regex(response):
    assert parsing.consistency_span(response) == release_consistency_span(response)


# ---- adversarial responses of the maximum length -----------------------------------------------------

# The GPU recipe caps responses at 2,048 tokens (METHOD.md §4); a token can be several characters,
# so 64 KiB of characters bounds a response. At that length the release's format checks take years,
# but its quadratic parsers only seconds; at 1 MiB they take 8 to 90 minutes, so each case also runs
# at 1 MiB. DEADLINE_S is ample on a slow 2-core machine for the linear parsers (milliseconds).
MAX_RESPONSE_CHARS = 64 * 1024
STRESS_CHARS = 1024 * 1024
DEADLINE_S = 10
LENGTHS = pytest.mark.parametrize("size", [MAX_RESPONSE_CHARS, STRESS_CHARS])
SET_BLOCK = "<step1>a</step1><step2>b</step2><step3>c</step3>"
EMOSET = prompts.LABEL_SETS["emoset"]
HARDENED = RewardRules(
    coherence_span="echo", strict_yes_no=True, strict_label_match=True, judge_prompt="delimited"
)


def repeat(unit: str, size: int) -> str:
    """`unit` repeated to at least `size` characters."""
    return unit * (size // len(unit) + 1)


# Each: (name, build(size) -> response, SET format, <think> format). The release's time at 64 KiB
# was measured or extrapolated from smaller sizes on a 2-core machine.
FORMAT_CASES = [
    # Repeated step blocks, no box: the release's fullmatch grows as n^5.5 (13 s at 4 KB; years).
    ("blocks without box", lambda size: repeat(SET_BLOCK, size), 0.0, 0.0),
    ("blocks on lines without box", lambda size: repeat(SET_BLOCK + "\n", size), 0.0, 0.0),
    # Every literal but the closing brace, repeated (3 s at 2 KB; years).
    (
        "all but the closing brace",
        lambda size: "<step1>" + repeat("</step1><step2></step2><step3></step3>\\boxed{", size),
        0.0,
        0.0,
    ),
    ("the same, closed at the end", lambda size: repeat(SET_BLOCK + "\\boxed{", size) + "}", 1.0, 0.0),
    # <think> version (1.7 s at 16 KB, about a minute at 64 KB).
    ("think blocks, open boxes", lambda size: "<think>" + repeat("</think>\\boxed{", size), 0.0, 0.0),
    ("think blocks, closed at the end", lambda size: repeat("<think></think>\\boxed{", size) + "}", 0.0, 1.0),
    # A huge whitespace run between words: the release's normalization alone is quadratic (21 s at 64 KiB).
    (
        "whitespace run inside step 1",
        lambda size: SET_BLOCK.replace("a", "a" + " " * size + "a") + "\\boxed{x}",
        1.0,
        0.0,
    ),
    ("whitespace run inside think", lambda size: "<think>a" + "\n" * size + "b</think>\\boxed{x}", 0.0, 1.0),
]


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
@pytest.mark.parametrize(("name", "build", "set_format", "think_format"), FORMAT_CASES)
def test_format_verdicts_on_adversarial_responses(name, build, set_format, think_format, size):
    response = build(size)
    assert len(response) >= size
    assert set_format_reward(response) == set_format
    assert think_format_reward(response) == think_format


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
def test_spans_of_many_step1_without_step2(size):
    # The release's lazy searches restart at every <step1> and scan to the end: 2-4 s at 64 KiB.
    for response in (repeat("<step1>", size), repeat("<step1> x </step1>", size), repeat("< step1 >", size)):
        assert parsing.coherence_span(response) is None
        assert parsing.coherence_span(response, style="echo") is None
        assert parsing.consistency_span(response) is None


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
def test_spans_of_many_step1_closed_at_the_end(size):
    opened = repeat("<step1>", size)
    assert parsing.coherence_span(opened + "</step2>") == opened + "</step2>"
    assert parsing.coherence_span(opened + "< / step2 > tail", style="echo") == opened + "< / step2 > tail"
    assert parsing.consistency_span(opened + "<step2>") == opened


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
def test_normalize_whitespace_on_huge_whitespace_runs(size):
    run = " \n\t" * (size // 3)
    assert parsing.normalize_whitespace(run + "x") == run + "x"  # not around a tag character: kept
    assert parsing.normalize_whitespace("x" + run + "<" + run + "y") == "x<y"
    assert parsing.normalize_whitespace(run + "/") == "/"
    assert accuracy_reward(run + "\\boxed{fear}" + run, "fear") == 1.0


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
def test_last_boxed_on_nested_unclosed_braces(size):
    assert parsing.last_boxed(repeat("\\boxed{", size) + "fear") is None
    assert parsing.last_boxed(repeat("{", size) + "\\boxed{fear}") == "fear"
    assert parsing.last_boxed("\\boxed{fear}" + repeat("\\boxed{", size)) == "fear"
    assert parsing.last_boxed(repeat("}", size) + "\\boxed{joy}" + repeat("}", size)) == "joy"


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
def test_strict_reflection_rules_on_huge_reflections(size):
    # Reflections are short when generated, but offline rescoring reads them from any file.
    assert strict_coherence_reward(repeat("fearful ", size), "fear", EMOSET) == 0.0
    assert strict_coherence_reward(" " * size + "Fear.", "fear", EMOSET) == 1.0
    assert strict_coherence_reward(repeat("!_ ", size) + "None", "fear", EMOSET) == 0.5
    assert strict_consistency_reward(repeat("yes-", size) + "eyes") == 0.5
    assert strict_consistency_reward(repeat("- ", size) + "no") == 0.0
    assert strict_consistency_reward(repeat("the eyes ", size) + "Yes.") == 1.0


ADVERSARIAL = [(name, build) for name, build, _, _ in FORMAT_CASES] + [
    ("step1 repeated", lambda size: repeat("<step1>", size)),
    ("echo tags, whitespace tail", lambda size: repeat("< step1 >", size) + "< / step2 >" + " " * size),
    ("boxes never closed", lambda size: repeat("\\boxed{", size)),
    (
        "marker name near-misses",
        lambda size: "<step1>" + repeat("text to ", size) + repeat("_judge", size) + "<step2>",
    ),
    ("marker name split by a whitespace run", lambda size: "<step1>text" + " " * size + "to<step2></step2>"),
]


@pytest.mark.timeout(DEADLINE_S)
@LENGTHS
@pytest.mark.parametrize(("name", "build"), ADVERSARIAL)
@pytest.mark.parametrize("rules", [RewardRules(), HARDENED], ids=["release", "hardened"])
def test_reward_pipeline_on_adversarial_responses(name, build, rules, size):
    response = build(size)
    spans = (parsing.coherence_span(response, rules.coherence_span), parsing.consistency_span(response))
    for prompt, span in zip(reflection_prompts(response, EMOSET, rules), spans, strict=True):
        assert (prompt == prompts.NO_SPAN_PROMPT) == (span is None)
        if span is not None and rules.judge_prompt == "delimited":
            assert prompt.count(prompts.SPAN_OPEN) == prompt.count(prompts.SPAN_CLOSE) == 1
    result = score_response(response, "x", EMOSET, "x", "yes", rules)
    assert (result.coherence, result.consistency) == (1.0, 1.0)
    assert result.format == set_format_reward(response)
