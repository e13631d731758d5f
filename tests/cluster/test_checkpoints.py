"""Resume hazards: a resume that would silently go wrong is refused, a damaged checkpoint is skipped for
the previous one, and checkpoints and the trainer state are written atomically. No Ray: the checks run
on files before any actor starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cluster.checkpoints import (
    STATE_FILE,
    check_resumable_config,
    check_same_data,
    checkpoint_path,
    data_digest,
    latest_checkpoint,
    safetensors_problem,
    save_checkpoint,
    write_atomic,
)
from cluster.config import ConfigError, load_config
from cluster.data.sample import Sample
from cluster.rundir import write_config
from cluster.train import find_resume_point


def _weights(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(out / "model.safetensors"))


def _checkpoint(run: Path, done: int) -> Path:
    path = checkpoint_path(run, done)
    save_checkpoint(path, {"next_iteration": done, "version": done}, _weights)
    return path


def _samples(ids) -> list[Sample]:
    return [Sample(i, "img.png", "q", ("fear", "joy"), "fear") for i in ids]


def test_a_checkpoint_is_written_under_a_partial_name_and_renamed_when_complete(tmp_path):
    seen = []

    def weights(out: Path) -> None:
        seen.append(out.name)
        assert not checkpoint_path(tmp_path, 3).exists()  # nothing looks finished while it is written
        _weights(out)

    path = checkpoint_path(tmp_path, 3)
    save_checkpoint(path, {"next_iteration": 3, "version": 3}, weights)
    assert seen == ["iter_000003.partial"]
    assert json.loads((path / STATE_FILE).read_text())["next_iteration"] == 3
    assert latest_checkpoint(tmp_path) == path
    assert not path.with_name("iter_000003.partial").exists()


def test_a_crash_while_saving_leaves_the_previous_checkpoint_as_the_latest(tmp_path):
    first = _checkpoint(tmp_path, 2)

    def dies(out: Path) -> None:
        _weights(out)
        raise RuntimeError("learner died mid-save")

    with pytest.raises(RuntimeError):
        save_checkpoint(checkpoint_path(tmp_path, 4), {"next_iteration": 4, "version": 4}, dies)
    assert latest_checkpoint(tmp_path) == first


@pytest.mark.parametrize("damage", ["truncated weights", "truncated state", "no weights"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    first, second = _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 4)
    if damage == "truncated weights":
        data = (second / "model.safetensors").read_bytes()
        (second / "model.safetensors").write_bytes(data[: len(data) - 10])
    elif damage == "truncated state":
        (second / STATE_FILE).write_text('{"next_iteration": 4, "ver')
    else:
        (second / "model.safetensors").unlink()
    reports = []
    assert latest_checkpoint(tmp_path, report=reports.append) == first
    assert len(reports) == 1 and "iter_000004" in reports[0]


def test_a_whole_safetensors_file_passes_and_a_short_one_is_named(tmp_path):
    _weights(tmp_path)
    path = tmp_path / "model.safetensors"
    assert safetensors_problem(path) is None
    path.write_bytes(path.read_bytes()[:-1])
    assert "the header says" in safetensors_problem(path)
    path.write_bytes(b"\x00")
    assert safetensors_problem(path) == "corrupt header"


def test_the_trainer_state_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    write_atomic(path, '{"a": 1}')

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        write_atomic(path, '{"a": 2}')
    assert json.loads(path.read_text()) == {"a": 1}  # the old state, whole


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    cfg = load_config(None, [f"cluster.output_dir={tmp_path}", "cluster.run_name=r"])
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        find_resume_point(tmp_path / "r", cfg, resume=True)


def test_a_new_run_over_a_run_with_checkpoints_is_refused(tmp_path):
    cfg = load_config(None, [f"cluster.output_dir={tmp_path}", "cluster.run_name=r"])
    (tmp_path / "r").mkdir()
    write_config(tmp_path / "r", cfg)
    _checkpoint(tmp_path / "r", 2)
    with pytest.raises(ConfigError, match="pass --resume"):
        find_resume_point(tmp_path / "r", cfg, resume=False)
    checkpoint, state = find_resume_point(tmp_path / "r", cfg, resume=True)
    assert checkpoint.name == "iter_000002" and state["next_iteration"] == 2


@pytest.mark.parametrize(
    "override",
    ["rollout.group_size=4", "cluster.seed=3", "cluster.prompts_per_iteration=8", "data.shuffle=false"],
)
def test_resuming_with_a_different_stream_or_group_is_refused_and_the_config_kept(tmp_path, override):
    run = tmp_path / "r"
    run.mkdir()
    before = load_config(None, [f"cluster.output_dir={tmp_path}", "cluster.run_name=r"])
    write_config(run, before)
    saved = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        check_resumable_config(
            run, load_config(None, [f"cluster.output_dir={tmp_path}", "cluster.run_name=r", override])
        )
    assert (run / "config.yaml").read_text() == saved


def test_resuming_with_other_worker_counts_or_more_iterations_is_allowed_and_reported(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    write_config(run, load_config(None, ["cluster.iterations=4"]))
    changes = check_resumable_config(
        run, load_config(None, ["cluster.iterations=8", "rollout.num_workers=2"])
    )
    assert changes == ["cluster.iterations: 4 -> 8", "rollout.num_workers: 1 -> 2"]


def test_resuming_on_a_changed_training_set_is_refused():
    samples = _samples(["a", "b", "c"])
    state = {"data": data_digest(samples)}
    check_same_data(state, samples, "train.jsonl")
    check_same_data({}, samples, "train.jsonl")  # a checkpoint from before the digest: nothing to compare
    for other in (_samples(["a", "b", "c", "d"]), _samples(["a", "c", "b"]), _samples(["a", "b"])):
        with pytest.raises(ConfigError, match="has changed since the checkpoint"):
            check_same_data(state, other, "train.jsonl")
