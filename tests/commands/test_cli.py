"""The `emo-r3` commands, run as a user runs them (subprocesses, real files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def emo_r3(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_config_show_prints_the_resolved_config_with_overrides():
    proc = emo_r3("config", "show", "-c", "configs/cpu_default.yaml", "rollout.group_size=4")
    assert proc.returncode == 0, proc.stderr
    assert "group_size: 4" in proc.stdout


def test_score_rescores_a_dump_and_reports_malformed_lines(tmp_path):
    good = {
        "response": "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}",
        "label": "fear",
        "coherence_reflection": "fear",
        "consistency_reflection": "no",
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"response": "x"}),
        json.dumps({**good, "label": "awe"}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    proc = emo_r3("score", "--input", str(src), "--output", str(out), "--weights", "paper")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    # paper: 0.8*1 + 0.1*(1 + 0)/2 + 0.1*1 = 0.95 ; wrong label: 0 + 0.1*(0 + 0)/2 + 0.1 = 0.1
    assert rows[0]["overall"] == pytest.approx(0.95)
    assert rows[1]["overall"] == pytest.approx(0.1)
    assert "2" in proc.stdout and "3" in proc.stdout  # the malformed line numbers are reported


def test_data_check_counts_good_and_skipped_images_by_reason(tmp_path):
    for label in ("fear", "joy"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (64, 64), "red").save(tmp_path / label / "ok.png")
    (tmp_path / "fear" / "empty.png").write_bytes(b"")
    Image.new("RGB", (10, 10)).save(tmp_path / "joy" / "tiny.png")
    proc = emo_r3("data", "check", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "zero_byte" in proc.stdout and "too_small" in proc.stdout


def test_data_check_fails_when_nothing_is_usable_and_on_a_missing_path(tmp_path):
    (tmp_path / "fear").mkdir()
    (tmp_path / "fear" / "bad.png").write_text("not an image")
    assert emo_r3("data", "check", str(tmp_path)).returncode == 1
    assert emo_r3("data", "check", str(tmp_path / "absent")).returncode == 2


@pytest.mark.slow
def test_sample_runs_the_pipeline_on_the_embedded_default(tmp_path):
    proc = emo_r3(
        "sample",
        "cluster.prompts_per_iteration=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=24",
        f"cluster.output_dir={tmp_path}",
        "cluster.run_name=s",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reflect + score" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "s" / "sample_rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"accuracy", "format", "coherence", "consistency", "score"} <= row.keys()
        assert row["coherence_reflection"] is not None and row["consistency_reflection"] is not None
    assert (tmp_path / "s" / "config.yaml").is_file()


def _one_clear_line(proc: subprocess.CompletedProcess) -> str:
    """A refusal: exit 2, no traceback, one `emo-r3:` line naming what to change."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("emo-r3:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_a_model_path_that_does_not_exist_is_refused_before_anything_starts(tmp_path):
    line = _one_clear_line(
        emo_r3(
            "train", f"model.path={tmp_path / 'nowhere' / 'model'}", f"cluster.output_dir={tmp_path / 'runs'}"
        )
    )
    assert "model.path" in line and "does not exist" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("data", ["empty", "image"])
def test_training_on_unusable_data_is_one_line_and_leaves_no_run_folder(tmp_path, data):
    if data == "empty":
        source = tmp_path / "train.jsonl"
        source.write_text("\n")
    else:
        source = tmp_path / "cat.png"
        Image.new("RGB", (64, 64)).save(source)
    line = _one_clear_line(
        emo_r3(
            "train", f"data.train={source}", f"cluster.output_dir={tmp_path / 'runs'}", "cluster.run_name=r"
        )
    )
    assert "data.train" in line
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_run_without_checkpoints_is_refused(tmp_path):
    line = _one_clear_line(
        emo_r3("train", "--resume", f"cluster.output_dir={tmp_path}", "cluster.run_name=nothing-here")
    )
    assert "no complete checkpoint" in line and "drop --resume" in line
    assert not (tmp_path / "nothing-here").exists()


def test_data_synth_takes_the_synthetic_sections_settings_as_overrides(tmp_path):
    proc = emo_r3(
        "data",
        "synth",
        str(tmp_path),
        "data.synthetic.n_train=8",
        "data.synthetic.n_test=9",
        "data.synthetic.size=64",
        "--style",
        "emotion6",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 8
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 9
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["size"] == 64 and meta["ambiguity"] == 1.0  # the unset ones: the config's defaults
