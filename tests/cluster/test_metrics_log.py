"""One history per run: records an attempt redoes are set aside, never lost (cluster.metrics)."""

import json

from cluster.metrics import MetricsLog, set_aside_from


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _iterations(path):
    return [json.loads(line).get("iteration") for line in path.read_text().splitlines()]


def test_a_resumed_attempt_keeps_the_records_before_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [json.dumps({"iteration": i, "x": i}) for i in (0, 1, 2, 3)])
    assert set_aside_from(path, 2) == 2
    assert _iterations(path) == [0, 1]
    assert _iterations(tmp_path / "metrics.replaced.jsonl") == [2, 3]


def test_a_fresh_attempt_sets_aside_everything_and_a_second_one_appends(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    _write(path, [json.dumps({"iteration": 0})])
    assert set_aside_from(path, 0) == 1 and path.read_text() == ""
    _write(path, [json.dumps({"iteration": 0}), json.dumps({"iteration": 1})])
    assert set_aside_from(path, 0) == 2
    assert _iterations(tmp_path / "rollouts.replaced.jsonl") == [0, 0, 1]


def test_nothing_to_do_without_a_file_or_records_to_redo_and_odd_lines_stay(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert set_aside_from(path, 0) == 0 and not path.exists()
    _write(path, [json.dumps({"iteration": 0}), "not json", json.dumps({"no": "iteration"})])
    assert set_aside_from(path, 1) == 0
    assert path.read_text().splitlines()[1:] == ["not json", '{"no": "iteration"}']
    assert not (tmp_path / "metrics.replaced.jsonl").exists()


def tensorboard_points(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars("reward/score/mean")]


def test_tensorboard_shows_a_redone_iteration_once(tmp_path):
    first = MetricsLog(tmp_path, tensorboard=True)
    for iteration in range(4):
        first.log(iteration, {"reward/score/mean": float(iteration)})
    first.close()
    resumed = MetricsLog(tmp_path, tensorboard=True, start=2)  # from a checkpoint before iteration 2
    for iteration in (2, 3):
        resumed.log(iteration, {"reward/score/mean": 10.0 + iteration})
    resumed.close()
    assert tensorboard_points(tmp_path / "tensorboard") == [(0, 0.0), (1, 1.0), (2, 12.0), (3, 13.0)]


def test_wandb_offline_receives_every_record_beside_metrics_jsonl(tmp_path, monkeypatch):
    from cluster.config import WandbConfig

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "exp1"
    run.mkdir()
    log = MetricsLog(run, tensorboard=False, wandb=WandbConfig(enabled=True, mode="offline", project="t"))
    log.log(0, {"reward/score/mean": 0.5})
    log.log(1, {"reward/score/mean": 0.75})
    log.close()
    assert _iterations(run / "metrics.jsonl") == [0, 1]
    (offline,) = (run / "wandb").glob("offline-run-*-exp1")
    assert list(offline.glob("*.wandb")) and (offline / "files").is_dir()


def test_wandb_enabled_without_the_package_is_a_config_error(monkeypatch):
    import importlib.util

    import pytest

    from cluster.config import ConfigError, load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="wandb is not installed"):
        load_config(None, ["cluster.wandb.enabled=true"])
