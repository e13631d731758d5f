"""Manifests in the authors' released format (no `labels` column): the label set is inferred where
the data determines it, and a one-line hint says what to set where it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cluster.data.manifest as manifest_module
from cluster.data.check import check_dataset, format_report
from cluster.data.manifest import load_dataset
from cluster.data.rows import answers_label_set, problem_labels
from rewards.prompts import LABEL_SETS

EMOSET = LABEL_SETS["emoset"]
# The released question (METHOD.md §1), with the `<image>` placeholder EasyR1 puts in front.
RELEASED_PROBLEM = (
    "<image>Which emotion best describes the image? Answer the question using one emotional category: "
    "amusement, anger, awe, contentment, disgust, excitement, fear, or sadness."
)


def _release_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Rows `{"images": [...], "problem": ..., "answer": ...}` exactly as released: no labels column."""
    lines = [
        json.dumps({"images": [f"images/{i}.jpg"], "problem": problem, "answer": answer})
        for i, (problem, answer) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("problem", "labels"),
    [
        (RELEASED_PROBLEM, EMOSET),
        (
            "Answer the question using one emotional category: Anger, Disgust, Fear, Joy, Sadness, or Surprise.",
            LABEL_SETS["emotion6"],
        ),
        ("using ONE EMOTIONAL CATEGORY: calm or tense", ("calm", "tense")),
        (
            "one emotional category (one word only): calm, tense, bored\nThen explain.",
            ("calm", "tense", "bored"),
        ),
        ("one emotional category: calm,tense and bored .", ("calm", "tense", "bored")),
        ("one emotional category: 'calm', \"tense\"", ("calm", "tense")),
        ("Which emotion best describes the image?", None),  # no list
        ("one emotional category: calm.", None),  # one word is no choice
        ("one emotional category: calm, calm, or tense.", None),  # duplicates
        ("one emotional category: calm, 3 things, or tense.", None),  # not words
        (None, None),
    ],
)
def test_problem_labels_parse_the_release_category_list(problem, labels) -> None:
    assert problem_labels(problem) == labels


def test_a_category_list_in_the_problem_gives_the_labels_and_names_a_known_set(tmp_path: Path) -> None:
    path = _release_manifest(
        tmp_path / "train.jsonl", [(RELEASED_PROBLEM, "fear"), (RELEASED_PROBLEM, "\\boxed{Awe}")]
    )
    result = load_dataset(path)
    assert not result.skipped and not result.hints
    first, second = result.samples
    assert (first.answer, second.answer) == ("fear", "awe")
    assert first.labels == EMOSET and first.dataset == "emoset"
    assert first.question == RELEASED_PROBLEM.removeprefix("<image>")


def test_a_category_list_of_no_known_set_is_used_as_listed(tmp_path: Path) -> None:
    problem = "<image>Answer the question using one emotional category: Calm, Tense, or Bored."
    (sample,) = load_dataset(_release_manifest(tmp_path / "m.jsonl", [(problem, "\\boxed{tense}")])).samples
    assert sample.labels == ("calm", "tense", "bored") and sample.answer == "tense" and sample.dataset == ""


def test_without_a_list_the_one_known_set_holding_every_answer_is_used(tmp_path: Path) -> None:
    problem = "<image>Which emotion best describes the image?"
    rows = [(problem, "fear"), (problem, "\\boxed{amusement}"), (problem, "awe")]  # amusement: EmoSet only
    result = load_dataset(_release_manifest(tmp_path / "m.jsonl", rows))
    assert not result.skipped and not result.hints
    assert {(s.labels, s.dataset) for s in result.samples} == {(EMOSET, "emoset")}


def test_the_answers_pass_reads_only_the_answer_column_of_a_parquet_file(tmp_path: Path) -> None:
    table = pa.table(
        {
            "images": [["a.jpg"], ["b.jpg"]],
            "problem": ["<image>What do you feel?", None],
            "answer": ["\\boxed{joy}", "surprise"],  # joy and surprise: Emotion6 and WEBEmo
        }
    )
    pq.write_table(table, tmp_path / "two.parquet")
    assert dict(load_dataset(tmp_path / "two.parquet").skipped) == {"missing_labels": 2}
    pq.write_table(table.set_column(2, "answer", pa.array(["joy", "disgust"])), tmp_path / "one.parquet")
    result = load_dataset(tmp_path / "one.parquet")  # disgust: Emotion6 only
    assert [s.labels for s in result.samples] == [LABEL_SETS["emotion6"]] * 2


def test_when_nothing_determines_the_labels_rows_are_skipped_with_one_hint(tmp_path: Path) -> None:
    problem = "<image>Which emotion best describes the image?"
    rows = [(problem, "fear"), (problem, "\\boxed{sadness}")]  # in every known set
    result = load_dataset(_release_manifest(tmp_path / "m.jsonl", rows))
    assert not result.samples and dict(result.skipped) == {"missing_labels": 2}
    (hint,) = result.hints
    assert "\n" not in hint
    assert "data.label_set=<emoset|emotion6|webemo>" in hint and "'labels' column" in hint

    report = check_dataset(tmp_path / "m.jsonl", workers=1)
    assert dict(report.skipped) == {"missing_labels": 2}
    assert "hint     2 rows skipped as missing_labels" in format_report(report)


def test_a_labels_column_or_a_configured_set_wins_over_inference(tmp_path: Path) -> None:
    row = {"images": ["a.jpg"], "problem": RELEASED_PROBLEM, "answer": "fear", "labels": ["fear", "calm"]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    assert load_dataset(tmp_path / "m.jsonl").samples[0].labels == ("fear", "calm")
    path = _release_manifest(tmp_path / "r.jsonl", [(RELEASED_PROBLEM, "fear")])
    (sample,) = load_dataset(path, label_set="webemo").samples
    assert sample.labels == LABEL_SETS["webemo"] and sample.dataset == "webemo"


def test_answers_label_set_streams_and_stops_at_the_first_answer_no_set_holds() -> None:
    def answers():
        yield "\\boxed{Fear}"
        yield None  # ignored, like a missing answer
        yield "zeal"
        raise AssertionError("read past the answer that no set holds")

    assert answers_label_set(answers()) is None
    assert answers_label_set(["fear", "love"]) == "webemo"
    assert answers_label_set(["fear", "anger"]) is None  # several sets
    assert answers_label_set([]) is None


def test_the_answers_pass_runs_only_when_a_row_needs_it(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def counting(answers):
        calls.append(1)
        return answers_label_set(answers)

    monkeypatch.setattr(manifest_module, "answers_label_set", counting)
    _release_manifest(tmp_path / "listed.jsonl", [(RELEASED_PROBLEM, "fear")] * 3)
    load_dataset(tmp_path / "listed.jsonl")
    assert calls == []
    _release_manifest(tmp_path / "bare.jsonl", [("<image>", "amusement"), ("", "fear"), ("?", "awe")])
    assert len(load_dataset(tmp_path / "bare.jsonl").samples) == 3
    assert calls == [1]  # once per load, not per row
