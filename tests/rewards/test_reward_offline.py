"""Offline rescoring of rollout dumps: scored lines written back, malformed lines reported."""

from __future__ import annotations

import json

import pytest

from rewards.offline import RescoreSummary, format_summary, rescore_jsonl
from rewards.rules import RewardRules

SET_RESPONSE = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_objects(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rescore_adds_components_and_keeps_input_fields(tmp_path):
    record = {"id": 7, "response": SET_RESPONSE, "label": "fear", "consistency_reflection": "no"}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(record)])
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    (written,) = read_objects(tmp_path / "out.jsonl")
    # release: 0.8·1 + 0.1·1 (coherence not run) + 0.1·0 (consistency "no") + 0.1·1 = 1.0
    assert written == {
        **record,
        "overall": pytest.approx(1.0),
        "accuracy": 1.0,
        "format": 1.0,
        "coherence": 1.0,
        "consistency": 0.0,
    }
    assert (summary.n_scored, summary.n_skipped, summary.skipped) == (1, 0, ())


def test_rescore_reports_malformed_lines_by_number_and_scores_the_rest(tmp_path):
    good = json.dumps({"response": SET_RESPONSE, "label": "fear"})
    lines = [
        good,  # 1
        "{not json",  # 2
        "",  # 3: blank, skipped silently
        "[1, 2]",  # 4
        json.dumps({"label": "fear"}),  # 5
        json.dumps({"response": SET_RESPONSE, "label": 3}),  # 6
        json.dumps({"response": "\\boxed{anger}", "label": "fear"}),  # 7
        json.dumps({"response": SET_RESPONSE, "label": "fear", "labels": "fear"}),  # 8
        json.dumps({"response": SET_RESPONSE, "label": "fear", "coherence_reflection": 1}),  # 9
        "   ",  # 10: blank
        json.dumps({"response": SET_RESPONSE, "label": "  "}),  # 11
    ]
    source = write_lines(tmp_path / "in.jsonl", lines)
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    assert [number for number, _ in summary.skipped] == [2, 4, 5, 6, 8, 9, 11]
    reasons = dict(summary.skipped)
    assert "invalid JSON" in reasons[2]
    assert "not a JSON object" in reasons[4]
    assert "'response'" in reasons[5]
    assert "'label'" in reasons[6]
    assert "'labels'" in reasons[8]
    assert "'coherence_reflection'" in reasons[9]
    assert "empty" in reasons[11]
    assert (summary.n_scored, summary.n_skipped) == (2, 7)
    assert [obj["response"] for obj in read_objects(tmp_path / "out.jsonl")] == [
        SET_RESPONSE,
        "\\boxed{anger}",
    ]


def test_rescore_reports_invalid_utf8_line_and_continues(tmp_path):
    source = tmp_path / "in.jsonl"
    good = json.dumps({"response": SET_RESPONSE, "label": "fear"}).encode()
    source.write_bytes(b'{"response": "\xff", "label": "fear"}\n' + good + b"\n")
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    assert summary.n_scored == 1
    assert [(number, "UTF-8" in reason) for number, reason in summary.skipped] == [(1, True)]


def test_rescore_means_are_over_scored_lines(tmp_path):
    lines = [
        json.dumps({"response": SET_RESPONSE, "label": "fear"}),  # 1.1: all ones
        json.dumps({"response": "\\boxed{awe}", "label": "fear", "coherence_reflection": "none"}),
        "oops",
    ]
    source = write_lines(tmp_path / "in.jsonl", lines)
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    # second line: acc 0, fmt 0, coh 0.5 ("none"), cons 1 (not run) → 0.05 + 0.1 = 0.15
    assert summary.mean_overall == pytest.approx((1.1 + 0.15) / 2)
    assert summary.mean_accuracy == pytest.approx(0.5)
    assert summary.mean_format == pytest.approx(0.5)
    assert summary.mean_coherence == pytest.approx(0.75)
    assert summary.mean_consistency == pytest.approx(1.0)


def test_rescore_paper_weights_average_reflections(tmp_path):
    record = {"response": SET_RESPONSE, "label": "fear", "coherence_reflection": "fear"}
    record["consistency_reflection"] = "No"
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(record)])
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules(total="paper"))
    assert summary.mean_overall == pytest.approx(0.95)  # 0.8 + 0.1·(1 + 0)/2 + 0.1


def test_rescore_strict_label_match_uses_record_labels_or_emoset(tmp_path):
    # "joy and love" names two WEBEmo labels (→ 0) but only one label of EmoSet ∪ {gold} (→ 1).
    base = {"response": SET_RESPONSE, "label": "joy", "coherence_reflection": "joy and love"}
    with_labels = {**base, "labels": ["love", "joy", "confusion", "anger", "fear", "sadness", "surprise"]}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(with_labels), json.dumps(base)])
    rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules(strict_label_match=True))
    assert [obj["coherence"] for obj in read_objects(tmp_path / "out.jsonl")] == [0.0, 1.0]


def test_rescore_round_trips_line_separators_and_lone_surrogates(tmp_path):
    record = {"response": "\\boxed{fear} \ud800 \u2028 \x85 é", "label": "fear"}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(record)])
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    assert summary.n_scored == 1
    assert read_objects(tmp_path / "out.jsonl")[0]["response"] == record["response"]


def test_rescore_of_empty_file_has_no_means(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [""])
    summary = rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    assert summary == RescoreSummary(0, 0, (), None, None, None, None, None)
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert "n/a" in format_summary(summary)


def test_format_summary_shows_counts_means_and_skipped_lines():
    skipped = tuple((n, "invalid JSON") for n in range(1, 24))
    summary = RescoreSummary(5, 23, skipped, 0.95, 1.0, 0.5, 0.75, 1.0)
    text = format_summary(summary)
    assert "scored 5 rollouts, skipped 23" in text
    assert "overall 0.9500" in text and "format 0.5000" in text
    assert "line 20: invalid JSON" in text
    assert "line 21:" not in text
    assert "... and 3 more" in text
