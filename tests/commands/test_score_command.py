"""`rescore_jsonl` / `emo-r3 score`: never writes over its input, and replaces its output only on success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rewards.offline as offline
from rewards.offline import rescore_jsonl
from rewards.rules import RewardRules

ROOT = Path(__file__).resolve().parents[2]
SET_RESPONSE = "<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{fear}"


def _dump(path: Path, n: int = 3) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "response": SET_RESPONSE, "label": "fear"}) + "\n" for i in range(n))
    )
    return path


def test_the_same_path_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    source = _dump(tmp_path / "in.jsonl")
    before = source.read_bytes()
    with pytest.raises(ValueError, match=r"'.*in\.jsonl' is the input file '.*in\.jsonl'"):
        rescore_jsonl(source, source, RewardRules())
    relative = os.path.relpath(source)  # another spelling of the same path
    with pytest.raises(ValueError, match="is the input file"):
        rescore_jsonl(source, relative, RewardRules())
    assert source.read_bytes() == before


def test_a_symlink_or_hard_link_to_the_input_is_refused(tmp_path: Path) -> None:
    source = _dump(tmp_path / "in.jsonl")
    before = source.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    for output in ("link.jsonl", "hard.jsonl"):
        with pytest.raises(ValueError, match=f"{output}' is the input file"):
            rescore_jsonl(source, tmp_path / output, RewardRules())
    assert source.read_bytes() == before


def test_an_error_mid_way_leaves_the_old_output_and_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    source = _dump(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    output.write_text("old output\n")
    real_score = offline._score_record
    scored = []

    def failing_on_the_second(record, rules, labels):
        scored.append(record["id"])
        if len(scored) == 2:
            raise RuntimeError("interrupted")
        return real_score(record, rules, labels)

    monkeypatch.setattr(offline, "_score_record", failing_on_the_second)
    with pytest.raises(RuntimeError, match="interrupted"):
        rescore_jsonl(source, output, RewardRules())
    assert output.read_text() == "old output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_success_replaces_the_output_with_ordinary_permissions(tmp_path: Path) -> None:
    source = _dump(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    output.write_text("old output\n")
    summary = rescore_jsonl(source, output, RewardRules())
    assert summary.n_scored == 3
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    plain = tmp_path / "plain"
    plain.write_text("")  # a file made by open(): the mode the umask gives
    assert output.stat().st_mode == plain.stat().st_mode


def test_an_output_symlink_to_another_file_writes_its_target(tmp_path: Path) -> None:
    source = _dump(tmp_path / "in.jsonl")
    target = tmp_path / "kept" / "scores.jsonl"
    target.parent.mkdir()
    (tmp_path / "out.jsonl").symlink_to(target)
    rescore_jsonl(source, tmp_path / "out.jsonl", RewardRules())
    assert (tmp_path / "out.jsonl").is_symlink()
    assert len(target.read_text().splitlines()) == 3


def test_score_command_with_output_equal_to_input_fails_and_keeps_the_input(tmp_path: Path) -> None:
    source = _dump(tmp_path / "in.jsonl")
    before = source.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "score", "--input", str(source), "--output", str(source)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is the input file" in proc.stderr
    assert source.read_bytes() == before
