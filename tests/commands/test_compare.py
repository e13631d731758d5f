"""`emo-r3 compare`: method configs, reuse of finished runs, a failed run reported (not fatal), and
the mean ± std table. The pipeline itself runs for real in test_pipeline.py; here a stand-in writes
the metrics a pipeline run writes, so the control flow is tested in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.commands.compare import METHODS, comparison_table, mean_std, run_compare, run_config
from cluster.config import RunConfig


def fake_pipeline(accuracy: dict[tuple[str, int], float], fail: set[tuple[str, int]], calls: list):
    """Writes the two held-out evaluations a finished pipeline leaves in metrics.jsonl."""

    def pipeline(cfg: RunConfig) -> int:
        method, seed = cfg.cluster.run_name.rsplit("-seed", 1)
        calls.append((method, int(seed), cfg))
        if (method, int(seed)) in fail:
            raise RuntimeError("engine died")
        run = Path(cfg.cluster.output_dir) / cfg.cluster.run_name
        run.mkdir(parents=True, exist_ok=True)
        acc = accuracy[(method, int(seed))]
        records = [
            {
                "iteration": 0,
                "eval/policy_version": 0.0,
                "eval/emoset/accuracy": 0.5,
                "eval/emoset/format_rate": 0.9,
                "eval/emotion6/accuracy": 0.4,
                "eval/A^I": 50.0,
                "eval/A^O": 40.0,
                "eval/A": 45.0,
            },
            {"iteration": 1, "reward/score/mean": 0.5},
            {
                "iteration": cfg.cluster.iterations,
                "eval/policy_version": float(cfg.cluster.iterations),
                "eval/emoset/accuracy": acc,
                "eval/emoset/format_rate": 1.0,
                "eval/emotion6/accuracy": acc / 2,
                "eval/A^I": 100 * acc,
                "eval/A^O": 50 * acc,
                "eval/A": 75 * acc,
            },
        ]
        with (run / "metrics.jsonl").open("a") as f:  # appends, as the real metrics log does
            f.write("".join(json.dumps(r) + "\n" for r in records))
        return 0

    return pipeline


def test_method_configs_follow_the_paper_ablation(tmp_path):
    grpo = run_config(None, [], METHODS["grpo"], 1, tmp_path)
    assert (grpo.data.prompt_style, grpo.reward.total, grpo.reward.reflection) == ("grpo", "grpo", False)
    # as many cold-start updates as SET: 16 answers + 8 scenes vs + 8 reflections, 2 steps of 16 each
    assert grpo.sft.epochs == 30
    assert run_config(None, ["sft.epochs=10"], METHODS["grpo"], 1, tmp_path).sft.epochs == 10
    # without scene examples: 16 answers are 1 step, SET's 24 examples 2 steps
    assert run_config(None, ["sft.scene_examples=0"], METHODS["grpo"], 1, tmp_path).sft.epochs == 60
    set_only = run_config(None, [], METHODS["set"], 1, tmp_path)
    assert (set_only.data.prompt_style, set_only.reward.reflection) == ("set", False)
    emo = run_config(None, ["cluster.iterations=3"], METHODS["emo-r3"], 2, tmp_path)
    assert (emo.data.prompt_style, emo.reward.reflection) == ("set", True)
    assert (emo.cluster.seed, emo.sft.seed, emo.cluster.iterations) == (2, 2, 3)
    # SET and EMO-R3 share one cold-start checkpoint per seed; GRPO has its own (<think> form)
    assert run_config(None, [], METHODS["set"], 2, tmp_path).sft.output == emo.sft.output
    assert grpo.sft.output != set_only.sft.output

    # same budget for every method
    def budget(c: RunConfig) -> tuple:
        return c.cluster.iterations, c.cluster.prompts_per_iteration, c.rollout.group_size, c.learner.lr

    assert budget(grpo) == budget(set_only) == budget(run_config(None, [], METHODS["emo-r3"], 1, tmp_path))


def test_compare_runs_every_pair_reuses_finished_runs_and_reports_a_failure(tmp_path, capsys):
    acc = {(m, s): 0.6 + 0.1 * i + 0.02 * s for i, m in enumerate(METHODS) for s in (0, 1)}
    calls: list = []
    args = (None, [f"cluster.output_dir={tmp_path}", "cluster.iterations=2"], list(METHODS), [0, 1], "cmp")
    status = run_compare(*args, pipeline=fake_pipeline(acc, {("set", 1)}, calls))
    assert status == 1  # one run failed, the others still ran and are in the table
    assert [(m, s) for m, s, _ in calls] == [(m, s) for m in METHODS for s in (0, 1)]
    table = (tmp_path / "cmp" / "compare.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "| 1 (1 failed) |" in rows["SET"]
    # EMO-R3 after RL: in-domain 80 and 82 → 81.0 ± 1.4; cold start A^I 50 in both runs
    assert rows["SET + RER (EMO-R3)"].split(" | ")[2:4] == ["81.0 ± 1.4", "40.5 ± 0.7"]
    assert rows["SET + RER (EMO-R3)"].endswith("| 100.0 ± 0.0 | 50.0 ± 0.0 |")
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["ok"] for r in saved] == [True, True, True, False, True, True]
    assert "RuntimeError: engine died" in saved[3]["error"]

    # a second call reruns only the failed pair
    calls.clear()
    assert run_compare(*args, pipeline=fake_pipeline(acc, set(), calls)) == 0
    assert [(m, s) for m, s, _ in calls] == [("set", 1)]
    assert "| 2 |" in capsys.readouterr().out.splitlines()[-4]


def test_bad_method_or_override_fails_before_any_run(tmp_path):
    calls: list = []
    with pytest.raises(ValueError, match="unknown methods"):
        run_compare(
            None,
            [f"cluster.output_dir={tmp_path}"],
            ["dapo"],
            [0],
            "x",
            pipeline=fake_pipeline({}, set(), calls),
        )
    from cluster.config import ConfigError

    with pytest.raises(ConfigError):
        run_compare(
            None, ["rollout.group_size=0"], ["grpo"], [0], "x", pipeline=fake_pipeline({}, set(), calls)
        )
    assert calls == []


def test_mean_std_and_empty_table():
    assert mean_std([]) == "–"
    assert mean_std([0.5]) == "50.0"
    assert mean_std([0.5, 0.7]) == "60.0 ± 14.1"
    assert comparison_table([], ["grpo"]) == "no finished run to compare"
