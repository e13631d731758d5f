"""Held-out evaluation: prediction parsing, rates, confusion matrix, the paper's A^I / A^O / A (METHOD.md §5)."""

from __future__ import annotations

import json

import pytest

from rewards.paper_metrics import (
    EvalResult,
    evaluate_responses,
    markdown_table,
    paper_summary,
    predict,
    to_json,
)
from rewards.rules import accuracy_reward

LABELS = ("fear", "joy", "sadness", "surprise")
SET = "<step1>a dark alley</step1><step2>uneasy</step2><step3>negative, high arousal</step3>"

# (response, gold, expected prediction): correct, wrong, and every kind of unparseable answer.
CASES = [
    (SET + "\\boxed{fear}", "fear", "fear"),  # correct, SET format
    (
        " < step1 >x< /step1 >< step2 >y< /step2 >< step3 >z< /step3 > \\boxed{ Joy }",
        "joy",
        "joy",
    ),  # spaces, case
    ("It is \\boxed{sadness}", "fear", "sadness"),  # wrong, no SET format
    ("I think it is fear.", "fear", None),  # no box: the word in the text does not count
    (SET + "\\boxed{anger}", "sadness", None),  # a box holding a word outside the label set
    ("\\boxed{joy", "joy", None),  # unclosed box
    ("\\boxed{Fear.}", "fear", None),  # a box holding more than the label
]


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_predict_is_the_label_in_the_last_box_or_none(response, gold, expected):
    assert predict(response, LABELS) == expected


@pytest.mark.parametrize(("response", "gold", "expected"), CASES)
def test_prediction_matches_gold_exactly_when_the_accuracy_reward_is_one(response, gold, expected):
    assert (predict(response, LABELS) == gold) == (accuracy_reward(response, gold) == 1.0)


def test_predict_uses_the_last_complete_box_when_a_later_one_never_closes():
    assert predict("\\boxed{joy} on second thought \\boxed{fear", LABELS) == "joy"
    assert predict("\\boxed{joy} no, \\boxed{fear}", LABELS) == "fear"


def test_rates_per_class_accuracy_and_confusion_of_a_hand_built_set():
    result = evaluate_responses("hand", [r for r, _, _ in CASES], [g for _, g, _ in CASES], LABELS)
    # 7 responses: correct #1 (fear), #2 (joy); wrong #3; unparsed #4-#7; SET format #1, #2, #5.
    assert result.n == 7
    assert result.accuracy == pytest.approx(2 / 7)
    assert result.parse_failure_rate == pytest.approx(4 / 7)
    assert result.format_rate == pytest.approx(3 / 7)
    # fear golds: #1 fear, #3 sadness, #4 and #7 unparsed -> 1/4; joy: #2 joy, #6 unparsed -> 1/2;
    # sadness: #5 unparsed -> 0; surprise: no sample -> None.
    assert result.per_class == {"fear": 0.25, "joy": 0.5, "sadness": 0.0, "surprise": None}
    #                        fear joy sad sur unparsed
    assert result.confusion == [
        [1, 0, 1, 0, 2],  # gold fear
        [0, 1, 0, 0, 1],  # gold joy
        [0, 0, 0, 0, 1],  # gold sadness
        [0, 0, 0, 0, 0],  # gold surprise
    ]
    assert result.columns == (*LABELS, "unparsed")


def test_grpo_style_scores_the_think_format():
    responses = ["<think>dark</think>\\boxed{fear}", SET + "\\boxed{fear}"]
    assert evaluate_responses("d", responses, ["fear", "fear"], LABELS, "grpo").format_rate == 0.5
    assert evaluate_responses("d", responses, ["fear", "fear"], LABELS, "set").format_rate == 0.5
    assert evaluate_responses("d", responses[:1], ["fear"], LABELS, "grpo").format_rate == 1.0
    assert evaluate_responses("d", responses[:1], ["fear"], LABELS, "set").format_rate == 0.0


