"""`emo-r3 scale`: the request a user writes and the run takes (the pool's resizing runs in the real
stack's chaos test, tests/cluster/test_chaos.py)."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main
from cluster.config import ConfigError
from cluster.scaling import SCALE_FILE, parse_target, request_scale, take_request


@pytest.fixture
def run(tmp_path):
    (tmp_path / "config.yaml").write_text("cluster: {}\n")
    return tmp_path


def test_the_command_writes_a_request_the_run_takes_once(run, capsys):
    assert main(["scale", str(run), "rollout=3"]) == 0
    assert "applies them before its next iteration" in capsys.readouterr().out
    assert json.loads((run / SCALE_FILE).read_text()) == {"rollout": 3}
    assert take_request(run) == 3
    assert take_request(run) is None  # consumed
    request_scale(run, "rollout", 2)
    request_scale(run, "rollout", 5)  # the latest request wins
    assert take_request(run) == 5


@pytest.mark.parametrize("target", ["reward=2", "rollout=0", "rollout=two", "rollout"])
def test_a_bad_target_is_a_clear_error(target):
    with pytest.raises(ConfigError, match="expected rollout=N with N >= 1"):
        parse_target(target)


def test_scaling_something_that_is_not_a_run_folder_exits_2(tmp_path, capsys):
    assert main(["scale", str(tmp_path / "nope"), "rollout=2"]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_a_malformed_request_is_ignored_and_said(run, capsys):
    (run / SCALE_FILE).write_text("{not json")
    assert take_request(run) is None
    assert "ignored a malformed scale request" in capsys.readouterr().out
    assert not (run / SCALE_FILE).exists()
