"""Starting and joining Ray safely, and the one-machine `ray job submit` recipe of docs/cluster.md, for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.launch import check_address_is_safe, is_loopback

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("ray://127.0.0.1:10001", True),
        ("http://[::1]:8265", True),
        ("auto", True),
        ("10.0.0.5:6379", False),
        ("ray://head.example:10001", False),
        ("http://0.0.0.0:8265", False),
    ],
)
def test_loopback_addresses_are_recognised(address, loopback):
    assert is_loopback(address) is loopback


def test_a_remote_cluster_without_token_auth_is_refused(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match="token auth is off"):
        check_address_is_safe(load_config(None, ["cluster.ray_address=10.0.0.5:6379"]))


def test_a_remote_cluster_is_allowed_with_token_auth_or_an_explicit_opt_out(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    check_address_is_safe(load_config(None, ["cluster.ray_address=10.0.0.5:6379"]))
    monkeypatch.delenv("RAY_AUTH_MODE")
    check_address_is_safe(
        load_config(None, ["cluster.ray_address=10.0.0.5:6379", "cluster.allow_insecure_remote=true"])
    )


@pytest.mark.parametrize("command", ["train", "sft", "pipeline"])
def test_a_job_refuses_an_unsafe_address_before_starting_anything(command, tmp_path):
    # an empty cache and output folder: the refusal must come before the model build (minutes),
    # the data generation and the run folder
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["EMO_R3_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            command,
            "cluster.ray_address=203.0.113.7:6379",
            f"cluster.output_dir={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not on loopback" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


TRY_JOB = "bash scripts/try_job_submit.sh"


def _documented_try_job_line() -> str:
    """The one-machine `ray job submit` command of docs/cluster.md, exactly as the reader sees it."""
    lines = [line.strip() for line in (ROOT / "docs" / "cluster.md").read_text().splitlines()]
    found = [line for line in lines if line.startswith(TRY_JOB)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_the_documented_ray_job_submit_recipe_runs_a_training_job_as_written():
    line = _documented_try_job_line()
    name = line.split("cluster.run_name=")[1].split()[0]
    run = ROOT / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    # a user's shell: Ray's variables unset, no virtual environment on PATH (the script puts it there)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    try:
        proc = subprocess.run(
            ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
        )
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["policy_version"] for line in lines] == [1, 2]
    finally:
        shutil.rmtree(run, ignore_errors=True)
