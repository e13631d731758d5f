"""`emo-r3 pipeline` end to end on the real stack, at a toy budget: cold-start SFT (DeepSpeed ranks
in Ray actors) → RL from that checkpoint (vLLM engines, reward workers) → held-out evaluations of
every version → the before/after table and the learning-curve PNG."""

from __future__ import annotations

import json

import pytest

from cluster.commands.pipeline import before_after_table, run_pipeline
from cluster.config import load_config

pytestmark = pytest.mark.slow

TOY = [
    "data.synthetic.n_train=32",
    "data.synthetic.n_test=8",
    "sft.samples=8",
    "sft.epochs=2",
    "sft.batch_size=8",
    "cluster.iterations=2",
    "cluster.prompts_per_iteration=4",
    "rollout.group_size=2",
    "rollout.max_new_tokens=24",
    "learner.micro_batch_size=4",
    "cluster.eval_every=1",
    "cluster.eval_limit=4",
    "cluster.checkpoint_every=0",
]


def test_pipeline_runs_sft_then_rl_and_reports_before_and_after(ray_local, tmp_path, capsys):
    # a nested run name: SFT, RL and the learning curve all land in the one folder
    cfg = load_config(None, [*TOY, f"cluster.output_dir={tmp_path}", "cluster.run_name=exp/p"])
    assert run_pipeline(cfg) == 0
    run = tmp_path / "exp" / "p"
    out = capsys.readouterr().out
    assert f"SFT checkpoint: {run / 'sft'}" in out
    assert (run / "sft" / "model.safetensors").is_file()
    # RL started from the SFT checkpoint, which is also its KL reference
    assert f"path: {run / 'sft'}" in (run / "config.yaml").read_text()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/policy_version" in r]
    assert [r["eval/policy_version"] for r in evals] == [0, 1, 2]
    assert "| emoset:test | " in out and "| emotion6:test | " in out
    assert "in-domain accuracy change over RL:" in out and "(v0: after cold-start SFT; v2: after RL)" in out
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_before_after_table_is_computed_from_the_first_and_last_evaluation():
    first = {
        "eval/policy_version": 0.0,
        "eval/a/accuracy": 0.5,
        "eval/a/format_rate": 0.9,
        "eval/a/parse_failure_rate": 0.1,
    }
    middle = {"iteration": 1, "reward/score/mean": 0.7}
    last = {
        "eval/policy_version": 4.0,
        "eval/a/accuracy": 0.75,
        "eval/a/format_rate": 1.0,
        "eval/a/parse_failure_rate": 0.0,
    }
    table = before_after_table([first, middle, last])
    assert "| a | 50.0 → 75.0 | 90.0 → 100.0 | 10.0 → 0.0 |" in table
    assert "+25.0 points (v0: after cold-start SFT; v4: after RL)" in table
    assert "no held-out evaluation" in before_after_table([middle])