def test_a_gold_outside_the_label_set_is_rejected():
    with pytest.raises(ValueError, match="anger"):
        evaluate_responses("d", ["\\boxed{fear}"], ["anger"], LABELS)


def _result(name: str, correct: int, n: int = 500) -> EvalResult:
    """A data set of `n` answers of which `correct` are right (the others unparsed)."""
    responses = ["\\boxed{fear}"] * correct + ["no box"] * (n - correct)
    return evaluate_responses(name, responses, ["fear"] * n, LABELS)


# The paper's two settings (METHOD.md §5), accuracies chosen to reproduce the published EMO-R3 G=4 row:
# trained on EmoSet: EmoSet 70.0 (in), Emotion6 50.0, WEBEmo 52.0; trained on Emotion6: Emotion6 76.2
# (in), EmoSet 56.0, WEBEmo 58.8. A^I = (70 + 76.2) / 2 = 73.10; A^O = (50 + 52 + 56 + 58.8) / 4 = 54.20;
# A = (70 + 76.2 + 216.8) / 6 = 60.50.
PAPER_SETTINGS = {
    "emoset->emoset": 350,
    "emoset->emotion6": 250,
    "emoset->webemo": 260,
    "emotion6->emotion6": 381,
    "emotion6->emoset": 280,
    "emotion6->webemo": 294,
}
IN_DOMAIN = ["emoset->emoset", "emotion6->emotion6"]


def test_paper_aggregation_reproduces_a_worked_example_of_both_settings():
    results = {name: _result(name, correct) for name, correct in PAPER_SETTINGS.items()}
    summary = paper_summary(results, IN_DOMAIN)
    assert summary["A^I"] == pytest.approx(73.10)
    assert summary["A^O"] == pytest.approx(54.20)
    assert summary["A"] == pytest.approx(60.50)
    assert summary["in_domain"] == IN_DOMAIN
    assert len(summary["out_of_domain"]) == 4


def test_a_side_without_data_sets_is_none_and_an_unknown_in_domain_name_is_rejected():
    results = {"emoset": _result("emoset", 3, n=4)}
    assert paper_summary(results, ["emoset"]) == {
        "A^I": 75.0,
        "A^O": None,
        "A": 75.0,
        "in_domain": ["emoset"],
        "out_of_domain": [],
    }
    assert paper_summary(results, [])["A^I"] is None
    with pytest.raises(ValueError, match="webemo"):
        paper_summary(results, ["webemo"])


def test_markdown_table_shows_each_rate_and_the_summary_in_percent():
    hand = evaluate_responses("hand", [r for r, _, _ in CASES], [g for _, g, _ in CASES], LABELS)
    results = {"hand": hand, "other": _result("other", 1, n=8)}
    table = markdown_table(results, paper_summary(results, ["hand"]))
    # hand: accuracy 2/7 = 28.57, parse failure 4/7 = 57.14, format 3/7 = 42.86; other: 12.50, 87.50, 0.00
    assert "| hand (in-domain) | 7 | 28.57 | 57.14 | 42.86 |" in table
    assert "| other | 8 | 12.50 | 87.50 | 0.00 |" in table
    # A^I = 28.57, A^O = 12.50, A = (28.571 + 12.5) / 2 = 20.54
    assert "| A^I | | 28.57 | | |" in table
    assert "| A^O | | 12.50 | | |" in table
    assert "| A | | 20.54 | | |" in table


def test_json_record_round_trips_results_and_summary():
    results = {"other": _result("other", 1, n=8)}
    record = json.loads(json.dumps(to_json(results, paper_summary(results, ["other"]))))
    other = record["datasets"]["other"]
    assert other["confusion"][0] == [1, 0, 0, 0, 7]
    assert other["columns"] == [*LABELS, "unparsed"]
    assert other["parse_failure_rate"] == 7 / 8
    assert record["summary"]["A"] == 12.5
