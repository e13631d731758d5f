"""`emo-r3 eval`: held-out evaluation through any generate function, and the real command on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster.held_out as held_out
from actors.types import Completion, Group, PromptRequest, SamplingSettings
from cluster.config import DataConfig
from cluster.data.sample import Sample
from cluster.embedded.synthetic import generate
from cluster.sources import load_samples

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A real synthetic test split of 8 Emotion6-style images."""
    _, test = generate(
        tmp_path_factory.mktemp("emotion6"),
        style="emotion6",
        n_train=8,
        n_test=8,
        seed=3,
        size=112,
        ambiguity=0.25,
        two_borrowed=0.5,
    )
    return test


class FakeEngine:
    """Answers the gold label for even group ids and no box for odd ones; records every call."""

    def __init__(self, gold_by_image: dict):
        self.gold_by_image = gold_by_image
        self.calls: list[tuple[list[int], SamplingSettings]] = []

    def generate(
        self,
        requests: list[PromptRequest],
        sampling: SamplingSettings,
        style="emoset",
        size=112,
        ambiguity=0.25,
        two_borrowed=0.5,
    ) -> list[Group]:
        self.calls.append(([r.group_id for r in requests], sampling))
        return [self._group(r) for r in requests]

    def _group(self, r: PromptRequest) -> Group:
        text = f"\\boxed{{{self.gold_by_image[r.image]}}}" if r.group_id % 2 == 0 else "it feels sad"
        return Group(r.group_id, 0, [1, 2], [Completion([3], [], text, "stop")])


def test_evaluate_sources_scores_canned_answers_on_a_real_manifest_in_batches(manifest, monkeypatch):
    samples = load_samples(str(manifest), DataConfig()).samples
    assert len(samples) == 8
    fake = FakeEngine({s.image: s.answer for s in samples})
    monkeypatch.setattr(held_out, "BATCH_SIZE", 3)
    results = held_out.evaluate_sources(
        fake.generate, [str(manifest)], DataConfig(), prompt_style="set", seed=0
    )
    result = results["test.jsonl"]
    # 8 samples, ids 0-7: the 4 even ones answer their gold label, the 4 odd ones have no box.
    assert (result.n, result.accuracy, result.parse_failure_rate, result.format_rate) == (8, 0.5, 0.5, 0.0)
    assert result.labels == ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert sum(map(sum, result.confusion)) == 8 and sum(row[-1] for row in result.confusion) == 4
    assert [ids for ids, _ in fake.calls] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert {(s.n, s.temperature, s.top_p) for _, s in fake.calls} == {(1, 0.6, 0.95)}


def test_limit_keeps_the_same_seeded_subset_in_order(manifest):
    first = held_out.load_sources([str(manifest)], DataConfig(), limit=5, seed=7)["test.jsonl"]
    again = held_out.load_sources([str(manifest)], DataConfig(), limit=5, seed=7)["test.jsonl"]
    everything = load_samples(str(manifest), DataConfig()).samples
    assert [s.sample_id for s in first] == [s.sample_id for s in again]
    assert len(first) == 5
    positions = [everything.index(s) for s in first]
    assert positions == sorted(positions)


def test_evaluation_sampling_is_the_release_validation_or_greedy():
    assert held_out.evaluation_sampling(max_new_tokens=32) == SamplingSettings(
        n=1, temperature=0.6, top_p=0.95, max_new_tokens=32, logprobs=False
    )
    assert held_out.evaluation_sampling(greedy=True).temperature == 0.0


def test_dataset_names_are_the_synthetic_spec_or_the_basename():
    assert held_out.dataset_name("synthetic:emotion6:test") == "emotion6:test"
    assert held_out.dataset_name("/data/Emotion6/") == "Emotion6"
    assert held_out.confusion_filename("emoset:test") == "confusion_emoset_test.png"
    assert held_out.responses_filename("emoset:test") == "responses_emoset_test.jsonl"


def test_responses_file_keeps_each_sample_with_the_prediction_the_accuracy_counts(tmp_path):
    labels = ("anger", "fear", "joy")
    samples = [
        Sample(f"s{i}", "x.png", "q", labels, answer) for i, answer in enumerate(("fear", "joy", "anger"))
    ]
    responses = ["<step1>a</step1> \\boxed{fear}", "\\boxed{anger}", "no box at all"]
    held_out.write_responses(tmp_path / "r.jsonl", samples, responses)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["answer"], r["prediction"]) for r in rows] == [
        ("s0", "fear", "fear"),
        ("s1", "joy", "anger"),
        ("s2", "anger", None),
    ]
    assert [r["response"] for r in rows] == responses
    result = held_out.score_responses({"d": samples}, {"d": responses}, "set")["d"]
    assert result.accuracy == pytest.approx(1 / 3) and result.parse_failure_rate == pytest.approx(1 / 3)


def emo_r3(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )


def test_eval_exits_2_on_a_missing_data_path_or_an_in_domain_source_outside_data(tmp_path):
    missing = emo_r3("eval", "--model", "tiny", "--data", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2
    assert "absent.jsonl" in missing.stderr and "does not exist" in missing.stderr
    outside = emo_r3("eval", "--model", "tiny", "--data", "synthetic:emoset:test", "--in-domain", "x")
    assert outside.returncode == 2
    assert "--in-domain" in outside.stderr


@pytest.mark.slow
def test_eval_command_runs_the_tiny_model_on_two_synthetic_sets(tmp_path):
    start = time.perf_counter()
    proc = emo_r3(
        "eval",
        "--model",
        "tiny",
        "--data",
        "synthetic:emoset:test",
        "synthetic:emotion6:test",
        "--limit",
        "4",
        "--max-new-tokens",
        "16",
        "--out",
        str(tmp_path),
    )
    print(f"emo-r3 eval wall time: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| emoset:test (in-domain) | 4 |" in proc.stdout and "| A^O |" in proc.stdout
    record = json.loads((tmp_path / "eval.json").read_text())
    assert set(record["datasets"]) == {"emoset:test", "emotion6:test"}
    assert record["summary"]["in_domain"] == ["emoset:test"]
    assert record["sources"] == {
        "emoset:test": "synthetic:emoset:test",
        "emotion6:test": "synthetic:emotion6:test",
    }
    # bench reasoning reads the folder: every response judged against its scene
    from benchmarks.reasoning import eval_verdicts

    assert {name: len(v) for name, v in eval_verdicts(tmp_path).items()} == {
        "emoset:test": 4,
        "emotion6:test": 4,
    }
    assert all(record["summary"][key] is not None for key in ("A^I", "A^O", "A"))
    for result in record["datasets"].values():
        # The untrained tiny model rarely boxes a label: the parse failures must be counted, not hidden.
        unparsed = sum(row[-1] for row in result["confusion"])
        assert result["n"] == 4 and result["parse_failure_rate"] == unparsed / 4
    for name in ("emoset_test", "emotion6_test"):
        assert (tmp_path / f"confusion_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for dataset, result in record["datasets"].items():
        rows = [
            json.loads(line)
            for line in (tmp_path / held_out.responses_filename(dataset)).read_text().splitlines()
        ]
        assert len(rows) == 4 and all(isinstance(row["response"], str) for row in rows)
        right = sum(row["prediction"] == row["answer"] for row in rows)
        assert right / 4 == pytest.approx(result["accuracy"])
        assert sum(row["prediction"] is None for row in rows) / 4 == result["parse_failure_rate"]
