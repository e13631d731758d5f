"""Starting and joining Ray safely, and the `ray job submit` recipe of the README, for real."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.launch import check_address_is_safe, is_loopback

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:6379", True), ("localhost:6379", True), ("ray://127.0.0.1:10001", True), ("http://[::1]:8265", True),
     ("auto", True), ("10.0.0.5:6379", False), ("ray://head.example:10001", False), ("http://0.0.0.0:8265", False)],
)  # fmt: skip
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
        [sys.executable, "-m", "cluster.cli", command, "cluster.ray_address=203.0.113.7:6379",
         f"cluster.output_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "not on loopback" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}  # fmt: skip
    return env


@pytest.mark.slow
def test_ray_job_submit_runs_a_two_iteration_training_job(tmp_path):
    port, dashboard = _free_port(), _free_port()
    env = _ray_env()
    temp_dir = Path(
        tempfile.mkdtemp(prefix="ray", dir="/tmp")
    )  # short: Ray's socket paths must fit 107 chars
    # Every listener on its own free port: the agents' fixed defaults (52365, ...) collide with any
    # other Ray on the machine (a user's run), and the job agent then never comes up.
    agents = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port")]  # fmt: skip
    start = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", "--include-dashboard=true",
             "--disable-usage-stats", f"--temp-dir={temp_dir}", *agents]  # fmt: skip
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        runtime_env = {"excludes": [".venv/", ".cache/", "runs/", ".git/", "__pycache__/"],
                       "env_vars": {"EMO_R3_CACHE_DIR": str(ROOT / ".cache")}}  # fmt: skip
        submit = [
            str(VENV_BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(ROOT),
            "--runtime-env-json", json.dumps(runtime_env), "--",
            "python", "-m", "cluster.cli", "train", "cluster.iterations=2", "cluster.prompts_per_iteration=4",
            "rollout.group_size=4", "rollout.max_new_tokens=16", "cluster.eval_every=0", "cluster.run_name=job",
            f"cluster.output_dir={tmp_path / 'runs'}", "learner.micro_batch_size=4",
        ]  # fmt: skip
        proc = _submit_when_the_agent_is_up(submit, env)
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
        lines = (tmp_path / "runs" / "job" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["policy_version"] for line in lines] == [1, 2]
    finally:
        _stop_ray_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


AGENT_NOT_READY = "No available agent to submit job"


def _submit_when_the_agent_is_up(
    submit: list[str], env: dict[str, str], deadline_s: float = 180
) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job agent is still starting (a loaded machine can
    need tens of seconds after `ray start` returns before it accepts jobs)."""
    give_up = time.monotonic() + deadline_s
    while True:
        proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
        if AGENT_NOT_READY not in proc.stderr + proc.stdout or time.monotonic() > give_up:
            return proc
        time.sleep(3)


def _stop_ray_under(temp_dir: Path) -> None:
    """Kill the processes of the Ray head started with `temp_dir`, and only those: `ray stop` would
    also stop every other Ray on the machine (a user's training run, another test session)."""
    mine = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(temp_dir) in cmdline:
            mine.append(int(proc.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(2)
